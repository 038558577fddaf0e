"""The lean path of Model.predict for small calls (one chunk of one input, one output).

predict's general path costs ~5 µs of Python per call before any layer runs (argument
parsing, the input conversion, per-chunk slicing and copying) and each Dense layer
~1.5 µs more (its epilogue looked up, its buffer found, views and state for a backward
pass that inference never takes). At batch 1 that is as long as the products
themselves. Here a ready float array is checked with a few attribute tests and one
finiteness pass, and the model runs a program made once per runner and input shape:
Dense layers call the GEMM (bias and element-wise activation in its epilogue) into
buffers the program owns, the last one into the returned array; other layers run their
own _forward. Anything else (lists, dicts, other dtypes, several chunks, masks,
several inputs or outputs, graphs that are not a chain of layers) returns None and takes the general path, which also raises
its errors.

Nothing derived from the weights is trusted between calls: weight arrays are plain numpy
arrays that user code may write in place (`layer.kernel[...] = v`), and a copy made
before such a write would be silently stale. The two kept copies (a thin convolution's
reordered kernel, a Winograd kernel's transform) are used only while the kernel's bytes
equal a copy of them, compared in full on every call.

Thread safety: the program lives in the runner that _take_runner hands out (the model
itself or a replica, used by one thread at a time) and is rebuilt when a different
runner (a replica that copied the model's attributes) finds it.
"""
import numpy as np

from ._config import fusion_enabled
from .activations import _RowWise
from ._kernels import conv as _conv_k
from ._kernels import pooling as _pool_k
from ._kernels import recurrent as _rnn_k
from ._kernels import winograd as _wino
from ._kernels.arrays import all_finite
from ._kernels.gemm import EPILOGUES, gemm
from ._memory import empty_aligned, zeros_aligned
from .layers.conv import _Conv
from .layers.dense import Dense
from .layers.pooling import _Pooling
from .layers.recurrent import LSTM
from .ops import epilogue_of

_KEY = "lean_predict"
# Inputs of at least this many values whose first layer is a Dense with at most half as
# many outputs have that layer's product checked for NaN and infinity instead of them
# (_Op.run_checked).
FIRST_CHECK_MIN = 16384


def predict(model, x, batch_size):
    """model.predict(x, batch_size) for a plain call, or None (take the general path)."""
    if (type(x) is not np.ndarray or not model.built or model._out_struct != "single"
            or len(model._in_slots) != 1 or model._has_masks or x.dtype != model.dtype
            or x.ndim < 2 or not 0 < len(x) <= batch_size):
        return None
    flags = x.flags
    if not (flags.c_contiguous and flags.aligned) or x.shape[1:] != model.inputs[0].shape[1:]:
        return None
    runner = model._take_runner()
    try:
        runner._ensure_bound()
        program = runner._buffers.get(_KEY)
        if program is None or program.owner is not runner or program.shape != x.shape \
                or program.steps is not runner._steps or program.fused != fusion_enabled():
            program = runner._buffers[_KEY] = _Program(runner, x.shape)
        return program.run(x) if program.chain else None
    finally:
        model._give_back(runner)


class _Program:
    """The steps of one runner for one input shape; run(x) returns a new output array."""

    def __init__(self, runner, shape):
        self.owner, self.shape, self.steps = runner, shape, runner._steps
        self.fused = fusion_enabled()
        self.ops = []
        plain = all(not s.many and not s.multi_out and not s.input_masks
                    for s in runner._steps)
        slots = [s.ins[0] for s in runner._steps] if plain else []
        chain = plain and len(runner._steps) > 0 and slots[0] == runner._in_slots[0] and all(
            a.outs[0] == b for a, b in zip(runner._steps, slots[1:])) \
            and runner._steps[-1].outs[0] == runner._out_slots[0]
        self.chain = chain
        if chain:
            layers = [s.layer for s in runner._steps]
            i = 0
            while i < len(layers):
                pool = layers[i + 1] if i + 1 < len(layers) else None
                if _LSTMOp.takes(layers[i]):
                    self.ops.append(_LSTMOp(layers[i]))
                    i += 1
                elif _ConvOp.takes(layers[i]):
                    pool = pool if _ConvOp.fuses(pool) else None
                    self.ops.append(_ConvOp(layers[i], pool))
                    i += 2 if pool is not None else 1
                else:
                    self.ops.append(_Op(layers[i]))
                    i += 1

    def run(self, x):
        """The output for x, or None when x holds a NaN or an infinity."""
        ops, last = self.ops, len(self.ops) - 1
        first = ops[0]
        if type(first) is _Op and first.checks(x):
            h = first.run_checked(x, last == 0)
            if h is None:
                return None
        elif not all_finite(x):
            return None
        else:
            h = first.run(x, last == 0)
        for i in range(1, last + 1):
            h = ops[i].run(h, i == last)
        return h


