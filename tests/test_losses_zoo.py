"""Every loss against a numpy reference (Keras semantics: per-sample mean or sum over the
last axis, sample_weight, reductions), float64 finite-difference gradients, numerical
stability, PyTorch parity where installed, fusion with a sigmoid output, and bad input."""
import warnings

import numpy as np
import pytest

import cyneuron as cn
from cyneuron import layers
from cyneuron._kernels import losses as lk

EPS = 1e-7
FD_EPS = 1e-6


def numeric_grad(f, x, eps=FD_EPS):
    """Central differences of the scalar f() w.r.t. every entry of x (perturbed in place)."""
    grad = np.zeros_like(x, dtype=np.float64)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        orig = flat[i]
        flat[i] = orig + eps
        f_plus = f()
        flat[i] = orig - eps
        f_minus = f()
        flat[i] = orig
        gflat[i] = (f_plus - f_minus) / (2 * eps)
    return grad


def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


# --------------------------------------------------------------------------- numpy references
# Per-sample losses (before weighting and reduction), from the raw user targets.

def np_mse(t, p):
    return np.mean((p - t) ** 2, axis=-1)


def np_mae(t, p):
    return np.mean(np.abs(p - t), axis=-1)


def np_huber(t, p, delta=1.0):
    a = np.abs(p - t)
    return np.mean(np.where(a <= delta, 0.5 * a ** 2, delta * a - 0.5 * delta ** 2), axis=-1)


def np_arctan(t, p):
    return np.mean(np.arctan(t - p) ** 2, axis=-1)


def np_hinge(t, p):
    if np.all((t == 0) | (t == 1)):
        t = 2 * t - 1
    return np.mean(np.maximum(1 - t * p, 0), axis=-1)


def np_bce(t, p):
    q = np.clip(p, EPS, 1 - EPS)
    return np.mean(-(t * np.log(q) + (1 - t) * np.log(1 - q)), axis=-1)


def np_bce_logits(t, z):
    return np.mean(np.maximum(z, 0) - z * t + np.log1p(np.exp(-np.abs(z))), axis=-1)


def np_kld(t, p):
    tc, pc = np.clip(t, EPS, 1), np.clip(p, EPS, 1)
    return np.sum(tc * np.log(tc / pc), axis=-1)


def np_cce(t, p):
    return -np.sum(t * np.log(np.clip(p, EPS, 1 - EPS)), axis=-1)


def np_cce_logits(t, z):
    m = z.max(axis=-1, keepdims=True)
    lse = m + np.log(np.exp(z - m).sum(axis=-1, keepdims=True))
    return np.sum(t * (lse - z), axis=-1)


def _onehot(labels, c):
    return np.eye(c)[labels]


# Each case: (id, loss factory, data(rng, n, c) -> (y_true, y_pred), reference(y_true, y_pred)).
# Data keep predictions away from kinks and clip bounds so finite differences are valid.

def _regression(rng, n, c):
    t = rng.normal(size=(n, c))
    d = rng.uniform(0.1, 2.5, size=(n, c)) * rng.choice([-1, 1], size=(n, c))
    return t, t + d


def _huber_data(rng, n, c):
    t, p = _regression(rng, n, c)
    d = p - t
    d[np.abs(np.abs(d) - 1.0) < 0.05] += 0.2  # away from |d| = delta
    return t, t + d


def _hinge01(rng, n, c):
    t = rng.integers(0, 2, size=(n, c)).astype(float)
    p = rng.normal(size=(n, c))
    margin = 1 - (2 * t - 1) * p
    p[np.abs(margin) < 0.05] += 0.2
    return t, p


def _hinge_pm1(rng, n, c):
    t, p = _hinge01(rng, n, c)
    return 2 * t - 1, p


def _binary_probs(rng, n, c):
    return rng.uniform(0, 1, size=(n, c)), rng.uniform(0.05, 0.95, size=(n, c))


def _binary_logits(rng, n, c):
    return rng.integers(0, 2, size=(n, c)).astype(float), 3 * rng.normal(size=(n, c))


def _distributions(rng, n, c):
    return _softmax(rng.normal(size=(n, c))), _softmax(0.5 * rng.normal(size=(n, c)))


