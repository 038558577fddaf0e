"""Restricted Boltzmann machines and deep belief networks on cyneuron's kernels.

``BernoulliRBM`` is a drop-in replacement for ``sklearn.neural_network.BernoulliRBM``:
the same parameters, defaults, attributes (``components_`` (n_components, n_features),
``intercept_hidden_``, ``intercept_visible_``, ``h_samples_``), the same training
algorithm by default (persistent contrastive divergence with one Gibbs step per
mini-batch, the chain's hidden samples kept in ``h_samples_``, mini-batches of
``gen_even_slices``, no shuffling, the same Normal(0, 0.01) initial weights drawn from
``random_state``) and the same ``transform`` / ``gibbs`` / ``score_samples``
(pseudo-likelihood with one randomly flipped feature per sample, drawn as scikit-learn
draws it). Beyond scikit-learn:

  k              Gibbs steps per update (CD-k / PCD-k); default 1.
  persistent     True (default, scikit-learn's PCD) or False: plain CD-k, the negative
                 chain starting from the positive phase's hidden samples each batch.
  momentum       classical momentum on the updates (0 = none, scikit-learn's rule).
  weight_decay   L2 penalty on the weights (not the biases): grad -= weight_decay * W.

Training runs in one compiled call per ``fit`` (``cyneuron._kernels.rbm.cd_fit``): all
epochs and mini-batches in one OpenMP region, the products in the project GEMM, the
Bernoulli samples from a counter-based generator keyed from ``random_state`` (so a
given ``random_state`` gives the same model on any thread count; the draws are not
numpy's, so the trajectory differs from scikit-learn's by sampling noise).

Input: a dense or sparse (densified) array. ``BernoulliRBM`` expects values in [0, 1]
(binary data or probabilities, as scikit-learn documents): negative values, NaN and inf
are refused with a ValueError, values above 1 draw a UserWarning (scikit-learn accepts
them silently; refusing them would break scikit-learn's own estimator checks, which
feed unscaled non-negative data).
``GaussianBernoulliRBM``: real-valued visible units with unit variance (standardise
the data first), linear mean-field reconstructions in the negative phase.

``DBN``: greedy layer-wise pre-training of a stack of RBMs (the first Bernoulli or
Gaussian, the rest Bernoulli on the previous layer's hidden probabilities);
``to_model(n_outputs, activation)`` gives a ``cn.Sequential`` of sigmoid Dense layers
initialised from the RBMs plus an output layer; ``DBNClassifier`` pre-trains and then
fine-tunes it with backpropagation.
"""
import numbers
import time
import warnings

import numpy as np
from scipy import sparse
from sklearn.base import BaseEstimator, ClassifierMixin, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.preprocessing import LabelEncoder
from sklearn.utils import check_random_state, gen_even_slices
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted

from . import ops
from ._estimator_io import load_estimator, save_estimator
from ._kernels import rbm as _k

try:
    from sklearn.utils.validation import validate_data
except ImportError:  # scikit-learn < 1.6
    def validate_data(estimator, *args, **kwargs):
        return estimator._validate_data(*args, **kwargs)

__all__ = ["BernoulliRBM", "GaussianBernoulliRBM", "DBN", "DBNClassifier"]


def _check_int(value, name, low=1):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}; got {value!r}")


def _check_real(value, name, low=0.0, low_open=False, high=None):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value) \
            or value < low or (low_open and value == low) or (high is not None and value > high):
        bound = f"> {low}" if low_open else f">= {low}"
        if high is not None:
            bound += f" and <= {high}"
        raise ValueError(f"{name} must be a finite real number {bound}; got {value!r}")


def _key(rng):
    """A 64-bit stream key for the compiled sampler, drawn from a RandomState."""
    hi, lo = rng.randint(0, 2 ** 32, size=2, dtype=np.uint64)
    return int((int(hi) << 32) | int(lo))


