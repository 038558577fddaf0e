"""Conv1D and Conv2D on channels-last data: im2col and one GEMM, or Winograd.

im2col: the patch matrix cols (N*OH*OW, KH*KW*C) (cyneuron._kernels.conv.im2col)
times the kernel viewed as (KH*KW*C, F), with the bias and the activation applied
by the GEMM's epilogue while each output tile is still in cache. A 1x1 convolution
with stride 1 needs no patch matrix: the input itself is (N*H*W, C).
Backward: dW = cols^T dZ and dcols = dZ W^T (transposed views, no copies),
db = the column sums of dZ, then col2im scatter-adds dcols onto dx.

With more patch values than filters (KH*KW*C > F: a strided 4x4 convolution of 32
channels has 512 per patch), the patch matrix is megabytes that one pass writes and the
next reads back from memory. Then no whole patch matrix is made: im2col_gemm (training
forward, bias and linear / relu / leaky_relu per chunk), im2col_gemm_tn (dW^T = dZ^T cols) and
col2im_gemm (dx) make the patches a few images at a time in a per-thread block that
stays in cache beside a serial GEMM (measured in a DCGAN step, one thread: the strided
discriminator convolution 16.0 -> 8.5 ms forward + backward, together with the leaky_relu
fusion and the skipped gradients below).

Winograd F(4x4, 3x3) (cyneuron._kernels.winograd) for 3x3 stride-1 convolutions
with enough channels: 36 GEMMs of (tiles, C) x (C, F) in the transform domain do
the work of 144 multiplications per 4x4 output block and channel pair in 36, a
quarter of im2col's arithmetic (the transforms cost memory traffic: measured 1.5-1.7x
faster than im2col on one thread for 64 x 14x14x32 -> 64, forward and backward). The input
gradient is the same algorithm run on dZ with the kernel turned by 180 degrees,
and the kernel gradient a sum of transform-domain products over the tiles.

Conv1D runs the same kernels on (N, 1, L, C) views. Conv2DTranspose runs them the
other way round: its forward pass is Conv2D's input gradient (GEMM, then col2im).

Model.backward(weight_grads=False) (a GAN's generator step through the discriminator)
sets `_skip_weight_grads`: these layers then skip their kernel and bias gradients.
"""
import numbers
from dataclasses import dataclass

import numpy as np

from .. import activations, initializers
from .._kernels import conv as _k
from .._kernels import winograd as _wino
from .._kernels.gemm import EPILOGUES, gemm, gemm_batch
from .._validation import check_positive
from ._spatial import SpatialLayer, normalize_padding, normalize_tuple, output_size

# Activations the GEMM epilogue applies exactly as cyneuron.activations does, and whose
# derivative activation_bias_backward takes from the output (Winograd's output transform
# applies the first four; leaky_relu and elu run after it there).
_FUSED_ACTIVATIONS = ("linear", "relu", "sigmoid", "tanh", "leaky_relu", "elu")
_WINOGRAD_ACTIVATIONS = ("linear", "relu", "sigmoid", "tanh")
# ... of which these run through the fused kernel (conv_k.winograd_conv_pool: each thread
# takes whole chunks of tiles through both transforms and the 36 products by the serial
# GEMM, in its own cache; transforms held in registers, with FMAs). The input gradient
# always does (linear). bench resnet's 64 x 28 x 28 x 32 -> 32 with relu, 2 threads, Intel
# Xeon: forward 4.09 -> 2.01 ms.
_WINOGRAD_FUSED_EPILOGUES = (EPILOGUES["linear"], EPILOGUES["relu"])
# Epilogues the chunked forward pass (im2col_gemm) applies itself.
_CHUNKED_EPILOGUES = (EPILOGUES["linear"], EPILOGUES["relu"], EPILOGUES["leaky_relu"])


def _epilogue_alpha(activation):
    """leaky_relu's slope or elu's alpha (0 for the others): the epilogue's parameter."""
    return float(getattr(activation, "negative_slope", getattr(activation, "alpha", 0.0)))


