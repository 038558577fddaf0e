"""Self-organising map (Kohonen) with compiled winner search and updates.

    som = cn.SOM(30, 30, input_len=20, sigma=3.0, learning_rate=0.5, random_state=0)
    som.random_weights_init(X)
    som.train(X, 50_000, random_order=True)     # online: one sample per iteration
    som.train_batch(X, 20)                      # or Kohonen's batch algorithm
    som.quantization_error(X), som.topographic_error(X), som.distance_map()

The interface and the definitions follow MiniSom (JustGlowing/minisom): the same
initial weights for the same seed (uniform in [-1, 1], rows normalised), the same
neighbourhood functions ("gaussian", "mexican_hat", "bubble", "triangle") and
topologies ("rectangular", "hexagonal"), the same decay schedules, online training in
the same sample order (train: sequential or random_order, or use_epochs), Kohonen's
batch algorithm as MiniSom's train_batch_offline (note: MiniSom's own ``train_batch``
is sequential *online* training; here ``train_batch`` is the batch algorithm), and the
same quantization error, topographic error, U-matrix (distance_map), activation
response, win map and labels map.

decay: "asymptotic" (MiniSom's default: learning rate and sigma / (1 + t / (T / 2))),
"linear" (learning rate linearly to 0, sigma linearly to 1) or "inverse" (learning
rate T/100 / (T/100 + t), sigma / (1 + t (sigma - 1) / T)).

Kernels (cyneuron._kernels.som): the best-matching-unit search for many samples is one
GEMM per 64 samples through ||x - w||^2 = ||x||^2 - 2 x.w + ||w||^2, in parallel over
sample chunks; online training runs all iterations in one compiled loop (the
neighbourhood built from separable factors, nodes with zero weight skipped); batch
training accumulates per-winner sums and applies the neighbourhood as one GEMM.
"""
import numbers
from collections import Counter, defaultdict

import numpy as np

from . import ops
from ._estimator_io import load_estimator, save_estimator
from ._kernels import som as _k

__all__ = ["SOM"]

NEIGHBORHOODS = {"gaussian": 0, "mexican_hat": 1, "bubble": 2, "triangle": 3}
TOPOLOGIES = {"rectangular": 0, "hexagonal": 1}
DECAYS = {"asymptotic": 0, "linear": 1, "inverse": 2}


def _check_int(value, name, low=1):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}; got {value!r}")
    return int(value)


def _check_real(value, name, positive=True):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value) \
            or (positive and value <= 0):
        raise ValueError(f"{name} must be a finite real number{' > 0' if positive else ''}; "
                         f"got {value!r}")
    return float(value)


