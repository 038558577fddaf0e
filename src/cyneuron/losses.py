"""Loss functions (Keras names), mean over the batch.

`value_and_grad(targets, y_pred)` returns the mean loss and d(loss)/d(y_pred).
Cross-entropies that follow a softmax output fuse with it: `value_and_grad_logits`
takes the logits z, computes log-softmax with log-sum-exp, and returns
d(loss)/dz = (softmax(z) - t) / N directly — cheaper and exact where the
separate softmax + log would underflow.
"""
import numpy as np

from ._kernels import losses as _k
from ._registry import Registry
from ._validation import check_array, check_numeric

# Keras clips probabilities to [eps, 1 - eps] before taking logs.
EPSILON = 1e-7


class Loss:
    """Base class. Subclasses set `name` and implement `prepare_targets` and `value_and_grad`."""

    name = None
    fuses_with = None  # name of the output activation this loss absorbs, if any

    def __call__(self, y_true, y_pred):
        """The mean loss of predictions `y_pred` against `y_true`."""
        y_pred = check_array(y_pred, "y_pred", np.float64)
        if y_pred.ndim == 1:
            y_pred = y_pred.reshape(-1, 1)
        targets = self.prepare_targets(y_true, y_pred.shape, y_pred.dtype)
        return self.value_and_grad(targets, y_pred)[0]

    def prepare_targets(self, y, output_shape, dtype, name="y"):
        """Validate targets `y` (called `name` in errors) against model outputs of
        `output_shape` and convert them once."""
        raise NotImplementedError

    def value_and_grad(self, targets, y_pred):
        raise NotImplementedError

    @staticmethod
    def _check_samples(y, output_shape, name):
        if len(y) != output_shape[0]:
            raise ValueError(f"{name} has {len(y)} samples but the predictions have "
                             f"{output_shape[0]}")

    def value_and_grad_logits(self, targets, z):
        raise NotImplementedError(f"{self.name} does not fuse with an output activation")

    def get_config(self):
        return {"name": self.name}

    def _grad_buffer(self, shape, dtype):
        buf = getattr(self, "_buf", None)
        if buf is None or buf.shape != shape or buf.dtype != dtype:
            buf = self._buf = np.empty(shape, dtype)
        return buf


class MeanSquaredError(Loss):
    """mean((y_pred - y_true)^2) over all outputs."""

    name = "mean_squared_error"

    def prepare_targets(self, y, output_shape, dtype, name="y"):
        y = check_array(y, name, dtype)
        self._check_samples(y, output_shape, name)
        n_out = output_shape[-1]
        if y.ndim == 1 and n_out == 1:
            y = y.reshape(-1, 1)
        if y.ndim != 2 or y.shape[1] != n_out:
            raise ValueError(f"{name} must have shape (n_samples, {n_out}) to match the model "
                             f"outputs; got {y.shape}")
        return y

    def value_and_grad(self, targets, y_pred):
        grad = self._grad_buffer(y_pred.shape, y_pred.dtype)
        total = _k.squared_error(y_pred.reshape(-1), targets.reshape(-1), grad.reshape(-1),
                                 1.0 / y_pred.size)
        return total / y_pred.size, grad


class _CrossEntropy(Loss):
    """Shared by the categorical cross-entropies: probabilities in, or logits with
    from_logits=True (then, as when fused with a softmax output, the kernel is the
    log-sum-exp one)."""

    fuses_with = "softmax"

    def __init__(self, from_logits=False):
        self.from_logits = bool(from_logits)

    def value_and_grad(self, targets, y_pred):
        if self.from_logits:
            return self.value_and_grad_logits(targets, y_pred)
        grad = self._grad_buffer(y_pred.shape, y_pred.dtype)
        n = y_pred.shape[0]
        total = _k.cross_entropy_probs(y_pred, self._dense_targets(targets, y_pred), grad,
                                       1.0 / n, EPSILON)
        return total / n, grad

    def value_and_grad_logits(self, targets, z):
        grad = self._grad_buffer(z.shape, z.dtype)
        n = z.shape[0]
        total = type(self)._logits_kernel(z, targets, grad, 1.0 / n)
        return total / n, grad

    def _dense_targets(self, targets, y_pred):
        return targets


class SparseCategoricalCrossentropy(_CrossEntropy):
    """-log p[label], for integer class labels (n_samples,)."""

    name = "sparse_categorical_crossentropy"
    _logits_kernel = _k.softmax_cross_entropy_sparse

    def prepare_targets(self, y, output_shape, dtype, name="y"):
        y = check_numeric(y, name)
        self._check_samples(y, output_shape, name)
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim != 1:
            raise ValueError(f"{name} must be 1-D integer class labels for {self.name}; got shape {y.shape}")
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
    """-sum(t log p), for one-hot (or soft) targets (n_samples, n_classes)."""

    name = "categorical_crossentropy"
    _logits_kernel = _k.softmax_cross_entropy_dense

    def prepare_targets(self, y, output_shape, dtype, name="y"):
        y = check_array(y, name, dtype)
        self._check_samples(y, output_shape, name)
        if y.ndim != 2 or y.shape[1] != output_shape[-1]:
            raise ValueError(f"{name} must be one-hot, shape (n_samples, {output_shape[-1]}), for "
                             f"{self.name}; got {y.shape} (use sparse_categorical_crossentropy "
                             f"for integer labels)")
        return y


_REGISTRY = Registry("loss", Loss, (MeanSquaredError, SparseCategoricalCrossentropy, CategoricalCrossentropy),
                     aliases={"mse": "mean_squared_error"})


def names():
    """Names accepted by `get`."""
    return _REGISTRY.names()


def get(identifier):
    """A Loss from a name, a Loss instance or class."""
    return _REGISTRY.get(identifier)
