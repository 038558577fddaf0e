"""Loss functions with Keras names and semantics.

Each loss computes a per-sample value (the mean over the last axis of an element-wise
loss, or the sum for KL divergence and the categorical cross-entropies), multiplies it
by `sample_weight` if given, then reduces over the batch:

    "sum_over_batch_size" (default)  sum of the weighted per-sample losses / n_samples
    "sum"                            their sum
    "none"                           the per-sample losses, shape (n_samples,)

    loss = cn.losses.Huber(delta=1.0)
    loss(y_true, y_pred, sample_weight=w)

Models call `prepare_targets` once, then `value_and_grad(targets, y_pred)` (the reduced
loss and its gradient) per batch; reduction "none" trains as "sum_over_batch_size".
Cross-entropies that follow their output activation fuse with it (`fuses_with`):
`value_and_grad_logits` takes the logits z of a softmax (categorical) or sigmoid
(binary) output and returns d(loss)/dz in closed form — cheaper, and exact where the
separate activation + log would underflow. `from_logits=True` losses take raw logits
from a linear output and use the same kernels.
"""
import numpy as np

from ._kernels import losses as _k
from ._registry import Registry
from ._validation import check_array, check_numeric

# Keras clips probabilities to [eps, 1 - eps] before taking logs.
EPSILON = 1e-7
REDUCTIONS = ("sum_over_batch_size", "sum", "none")


def _check_reduction(reduction):
    if reduction is None:  # Keras accepts None for "no reduction"
        return "none"
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {list(REDUCTIONS)}, got {reduction!r}")
    return reduction


def _check_fraction(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) \
            or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def check_sample_weight(sample_weight, n_samples, dtype, allow_nd=False):
    """`sample_weight` as a contiguous (n_samples,) array of `dtype` (a scalar or an
    (n_samples, 1) array is accepted), or None. allow_nd: (n_samples, steps, ...) weights
    (one per time step of a sequence output) pass too."""
    if sample_weight is None:
        return None
    scalar = np.ndim(sample_weight) == 0
    w = check_array(sample_weight, "sample_weight", dtype)  # (ascontiguousarray makes 0-D 1-D)
    if scalar:
        return np.full(n_samples, w[0], dtype=dtype)
    if w.ndim == 2 and w.shape[1] == 1:
        w = w[:, 0]
    if allow_nd and w.ndim > 1 and w.shape[0] == n_samples:
        return np.ascontiguousarray(w)
    if w.shape != (n_samples,):
        raise ValueError(f"sample_weight must have shape ({n_samples},), one weight per sample; "
                         f"got {w.shape}")
    return np.ascontiguousarray(w)