class SOM:
    """A self-organising map of m x n nodes on input vectors of length input_len.

    Parameters: m, n (map size), input_len, sigma=1.0, learning_rate=0.5,
    neighborhood_function="gaussian" | "mexican_hat" | "bubble" | "triangle",
    topology="rectangular" | "hexagonal", decay="asymptotic" | "linear" | "inverse",
    random_state=None (int seed: MiniSom's random_seed), dtype="float64" | "float32".
    """

    def __init__(self, m, n, input_len, sigma=1.0, learning_rate=0.5,
                 neighborhood_function="gaussian", topology="rectangular", decay="asymptotic",
                 random_state=None, dtype="float64"):
        self.m = _check_int(m, "m")
        self.n = _check_int(n, "n")
        self.input_len = _check_int(input_len, "input_len")
        self.sigma = _check_real(sigma, "sigma")
        self.learning_rate = _check_real(learning_rate, "learning_rate")
        if neighborhood_function not in NEIGHBORHOODS:
            raise ValueError(f"neighborhood_function must be one of {sorted(NEIGHBORHOODS)}; "
                             f"got {neighborhood_function!r}")
        if topology not in TOPOLOGIES:
            raise ValueError(f"topology must be one of {sorted(TOPOLOGIES)}; got {topology!r}")
        if decay not in DECAYS:
            raise ValueError(f"decay must be one of {sorted(DECAYS)}; got {decay!r}")
        if np.dtype(dtype) not in (np.float32, np.float64):
            raise ValueError(f"dtype must be 'float32' or 'float64'; got {dtype!r}")
        self.neighborhood_function = neighborhood_function
        self.topology = topology
        self.decay = decay
        self.random_state = random_state
        self.dtype = np.dtype(dtype).name
        self._rng = np.random.RandomState(random_state)
        w = self._rng.rand(self.m, self.n, self.input_len) * 2 - 1
        w /= np.linalg.norm(w, axis=-1, keepdims=True)
        self._set_weights(w)

    # -- weights -------------------------------------------------------------------------------
    def _set_weights(self, w):
        self._w = np.ascontiguousarray(np.reshape(w, (self.m * self.n, self.input_len)),
                                       dtype=self.dtype)
        self._wsq = np.empty(self.m * self.n, self.dtype)
        _k.squared_norms(self._w, self._wsq)

    def get_weights(self):
        """The weights, shape (m, n, input_len) (a copy)."""
        return self._w.reshape(self.m, self.n, self.input_len).copy()

    def set_weights(self, weights):
        w = np.asarray(weights, dtype=float)
        if w.shape != (self.m, self.n, self.input_len):
            raise ValueError(f"weights must have shape {(self.m, self.n, self.input_len)}; "
                             f"got {w.shape}")
        if not np.isfinite(w).all():
            raise ValueError("weights contain NaN or infinity")
        self._set_weights(w)

    weights = property(get_weights, set_weights)

    def _data(self, data, name="data"):
        x = np.asarray(data)
        if x.dtype == object or not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
            raise TypeError(f"{name} must be numeric; got dtype {x.dtype}")
        if x.ndim == 1 and x.shape[0] == self.input_len:
            x = x[None, :]
        if x.ndim != 2:
            raise ValueError(f"{name} must be a 2-D array (n_samples, {self.input_len}); "
                             f"got shape {x.shape}")
        if x.shape[1] != self.input_len:
            raise ValueError(f"{name} has {x.shape[1]} features; the map expects "
                             f"input_len={self.input_len}")
        if x.shape[0] == 0:
            raise ValueError(f"{name} is empty (0 samples)")
        x = np.ascontiguousarray(x, dtype=self.dtype)
        if not np.isfinite(x).all():
            raise ValueError(f"{name} contains NaN or infinity")
        return x

    def random_weights_init(self, data):
        """Weights = randomly chosen samples of data (MiniSom's draws for the same seed)."""
        x = self._data(data)
        w = np.empty((self.m, self.n, self.input_len))
        for i in range(self.m):
            for j in range(self.n):
                w[i, j] = x[self._rng.randint(len(x))]
        self._set_weights(w)

    def pca_weights_init(self, data):
        """Weights spanning the first two principal components around the data's mean."""
        x = self._data(data).astype(np.float64)
        if self.input_len == 1:
            raise ValueError("pca_weights_init needs at least 2 features")
        vals, vecs = np.linalg.eigh(np.cov(x, rowvar=False))
        order = np.argsort(vals)[::-1]
        pc1, pc2 = vecs[:, order[0]], vecs[:, order[1]]
        mean = x.mean(axis=0)
        c1 = np.linspace(-1, 1, self.m)[:, None, None]
        c2 = np.linspace(-1, 1, self.n)[None, :, None]
        self._set_weights(mean + c1 * pc1 + c2 * pc2)

    # -- training ------------------------------------------------------------------------------
    def train(self, data, num_iteration, random_order=False, use_epochs=False):
        """Online training, as MiniSom's train: num_iteration updates (one sample each), or
        num_iteration epochs over the data with use_epochs=True (the learning rate and
        sigma then constant within an epoch); samples in order, or shuffled with
        random_order (MiniSom's draws for the same seed)."""
        x = self._data(data)
        num_iteration = _check_int(num_iteration, "num_iteration")
        if use_epochs:
            idx = np.arange(len(x))
            if random_order:
                self._rng.shuffle(idx)
            order = np.tile(idx, num_iteration)
        else:
            order = np.arange(num_iteration) % len(x)
            if random_order:
                self._rng.shuffle(order)
        _k.train_online(x, order.astype(np.int64), self._w, self._wsq, self.m, self.n,
                        self.sigma, self.learning_rate, NEIGHBORHOODS[self.neighborhood_function],
                        TOPOLOGIES[self.topology], DECAYS[self.decay], float(num_iteration),
                        len(x) if use_epochs else 0, 0)
        return self

    def train_random(self, data, num_iteration):
        return self.train(data, num_iteration, random_order=True)

    def _decayed(self, value, t, T, is_sigma):
        kind = self.decay
        if kind == "asymptotic":
            return value / (1 + t / (T / 2))
        if kind == "linear":
            return value + t * (1 - value) / T if is_sigma else value * (1 - t / T)
        if is_sigma:
            return value / (1 + t * (value - 1) / T)
        c = T / 100.0
        return value * c / (c + t)

    def train_batch(self, data, num_iteration):
        """Kohonen's batch algorithm (MiniSom's train_batch_offline): per iteration t, all
        winners, then w_j <- (1 - eta) w_j + eta sum_i h_j(c_i) x_i / sum_i h_j(c_i) for
        nodes with a positive denominator."""
        x = self._data(data)
        num_iteration = _check_int(num_iteration, "num_iteration")
        K = self.m * self.n
        sums = np.empty((K, self.input_len), self.dtype)
        counts = np.empty(K, self.dtype)
        hmat = np.empty((K, K), self.dtype)
        for t in range(num_iteration):
            eta = self._decayed(self.learning_rate, t, num_iteration, False)
            sig = self._decayed(self.sigma, t, num_iteration, True)
            first = self._best_two(x)[0]
            _k.winner_sums(x, first, sums, counts)
            _k.neighbourhood_matrix(self.m, self.n, sig, NEIGHBORHOODS[self.neighborhood_function],
                                    TOPOLOGIES[self.topology], hmat)
            num = ops.matmul(hmat, sums, trans_a=True)
            den = hmat.T @ counts
            mask = den > 0
            w = self._w
            w[mask] = (1 - eta) * w[mask] + eta * num[mask] / den[mask, None]
            _k.squared_norms(self._w, self._wsq)
        return self

    def fit(self, X, num_iteration=None, mode="online", random_order=True):
        """Train on X: mode="online" (num_iteration updates, default 10 * len(X), random
        order) or "batch" (num_iteration iterations, default 20). Returns self."""
        if mode not in ("online", "batch"):
            raise ValueError(f"mode must be 'online' or 'batch'; got {mode!r}")
        if mode == "batch":
            return self.train_batch(X, 20 if num_iteration is None else num_iteration)
        n = len(np.asarray(X))
        return self.train(X, 10 * n if num_iteration is None else num_iteration,
                          random_order=random_order)

    # -- queries -------------------------------------------------------------------------------
    def _best_two(self, x):
        n = len(x)
        first = np.empty(n, np.int64)
        second = np.empty(n, np.int64)
        dist = np.empty(n, self.dtype)
        _k.best_two(x, self._w, self._wsq, first, second, dist)
        return first, second, dist

    def winners(self, data):
        """Flat index i * n + j of each sample's best-matching node."""
        return self._best_two(self._data(data))[0]

    def predict(self, data):
        return self.winners(data)

    def winner(self, x):
        """(i, j) of the best-matching node of the single sample x."""
        c = int(self.winners(np.asarray(x).reshape(1, -1))[0])
        return (c // self.n, c % self.n)

    def activate(self, x):
        """Euclidean distances from x to every node, shape (m, n)."""
        x = self._data(np.asarray(x).reshape(1, -1), "x")
        return np.linalg.norm(self._w.astype(float) - x[0], axis=1).reshape(self.m, self.n)

    def distances(self, data):
        """Euclidean distance of each sample to each node, (n_samples, m * n), through
        the GEMM identity (negative rounding residues clipped to 0)."""
        x = self._data(data)
        sq = (x.astype(float) ** 2).sum(1)[:, None] - 2 * ops.matmul(x, self._w, trans_b=True) \
            + self._wsq[None, :]
        return np.sqrt(np.maximum(sq, 0))

    transform = distances

    def quantization(self, data):
        """Each sample's best-matching node's weights."""
        return self._w[self.winners(data)].copy()

    def quantization_error(self, data):
        """Mean euclidean distance between each sample and its best-matching node."""
        x = self._data(data)
        first = self._best_two(x)[0]
        return float(np.linalg.norm(x.astype(float) - self._w[first], axis=1).mean())

    def _coords(self):
        i, j = np.divmod(np.arange(self.m * self.n), self.n)
        ex = i.astype(float)
        if self.topology == "hexagonal":
            ex = ex - 0.5 * ((self.n - 1 - j) % 2 == 0)
            return ex, j * (np.sqrt(3) / 2)
        return ex, j.astype(float)

    def topographic_error(self, data):
        """Share of samples whose two best-matching nodes are not neighbours on the map
        (rectangular: grid distance > 1.42, i.e. the 8 surrounding nodes count; hexagonal:
        euclidean node distance 1), as MiniSom."""
        x = self._data(data)
        if self.m * self.n == 1:
            return float("nan")
        first, second, _ = self._best_two(x)
        if self.topology == "hexagonal":
            ex, ey = self._coords()
            d = np.hypot(ex[first] - ex[second], ey[first] - ey[second])
            return float(1 - np.isclose(1, d).mean())
        d = np.hypot(first // self.n - second // self.n, first % self.n - second % self.n)
        return float((d > 1.42).mean())

    def distance_map(self, scaling="sum"):
        """The U-matrix, (m, n): per node the sum (or mean) of the distances to its
        neighbours on the map (8 on the rectangular grid, 6 on the hexagonal), divided by
        the largest value (MiniSom's definition)."""
        if scaling not in ("sum", "mean"):
            raise ValueError(f'scaling should be either "sum" or "mean"; got {scaling!r}')
        w = self.get_weights().astype(float)
        m, n = self.m, self.n
        um = np.full((m, n, 8), np.nan)
        if self.topology == "hexagonal":
            ii = [[1, 1, 1, 0, -1, 0], [0, 1, 0, -1, -1, -1]]
            jj = [[1, 0, -1, -1, 0, 1], [1, 0, -1, -1, 0, 1]]
        else:
            ii = [[0, -1, -1, -1, 0, 1, 1, 1]] * 2
            jj = [[-1, -1, 0, 1, 1, 1, 0, -1]] * 2
        ys = np.arange(n)
        for parity in (0, 1):
            cols = ys[(ys % 2 == 0) == bool(parity)]
            for k, (di, dj) in enumerate(zip(ii[parity], jj[parity])):
                for y in cols:
                    y2 = y + dj
                    if not 0 <= y2 < n:
                        continue
                    x0, x1 = max(0, -di), min(m, m - di)
                    if x0 >= x1:
                        continue
                    um[x0:x1, y, k] = np.linalg.norm(w[x0:x1, y] - w[x0 + di:x1 + di, y2], axis=1)
        um = np.nanmean(um, axis=2) if scaling == "mean" else np.nansum(um, axis=2)
        return um / um.max()

    def activation_response(self, data):
        """How many samples each node wins, (m, n)."""
        c = self.winners(data)
        return np.bincount(c, minlength=self.m * self.n).reshape(self.m, self.n).astype(float)

    def win_map(self, data, return_indices=False):
        """{(i, j): [samples (or their indices) won by node (i, j)]}."""
        x = self._data(data)
        wm = defaultdict(list)
        for k, c in enumerate(self._best_two(x)[0]):
            wm[(int(c) // self.n, int(c) % self.n)].append(k if return_indices else np.asarray(data)[k])
        return wm

    def labels_map(self, data, labels):
        """{(i, j): Counter of the labels of the samples won by node (i, j)}."""
        labels = list(labels)
        if len(labels) != len(np.asarray(data)):
            raise ValueError("data and labels must have the same length")
        wm = defaultdict(list)
        for k, c in enumerate(self.winners(data)):
            wm[(int(c) // self.n, int(c) % self.n)].append(labels[k])
        return defaultdict(list, {pos: Counter(v) for pos, v in wm.items()})

    # -- plot ----------------------------------------------------------------------------------
    def plot(self, data=None, labels=None, ax=None, filename=None, cmap="bone_r"):
        """Draw the U-matrix (distance_map) and, with data, each sample at its winner
        (jittered; coloured by label when given). Needs matplotlib. Returns the Axes;
        with filename, also saves the figure there."""
        try:
            import matplotlib.pyplot as plt
        except ImportError as e:  # pragma: no cover - optional dependency
            raise ImportError("SOM.plot needs matplotlib (pip install matplotlib)") from e
        if ax is None:
            fig, ax = plt.subplots(figsize=(6, 6 * self.n / max(self.m, 1) if self.n < self.m else 6))
        else:
            fig = ax.figure
        image = ax.pcolor(self.distance_map().T, cmap=cmap)
        fig.colorbar(image, ax=ax, label="mean distance to neighbours (U-matrix)")
        if data is not None:
            c = self.winners(data)
            rng = np.random.default_rng(0)
            px = c // self.n + 0.5 + rng.uniform(-0.35, 0.35, len(c))
            py = c % self.n + 0.5 + rng.uniform(-0.35, 0.35, len(c))
            if labels is not None:
                labels = np.asarray(labels)
                for lab in np.unique(labels):
                    sel = labels == lab
                    ax.scatter(px[sel], py[sel], s=8, label=str(lab))
                ax.legend(loc="upper left", bbox_to_anchor=(1.25, 1), fontsize="small",
                          markerscale=2)
            else:
                ax.scatter(px, py, s=8, c="tab:red")
        ax.set_xlim(0, self.m)
        ax.set_ylim(0, self.n)
        ax.set_aspect("equal")
        ax.set_title(f"SOM {self.m}x{self.n} U-matrix")
        if filename is not None:
            fig.savefig(filename, dpi=100, bbox_inches="tight")
        return ax

    # -- saving --------------------------------------------------------------------------------
    def get_params(self):
        return {k: getattr(self, k) for k in (
            "m", "n", "input_len", "sigma", "learning_rate", "neighborhood_function", "topology",
            "decay", "random_state", "dtype")}

    def save(self, filepath):
        """Parameters, weights and the random generator's state (.npz + JSON, no pickle)."""
        name, keys, pos, has_gauss, cached = self._rng.get_state()
        save_estimator(self, filepath, self.get_params(),
                       {"rng_pos": pos, "rng_has_gauss": has_gauss, "rng_cached": cached},
                       {"weights": self._w, "rng_keys": keys})

    @classmethod
    def load(cls, filepath):
        klass, params, scalars, arrays = load_estimator(filepath, cls)
        som = klass(**params)
        w = arrays["weights"]
        if w.shape != (som.m * som.n, som.input_len):
            raise ValueError(f"{filepath!r}: weights of shape {w.shape} do not fit the map")
        som._set_weights(w)
        som._rng.set_state(("MT19937", arrays["rng_keys"], int(scalars["rng_pos"]),
                            int(scalars["rng_has_gauss"]), float(scalars["rng_cached"])))
        return som

    def __repr__(self):
        return (f"SOM({self.m}, {self.n}, input_len={self.input_len}, sigma={self.sigma}, "
                f"learning_rate={self.learning_rate}, neighborhood_function="
                f"{self.neighborhood_function!r}, topology={self.topology!r})")
