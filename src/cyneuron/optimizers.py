"""Optimizers: each step is one fused kernel over the model's flat parameter buffer."""
import numpy as np

from ._kernels import optim as _k
from ._registry import Registry


def _check_flat(params, grads):
    for name, arr in (("params", params), ("grads", grads)):
        if not isinstance(arr, np.ndarray) or arr.ndim != 1 or not arr.flags.c_contiguous \
                or arr.dtype not in (np.float32, np.float64):
            raise TypeError(f"{name} must be a contiguous 1-D float32/float64 array")
    if not params.flags.writeable:
        raise ValueError("params must be writeable")
    if grads.shape != params.shape or grads.dtype != params.dtype:
        raise ValueError(f"grads must match params: params {params.shape} {params.dtype.name}, "
                         f"grads {grads.shape} {grads.dtype.name}")


class Optimizer:
    name = None

    def __init__(self, learning_rate):
        if isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float, np.floating)) \
                or not np.isfinite(learning_rate) or learning_rate <= 0:
            raise ValueError(f"learning_rate must be a positive number, got {learning_rate!r}")
        self.learning_rate = float(learning_rate)
        self.iterations = 0

    def apply_gradients(self, params, grads):
        """Update the flat `params` in place from the flat `grads` (same size and dtype)."""
        _check_flat(params, grads)
        self._apply(params, grads)
        self.iterations += 1

    def _apply(self, params, grads):
        raise NotImplementedError

    def get_config(self):
        return {"name": self.name, "learning_rate": self.learning_rate}


class SGD(Optimizer):
    """Gradient descent, with optional (Nesterov) momentum, as in Keras:
    v = momentum * v - lr * g;  w += v   (Nesterov: w += momentum * v - lr * g)."""

    name = "sgd"

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False):
        super().__init__(learning_rate)
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)
        self._velocity = None

    def _apply(self, params, grads):
        if self.momentum and (self._velocity is None or self._velocity.shape != params.shape
                              or self._velocity.dtype != params.dtype):
            self._velocity = np.zeros_like(params)
        velocity = self._velocity if self.momentum else params[:0]
        _k.sgd_update(params, grads, velocity, self.learning_rate, self.momentum, self.nesterov)

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "nesterov": self.nesterov}


_REGISTRY = Registry("optimizer", Optimizer, (SGD,),
                     aliases=None)


def names():
    """Names accepted by `get`."""
    return _REGISTRY.names()


def get(identifier):
    """An Optimizer from a name (default settings), an instance or class."""
    return _REGISTRY.get(identifier)