class Loss:
    """Base class. Subclasses set `name` and implement `prepare_targets` and `_compute`;
    losses that fuse with an output activation also set `fuses_with` and `_compute_logits`."""

    name = None
    fuses_with = None  # name of the output activation this loss absorbs, if any

    def __init__(self, reduction="sum_over_batch_size"):
        self.reduction = _check_reduction(reduction)

    # -- Keras-style call --------------------------------------------------------------
    def __call__(self, y_true, y_pred, sample_weight=None):
        """The loss of predictions `y_pred` (n_samples, n_outputs) against `y_true`,
        reduced as `self.reduction` says."""
        y_pred = check_array(y_pred, "y_pred", np.float64)
        if y_pred.ndim == 1:
            y_pred = y_pred.reshape(-1, 1)
        targets = self.prepare_targets(y_true, y_pred.shape, y_pred.dtype, name="y_true")
        weights = check_sample_weight(sample_weight, len(y_pred), y_pred.dtype,
                                      allow_nd=y_pred.ndim > 2)
        yp, t, w, _ = self._rows(targets, y_pred, weights, None)
        losses = np.empty(len(yp), y_pred.dtype)
        grad = self._grad_buffer(yp.shape, y_pred.dtype)
        compute = self._compute_logits if getattr(self, "from_logits", False) else self._compute
        total = compute(t, yp, grad, 1.0, w, losses)
        if self.reduction == "none":
            return losses.reshape(y_pred.shape[:-1])
        return total if self.reduction == "sum" else total / len(yp)

    # -- used by models ----------------------------------------------------------------
    def prepare_targets(self, y, output_shape, dtype, name="y"):
        """Validate targets `y` (called `name` in errors) against model outputs of
        `output_shape` and convert them once."""
        raise NotImplementedError

    def value_and_grad(self, targets, y_pred, sample_weight=None, mask=None):
        """(reduced loss, d loss / d y_pred) for prepared `targets`. The gradient array is
        owned by the loss and overwritten by its next call.

        Outputs of any rank (batch, ..., k): the loss of each position over the leading
        axes is reduced as for samples (mean over all of them); sample_weight is per sample
        (batch,) or per position (batch, ...). mask (batch, ...) of booleans: masked
        positions count zero and the mean is over the unmasked ones (Keras)."""
        if getattr(self, "from_logits", False):
            return self.value_and_grad_logits(targets, y_pred, sample_weight, mask)
        return self._reduced(self._compute, targets, y_pred, sample_weight, mask)

    def value_and_grad_logits(self, targets, z, sample_weight=None, mask=None):
        """(reduced loss, d loss / d z) where z are the logits of the `fuses_with` output."""
        if self.fuses_with is None:
            raise NotImplementedError(f"{self.name} does not fuse with an output activation")
        return self._reduced(self._compute_logits, targets, z, sample_weight, mask)

    @staticmethod
    def _rows(targets, y_pred, weights, mask):
        """Outputs of rank > 2 as rows (positions, k) (views), with the targets and the
        weights (times the mask) per row; the divisor of a mean over the rows."""
        rows = y_pred.size // y_pred.shape[-1] if y_pred.shape[-1] else 0
        count = rows
        if y_pred.ndim > 2:
            lead = y_pred.shape[:-1]
            y_pred = y_pred.reshape(rows, y_pred.shape[-1])
            targets = targets.reshape((rows,) + targets.shape[len(lead):]) \
                if targets.shape[:len(lead)] == lead else targets.reshape(rows, -1)
            if weights is not None:
                if weights.shape == lead:
                    weights = weights.reshape(rows)
                elif weights.ndim == 1:
                    weights = np.repeat(weights, rows // len(weights))
                else:
                    raise ValueError(f"sample_weight has shape {weights.shape}; expected "
                                     f"{lead[:1]} or {lead}")
        if mask is not None:
            m = np.asarray(mask).reshape(-1).astype(y_pred.dtype)
            if m.size != rows:
                raise ValueError(f"the mask has {m.size} entries for {rows} output positions")
            weights = m if weights is None else weights * m
            count = max(float(m.sum()), 1.0)
        return y_pred, targets, weights, count

    def _reduced(self, compute, targets, y_pred, sample_weight, mask=None):
        n = y_pred.shape[0]
        if y_pred.ndim <= 2 and mask is None:
            weights = check_sample_weight(sample_weight, n, y_pred.dtype)
            scale = 1.0 if self.reduction == "sum" else 1.0 / n
            grad = self._grad_buffer(y_pred.shape, y_pred.dtype)
            total = compute(targets, y_pred, grad, scale, weights, None)
            return total * scale, grad
        weights = check_sample_weight(sample_weight, n, y_pred.dtype, allow_nd=y_pred.ndim > 2)
        yp, t, w, count = self._rows(targets, y_pred, weights, mask)
        scale = 1.0 if self.reduction == "sum" else 1.0 / count
        grad = self._grad_buffer(yp.shape, y_pred.dtype)
        total = compute(t, yp, grad, scale, w, None)
        return total * scale, grad.reshape(y_pred.shape)

    def _compute(self, targets, y_pred, grad, scale, sample_weight, losses):
        """Sum of the weighted per-sample losses; writes d(sum)/d(y_pred) * scale into grad
        and, if `losses` is given, the per-sample losses into it."""
        raise NotImplementedError

    def _compute_logits(self, targets, z, grad, scale, sample_weight, losses):
        raise NotImplementedError(f"{self.name} does not take logits")

    # -- helpers -------------------------------------------------------------------------
    @staticmethod
    def _check_samples(y, output_shape, name):
        if len(y) != output_shape[0]:
            raise ValueError(f"{name} has {len(y)} samples but the predictions have "
                             f"{output_shape[0]}")

    def get_config(self):
        return {"name": self.name, "reduction": self.reduction}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "name")
        return f"{type(self).__name__}({args})"

    def _grad_buffer(self, shape, dtype):
        buf = getattr(self, "_buf", None)
        if buf is None or buf.shape != shape or buf.dtype != dtype:
            buf = self._buf = np.empty(shape, dtype)
        return buf


