"""The single-layer perceptron (Rosenblatt, 1958): a threshold unit and its learning rule.

One neuron computes z = w . x + b and outputs 1 when z > 0, else 0. For each sample
in turn the Rosenblatt rule moves the weights by the error:

    w += eta0 * (y - y_hat) * x,    b += eta0 * (y - y_hat)

so nothing changes on a correct prediction. On linearly separable data (AND, OR)
this converges to a separating line in a finite number of epochs (Novikoff, 1962);
on XOR, which no line separates, it never does: that limit is why hidden layers
(multilayer perceptrons trained by backpropagation) exist.
"""
import numbers
import warnings

import numpy as np

from ._random import get_rng
from ._validation import check_array, check_positive, check_same_length


class ConvergenceWarning(UserWarning):
    """fit ended at max_iter with some training samples still misclassified."""


class Perceptron:
    """Binary perceptron with a 0/1 threshold output (scikit-learn-style API).

    max_iter: the most epochs (passes over the data); fit stops earlier after an
    epoch without a single error. eta0: the learning rate. shuffle: visit the samples
    in a new random order each epoch (seeded by random_state; None uses the library
    generator, see cn.set_seed). fit_intercept: learn the bias b (else b = 0).

    After fit: coef_ (1, n_features), intercept_ (1,), classes_ (the two labels;
    classes_[1] is the one predicted for z > 0), n_iter_ (epochs run), errors_
    (misclassified samples in each epoch).
    """

    def __init__(self, max_iter=1000, eta0=1.0, shuffle=True, random_state=None,
                 fit_intercept=True):
        self.max_iter = max_iter
        self.eta0 = eta0
        self.shuffle = shuffle
        self.random_state = random_state
        self.fit_intercept = fit_intercept

    def _check_params(self):
        check_positive(self.max_iter, "max_iter", integer=True)
        eta0 = self.eta0
        if isinstance(eta0, bool) or not isinstance(eta0, numbers.Real) \
                or not np.isfinite(eta0) or eta0 <= 0:
            raise ValueError(f"eta0 must be a positive number, got {eta0!r}")
        rs = self.random_state
        if rs is not None and (isinstance(rs, bool) or not isinstance(rs, numbers.Integral) or rs < 0):
            raise ValueError(f"random_state must be a non-negative int or None, got {rs!r}")

    def fit(self, X, y):
        """Learn w and b from X (n_samples, n_features) and two-class labels y."""
        self._check_params()
        X = check_array(X, "X", np.float64, ndim=2)
        y = np.asarray(y)
        if y.ndim != 1:
            raise ValueError(f"y must be 1-D (n_samples,); got shape {y.shape}")
        check_same_length(X, y, "X", "y")
        if y.dtype.kind == "f" and not np.isfinite(y).all():
            raise ValueError("y contains NaN or infinity")
        classes = np.unique(y)
        if len(classes) != 2:
            raise ValueError(f"the perceptron is a binary classifier: y must hold exactly two "
                             f"classes; got {len(classes)} ({classes[:10].tolist()})")
        target = (y == classes[1]).astype(np.float64)
        n, d = X.shape
        rng = np.random.default_rng(self.random_state) if self.random_state is not None \
            else get_rng()
        eta = float(self.eta0)
        w = np.zeros(d)
        b = 0.0
        errors_per_epoch = []
        for epoch in range(self.max_iter):
            order = rng.permutation(n) if self.shuffle else range(n)
            errors = 0
            for i in order:
                y_hat = 1.0 if X[i] @ w + b > 0 else 0.0
                update = eta * (target[i] - y_hat)
                if update:
                    w += update * X[i]
                    if self.fit_intercept:
                        b += update
                    errors += 1
            errors_per_epoch.append(errors)
            if errors == 0:
                break
        self.classes_ = classes
        self.errors_ = errors_per_epoch
        self.n_iter_ = epoch + 1
        self.coef_ = w.reshape(1, d)
        self.intercept_ = np.array([b])
        self.n_features_in_ = d
        if self.errors_[-1]:
            warnings.warn(f"the perceptron did not converge in max_iter={self.max_iter} epochs "
                          f"({self.errors_[-1]} errors in the last one): the classes may not "
                          f"be linearly separable", ConvergenceWarning, stacklevel=2)
        return self

    def _check_X(self, X):
        if not hasattr(self, "coef_"):
            raise RuntimeError("this Perceptron is not fitted yet: call fit(X, y) first")
        X = check_array(X, "X", np.float64, ndim=2)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features; the perceptron was fitted with "
                             f"{self.n_features_in_}")
        return X

    def decision_function(self, X):
        """z = X w + b for each sample (positive: class classes_[1])."""
        X = self._check_X(X)
        return X @ self.coef_[0] + self.intercept_[0]

    def predict(self, X):
        """The threshold output mapped to the labels: classes_[1] where z > 0, else classes_[0]."""
        positive = self.decision_function(X) > 0
        return self.classes_[positive.astype(np.intp)]

    def score(self, X, y):
        """Accuracy: the fraction of samples whose predicted label equals y."""
        y = np.asarray(y)
        pred = self.predict(X)
        check_same_length(pred, y, "X", "y")
        return float(np.mean(pred == y))

    def get_params(self, deep=True):
        return {"max_iter": self.max_iter, "eta0": self.eta0, "shuffle": self.shuffle,
                "random_state": self.random_state, "fit_intercept": self.fit_intercept}

    def set_params(self, **params):
        for key, value in params.items():
            if key not in self.get_params():
                raise ValueError(f"unknown parameter {key!r} for Perceptron")
            setattr(self, key, value)
        return self

    def __repr__(self):
        return "Perceptron(" + ", ".join(f"{k}={v!r}" for k, v in self.get_params().items()) + ")"
