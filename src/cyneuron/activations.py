"""Activation functions, usable by name in any layer's `activation=` argument.

Each activation maps x to y = f(x) and back-propagates with the forward *output*:
`backward(y, dy)` returns dx = dy * f'(x), written as a closed form of y. Both
methods take C-contiguous float32/float64 arrays and accept `out=` (which may be
the input itself: the kernels run in place).
"""
import numpy as np

from ._kernels import activations as _k
from ._registry import Registry


class Activation:
    """Base class: subclasses set `name` and implement `forward` / `backward`."""

    name = None

    def __call__(self, x):
        x = np.asarray(x)
        dtype = x.dtype if x.dtype in (np.float32, np.float64) else np.float64
        return self.forward(np.ascontiguousarray(x, dtype=dtype))

    def forward(self, x, out=None):
        raise NotImplementedError

    def backward(self, y, dy, out=None):
        raise NotImplementedError

    def get_config(self):
        return {"name": self.name}

    def __repr__(self):
        return f"{type(self).__name__}()"


def _out_like(x, out):
    return np.empty_like(x) if out is None else out


class _Elementwise(Activation):
    """An activation computed by a pair of flat element-wise kernels."""

    _forward_kernel = None
    _backward_kernel = None

    def forward(self, x, out=None):
        out = _out_like(x, out)
        type(self)._forward_kernel(x.reshape(-1), out.reshape(-1))
        return out

    def backward(self, y, dy, out=None):
        out = _out_like(dy, out)
        type(self)._backward_kernel(y.reshape(-1), dy.reshape(-1), out.reshape(-1))
        return out


class Linear(Activation):
    """Identity: y = x."""

    name = "linear"

    def forward(self, x, out=None):
        if out is None or out is x:
            return x
        np.copyto(out, x)
        return out

    def backward(self, y, dy, out=None):
        if out is None or out is dy:
            return dy
        np.copyto(out, dy)
        return out


class Sigmoid(_Elementwise):
    """y = 1 / (1 + e^-x), stable for large |x|."""

    name = "sigmoid"
    _forward_kernel = _k.sigmoid_forward
    _backward_kernel = _k.sigmoid_backward


class Tanh(_Elementwise):
    name = "tanh"
    _forward_kernel = _k.tanh_forward
    _backward_kernel = _k.tanh_backward


class ReLU(_Elementwise):
    """y = max(x, 0); the derivative at 0 is 0."""

    name = "relu"
    _forward_kernel = _k.relu_forward
    _backward_kernel = _k.relu_backward


class Softmax(Activation):
    """Softmax over the last axis."""

    name = "softmax"

    @staticmethod
    def _check_rank(x):
        if x.ndim == 0:
            raise ValueError("softmax needs at least 1-D input (it runs over the last axis)")

    def forward(self, x, out=None):
        self._check_rank(x)
        out = _out_like(x, out)
        if x.size == 0:
            return out
        c = x.shape[-1]
        _k.softmax_forward(x.reshape(-1, c), out.reshape(-1, c))
        return out

    def backward(self, y, dy, out=None):
        self._check_rank(y)
        out = _out_like(dy, out)
        if y.size == 0:
            return out
        c = y.shape[-1]
        _k.softmax_backward(y.reshape(-1, c), dy.reshape(-1, c), out.reshape(-1, c))
        return out


_REGISTRY = Registry("activation", Activation, (Linear, Sigmoid, Tanh, ReLU, Softmax),
                     aliases={"identity": "linear", None: "linear"})


def names():
    """Names accepted by `get`."""
    return _REGISTRY.names()


def get(identifier):
    """An Activation from a name, an Activation instance or class, or None (linear)."""
    return _REGISTRY.get(identifier)


def serialize(activation):
    return activation.name
