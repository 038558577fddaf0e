"""Dense: y = activation(x @ kernel + bias), kernel (in, units), bias (units,).

On inputs of any rank >= 2, (batch, ..., features), the kernel applies to the last
axis (as in Keras): the leading axes are flattened into the rows of ONE GEMM on
reshaped views (no copies), so a (batch, time, features) input costs one product of
(batch * time) rows, with the same fused epilogues as a 2-D input.
"""
import numpy as np

from .. import activations, initializers
from .._config import fusion_enabled
from .._kernels.gemm import GRAD_EPILOGUES, gemm
from ..ops import epilogue_of
from .._validation import check_numeric, check_positive
from .base import Layer


class Dense(Layer):
    """A fully connected layer.

    units: output size. activation: a name from cyneuron.activations (default linear).
    Weights follow Keras: kernel (in_features, units), glorot_uniform; bias zeros.
    Input (batch, ..., in_features), output (batch, ..., units); a built layer takes any
    sizes of the middle axes (Keras checks only the last one).
    """
    _regularizable = {"kernel": ("kernel",), "bias": ("bias",)}

    def __init__(self, units, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", name=None, dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.units = int(check_positive(units, "units", integer=True))
        self.activation = activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)

    def build(self, input_shape):
        if len(input_shape) < 1:
            raise ValueError(f"Dense {self.name!r} expects input x of at least 2-D "
                             f"(batch, ..., features); got per-sample shape {tuple(input_shape)}")
        self.add_weight("kernel", (int(input_shape[-1]), self.units), self.kernel_initializer)
        if self.use_bias:
            self.add_weight("bias", (self.units,), self.bias_initializer)
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        return tuple(int(d) for d in input_shape[:-1]) + (self.units,)

    def _accepts_input_shape(self, input_shape):
        return len(input_shape) >= 1 and int(input_shape[-1]) == self._weights[0].shape[0]

    def _check_input(self, x):
        if not self.built:
            return super()._check_input(x)
        x = check_numeric(x, "x")
        features = self._weights[0].shape[0]
        if x.ndim < 2 or x.shape[-1] != features:
            raise ValueError(f"layer {self.name!r} was built for inputs (batch, ..., {features}) "
                             f"with {features} features on the last axis; got x of shape "
                             f"{x.shape}")
        if x.size == 0:
            raise ValueError(f"layer {self.name!r}: x is empty (shape {x.shape})")
        return np.ascontiguousarray(x, dtype=self.dtype)

    @property
    def kernel(self):
        return self._weights[0]

    @property
    def bias(self):
        return self._weights[1] if self.use_bias else None

    def _forward(self, x, training):
        if self.activation.needs_input:   # backward reads z: keep it, y in its own buffer
            z = self._forward_logits(x, training)
            self._y = self.activation.forward(z, out=self._buffer("y", z.shape))
            return self._y
        # Backward reads y only: the GEMM's epilogue adds the bias and applies the
        # activation tile by tile (non-element-wise ones, like softmax, run after it).
        fused = self._epilogue
        if fused is None:
            y = self._forward_logits(x, training)
            if self.activation.name != "linear":
                self.activation.forward(y, out=y)
        else:
            y = self._gemm_into_z(x, fused)
        self._y = y
        return y

    def _forward_logits(self, x, training=False):
        """x @ kernel + bias, before the activation (the fused-loss path stops here)."""
        return self._gemm_into_z(x, (0, 0.0) if fusion_enabled() else None)

    def _gemm_into_z(self, x, epilogue):
        z = self._buffer("z", x.shape[:-1] + (self.units,))
        x2, z2 = (x, z) if x.ndim == 2 else (x.reshape(-1, x.shape[-1]),   # views: one GEMM
                                             z.reshape(-1, self.units))
        bias = self._weights[1] if self.use_bias else None
        if epilogue is None:     # the plain path: a separate bias pass
            gemm(x2, self._weights[0], z2)
            if bias is not None:
                z2 += bias
        else:
            gemm(x2, self._weights[0], z2, bias, *epilogue)
        self._x = x2             # the rows of x, as the weight-gradient GEMM reads them
        self._x_shape = x.shape
        self._y = z
        self._last_output_shape = z.shape
        return z

    @property
    def _epilogue(self):
        """(code, alpha) of the GEMM epilogue for this layer's activation, or None (kept
        while the activation and the fusion switch stay: asked several times a step)."""
        fusion, activation = fusion_enabled(), self.activation
        cached = self.__dict__.get("_epilogue_of")
        if cached is None or cached[0] is not activation or cached[1] != fusion:
            cached = self._epilogue_of = (activation, fusion,
                                          epilogue_of(activation) if fusion else None)
        return cached[2]

    # The model may hand this layer's input-gradient GEMM the previous layer's
    # activation derivative (see _grad_epilogue), so that pass happens in its epilogue.
    _fuses_input_grad = True

    def _grad_epilogue(self):
        """(code, alpha, y) with which the next layer's input-gradient GEMM can apply this
        layer's activation derivative (taken from the output y) in its epilogue, or None."""
        epilogue = self._epilogue
        if (epilogue is None or epilogue[0] == 0 or epilogue[0] not in GRAD_EPILOGUES
                or self.activation.needs_input):
            return None
        return epilogue[0], epilogue[1], self._y

    def _backward(self, grad_output, need_input_grad, into=None, grad_is_dz=False):
        """grad_is_dz: the next layer already applied this activation's derivative."""
        dz = grad_output
        if self.activation.name != "linear" and not grad_is_dz:
            z = self._buffers["z"] if self.activation.needs_input else None
            dz = self.activation.backward(self._y, grad_output, out=self._buffer("dz", dz.shape),
                                          x=z)
        return self._backward_logits(dz, need_input_grad, into)

    def _backward_logits(self, dz, need_input_grad=True, into=None):
        """Gradients from d(loss)/d(x @ kernel + bias): dW = x^T dz, db = sum(dz), dx = dz W^T
        (times the previous layer's activation derivative when `into` = (code, alpha, y)).
        N-D dz and y are read as their (rows, features) views."""
        if dz.ndim != 2:
            dz = dz.reshape(-1, self.units)
        if fusion_enabled():     # db = column sums of dz, in the same pass as dW
            gemm(self._x.T, dz, self._gradients[0],
                 b_sums=self._gradients[1] if self.use_bias else None)
        else:
            gemm(self._x.T, dz, self._gradients[0])
            if self.use_bias:
                dz.sum(axis=0, out=self._gradients[1])
        if not need_input_grad:
            return None
        dx = self._buffer("dx", self._x_shape)
        dx2 = dx if dx.ndim == 2 else dx.reshape(self._x.shape)
        if into is None:
            gemm(dz, self._weights[0].T, dx2)
        else:
            gemm(dz, self._weights[0].T, dx2, None, into[0], into[1],
                 act_out=into[2].reshape(dx2.shape))
        return dx

    def get_config(self):
        return {"name": self.name, "units": self.units,
                "activation": activations.serialize(self.activation), "use_bias": self.use_bias}