def _onehot_probs(rng, n, c):
    return _onehot(rng.integers(0, c, n), c), _softmax(0.5 * rng.normal(size=(n, c)))


def _labels_probs(rng, n, c):
    return rng.integers(0, c, n), _softmax(0.5 * rng.normal(size=(n, c)))


def _onehot_logits(rng, n, c):
    return _onehot(rng.integers(0, c, n), c), 2 * rng.normal(size=(n, c))


def _labels_logits(rng, n, c):
    return rng.integers(0, c, n), 2 * rng.normal(size=(n, c))


def _dense(t, p):
    return _onehot(t, p.shape[1]) if t.ndim == 1 else t


CASES = [
    ("mse", lambda **kw: cn.losses.MeanSquaredError(**kw), _regression, np_mse),
    ("mae", lambda **kw: cn.losses.MeanAbsoluteError(**kw), _regression, np_mae),
    ("huber", lambda **kw: cn.losses.Huber(**kw), _huber_data, np_huber),
    ("huber-delta0.3", lambda **kw: cn.losses.Huber(delta=0.3, **kw), _regression,
     lambda t, p: np_huber(t, p, 0.3)),
    ("arctan", lambda **kw: cn.losses.Arctan(**kw), _regression, np_arctan),
    ("hinge-01", lambda **kw: cn.losses.Hinge(**kw), _hinge01, np_hinge),
    ("hinge-pm1", lambda **kw: cn.losses.Hinge(**kw), _hinge_pm1, np_hinge),
    ("bce", lambda **kw: cn.losses.BinaryCrossentropy(**kw), _binary_probs, np_bce),
    ("bce-logits", lambda **kw: cn.losses.BinaryCrossentropy(from_logits=True, **kw),
     _binary_logits, np_bce_logits),
    ("kld", lambda **kw: cn.losses.KLDivergence(**kw), _distributions, np_kld),
    ("cce", lambda **kw: cn.losses.CategoricalCrossentropy(**kw), _onehot_probs, np_cce),
    ("cce-soft", lambda **kw: cn.losses.CategoricalCrossentropy(**kw), _distributions, np_cce),
    ("cce-logits", lambda **kw: cn.losses.CategoricalCrossentropy(from_logits=True, **kw),
     _onehot_logits, np_cce_logits),
    ("scce", lambda **kw: cn.losses.SparseCategoricalCrossentropy(**kw), _labels_probs,
     lambda t, p: np_cce(_dense(t, p), p)),
    ("scce-logits", lambda **kw: cn.losses.SparseCategoricalCrossentropy(from_logits=True, **kw),
     _labels_logits, lambda t, p: np_cce_logits(_dense(t, p), p)),
]
CASE_IDS = [c[0] for c in CASES]


# --------------------------------------------------------------------------- values
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_value_matches_numpy_for_each_reduction(case, weighted):
    _, make, data, ref = case
    rng = np.random.default_rng(1)
    n, c = 9, 4
    y, p = data(rng, n, c)
    w = rng.uniform(0.1, 2.0, n) if weighted else None
    per_sample = ref(y, p) * (w if weighted else 1)
    assert make()(y, p, sample_weight=w) == pytest.approx(per_sample.sum() / n, rel=1e-12)
    assert make(reduction="sum_over_batch_size")(y, p, w) == pytest.approx(per_sample.sum() / n,
                                                                          rel=1e-12)
    assert make(reduction="sum")(y, p, w) == pytest.approx(per_sample.sum(), rel=1e-12)
    none = make(reduction="none")(y, p, w)
    assert none.shape == (n,)
    np.testing.assert_allclose(none, per_sample, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(make(reduction=None)(y, p, w), per_sample, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_scalar_and_column_sample_weight_match_vector(case):
    _, make, data, _ = case
    rng = np.random.default_rng(2)
    y, p = data(rng, 6, 3)
    loss = make()
    assert loss(y, p, sample_weight=2.5) == pytest.approx(2.5 * loss(y, p), rel=1e-12)
    w = rng.uniform(size=6)
    assert loss(y, p, sample_weight=w.reshape(-1, 1)) == pytest.approx(loss(y, p, w), rel=1e-12)
    assert loss(y, p, sample_weight=np.ones(6)) == pytest.approx(loss(y, p), rel=1e-12)
    # A weight of zero removes the sample, but the mean still divides by the batch size.
    w0 = np.ones(6)
    w0[0] = 0
    full = make(reduction="none")(y, p)
    assert loss(y, p, w0) == pytest.approx(full[1:].sum() / 6, rel=1e-12)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_float32_predictions_agree_with_float64(case):
    _, make, data, _ = case
    rng = np.random.default_rng(3)
    y, p = data(rng, 50, 5)
    loss = make()
    t = loss.prepare_targets(y, p.shape, np.dtype(np.float32))
    v32, g32 = loss.value_and_grad(t, p.astype(np.float32))
    assert g32.dtype == np.float32
    g32 = g32.copy()
    t64 = loss.prepare_targets(y, p.shape, np.dtype(np.float64))
    v64, g64 = loss.value_and_grad(t64, p)
    assert v32 == pytest.approx(v64, rel=1e-5)
    np.testing.assert_allclose(g32, g64, rtol=2e-4, atol=1e-6 * np.abs(g64).max())


# --------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("reduction, weighted", [("sum_over_batch_size", False),
                                                 ("sum_over_batch_size", True), ("sum", True)],
                         ids=["mean", "mean-weighted", "sum-weighted"])
