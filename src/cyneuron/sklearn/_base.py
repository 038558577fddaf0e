"""The training algorithm shared by MLPClassifier and MLPRegressor: parameters and their
checks, the network (cn.Sequential) and the epoch loop (scikit-learn's stopping rules)."""
import numbers
import warnings

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils.validation import _check_sample_weight, check_is_fitted

from .. import activations as _activations
from .. import layers as _layers
from .. import optimizers as _optimizers
from ..models import Sequential
from ._steps import _DistributedSteps, _Trainer

try:
    from sklearn.utils.validation import validate_data
except ImportError:  # scikit-learn < 1.6
    def validate_data(estimator, *args, **kwargs):
        return estimator._validate_data(*args, **kwargs)

_SKLEARN_ACTIVATIONS = {"identity": "linear", "logistic": "sigmoid", "tanh": "tanh", "relu": "relu"}
_OUTPUT_ACTIVATIONS = {"identity": "linear", "logistic": "sigmoid", "softmax": "softmax"}


def _shuffle(indices, random_state):
    """sklearn.utils.shuffle(indices, random_state=random_state) without its argument
    validation (about 0.6 ms a call, once per epoch): the same draws from the same
    RandomState, so training follows scikit-learn's sample order exactly."""
    order = np.arange(len(indices))
    random_state.shuffle(order)
    return indices[order]


def _is_int(value, low):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= low