# Winograd pays for its transforms when both channel counts reach this (measured:
# with fewer, the GEMMs in the transform domain are too thin).
WINOGRAD_MIN_CHANNELS = 16
ALGORITHMS = ("auto", "im2col", "winograd")
# Tiles in a chunk of the batch that Winograd transforms, multiplies and transforms back
# in one go (a few MiB of transform-domain data: it stays in cache; measured best at
# 256 on 1 and 2 threads for 14x14x32 -> 64). Each transform of a chunk runs on all
# threads, its 36 products in one gemm_batch call (the threads taking 18 each; one gemm
# call apiece from Python cost more than the products: bench resnet's training step,
# 2 threads, Intel Xeon, 89.5 -> 71 ms; 256 tiles still best there, 69.0 ms against
# 72.4 / 70.9 / 76.0 for 128 / 512 / 1024). (Running whole chunks on separate Python
# worker threads instead, each with a one-thread OpenMP pool, measured slower: the main
# thread's idle OpenMP team keeps spinning on the cores the workers need.)
WINOGRAD_CHUNK_TILES = 256


def _weight_grad(layer, cols, dz, out):
    """out (depth, F) = cols^T dz, the kernel gradient of an im2col convolution. With
    more patch values than filters it is computed as (dz^T cols)^T, dz^T copied to a
    contiguous array first: the GEMM then runs along the wide depth axis and reads its
    A operand in place (measured 1.7x faster than cols^T dz for 6272 x 512 patches and
    64 filters); the two transposed copies are small next to cols."""
    depth, f = out.shape
    if depth <= f:
        gemm(cols.T, dz, out)
        return
    out_t = layer._buffer("dkernel_t", (f, depth))
    gemm(_contiguous_copy(layer, "dz_t", dz.T), cols, out_t)
    out[...] = out_t.T


