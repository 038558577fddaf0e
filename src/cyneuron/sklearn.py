"""scikit-learn estimators on cyneuron's kernels: MLPClassifier and MLPRegressor.

Drop-in replacements for sklearn.neural_network.MLPClassifier / MLPRegressor with the
"sgd" and "adam" solvers: the same parameter names, defaults and training algorithm
(Glorot-uniform initialization drawn from `random_state` in scikit-learn's order,
per-epoch shuffling, L2 penalty alpha * ||W||^2 / (2 * batch weight), loss_curve_,
tol / n_iter_no_change stopping, early_stopping on a validation_fraction split,
"constant" / "invscaling" / "adaptive" learning rates, warm_start, partial_fit), so a
model fitted with the same random_state follows scikit-learn's trajectory up to
floating-point rounding, and the forward / backward passes and optimizer steps run in
cyneuron's compiled kernels.

Beyond scikit-learn:
  activation  one name or a list with one per hidden layer; scikit-learn's names
              ("identity", "logistic", "tanh", "relu") or any cyneuron activation
              ("gelu", "leaky_relu", "swish", ...).
  dropout     a rate, or one per hidden layer (0 = none), applied after each hidden layer.
  class_weight (MLPClassifier) a dict {class label: weight} or "balanced".
  dtype       None (float32 input stays float32, anything else becomes float64, as in
              scikit-learn), "float32" (faster) or "float64".
  model_      the fitted cn.Sequential (save it with model_.save(path)).
  distributed True under mpirun: data-parallel training over MPI (cyneuron.distributed).
              Every rank calls fit with the whole data set; each step's batch is split
              between the ranks and their gradients summed with one all-reduce, so the
              fit follows the single-process one (same random_state) up to rounding.

Not supported: solver="lbfgs" and sparse input (both raise a clear error).
"""
import numbers
import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import _check_partial_fit_first_call, type_of_target, unique_labels
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, column_or_1d

from . import activations as _activations
from . import layers as _layers
from . import optimizers as _optimizers
from ._kernels.optim import add_l2_gradient
from .models import Sequential, class_weight_to_sample_weight

try:
    from sklearn.utils.validation import validate_data
except ImportError:  # scikit-learn < 1.6
    def validate_data(estimator, *args, **kwargs):
        return estimator._validate_data(*args, **kwargs)

__all__ = ["MLPClassifier", "MLPRegressor"]

# scikit-learn's hidden activation names -> cyneuron's
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