class _Op:
    """One layer of a chain: a direct GEMM for a plain Dense layer, else its _forward."""

    def __init__(self, layer):
        self.layer = layer
        self.activation = getattr(layer, "activation", None)
        self.out = None
        self.dense = (type(layer)._forward is Dense._forward and isinstance(layer, Dense)
                      and not layer.activation.needs_input)
        if self.dense:
            fused = epilogue_of(layer.activation) if fusion_enabled() else None
            self.epilogue = None if not fusion_enabled() else \
                (int(fused[0]), fused[1]) if fused else (0, 0.0)   # a plain int code
            # not element-wise (softmax): after the product, in place
            self.after = None if fused is not None or layer.activation.name == "linear" \
                else layer.activation
            # a row-wise one (softmax) straight to its kernel: out is 2-D and contiguous
            self.rows = getattr(type(self.after), "_forward_kernel", None) \
                if isinstance(self.after, _RowWise) else None

    def _plain(self, x):
        """Whether run takes the direct GEMM for x."""
        return self.dense and self.layer.activation is self.activation and x.ndim == 2

    def _output(self, n, last):
        units = self.layer._weights[0].shape[1]
        if last:
            return np.empty((n, units), self.layer.dtype)
        out = self.out
        if out is None or out.shape[0] != n:
            out = self.out = empty_aligned((n, units), self.layer.dtype)
        return out

    def checks(self, x):
        """Whether run_checked should take x: a first Dense layer whose input has many
        more values than its output (MLP batch 256: 200,704 against 65,536)."""
        return (self._plain(x) and self.epilogue is not None and x.size >= FIRST_CHECK_MIN
                and x.size >= 2 * x.shape[0] * self.layer._weights[0].shape[1])

    def run_checked(self, x, last):
        """run for the first layer, checking its pre-activation product z = x W + b
        instead of x (the GEMM's epilogue checks each strip while it is in cache), or
        None when x is not finite. A NaN or an infinity in row i of x makes every value
        of row i of z one (NaN * w, inf * 0 and inf - inf are NaN, inf * w is infinite,
        and sums keep them), whatever the weights; so a finite z means a finite x. A z
        that is not finite (an overflow, weights that are not finite) sends x to the
        full check. MLP batch 256, one thread: the check of x's 200,704 values cost
        8-12 us there (x read from L3, evicting the weights)."""
        layer = self.layer
        weights = layer._weights
        out = self._output(x.shape[0], last)
        if not gemm(x, weights[0], out, weights[1] if layer.use_bias else None,
                    *self.epilogue, check_finite=True) and not all_finite(x):
            return None
        if self.rows is not None:
            self.rows(out, out)
        elif self.after is not None:
            self.after.forward(out, out=out)
        return out

    def run(self, x, last):
        layer = self.layer
        if not self._plain(x):
            y = layer._forward(x, False)
            return np.array(y, copy=True) if last else y
        weights = layer._weights
        out = self._output(x.shape[0], last)
        if self.epilogue is None:
            gemm(x, weights[0], out)
            if layer.use_bias:
                out += weights[1]
        else:
            gemm(x, weights[0], out, weights[1] if layer.use_bias else None, *self.epilogue)
        if self.rows is not None:
            self.rows(out, out)
        elif self.after is not None:
            self.after.forward(out, out=out)
        return out