def test_finite_difference_gradient(case, reduction, weighted):
    _, make, data, _ = case
    rng = np.random.default_rng(4)
    y, p = data(rng, 5, 4)
    loss = make(reduction=reduction)
    w = rng.uniform(0.2, 2.0, 5) if weighted else None
    t = loss.prepare_targets(y, p.shape, np.dtype(np.float64))
    value, grad = loss.value_and_grad(t, p, sample_weight=w)
    grad = grad.copy()
    assert value == pytest.approx(loss(y, p, sample_weight=w), rel=1e-12)
    num = numeric_grad(lambda: loss.value_and_grad(t, p, sample_weight=w)[0], p)
    np.testing.assert_allclose(grad, num, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("make, data", [
    (lambda: cn.losses.BinaryCrossentropy(), _binary_logits),
    (lambda: cn.losses.CategoricalCrossentropy(), _onehot_logits),
    (lambda: cn.losses.SparseCategoricalCrossentropy(), _labels_logits),
], ids=["bce", "cce", "scce"])
def test_fused_logits_gradient_weighted(make, data):
    """value_and_grad_logits (the path a model takes with the fused output activation)."""
    rng = np.random.default_rng(5)
    y, z = data(rng, 6, 3)
    loss = make()
    w = rng.uniform(0.2, 2.0, 6)
    t = loss.prepare_targets(y, z.shape, np.dtype(np.float64))
    value, grad = loss.value_and_grad_logits(t, z, sample_weight=w)
    grad = grad.copy()
    act = _sigmoid if loss.fuses_with == "sigmoid" else _softmax
    assert value == pytest.approx(loss(y, act(z), sample_weight=w), rel=1e-9)
    num = numeric_grad(lambda: loss.value_and_grad_logits(t, z, sample_weight=w)[0], z)
    np.testing.assert_allclose(grad, num, rtol=1e-6, atol=1e-9)


def test_closed_form_gradients():
    """A few gradients written out: sigmoid(z) - t for BCE on logits, sign for MAE, clipped Huber."""
    z = np.array([[-3.0, 0.0, 2.0]])
    t = np.array([[1.0, 0.0, 1.0]])
    loss = cn.losses.BinaryCrossentropy(from_logits=True, reduction="sum")
    _, g = loss.value_and_grad(t, z)
    np.testing.assert_allclose(g, (_sigmoid(z) - t) / 3, rtol=1e-14)
    _, g = cn.losses.MeanAbsoluteError(reduction="sum").value_and_grad(np.zeros((1, 3)), z)
    np.testing.assert_array_equal(g, [[-1 / 3, 0.0, 1 / 3]])
    _, g = cn.losses.Huber(delta=1.5, reduction="sum").value_and_grad(np.zeros((1, 3)), z)
    np.testing.assert_allclose(g, [[-1.5 / 3, 0.0, 1.5 / 3]])


# --------------------------------------------------------------------------- stability, clipping
def test_bce_from_logits_is_stable_and_accurate_at_extremes():
    z = np.array([[1000.0], [-1000.0], [50.0], [-50.0], [30.0], [-30.0], [0.0]])
    t = np.array([[0.0], [1.0], [1.0], [0.0], [1.0], [1.0], [1.0]])
    loss = cn.losses.BinaryCrossentropy(from_logits=True, reduction="none")
    with np.errstate(all="raise"), warnings.catch_warnings():
        warnings.simplefilter("error")
        values = loss(t, z)
        _, grad = loss.value_and_grad(loss.prepare_targets(t, z.shape, np.float64), z)
    expected = [1000.0, 1000.0, np.exp(-50.0), np.exp(-50.0), np.exp(-30.0), 30.0 + np.exp(-30.0),
                np.log(2.0)]
    np.testing.assert_allclose(values, expected, rtol=1e-12)
    assert np.all(np.isfinite(grad))
    with np.errstate(over="ignore"):  # sigmoid(z) - t without cancellation: -sigmoid(-z) for t = 1
        expected_grad = np.where(t == 1, -1 / (1 + np.exp(z)), 1 / (1 + np.exp(-z)))
    np.testing.assert_allclose(grad * 7, expected_grad, rtol=1e-12, atol=1e-300)
    z32 = z.astype(np.float32)
    t32 = loss.prepare_targets(t, z.shape, np.float32)
    _, g32 = loss.value_and_grad(t32, z32)
    assert np.all(np.isfinite(g32))


def test_probability_losses_clip_like_keras():
    """BCE clips p to [1e-7, 1 - 1e-7] and KL clips both to [1e-7, 1]: finite at p = 0 or 1,
    and the clipped entries get zero gradient."""
    p = np.array([[0.0, 1.0, 0.5]])
    t = np.array([[1.0, 0.0, 1.0]])
    bce = cn.losses.BinaryCrossentropy(reduction="sum")
    value, grad = bce.value_and_grad(t, p)
    assert value == pytest.approx((-np.log(EPS) - np.log(EPS) - np.log(0.5)) / 3, rel=1e-6)
    np.testing.assert_allclose(grad, [[0.0, 0.0, -2.0 / 3]], rtol=1e-12)
    kld = cn.losses.KLDivergence(reduction="sum")
    t2 = np.array([[0.0, 0.5, 0.5]])
    p2 = np.array([[0.5, 0.5, 0.0]])
    value, grad = kld.value_and_grad(t2, p2)
    assert value == pytest.approx(EPS * np.log(EPS / 0.5) + 0.5 * np.log(0.5 / EPS), rel=1e-9)
    np.testing.assert_allclose(grad, [[-EPS / 0.5, -1.0, 0.0]], rtol=1e-12)


def test_arctan_loss_is_bounded_and_near_mse_for_small_errors():
    loss = cn.losses.Arctan(reduction="none")
    t = np.zeros((3, 1))
    p = np.array([[1e-4], [1e6], [-1e6]])
    values = loss(t, p)
    assert values[0] == pytest.approx(1e-8, rel=1e-7)          # arctan(d)^2 ~ d^2
    np.testing.assert_allclose(values[1:], (np.pi / 2) ** 2, rtol=1e-5)


def test_hinge_converts_zero_one_labels_only():
    loss = cn.losses.Hinge()
    out_shape = (3, 1)
    np.testing.assert_array_equal(loss.prepare_targets([0, 1, 1], out_shape, np.float64)[:, 0],
                                  [-1, 1, 1])
    np.testing.assert_array_equal(loss.prepare_targets([-1, 1, 1], out_shape, np.float64)[:, 0],
                                  [-1, 1, 1])
    p = np.array([[0.3], [2.0], [-0.5]])
    assert loss([0, 1, 1], p) == pytest.approx(loss([-1, 1, 1], p)) \
        == pytest.approx(np.mean([1.3, 0.0, 1.5]))


def test_label_smoothing():
    rng = np.random.default_rng(6)
    t = rng.integers(0, 2, size=(5, 3)).astype(float)
    p = rng.uniform(0.05, 0.95, size=(5, 3))
    bce = cn.losses.BinaryCrossentropy(label_smoothing=0.2)
    assert bce(t, p) == pytest.approx(np.mean(np_bce(t * 0.8 + 0.1, p)), rel=1e-12)
    onehot, probs = _onehot_probs(rng, 5, 4)
    cce = cn.losses.CategoricalCrossentropy(label_smoothing=0.1)
    assert cce(onehot, probs) == pytest.approx(np.mean(np_cce(onehot * 0.9 + 0.1 / 4, probs)),
                                               rel=1e-12)


@pytest.mark.parametrize("name, data", [("mean_absolute_error", _regression),
                                        ("binary_crossentropy", _binary_probs),
                                        ("kl_divergence", _distributions)])
def test_large_batches_on_two_threads_match_one(name, data, restore_threads):
    rng = np.random.default_rng(7)
    y, p = data(rng, 6000, 10)
    loss = cn.losses.get(name)
    t = loss.prepare_targets(y, p.shape, np.dtype(np.float64))
    cn.set_num_threads(1)
    v1, g1 = loss.value_and_grad(t, p)
    g1 = g1.copy()
    cn.set_num_threads(2)
    v2, g2 = loss.value_and_grad(t, p)
    assert v2 == pytest.approx(v1, rel=1e-12)
    np.testing.assert_array_equal(g2, g1)


# --------------------------------------------------------------------------- PyTorch parity
def test_torch_parity():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(8)
    t, p = _regression(rng, 7, 3)
    T, P = torch.tensor(t), torch.tensor(p)
    assert cn.losses.get("mse")(t, p) == pytest.approx(F.mse_loss(P, T).item(), rel=1e-12)
    assert cn.losses.get("mae")(t, p) == pytest.approx(F.l1_loss(P, T).item(), rel=1e-12)
    assert cn.losses.Huber(0.7)(t, p) == pytest.approx(F.huber_loss(P, T, delta=0.7).item(), rel=1e-12)
    tb, z = _binary_logits(rng, 7, 3)
    assert cn.losses.BinaryCrossentropy(from_logits=True)(tb, z) == pytest.approx(
        F.binary_cross_entropy_with_logits(torch.tensor(z), torch.tensor(tb)).item(), rel=1e-12)
    tb, pb = _binary_probs(rng, 7, 3)
    w = rng.uniform(size=7)
    ref = (F.binary_cross_entropy(torch.tensor(pb), torch.tensor(tb), reduction="none").mean(1)
           * torch.tensor(w)).mean().item()
    assert cn.losses.get("binary_crossentropy")(tb, pb, sample_weight=w) == pytest.approx(ref, rel=1e-12)
    td, pd = _distributions(rng, 7, 4)
    ref = F.kl_div(torch.tensor(np.log(pd)), torch.tensor(td), reduction="batchmean").item()
    assert cn.losses.get("kld")(td, pd) == pytest.approx(ref, rel=1e-12)
    labels, logits = _labels_logits(rng, 7, 4)
    ref = F.cross_entropy(torch.tensor(logits), torch.tensor(labels), reduction="sum").item()
    loss = cn.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum")
    assert loss(labels, logits) == pytest.approx(ref, rel=1e-12)


# --------------------------------------------------------------------------- in models
def _binary_model(loss, last="sigmoid", dtype="float64", seed=0):
    cn.set_seed(seed)
    model = cn.Sequential([layers.Dense(6, activation="tanh"), layers.Dense(2, activation=last)],
                          dtype=dtype)
    model.compile(optimizer=cn.optimizers.SGD(0.1), loss=loss)
    return model


def test_sigmoid_output_fuses_with_binary_crossentropy():
    rng = np.random.default_rng(9)
    x = rng.normal(size=(8, 3))
    y = rng.integers(0, 2, size=(8, 2)).astype(float)
    fused = _binary_model("binary_crossentropy")
    fused.build((3,))
    fused.set_weights([w + rng.normal(scale=0.5, size=w.shape) for w in fused.get_weights()])
    assert fused._fused_output()
    loss, grads = fused.compute_gradients(x, y)
    grads = [g.copy() for g in grads]

    unfused_loss = cn.losses.BinaryCrossentropy()
    unfused_loss.fuses_with = None
    unfused = _binary_model(unfused_loss)
    unfused.build((3,))
    unfused.set_weights(fused.get_weights())
    assert not unfused._fused_output()
    loss2, grads2 = unfused.compute_gradients(x, y)
    assert loss == pytest.approx(loss2, rel=1e-12)
    for g, g2 in zip(grads, grads2):
        np.testing.assert_allclose(g, g2, rtol=1e-9, atol=1e-13)

    weights = fused.get_weights()
    for k in range(len(weights)):
        w = [a.copy() for a in weights]

        def objective():
            fused.set_weights(w)
            return fused.evaluate(x, y)["loss"]

        np.testing.assert_allclose(grads[k], numeric_grad(objective, w[k]), rtol=1e-6, atol=1e-9)
    fused.set_weights(weights)


def test_bce_from_logits_with_linear_output_matches_fused_sigmoid():
    rng = np.random.default_rng(10)
    x = rng.normal(size=(8, 3))
    y = rng.integers(0, 2, size=(8, 2)).astype(float)
    fused = _binary_model("binary_crossentropy")
    logits = _binary_model(cn.losses.BinaryCrossentropy(from_logits=True), last="linear")
    fused.build((3,))
    logits.build((3,))
    logits.set_weights(fused.get_weights())
    assert not logits._fused_output()
    l1, g1 = fused.compute_gradients(x, y)
    l2, g2 = logits.compute_gradients(x, y)
    assert l1 == pytest.approx(l2, rel=1e-12)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)


