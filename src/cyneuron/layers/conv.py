"""Conv1D and Conv2D on channels-last data, through im2col and one GEMM.

Forward: the patch matrix cols (N*OH*OW, KH*KW*C) (cyneuron._kernels.conv.im2col)
times the kernel viewed as (KH*KW*C, F), with the bias and the activation applied
by the GEMM's epilogue while each output tile is still in cache. A 1x1 convolution
with stride 1 needs no patch matrix: the input itself is (N*H*W, C).
Backward: dW = cols^T dZ and dcols = dZ W^T (transposed views, no copies),
db = the column sums of dZ, then col2im scatter-adds dcols onto dx.
Conv1D runs the same kernels on (N, 1, L, C) views.
"""
from dataclasses import dataclass

from .. import activations, initializers
from .._kernels import conv as _k
from .._kernels.gemm import EPILOGUES, gemm
from .._validation import check_positive
from ._spatial import SpatialLayer, normalize_padding, normalize_tuple, output_size

# Activations the GEMM epilogue applies exactly as cyneuron.activations does.
_FUSED_ACTIVATIONS = ("linear", "relu", "sigmoid", "tanh")


@dataclass(frozen=True)
class _Plan:
    """The 2-D geometry of one input size (1-D convolutions have height 1)."""

    in_hw: tuple       # (H, W)
    out_hw: tuple      # (OH, OW)
    window: tuple      # (KH, KW)
    strides: tuple
    dilation: tuple
    padding: tuple     # zeros before the first (row, column)
    pointwise: bool    # 1x1 window, stride 1: the input is its own patch matrix

    def args(self):
        return self.window, self.strides, self.dilation, self.padding, self.out_hw