# Bytes of patch matrix plus convolution output per chunk of samples when a pooling layer
# follows: the chunk's output is pooled while it is still in the (1 MiB-class) L2 cache,
# instead of written out whole and read back (25 MB for LeNet's first layer at batch 256).
CHUNK_BYTES = 384 * 1024
# Winograd runs fused in one kernel where the activation and pooling allow
# (conv_k.winograd_conv_pool: the 36 products by the serial GEMM, the transforms in
# registers, the kernel's transform kept while its bytes stay the same), at any batch
# size. LeNet's 14x14x32 -> 64 + 2x2 max pooling, whole model predict, one thread: batch 1
# 57.8 -> 45.2 us (the layer: 31 -> 16 us, against im2col + GEMM by bands); batch 256
# 9.1 -> 6.4 ms (against the layer's Winograd); two threads 5.1 -> 2.9 ms. Elsewhere
# (other activations or poolings) the layer's own Winograd, from this many tiles in the
# batch: below it im2col + one GEMM is faster than its 36 GEMM calls and its kernel
# transform (LeNet's second layer at batch 1, one thread: 39 against 61 us).
WINOGRAD_MIN_TILES = 64
# Thin convolutions with these activations take the direct kernel (conv_k.thin_conv_pool,
# the pooling after them fused) at any batch: LeNet's 28x28x1 -> 32 + 2x2 max pool,
# direct / shifted-rows GEMM, 1 thread: batch 1 7.4 / 12.4 us, batch 256 1.14 / 2.02 ms;
# 2 threads, batch 256: 0.68 / 1.86 ms.
_DIRECT_EPILOGUES = (EPILOGUES["linear"], EPILOGUES["relu"], EPILOGUES["leaky_relu"])


