"""Radial basis function networks, the classic two-stage way: k-means centres, then a
linear output layer solved in closed form (least squares, or ridge with alpha > 0).

    RBFRegressor(n_centers=100, kernel="gaussian", gamma="auto", alpha=1e-3)
    RBFClassifier(n_centers=200, kernel="gaussian", gamma="auto", alpha=1e-3)

Hidden layer: phi_j(x) = kernel(gamma * ||x - c_j||^2) with the centres c_j from
k-means on X (kernels as layers.RBF: "gaussian", "multiquadric",
"inverse_multiquadric"); the distances go through the GEMM identity
||x||^2 - 2 x.c + ||c||^2 (one GEMM of the batch against the centres). gamma="auto":
1 / (2 s) with s the mean squared distance of the samples to their nearest centre; or
a positive number. Output: [phi(X), 1] W = targets, solved as
(Phi^T Phi + alpha I) W = Phi^T T (the bias column is not penalised); alpha=0 solves
the least-squares problem with numpy's lstsq. The classifier regresses one-hot targets
(+1 / -1 per class) and predicts the argmax (decision_function gives the scores).

For a trainable network (centres, widths and output weights by gradient descent), use
layers.RBF in a cn.Sequential (adapt(X) for k-means centres).
"""
import numbers

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted

from ._estimator_io import load_estimator, save_estimator
from .layers.rbf import KERNELS, kmeans_centers, rbf_phi, squared_distances

try:
    from sklearn.utils.validation import validate_data
except ImportError:  # scikit-learn < 1.6
    def validate_data(estimator, *args, **kwargs):
        return estimator._validate_data(*args, **kwargs)

__all__ = ["RBFClassifier", "RBFRegressor"]


class _BaseRBFNetwork(BaseEstimator):
    def __init__(self, n_centers=100, *, kernel="gaussian", gamma="auto", alpha=1e-3,
                 random_state=None):
        self.n_centers = n_centers
        self.kernel = kernel
        self.gamma = gamma
        self.alpha = alpha
        self.random_state = random_state

    def _check_params(self):
        if isinstance(self.n_centers, bool) or not isinstance(self.n_centers, numbers.Integral) \
                or self.n_centers < 1:
            raise ValueError(f"n_centers must be an integer >= 1; got {self.n_centers!r}")
        if self.kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}; got {self.kernel!r}")
        if not (self.gamma == "auto" or (isinstance(self.gamma, numbers.Real)
                                         and not isinstance(self.gamma, bool)
                                         and np.isfinite(self.gamma) and self.gamma > 0)):
            raise ValueError(f"gamma must be 'auto' or a real number > 0; got {self.gamma!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, numbers.Real) \
                or not np.isfinite(self.alpha) or self.alpha < 0:
            raise ValueError(f"alpha must be a real number >= 0; got {self.alpha!r}")

    def _features(self, X):
        d2 = squared_distances(X, self.centers_)
        d2 *= self.gamma_
        phi = np.empty((X.shape[0], self.centers_.shape[0] + 1))
        rbf_phi(self.kernel, d2, phi[:, :-1])
        phi[:, -1] = 1.0
        return phi

    def _fit_network(self, X, T):
        self._check_params()
        rng = check_random_state(self.random_state)
        k = min(self.n_centers, X.shape[0])
        self.centers_, spread = kmeans_centers(X, k, rng)
        self.gamma_ = (1.0 / (2.0 * spread) if spread > 0 else 1.0) if self.gamma == "auto" \
            else float(self.gamma)
        phi = self._features(X)
        if self.alpha > 0:
            A = phi.T @ phi
            reg = np.full(A.shape[0], float(self.alpha))
            reg[-1] = 0.0
            A[np.diag_indices_from(A)] += reg
            try:
                W = np.linalg.solve(A, phi.T @ T)
            except np.linalg.LinAlgError:
                W = np.linalg.lstsq(A, phi.T @ T, rcond=None)[0]
        else:
            W = np.linalg.lstsq(phi, T, rcond=None)[0]
        self.coef_, self.intercept_ = W[:-1], W[-1]
        return self

    def _decision(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return self._features(X) @ np.vstack([self.coef_, self.intercept_[None]])

    def save(self, filepath):
        arrays, scalars = {}, {}
        if hasattr(self, "coef_"):
            arrays = {"centers_": self.centers_, "coef_": self.coef_,
                      "intercept_": np.asarray(self.intercept_)}
            scalars = {"gamma_": self.gamma_, "n_features_in_": self.n_features_in_,
                       "y_1d": bool(getattr(self, "_y_1d", True))}
            if hasattr(self, "classes_"):
                arrays["classes_"] = self.classes_
        save_estimator(self, filepath, self.get_params(), scalars, arrays)

    @classmethod
    def load(cls, filepath):
        klass, params, scalars, arrays = load_estimator(filepath, cls)
        est = klass(**params)
        if "coef_" in arrays:
            est.centers_, est.coef_ = arrays["centers_"], arrays["coef_"]
            est.intercept_ = arrays["intercept_"]
            est.gamma_ = float(scalars["gamma_"])
            est.n_features_in_ = int(scalars["n_features_in_"])
            est._y_1d = bool(scalars.get("y_1d", True))
            if "classes_" in arrays:
                est.classes_ = arrays["classes_"]
                est._binarizer = LabelBinarizer(neg_label=-1, pos_label=1).fit(est.classes_)
        return est


class RBFRegressor(RegressorMixin, _BaseRBFNetwork):
    """RBF network regression: k-means centres, then a ridge / least-squares output."""

    def fit(self, X, y):
        X, y = validate_data(self, X, y, dtype=np.float64, y_numeric=True, multi_output=True)
        self._y_1d = y.ndim == 1
        return self._fit_network(X, y.reshape(len(y), -1))

    def predict(self, X):
        out = self._decision(X)
        return out[:, 0] if getattr(self, "_y_1d", out.shape[1] == 1) else out

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags


class RBFClassifier(ClassifierMixin, _BaseRBFNetwork):
    """RBF network classification: k-means centres, a ridge / least-squares output on
    +1 / -1 class indicators, argmax."""

    def __init__(self, n_centers=200, *, kernel="gaussian", gamma="auto", alpha=1e-3,
                 random_state=None):
        super().__init__(n_centers, kernel=kernel, gamma=gamma, alpha=alpha,
                         random_state=random_state)

    def fit(self, X, y):
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        self._binarizer = LabelBinarizer(neg_label=-1, pos_label=1).fit(y)
        self.classes_ = self._binarizer.classes_
        T = self._binarizer.transform(y).astype(np.float64)
        if T.shape[1] == 1 and len(self.classes_) == 2:
            T = np.hstack([-T, T])
        elif len(self.classes_) == 1:
            T = np.ones((len(y), 1))
        return self._fit_network(X, T)

    def decision_function(self, X):
        """The network's output scores, (n_samples, n_classes) ((n_samples,) for two
        classes: the second class's score minus the first's, as scikit-learn)."""
        s = self._decision(X)
        if len(self.classes_) == 2:
            return s[:, 1] - s[:, 0]
        return s[:, 0] if len(self.classes_) == 1 else s

    def predict(self, X):
        s = self._decision(X)
        return self.classes_[np.argmax(s, axis=1)]
