"""cyneuron.sklearn: scikit-learn's own estimator checks, the same training trajectory as
scikit-learn's MLPs for the same random_state, Pipeline / GridSearchCV, partial_fit,
warm_start, the extras (per-layer activations, dropout, class_weight, dtype), pickling."""
import pickle
import warnings

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")

from sklearn import neural_network as sk  # noqa: E402
from sklearn.datasets import load_digits, make_multilabel_classification, make_regression  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.model_selection import GridSearchCV, train_test_split  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import cyneuron as cn  # noqa: E402
from cyneuron.sklearn import MLPClassifier, MLPRegressor  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits(return_X_y=True)
    return x / 16.0, y


@parametrize_with_checks([MLPClassifier(max_iter=100), MLPRegressor(max_iter=100)])
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


# -- the same algorithm as scikit-learn ----------------------------------------------------------
def _assert_same_fit(a, b, rtol=1e-9, atol=1e-12):
    assert a.n_iter_ == b.n_iter_ and a.t_ == b.t_
    np.testing.assert_allclose(b.loss_curve_, a.loss_curve_, rtol=rtol, atol=atol)
    for u, v in zip(a.coefs_ + a.intercepts_, b.coefs_ + b.intercepts_):
        np.testing.assert_allclose(v, u, rtol=rtol, atol=atol * 10)


@pytest.mark.parametrize("params", [
    dict(solver="adam"),
    dict(solver="sgd"),
    dict(solver="sgd", nesterovs_momentum=False, learning_rate="invscaling", learning_rate_init=0.1),
    dict(solver="sgd", alpha=0.1, batch_size=64, learning_rate="adaptive", momentum=0.5),
    dict(solver="adam", early_stopping=True, activation="tanh"),
    dict(solver="adam", activation="logistic", shuffle=False, beta_1=0.8, epsilon=1e-6),
    dict(solver="sgd", activation="identity", tol=1e-2, n_iter_no_change=2),
], ids=lambda p: "-".join(f"{k}={v}" for k, v in p.items()))
def test_classifier_follows_scikit_learn(digits, params):
    x, y = digits
    kwargs = dict(hidden_layer_sizes=(24, 12), max_iter=12, random_state=3, **params)
    a = sk.MLPClassifier(**kwargs).fit(x, y)
    b = MLPClassifier(**kwargs).fit(x, y)
    _assert_same_fit(a, b)
    if a.best_loss_ is None:
        assert b.best_loss_ is None
    else:
        assert b.best_loss_ == pytest.approx(a.best_loss_, rel=1e-12)
    if params.get("early_stopping"):
        np.testing.assert_allclose(b.validation_scores_, a.validation_scores_)
        assert b.best_validation_score_ == a.best_validation_score_
    np.testing.assert_allclose(b.predict_proba(x), a.predict_proba(x), rtol=1e-8, atol=1e-12)
    assert b.score(x, y) == a.score(x, y)


def test_binary_and_multilabel_follow_scikit_learn(digits):
    x, y = digits
    labels = np.where(y > 4, "big", "small")
    for early in (False, True):
        a = sk.MLPClassifier((10,), max_iter=8, random_state=0, early_stopping=early).fit(x, labels)
        b = MLPClassifier((10,), max_iter=8, random_state=0, early_stopping=early).fit(x, labels)
        _assert_same_fit(a, b)
        assert list(b.classes_) == ["big", "small"]
        np.testing.assert_allclose(b.predict_proba(x), a.predict_proba(x), rtol=1e-8, atol=1e-12)
        assert (b.predict(x) == a.predict(x)).all()
    xm, ym = make_multilabel_classification(200, 10, n_classes=4, random_state=0)
    a = sk.MLPClassifier((10,), max_iter=8, random_state=0, alpha=0.01).fit(xm, ym)
    b = MLPClassifier((10,), max_iter=8, random_state=0, alpha=0.01).fit(xm, ym)
    _assert_same_fit(a, b, rtol=1e-8, atol=1e-10)   # scikit-learn clips probabilities at eps
    assert b.predict(xm).shape == ym.shape and (b.predict(xm) == a.predict(xm)).all()