class _ConvOp:
    """A Conv1D/Conv2D layer whose activation the GEMM epilogue applies, and the max or
    average pooling layer right after it if any: a Winograd-sized 3x3 one or a thin one
    (KH*KW*C <= 32) with a ReLU-class activation in one fused kernel with the pooling;
    others im2col + one GEMM (or the layer's own Winograd on large batches), then the
    pooling, chunk by chunk of samples."""

    @staticmethod
    def takes(layer):
        return (isinstance(layer, _Conv) and type(layer)._forward is _Conv._forward
                and layer._epilogue is not None and layer._algorithm != "winograd")

    @staticmethod
    def fuses(layer):
        return (isinstance(layer, _Pooling) and type(layer)._forward is _Pooling._forward
                and type(layer)._plan is _Pooling._plan)

    def __init__(self, conv, pool):
        self.conv, self.pool, self.activation = conv, pool, conv.activation
        self.buffers = {}
        self.setups = {}        # input shape -> _ConvSetup
        self.reordered = _ReorderedKernel()
        self.wino_kernel = _conv_k.WinogradKernel()     # the kernel's transform, kept

    def _buffer(self, key, shape, dtype):
        buf = self.buffers.get(key)
        if buf is None or buf.shape != shape:
            buf = self.buffers[key] = empty_aligned(shape, dtype)
        return buf

    def run(self, x, last):
        conv, pool = self.conv, self.pool
        if conv.activation is not self.activation or conv._algorithm == "winograd":
            y = conv._forward(x, False)         # changed since: the layer's own path
            if pool is not None:
                y = pool._forward(y, False)
            return np.array(y, copy=True) if last else y
        setup = self.setups.get((x.shape, x.dtype))
        if setup is None or setup.algorithm != conv._algorithm:
            setup = self.setups[x.shape, x.dtype] = _ConvSetup(conv, pool, x.shape,
                                                              x.itemsize, self.wino_kernel)
        n, plan = x.shape[0], setup.plan
        if setup.winograd and pool is None:
            y = conv._forward(x, False)
            return np.array(y, copy=True) if last else y
        out = np.empty(setup.out_shape, x.dtype) if last else \
            self._buffer("out", setup.out_shape, x.dtype)
        bias = conv._weights[1] if conv.use_bias else None
        if setup.fused is not None:     # one kernel: Winograd, thin or by bands
            kernel, x4, w_shape, args = setup.fused
            w = conv._weights[0]
            kernel(x if x.ndim == 4 else x.reshape(x4),
                   w if w.shape == w_shape else w.reshape(w_shape), bias,
                   out if out.ndim == 4 else out.reshape(setup.out4_shape), *args)
            return out
        if pool is None:
            self._conv(x, out, plan)
            return out
        f = conv.filters
        step, hw = setup.step, setup.hw
        _, _, window, strides, padding = setup.pool_plan
        if setup.shifted:
            a, kernel = self._shifted_rows(x, plan)
            oh, wp = hw
            y = self._buffer("y_wide", (step * oh * wp, f), x.dtype)
        else:
            y = self._buffer("y", (step,) + setup.conv_shape, x.dtype)
        out4 = out.reshape(setup.out4_shape)
        pooling = _pool_k.max_pool_forward if pool._max else _pool_k.avg_pool_forward
        for n0 in range(0, n, step):
            m = min(step, n - n0)
            if setup.winograd:
                yc = conv._forward(x[n0:n0 + m], False)
            elif setup.shifted:
                yc = y[:m * oh * wp]
                gemm(a[n0 * oh * wp:(n0 + m) * oh * wp], kernel, yc, bias=bias,
                     activation=conv._epilogue, alpha=conv._alpha)
            else:
                yc = y[:m]
                self._conv(x[n0:n0 + m], yc, plan)
            y4 = yc.reshape((m,) + hw + (f,))
            if pool._max:
                pooling(y4, out4[n0:n0 + m], None, window, strides, padding)
            else:
                pooling(y4, out4[n0:n0 + m], window, strides, padding)
        return out

    @staticmethod
    def _thin(plan, c):
        """Few input channels, stride and dilation 1: the shifted-rows form applies (a
        patch matrix of only KH*KW*C <= 32 values a row, where im2col's per-pixel copies
        cost as much as the GEMM)."""
        return (not plan.pointwise and plan.strides == (1, 1) and plan.dilation == (1, 1)
                and plan.window[0] * plan.window[1] * c <= _conv_k.THIN_MAX_PATCH)

    def _shifted_rows(self, x, plan):
        """(a, kernel): the patch matrix as a strided view, no im2col. The input,
        zero-padded to (HP, WP), is stored with its KH vertically shifted copies side by
        side, s[n, oy, x, i, c] = padded[n, oy + i, x, c]; then the patch of output pixel
        (oy, ox) is KW*KH*C consecutive values, s's row (n, oy, ox) onwards, so
        a[r] = s.flat[r*KH*C : r*KH*C + KW*KH*C] over rows r = (n, oy, x) of the padded
        width WP (x >= OW: columns the GEMM computes and the pooling never reads), and
        the kernel is reordered to (KW, KH, C, F) to match (_ReorderedKernel). The buffers
        and the view are made once per input shape; each call fills them."""
        conv = self.conv
        n, c, f = x.shape[0], x.shape[-1], conv.filters
        (h, w), (oh, ow) = plan.in_hw, plan.out_hw
        (kh, kw), (pt, pl) = plan.window, plan.padding
        hp, wp = oh + kh - 1, ow + kw - 1
        views = self.buffers.get("shifted_views")
        if views is None or views[0].shape != (n, hp, wp, c) or views[0].dtype != x.dtype:
            padded = zeros_aligned((n, hp, wp, c), x.dtype)
            rows, width = n * oh * wp, kh * c
            shifted = zeros_aligned((rows + kw, width), x.dtype)   # kw - 1 rows past the
            view = shifted[:rows].reshape(n, oh, wp, kh, c)       # end stay zero
            item = x.itemsize
            a = np.lib.stride_tricks.as_strided(shifted, shape=(rows, kw * width),
                                                strides=(width * item, item),
                                                writeable=False)
            views = self.buffers["shifted_views"] = (
                padded, padded[:, pt:pt + h, pl:pl + w], x.shape[:1] + (h, w, c),
                (slice(None), slice(None, hp - pt), slice(None, wp - pl)),
                [(view[:, :, :, i], padded[:, i:i + oh]) for i in range(kh)], a)
        _, inside, shape4, crop, copies, a = views
        inside[...] = x.reshape(shape4)[crop]
        for dst, src in copies:
            dst[...] = src
        return a, self.reordered.get(conv._weights[0], plan.window)

    def _conv(self, x, y, plan):
        """y = act(conv(x) + bias): im2col into this op's buffer, one GEMM, the bias and
        the activation in its epilogue."""
        conv = self.conv
        n, c, f = x.shape[0], x.shape[-1], conv.filters
        (h, w), (oh, ow) = plan.in_hw, plan.out_hw
        rows, depth = n * oh * ow, plan.window[0] * plan.window[1] * c
        if plan.pointwise:
            cols = x.reshape(rows, c)
        else:
            cols = self._buffer("cols", (rows, depth), x.dtype)
            _conv_k.im2col(x.reshape(n, h, w, c), cols, *plan.args())
        kernel = conv._weights[0]
        bias = conv._weights[1] if conv.use_bias else None
        gemm(cols, kernel.reshape(depth, f), y.reshape(rows, f), bias=bias,
             activation=conv._epilogue, alpha=conv._alpha)