# ------------------------------------------------------------------------------------------
# regression-style losses: targets shaped like the outputs, per-sample mean over outputs
# ------------------------------------------------------------------------------------------
class _Elementwise(Loss):
    """A loss whose targets have the outputs' shape and whose kernel is one row loop."""

    _kernel = None

    def prepare_targets(self, y, output_shape, dtype, name="y"):
        y = check_array(y, name, dtype)
        self._check_samples(y, output_shape, name)
        n_out = output_shape[-1]
        if len(output_shape) > 2:
            shape = tuple(output_shape)
            if y.shape == shape[:-1] and n_out == 1:
                y = y.reshape(shape)
            if y.shape != shape:
                raise ValueError(f"{name} must have shape {(y.shape[0],) + shape[1:]} to match "
                                 f"the model outputs; got {y.shape}")
            return y
        if y.ndim == 1 and n_out == 1:
            y = y.reshape(-1, 1)
        if y.ndim != 2 or y.shape[1] != n_out:
            raise ValueError(f"{name} must have shape (n_samples, {n_out}) to match the model "
                             f"outputs; got {y.shape}")
        return y

    def _kernel_args(self):
        """Extra scalar arguments of the kernel after `scale` (Huber's delta, ...)."""
        return ()

    def _compute(self, targets, y_pred, grad, scale, sample_weight, losses):
        return type(self)._kernel(y_pred, targets, grad, scale, *self._kernel_args(),
                                  sample_weight=sample_weight, losses=losses)


class MeanSquaredError(_Elementwise):
    """mean((y_pred - y_true)^2) over the outputs of each sample."""

    name = "mean_squared_error"
    _kernel = _k.mean_squared_error


class MeanAbsoluteError(_Elementwise):
    """mean(|y_pred - y_true|) over the outputs of each sample."""

    name = "mean_absolute_error"
    _kernel = _k.mean_absolute_error


class Huber(_Elementwise):
    """Squared error for |d| <= delta, linear beyond: mean of 0.5 d^2, or
    delta (|d| - 0.5 delta), with d = y_pred - y_true (Keras `huber`)."""

    name = "huber"
    _kernel = _k.huber

    def __init__(self, delta=1.0, reduction="sum_over_batch_size"):
        super().__init__(reduction)
        if isinstance(delta, bool) or not isinstance(delta, (int, float, np.number)) \
                or not np.isfinite(delta) or delta <= 0:
            raise ValueError(f"delta must be a positive number, got {delta!r}")
        self.delta = float(delta)

    def _kernel_args(self):
        return (self.delta,)

    def get_config(self):
        return {**super().get_config(), "delta": self.delta}


class Arctan(_Elementwise):
    """The arctan error: mean over the outputs of (arctan(y_true - y_pred))^2.

    Bounded by (pi/2)^2 per element, so outliers pull less than with MSE; near zero it
    is the squared error. Gradient 2 arctan(d) / (1 + d^2), d = y_pred - y_true.
    """

    name = "arctan"
    _kernel = _k.arctan


