"""Float64 central finite-difference gradient checks.

Every layer, activation and loss is compared against numeric derivatives
(DESIGN.md section 6); so are whole models, through `compute_gradients`, and the
fused softmax + cross-entropy path against the unfused chain rule.
"""
import numpy as np
import pytest

import cyneuron as cn
from cyneuron import layers

EPS = 1e-6
RTOL = 1e-5
ATOL = 1e-8

ACTIVATIONS = ["linear", "sigmoid", "tanh", "relu", "softmax"]
LOSSES = ["mean_squared_error", "sparse_categorical_crossentropy", "categorical_crossentropy"]


def numeric_grad(f, x, eps=EPS):
    """Central differences of the scalar f() w.r.t. every entry of x (perturbed in place)."""
    grad = np.zeros_like(x, dtype=np.float64)
    flat = x.reshape(-1)
    gflat = grad.reshape(-1)
    for i in range(flat.size):
        orig = flat[i]
        flat[i] = orig + eps
        f_plus = f()
        flat[i] = orig - eps
        f_minus = f()
        flat[i] = orig
        gflat[i] = (f_plus - f_minus) / (2 * eps)
    return grad


def _np_activation(name, z):
    if name == "linear":
        return z
    if name == "sigmoid":
        return 1.0 / (1.0 + np.exp(-z))
    if name == "tanh":
        return np.tanh(z)
    if name == "relu":
        return np.maximum(z, 0.0)
    if name == "softmax":
        e = np.exp(z - z.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    raise AssertionError(name)


def _relu_safe_setup(rng, n, d_in, units, use_bias, margin=1e-2):
    """x, kernel, bias such that every pre-activation is at least `margin` away from 0."""
    for _ in range(1000):
        x = rng.normal(size=(n, d_in))
        kernel = rng.normal(scale=0.7, size=(d_in, units))
        bias = rng.normal(scale=0.3, size=units) if use_bias else np.zeros(units)
        z = x @ kernel + bias
        if np.abs(z).min() > margin:
            return x, kernel, bias
    raise AssertionError("could not draw inputs away from the ReLU kink")


# ---------------------------------------------------------------------------------------
# (a) Dense alone
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("use_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_dense_gradients(activation, use_bias):
    rng = np.random.default_rng(10 * ACTIVATIONS.index(activation) + int(use_bias))
    n, d_in, units = 6, 5, 4
    x, kernel, bias = _relu_safe_setup(rng, n, d_in, units, use_bias)
    layer = layers.Dense(units, activation=activation, use_bias=use_bias, dtype="float64")
    out = layer.forward(x).copy()
    weights = [kernel, bias] if use_bias else [kernel]
    layer.set_weights(weights)
    assert [w.shape for w in layer.get_weights()] == [w.shape for w in weights]

    out = layer.forward(x).copy()
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, _np_activation(activation, x @ kernel + bias),
                               rtol=1e-12, atol=1e-12)

    g = rng.normal(size=out.shape)
    g_before, x_before = g.copy(), x.copy()
    dx = np.array(layer.backward(g), copy=True)
    grads = layer.get_gradients()
    np.testing.assert_array_equal(g, g_before)  # backward must not touch its argument
    np.testing.assert_array_equal(x, x_before)  # nor forward its input
    assert dx.shape == x.shape
    assert len(grads) == (2 if use_bias else 1)
    assert grads[0].shape == (d_in, units)

    def objective_x():
        return float(np.sum(g * layer.forward(x)))

    num_dx = numeric_grad(objective_x, x)
    np.testing.assert_allclose(dx, num_dx, rtol=RTOL, atol=1e-7)

    w = [kernel.copy(), bias.copy()] if use_bias else [kernel.copy()]
    for k in range(len(w)):
        def objective_w():
            layer.set_weights(w)
            return float(np.sum(g * layer.forward(x)))

        num = numeric_grad(objective_w, w[k])
        np.testing.assert_allclose(grads[k], num, rtol=RTOL, atol=1e-7,
                                   err_msg=f"{activation} weight #{k}")


def test_dense_backward_analytic_matches_numpy():
    """Closed-form check of the three backprop products: dW = x^T dz, db = sum dz, dx = dz W^T."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(9, 7))
    layer = layers.Dense(5, dtype="float64")
    layer.forward(x)
    kernel, bias = rng.normal(size=(7, 5)), rng.normal(size=5)
    layer.set_weights([kernel, bias])
    layer.forward(x)
    g = rng.normal(size=(9, 5))
    dx = layer.backward(g).copy()
    dw, db = layer.get_gradients()
    np.testing.assert_allclose(dx, g @ kernel.T, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dw, x.T @ g, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(db, g.sum(axis=0), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("features", [4, 600])
def test_dense_forward_of_its_own_output(dtype, features):
    """A square Dense fed its own output buffer (a weight-shared layer applied twice):
    the result must still be y @ kernel + bias, never the GEMM reading what it writes."""
    rng = np.random.default_rng(features)
    layer = layers.Dense(features, dtype=dtype)
    x = rng.normal(size=(5, features)).astype(dtype)
    y = layer.forward(x)
    kernel, bias = [w.astype(np.float64) for w in layer.get_weights()]
    y_first = y.astype(np.float64)
    y2 = layer.forward(y)
    tol = 1e-4 if dtype == "float32" else 1e-10
    np.testing.assert_allclose(y2, y_first @ kernel + bias, rtol=tol, atol=tol)


def test_dense_backward_after_forward_of_its_own_output():
    """backward must use the input of the last forward (dW = x^T g), even when that input
    was the layer's own output buffer."""
    rng = np.random.default_rng(8)
    layer = layers.Dense(4, dtype="float64")
    y = layer.forward(rng.normal(size=(3, 4)))
    y_first = y.copy()
    layer.forward(y)
    g = rng.normal(size=(3, 4))
    layer.backward(g)
    np.testing.assert_allclose(layer.get_gradients()[0], y_first.T @ g, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------
# (b) activations through cn.ops
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ACTIVATIONS)
def test_ops_activation_gradients(name):
    rng = np.random.default_rng(11)
    x = rng.normal(scale=2.0, size=(4, 6))
    if name == "relu":
        x[np.abs(x) < 0.05] += 0.2  # keep away from the kink
    fwd = getattr(cn.ops, name)
    grad = getattr(cn.ops, name + "_grad")

    y = fwd(x)
    assert y.dtype == np.float64 and y.shape == x.shape
    np.testing.assert_allclose(y, _np_activation(name, x), rtol=1e-12, atol=1e-14)

    dy = rng.normal(size=x.shape)
    dx = grad(y, dy)
    assert dx.shape == x.shape and dx.dtype == np.float64

    num = numeric_grad(lambda: float(np.sum(dy * fwd(x))), x)
    np.testing.assert_allclose(dx, num, rtol=RTOL, atol=1e-8)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_ops_activation_float32_matches_float64(name):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(3, 8))
    dy = rng.normal(size=x.shape)
    fwd = getattr(cn.ops, name)
    grad = getattr(cn.ops, name + "_grad")
    y64, y32 = fwd(x), fwd(x.astype(np.float32))
    assert y32.dtype == np.float32
    np.testing.assert_allclose(y32, y64, rtol=1e-5, atol=1e-6)
    d64 = grad(y64, dy)
    d32 = grad(y32, dy.astype(np.float32))
    assert d32.dtype == np.float32
    np.testing.assert_allclose(d32, d64, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------
# (c) losses
# ---------------------------------------------------------------------------------------
def _softmax(z):
    return _np_activation("softmax", z)


def _loss_problem(name, rng, n=5, c=4):
    """(targets as given by the user, predictions away from the clip region)."""
    if name == "mean_squared_error":
        return rng.normal(size=(n, c)), rng.normal(size=(n, c))
    probs = _softmax(rng.normal(scale=0.5, size=(n, c)))  # entries roughly in [0.05, 0.7]
    labels = rng.integers(0, c, size=n)
    if name == "sparse_categorical_crossentropy":
        return labels, probs
    return np.eye(c)[labels], probs


@pytest.mark.parametrize("name", LOSSES)
def test_loss_value_and_grad(name):
    rng = np.random.default_rng(21)
    loss = cn.losses.get(name)
    y, pred = _loss_problem(name, rng)
    targets = loss.prepare_targets(y, pred.shape, np.dtype(np.float64))

    value, grad = loss.value_and_grad(targets, pred)
    grad = np.array(grad, copy=True)
    assert grad.shape == pred.shape

    if name == "mean_squared_error":
        expected = np.mean((pred - y) ** 2)
    else:
        onehot = y if y.ndim == 2 else np.eye(pred.shape[1])[y]
        expected = -np.mean(np.sum(onehot * np.log(pred), axis=1))
    np.testing.assert_allclose(value, expected, rtol=1e-12)
    np.testing.assert_allclose(loss(y, pred), expected, rtol=1e-12)

    num = numeric_grad(lambda: float(loss.value_and_grad(targets, pred)[0]), pred)
    np.testing.assert_allclose(grad, num, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", ["sparse_categorical_crossentropy", "categorical_crossentropy"])
def test_loss_value_and_grad_logits(name):
    rng = np.random.default_rng(22)
    loss = cn.losses.get(name)
    n, c = 6, 5
    z = rng.normal(scale=2.0, size=(n, c))
    labels = rng.integers(0, c, size=n)
    y = labels if name.startswith("sparse") else np.eye(c)[labels]
    targets = loss.prepare_targets(y, z.shape, np.dtype(np.float64))

    value, grad = loss.value_and_grad_logits(targets, z)
    grad = np.array(grad, copy=True)
    p = _softmax(z)
    expected = -np.mean(np.log(p[np.arange(n), labels]))
    np.testing.assert_allclose(value, expected, rtol=1e-12)
    np.testing.assert_allclose(grad, (p - np.eye(c)[labels]) / n, rtol=1e-10, atol=1e-14)

    num = numeric_grad(lambda: float(loss.value_and_grad_logits(targets, z)[0]), z)
    np.testing.assert_allclose(grad, num, rtol=RTOL, atol=ATOL)


def test_categorical_logits_soft_targets():
    """Soft (non one-hot) targets: loss -sum t log softmax(z), checked numerically."""
    rng = np.random.default_rng(23)
    loss = cn.losses.get("categorical_crossentropy")
    z = rng.normal(size=(4, 3))
    t = _softmax(rng.normal(size=(4, 3)))
    targets = loss.prepare_targets(t, z.shape, np.dtype(np.float64))
    value, grad = loss.value_and_grad_logits(targets, z)
    grad = grad.copy()
    np.testing.assert_allclose(value, -np.mean(np.sum(t * np.log(_softmax(z)), axis=1)), rtol=1e-12)
    num = numeric_grad(lambda: float(loss.value_and_grad_logits(targets, z)[0]), z)
    np.testing.assert_allclose(grad, num, rtol=RTOL, atol=ATOL)


def test_fused_loss_is_stable_for_large_logits():
    loss = cn.losses.get("sparse_categorical_crossentropy")
    z = np.array([[1000.0, 0.0, -1000.0], [-800.0, 800.0, 0.0]])
    targets = loss.prepare_targets(np.array([2, 1]), z.shape, np.dtype(np.float64))
    value, grad = loss.value_and_grad_logits(targets, z)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    np.testing.assert_allclose(value, (2000.0 + 0.0) / 2, rtol=1e-12)


# ---------------------------------------------------------------------------------------
# (d) whole models
# ---------------------------------------------------------------------------------------
def _model_numeric_grads(model, x, y):
    weights = model.get_weights()
    numeric = []
    for k in range(len(weights)):
        w = [a.copy() for a in weights]

        def objective():
            model.set_weights(w)
            return model.evaluate(x, y)["loss"]

        numeric.append(numeric_grad(objective, w[k]))
    model.set_weights(weights)
    return numeric


def _check_model_gradients(model, x, y):
    before = model.get_weights()
    loss, grads = model.compute_gradients(x, y)
    grads = [g.copy() for g in grads]
    assert isinstance(loss, float)
    np.testing.assert_allclose(loss, model.evaluate(x, y)["loss"], rtol=1e-12)
    assert [g.shape for g in grads] == [w.shape for w in before]
    assert all(g.dtype == np.float64 for g in grads)
    numeric = _model_numeric_grads(model, x, y)
    for k, (g, num) in enumerate(zip(grads, numeric)):
        np.testing.assert_allclose(g, num, rtol=RTOL, atol=1e-8, err_msg=f"weight array #{k}")
    return loss, grads


def _mlp_5764(loss="sparse_categorical_crossentropy", last="softmax"):
    cn.set_seed(1234)
    model = cn.Sequential([
        layers.Dense(7, activation="tanh"),
        layers.Dense(6, activation="sigmoid"),
        layers.Dense(4, activation=last),
    ], dtype="float64")
    model.compile(optimizer=cn.optimizers.SGD(0.1), loss=loss)
    return model


def test_model_gradients_sparse_ce():
    rng = np.random.default_rng(31)
    x = rng.normal(size=(10, 5))
    y = rng.integers(0, 4, size=10)
    model = _mlp_5764()
    model.build((5,))
    # non-zero biases so that their gradients are exercised away from the initial point
    model.set_weights([w + rng.normal(scale=0.3, size=w.shape) for w in model.get_weights()])
    _check_model_gradients(model, x, y)


def test_model_gradients_categorical_ce():
    rng = np.random.default_rng(32)
    x = rng.normal(size=(8, 5))
    y = np.eye(4)[rng.integers(0, 4, size=8)]
    model = _mlp_5764(loss="categorical_crossentropy")
    model.build((5,))
    model.set_weights([w + rng.normal(scale=0.3, size=w.shape) for w in model.get_weights()])
    _check_model_gradients(model, x, y)


def test_model_gradients_mse_linear_output():
    rng = np.random.default_rng(33)
    x = rng.normal(size=(9, 5))
    y = rng.normal(size=(9, 4))
    model = _mlp_5764(loss="mean_squared_error", last="linear")
    model.build((5,))
    model.set_weights([w + rng.normal(scale=0.3, size=w.shape) for w in model.get_weights()])
    _check_model_gradients(model, x, y)


def test_model_gradients_mse_softmax_output_unfused():
    """MSE does not fuse: the softmax Jacobian goes through Dense.backward."""
    rng = np.random.default_rng(34)
    x = rng.normal(size=(7, 5))
    y = _softmax(rng.normal(size=(7, 4)))
    model = _mlp_5764(loss="mean_squared_error", last="softmax")
    model.build((5,))
    model.set_weights([w + rng.normal(scale=0.3, size=w.shape) for w in model.get_weights()])
    _check_model_gradients(model, x, y)


def test_model_gradients_relu_single_output():
    rng = np.random.default_rng(35)
    cn.set_seed(7)
    model = cn.Sequential([layers.Dense(6, activation="relu"), layers.Dense(1)], dtype="float64")
    model.compile(optimizer="sgd", loss="mse")
    x = rng.normal(size=(8, 3))
    y = rng.normal(size=8)
    model.build((3,))
    w = model.get_weights()
    w[1] = rng.normal(scale=0.3, size=w[1].shape)
    model.set_weights(w)
    z = x @ w[0] + w[1]
    assert np.abs(z).min() > 1e-4, "pre-activations too close to the ReLU kink for this seed"
    _check_model_gradients(model, x, y)


def _numpy_unfused_grads(weights, acts, x, onehot):
    """Forward and backward in plain numpy, with a separate softmax and -mean(sum t log p)."""
    hs = [x]
    h = x
    for (kernel, bias), act in zip(zip(weights[::2], weights[1::2]), acts):
        h = _np_activation(act, h @ kernel + bias)
        hs.append(h)
    n = x.shape[0]
    p = hs[-1]
    loss = -np.mean(np.sum(onehot * np.log(p), axis=1))
    dy = -onehot / p / n                                     # d loss / d p
    grads = []
    for layer_idx in range(len(acts) - 1, -1, -1):
        y_out = hs[layer_idx + 1]
        act = acts[layer_idx]
        if act == "softmax":                                 # full softmax Jacobian
            dz = y_out * (dy - np.sum(dy * y_out, axis=1, keepdims=True))
        elif act == "tanh":
            dz = dy * (1 - y_out ** 2)
        elif act == "sigmoid":
            dz = dy * y_out * (1 - y_out)
        else:
            dz = dy
        kernel = weights[2 * layer_idx]
        grads[:0] = [hs[layer_idx].T @ dz, dz.sum(axis=0)]
        dy = dz @ kernel.T
    return loss, grads


@pytest.mark.parametrize("loss_name", ["sparse_categorical_crossentropy", "categorical_crossentropy"])
def test_fused_softmax_ce_matches_unfused_chain(loss_name):
    rng = np.random.default_rng(41)
    x = rng.normal(size=(12, 5))
    labels = rng.integers(0, 4, size=12)
    onehot = np.eye(4)[labels]
    model = _mlp_5764(loss=loss_name)
    model.build((5,))
    model.set_weights([w + rng.normal(scale=0.3, size=w.shape) for w in model.get_weights()])
    assert model._fused_output(), "softmax + cross-entropy should take the fused path"
    y = labels if loss_name.startswith("sparse") else onehot

    loss, grads = model.compute_gradients(x, y)
    grads = [g.copy() for g in grads]
    ref_loss, ref_grads = _numpy_unfused_grads(model.get_weights(), ["tanh", "sigmoid", "softmax"],
                                               x, onehot)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-12)
    for k, (g, r) in enumerate(zip(grads, ref_grads)):
        np.testing.assert_allclose(g, r, rtol=1e-9, atol=1e-13, err_msg=f"weight array #{k}")

    # The library's own unfused path (probabilities + clipped log + softmax backward) agrees too.
    unfused = cn.losses.get(loss_name)
    unfused.fuses_with = None
    model2 = _mlp_5764(loss=unfused)
    model2.build((5,))
    model2.set_weights(model.get_weights())
    assert not model2._fused_output()
    loss2, grads2 = model2.compute_gradients(x, y)
    np.testing.assert_allclose(loss2, ref_loss, rtol=1e-12)
    for k, (g, r) in enumerate(zip(grads2, ref_grads)):
        np.testing.assert_allclose(g, r, rtol=1e-9, atol=1e-13, err_msg=f"unfused weight array #{k}")


def test_model_gradients_float32_close_to_float64():
    rng = np.random.default_rng(42)
    x = rng.normal(size=(16, 5))
    y = rng.integers(0, 4, size=16)
    m64 = _mlp_5764()
    m64.build((5,))
    cn.set_seed(1234)
    m32 = cn.Sequential([layers.Dense(7, activation="tanh"), layers.Dense(6, activation="sigmoid"),
                         layers.Dense(4, activation="softmax")])
    m32.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    m32.build((5,))
    m32.set_weights(m64.get_weights())
    l64, g64 = m64.compute_gradients(x, y)
    l32, g32 = m32.compute_gradients(x, y)
    assert all(g.dtype == np.float32 for g in g32)
    np.testing.assert_allclose(l32, l64, rtol=1e-5)
    for a, b in zip(g32, g64):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("loss_cls,categorical", [
    (cn.losses.SparseCategoricalCrossentropy, False),
    (cn.losses.CategoricalCrossentropy, True),
])
def test_model_gradients_from_logits_linear_output(loss_cls, categorical):
    """from_logits=True with a linear output: no fusion, the loss takes the logits itself."""
    rng = np.random.default_rng(43)
    x = rng.normal(size=(9, 5))
    labels = rng.integers(0, 4, size=9)
    y = np.eye(4)[labels] if categorical else labels
    model = _mlp_5764(loss=loss_cls(from_logits=True), last="linear")
    model.build((5,))
    model.set_weights([w + rng.normal(scale=0.3, size=w.shape) for w in model.get_weights()])
    loss, grads = _check_model_gradients(model, x, y)
    ref_loss, ref_grads = _numpy_unfused_grads(model.get_weights(), ["tanh", "sigmoid", "softmax"],
                                               x, np.eye(4)[labels])
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-12)
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(g, r, rtol=1e-9, atol=1e-13)
