"""RBF networks: layers.RBF (float64 finite-difference gradients, the GEMM distance
against numpy, training in a Sequential) and the two-stage RBFClassifier / RBFRegressor
against KernelRidge / SVC, save/load, scikit-learn's estimator checks."""
import numpy as np
import pytest

import cyneuron as cn
from cyneuron import layers
from cyneuron.layers.rbf import squared_distances

from test_gradients import numeric_grad

KERNELS = ["gaussian", "multiquadric", "inverse_multiquadric"]


def _phi(kernel, gd2):
    if kernel == "gaussian":
        return np.exp(-gd2)
    if kernel == "multiquadric":
        return np.sqrt(1 + gd2)
    return 1 / np.sqrt(1 + gd2)


@pytest.mark.parametrize("kernel", KERNELS)
def test_rbf_layer_forward_and_gradients(kernel):
    rng = np.random.default_rng(3)
    layer = layers.RBF(5, gamma=0.4, kernel=kernel, dtype="float64")
    x = rng.normal(size=(7, 3))
    y = layer.forward(x).copy()
    c, g = layer.get_weights()
    d2 = ((x[:, None] - c[None]) ** 2).sum(-1)
    np.testing.assert_allclose(y, _phi(kernel, g * d2), rtol=1e-12, atol=1e-12)
    layer.set_weights([c, rng.uniform(0.2, 1.0, 5)])      # distinct widths
    up = rng.normal(size=(7, 5))

    def f():
        return float((layer.forward(x) * up).sum())

    layer.forward(x)
    dx = layer.backward(up).copy()
    dc, dg = layer.get_gradients()
    np.testing.assert_allclose(dx, numeric_grad(f, x), rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(dc, numeric_grad(f, layer._weights[0]), rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(dg, numeric_grad(f, layer._weights[1]), rtol=1e-5, atol=1e-8)


def test_squared_distances_against_numpy():
    rng = np.random.default_rng(0)
    for n, k, d in [(1, 1, 1), (13, 7, 5), (200, 97, 33)]:
        x, c = rng.normal(size=(n, d)), rng.normal(size=(k, d))
        np.testing.assert_allclose(squared_distances(x, c), ((x[:, None] - c[None]) ** 2).sum(-1),
                                   rtol=1e-10, atol=1e-10)


def test_rbf_network_trains_in_a_sequential():
    rng = np.random.default_rng(0)
    x = rng.uniform(-2, 2, size=(400, 1))
    y = np.sin(2 * x[:, 0])
    rbf = layers.RBF(20, dtype="float32").adapt(x, random_state=0)
    model = cn.Sequential([rbf, layers.Dense(1)])
    model.compile(optimizer=cn.optimizers.Adam(0.02), loss="mean_squared_error")
    before = model.evaluate(x, y)["loss"]
    model.fit(x, y, epochs=60, batch_size=32, verbose=0)
    after = model.evaluate(x, y)["loss"]
    assert after < 0.05 < before
    frozen = layers.RBF(4, trainable_centers=False, trainable_gamma=False)
    net = cn.Sequential([frozen, layers.Dense(1)])
    net.build((1,))
    assert net.count_params() == 4 + 4 + 4 + 1 and len(frozen.trainable_weights) == 0


def test_rbf_layer_bad_input():
    with pytest.raises(ValueError, match="kernel"):
        layers.RBF(3, kernel="cauchy")
    with pytest.raises(ValueError, match="gamma"):
        layers.RBF(3, gamma=0)
    with pytest.raises(ValueError, match="units"):
        layers.RBF(0)
    with pytest.raises(ValueError, match="2-D"):
        layers.RBF(3).forward(np.zeros((2, 3, 4)))


sklearn = pytest.importorskip("sklearn")

from sklearn.datasets import load_diabetes, load_digits  # noqa: E402
from sklearn.kernel_ridge import KernelRidge  # noqa: E402
from sklearn.model_selection import cross_val_score, train_test_split  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.svm import SVC  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from cyneuron.rbf import RBFClassifier, RBFRegressor  # noqa: E402


def test_regressor_against_kernel_ridge_on_diabetes():
    """5-fold cross-validated R^2 within 0.05 of KernelRidge with an RBF kernel."""
    x, y = load_diabetes(return_X_y=True)
    x = StandardScaler().fit_transform(x)
    ours = cross_val_score(RBFRegressor(50, gamma=0.03, alpha=1.0, random_state=0), x, y, cv=5).mean()
    theirs = cross_val_score(KernelRidge(kernel="rbf", alpha=1.0, gamma=0.01), x, y, cv=5).mean()
    assert ours >= theirs - 0.05, (ours, theirs)


def test_classifier_against_svc_on_digits():
    """Held-out accuracy within 0.015 of SVC (RBF kernel, defaults) on a stratified split."""
    x, y = load_digits(return_X_y=True)
    xa, xb, ya, yb = train_test_split(x / 16, y, test_size=0.25, random_state=0, stratify=y)
    ours = RBFClassifier(200, alpha=0.1, random_state=0).fit(xa, ya).score(xb, yb)
    theirs = SVC().fit(xa, ya).score(xb, yb)
    assert ours >= theirs - 0.015, (ours, theirs)
    assert ours > 0.96


@pytest.mark.parametrize("kernel", KERNELS)
def test_kernels_and_least_squares(kernel):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 2))
    y = (x[:, 0] * x[:, 1] > 0).astype(int)
    clf = RBFClassifier(30, kernel=kernel, alpha=0.0, random_state=0).fit(x, y)
    assert clf.score(x, y) > 0.85
    assert clf.decision_function(x).shape == (120,)
    reg = RBFRegressor(30, kernel=kernel, random_state=0).fit(x, np.c_[x[:, 0], x[:, 1]])
    assert reg.predict(x).shape == (120, 2)


def test_save_load(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(80, 3))
    y = np.array(["a", "b", "c"])[rng.integers(0, 3, 80)]
    for est, target in ((RBFClassifier(10, random_state=0), y),
                        (RBFRegressor(10, random_state=0), x.sum(1))):
        est.fit(x, target)
        est.save(tmp_path / "rbf.npz")
        back = cn.load_estimator(tmp_path / "rbf.npz")
        assert type(back) is type(est) and back.get_params() == est.get_params()
        np.testing.assert_array_equal(back.predict(x), est.predict(x))


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_centers=0), "n_centers"), (dict(kernel="x"), "kernel"), (dict(gamma=-1.0), "gamma"),
    (dict(alpha=-1.0), "alpha"), (dict(gamma="scale"), "gamma")])
def test_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RBFRegressor(**kwargs).fit(np.zeros((5, 2)), np.zeros(5))


@parametrize_with_checks([RBFClassifier(10, random_state=0), RBFRegressor(10, random_state=0)])
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)