class Hinge(_Elementwise):
    """mean(max(1 - y_true * y_pred, 0)); labels in {-1, 1} ({0, 1} labels are converted,
    as Keras does)."""

    name = "hinge"
    _kernel = _k.hinge

    def prepare_targets(self, y, output_shape, dtype, name="y"):
        y = super().prepare_targets(y, output_shape, dtype, name)
        if np.all((y == 0) | (y == 1)):
            y = 2 * y - 1
        return y


class BinaryCrossentropy(_Elementwise):
    """-mean(t log p + (1 - t) log(1 - p)) over the outputs, p clipped to [1e-7, 1 - 1e-7].

    With a sigmoid output layer the model fuses it in: the loss is computed from the
    logits as log(1 + e^z) - t z, with gradient sigmoid(z) - t. `from_logits=True` takes
    logits from a linear output the same way. `label_smoothing` moves targets towards 0.5.
    """

    name = "binary_crossentropy"
    fuses_with = "sigmoid"
    _kernel = _k.binary_crossentropy

    def __init__(self, from_logits=False, label_smoothing=0.0, reduction="sum_over_batch_size"):
        super().__init__(reduction)
        self.from_logits = bool(from_logits)
        self.label_smoothing = _check_fraction(label_smoothing, "label_smoothing")

    def prepare_targets(self, y, output_shape, dtype, name="y"):
        y = super().prepare_targets(y, output_shape, dtype, name)
        if self.label_smoothing:
            y = y * (1 - self.label_smoothing) + 0.5 * self.label_smoothing
        return y

    def _kernel_args(self):
        return (EPSILON,)

    def _compute_logits(self, targets, z, grad, scale, sample_weight, losses):
        return _k.binary_crossentropy_logits(z, targets, grad, scale,
                                             sample_weight=sample_weight, losses=losses)

    def get_config(self):
        return {**super().get_config(), "from_logits": self.from_logits,
                "label_smoothing": self.label_smoothing}


# ------------------------------------------------------------------------------------------
# distributions over classes: per-sample sum over the last axis
# ------------------------------------------------------------------------------------------
def _check_class_targets(loss, y, output_shape, dtype, name):
    y = check_array(y, name, dtype)
    loss._check_samples(y, output_shape, name)
    if len(output_shape) > 2:
        if y.shape[1:] != tuple(output_shape[1:]):
            raise ValueError(f"{name} must be one-hot or a distribution of shape "
                             f"{(len(y),) + tuple(output_shape[1:])} for {loss.name}; got "
                             f"{y.shape} (use sparse_categorical_crossentropy for integer labels)")
        return y
    if y.ndim != 2 or y.shape[1] != output_shape[-1]:
        raise ValueError(f"{name} must be one-hot or a distribution, shape (n_samples, "
                         f"{output_shape[-1]}), for {loss.name}; got {y.shape} (use "
                         f"sparse_categorical_crossentropy for integer labels)")
    return y


class KLDivergence(Loss):
    """sum(t log(t / p)) over the classes, t and p clipped to [1e-7, 1] (Keras)."""

    name = "kl_divergence"

    def prepare_targets(self, y, output_shape, dtype, name="y"):
        return _check_class_targets(self, y, output_shape, dtype, name)

    def _compute(self, targets, y_pred, grad, scale, sample_weight, losses):
        return _k.kl_divergence(y_pred, targets, grad, scale, EPSILON,
                                sample_weight=sample_weight, losses=losses)


