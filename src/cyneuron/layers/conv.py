"""Conv1D and Conv2D on channels-last data: im2col and one GEMM, or Winograd.

im2col: the patch matrix cols (N*OH*OW, KH*KW*C) (cyneuron._kernels.conv.im2col)
times the kernel viewed as (KH*KW*C, F), with the bias and the activation applied
by the GEMM's epilogue while each output tile is still in cache. A 1x1 convolution
with stride 1 needs no patch matrix: the input itself is (N*H*W, C).
Backward: dW = cols^T dZ and dcols = dZ W^T (transposed views, no copies),
db = the column sums of dZ, then col2im scatter-adds dcols onto dx.

Winograd F(4x4, 3x3) (cyneuron._kernels.winograd) for 3x3 stride-1 convolutions
with enough channels: 36 GEMMs of (tiles, C) x (C, F) in the transform domain do
the work of 144 multiplications per 4x4 output block and channel pair in 36, a
quarter of im2col's arithmetic (the transforms cost memory traffic: measured 1.5-1.7x
faster than im2col on one thread for 64 x 14x14x32 -> 64, forward and backward). The input
gradient is the same algorithm run on dZ with the kernel turned by 180 degrees,
and the kernel gradient a sum of transform-domain products over the tiles.

Conv1D runs the same kernels on (N, 1, L, C) views.
"""
from dataclasses import dataclass

from .. import activations, initializers
from .._kernels import conv as _k
from .._kernels import winograd as _wino
from .._kernels.gemm import EPILOGUES, gemm
from .._validation import check_positive
from ._spatial import SpatialLayer, normalize_padding, normalize_tuple, output_size

