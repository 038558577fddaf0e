"""RBF: a radial basis function layer, y_j = phi(gamma_j ||x - c_j||^2).

kernel "gaussian":             phi = exp(-gamma d2)
       "multiquadric":         phi = sqrt(1 + gamma d2)
       "inverse_multiquadric": phi = 1 / sqrt(1 + gamma d2)
with d2 = ||x||^2 - 2 x.c + ||c||^2 (the cross term is one GEMM of the batch against the
centres, negative rounding residues clipped to 0). Weights (get_weights order):
centers (units, in_features) and gamma (units,), both trainable by default (widths:
gamma = 1 / (2 width^2)). adapt(X) places the centres by k-means and sets gamma from
the mean squared distance of the samples to their centre.
"""
import numpy as np

from .. import initializers
from .._kernels.gemm import gemm
from .._validation import check_numeric, check_positive
from .base import Layer

KERNELS = ("gaussian", "multiquadric", "inverse_multiquadric")


def squared_distances(x, centers, out=None):
    """||x_i - c_j||^2 for rows x_i and centres c_j through the GEMM identity, >= 0."""
    d2 = np.empty((x.shape[0], centers.shape[0]), x.dtype) if out is None else out
    gemm(x, centers.T, d2)
    d2 *= -2
    d2 += np.einsum("ij,ij->i", x, x)[:, None]
    d2 += np.einsum("ij,ij->i", centers, centers)[None, :]
    np.maximum(d2, 0, out=d2)
    return d2


def rbf_phi(kernel, gd2, out):
    """phi(gamma d2) in place into out (out may be gd2)."""
    if kernel == "gaussian":
        np.negative(gd2, out=out)
        np.exp(out, out=out)
    elif kernel == "multiquadric":
        np.add(gd2, 1, out=out)
        np.sqrt(out, out=out)
    else:
        np.add(gd2, 1, out=out)
        np.sqrt(out, out=out)
        np.reciprocal(out, out=out)
    return out


def kmeans_centers(x, k, random_state=None, n_iter=100):
    """k-means centres of x (scikit-learn's KMeans when installed, else Lloyd's
    algorithm from k-means++ seeds) and the mean squared distance to the nearest centre."""
    rng = np.random.RandomState(random_state) if not isinstance(random_state, np.random.RandomState) \
        else random_state
    x = np.asarray(x, dtype=np.float64)
    try:
        from sklearn.cluster import KMeans
    except ImportError:
        KMeans = None
    if KMeans is not None:
        km = KMeans(n_clusters=k, n_init=1, random_state=rng.randint(2 ** 31 - 1)).fit(x)
        centers = km.cluster_centers_
    else:
        centers = x[[rng.randint(len(x))]]
        for _ in range(1, k):
            d2 = squared_distances(x, centers).min(1)
            p = d2 / d2.sum() if d2.sum() > 0 else None
            centers = np.vstack([centers, x[rng.choice(len(x), p=p)]])
        for _ in range(n_iter):
            labels = squared_distances(x, centers).argmin(1)
            new = np.array([x[labels == j].mean(0) if np.any(labels == j) else centers[j]
                            for j in range(k)])
            if np.allclose(new, centers):
                break
            centers = new
    spread = float(squared_distances(x, centers).min(1).mean())
    return centers, spread


class RBF(Layer):
    """Radial basis function layer (see the module docstring).

    units: number of centres. gamma: initial gamma of every unit (> 0). kernel:
    "gaussian" | "multiquadric" | "inverse_multiquadric". centers_initializer: any
    cyneuron initializer (default random_normal), or call adapt(X) for k-means centres.
    trainable_centers / trainable_gamma: whether fit updates them.
    Input (batch, in_features), output (batch, units).
    """

    def __init__(self, units, gamma=1.0, kernel="gaussian", centers_initializer="random_normal",
                 trainable_centers=True, trainable_gamma=True, name=None, dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.units = int(check_positive(units, "units", integer=True))
        self.gamma = float(check_positive(gamma, "gamma"))
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}; got {kernel!r}")
        self.kernel = kernel
        self.centers_initializer = initializers.get(centers_initializer)
        self.trainable_centers = bool(trainable_centers)
        self.trainable_gamma = bool(trainable_gamma)

    def build(self, input_shape):
        if len(input_shape) != 1:
            raise ValueError(f"RBF {self.name!r} expects 2-D input (batch, features); got "
                             f"per-sample shape {tuple(input_shape)}")
        self.add_weight("centers", (self.units, int(input_shape[0])), self.centers_initializer,
                        trainable=self.trainable_centers)
        self.add_weight("gamma", (self.units,), initializers.Constant(self.gamma),
                        trainable=self.trainable_gamma)
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        return (self.units,)

    def adapt(self, x, random_state=None):
        """k-means centres from the data x, gamma = 1 / (2 * mean squared distance of the
        samples to their nearest centre) for every unit."""
        x = check_numeric(x, "x")
        if x.ndim != 2 or len(x) < self.units:
            raise ValueError(f"adapt needs a 2-D x with at least units={self.units} rows; got "
                             f"shape {x.shape}")
        if not self.built:
            if self.dtype is None:
                self.dtype = np.dtype(np.float32)
            self._build_standalone(np.ascontiguousarray(x[:1], dtype=self.dtype))
        centers, spread = kmeans_centers(x, self.units, random_state)
        self._weights[0][...] = centers
        self._weights[1][...] = 1.0 / (2.0 * spread) if spread > 0 else 1.0
        return self

    def _forward(self, x, training):
        centers, gamma = self._weights
        d2 = squared_distances(x, centers, out=self._buffer("d2", (x.shape[0], self.units)))
        y = self._buffer("y", d2.shape)
        np.multiply(d2, gamma, out=y)
        rbf_phi(self.kernel, y, y)
        self._x, self._y = x, y
        self._last_output_shape = y.shape
        return y

    def _backward(self, grad_output, need_input_grad, **_):
        centers, gamma = self._weights
        x, y, d2 = self._x, self._y, self._buffers["d2"]
        g = grad_output
        if self.kernel == "gaussian":          # phi = exp(-g d2)
            dphi = -y                          # d phi / d(gamma d2)
        elif self.kernel == "multiquadric":    # phi = sqrt(1 + g d2)
            dphi = 0.5 / y
        else:                                  # phi = (1 + g d2)^(-1/2)
            dphi = -0.5 * y ** 3
        gd = g * dphi                          # dL / d(gamma d2)
        self._gradients[1][...] = np.einsum("ij,ij->j", gd, d2) if self._trainable[1] else 0
        a = gd * gamma                         # dL / d(d2)
        if self._trainable[0]:
            dc = self._gradients[0]
            gemm(a.T, x, dc)                   # sum_i a_ij x_i
            dc *= -2
            dc += 2 * a.sum(0)[:, None] * centers
        else:
            self._gradients[0][...] = 0
        if not need_input_grad:
            return None
        dx = self._buffer("dx", x.shape)
        gemm(a, centers, dx)                   # sum_j a_ij c_j
        dx *= -2
        dx += 2 * a.sum(1)[:, None] * x
        return dx

    def get_config(self):
        return {"name": self.name, "units": self.units, "gamma": self.gamma, "kernel": self.kernel,
                "trainable_centers": self.trainable_centers,
                "trainable_gamma": self.trainable_gamma}
