"""Activation, loss and optimizer kernels against numpy references.

Sizes 1, 7, 1000 and 100003 (the last is past every parallel threshold), float32
and float64, on 1 and 2 threads. References are computed in float64 from the
same (possibly float32) inputs.
"""
import warnings

import numpy as np
import pytest

import cyneuron as cn

DTYPES = [np.float32, np.float64]
DTYPE_IDS = ["float32", "float64"]
SIZES = [1, 7, 1000, 100003]
ELEMENTWISE = ["sigmoid", "tanh", "relu", "linear"]


def _tol(dtype):
    """(rtol, atol) for a few-ulp kernel result against a float64 reference."""
    if np.dtype(dtype) == np.float32:
        return 2e-6, 1e-7
    return 1e-13, 1e-15


# --------------------------------------------------------------------------- numpy references

def np_forward(name, x):
    x = np.asarray(x, np.float64)
    if name == "sigmoid":
        e = np.exp(-np.abs(x))  # never overflows, no cancellation
        return np.where(x >= 0, 1 / (1 + e), e / (1 + e))
    if name == "tanh":
        return np.tanh(x)
    if name == "relu":
        return np.maximum(x, 0)
    if name == "linear":
        return x.copy()
    if name == "softmax":
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    raise AssertionError(name)


def np_backward(name, y, dy):
    y, dy = np.asarray(y, np.float64), np.asarray(dy, np.float64)
    if name == "sigmoid":
        return dy * y * (1 - y)
    if name == "tanh":
        return dy * (1 - y * y)
    if name == "relu":
        return np.where(y > 0, dy, 0.0)
    if name == "linear":
        return dy.copy()
    if name == "softmax":
        return y * (dy - (dy * y).sum(axis=-1, keepdims=True))
    raise AssertionError(name)


def np_logsumexp(z):
    z = np.asarray(z, np.float64)
    m = z.max(axis=-1, keepdims=True)
    return (m + np.log(np.exp(z - m).sum(axis=-1, keepdims=True)))[..., 0]


def _fn(name):
    return getattr(cn.ops, name), getattr(cn.ops, name + "_grad")


# --------------------------------------------------------------------------- activations

@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", ELEMENTWISE)
def test_elementwise_forward_and_grad(name, dtype, size, kernel_threads):
    rng = np.random.default_rng(size)
    x = (3 * rng.standard_normal(size)).astype(dtype)
    if size >= 7:
        x[:3] = [0.0, -0.0, 1e-30]  # relu at 0 and signed zero, tiny values
    x_before = x.copy()
    forward, grad = _fn(name)
    y = forward(x)
    assert y.dtype == dtype and y.shape == x.shape
    assert y is not x
    np.testing.assert_array_equal(x, x_before)  # input untouched
    rtol, atol = _tol(dtype)
    np.testing.assert_allclose(y, np_forward(name, x), rtol=rtol, atol=atol)

    dy = rng.standard_normal(size).astype(dtype)
    dx = grad(y, dy)
    assert dx.dtype == dtype and dx.shape == x.shape
    # 1 - y*y (tanh) cancels near |y| = 1: absolute error of a few ulp of |dy|.
    np.testing.assert_allclose(dx, np_backward(name, y, dy), rtol=rtol,
                               atol=4 * np.finfo(dtype).eps * np.abs(dy).max())


def test_relu_grad_at_zero_is_zero():
    y = cn.ops.relu(np.array([-1.0, 0.0, -0.0, 2.0]))
    np.testing.assert_array_equal(cn.ops.relu_grad(y, np.ones(4)), [0, 0, 0, 1])