# Activations the GEMM epilogue applies exactly as cyneuron.activations does.
_FUSED_ACTIVATIONS = ("linear", "relu", "sigmoid", "tanh")
# Winograd pays for its transforms when both channel counts reach this (measured:
# with fewer, the GEMMs in the transform domain are too thin).
WINOGRAD_MIN_CHANNELS = 16
ALGORITHMS = ("auto", "im2col", "winograd")
# Tiles in a chunk of the batch that Winograd transforms, multiplies and transforms back
# in one go (a few MiB of transform-domain data: it stays in cache; measured best at
# 256 on 1 and 2 threads for 14x14x32 -> 64). Each kernel and GEMM of a chunk runs on
# all threads. (Running whole chunks on separate Python worker threads instead, each
# with a one-thread OpenMP pool, measured slower: the main thread's idle OpenMP team
# keeps spinning on the cores the workers need.)
WINOGRAD_CHUNK_TILES = 256


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
        self._slices = {}
        self.algorithm = "auto"

    @property
    def algorithm(self):
        """'auto' (Winograd where it is faster, else im2col), 'im2col' or 'winograd'
        (3x3 kernels with stride and dilation 1 only): how the layer computes."""
        return self._algorithm

    @algorithm.setter
    def algorithm(self, value):
        if value not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}; got {value!r}")
        if value == "winograd" and not self._winograd_shape():
            raise ValueError("algorithm 'winograd' needs a 3x3 kernel with strides and "
                             "dilation_rate 1 (Conv2D)")
        self._algorithm = value

    def _winograd_shape(self):
        return (self.spatial_rank == 2 and self.kernel_size == (3, 3)
                and self.strides == (1, 1) and self.dilation_rate == (1, 1))

    def _use_winograd(self, channels):
        if self._algorithm == "auto":
            return (self._winograd_shape() and channels >= WINOGRAD_MIN_CHANNELS
                    and self.filters >= WINOGRAD_MIN_CHANNELS)
        return self._algorithm == "winograd"

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
        self._winograd = self._use_winograd(x.shape[-1])
        if self._winograd:
            return self._forward_winograd(x)
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

    def _activation_bias_backward(self, grad_output):
        """dZ = the gradient before the activation, as (rows, F); fills the bias gradient."""
        f = self.filters
        db = self._gradients[1] if self.use_bias else None
        y2, dy2 = self._y.reshape(-1, f), grad_output.reshape(-1, f)
        if self._epilogue is None:  # an activation the fused kernel does not know
            dz = self.activation.backward(self._y, grad_output,
                                          out=self._buffer("dz", grad_output.shape))
            dz = dz.reshape(-1, f)
            _k.activation_bias_backward(dz, dz, None, db, EPILOGUES["linear"])
        elif self._epilogue == EPILOGUES["linear"]:
            dz = dy2
            _k.activation_bias_backward(y2, dz, None, db, self._epilogue)
        else:
            dz = self._buffer("dz", y2.shape)
            _k.activation_bias_backward(y2, dy2, dz, db, self._epilogue)
        return dz

    def _backward(self, grad_output, need_input_grad):
        dz = self._activation_bias_backward(grad_output)
        if self._winograd:
            return self._backward_winograd(dz, need_input_grad)
        plan, x, cols = self._plan_used, self._x, self._cols
        n, c, f = x.shape[0], x.shape[-1], self.filters
        rows, depth = cols.shape
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

    # -- Winograd ------------------------------------------------------------------------
    def _domain(self, key, rows, width, spare=1):
        """A (36, rows + spare, width) transform-domain buffer and its 36 (rows, width)
        slices. A spare row keeps the slices of the big data buffers from starting a
        multiple of 4 KiB apart, where the 36 streams of a transform would share a few
        cache sets; kernel buffers (spare=0) are exactly (36, C, F)."""
        buf = self._buffer(key, (36, rows + spare, width))
        cached = self._slices.get(key)
        if cached is None or cached[0] is not buf:
            cached = self._slices[key] = (buf, [buf[k, :rows] for k in range(36)])
        return buf, cached[1]

    @staticmethod
    def _chunks(n, tiles_per_image):
        """(images per chunk, [(first, end), ...]): the batch in chunks of about
        WINOGRAD_CHUNK_TILES tiles, so that a chunk's transform-domain data stays in
        cache between its transform, its 36 GEMMs and the transform back. The chunks do
        not depend on the thread count, and no GEMM splits its sums over threads, so
        the results do not either."""
        step = max(1, WINOGRAD_CHUNK_TILES // tiles_per_image)
        return step, [(n0, min(n, n0 + step)) for n0 in range(0, n, step)]

    @staticmethod
    def _rows(slices, rows):
        return slices if slices[0].shape[0] == rows else [s[:rows] for s in slices]

    def _forward_winograd(self, x):
        plan = self._plan(x.shape[1:])
        n, c, f = x.shape[0], x.shape[-1], self.filters
        (oh, ow), (pt, pl) = plan.out_hw, plan.padding
        th, tw = _wino.tiles(oh), _wino.tiles(ow)
        step, chunks = self._chunks(n, th * tw)
        u, us = self._domain("U", c, f, spare=0)
        _wino.kernel_transform(self._weights[0], u)
        v, vs = self._domain("V", step * th * tw, c)
        m, ms = self._domain("M", step * th * tw, f)
        y = self._buffer("y", (n, oh, ow, f))
        bias = self._weights[1] if self.use_bias else None
        code = self._epilogue if self._epilogue is not None else EPILOGUES["linear"]
        for n0, n1 in chunks:
            rows = (n1 - n0) * th * tw
            _wino.input_transform(x[n0:n1], v, pt, pl, th, tw)
            for a, b, out in zip(self._rows(vs, rows), us, self._rows(ms, rows)):
                gemm(a, b, out)
            _wino.output_transform(m, y[n0:n1], bias, code)
        if self._epilogue is None:
            self.activation.forward(y, out=y)
        self._x, self._y, self._plan_used = x, y, plan
        self._last_output_shape = y.shape
        return y

    def _backward_winograd(self, dz, need_input_grad):
        plan, x = self._plan_used, self._x
        n, (h, w), c, f = x.shape[0], plan.in_hw, x.shape[-1], self.filters
        (oh, ow), (pt, pl) = plan.out_hw, plan.padding
        dz4 = dz.reshape(n, oh, ow, f)
        # kernel gradient: G^T [sum over tiles of V^T (A dZ A^T)] G, V recomputed per chunk
        th, tw = _wino.tiles(oh), _wino.tiles(ow)
        step, chunks = self._chunks(n, th * tw)
        v, vs = self._domain("V", step * th * tw, c)
        q, qs = self._domain("Q", step * th * tw, f)
        du, dus = self._domain("dU", c, f, spare=0)
        for i, (n0, n1) in enumerate(chunks):
            rows = (n1 - n0) * th * tw
            _wino.input_transform(x[n0:n1], v, pt, pl, th, tw)
            _wino.output_grad_transform(dz4[n0:n1], q)
            for a, b, out in zip(self._rows(vs, rows), self._rows(qs, rows), dus):
                gemm(a.T, b, out, accumulate=i > 0)
        _wino.kernel_grad_transform(du, self._gradients[0])
        if not need_input_grad:
            return None
        # input gradient: the correlation of dZ with the kernel turned by 180 degrees
        th, tw = _wino.tiles(h), _wino.tiles(w)
        step, chunks = self._chunks(n, th * tw)
        uf, ufs = self._domain("U_flipped", c, f, spare=0)
        _wino.kernel_transform(self._weights[0], uf, True)
        same_rows = step * th * tw == q.shape[1] - 1
        vd, vds = self._domain("Q" if same_rows else "V_dz", step * th * tw, f)
        md, mds = self._domain("M_dx", step * th * tw, c)
        dx = self._buffer("dx", x.shape)
        for n0, n1 in chunks:
            rows = (n1 - n0) * th * tw
            _wino.input_transform(dz4[n0:n1], vd, 2 - pt, 2 - pl, th, tw)
            for a, b, out in zip(self._rows(vds, rows), ufs, self._rows(mds, rows)):
                gemm(a, b.T, out)
            _wino.output_transform(md, dx[n0:n1])
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
