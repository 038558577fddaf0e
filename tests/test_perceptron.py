"""cn.Perceptron: the Rosenblatt rule against a hand-written reference, AND/OR learned,
XOR not (while an MLP learns it), label mapping, bad input."""
import warnings

import numpy as np
import pytest

import cyneuron as cn
from cyneuron import datasets, layers
from cyneuron.perceptron import ConvergenceWarning

X_BOOL, Y_XOR = datasets.make_xor(dtype=np.float64)
Y_AND = np.array([0, 0, 0, 1])
Y_OR = np.array([0, 1, 1, 1])


def _rosenblatt_reference(X, y, eta, epochs):
    """The textbook rule, sample by sample in order: w += eta (y - step(w.x + b)) x."""
    w, b = np.zeros(X.shape[1]), 0.0
    for _ in range(epochs):
        for xi, yi in zip(X, y):
            err = yi - (1.0 if xi @ w + b > 0 else 0.0)
            w += eta * err * xi
            b += eta * err
    return w, b


@pytest.mark.parametrize("target", [Y_AND, Y_OR], ids=["AND", "OR"])
def test_perceptron_learns_and_or(target):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # converges: no ConvergenceWarning
        p = cn.Perceptron(random_state=0).fit(X_BOOL, target)
    assert p.score(X_BOOL, target) == 1.0
    np.testing.assert_array_equal(p.predict(X_BOOL), target)
    assert p.n_iter_ < p.max_iter and p.errors_[-1] == 0
    assert p.coef_.shape == (1, 2) and p.intercept_.shape == (1,)
    # the learned line separates the classes
    z = p.decision_function(X_BOOL)
    assert ((z > 0) == (target == 1)).all()


def test_perceptron_cannot_learn_xor_but_an_mlp_can():
    with pytest.warns(ConvergenceWarning, match="linearly separable"):
        p = cn.Perceptron(max_iter=1000, random_state=0).fit(X_BOOL, Y_XOR)
    assert p.n_iter_ == 1000
    assert min(p.errors_) > 0          # not a single error-free epoch
    assert p.score(X_BOOL, Y_XOR) < 1.0

    cn.set_seed(0)
    mlp = cn.Sequential([layers.Dense(8, activation="tanh"),
                         layers.Dense(2, activation="softmax")])
    mlp.compile(optimizer=cn.optimizers.SGD(0.5, momentum=0.9),
                loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    mlp.fit(X_BOOL, Y_XOR, epochs=300, batch_size=4, verbose=0)
    np.testing.assert_array_equal(mlp.predict(X_BOOL).argmax(axis=1), Y_XOR)
    assert mlp.evaluate(X_BOOL, Y_XOR)["accuracy"] == 1.0


@pytest.mark.parametrize("eta", [1.0, 0.1])
def test_perceptron_matches_reference_rule(eta):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(30, 3))
    y = (X @ [1.0, -2.0, 0.5] + 0.3 > 0).astype(int)
    for epochs in (1, 2, 5):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            p = cn.Perceptron(max_iter=epochs, eta0=eta, shuffle=False).fit(X, y)
        w, b = _rosenblatt_reference(X, y, eta, p.n_iter_)
        np.testing.assert_allclose(p.coef_[0], w, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(p.intercept_[0], b, rtol=1e-12, atol=1e-12)


def test_perceptron_separable_data_converges():
    rng = np.random.default_rng(2)
    X = np.vstack([rng.normal(-2, 0.5, size=(50, 2)), rng.normal(2, 0.5, size=(50, 2))])
    y = np.repeat([0, 1], 50)
    p = cn.Perceptron(random_state=3).fit(X, y)
    assert p.score(X, y) == 1.0 and p.errors_[-1] == 0


def test_perceptron_labels_are_mapped():
    for labels in ([-1, 1], ["no", "yes"], [3.5, 7.0]):
        y = np.array([labels[v] for v in Y_OR])
        p = cn.Perceptron(random_state=0).fit(X_BOOL, y)
        np.testing.assert_array_equal(p.classes_, sorted(labels))
        np.testing.assert_array_equal(p.predict(X_BOOL), y)
        assert p.score(X_BOOL, y) == 1.0


def test_perceptron_options():
    p = cn.Perceptron(fit_intercept=False, random_state=0)
    with pytest.warns(ConvergenceWarning):  # AND needs a bias: a line through 0 fails
        p.set_params(max_iter=50).fit(X_BOOL, Y_AND)
    assert p.intercept_[0] == 0
    a = cn.Perceptron(random_state=5).fit(X_BOOL, Y_AND)
    b = cn.Perceptron(random_state=5).fit(X_BOOL, Y_AND)
    np.testing.assert_array_equal(a.coef_, b.coef_)
    assert a.get_params()["random_state"] == 5 and "Perceptron(" in repr(a)


@pytest.mark.parametrize("kwargs,match", [
    ({"max_iter": 0}, "max_iter"), ({"max_iter": 2.5}, "max_iter"), ({"eta0": 0}, "eta0"),
    ({"eta0": -1.0}, "eta0"), ({"eta0": "a"}, "eta0"), ({"random_state": -1}, "random_state"),
    ({"random_state": 1.5}, "random_state"),
])
def test_perceptron_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        cn.Perceptron(**kwargs).fit(X_BOOL, Y_AND)


def test_perceptron_bad_input():
    p = cn.Perceptron()
    with pytest.raises(RuntimeError, match="not fitted"):
        p.predict(X_BOOL)
    with pytest.raises(ValueError, match="exactly two classes"):
        p.fit(X_BOOL, [0, 1, 2, 1])
    with pytest.raises(ValueError, match="exactly two classes"):
        p.fit(X_BOOL, [1, 1, 1, 1])
    with pytest.raises(ValueError, match="X must be 2-D"):
        p.fit(np.ones(4), Y_AND)
    with pytest.raises(ValueError, match="same number of samples"):
        p.fit(X_BOOL, [0, 1, 1])
    with pytest.raises(ValueError, match="y must be 1-D"):
        p.fit(X_BOOL, Y_AND.reshape(-1, 1))
    with pytest.raises(ValueError, match="NaN"):
        p.fit(np.array([[0.0, np.nan], [1.0, 1.0]]), [0, 1])
    with pytest.raises(TypeError, match="X must hold real numbers"):
        p.fit(np.array([["a", "b"], ["c", "d"]]), [0, 1])
    p.fit(X_BOOL, Y_AND)
    with pytest.raises(ValueError, match="exactly two classes"):
        p.fit(X_BOOL, [0, 1, 2, 1])
    np.testing.assert_array_equal(p.predict(X_BOOL), Y_AND)  # a failed fit changes nothing
    with pytest.raises(ValueError, match="3 features"):
        p.predict(np.ones((2, 3)))
    with pytest.raises(ValueError, match="unknown parameter"):
        p.set_params(alpha=1)