@pytest.mark.parametrize("rows", SIZES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_softmax_forward_and_grad(dtype, rows, kernel_threads):
    rng = np.random.default_rng(rows)
    x = (4 * rng.standard_normal((rows, 5))).astype(dtype)
    forward, grad = _fn("softmax")
    y = forward(x)
    assert y.dtype == dtype and y.shape == x.shape
    rtol, atol = _tol(dtype)
    np.testing.assert_allclose(y, np_forward("softmax", x), rtol=4 * rtol, atol=atol)
    np.testing.assert_allclose(y.sum(axis=-1, dtype=np.float64), 1, atol=10 * np.finfo(dtype).eps)

    dy = rng.standard_normal(x.shape).astype(dtype)
    dx = grad(y, dy)
    assert dx.dtype == dtype and dx.shape == x.shape
    np.testing.assert_allclose(dx, np_backward("softmax", y, dy), rtol=4 * rtol,
                               atol=16 * np.finfo(dtype).eps * np.abs(dy).max())
    # Softmax gradients sum to zero along the softmax axis.
    np.testing.assert_allclose(dx.sum(axis=-1, dtype=np.float64), 0,
                               atol=32 * np.finfo(dtype).eps * np.abs(dy).max())


@pytest.mark.parametrize("shape", [(1,), (7,), (1000,), (2, 3, 4), (5, 1, 9), (3, 4, 1)])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_softmax_is_over_the_last_axis(dtype, shape):
    rng = np.random.default_rng(len(shape))
    x = (3 * rng.standard_normal(shape)).astype(dtype)
    y = cn.ops.softmax(x)
    assert y.shape == shape and y.dtype == dtype
    rtol, atol = _tol(dtype)
    np.testing.assert_allclose(y, np_forward("softmax", x), rtol=4 * rtol, atol=atol)
    np.testing.assert_allclose(y.sum(axis=-1, dtype=np.float64), 1, atol=10 * np.finfo(dtype).eps)
    dy = rng.standard_normal(shape).astype(dtype)
    np.testing.assert_allclose(cn.ops.softmax_grad(y, dy), np_backward("softmax", y, dy),
                               rtol=4 * rtol, atol=16 * np.finfo(dtype).eps * np.abs(dy).max())


def test_softmax_non_contiguous_and_integer_input():
    x = np.arange(24, dtype=np.float64).reshape(4, 6)[:, ::2]
    np.testing.assert_allclose(cn.ops.softmax(x), np_forward("softmax", x), rtol=1e-13)
    xi = np.arange(12).reshape(3, 4)
    y = cn.ops.softmax(xi)
    assert y.dtype == np.float64
    np.testing.assert_allclose(y, np_forward("softmax", xi), rtol=1e-13)


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_elementwise_shapes_layouts_and_ints(name):
    forward, grad = _fn(name)
    x = np.linspace(-3, 3, 60).reshape(3, 4, 5)
    np.testing.assert_allclose(forward(x), np_forward(name, x), rtol=1e-13, atol=1e-15)
    strided = x[:, ::-2, 1::2]
    np.testing.assert_allclose(forward(strided), np_forward(name, strided), rtol=1e-13, atol=1e-15)
    xi = np.arange(-3, 4)
    y = forward(xi)
    assert y.dtype == np.float64
    np.testing.assert_allclose(y, np_forward(name, xi), rtol=1e-13, atol=1e-15)
    empty = forward(np.empty((0, 3), np.float32))
    assert empty.shape == (0, 3) and empty.dtype == np.float32


@pytest.mark.parametrize("name", ELEMENTWISE + ["softmax"])
def test_grad_shape_mismatch_and_bad_dtype(name):
    forward, grad = _fn(name)
    y = forward(np.ones((3, 4)))
    with pytest.raises(ValueError, match="dy"):
        grad(y, np.ones((4, 3)))
    with pytest.raises(TypeError, match=r"\bx\b"):
        forward(np.array(["a", "b"]))
    with pytest.raises(TypeError, match=r"\bdy\b"):
        grad(y, np.full((3, 4), None, dtype=object))


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_elementwise_keeps_0d_shape(name):
    """An element-wise function of a 0-d array is 0-d (as numpy's ufuncs)."""
    forward, grad = _fn(name)
    y = forward(np.float64(0.5))
    assert np.shape(y) == ()
    np.testing.assert_allclose(y, np_forward(name, 0.5), rtol=1e-13)
    assert np.shape(grad(y, np.float64(2.0))) == ()


def test_softmax_of_0d_input_raises():
    """A 0-d array has no axis to normalise over (softmax_grad already says so)."""
    with pytest.raises(ValueError, match="1-D"):
        cn.ops.softmax(np.float64(1.0))
    with pytest.raises(ValueError, match="1-D"):
        cn.ops.softmax_grad(np.float64(1.0), np.float64(1.0))


@pytest.mark.parametrize("shape", [(0, 4), (3, 0), (0, 0), (0,), (2, 0, 3), (2, 3, 0)])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_softmax_of_empty_input_is_empty(shape, dtype):
    """Like scipy.special.softmax and torch.softmax: empty in, empty out (any empty axis)."""
    x = np.empty(shape, dtype)
    y = cn.ops.softmax(x)
    assert y.shape == shape and y.dtype == dtype
    dx = cn.ops.softmax_grad(y, np.empty(shape, dtype))
    assert dx.shape == shape and dx.dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_large_inputs_stay_finite_without_warnings(dtype):
    x = np.array([-1e4, -1e3, -100, -88.8, -20, -1e-3, 0, 1e-3, 20, 88.8, 89, 100, 1e3, 1e4],
                 dtype=dtype)
    with np.errstate(all="raise"), warnings.catch_warnings():
        warnings.simplefilter("error")
        s = cn.ops.sigmoid(x)
        t = cn.ops.tanh(x)
        p = cn.ops.softmax(x)                     # one row with entries far apart
        pairs = cn.ops.softmax(np.stack([x, -x], axis=1))
        rows = cn.ops.softmax(np.stack([x, x[::-1], np.full_like(x, 1e4)]))
        gs = cn.ops.sigmoid_grad(s, np.ones_like(s))
        gt = cn.ops.tanh_grad(t, np.ones_like(t))
        gp = cn.ops.softmax_grad(pairs, np.ones_like(pairs))
    for arr in (s, t, p, pairs, rows, gs, gt, gp):
        assert np.all(np.isfinite(arr))
    rtol, atol = _tol(dtype)
    np.testing.assert_allclose(s, np_forward("sigmoid", x), rtol=rtol, atol=atol)
    np.testing.assert_allclose(t, np_forward("tanh", x), rtol=rtol, atol=atol)
    np.testing.assert_allclose(p, np_forward("softmax", x), rtol=rtol, atol=atol)
    np.testing.assert_allclose(pairs, np_forward("softmax", np.stack([x, -x], axis=1)),
                               rtol=rtol, atol=atol)
    assert s[0] == 0 and s[-1] == 1 and t[0] == -1 and t[-1] == 1
    assert np.all((s >= 0) & (s <= 1)) and np.all(np.abs(t) <= 1)
    np.testing.assert_allclose(rows.sum(axis=-1), 1, atol=10 * np.finfo(dtype).eps)
    assert p[-1] == 1 and np.all(p[:-1] == 0)
    np.testing.assert_allclose(rows[2], 1 / len(x), rtol=10 * np.finfo(dtype).eps)


# --------------------------------------------------------------------------- losses: values

def _probabilities(rng, n, c, dtype=np.float64):
    p = np_forward("softmax", 2 * rng.standard_normal((n, c)))
    # Exact 0 and 1 entries exercise the [1e-7, 1 - 1e-7] clipping.
    p[0] = 0.0
    p[0, 0] = 1.0
    p[1] = 1.0 / c
    return p.astype(dtype)


EPS = 1e-7


def _np_ce_probs(onehot, p):
    q = np.clip(np.asarray(p, np.float64), EPS, 1 - EPS)
    return float(np.mean(-(onehot * np.log(q)).sum(axis=1)))


@pytest.mark.parametrize("n", [1, 7, 1000])
def test_mse_value(n):
    rng = np.random.default_rng(n)
    loss = cn.losses.get("mean_squared_error")
    for shape in [(n, 3), (n, 1), (n,)]:
        t, p = rng.standard_normal(shape), rng.standard_normal(shape)
        expected = np.mean((p - t) ** 2)
        assert loss(t, p) == pytest.approx(expected, rel=1e-12)
    assert cn.losses.get("mse")(np.ones((2, 2)), np.zeros((2, 2))) == pytest.approx(1.0)


@pytest.mark.parametrize("n", [2, 7, 1000])
def test_sparse_categorical_crossentropy_value(n):
    rng = np.random.default_rng(n)
    c = 6
    p = _probabilities(rng, n, c)
    labels = rng.integers(0, c, n)
    labels[0] = 3              # p[0, 3] == 0: clipped to 1e-7
    if n > 2:
        labels[2] = int(np.argmax(p[2]))
    onehot = np.eye(c)[labels]
    loss = cn.losses.get("sparse_categorical_crossentropy")
    expected = _np_ce_probs(onehot, p)
    assert np.isfinite(loss(labels, p))
    assert loss(labels, p) == pytest.approx(expected, rel=1e-7)
    assert loss(labels.reshape(-1, 1), p) == pytest.approx(expected, rel=1e-7)  # (n, 1) labels
    assert loss(labels.astype(np.float64), p) == pytest.approx(expected, rel=1e-7)
    assert loss(labels, p.astype(np.float32)) == pytest.approx(
        _np_ce_probs(onehot, p.astype(np.float32)), rel=1e-6)


@pytest.mark.parametrize("n", [2, 7, 1000])
def test_categorical_crossentropy_value(n):
    rng = np.random.default_rng(n + 1)
    c = 5
    p = _probabilities(rng, n, c)
    labels = rng.integers(0, c, n)
    labels[0] = 2              # p[0, 2] == 0: clipped
    labels[1] = 0
    onehot = np.eye(c)[labels]
    loss = cn.losses.get("categorical_crossentropy")
    assert loss(onehot, p) == pytest.approx(_np_ce_probs(onehot, p), rel=1e-7)
    # Soft targets.
    soft = np_forward("softmax", rng.standard_normal((n, c)))
    assert loss(soft, p) == pytest.approx(_np_ce_probs(soft, p), rel=1e-7)


def test_crossentropy_clipping_bounds():
    loss = cn.losses.get("categorical_crossentropy")
    assert loss([[1.0, 0.0]], [[0.0, 1.0]]) == pytest.approx(-np.log(EPS), rel=1e-6)
    assert loss([[1.0, 0.0]], [[1.0, 0.0]]) == pytest.approx(-np.log1p(-EPS), rel=1e-3)
    sparse = cn.losses.get("sparse_categorical_crossentropy")
    assert sparse([1], [[1.0, 0.0]]) == pytest.approx(-np.log(EPS), rel=1e-6)


# --------------------------------------------------------------------------- losses: gradients

@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("n", [1, 7, 5000])
def test_mse_value_and_grad(dtype, n, kernel_threads):
    rng = np.random.default_rng(n)
    loss = cn.losses.get("mean_squared_error")
    p = rng.standard_normal((n, 10)).astype(dtype)
    t = loss.prepare_targets(rng.standard_normal((n, 10)), p.shape, dtype)
    assert t.dtype == dtype
    value, grad = loss.value_and_grad(t, p)
    p64, t64 = p.astype(np.float64), t.astype(np.float64)
    assert value == pytest.approx(np.mean((p64 - t64) ** 2), rel=1e-5 if dtype == np.float32 else 1e-12)
    assert grad.dtype == dtype and grad.shape == p.shape
    rtol, atol = _tol(dtype)
    np.testing.assert_allclose(grad, 2 * (p64 - t64) / p.size, rtol=4 * rtol, atol=atol / p.size)


def _logits(rng, n, c, scale, dtype):
    return (scale * rng.standard_normal((n, c))).astype(dtype)


def _np_logits_ce(z, t):
    """Loss and d loss / dz of mean-over-rows softmax cross-entropy, targets t (n, c)."""
    z64 = np.asarray(z, np.float64)
    lse = np_logsumexp(z64)
    value = float(np.mean((t * (lse[:, None] - z64)).sum(axis=1)))
    p = np.exp(z64 - lse[:, None])
    grad = (p * t.sum(axis=1, keepdims=True) - t) / len(z64)
    return value, grad


CE_CASES = [(1, 3, 1.0), (7, 10, 3.0), (4001, 10, 2.0), (64, 7, 1e4)]
CE_IDS = ["n1", "n7", "n4001-parallel", "logits1e4"]


@pytest.mark.parametrize("n, c, scale", CE_CASES, ids=CE_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_sparse_ce_value_and_grad_logits(dtype, n, c, scale, kernel_threads):
    rng = np.random.default_rng(n)
    loss = cn.losses.get("sparse_categorical_crossentropy")
    z = _logits(rng, n, c, scale, dtype)
    labels = rng.integers(0, c, n)
    targets = loss.prepare_targets(labels, z.shape, dtype)
    with np.errstate(all="raise"), warnings.catch_warnings():
        warnings.simplefilter("error")
        value, grad = loss.value_and_grad_logits(targets, z)
    expected_value, expected_grad = _np_logits_ce(z, np.eye(c)[labels])
    _check_ce(value, grad, expected_value, expected_grad, z, dtype, scale)


@pytest.mark.parametrize("n, c, scale", CE_CASES, ids=CE_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("soft", [False, True], ids=["onehot", "soft"])
def test_categorical_ce_value_and_grad_logits(dtype, n, c, scale, soft, kernel_threads):
    rng = np.random.default_rng(n + 100)
    loss = cn.losses.get("categorical_crossentropy")
    z = _logits(rng, n, c, scale, dtype)
    if soft:
        t = np_forward("softmax", rng.standard_normal((n, c)))
    else:
        t = np.eye(c)[rng.integers(0, c, n)]
    targets = loss.prepare_targets(t, z.shape, dtype)
    with np.errstate(all="raise"), warnings.catch_warnings():
        warnings.simplefilter("error")
        value, grad = loss.value_and_grad_logits(targets, z)
    expected_value, expected_grad = _np_logits_ce(z, targets.astype(np.float64))
    _check_ce(value, grad, expected_value, expected_grad, z, dtype, scale)


def _check_ce(value, grad, expected_value, expected_grad, z, dtype, scale):
    n = len(z)
    eps = np.finfo(dtype).eps
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    assert grad.dtype == dtype and grad.shape == z.shape
    # The loss is a difference of numbers of size |z|: error relative to that magnitude.
    magnitude = max(1.0, float(np.abs(z).max()))
    assert abs(value - expected_value) <= 64 * eps * magnitude, (value, expected_value)
    # exp(z - lse) has relative error ~ eps * |z|; gradients are bounded by 1/n.
    np.testing.assert_allclose(grad, expected_grad, rtol=0, atol=64 * eps * magnitude / n)
    np.testing.assert_allclose(grad.sum(axis=1, dtype=np.float64), 0,
                               atol=64 * eps * magnitude * z.shape[1] / n)


@pytest.mark.parametrize("name", ["sparse_categorical_crossentropy", "categorical_crossentropy"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_ce_value_and_grad_on_probabilities(name, dtype, kernel_threads):
    rng = np.random.default_rng(21)
    n, c = 3000, 8
    loss = cn.losses.get(name)
    p = np_forward("softmax", rng.standard_normal((n, c))).astype(dtype)
    labels = rng.integers(0, c, n)
    y = labels if name.startswith("sparse") else np.eye(c)[labels]
    targets = loss.prepare_targets(y, p.shape, dtype)
    value, grad = loss.value_and_grad(targets, p)
    onehot = np.eye(c)[labels]
    assert value == pytest.approx(_np_ce_probs(onehot, p), rel=1e-5 if dtype == np.float32 else 1e-12)
    assert grad.dtype == dtype
    # All p are inside [1e-7, 1 - 1e-7] here: d/dp of -log p_label is -1 / p_label, over n.
    expected = -onehot / p.astype(np.float64) / n
    rtol, atol = _tol(dtype)
    np.testing.assert_allclose(grad, expected, rtol=4 * rtol, atol=atol / n)


@pytest.mark.parametrize("name, y", [
    ("mean_squared_error", np.zeros((2, 4))),
    ("mean_squared_error", np.zeros((4, 4))),
    ("categorical_crossentropy", np.eye(4)[:2]),
    ("categorical_crossentropy", np.eye(4)),
    ("sparse_categorical_crossentropy", np.array([0, 1])),
    ("sparse_categorical_crossentropy", np.array([0, 1, 2, 3])),
], ids=["mse-fewer", "mse-more", "cce-fewer", "cce-more", "scce-fewer", "scce-more"])
def test_loss_call_with_mismatched_sample_counts(name, y):
    """y_true and y_pred must have the same number of samples (never read past the targets)."""
    y_pred = np.full((3, 4), 0.25)
    with pytest.raises(ValueError, match="samples"):
        cn.losses.get(name)(y, y_pred)


def test_fused_loss_matches_softmax_then_probability_loss():
    rng = np.random.default_rng(22)
    z = 2 * rng.standard_normal((50, 6))
    labels = rng.integers(0, 6, 50)
    loss = cn.losses.get("sparse_categorical_crossentropy")
    fused, _ = loss.value_and_grad_logits(loss.prepare_targets(labels, z.shape, np.float64), z)
    assert fused == pytest.approx(loss(labels, cn.ops.softmax(z)), rel=1e-9)


def test_loss_target_errors():
    sparse = cn.losses.get("sparse_categorical_crossentropy")
    p = np.full((3, 4), 0.25)
    with pytest.raises(ValueError, match="label"):
        sparse([0, 1, 4], p)
    with pytest.raises(ValueError, match="label"):
        sparse([0, -1, 2], p)
    with pytest.raises(ValueError, match="integer"):
        sparse([0.5, 1, 2], p)
    cat = cn.losses.get("categorical_crossentropy")
    with pytest.raises(ValueError, match="one-hot"):
        cat([0, 1, 2], p)
    mse = cn.losses.get("mean_squared_error")
    with pytest.raises(ValueError, match="shape"):
        mse(np.ones((3, 2)), p)
    with pytest.raises(ValueError, match="NaN"):
        mse(np.full((3, 4), np.nan), p)


# --------------------------------------------------------------------------- SGD

def np_sgd(w, grads_seq, lr, momentum, nesterov):
    w = w.astype(np.float64).copy()
    v = np.zeros_like(w)
    for g in grads_seq:
        g = g.astype(np.float64)
        if momentum == 0:
            w -= lr * g
            continue
        v = momentum * v - lr * g
        if nesterov:
            w += momentum * v - lr * g
        else:
            w += v
    return w


@pytest.mark.parametrize("momentum, nesterov", [(0.0, False), (0.0, True), (0.9, False), (0.9, True),
                                                (0.5, False)])
@pytest.mark.parametrize("size", [1, 7, 100003])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_sgd_matches_keras_rule(dtype, size, momentum, nesterov, kernel_threads):
    rng = np.random.default_rng(size)
    lr = 0.05
    w0 = rng.standard_normal(size).astype(dtype)
    grads_seq = [rng.standard_normal(size).astype(dtype) for _ in range(6)]
    opt = cn.optimizers.SGD(learning_rate=lr, momentum=momentum, nesterov=nesterov)
    params = w0.copy()
    for g in grads_seq:
        g_before = g.copy()
        opt.apply_gradients(params, g)
        np.testing.assert_array_equal(g, g_before)  # gradients untouched
    assert params.dtype == dtype
    assert opt.iterations == len(grads_seq)
    expected = np_sgd(w0, grads_seq, lr, momentum, nesterov)
    if dtype == np.float32:
        np.testing.assert_allclose(params, expected, rtol=1e-5, atol=1e-5)
    else:
        np.testing.assert_allclose(params, expected, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("grad_size", [3, 12])
def test_sgd_size_mismatch_is_refused(momentum, grad_size):
    """grads must match params (the kernel must never read past the end of grads)."""
    opt = cn.optimizers.SGD(learning_rate=0.1, momentum=momentum)
    params = np.zeros(10)
    with pytest.raises(ValueError, match="grads"):
        opt.apply_gradients(params, np.ones(grad_size))
    np.testing.assert_array_equal(params, 0)


def test_sgd_dtype_mismatch_is_refused():
    opt = cn.optimizers.SGD(learning_rate=0.1)
    params = np.zeros(10, np.float32)
    with pytest.raises((TypeError, ValueError)):
        opt.apply_gradients(params, np.ones(10))
    np.testing.assert_array_equal(params, 0)


def test_sgd_updates_in_place_and_by_name():
    opt = cn.optimizers.get("sgd")
    assert isinstance(opt, cn.optimizers.SGD)
    assert opt.learning_rate == pytest.approx(0.01)
    params = np.ones(4)
    view = params
    opt.apply_gradients(params, np.full(4, 2.0))
    assert view is params
    np.testing.assert_allclose(params, 1 - 0.01 * 2)
    assert cn.optimizers.get(opt) is opt


# --------------------------------------------------------------------------- bad names and settings

@pytest.mark.parametrize("getter, kind", [
    (cn.activations.get, "activation"),
    (cn.losses.get, "loss"),
    (cn.optimizers.get, "optimizer"),
], ids=["activation", "loss", "optimizer"])
@pytest.mark.parametrize("bad", ["nope", "", 3, 1.5])
def test_unknown_names(getter, kind, bad):
    with pytest.raises(ValueError, match=kind):
        getter(bad)


def test_known_names_resolve():
    for name in ("linear", "sigmoid", "tanh", "relu", "softmax"):
        assert cn.activations.get(name).name == name
        assert cn.activations.get(name.upper()).name == name
    assert cn.activations.get(None).name == "linear"
    for name in ("mean_squared_error", "sparse_categorical_crossentropy", "categorical_crossentropy"):
        assert cn.losses.get(name).name == name


@pytest.mark.parametrize("lr", [0, 0.0, -0.1, -1, float("nan"), float("inf"), "0.1", None, True])
def test_sgd_bad_learning_rate(lr):
    with pytest.raises(ValueError, match="learning_rate"):
        cn.optimizers.SGD(learning_rate=lr)


@pytest.mark.parametrize("momentum", [-0.1, 1.0, 1.5])
def test_sgd_bad_momentum(momentum):
    with pytest.raises(ValueError, match="momentum"):
        cn.optimizers.SGD(learning_rate=0.1, momentum=momentum)


def test_cross_entropy_gradient_is_zero_where_probabilities_are_clipped():
    """Keras clips probabilities to [1e-7, 1 - 1e-7]; the clip has zero gradient."""
    loss = cn.losses.get("categorical_crossentropy")
    p = np.array([[0.0, 1.0, 0.0], [0.2, 0.5, 0.3]])
    t = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    value, grad = loss.value_and_grad(t, p)
    np.testing.assert_allclose(value, (-np.log(1e-7) - np.log(0.5)) / 2, rtol=1e-12)
    np.testing.assert_array_equal(grad[0], [0.0, 0.0, 0.0])
    np.testing.assert_allclose(grad[1], [0.0, -1 / 0.5 / 2, 0.0], rtol=1e-12)


def test_kernels_refuse_mismatched_buffers_instead_of_reading_past_them():
    """The compiled kernels check their own sizes: no out-of-bounds access from Python."""
    from cyneuron._kernels import activations as ak, losses as lk, optim as ok

    x = np.ones(5)
    with pytest.raises(ValueError, match="out"):
        ak.sigmoid_forward(x, np.empty(3))
    with pytest.raises(ValueError, match="dx"):
        ak.relu_backward(x, x, np.empty(4))
    with pytest.raises(ValueError, match="dy"):
        ak.softmax_backward(np.ones((2, 3)), np.ones((1, 3)), np.empty((2, 3)))
    z = np.zeros((2, 3))
    with pytest.raises(ValueError, match="labels"):
        lk.softmax_cross_entropy_sparse(z, np.array([0, 3], dtype=np.int64), np.empty((2, 3)), 0.5)
    with pytest.raises(ValueError, match="labels"):
        lk.softmax_cross_entropy_sparse(z, np.array([0], dtype=np.int64), np.empty((2, 3)), 0.5)
    with pytest.raises(ValueError, match="t"):
        lk.softmax_cross_entropy_dense(z, np.zeros((1, 3)), np.empty((2, 3)), 0.5)
    with pytest.raises(ValueError, match="grad"):
        lk.mean_squared_error(x.reshape(1, -1), x.reshape(1, -1), np.empty((1, 2)), 0.2)
    with pytest.raises(ValueError, match="grads"):
        ok.sgd_update(np.zeros(4), np.zeros(3), np.zeros(4), 0.1, 0.9, False)