@pytest.mark.parametrize("params", [dict(), dict(early_stopping=True), dict(solver="sgd")])
def test_regressor_follows_scikit_learn_with_sample_weight(params):
    x, y = make_regression(300, 8, n_targets=3, random_state=0)
    y = y / 100
    sw = np.random.default_rng(0).uniform(0, 2, 300)
    kwargs = dict(hidden_layer_sizes=(16,), max_iter=10, random_state=0, **params)
    a = sk.MLPRegressor(**kwargs).fit(x, y, sample_weight=sw)
    b = MLPRegressor(**kwargs).fit(x, y, sample_weight=sw)
    _assert_same_fit(a, b)
    np.testing.assert_allclose(b.predict(x), a.predict(x), rtol=1e-9, atol=1e-12)
    a1 = sk.MLPRegressor(**kwargs).fit(x, y[:, 0])
    b1 = MLPRegressor(**kwargs).fit(x, y[:, 0])
    _assert_same_fit(a1, b1)
    assert b1.predict(x).shape == (300,)


def test_partial_fit_and_warm_start_follow_scikit_learn(digits):
    x, y = digits
    kwargs = dict(hidden_layer_sizes=(16,), random_state=1)
    a, b = sk.MLPClassifier(**kwargs), MLPClassifier(**kwargs)
    with pytest.raises(ValueError, match="classes"):
        MLPClassifier().partial_fit(x, y)
    for start in range(0, 600, 200):
        part = slice(start, start + 200)
        a.partial_fit(x[part], y[part], classes=np.arange(10))
        b.partial_fit(x[part], y[part], classes=np.arange(10))
    _assert_same_fit(a, b)
    a = sk.MLPClassifier(max_iter=3, warm_start=True, **kwargs).fit(x, y).fit(x, y)
    b = MLPClassifier(max_iter=3, warm_start=True, **kwargs).fit(x, y).fit(x, y)
    _assert_same_fit(a, b)
    assert len(b.loss_curve_) == 6
    with pytest.raises(ValueError, match="same classes"):
        b.fit(x[y < 5], y[y < 5])
    with pytest.raises(ValueError, match="early_stopping"):
        MLPClassifier(early_stopping=True).partial_fit(x, y, classes=np.arange(10))


def test_stops_on_tol_like_scikit_learn(digits):
    x, y = digits
    a = sk.MLPClassifier((8,), max_iter=500, tol=1e-2, random_state=0).fit(x, y)
    b = MLPClassifier((8,), max_iter=500, tol=1e-2, random_state=0).fit(x, y)
    assert b.n_iter_ == a.n_iter_ < 500
    _assert_same_fit(a, b)


def test_digits_accuracy_matches_scikit_learn(digits):
    x, y = digits
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, random_state=0)
    params = dict(max_iter=30, n_iter_no_change=30, random_state=0)
    reference = sk.MLPClassifier(**params).fit(xtr, ytr).score(xte, yte)
    assert MLPClassifier(**params).fit(xtr, ytr).score(xte, yte) >= reference
    assert MLPClassifier(dtype="float32", **params).fit(xtr, ytr).score(xte, yte) >= reference - 0.01


# -- in scikit-learn's tools ---------------------------------------------------------------------------
def test_pipeline_and_grid_search(digits):
    """The same search with scikit-learn's MLPClassifier picks the same parameters with the
    same cross-validated score (both estimators train alike)."""
    x, y = digits
    grid = {"mlpclassifier__alpha": [1e-4, 1.0], "mlpclassifier__hidden_layer_sizes": [(8,), (32,)]}
    results = []
    for cls in (MLPClassifier, sk.MLPClassifier):
        pipe = make_pipeline(StandardScaler(), cls(max_iter=15, random_state=0))
        results.append(GridSearchCV(pipe, grid, cv=3).fit(x, y))
    ours, theirs = results
    assert ours.best_params_ == theirs.best_params_
    assert ours.best_score_ == pytest.approx(theirs.best_score_, abs=1e-9)
    assert ours.score(x, y) == pytest.approx(theirs.score(x, y), abs=1e-9)
    assert isinstance(ours.best_estimator_[-1], MLPClassifier)
    reg = GridSearchCV(MLPRegressor(max_iter=20, random_state=0), {"alpha": [1e-4, 1e-2]}, cv=2)
    xr, yr = make_regression(120, 5, random_state=1)
    reg.fit(xr, yr / 100)
    assert hasattr(reg.best_estimator_, "model_")


