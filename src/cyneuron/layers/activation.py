"""Activation layers: a named activation as a layer, and the activations with weights.

Activation(name), LeakyReLU and ELU apply an activation from cyneuron.activations;
PReLU learns its negative slopes; Maxout is a Dense layer of units * pieces outputs
followed by a max over each unit's pieces.
"""
import numbers

import numpy as np

from .. import activations, initializers
from .._kernels import activations as _k
from .._kernels.gemm import gemm
from .._validation import check_positive
from .base import Layer


class Activation(Layer):
    """Applies an activation (a name, class or instance from cyneuron.activations).

    Any per-sample shape; softmax and log_softmax run over the last axis. As the
    last layer with a softmax, it fuses with a cross-entropy loss like Dense does.
    """

    def __init__(self, activation, name=None, dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.activation = activations.get(activation)

    def _forward(self, x, training):
        y = self._buffer("y", x.shape)
        self.activation.forward(x, out=y)
        self._x = x if self.activation.needs_input else None
        self._y = y
        self._last_output_shape = y.shape
        return y

    def _backward(self, grad_output, need_input_grad):
        if not need_input_grad:
            return None
        dx = self._buffer("dx", grad_output.shape)
        return self.activation.backward(self._y, grad_output, out=dx, x=self._x)

    # The fused loss path (models/_graph.py): the logits are this layer's input.
    def _forward_logits(self, x, training=False):
        self._last_output_shape = x.shape
        return x

    def _backward_logits(self, dz, need_input_grad=True):
        return dz if need_input_grad else None

    def get_config(self):
        return {"name": self.name, "activation": activations.serialize(self.activation)}


class LeakyReLU(Activation):
    """x for x > 0, negative_slope * x otherwise; negative_slope >= 0 (Keras default 0.3)."""

    def __init__(self, negative_slope=0.3, name=None, dtype=None):
        super().__init__(activations.LeakyReLU(negative_slope), name=name, dtype=dtype)

    @property
    def negative_slope(self):
        return self.activation.negative_slope

    def get_config(self):
        return {"name": self.name, "negative_slope": self.negative_slope}


class ELU(Activation):
    """x for x > 0, alpha * (e^x - 1) otherwise; alpha >= 0 (default 1.0)."""

    def __init__(self, alpha=1.0, name=None, dtype=None):
        super().__init__(activations.ELU(alpha), name=name, dtype=dtype)

    @property
    def alpha(self):
        return self.activation.alpha

    def get_config(self):
        return {"name": self.name, "alpha": self.alpha}


class PReLU(Layer):
    """Parametric ReLU: x for x > 0, alpha * x otherwise, with alpha learned.

    alpha has the per-sample input shape (Keras), with size 1 along `shared_axes`
    (axes of the full input, counting the batch axis as 0: for (batch, h, w, c)
    data, shared_axes=[1, 2] learns one slope per channel). alpha_initializer:
    Keras's default "zeros" (the layer starts as a ReLU).
    """
    _regularizable = {"alpha": ("alpha",)}

    def __init__(self, alpha_initializer="zeros", shared_axes=None, name=None, dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.alpha_initializer = initializers.get(alpha_initializer)
        if shared_axes is None:
            shared_axes = ()
        elif isinstance(shared_axes, numbers.Integral):
            shared_axes = (shared_axes,)
        try:
            axes = tuple(shared_axes)
        except TypeError:
            raise ValueError(f"shared_axes must be an axis or a list of axes, "
                             f"got {shared_axes!r}") from None
        for axis in axes:
            if isinstance(axis, bool) or not isinstance(axis, numbers.Integral) or axis < 1:
                raise ValueError(f"shared_axes must hold axes >= 1 (axis 0 is the batch), "
                                 f"got {shared_axes!r}")
        self.shared_axes = tuple(sorted({int(a) for a in axes}))

    def build(self, input_shape):
        rank = len(input_shape)
        bad = [a for a in self.shared_axes if a > rank]
        if bad:
            raise ValueError(f"PReLU {self.name!r}: shared_axes {list(self.shared_axes)} do not "
                             f"exist for inputs (batch, {', '.join(map(str, input_shape))})")
        shape = [int(d) for d in input_shape]
        for axis in self.shared_axes:
            shape[axis - 1] = 1
        self.add_weight("alpha", tuple(shape), self.alpha_initializer)
        super().build(input_shape)

    @property
    def alpha(self):
        return self._weights[0]

    def _full_alpha(self):
        """alpha broadcast over the shared axes, flat (a view when nothing is shared)."""
        if not self.shared_axes:
            return self._weights[0].reshape(-1)
        return np.ascontiguousarray(np.broadcast_to(self._weights[0], self.input_shape)).reshape(-1)

    def _forward(self, x, training):
        n = x.shape[0]
        y = self._buffer("y", x.shape)
        self._alpha_full = self._full_alpha()
        _k.prelu_forward(x.reshape(n, -1), self._alpha_full, y.reshape(n, -1))
        self._x = x
        self._last_output_shape = y.shape
        return y

    def _backward(self, grad_output, need_input_grad):
        n = grad_output.shape[0]
        dx = self._buffer("dx", grad_output.shape)
        grad = self._gradients[0]
        dalpha = grad.reshape(-1) if not self.shared_axes else \
            self._buffer("dalpha", (self._alpha_full.size,))
        _k.prelu_backward(self._x.reshape(n, -1), self._alpha_full, grad_output.reshape(n, -1),
                          dx.reshape(n, -1), dalpha)
        if self.shared_axes:
            axes = tuple(a - 1 for a in self.shared_axes)
            grad[...] = dalpha.reshape(self.input_shape).sum(axis=axes, keepdims=True)
        return dx if need_input_grad else None

    def get_config(self):
        return {"name": self.name, "shared_axes": list(self.shared_axes) or None}


class Maxout(Layer):
    """Maxout (Goodfellow et al., 2013): y[:, u] = max_p (x @ kernel + bias)[:, u * pieces + p].

    units: outputs; pieces: linear pieces per output (>= 1). Weights as a Dense
    layer of units * pieces outputs: kernel (in_features, units * pieces), glorot_uniform,
    bias (units * pieces,), zeros; the pieces of unit u are columns u*pieces ... u*pieces+pieces-1.
    """
    _regularizable = {"kernel": ("kernel",), "bias": ("bias",)}

    def __init__(self, units, pieces, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", name=None, dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.units = int(check_positive(units, "units", integer=True))
        self.pieces = int(check_positive(pieces, "pieces", integer=True))
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)

    def build(self, input_shape):
        if len(input_shape) != 1:
            raise ValueError(f"Maxout {self.name!r} expects 2-D input x (batch, features); "
                             f"got per-sample shape {tuple(input_shape)}")
        width = self.units * self.pieces
        self.add_weight("kernel", (int(input_shape[0]), width), self.kernel_initializer)
        if self.use_bias:
            self.add_weight("bias", (width,), self.bias_initializer)
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        return (self.units,)

    @property
    def kernel(self):
        return self._weights[0]

    @property
    def bias(self):
        return self._weights[1] if self.use_bias else None

    def _forward(self, x, training):
        n = x.shape[0]
        z = self._buffer("z", (n, self.units * self.pieces))
        gemm(x, self._weights[0], z, self._weights[1] if self.use_bias else None)
        y = self._buffer("y", (n, self.units))
        argmax = getattr(self, "_argmax", None)
        if argmax is None or argmax.shape != y.shape:
            argmax = self._argmax = np.empty(y.shape, np.intc)
        _k.maxout_forward(z, y, argmax)
        self._x = x
        self._last_output_shape = y.shape
        return y

    def _backward(self, grad_output, need_input_grad):
        dz = self._buffer("dz", (grad_output.shape[0], self.units * self.pieces))
        _k.maxout_backward(grad_output, self._argmax, dz)
        gemm(self._x.T, dz, self._gradients[0], b_sums=self._gradients[1] if self.use_bias else None)
        if not need_input_grad:
            return None
        dx = self._buffer("dx", self._x.shape)
        gemm(dz, self._weights[0].T, dx)
        return dx

    def get_config(self):
        return {"name": self.name, "units": self.units, "pieces": self.pieces,
                "use_bias": self.use_bias}