class _CrossEntropy(Loss):
    """Shared by the categorical cross-entropies: probabilities in, or logits with
    from_logits=True (then, as when fused with a softmax output, the kernel is the
    log-sum-exp one)."""

    fuses_with = "softmax"

    def __init__(self, from_logits=False, reduction="sum_over_batch_size"):
        super().__init__(reduction)
        self.from_logits = bool(from_logits)

    def _compute(self, targets, y_pred, grad, scale, sample_weight, losses):
        return _k.cross_entropy_probs(y_pred, self._dense_targets(targets, y_pred), grad, scale,
                                      EPSILON, sample_weight=sample_weight, losses=losses)

    def _compute_logits(self, targets, z, grad, scale, sample_weight, losses):
        return type(self)._logits_kernel(z, targets, grad, scale,
                                         sample_weight=sample_weight, losses=losses)

    def _dense_targets(self, targets, y_pred):
        return targets

    def get_config(self):
        return {**super().get_config(), "from_logits": self.from_logits}


class SparseCategoricalCrossentropy(_CrossEntropy):
    """-log p[label], for integer class labels (n_samples,)."""

    name = "sparse_categorical_crossentropy"
    _logits_kernel = _k.softmax_cross_entropy_sparse

    def prepare_targets(self, y, output_shape, dtype, name="y"):
        y = check_numeric(y, name)
        self._check_samples(y, output_shape, name)
        lead = tuple(output_shape[1:-1])
        if y.ndim == 2 + len(lead) and y.shape[-1] == 1:
            y = y.reshape(y.shape[:-1])
        if y.shape[1:] != lead:
            if not lead:
                raise ValueError(f"{name} must be 1-D integer class labels for {self.name}; got "
                                 f"shape {y.shape}")
            raise ValueError(f"{name} must hold integer class labels of shape "
                             f"{(len(y),) + lead} for {self.name} (one per output position); "
                             f"got shape {y.shape}")
        if y.size == 0:
            raise ValueError(f"{name} is empty")
        if y.dtype.kind == "f":
            if not np.isfinite(y).all():
                raise ValueError(f"{name} contains NaN or infinity")
            if not np.array_equal(y, np.round(y)):
                raise ValueError(f"{name} must hold integer class labels for {self.name}")
        labels = y.astype(np.int64)
        n_classes = output_shape[-1]
        if labels.min() < 0 or labels.max() >= n_classes:
            raise ValueError(f"{name} holds labels outside [0, {n_classes}) for a model with "
                             f"{n_classes} outputs: min {labels.min()}, max {labels.max()}")
        return np.ascontiguousarray(labels)

    def _dense_targets(self, targets, y_pred):
        onehot = np.zeros(y_pred.shape, y_pred.dtype)
        onehot[np.arange(len(targets)), targets] = 1
        return onehot


class CategoricalCrossentropy(_CrossEntropy):
    """-sum(t log p), for one-hot (or soft) targets (n_samples, n_classes).
    `label_smoothing` mixes the targets with the uniform distribution."""

    name = "categorical_crossentropy"
    _logits_kernel = _k.softmax_cross_entropy_dense

    def __init__(self, from_logits=False, label_smoothing=0.0, reduction="sum_over_batch_size"):
        super().__init__(from_logits, reduction)
        self.label_smoothing = _check_fraction(label_smoothing, "label_smoothing")

    def prepare_targets(self, y, output_shape, dtype, name="y"):
        y = _check_class_targets(self, y, output_shape, dtype, name)
        if self.label_smoothing:
            y = y * (1 - self.label_smoothing) + self.label_smoothing / y.shape[1]
        return y

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


_REGISTRY = Registry(
    "loss", Loss,
    (MeanSquaredError, MeanAbsoluteError, Huber, BinaryCrossentropy, CategoricalCrossentropy,
     SparseCategoricalCrossentropy, Hinge, KLDivergence, Arctan),
    aliases={"mse": "mean_squared_error", "mae": "mean_absolute_error", "huber_loss": "huber",
             "kld": "kl_divergence", "kullback_leibler_divergence": "kl_divergence",
             "arctan_error": "arctan"})


def names():
    """Names accepted by `get`."""
    return _REGISTRY.names()


def get(identifier):
    """A Loss from a name, a Loss instance or class."""
    return _REGISTRY.get(identifier)