# -- attributes -----------------------------------------------------------------------------------
def test_coefs_and_intercepts_are_live_views(digits):
    x, y = digits
    clf = MLPClassifier((7,), max_iter=3, random_state=0).fit(x, y)
    assert [c.shape for c in clf.coefs_] == [(64, 7), (7, 10)]
    assert [b.shape for b in clf.intercepts_] == [(7,), (10,)]
    assert clf.n_layers_ == 3 and clf.n_outputs_ == 10 and clf.out_activation_ == "softmax"
    assert clf.n_features_in_ == 64 and len(clf.loss_curve_) == 3 == clf.n_iter_
    clf.coefs_[1][...] = 0
    clf.intercepts_[1][...] = np.arange(10)
    assert (clf.predict(x) == 9).all()
    clf.intercepts_ = [np.zeros(7), np.zeros(10)]
    np.testing.assert_allclose(clf.predict_proba(x), 0.1)
    with pytest.raises(ValueError, match="shapes"):
        clf.coefs_ = [np.zeros((2, 2))]
    np.testing.assert_allclose(np.exp(clf.predict_log_proba(x[:5])), clf.predict_proba(x[:5]))


def test_fitted_model_saves_and_loads(digits, tmp_path):
    x, y = digits
    clf = MLPClassifier((12,), max_iter=5, random_state=0).fit(x, y)
    clf.model_.save(tmp_path / "mlp.cyn")
    net = cn.load_model(tmp_path / "mlp.cyn")
    np.testing.assert_array_equal(net.predict(x), clf.predict_proba(x))


def test_pickle_round_trip_keeps_training(digits):
    x, y = digits
    clf = MLPClassifier((12,), max_iter=5, random_state=0).fit(x, y)
    clone = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(clone.predict_proba(x), clf.predict_proba(x))
    clf.partial_fit(x, y)
    clone.partial_fit(x, y)
    np.testing.assert_array_equal(clone.predict_proba(x), clf.predict_proba(x))
    assert np.shares_memory(clone.coefs_[0], clone.model_._params)


def test_verbose_prints_iterations(digits, capsys):
    x, y = digits
    MLPClassifier((4,), max_iter=2, verbose=True, random_state=0).fit(x, y)
    out = capsys.readouterr().out
    assert "Iteration 1, loss = " in out and "Iteration 2, loss = " in out
    MLPClassifier((4,), max_iter=3, verbose=True, random_state=0, early_stopping=True).fit(x, y)
    assert "Validation score: " in capsys.readouterr().out


# -- beyond scikit-learn -----------------------------------------------------------------------------
def test_per_layer_activations_and_dropout(digits):
    x, y = digits
    clf = MLPClassifier((32, 16), activation=["gelu", "tanh"], dropout=[0.2, 0.0], max_iter=40,
                        random_state=0).fit(x, y)
    kinds = [type(layer).__name__ for layer in clf.model_.layers]
    assert kinds == ["Dense", "Dropout", "Dense", "Dense"]
    assert [layer.activation.name for layer in clf._dense] == ["gelu", "tanh", "softmax"]
    assert clf.score(x, y) > 0.85
    again = MLPClassifier((32, 16), activation=["gelu", "tanh"], dropout=[0.2, 0.0], max_iter=40,
                          random_state=0).fit(x, y)
    assert again.loss_curve_ == clf.loss_curve_           # dropout masks follow random_state
    np.testing.assert_array_equal(clf.predict_proba(x), clf.predict_proba(x))  # no dropout at inference
    other = MLPClassifier((32, 16), dropout=0.2, max_iter=2, random_state=1).fit(x, y)
    assert sum(isinstance(layer, cn.layers.Dropout) for layer in other.model_.layers) == 2