class _ReorderedKernel:
    """A thin convolution's kernel (KH, KW, C, F) (KH = 1 for Conv1D) as the (KW*KH*C, F)
    matrix of the shifted-rows patches (_ConvOp._shifted_rows), made again whenever the
    kernel's bytes differ from those it was made from: comparing a kernel of at most 32
    rows costs ~0.2 us, making it ~5 us, and weights may be written in place by user
    code, so only a full comparison is safe."""

    def __init__(self):
        self.source = self.snapshot = self.window = self.value = None

    def get(self, w, window):
        if self.source is not w or self.window != window or w.tobytes() != self.snapshot:
            (kh, kw), c, f = window, w.shape[-2], w.shape[-1]
            out = empty_aligned((kw, kh, c, f), w.dtype)
            out[...] = w.reshape(kh, kw, c, f).transpose(1, 0, 2, 3)
            self.value = out.reshape(-1, f)
            self.source, self.window, self.snapshot = w, window, w.tobytes()
        return self.value


class _ConvSetup:
    """What _ConvOp.run decides once per input shape: the geometry, Winograd or not,
    the pooling's plan, a kernel that does it all (fused: Winograd for a few samples,
    the direct thin kernel, or im2col + GEMM + pooling by bands) or else the chunk of
    samples and the shifted-rows form."""

    def __init__(self, conv, pool, shape, itemsize, wino_kernel):
        n, c = shape[0], shape[-1]
        self.algorithm = conv._algorithm
        plan = self.plan = conv._plan(shape[1:])
        (oh, ow) = plan.out_hw
        tiles = _wino.tiles(oh) * _wino.tiles(ow)
        conv_shape = self.conv_shape = conv.compute_output_shape(shape[1:])
        self.pool_plan = pool._plan(conv_shape) if pool is not None else None
        x4, f = (n,) + plan.in_hw + (c,), conv.filters
        self.fused = None       # (kernel, x's 4-D shape, the weights' shape, other arguments)
        fused_winograd = (conv._use_winograd(c) and conv._epilogue in _DIRECT_EPILOGUES
                          and self._tile_pooling((oh, ow)) is not None)
        self.winograd = (conv._use_winograd(c) and n * tiles >= WINOGRAD_MIN_TILES
                         and not fused_winograd)
        if pool is None:
            self.out_shape = (n,) + conv_shape
            self.out4_shape = (n,) + plan.out_hw + (f,)
        else:
            _, out_hw, window, strides, padding = self.pool_plan
            self.out_shape = (n,) + pool.compute_output_shape(conv_shape)
            self.out4_shape = (n,) + out_hw + (f,)
        if fused_winograd:
            self.fused = (_conv_k.winograd_conv_pool, x4, (3, 3, c, f),
                          (plan.padding, plan.out_hw, self._tile_pooling((oh, ow)),
                           pool is None or pool._max, int(conv._epilogue), conv._alpha,
                           wino_kernel))
            return
        # The direct kernel (conv rows made and pooled in L1, csrc/conv_thin.h) for the
        # activations it applies; a convolution without pooling is pooled 1x1.
        thin = not self.winograd and _ConvOp._thin(plan, c)
        thin_direct = thin and conv._epilogue in _DIRECT_EPILOGUES
        if pool is None:
            if thin_direct:
                self.fused = (_conv_k.thin_conv_pool, x4, plan.window + (c, f),
                              (plan.padding, plan.out_hw, True, (1, 1), (1, 1),
                               int(conv._epilogue), conv._alpha))
            return
        depth = plan.window[0] * plan.window[1] * c
        per_sample = oh * ow * (f + (0 if plan.pointwise else depth)) * itemsize
        self.shifted = (thin and padding == (0, 0)
                        and (out_hw[1] - 1) * strides[1] + window[1] <= ow)
        # Others with those activations: im2col + GEMM + pooling band by band of pooled
        # rows in one kernel (conv_k.im2col_gemm_pool).
        banded = (not thin_direct and not self.winograd and not plan.pointwise
                  and conv._epilogue in _DIRECT_EPILOGUES)
        if padding == (0, 0) and thin_direct:
            self.fused = (_conv_k.thin_conv_pool, x4, plan.window + (c, f),
                          (plan.padding, plan.out_hw, pool._max, window, strides,
                           int(conv._epilogue), conv._alpha))
        elif padding == (0, 0) and banded:
            self.fused = (_conv_k.im2col_gemm_pool, x4, (depth, f),
                          plan.args() + (pool._max, window, strides,
                                         int(conv._epilogue), conv._alpha))
        self.hw = self.pool_plan[0]
        if self.winograd:     # the layer's chunks of the batch (_Conv._chunks), pooled one by one
            self.step = max(1, _Conv._chunks(n, tiles)[0])
        else:
            self.step = max(1, min(n, CHUNK_BYTES // per_sample))
        if self.shifted:
            kh, kw = plan.window
            self.hw = (oh, ow + kw - 1)     # the GEMM's rows run over the padded width

    def _tile_pooling(self, conv_hw):
        """The pooling window (1x1 without a pooling layer) when winograd_conv_pool can
        pool inside its 4x4 output tiles: windows equal to their strides, 1, 2 or 4
        each, no padding, the output every whole window. Else None."""
        if self.pool_plan is None:
            return (1, 1)
        _, out_hw, window, strides, padding = self.pool_plan
        if (window == strides and padding == (0, 0) and all(k in (1, 2, 4) for k in window)
                and out_hw == (conv_hw[0] // window[0], conv_hw[1] // window[1])):
            return window
        return None


class _LSTMOp:
    """An LSTM returning its last state: one sample goes straight to the kernel's
    one-sample loop (lstm_forward_one) on this op's rings, the input read in place
    (x[0].T, reversed for go_backwards: no feature-major copy), no per-call layer state;
    a batch runs the layer's _forward."""

    @staticmethod
    def takes(layer):
        return type(layer) is LSTM and not layer.return_sequences and not layer.return_state

    def __init__(self, layer):
        self.layer = layer
        self.rings = None

    def run(self, x, last):
        layer = self.layer
        if x.ndim != 3 or x.shape[0] != 1 or x.shape[1] == 0:
            y = layer._forward(x, False)
            return np.array(y, copy=True) if last else y
        t, units = x.shape[1], layer.units
        if self.rings is None or self.rings[0].dtype != x.dtype:
            self.rings = (np.empty((1, 4 * units, 1), x.dtype),      # gates
                          np.empty((units, 2, 1), x.dtype),          # h
                          np.empty((2, units, 1), x.dtype),          # c
                          np.empty((1, units, 1), x.dtype))          # act(c)
        gates, h, c, act_c = self.rings
        h[:, 0] = 0
        c[0] = 0
        seq = x[0, ::-1] if layer.go_backwards else x[0]
        weights = layer._weights
        _rnn_k.lstm_forward_one(seq.T, weights[0], weights[1], layer._input_bias(), gates, h,
                                c, act_c, None, layer._act, layer._ract)
        out = np.empty((1, units), x.dtype)
        out[0] = h[:, t % 2, 0]
        return out