def _contiguous_copy(layer, key, view):
    """view copied into the layer's buffer `key` (the fused kernels take a contiguous
    transposed kernel; a copy of the kernel costs little next to the convolution)."""
    buf = layer._buffer(key, view.shape)
    np.copyto(buf, view)
    return buf


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
    _regularizable = {"kernel": ("kernel",), "bias": ("bias",)}

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
        self._alpha = _epilogue_alpha(self.activation)
        self._plans = {}
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
        if (training and not plan.pointwise and depth > f
                and self._epilogue in _CHUNKED_EPILOGUES):
            return self._forward_chunked(x, plan)
        if plan.pointwise:
            cols = x.reshape(rows, c)
        else:
            cols = self._buffer("cols", (rows, depth))
            _k.im2col(x.reshape(n, h, w, c), cols, *plan.args())
        y = self._buffer("y", (n,) + self.compute_output_shape(x.shape[1:]))
        kernel = self._weights[0].reshape(depth, f)
        bias = self._weights[1] if self.use_bias else None
        if self._epilogue is not None:
            gemm(cols, kernel, y.reshape(rows, f), bias=bias, activation=self._epilogue,
                 alpha=self._alpha)
        else:
            gemm(cols, kernel, y.reshape(rows, f), bias=bias)
            y = self._activate(y)
        self._x, self._cols, self._y, self._plan_used = x, cols, y, plan
        self._last_output_shape = y.shape
        return y

    def _forward_chunked(self, x, plan):
        """Training: im2col and GEMM a few images at a time in cache (im2col_gemm), bias
        and activation on each chunk's rows; no patch matrix is kept: the backward pass
        makes the patches again for the kernel gradient (depth > filters). Inference
        keeps the one-GEMM path, parallel within the GEMM even for one image."""
        n, c, f = x.shape[0], x.shape[-1], self.filters
        depth = plan.window[0] * plan.window[1] * c
        y = self._buffer("y", (n,) + self.compute_output_shape(x.shape[1:]))
        _k.im2col_gemm(x.reshape((n,) + plan.in_hw + (c,)), self._weights[0].reshape(depth, f),
                       y.reshape(-1, f), *plan.args(),
                       bias=self._weights[1] if self.use_bias else None,
                       activation=self._epilogue, alpha=self._alpha)
        self._x, self._cols, self._y, self._plan_used = x, None, y, plan
        self._last_output_shape = y.shape
        return y

    def _activate(self, z):
        """The activation the GEMM epilogue does not apply, on z (bias added): in place,
        or into a buffer of its own when its backward needs z (gelu, swish, hard_swish...)."""
        if not self.activation.needs_input:
            return self.activation.forward(z, out=z)
        self._z = z
        return self.activation.forward(z, out=self._buffer("y_act", z.shape))

    def _activation_bias_backward(self, grad_output):
        """dZ = the gradient before the activation, as (rows, F); fills the bias gradient."""
        f = self.filters
        db = self._gradients[1] if self.use_bias and not self._skip_weight_grads else None
        y2, dy2 = self._y.reshape(-1, f), grad_output.reshape(-1, f)
        if self._epilogue is None:  # an activation the fused kernel does not know
            dz = self.activation.backward(self._y, grad_output,
                                          out=self._buffer("dz", grad_output.shape),
                                          x=self._z if self.activation.needs_input else None)
            dz = dz.reshape(-1, f)
            _k.activation_bias_backward(dz, dz, None, db, EPILOGUES["linear"])
        elif self._epilogue == EPILOGUES["linear"]:
            dz = dy2
            _k.activation_bias_backward(y2, dz, None, db, self._epilogue)
        else:
            dz = self._buffer("dz", y2.shape)
            _k.activation_bias_backward(y2, dy2, dz, db, self._epilogue, self._alpha)
        return dz

    def _backward(self, grad_output, need_input_grad):
        dz = self._activation_bias_backward(grad_output)
        if self._winograd:
            return self._backward_winograd(dz, need_input_grad)
        plan, x, cols = self._plan_used, self._x, self._cols
        n, c, f = x.shape[0], x.shape[-1], self.filters
        rows, depth = dz.shape[0], plan.window[0] * plan.window[1] * c
        if self._skip_weight_grads:
            pass
        elif plan.pointwise or depth <= f:
            _weight_grad(self, cols, dz, self._gradients[0].reshape(depth, f))
        else:   # (dz^T cols)^T, the patches made again a few images at a time in cache
            out_t = self._buffer("dkernel_t", (f, depth))
            _k.im2col_gemm_tn(x.reshape((n,) + plan.in_hw + (c,)), dz, out_t, *plan.args())
            self._gradients[0].reshape(depth, f)[...] = out_t.T
        if not need_input_grad:
            return None
        kernel_t = self._weights[0].reshape(depth, f).T
        dx = self._buffer("dx", x.shape)
        if plan.pointwise:
            gemm(dz, kernel_t, dx.reshape(rows, c))
            return dx
        _k.col2im_gemm(dz, _contiguous_copy(self, "kernel_t", kernel_t),
                       dx.reshape((n,) + plan.in_hw + (c,)), *plan.args())
        return dx

    # -- Winograd ------------------------------------------------------------------------
    def _domain(self, key, rows, width, spare=1):
        """A (36, rows + spare, width) transform-domain buffer: 36 slices of (rows, width)
        (and a spare row each, which keeps the slices of the big data buffers from
        starting a multiple of 4 KiB apart, where the 36 streams of a transform would
        share a few cache sets); kernel buffers (spare=0) are exactly (36, C, F)."""
        return self._buffer(key, (36, rows + spare, width))

    @staticmethod
    def _chunks(n, tiles_per_image):
        """(images per chunk, [(first, end), ...]): the batch in chunks of about
        WINOGRAD_CHUNK_TILES tiles, so that a chunk's transform-domain data stays in
        cache between its transform, its 36 GEMMs and the transform back. The chunks do
        not depend on the thread count, and no GEMM splits its sums over threads, so
        the results do not either."""
        step = max(1, WINOGRAD_CHUNK_TILES // tiles_per_image)
        return step, [(n0, min(n, n0 + step)) for n0 in range(0, n, step)]

    def _forward_winograd(self, x):
        plan = self._plan(x.shape[1:])
        n, c, f = x.shape[0], x.shape[-1], self.filters
        (oh, ow), (pt, pl) = plan.out_hw, plan.padding
        y = self._buffer("y", (n, oh, ow, f))
        bias = self._weights[1] if self.use_bias else None
        if self._epilogue in _WINOGRAD_FUSED_EPILOGUES:   # one kernel call, see above
            _k.winograd_conv_pool(x, self._weights[0], bias, y, (pt, pl), (oh, ow), (1, 1),
                                  False, int(self._epilogue), self._alpha)
        else:
            y = self._winograd_chunks(x, y, bias, pt, pl)
        self._x, self._y, self._plan_used = x, y, plan
        self._last_output_shape = y.shape
        return y

    def _winograd_chunks(self, x, y, bias, pt, pl):
        """act(conv(x) + bias) into y through the layer's own transforms, a chunk of
        tiles at a time, for the activations the fused kernel does not apply."""
        n, (oh, ow), c, f = x.shape[0], y.shape[1:3], x.shape[-1], self.filters
        th, tw = _wino.tiles(oh), _wino.tiles(ow)
        step, chunks = self._chunks(n, th * tw)
        u = self._domain("U", c, f, spare=0)
        _wino.kernel_transform(self._weights[0], u)
        v = self._domain("V", step * th * tw, c)
        m = self._domain("M", step * th * tw, f)
        fused = self.activation.name in _WINOGRAD_ACTIVATIONS
        code = self._epilogue if fused else EPILOGUES["linear"]
        for n0, n1 in chunks:
            rows = (n1 - n0) * th * tw
            _wino.input_transform(x[n0:n1], v, pt, pl, th, tw)
            gemm_batch(v[:, :rows], u, m[:, :rows])
            _wino.output_transform(m, y[n0:n1], bias, code)
        return y if fused else self._activate(y)

    def _backward_winograd(self, dz, need_input_grad):
        plan, x = self._plan_used, self._x
        n, (h, w), c, f = x.shape[0], plan.in_hw, x.shape[-1], self.filters
        (oh, ow), (pt, pl) = plan.out_hw, plan.padding
        dz4 = dz.reshape(n, oh, ow, f)
        if not self._skip_weight_grads:
            self._winograd_kernel_grad(x, dz4)
        if not need_input_grad:
            return None
        # input gradient: the correlation of dZ with the kernel turned by 180 degrees
        # (and its channel axes swapped), in one call of the fused kernel
        dx = self._buffer("dx", x.shape)
        flipped = self._buffer("kernel_flipped", (3, 3, f, c))
        np.copyto(flipped, self._weights[0][::-1, ::-1].transpose(0, 1, 3, 2))
        _k.winograd_conv_pool(dz4, flipped, None, dx, (2 - pt, 2 - pl), (h, w), (1, 1), False,
                              int(EPILOGUES["linear"]))
        return dx

    def _winograd_kernel_grad(self, x, dz4):
        """G^T [sum over tiles of V^T (A dZ A^T)] G, V recomputed per chunk."""
        plan, n, c, f = self._plan_used, x.shape[0], x.shape[-1], self.filters
        (oh, ow), (pt, pl) = plan.out_hw, plan.padding
        th, tw = _wino.tiles(oh), _wino.tiles(ow)
        step, chunks = self._chunks(n, th * tw)
        v = self._domain("V", step * th * tw, c)
        q = self._domain("Q", step * th * tw, f)
        du = self._domain("dU", c, f, spare=0)
        for i, (n0, n1) in enumerate(chunks):
            rows = (n1 - n0) * th * tw
            _k.winograd_input(x[n0:n1], v, (pt, pl), (oh, ow))
            _wino.output_grad_transform(dz4[n0:n1], q)
            gemm_batch(v[:, :rows].transpose(0, 2, 1), q[:, :rows], du, accumulate=i > 0)
        _wino.kernel_grad_transform(du, self._gradients[0])

    def get_config(self):
        return {"name": self.name, "filters": self.filters, "kernel_size": self.kernel_size,
                "strides": self.strides, "padding": self.padding,
                "dilation_rate": self.dilation_rate,
                "activation": activations.serialize(self.activation),
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


def transpose_output_size(size, kernel, stride, dilation, padding, output_padding):
    """(output positions, crop before) of a transposed convolution along one axis, by
    Keras 3's rules. The full transposed convolution scatters input i, tap t onto
    position i*stride + t*dilation, (size - 1)*stride + span positions in all; the
    output keeps positions [crop, crop + out) of it (beyond its end: zeros).

        valid: out = (size - 1)*stride + span + output_padding, crop 0; output_padding
               None means max(span, stride) - span
        same:  out = size*stride (output_padding None), else
               (size - 1)*stride + span % 2 + output_padding; the padding Keras removes
               is split with the larger half before (at most span - 1)
    """
    span = (kernel - 1) * dilation + 1
    if padding == "valid":
        extra = max(span, stride) - span if output_padding is None else output_padding
        return (size - 1) * stride + span + extra, 0
    if output_padding is None:
        out, pad = size * stride, stride + span - 2
    else:
        out, pad = (size - 1) * stride + span % 2 + output_padding, \
            span + span % 2 - 2 + output_padding
    left = min(pad // 2 + pad % 2, span - 1)       # Keras's left padding of the JAX form
    return out, span - 1 - left


class Conv2DTranspose(SpatialLayer):
    """Transposed 2-D convolution ("deconvolution"), the adjoint of Conv2D: each input
    pixel scatters kernel-weighted copies onto a stride-spaced output grid.

    filters: output channels. kernel_size, strides, dilation_rate: an int or a pair
    (strides > 1 with dilation_rate > 1 is refused, as in Keras). padding: 'valid' or
    'same'; output_padding: None, an int or a pair, each < its stride (extra rows and
    columns at the end). Output sizes follow Keras 3 (see transpose_output_size);
    'same' with output_padding=None gives size * stride. Weights as Keras: kernel
    (KH, KW, filters, C_in), glorot_uniform; bias (filters,), zeros. Input (N, H, W, C_in),
    output (N, OH, OW, filters).

    Computed as Conv2D's input gradient: cols = x (N*H*W, C_in) times the kernel viewed
    as (KH*KW*filters, C_in) transposed, col2im scatter-adding cols onto the output
    (Conv2D's geometry with the roles of input and output swapped), a few images at a
    time (col2im_gemm). Backward: the patches dcols of dZ, dW = dcols^T x and
    dx = dcols W, also a few images at a time (im2col_gemm_tn, im2col_gemm).
    """
    _regularizable = {"kernel": ("kernel",), "bias": ("bias",)}

    spatial_rank = 2

    def __init__(self, filters, kernel_size, strides=1, padding="valid", output_padding=None,
                 dilation_rate=1, activation=None, use_bias=True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros", name=None,
                 dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.filters = int(check_positive(filters, "filters", integer=True))
        self.kernel_size = normalize_tuple(kernel_size, 2, "kernel_size")
        self.strides = normalize_tuple(strides, 2, "strides")
        self.padding = normalize_padding(padding)
        self.dilation_rate = normalize_tuple(dilation_rate, 2, "dilation_rate")
        if max(self.strides) > 1 and max(self.dilation_rate) > 1:
            raise ValueError(f"strides > 1 is not supported with dilation_rate > 1 (as in "
                             f"Keras); got strides={self.strides}, "
                             f"dilation_rate={self.dilation_rate}")
        if output_padding is not None:
            pads = (output_padding,) * 2 if isinstance(output_padding, numbers.Integral) \
                else output_padding
            try:
                pads = tuple(pads)
            except TypeError:
                pads = ()
            if len(pads) != 2 or not all(isinstance(p, numbers.Integral)
                                         and not isinstance(p, bool) and p >= 0 for p in pads):
                raise ValueError(f"output_padding must be None, a non-negative int or a pair "
                                 f"of them; got {output_padding!r}")
            output_padding = tuple(int(p) for p in pads)
            if any(p >= s for p, s in zip(output_padding, self.strides)):
                raise ValueError(f"output_padding must be < strides; got "
                                 f"output_padding={output_padding}, strides={self.strides}")
        self.output_padding = output_padding
        self.activation = activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        name = self.activation.name
        self._epilogue = EPILOGUES[name] if name in _FUSED_ACTIVATIONS else None
        self._alpha = _epilogue_alpha(self.activation)
        self._plans = {}

    def _plan(self, input_shape):
        """((OH, OW), (crop top, crop left)) for per-sample `input_shape`, once per size."""
        plan = self._plans.get(input_shape)
        if plan is not None:
            return plan
        self._check_rank(input_shape)
        pads = self.output_padding or (None, None)
        out, crop = zip(*(transpose_output_size(size, k, s, d, self.padding, p)
                          for size, k, s, d, p in zip(input_shape[:2], self.kernel_size,
                                                      self.strides, self.dilation_rate, pads)))
        if min(out) < 1:
            raise ValueError(f"Conv2DTranspose {self.name!r}: inputs of per-sample shape "
                             f"{tuple(input_shape)} give an empty output {out}; use a larger "
                             f"output_padding or kernel_size")
        plan = self._plans[input_shape] = (out, crop)
        return plan

    def build(self, input_shape):
        input_shape = tuple(int(d) for d in input_shape)
        self._plan(input_shape)
        self.add_weight("kernel", self.kernel_size + (self.filters, input_shape[-1]),
                        self.kernel_initializer)
        if self.use_bias:
            self.add_weight("bias", (self.filters,), self.bias_initializer)
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        (oh, ow), _ = self._plan(tuple(int(d) for d in input_shape))
        return (oh, ow, self.filters)

    @property
    def kernel(self):
        return self._weights[0]

    @property
    def bias(self):
        return self._weights[1] if self.use_bias else None

    _activate = _Conv._activate

    def _geometry(self, h, w, crop):
        """col2im / im2col arguments: the output plays Conv2D's input, x its output."""
        return self.kernel_size, self.strides, self.dilation_rate, crop, (h, w)

    def _forward(self, x, training):
        n, h, w, c = x.shape
        (oh, ow), crop = self._plan(x.shape[1:])
        f = self.filters
        depth = self.kernel_size[0] * self.kernel_size[1] * f
        y = self._buffer("y", (n, oh, ow, f))
        kernel_t = _contiguous_copy(self, "kernel_t", self._weights[0].reshape(depth, c).T)
        _k.col2im_gemm(x.reshape(n * h * w, c), kernel_t, y, *self._geometry(h, w, crop))
        if self.use_bias:
            y += self._weights[1]
        if self.activation.name != "linear":
            y = self._activate(y)
        self._x, self._y, self._crop = x, y, crop
        self._last_output_shape = y.shape
        return y

    def _backward(self, grad_output, need_input_grad):
        x, f = self._x, self.filters
        n, h, w, c = x.shape
        db = self._gradients[1] if self.use_bias and not self._skip_weight_grads else None
        if self._epilogue is None:       # an activation the fused kernel does not know
            dz = self.activation.backward(self._y, grad_output,
                                          out=self._buffer("dz", grad_output.shape),
                                          x=self._z if self.activation.needs_input else None)
            _k.activation_bias_backward(dz.reshape(-1, f), dz.reshape(-1, f), None, db,
                                        EPILOGUES["linear"])
        elif self._epilogue == EPILOGUES["linear"]:
            dz = grad_output
            _k.activation_bias_backward(dz.reshape(-1, f), dz.reshape(-1, f), None, db,
                                        self._epilogue)
        else:
            dz = self._buffer("dz", grad_output.shape)
            _k.activation_bias_backward(self._y.reshape(-1, f), grad_output.reshape(-1, f),
                                        dz.reshape(-1, f), db, self._epilogue, self._alpha)
        depth = self.kernel_size[0] * self.kernel_size[1] * f
        geometry = self._geometry(h, w, self._crop)
        dz4 = dz.reshape(n, *self._y.shape[1:3], f)
        x2 = x.reshape(n * h * w, c)
        if depth <= c:   # thin patches (few filters): one patch matrix, two plain GEMMs
            dcols = self._buffer("dcols", (n * h * w, depth))
            _k.im2col(dz4, dcols, *geometry)
            if not self._skip_weight_grads:
                _weight_grad(self, dcols, x2, self._gradients[0].reshape(depth, c))
            if not need_input_grad:
                return None
            dx = self._buffer("dx", x.shape)
            gemm(dcols, self._weights[0].reshape(depth, c), dx.reshape(n * h * w, c))
            return dx
        # the patches of dZ (Conv2D's geometry), a few images at a time in cache:
        # dW^T = x^T im2col(dZ), dx = im2col(dZ) W
        if not self._skip_weight_grads:
            out_t = self._buffer("dkernel_t", (c, depth))
            _k.im2col_gemm_tn(dz4, x2, out_t, *geometry)
            self._gradients[0].reshape(depth, c)[...] = out_t.T
        if not need_input_grad:
            return None
        dx = self._buffer("dx", x.shape)
        _k.im2col_gemm(dz4, self._weights[0].reshape(depth, c), dx.reshape(n * h * w, c),
                       *geometry)
        return dx

    def get_config(self):
        return {"name": self.name, "filters": self.filters, "kernel_size": self.kernel_size,
                "strides": self.strides, "padding": self.padding,
                "output_padding": self.output_padding, "dilation_rate": self.dilation_rate,
                "activation": activations.serialize(self.activation), "use_bias": self.use_bias}