def test_dtype_float32(digits):
    x, y = digits
    clf = MLPClassifier((16,), max_iter=5, random_state=0, dtype="float32").fit(x, y)
    assert clf.model_.dtype == np.float32 and clf.coefs_[0].dtype == np.float32
    assert clf.predict_proba(x).dtype == np.float32
    ref = MLPClassifier((16,), max_iter=5, random_state=0).fit(x, y)
    assert ref.model_.dtype == np.float64
    np.testing.assert_allclose(clf.loss_curve_, ref.loss_curve_, rtol=1e-4)
    follows = MLPClassifier((16,), max_iter=2, random_state=0).fit(x.astype(np.float32), y)
    assert follows.model_.dtype == np.float32   # dtype=None keeps float32 input, as scikit-learn


def test_class_weight(digits):
    x, y = digits
    binary = np.where(y == 0, "zero", "other")
    plain = MLPClassifier((8,), max_iter=10, random_state=0).fit(x, binary)
    heavy = MLPClassifier((8,), max_iter=10, random_state=0,
                          class_weight={"zero": 50.0}).fit(x, binary)
    assert (heavy.predict(x) == "zero").sum() > (plain.predict(x) == "zero").sum()
    balanced = MLPClassifier((8,), max_iter=10, random_state=0, class_weight="balanced")
    balanced.fit(x, binary)
    from sklearn.utils.class_weight import compute_sample_weight
    by_weight = MLPClassifier((8,), max_iter=10, random_state=0).fit(
        x, binary, sample_weight=compute_sample_weight("balanced", binary))
    _assert_same_fit(by_weight, balanced)
    with pytest.raises(ValueError, match="not classes"):
        MLPClassifier(class_weight={"nine": 2.0}, max_iter=1).fit(x, binary)


@pytest.mark.parametrize("params, message", [
    (dict(solver="lbfgs"), "lbfgs"), (dict(solver="rmsprop"), "solver"),
    (dict(activation="bogus"), "unknown activation"), (dict(activation=["relu", "tanh"]), "entries"),
    (dict(dropout=1.0), "dropout"), (dict(dropout=[0.1, 0.2]), "entries"),
    (dict(dtype="int8"), "dtype"), (dict(hidden_layer_sizes=(0,)), "hidden_layer_sizes"),
    (dict(alpha=-1), "alpha"), (dict(batch_size=0), "batch_size"), (dict(momentum=1.5), "momentum"),
    (dict(learning_rate="fast"), "learning_rate"), (dict(n_iter_no_change=0), "n_iter_no_change"),
    (dict(shuffle="yes"), "shuffle"),
])
def test_bad_parameters(digits, params, message):
    x, y = digits
    with pytest.raises(ValueError, match=message):
        MLPClassifier(max_iter=1, **params).fit(x[:50], y[:50])


def test_regressor_rejects_other_losses_and_sparse_input():
    x, y = make_regression(30, 3, random_state=0)
    with pytest.raises(ValueError, match="squared_error"):
        MLPRegressor(loss="poisson").fit(x, y)
    from scipy import sparse
    with pytest.raises(TypeError, match="[Ss]parse"):
        MLPRegressor(max_iter=1).fit(sparse.csr_matrix(x), y)


def test_convergence_warning_like_scikit_learn(digits):
    x, y = digits
    with pytest.warns(ConvergenceWarning, match="Maximum iterations"):
        MLPClassifier((4,), max_iter=2, random_state=0).fit(x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        MLPClassifier((4,), random_state=0).partial_fit(x, y, classes=np.arange(10))


def test_cyneuron_imports_scikit_learn_only_on_use():
    import subprocess
    import sys

    code = ("import sys, cyneuron as cn; assert 'sklearn' not in sys.modules; "
            "assert cn.sklearn.MLPClassifier.__module__ == 'cyneuron.sklearn'; "
            "assert 'sklearn' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