class _Conv(SpatialLayer):
    """Shared by Conv1D and Conv2D; `spatial_rank` says which."""

    _paddings = ("valid", "same")

    def __init__(self, filters, kernel_size, strides=1, padding="valid", dilation_rate=1,
                 activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", name=None, dtype=None):
        super().__init__(name=name, dtype=dtype)
        n = self.spatial_rank
        self.filters = int(check_positive(filters, "filters", integer=True))
        self.kernel_size = normalize_tuple(kernel_size, n, "kernel_size")
        self.strides = normalize_tuple(strides, n, "strides")
        self.padding = normalize_padding(padding, self._paddings)
        self.dilation_rate = normalize_tuple(dilation_rate, n, "dilation_rate")
        self.activation = activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        name = self.activation.name
        self._epilogue = EPILOGUES[name] if name in _FUSED_ACTIVATIONS else None
        self._plans = {}

    # -- geometry ------------------------------------------------------------------------
    def _plan(self, input_shape):
        """The geometry for per-sample `input_shape`, computed once per size."""
        plan = self._plans.get(input_shape)
        if plan is not None:
            return plan
        self._check_rank(input_shape)
        axes = ("steps",) if self.spatial_rank == 1 else ("height", "width")
        out, before = zip(*(output_size(size, k, s, d, self.padding, "kernel_size", axis)
                            for size, k, s, d, axis in zip(input_shape[:-1], self.kernel_size,
                                                           self.strides, self.dilation_rate, axes)))
        pad1 = (0,) * (2 - self.spatial_rank)
        one = (1,) * (2 - self.spatial_rank)
        plan = _Plan(in_hw=one + tuple(input_shape[:-1]), out_hw=one + out,
                     window=one + self.kernel_size, strides=one + self.strides,
                     dilation=one + self.dilation_rate, padding=pad1 + before,
                     pointwise=all(k == 1 for k in self.kernel_size)
                     and all(s == 1 for s in self.strides))
        self._plans[input_shape] = plan
        return plan

    def build(self, input_shape):
        input_shape = tuple(int(d) for d in input_shape)
        self._plan(input_shape)
        channels = input_shape[-1]
        self.add_weight("kernel", self.kernel_size + (channels, self.filters),
                        self.kernel_initializer)
        if self.use_bias:
            self.add_weight("bias", (self.filters,), self.bias_initializer)
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        plan = self._plan(tuple(int(d) for d in input_shape))
        return plan.out_hw[2 - self.spatial_rank:] + (self.filters,)

    @property
    def kernel(self):
        return self._weights[0]

    @property
    def bias(self):
        return self._weights[1] if self.use_bias else None

    # -- running -------------------------------------------------------------------------
    def _forward(self, x, training):
        plan = self._plan(x.shape[1:])
        n, c, f = x.shape[0], x.shape[-1], self.filters
        (h, w), (oh, ow) = plan.in_hw, plan.out_hw
        rows, depth = n * oh * ow, plan.window[0] * plan.window[1] * c
        if plan.pointwise:
            cols = x.reshape(rows, c)
        else:
            cols = self._buffer("cols", (rows, depth))
            _k.im2col(x.reshape(n, h, w, c), cols, *plan.args())
        y = self._buffer("y", (n,) + self.compute_output_shape(x.shape[1:]))
        kernel = self._weights[0].reshape(depth, f)
        bias = self._weights[1] if self.use_bias else None
        if self._epilogue is not None:
            gemm(cols, kernel, y.reshape(rows, f), bias=bias, activation=self._epilogue)
        else:
            gemm(cols, kernel, y.reshape(rows, f), bias=bias)
            self.activation.forward(y, out=y)
        self._x, self._cols, self._y, self._plan_used = x, cols, y, plan
        self._last_output_shape = y.shape
        return y

    def _backward(self, grad_output, need_input_grad):
        plan, x, cols = self._plan_used, self._x, self._cols
        n, c, f = x.shape[0], x.shape[-1], self.filters
        rows, depth = cols.shape
        db = self._gradients[1] if self.use_bias else None
        y2, dy2 = self._y.reshape(rows, f), grad_output.reshape(rows, f)
        if self._epilogue is None:  # an activation the fused kernel does not know
            dz = self.activation.backward(self._y, grad_output,
                                          out=self._buffer("dz", grad_output.shape))
            dz = dz.reshape(rows, f)
            _k.activation_bias_backward(dz, dz, None, db, EPILOGUES["linear"])
        elif self._epilogue == EPILOGUES["linear"]:
            dz = dy2
            _k.activation_bias_backward(y2, dz, None, db, self._epilogue)
        else:
            dz = self._buffer("dz", (rows, f))
            _k.activation_bias_backward(y2, dy2, dz, db, self._epilogue)
        gemm(cols.T, dz, self._gradients[0].reshape(depth, f))
        if not need_input_grad:
            return None
        kernel_t = self._weights[0].reshape(depth, f).T
        dx = self._buffer("dx", x.shape)
        if plan.pointwise:
            gemm(dz, kernel_t, dx.reshape(rows, c))
            return dx
        dcols = self._buffer("dcols", (rows, depth))
        gemm(dz, kernel_t, dcols)
        _k.col2im(dcols, dx.reshape((n,) + plan.in_hw + (c,)), *plan.args())
        return dx

    def get_config(self):
        return {"name": self.name, "filters": self.filters, "kernel_size": self.kernel_size,
                "strides": self.strides, "padding": self.padding,
                "dilation_rate": self.dilation_rate, "activation": self.activation.name,
                "use_bias": self.use_bias}


class Conv2D(_Conv):
    """2-D convolution (cross-correlation, as in Keras) over NHWC images.

    filters: output channels. kernel_size, strides, dilation_rate: an int or a pair
    (rows, columns). padding: 'valid' (no padding) or 'same' (TensorFlow's rule: output
    ceil(size / stride), the extra zero after). Weights: kernel (KH, KW, C_in, filters),
    glorot_uniform; bias (filters,), zeros. Input (N, H, W, C), output (N, OH, OW, filters).
    """

    spatial_rank = 2


class Conv1D(_Conv):
    """1-D convolution over sequences (N, steps, channels).

    kernel_size, strides, dilation_rate: ints. padding: 'valid', 'same', or 'causal'
    (zeros only before the sequence, so output t never sees inputs after t).
    Weights: kernel (K, C_in, filters), bias (filters,).
    """

    spatial_rank = 1
    _paddings = ("valid", "same", "causal")