class _Trainer:
    """Mini-batch steps with scikit-learn's loss scaling and L2 penalty, on the model's
    flat buffers. Each epoch's shuffled copy of the data is made once (reorder), so a
    batch is a contiguous slice: no per-batch gather."""

    def __init__(self, estimator, model, X, targets, sample_weight):
        self.model = model
        self.alpha = float(estimator.alpha)
        # our loss times `scale` has scikit-learn's gradient; times `report` its value
        self.scale, self.report = estimator._loss_scaling()
        # flat views of the kernels and their gradients (parts of the model's buffers)
        self.kernels = [layer.kernel.reshape(-1) for layer in estimator._dense]
        self.kernel_grads = [layer._gradients[0].reshape(-1) for layer in estimator._dense]
        self.data = (X, targets, sample_weight)
        self.X, self.targets, self.weights = self.data
        self._shuffled = None
        self._constant = {}
        self.dist = None

    def reorder(self, order):
        """Use the samples in `order` for the next epoch."""
        if self._shuffled is None:
            self._shuffled = tuple(None if a is None else np.empty_like(a) for a in self.data)
        for source, out in zip(self.data, self._shuffled):
            if source is not None:
                # a permutation is always in range: mode="clip" skips numpy's
                # bounds-checked copy (2-3x faster than the default mode="raise")
                np.take(source, order, axis=0, out=out, mode="clip")
        self.X, self.targets, self.weights = self._shuffled

    def step(self, start, stop):
        """One optimizer step on samples start:stop; returns scikit-learn's batch loss."""
        model = self.model
        n = stop - start
        dist = self.dist
        if dist is not None:           # this rank's part of the batch
            lo, hi = dist.part(start, stop)
            xb, tb = self.X[lo:hi], self.targets[lo:hi]
        else:
            xb, tb = self.X[start:stop], self.targets[start:stop]
        if self.weights is None:
            weight_sum = float(n)
            wb = None
            if self.scale != 1.0:
                wb = self._constant.get(n)
                if wb is None:
                    wb = self._constant[n] = np.full(n, self.scale, model.dtype)
        else:
            wb = self.weights[start:stop]
            weight_sum = float(wb.sum())
            if weight_sum <= 0:
                raise ValueError("a batch has sample weights summing to 0; give more samples "
                                 "non-zero weight or use a larger batch_size")
            wb = (wb * (self.scale * n / weight_sum)).astype(model.dtype)
            if dist is not None:
                wb = wb[lo - start:hi - start]
        if dist is None:
            loss, _ = model._forward_backward(xb, tb, wb)
            loss = float(loss) * self.report
        else:
            loss = dist.forward_backward(model, xb, tb, wb, n) * self.report
        if self.alpha:
            factor = self.alpha / weight_sum
            penalty = sum(add_l2_gradient(k, g, factor)
                          for k, g in zip(self.kernels, self.kernel_grads))
            loss += 0.5 * self.alpha * penalty / weight_sum / (1 if dist is None else dist.size)
        model.optimizer.apply_gradients(model._params, model._grads)
        return loss


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multi-layer perceptron classifier (scikit-learn's MLPClassifier on cyneuron).

    Multiclass: softmax output and cross-entropy; binary and multilabel (an indicator
    matrix y): logistic outputs and binary cross-entropy. See the module docstring for
    the parameters; class_weight is a dict {label: weight} or "balanced".
    """

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, dropout=0.0,
                 class_weight=None, dtype=None, distributed=False):
        super().__init__(
            hidden_layer_sizes=hidden_layer_sizes, activation=activation, solver=solver,
            alpha=alpha, batch_size=batch_size, learning_rate=learning_rate,
            learning_rate_init=learning_rate_init, power_t=power_t, max_iter=max_iter,
            shuffle=shuffle, random_state=random_state, tol=tol, verbose=verbose,
            warm_start=warm_start, momentum=momentum, nesterovs_momentum=nesterovs_momentum,
            early_stopping=early_stopping, validation_fraction=validation_fraction,
            beta_1=beta_1, beta_2=beta_2, epsilon=epsilon, n_iter_no_change=n_iter_no_change,
            dropout=dropout, dtype=dtype, distributed=distributed)
        self.class_weight = class_weight

    _score_function = staticmethod(accuracy_score)

    def _validate_input(self, X, y, incremental, reset):
        X, y = validate_data(self, X, y, multi_output=True, dtype=self._input_dtype(),
                             reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        if not hasattr(self, "classes_") or (not self.warm_start and not incremental):
            self._label_binarizer = LabelBinarizer()
            self._label_binarizer.fit(y)
            self.classes_ = self._label_binarizer.classes_
        else:
            classes = unique_labels(y)
            if self.warm_start:
                if set(classes) != set(self.classes_):
                    raise ValueError(f"warm_start can only be used where `y` has the same "
                                     f"classes as in the previous call to fit. Previously got "
                                     f"{self.classes_}, `y` has {classes}")
            elif len(np.setdiff1d(classes, self.classes_, assume_unique=True)):
                raise ValueError(f"`y` has classes not in `self.classes_`. `self.classes_` has "
                                 f"{self.classes_}. 'y' has {classes}.")
        return X, y

    def _multiclass(self):
        return self._label_binarizer.y_type_ == "multiclass"

    def _encode_targets(self, y):
        """Class indices (multiclass) or a 0/1 matrix (binary, multilabel)."""
        if self._multiclass():
            # classes_ is sorted and holds every label of y (checked on input): the index
            # of each label, without the one-hot matrix LabelBinarizer would build (~2 ms)
            return np.searchsorted(self.classes_, y)
        return self._label_binarizer.transform(y).astype(np.float64)

    def _decode_targets(self, targets):
        if self._multiclass():
            return self.classes_[targets]
        return self._label_binarizer.inverse_transform(targets)

    def _loss_targets(self, targets):
        return targets

    def _stratify(self):
        return self.n_outputs_ == 1   # as scikit-learn: binary targets only

    def _output_activation(self):
        return "softmax" if self._multiclass() else "logistic"

    def _loss_name(self):
        return "sparse_categorical_crossentropy" if self._multiclass() else "binary_crossentropy"

    def _loss_scaling(self):
        # binary cross-entropy averages over the outputs; scikit-learn sums them
        return (1.0, 1.0) if self._multiclass() else (float(self.n_outputs_), 1.0)

    def _class_weights(self, y, sample_weight):
        if self.class_weight is None:
            return sample_weight
        if type_of_target(y).startswith("multilabel"):
            raise ValueError("class_weight is not supported for multilabel targets")
        indices = np.searchsorted(self.classes_, y)
        if isinstance(self.class_weight, dict):
            unknown = [c for c in self.class_weight if c not in set(self.classes_.tolist())]
            if unknown:
                raise ValueError(f"class_weight has labels {unknown} that are not classes "
                                 f"{self.classes_.tolist()}")
            mapping = {int(np.searchsorted(self.classes_, c)): w
                       for c, w in self.class_weight.items()}
            weights = class_weight_to_sample_weight(indices, mapping)
        else:
            weights = class_weight_to_sample_weight(indices, self.class_weight)
        return weights if sample_weight is None else weights * sample_weight

    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """One epoch over (X, y). `classes` (every label, across all calls) is required
        on the first call."""
        if _check_partial_fit_first_call(self, classes):
            self._label_binarizer = LabelBinarizer()
            if type_of_target(y).startswith("multilabel"):
                self._label_binarizer.fit(y)
            else:
                self._label_binarizer.fit(classes)
        return self._fit(X, y, sample_weight, incremental=True)

    def _predict(self, X, check_input=True):
        y_pred = self._forward_pass_fast(X, check_input=check_input)
        if self.n_outputs_ == 1:
            y_pred = y_pred.ravel()
        return self._label_binarizer.inverse_transform(y_pred)

    def predict(self, X):
        """Predicted class labels (or label indicator rows for multilabel y)."""
        check_is_fitted(self)
        return self._predict(X)

    def predict_proba(self, X):
        """Class probabilities, columns in the order of classes_."""
        check_is_fitted(self)
        y_pred = self._forward_pass_fast(X)
        if self.n_outputs_ == 1:
            y_pred = y_pred.ravel()
        if y_pred.ndim == 1:
            return np.vstack([1 - y_pred, y_pred]).T
        return y_pred

    def predict_log_proba(self, X):
        """log(predict_proba(X))."""
        y_prob = self.predict_proba(X)
        return np.log(y_prob, out=y_prob)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags

    def _more_tags(self):  # scikit-learn < 1.6
        return {"multilabel": True}


class MLPRegressor(RegressorMixin, _BaseMLP):
    """Multi-layer perceptron regressor (scikit-learn's MLPRegressor on cyneuron):
    identity output, half squared error loss; y may have several columns. `loss` comes
    first, as in scikit-learn >= 1.7; only "squared_error" is supported."""

    def __init__(self, loss="squared_error", hidden_layer_sizes=(100,), activation="relu", *,
                 solver="adam", alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, dropout=0.0,
                 dtype=None, distributed=False):
        super().__init__(
            hidden_layer_sizes=hidden_layer_sizes, activation=activation, solver=solver,
            alpha=alpha, batch_size=batch_size, learning_rate=learning_rate,
            learning_rate_init=learning_rate_init, power_t=power_t, max_iter=max_iter,
            shuffle=shuffle, random_state=random_state, tol=tol, verbose=verbose,
            warm_start=warm_start, momentum=momentum, nesterovs_momentum=nesterovs_momentum,
            early_stopping=early_stopping, validation_fraction=validation_fraction,
            beta_1=beta_1, beta_2=beta_2, epsilon=epsilon, n_iter_no_change=n_iter_no_change,
            dropout=dropout, dtype=dtype, distributed=distributed)
        self.loss = loss

    _score_function = staticmethod(r2_score)

    def _check_params(self):
        if self.loss != "squared_error":
            raise ValueError(f"loss must be 'squared_error' (the only loss cyneuron's "
                             f"MLPRegressor supports), got {self.loss!r}")
        return super()._check_params()

    def _validate_input(self, X, y, incremental, reset):
        X, y = validate_data(self, X, y, multi_output=True, y_numeric=True,
                             dtype=self._input_dtype(), reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        return X, y

    def _encode_targets(self, y):
        return y.reshape(-1, 1) if y.ndim == 1 else y

    def _decode_targets(self, targets):
        return targets

    def _loss_targets(self, targets):
        return targets

    def _stratify(self):
        return False

    def _output_activation(self):
        return "identity"

    def _loss_name(self):
        return "mean_squared_error"

    def _loss_scaling(self):
        # scikit-learn's gradient is that of 0.5 * sum over outputs; it reports
        # 0.5 * the mean over outputs
        return 0.5 * self.n_outputs_, 1.0 / self.n_outputs_

    def partial_fit(self, X, y, sample_weight=None):
        """One epoch over (X, y)."""
        return self._fit(X, y, sample_weight, incremental=True)

    def _predict(self, X, check_input=True):
        y_pred = self._forward_pass_fast(X, check_input=check_input)
        return y_pred.ravel() if y_pred.shape[1] == 1 else y_pred

    def predict(self, X):
        """Predicted values, shape (n_samples,) or (n_samples, n_outputs)."""
        check_is_fitted(self)
        return self._predict(X)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def _more_tags(self):  # scikit-learn < 1.6
        return {"multioutput": True}


class _DistributedSteps:
    """distributed=True: the ranks agree on the random state and the start weights, each
    step's batch is split between them (rank r takes the r-th of `size` near-equal
    parts), and the gradients are summed with one all-reduce, each part weighted by its
    share of the batch, before the L2 term and the update. Losses are summed per epoch."""

    def __init__(self, estimator):
        from . import distributed

        if not distributed.launched() and distributed._mpi().COMM_WORLD.Get_size() == 1:
            raise RuntimeError(f"{type(estimator).__name__}(distributed=True) needs the script "
                               f"started by an MPI launcher, e.g. `mpirun -n 2 python "
                               f"train.py` (no MPI launcher environment found)")
        distributed.init()
        self.rank, self.size = distributed.rank(), distributed.size()
        self.root = self.rank == 0
        if not isinstance(estimator.random_state, numbers.Integral):
            # None or a RandomState: the ranks would draw differently; take root's seed
            seed = np.array([estimator._random_state.randint(np.iinfo(np.int32).max)],
                            np.int64)
            distributed.broadcast_(seed, 0, "the broadcast of the random seed")
            estimator._random_state = np.random.RandomState(int(seed[0]))

    @property
    def d(self):
        from . import distributed
        return distributed

    def start(self, model):
        self.d.broadcast_weights(model, 0)

    def part(self, start, stop):
        q, rem = divmod(stop - start, self.size)
        lo = start + self.rank * q + min(self.rank, rem)
        return lo, lo + q + (self.rank < rem)

    def forward_backward(self, model, xb, tb, wb, n):
        """This rank's part of the batch loss; the summed gradient in model._grads."""
        m = len(xb)
        if m:
            loss, _ = model._forward_backward(xb, tb, wb)
            if m != n:
                model._grads *= m / n
        else:
            loss = 0.0
            model._grads[:] = 0
        if self.size > 1:
            self.d.allreduce_(model._grads, "the all-reduce of the gradients")
        return float(loss) * m / n

    def total(self, value):
        buf = np.array([value], np.float64)
        return float(self.d.allreduce_(buf, "the sum of the epoch loss")[0])

    def mean(self, value):
        return self.total(value) / self.size