class _BaseRBM(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    _gaussian = False

    def __init__(self, n_components=256, *, learning_rate=0.1, batch_size=10, n_iter=10,
                 verbose=0, random_state=None, k=1, persistent=True, momentum=0.0,
                 weight_decay=0.0):
        self.n_components = n_components
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.n_iter = n_iter
        self.verbose = verbose
        self.random_state = random_state
        self.k = k
        self.persistent = persistent
        self.momentum = momentum
        self.weight_decay = weight_decay

    # -- checks ------------------------------------------------------------------------------
    def _check_params(self):
        _check_int(self.n_components, "n_components")
        _check_real(self.learning_rate, "learning_rate", low_open=True)
        _check_int(self.batch_size, "batch_size")
        _check_int(self.n_iter, "n_iter", low=0)
        _check_int(self.k, "k")
        _check_real(self.momentum, "momentum", high=1.0)
        if self.momentum >= 1:
            raise ValueError(f"momentum must be in [0, 1); got {self.momentum!r}")
        _check_real(self.weight_decay, "weight_decay")
        if not isinstance(self.persistent, (bool, np.bool_)):
            raise ValueError(f"persistent must be True or False; got {self.persistent!r}")

    def _validate(self, X, reset, dtype=(np.float64, np.float32)):
        X = validate_data(self, X, accept_sparse="csr", dtype=dtype, reset=reset)
        if sparse.issparse(X):
            X = X.toarray()
        X = np.ascontiguousarray(X)
        if not reset and X.dtype != self.components_.dtype:
            X = X.astype(self.components_.dtype)
        self._check_values(X)
        return X

    def _check_values(self, X):
        if self._gaussian or not X.size:
            return
        low, high = X.min(), X.max()
        if low < 0:
            raise ValueError(
                f"Negative values in data passed to {type(self).__name__}: it expects X in "
                f"[0, 1] (binary data or probabilities); got values in [{low:g}, {high:g}]. "
                "Scale the data (e.g. MinMaxScaler) or use GaussianBernoulliRBM for "
                "real-valued data")
        if high > 1:
            warnings.warn(
                f"{type(self).__name__} expects X in [0, 1] (binary data or probabilities); "
                f"got values up to {high:g}, which the model reads as probabilities above "
                "1. Scale the data (e.g. MinMaxScaler) or use GaussianBernoulliRBM",
                UserWarning, stacklevel=3)

    # -- state -------------------------------------------------------------------------------
    def _init_state(self, n_features, dtype, rng):
        self.components_ = np.ascontiguousarray(
            rng.normal(0, 0.01, (self.n_components, n_features)), dtype=dtype)
        self._n_features_out = self.n_components
        self.intercept_hidden_ = np.zeros(self.n_components, dtype=dtype)
        self.intercept_visible_ = np.zeros(n_features, dtype=dtype)
        self.h_samples_ = np.zeros((self.batch_size, self.n_components), dtype=dtype)
        self._velocity = [np.zeros_like(self.components_), np.zeros_like(self.intercept_hidden_),
                          np.zeros_like(self.intercept_visible_)]
        self._key = _key(rng)
        self._counter = 0

    def _run(self, X, starts, n_epochs):
        """n_epochs of (P)CD-k over the batches X[starts[b]:starts[b+1]] in the kernel."""
        if n_epochs == 0:
            return
        W, dtype = self.components_, self.components_.dtype
        for name in ("components_", "intercept_hidden_", "intercept_visible_", "h_samples_"):
            value = getattr(self, name)
            if not (value.dtype == dtype and value.flags.c_contiguous and value.flags.writeable):
                setattr(self, name, np.require(value, dtype, "CW"))
        W = self.components_
        if not hasattr(self, "_velocity") or self._velocity[0].shape != W.shape \
                or self._velocity[0].dtype != dtype:
            self._velocity = [np.zeros_like(W), np.zeros_like(self.intercept_hidden_),
                              np.zeros_like(self.intercept_visible_)]
        H, D = W.shape
        bmax = int(np.max(np.diff(starts)))
        chain = self.h_samples_ if self.persistent else np.zeros((0, H), dtype)
        rows = max(bmax, chain.shape[0])
        vn, hn = np.empty((rows, D), dtype), np.empty((rows, H), dtype)
        hp, hs = np.empty((bmax, H), dtype), np.empty((bmax, H), dtype)
        g = np.empty((H, D), dtype)
        vw, vbh, vbv = self._velocity
        self._counter = _k.cd_fit(
            X, np.asarray(starts, np.int64), W, self.intercept_hidden_, self.intercept_visible_,
            chain, vw, vbh, vbv, vn, hp, hn, hs, g, int(n_epochs), int(self.k),
            bool(self.persistent), self._gaussian, float(self.learning_rate),
            float(self.momentum), float(self.weight_decay), self._key, self._counter)

    # -- scikit-learn API -----------------------------------------------------------------------
    def fit(self, X, y=None):
        """Fit the model to X (n_samples, n_features): n_iter passes over the mini-batches."""
        self._check_params()
        X = self._validate(X, reset=True)
        n_samples = X.shape[0]
        rng = check_random_state(self.random_state)
        self._init_state(X.shape[1], X.dtype, rng)
        n_batches = int(np.ceil(n_samples / self.batch_size))
        slices = list(gen_even_slices(n_batches * self.batch_size, n_batches, n_samples=n_samples))
        starts = np.array([s.start for s in slices] + [slices[-1].stop], np.int64)
        if not self.verbose:
            self._run(X, starts, self.n_iter)
            return self
        begin = time.time()
        for iteration in range(1, self.n_iter + 1):
            self._run(X, starts, 1)
            end = time.time()
            print("[%s] Iteration %d, pseudo-likelihood = %.2f, time = %.2fs"
                  % (type(self).__name__, iteration, self.score_samples(X).mean(), end - begin))
            begin = end
        return self

    def partial_fit(self, X, y=None):
        """One update on the mini-batch X (the whole of X is one batch)."""
        self._check_params()
        first = not hasattr(self, "components_")
        X = self._validate(X, reset=first, dtype=np.float64 if first else
                           (np.float64, np.float32))
        if not hasattr(self, "random_state_"):
            self.random_state_ = check_random_state(self.random_state)
        if first:
            self._init_state(X.shape[1], X.dtype, self.random_state_)
        if X.shape[0]:
            self._run(X, np.array([0, X.shape[0]], np.int64), 1)
        return self

    def _mean_hiddens(self, v):
        return ops.matmul(v, self.components_, trans_b=True, bias=self.intercept_hidden_,
                          activation="sigmoid")

    def _mean_visibles(self, h):
        return ops.matmul(h, self.components_, bias=self.intercept_visible_,
                          activation=None if self._gaussian else "sigmoid")

    def transform(self, X):
        """Hidden-unit activation probabilities P(h = 1 | v = X), (n_samples, n_components)."""
        check_is_fitted(self)
        X = self._validate(X, reset=False)
        return self._mean_hiddens(X)

    def _sample(self, p):
        out = np.empty_like(p)
        _k.bernoulli_sample(np.ascontiguousarray(p), out, self._sample_key(), 0)
        return out

    def _sample_key(self):
        if not hasattr(self, "random_state_"):
            self.random_state_ = check_random_state(self.random_state)
        return _key(self.random_state_)

    def gibbs(self, v):
        """One Gibbs step from v: sample h ~ P(h | v), then v' ~ P(v | h); returns v'
        (boolean for BernoulliRBM, as scikit-learn; real for GaussianBernoulliRBM)."""
        check_is_fitted(self)
        v = self._validate(v, reset=False)
        h = self._sample(self._mean_hiddens(v))
        mean = self._mean_visibles(h)
        if self._gaussian:
            return mean + self.random_state_.standard_normal(mean.shape).astype(mean.dtype)
        return self._sample(mean).astype(bool)

    def _hidden_softplus_sum(self, v):
        z = ops.matmul(v, self.components_, trans_b=True, bias=self.intercept_hidden_)
        return np.logaddexp(0, z).sum(axis=1)

    def _free_energy(self, v):
        if self._gaussian:
            d = v - self.intercept_visible_
            return 0.5 * np.einsum("ij,ij->i", d, d) - self._hidden_softplus_sum(v)
        return -(v @ self.intercept_visible_) - self._hidden_softplus_sum(v)

    def save(self, filepath):
        """Save parameters and fitted state (.npz with a JSON header; no pickle)."""
        arrays, scalars = {}, {}
        if hasattr(self, "components_"):
            arrays = {"components_": self.components_, "intercept_hidden_": self.intercept_hidden_,
                      "intercept_visible_": self.intercept_visible_, "h_samples_": self.h_samples_,
                      "velocity_W": self._velocity[0], "velocity_h": self._velocity[1],
                      "velocity_v": self._velocity[2]}
            scalars = {"key": str(self._key), "counter": str(self._counter),
                       "n_features_in_": self.n_features_in_}
            if hasattr(self, "feature_names_in_"):
                arrays["feature_names_in_"] = np.asarray(self.feature_names_in_, dtype=str)
        save_estimator(self, filepath, self.get_params(), scalars, arrays)

    @classmethod
    def load(cls, filepath):
        """Load an estimator written by `save` (a fitted one keeps training the same way)."""
        klass, params, scalars, arrays = load_estimator(filepath, cls)
        est = klass(**params)
        est._set_state(scalars, arrays)
        return est

    def _set_state(self, scalars, arrays):
        if "components_" not in arrays:
            return
        for name in ("components_", "intercept_hidden_", "intercept_visible_", "h_samples_"):
            setattr(self, name, np.ascontiguousarray(arrays[name]))
        self._velocity = [np.ascontiguousarray(arrays[n]) for n in
                          ("velocity_W", "velocity_h", "velocity_v")]
        self._n_features_out = self.components_.shape[0]
        self.n_features_in_ = int(scalars["n_features_in_"])
        if "feature_names_in_" in arrays:
            self.feature_names_in_ = arrays["feature_names_in_"].astype(object)
        self._key, self._counter = int(scalars["key"]), int(scalars["counter"])

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        if not self._gaussian:
            tags.input_tags.positive_only = True
        return tags


class BernoulliRBM(_BaseRBM):
    """Bernoulli restricted Boltzmann machine (binary visible and hidden units), trained
    with (persistent) contrastive divergence; scikit-learn's BernoulliRBM interface plus
    k, persistent, momentum and weight_decay (see the module's docstring)."""

    def score_samples(self, X):
        """Pseudo-likelihood of each sample: n_features * log P(v_i | v_-i) for one feature
        i per sample drawn from RandomState(random_state), as scikit-learn computes it."""
        check_is_fitted(self)
        v = self._validate(X, reset=False)
        rng = check_random_state(self.random_state)
        ind = (np.arange(v.shape[0]), rng.randint(0, v.shape[1], v.shape[0]))
        v_ = v.copy()
        v_[ind] = 1 - v_[ind]
        fe = self._free_energy(v)
        fe_ = self._free_energy(v_)
        return -v.shape[1] * np.logaddexp(0, -(fe_ - fe))


class GaussianBernoulliRBM(_BaseRBM):
    """RBM with real-valued (Gaussian, unit variance) visible units and binary hidden
    units, for standardised real data. Negative phase: linear mean-field reconstructions
    of the visibles; score_samples is minus the free energy (the unnormalised
    log-likelihood); gibbs adds unit Normal noise to the reconstruction. Defaults differ
    from BernoulliRBM's where real-valued units need it: learning_rate=0.01 and
    persistent=False (plain CD-k)."""
    _gaussian = True

    def __init__(self, n_components=256, *, learning_rate=0.01, batch_size=10, n_iter=10,
                 verbose=0, random_state=None, k=1, persistent=False, momentum=0.0,
                 weight_decay=0.0):
        super().__init__(n_components, learning_rate=learning_rate, batch_size=batch_size,
                         n_iter=n_iter, verbose=verbose, random_state=random_state, k=k,
                         persistent=persistent, momentum=momentum, weight_decay=weight_decay)

    def score_samples(self, X):
        """Minus the free energy of each sample (log-likelihood up to a constant)."""
        check_is_fitted(self)
        v = self._validate(X, reset=False)
        return -self._free_energy(v)


# -- deep belief networks ----------------------------------------------------------------------
def _layer_seed(rng):
    return int(rng.randint(0, 2 ** 31 - 1))


class DBN(TransformerMixin, BaseEstimator):
    """Deep belief network: a stack of RBMs pre-trained greedily, layer by layer.

    Layer 1 is a BernoulliRBM on X (GaussianBernoulliRBM with gaussian_visible=True, for
    standardised real data); layer l + 1 is a BernoulliRBM trained on layer l's hidden
    probabilities (transform). The RBM parameters (learning_rate, batch_size, n_iter, k,
    persistent, momentum, weight_decay) apply to every layer; each layer's random_state
    is drawn from this estimator's. After fit: rbms_ (the fitted RBMs), transform(X)
    (the top layer's probabilities), and to_model(n_outputs, activation) (a cn.Sequential
    initialised from the RBMs, for supervised fine-tuning)."""

    def __init__(self, hidden_layer_sizes=(256,), *, learning_rate=0.05, batch_size=10,
                 n_iter=10, k=1, persistent=True, momentum=0.0, weight_decay=0.0,
                 gaussian_visible=False, random_state=None, verbose=0):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.n_iter = n_iter
        self.k = k
        self.persistent = persistent
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.gaussian_visible = gaussian_visible
        self.random_state = random_state
        self.verbose = verbose

    def _sizes(self):
        sizes = self.hidden_layer_sizes
        if isinstance(sizes, numbers.Integral) and not isinstance(sizes, bool):
            sizes = (sizes,)
        try:
            sizes = tuple(sizes)
        except TypeError:
            raise ValueError(f"hidden_layer_sizes must be a list of positive integers; got "
                             f"{self.hidden_layer_sizes!r}") from None
        if not sizes:
            raise ValueError("hidden_layer_sizes must hold at least one layer size")
        for s in sizes:
            _check_int(s, "hidden_layer_sizes")
        return [int(s) for s in sizes]

    def _rbm(self, index, size, seed):
        cls = GaussianBernoulliRBM if (index == 0 and self.gaussian_visible) else BernoulliRBM
        return cls(n_components=size, learning_rate=self.learning_rate,
                   batch_size=self.batch_size, n_iter=self.n_iter, k=self.k,
                   persistent=self.persistent, momentum=self.momentum,
                   weight_decay=self.weight_decay, random_state=seed, verbose=self.verbose)

    def fit(self, X, y=None):
        """Pre-train the stack on X, layer by layer."""
        sizes = self._sizes()
        X = validate_data(self, X, dtype=(np.float64, np.float32))
        rng = check_random_state(self.random_state)
        self.rbms_ = []
        h = X
        for i, size in enumerate(sizes):
            rbm = self._rbm(i, size, _layer_seed(rng))
            rbm._check_params()
            h = rbm.fit(h).transform(h)
            self.rbms_.append(rbm)
        self._n_features_out = sizes[-1]
        return self

    def transform(self, X):
        """The top layer's hidden probabilities (n_samples, hidden_layer_sizes[-1])."""
        check_is_fitted(self)
        h = validate_data(self, X, dtype=(np.float64, np.float32), reset=False)
        for rbm in self.rbms_:
            h = rbm.transform(h)
        return h

    def get_feature_names_out(self, input_features=None):
        check_is_fitted(self)
        return np.asarray([f"dbn{i}" for i in range(self._n_features_out)], dtype=object)

    def to_model(self, n_outputs, activation="softmax", dtype="float32", random_state=None):
        """A cn.Sequential: one Dense(size, "sigmoid") per RBM with kernel = components_.T
        (Keras layout (in, out)) and bias = intercept_hidden_, then Dense(n_outputs,
        activation) with Glorot-uniform weights drawn from random_state (default: this
        estimator's) and zero bias. Compile and fit it to fine-tune."""
        from . import layers as _layers
        from .models import Sequential

        check_is_fitted(self)
        _check_int(n_outputs, "n_outputs")
        model = Sequential([_layers.Dense(r.n_components, activation="sigmoid") for r in self.rbms_]
                           + [_layers.Dense(int(n_outputs), activation=activation)], dtype=dtype)
        model.build((self.n_features_in_,))
        for layer, rbm in zip(model.layers, self.rbms_):
            layer.set_weights([rbm.components_.T.astype(dtype), rbm.intercept_hidden_.astype(dtype)])
        rng = check_random_state(self.random_state if random_state is None else random_state)
        fan_in = self.rbms_[-1].n_components
        limit = np.sqrt(6.0 / (fan_in + n_outputs))
        model.layers[-1].set_weights([rng.uniform(-limit, limit, (fan_in, int(n_outputs))).astype(dtype),
                                      np.zeros(int(n_outputs), dtype)])
        return model

    def save(self, filepath):
        arrays, scalars = {}, {}
        if hasattr(self, "rbms_"):
            scalars = {"n_layers": len(self.rbms_), "n_features_in_": self.n_features_in_,
                       "layers": []}
            for i, rbm in enumerate(self.rbms_):
                scalars["layers"].append({"class": type(rbm).__name__, "params": rbm.get_params(),
                                          "key": str(rbm._key), "counter": str(rbm._counter)})
                for name in ("components_", "intercept_hidden_", "intercept_visible_", "h_samples_"):
                    arrays[f"{i}_{name}"] = getattr(rbm, name)
        save_estimator(self, filepath, self.get_params(), scalars, arrays)

    @classmethod
    def load(cls, filepath):
        klass, params, scalars, arrays = load_estimator(filepath, cls)
        est = klass(**params)
        est._set_state(scalars, arrays)
        return est

    def _set_state(self, scalars, arrays, prefix=""):
        if "layers" not in scalars:
            return
        self.rbms_ = []
        for i, spec in enumerate(scalars["layers"]):
            rbm_cls = GaussianBernoulliRBM if spec["class"] == "GaussianBernoulliRBM" else BernoulliRBM
            rbm = rbm_cls(**spec["params"])
            for name in ("components_", "intercept_hidden_", "intercept_visible_", "h_samples_"):
                setattr(rbm, name, np.ascontiguousarray(arrays[f"{prefix}{i}_{name}"]))
            rbm._velocity = [np.zeros_like(rbm.components_), np.zeros_like(rbm.intercept_hidden_),
                             np.zeros_like(rbm.intercept_visible_)]
            rbm._key, rbm._counter = int(spec["key"]), int(spec["counter"])
            rbm._n_features_out = rbm.components_.shape[0]
            rbm.n_features_in_ = rbm.components_.shape[1]
            self.rbms_.append(rbm)
        self.n_features_in_ = int(scalars["n_features_in_"])
        self._n_features_out = self.rbms_[-1].n_components

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        if not self.gaussian_visible:
            tags.input_tags.positive_only = True
        return tags


class DBNClassifier(ClassifierMixin, BaseEstimator):
    """A deep belief network classifier: DBN pre-training (the rbm_* parameters), then
    the network from DBN.to_model(n_classes, "softmax") fine-tuned with backpropagation
    (optimizer "adam" or "sgd", learning_rate, epochs, batch_size; sparse categorical
    cross-entropy), samples shuffled each epoch from random_state.

    After fit: classes_, dbn_ (the pre-trained DBN), model_ (the fine-tuned
    cn.Sequential), loss_curve_ (mean training loss per epoch)."""

    def __init__(self, hidden_layer_sizes=(256,), *, rbm_learning_rate=0.05, rbm_batch_size=10,
                 rbm_n_iter=20, k=1, persistent=True, momentum=0.0, weight_decay=0.0,
                 gaussian_visible=False, optimizer="adam", learning_rate=1e-3, epochs=60,
                 batch_size=16, dtype="float32", random_state=None, verbose=0):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.rbm_learning_rate = rbm_learning_rate
        self.rbm_batch_size = rbm_batch_size
        self.rbm_n_iter = rbm_n_iter
        self.k = k
        self.persistent = persistent
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.gaussian_visible = gaussian_visible
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.epochs = epochs
        self.batch_size = batch_size
        self.dtype = dtype
        self.random_state = random_state
        self.verbose = verbose

    def _dbn(self, seed):
        return DBN(self.hidden_layer_sizes, learning_rate=self.rbm_learning_rate,
                   batch_size=self.rbm_batch_size, n_iter=self.rbm_n_iter, k=self.k,
                   persistent=self.persistent, momentum=self.momentum,
                   weight_decay=self.weight_decay, gaussian_visible=self.gaussian_visible,
                   random_state=seed)

    def _make_optimizer(self):
        from . import optimizers as _opt

        if self.optimizer == "adam":
            return _opt.Adam(learning_rate=self.learning_rate)
        if self.optimizer == "sgd":
            return _opt.SGD(learning_rate=self.learning_rate, momentum=0.9)
        raise ValueError(f"optimizer must be 'adam' or 'sgd'; got {self.optimizer!r}")

    def fit(self, X, y):
        """Pre-train the DBN on X, then fine-tune the network on (X, y)."""
        _check_int(self.epochs, "epochs", low=0)
        _check_int(self.batch_size, "batch_size")
        _check_real(self.learning_rate, "learning_rate", low_open=True)
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64'; got {self.dtype!r}")
        X, y = validate_data(self, X, y, dtype=(np.float64, np.float32))
        check_classification_targets(y)
        self._encoder = LabelEncoder().fit(y)
        self.classes_ = self._encoder.classes_
        targets = self._encoder.transform(y)
        rng = check_random_state(self.random_state)
        self.dbn_ = self._dbn(_layer_seed(rng)).fit(X)
        self.model_ = self.dbn_.to_model(max(2, len(self.classes_)), "softmax", dtype=self.dtype,
                                         random_state=_layer_seed(rng))
        self.model_.compile(optimizer=self._make_optimizer(),
                            loss="sparse_categorical_crossentropy")
        x = np.ascontiguousarray(X, dtype=self.dtype)
        t = targets.astype(np.int64)
        n = len(x)
        self.loss_curve_ = []
        for epoch in range(self.epochs):
            order = rng.permutation(n)
            total = 0.0
            for start in range(0, n, self.batch_size):
                idx = order[start:start + self.batch_size]
                out = self.model_.train_on_batch(x[idx], t[idx])
                loss = out["loss"] if isinstance(out, dict) else (out[0] if isinstance(out, (list, tuple)) else out)
                total += float(loss) * len(idx)
            self.loss_curve_.append(total / n)
            if self.verbose:
                print(f"[DBNClassifier] epoch {epoch + 1}, loss = {self.loss_curve_[-1]:.4f}")
        return self

    def predict_proba(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, dtype=(np.float64, np.float32), reset=False)
        if len(self.classes_) == 1:     # one class seen in fit: it is certain
            return np.ones((len(X), 1))
        return np.asarray(self.model_.predict(np.ascontiguousarray(X, dtype=self.dtype)), np.float64)

    def predict(self, X):
        check_is_fitted(self)
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]

    def save(self, filepath):
        """Parameters, the DBN's RBMs and the fine-tuned network's weights (.npz + JSON)."""
        arrays, scalars = {}, {}
        if hasattr(self, "model_"):
            dbn_scalars = {"layers": [{"class": type(r).__name__, "params": r.get_params(),
                                       "key": str(r._key), "counter": str(r._counter)}
                                      for r in self.dbn_.rbms_],
                           "n_features_in_": self.n_features_in_}
            for i, rbm in enumerate(self.dbn_.rbms_):
                for name in ("components_", "intercept_hidden_", "intercept_visible_", "h_samples_"):
                    arrays[f"dbn_{i}_{name}"] = getattr(rbm, name)
            for i, w in enumerate(self.model_.get_weights()):
                arrays[f"model_{i}"] = w
            scalars = {"dbn": dbn_scalars, "dbn_params": self.dbn_.get_params(),
                       "classes": self.classes_.tolist(), "classes_dtype": self.classes_.dtype.str,
                       "n_weights": len(self.model_.get_weights()),
                       "loss_curve_": self.loss_curve_}
        save_estimator(self, filepath, self.get_params(), scalars, arrays)

    @classmethod
    def load(cls, filepath):
        klass, params, scalars, arrays = load_estimator(filepath, cls)
        est = klass(**params)
        if "dbn" in scalars:
            dbn_params = dict(scalars["dbn_params"])
            dbn_params["hidden_layer_sizes"] = tuple(dbn_params["hidden_layer_sizes"])
            est.dbn_ = DBN(**dbn_params)
            est.dbn_._set_state(scalars["dbn"], arrays, prefix="dbn_")
            est.classes_ = np.asarray(scalars["classes"], dtype=np.dtype(scalars["classes_dtype"]))
            est._encoder = LabelEncoder().fit(est.classes_)
            est.n_features_in_ = est.dbn_.n_features_in_
            est.model_ = est.dbn_.to_model(max(2, len(est.classes_)), "softmax", dtype=est.dtype)
            est.model_.set_weights([arrays[f"model_{i}"] for i in range(int(scalars["n_weights"]))])
            est.loss_curve_ = list(scalars["loss_curve_"])
        return est

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        if not self.gaussian_visible:
            tags.input_tags.positive_only = True
        return tags