def _is_real(value, low, high=None, low_open=False, high_open=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
        return False
    if value < low or (low_open and value == low):
        return False
    return high is None or value < high or (not high_open and value == high)


class _BaseMLP(BaseEstimator):
    """The training algorithm shared by the classifier and the regressor."""

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, dropout=0.0,
                 dtype=None, distributed=False):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.dropout = dropout
        self.dtype = dtype
        self.distributed = distributed

    # -- parameters ----------------------------------------------------------------------
    def _hidden_sizes(self):
        sizes = self.hidden_layer_sizes
        if not hasattr(sizes, "__iter__"):
            sizes = [sizes]
        sizes = list(sizes)
        if not all(_is_int(s, 1) for s in sizes):
            raise ValueError(f"hidden_layer_sizes must hold positive integers, got "
                             f"{self.hidden_layer_sizes!r}")
        return [int(s) for s in sizes]

    def _per_layer(self, value, name, n_hidden):
        if isinstance(value, (list, tuple)):
            if len(value) != n_hidden:
                raise ValueError(f"{name} has {len(value)} entries but there are {n_hidden} "
                                 f"hidden layers")
            return list(value)
        return [value] * n_hidden

    def _hidden_activations(self, n_hidden):
        names = self._per_layer(self.activation, "activation", n_hidden)
        for name in names:
            if not isinstance(name, str):
                raise ValueError(f"activation must be a name or a list of names, got "
                                 f"{self.activation!r}")
            try:
                _activations.get(_SKLEARN_ACTIVATIONS.get(name, name))
            except ValueError:
                raise ValueError(f"unknown activation {name!r}: use one of "
                                 f"{sorted(_SKLEARN_ACTIVATIONS)} or a cyneuron activation "
                                 f"({', '.join(_activations.names())})") from None
        return names

    def _dropout_rates(self, n_hidden):
        rates = self._per_layer(self.dropout, "dropout", n_hidden)
        for rate in rates:
            if not _is_real(rate, 0.0, 1.0, high_open=True):
                raise ValueError(f"dropout must be a rate in [0, 1) or one per hidden layer, "
                                 f"got {self.dropout!r}")
        return [float(r) for r in rates]

    def _check_params(self):
        if self.solver == "lbfgs":
            raise ValueError("solver='lbfgs' is not supported by cyneuron; use 'adam' or 'sgd'")
        checks = [
            ("solver", self.solver in ("sgd", "adam"), "'sgd' or 'adam'"),
            ("alpha", _is_real(self.alpha, 0.0), "a number >= 0"),
            ("batch_size", self.batch_size == "auto" or _is_int(self.batch_size, 1),
             "'auto' or a positive integer"),
            ("learning_rate", self.learning_rate in ("constant", "invscaling", "adaptive"),
             "'constant', 'invscaling' or 'adaptive'"),
            ("learning_rate_init", _is_real(self.learning_rate_init, 0.0, low_open=True),
             "a number > 0"),
            ("power_t", _is_real(self.power_t, 0.0), "a number >= 0"),
            ("max_iter", _is_int(self.max_iter, 1), "a positive integer"),
            ("tol", _is_real(self.tol, 0.0), "a number >= 0"),
            ("momentum", _is_real(self.momentum, 0.0, 1.0, high_open=True), "a number in [0, 1)"),
            ("validation_fraction", _is_real(self.validation_fraction, 0.0, 1.0, high_open=True),
             "a number in [0, 1)"),
            ("beta_1", _is_real(self.beta_1, 0.0, 1.0, high_open=True), "a number in [0, 1)"),
            ("beta_2", _is_real(self.beta_2, 0.0, 1.0, high_open=True), "a number in [0, 1)"),
            ("epsilon", _is_real(self.epsilon, 0.0, low_open=True), "a number > 0"),
            ("n_iter_no_change", _is_int(self.n_iter_no_change, 1) or self.n_iter_no_change == np.inf,
             "a positive integer or np.inf"),
            ("dtype", self.dtype in (None, "float32", "float64", np.float32, np.float64),
             "None, 'float32' or 'float64'"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(f"{name} must be {expected}, got {getattr(self, name)!r}")
        for name in ("shuffle", "warm_start", "nesterovs_momentum", "early_stopping",
                     "distributed"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        sizes = self._hidden_sizes()
        self._hidden_activations(len(sizes))
        self._dropout_rates(len(sizes))
        return sizes

    def _input_dtype(self):
        if self.dtype is None:
            return (np.float64, np.float32)
        return np.dtype(self.dtype).type

    # -- fitting -----------------------------------------------------------------------------
    def fit(self, X, y, sample_weight=None):
        """Fit the model to X and y (max_iter epochs at most). Returns self."""
        return self._fit(X, y, sample_weight, incremental=False)

    def _fit(self, X, y, sample_weight, incremental):
        hidden = self._check_params()
        first_pass = not hasattr(self, "model_") or (not self.warm_start and not incremental)
        X, y = self._validate_input(X, y, incremental, reset=first_pass)
        if not first_pass:
            X = X.astype(self.model_.dtype, copy=False)
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, X, dtype=np.float64)
            if (sample_weight < 0).any():
                raise ValueError("sample_weight must be non-negative")
        sample_weight = self._class_weights(y, sample_weight)
        targets = self._encode_targets(y)
        n_outputs = targets.shape[1] if targets.ndim == 2 else len(self.classes_)
        self._random_state = check_random_state(self.random_state)
        self._dist = _DistributedSteps(self) if self.distributed else None
        try:
            self._fit_prepared(X, targets, sample_weight, incremental, first_pass, hidden,
                               n_outputs)
        finally:
            self._dist = None
        return self

    def _fit_prepared(self, X, targets, sample_weight, incremental, first_pass, hidden,
                      n_outputs):
        if first_pass:
            self._initialize(X.shape[1], hidden, n_outputs, X.dtype)
        elif n_outputs != self.n_outputs_:
            raise ValueError(f"y has {n_outputs} outputs but the model was fitted with "
                             f"{self.n_outputs_}")
        self._fit_stochastic(X, targets, sample_weight, incremental)
        if not np.isfinite(self.model_._params).all():
            raise ValueError("Solver produced non-finite parameter weights. The input data may "
                             "contain large values and need to be preprocessed.")
        return self

    def _class_weights(self, y, sample_weight):
        return sample_weight

    def _initialize(self, n_features, hidden, n_outputs, dtype):
        """Build the network and draw its weights as scikit-learn does (same order, same
        random_state stream): per layer, kernel then bias, uniform in +-sqrt(f / (in + out))
        with f = 2 for a logistic layer, 6 otherwise."""
        self.n_iter_ = 0
        self.t_ = 0
        self.n_outputs_ = n_outputs
        self.n_layers_ = len(hidden) + 2
        self.out_activation_ = self._output_activation()
        names = self._hidden_activations(len(hidden))
        rates = self._dropout_rates(len(hidden))
        stack, dense = [], []
        for units, name in zip(hidden, names):
            dense.append(_layers.Dense(units, activation=_SKLEARN_ACTIVATIONS.get(name, name)))
            stack.append(dense[-1])
            if rates[len(dense) - 1]:
                stack.append(_layers.Dropout(rates[len(dense) - 1]))
        dense.append(_layers.Dense(n_outputs, activation=_OUTPUT_ACTIVATIONS[self.out_activation_]))
        stack.append(dense[-1])
        model = Sequential(stack, name=type(self).__name__, dtype=dtype)
        model.build((n_features,))
        rs = self._random_state
        per_layer = self.activation if isinstance(self.activation, (list, tuple)) else None
        for i, layer in enumerate(dense):
            fan_in, fan_out = layer.kernel.shape
            if per_layer is None:
                factor = 2.0 if self.activation == "logistic" else 6.0
            else:
                factor = 2.0 if i < len(hidden) and per_layer[i] == "logistic" else 6.0
            bound = np.sqrt(factor / (fan_in + fan_out))
            layer.kernel[...] = rs.uniform(-bound, bound, (fan_in, fan_out))
            layer.bias[...] = rs.uniform(-bound, bound, fan_out)
        for layer in stack:      # each dropout layer gets its own stream from random_state
            if isinstance(layer, _layers.Dropout):
                layer.seed = int(rs.randint(np.iinfo(np.int32).max))
                layer._rng = np.random.default_rng(layer.seed)
        self.model_ = model
        self._dense = dense
        self.loss_curve_ = []
        self._no_improvement_count = 0
        if self.early_stopping:
            self.validation_scores_ = []
            self.best_validation_score_ = -np.inf
            self.best_loss_ = None
        else:
            self.best_loss_ = np.inf
            self.validation_scores_ = None
            self.best_validation_score_ = None
        self._best_weights = [w.copy() for w in model.get_weights()]

    def _make_optimizer(self):
        if self.solver == "sgd":
            return _optimizers.SGD(self.learning_rate_init, momentum=self.momentum,
                                   nesterov=self.nesterovs_momentum)
        return _optimizers.Adam(self.learning_rate_init, beta_1=self.beta_1, beta_2=self.beta_2,
                                epsilon=self.epsilon)

    def _fit_stochastic(self, X, targets, sample_weight, incremental):
        model = self.model_
        if not incremental or model.optimizer is None:
            model.compile(optimizer=self._make_optimizer(), loss=self._loss_name())
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        early_stopping = self.early_stopping
        X_val = y_val = sw_val = None
        if early_stopping:
            stratify = targets if self._stratify() else None
            arrays = [X, targets] + ([] if sample_weight is None else [sample_weight])
            split = train_test_split(*arrays, random_state=self._random_state,
                                     test_size=self.validation_fraction, stratify=stratify)
            X, X_val, targets, t_val = split[:4]
            if sample_weight is not None:
                sample_weight, sw_val = split[4], split[5]
            if X_val.shape[0] < 2:
                raise ValueError("The validation set is too small. Increase "
                                 "'validation_fraction' or the size of your dataset.")
            y_val = self._decode_targets(t_val)
        n_samples = X.shape[0]
        if self.batch_size == "auto":
            batch_size = min(200, n_samples)
        else:
            if self.batch_size > n_samples:
                warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is "
                              "going to be clipped")
            batch_size = int(np.clip(self.batch_size, 1, n_samples))
        prepared = model.loss.prepare_targets(self._loss_targets(targets),
                                              (n_samples,) + model.output_shape, model.dtype)
        sample_idx = np.arange(n_samples)
        trainer = _Trainer(self, model, X, prepared, sample_weight)
        trainer.dist = dist = self._dist
        if dist is not None:
            dist.start(model)
        try:
            self.n_iter_ = 0   # epochs of this call (t_ counts samples over all calls)
            for _ in range(self.max_iter):
                if self.shuffle:
                    sample_idx = _shuffle(sample_idx, self._random_state)
                    trainer.reorder(sample_idx)
                accumulated = 0.0
                for start in range(0, n_samples, batch_size):
                    stop = min(start + batch_size, n_samples)
                    accumulated += trainer.step(start, stop) * (stop - start)
                if dist is not None:
                    accumulated = dist.total(accumulated)
                self.n_iter_ += 1
                self.loss_ = accumulated / n_samples
                self.t_ += n_samples
                self.loss_curve_.append(self.loss_)
                if self.verbose and (dist is None or dist.root):
                    print("Iteration %d, loss = %.8f" % (self.n_iter_, self.loss_))
                self._update_no_improvement_count(early_stopping, X_val, y_val, sw_val)
                if self.solver == "sgd" and self.learning_rate == "invscaling":
                    model.optimizer.learning_rate = \
                        self.learning_rate_init / (self.t_ + 1) ** self.power_t
                if self._no_improvement_count > self.n_iter_no_change:
                    what = ("Validation score did not improve more than tol=%f for %d "
                            "consecutive epochs." if early_stopping else
                            "Training loss did not improve more than tol=%f for %d "
                            "consecutive epochs.") % (self.tol, self.n_iter_no_change)
                    if self._trigger_stopping(what):
                        break
                    self._no_improvement_count = 0
                if incremental:
                    break
                if self.n_iter_ == self.max_iter:
                    warnings.warn("Stochastic Optimizer: Maximum iterations (%d) reached and the "
                                  "optimization hasn't converged yet." % self.max_iter,
                                  ConvergenceWarning)
        except KeyboardInterrupt:
            warnings.warn("Training interrupted by user.")
        if early_stopping:
            model.set_weights(self._best_weights)

    def _trigger_stopping(self, message):
        """scikit-learn's rule: an adaptive SGD rate is divided by 5 (down to 1e-6) instead
        of stopping; anything else stops."""
        optimizer = self.model_.optimizer
        if self.solver != "sgd" or self.learning_rate != "adaptive":
            if self.verbose:
                print(message + " Stopping.")
            return True
        if optimizer.learning_rate <= 1e-6:
            if self.verbose:
                print(message + " Learning rate too small. Stopping.")
            return True
        optimizer.learning_rate = optimizer.learning_rate / 5.0
        if self.verbose:
            print(message + " Setting learning rate to %f" % optimizer.learning_rate)
        return False

    def _update_no_improvement_count(self, early_stopping, X_val, y_val, sw_val):
        if early_stopping:
            score = self._score(X_val, y_val, sw_val)
            if self._dist is not None:      # every rank decides on the same number
                score = self._dist.mean(score)
            self.validation_scores_.append(score)
            if self.verbose:
                print("Validation score: %f" % score)
            if score < self.best_validation_score_ + self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if score > self.best_validation_score_:
                self.best_validation_score_ = score
                self._best_weights = self.model_.get_weights()
        else:
            if self.loss_curve_[-1] > self.best_loss_ - self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if self.loss_curve_[-1] < self.best_loss_:
                self.best_loss_ = self.loss_curve_[-1]

    def _score(self, X, y, sample_weight):
        y_pred = self._predict(X, check_input=False)
        if np.issubdtype(y_pred.dtype, np.floating) and not np.isfinite(y_pred).all():
            return np.nan
        return self._score_function(y, y_pred, sample_weight=sample_weight)

    # -- predicting ------------------------------------------------------------------------------
    def _forward_pass_fast(self, X, check_input=True):
        """The network's outputs for X (inference mode)."""
        if check_input:
            X = validate_data(self, X, reset=False, dtype=(np.float64, np.float32))
        model = self.model_
        X = np.ascontiguousarray(X, dtype=model.dtype)
        out = np.empty((X.shape[0], self.n_outputs_), model.dtype)
        step = 4096
        for start in range(0, X.shape[0], step):
            h = X[start:start + step]
            for layer in model.layers:
                h = layer._forward(h, False)
            out[start:start + len(h)] = h
        return out

    def __sklearn_is_fitted__(self):
        return hasattr(self, "model_")

    # -- scikit-learn's view of the weights -------------------------------------------------------
    @property
    def coefs_(self):
        """The kernels (n_in, n_out) of each layer: live views, writes change the model."""
        check_is_fitted(self)
        return [layer.kernel for layer in self._dense]

    @coefs_.setter
    def coefs_(self, values):
        self._set_dense("kernel", values)

    @property
    def intercepts_(self):
        """The biases of each layer: live views, writes change the model."""
        check_is_fitted(self)
        return [layer.bias for layer in self._dense]

    @intercepts_.setter
    def intercepts_(self, values):
        self._set_dense("bias", values)

    def _set_dense(self, which, values):
        check_is_fitted(self)
        values = list(values)
        current = [getattr(layer, which) for layer in self._dense]
        if len(values) != len(current) or any(np.shape(v) != c.shape
                                               for v, c in zip(values, current)):
            raise ValueError(f"expected {len(current)} arrays of shapes "
                             f"{[c.shape for c in current]}")
        for c, v in zip(current, values):
            c[...] = v

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False
        return tags