def test_binary_classification_learns_with_fused_bce_and_accuracy_on_probabilities():
    """Digits 'less than 5' vs the rest, sigmoid output + binary_crossentropy (fused)."""
    pytest.importorskip("sklearn")
    from cyneuron import datasets
    (x_tr, y_tr), (x_te, y_te) = datasets.load_digits()
    cn.set_seed(0)
    model = cn.Sequential([layers.Dense(32, activation="relu"), layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer=cn.optimizers.Adam(0.01), loss="binary_crossentropy", metrics=["accuracy"])
    history = model.fit(x_tr, (y_tr < 5).astype(float), epochs=15, batch_size=32, verbose=0)
    result = model.evaluate(x_te, (y_te < 5).astype(float))
    assert result["accuracy"] >= 0.95
    # The metric saw probabilities: its value equals thresholding predict() at 0.5.
    pred = model.predict(x_te)[:, 0]
    assert np.all((pred >= 0) & (pred <= 1))
    assert result["accuracy"] == pytest.approx(np.mean((pred > 0.5) == (y_te < 5)))
    assert history.history["accuracy"][-1] >= 0.95


@pytest.mark.parametrize("name", ["mean_squared_error", "mean_absolute_error", "huber", "arctan"])
def test_regression_losses_fit_a_linear_target(name):
    rng = np.random.default_rng(11)
    x = rng.normal(size=(200, 3))
    y = x @ np.array([0.5, -0.3, 0.2]) + 0.1
    cn.set_seed(0)
    model = cn.Sequential([layers.Dense(1)])
    # A decaying rate lets MAE's constant-size (sub)gradients settle too.
    lr = cn.optimizers.schedules.ExponentialDecay(0.05, decay_steps=100, decay_rate=0.5)
    model.compile(optimizer=cn.optimizers.SGD(lr, momentum=0.9), loss=name)
    model.fit(x, y, epochs=60, batch_size=20, verbose=0)
    np.testing.assert_allclose(model.predict(x)[:, 0], y, atol=0.02)


def test_hinge_trains_a_linear_classifier():
    rng = np.random.default_rng(12)
    x = rng.normal(size=(200, 2))
    y = (x[:, 0] + 2 * x[:, 1] > 0).astype(float)
    cn.set_seed(0)
    model = cn.Sequential([layers.Dense(1)])
    model.compile(optimizer=cn.optimizers.SGD(0.05), loss="hinge")
    model.fit(x, y, epochs=30, batch_size=20, verbose=0)
    assert np.mean((model.predict(x)[:, 0] > 0) == (y == 1)) >= 0.97


# --------------------------------------------------------------------------- names, config, bad input
def test_names_and_aliases():
    expected = {"mean_squared_error", "mean_absolute_error", "huber", "binary_crossentropy",
                "categorical_crossentropy", "sparse_categorical_crossentropy", "hinge",
                "kl_divergence", "arctan"}
    assert expected <= set(cn.losses.names())
    for alias, name in [("mse", "mean_squared_error"), ("MAE", "mean_absolute_error"),
                        ("huber_loss", "huber"), ("kld", "kl_divergence"),
                        ("kullback_leibler_divergence", "kl_divergence"), ("arctan_error", "arctan")]:
        assert cn.losses.get(alias).name == name
    assert isinstance(cn.losses.get(cn.losses.Huber), cn.losses.Huber)


def test_get_config():
    assert cn.losses.Huber(delta=2.0, reduction="sum").get_config() == {
        "name": "huber", "reduction": "sum", "delta": 2.0}
    assert cn.losses.BinaryCrossentropy(from_logits=True).get_config() == {
        "name": "binary_crossentropy", "reduction": "sum_over_batch_size", "from_logits": True,
        "label_smoothing": 0.0}
    assert cn.losses.CategoricalCrossentropy(label_smoothing=0.1).get_config()["label_smoothing"] == 0.1
    assert "Huber(" in repr(cn.losses.Huber())


@pytest.mark.parametrize("make, match", [
    (lambda: cn.losses.MeanSquaredError(reduction="mean"), "reduction"),
    (lambda: cn.losses.Hinge(reduction=3), "reduction"),
    (lambda: cn.losses.Huber(delta=0), "delta"),
    (lambda: cn.losses.Huber(delta=-1.0), "delta"),
    (lambda: cn.losses.Huber(delta=float("nan")), "delta"),
    (lambda: cn.losses.Huber(delta="1"), "delta"),
    (lambda: cn.losses.BinaryCrossentropy(label_smoothing=1.5), "label_smoothing"),
    (lambda: cn.losses.CategoricalCrossentropy(label_smoothing=-0.1), "label_smoothing"),
])
def test_bad_settings(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("w, match", [
    (np.ones(3), r"shape \(4,\)"),
    (np.ones((4, 2)), r"shape \(4,\)"),
    (np.array([1.0, np.nan, 1.0, 1.0]), "NaN"),
    (np.array(["a", "b", "c", "d"]), "sample_weight"),
])
def test_bad_sample_weight(w, match):
    loss = cn.losses.MeanSquaredError()
    with pytest.raises((ValueError, TypeError), match=match):
        loss(np.zeros((4, 2)), np.ones((4, 2)), sample_weight=w)


def test_bad_targets():
    p = np.full((3, 2), 0.5)
    with pytest.raises(ValueError, match="shape"):
        cn.losses.Huber()(np.zeros((3, 3)), p)
    with pytest.raises(ValueError, match="samples"):
        cn.losses.Hinge()(np.zeros((2, 2)), p)
    with pytest.raises(ValueError, match="one-hot or a distribution"):
        cn.losses.KLDivergence()([0, 1, 1], p)
    with pytest.raises(ValueError, match="NaN"):
        cn.losses.BinaryCrossentropy()(np.full((3, 2), np.nan), p)
    with pytest.raises(ValueError, match="shape"):   # N-D outputs work; targets must match
        cn.losses.MeanAbsoluteError()(np.zeros((3, 2, 3)), np.zeros((3, 2, 2)))


def test_kernels_check_their_buffers():
    p = np.zeros((3, 2))
    with pytest.raises(ValueError, match="y_true"):
        lk.mean_absolute_error(p, np.zeros((2, 2)), np.empty((3, 2)), 1.0)
    with pytest.raises(ValueError, match="grad"):
        lk.hinge(p, p, np.empty((3, 1)), 1.0)
    with pytest.raises(ValueError, match="sample_weight"):
        lk.arctan(p, p, np.empty((3, 2)), 1.0, sample_weight=np.ones(2))
    with pytest.raises(ValueError, match="losses"):
        lk.binary_crossentropy_logits(p, p, np.empty((3, 2)), 1.0, losses=np.empty(4))
    with pytest.raises(ValueError, match="sample_weight"):
        lk.softmax_cross_entropy_sparse(p, np.zeros(3, np.int64), np.empty((3, 2)), 1.0,
                                        sample_weight=np.ones(5))
    with pytest.raises(ValueError, match="losses"):
        lk.softmax_cross_entropy_dense(p, p, np.empty((3, 2)), 1.0, losses=np.empty(1))
    with pytest.raises(ValueError, match="delta"):
        lk.huber(p, p, np.empty((3, 2)), 1.0, 0.0)
