"""cyneuron model -> ONNX graph: one converter per layer class, over the model's nodes.

Data stays in cyneuron's layouts (channels last, (batch, time, features)); a converter
transposes around the ONNX operators that want channels first or time first. Weights
are initializers in their Keras layouts, named "<layer>/<weight>"; ONNX layouts are
made from them by Transpose/Gather/Reshape nodes on constants, which runtimes fold.
"""
import json
import math

import numpy as np

from . import OPSETS, _require
from .. import __version__
from .. import layers as L
from ..layers._spatial import output_size
from ..models import Model, _serialize
from ..saving import _atomic_write

_INT64_MIN = np.iinfo(np.int64).min
_NEG = -1e30          # a finite "minus infinity" for masked attention scores (float32)


class Graph:
    """Nodes and initializers under construction, with unique value names."""

    def __init__(self, onnx, opset):
        self.onnx, self.opset = onnx, opset
        self.helper = onnx.helper
        self.nodes, self.inits = [], []
        self._names = set()
        self._weights = {}          # id(weight array) -> initializer name

    def fresh(self, hint):
        base = str(hint).replace(" ", "_")
        name, k = base, 1
        while name in self._names:
            name, k = f"{base}_{k}", k + 1
        self._names.add(name)
        return name

    def const(self, value, hint="const", dtype=np.float32):
        name = self.fresh(hint)
        array = np.ascontiguousarray(value, dtype=dtype)
        self.inits.append(self.onnx.numpy_helper.from_array(array, name))
        return name

    def ints(self, values, hint="ints"):
        return self.const(np.asarray(values, np.int64).reshape(-1), hint, np.int64)

    def weight(self, layer, wname):
        """The initializer of `layer`'s weight `wname` (Keras layout, float32)."""
        array = layer._weights[layer._weight_names.index(wname)]
        name = self._weights.get(id(array))
        if name is None:
            name = self._weights[id(array)] = self.const(array, f"{layer.name}/{wname}")
        return name

    def op(self, op_type, inputs, hint=None, outputs=1, **attrs):
        names = [self.fresh(f"{hint or op_type}") for _ in range(outputs)]
        self.nodes.append(self.helper.make_node(op_type, list(inputs), names,
                                                name=self.fresh(f"node/{hint or op_type}"),
                                                **attrs))
        return names[0] if outputs == 1 else names

    # -- small helpers over opset differences -----------------------------------------------
    def transpose(self, x, perm):
        return self.op("Transpose", [x], perm=[int(p) for p in perm])

    def reshape(self, x, shape):
        return self.op("Reshape", [x, self.ints(shape, "shape")])

    def reduce(self, op_type, x, axes, keepdims):
        axes = [int(a) for a in axes]
        if op_type == "ReduceSum" or self.opset >= 18:
            return self.op(op_type, [x, self.ints(axes, "axes")], keepdims=int(keepdims))
        return self.op(op_type, [x], axes=axes, keepdims=int(keepdims))

    def slice(self, x, starts, ends, axes, steps=None):
        ins = [x, self.ints(starts, "starts"), self.ints(ends, "ends"), self.ints(axes, "axes")]
        if steps is not None:
            ins.append(self.ints(steps, "steps"))
        return self.op("Slice", ins)

    def reverse(self, x, axis):
        return self.slice(x, [-1], [_INT64_MIN], [axis], [-1])

    def squeeze(self, x, axes):
        return self.op("Squeeze", [x, self.ints(axes, "axes")])

    def unsqueeze(self, x, axes):
        return self.op("Unsqueeze", [x, self.ints(axes, "axes")])

    def scalar(self, value):
        return self.const(np.float32(value), "scalar")

    def cast(self, x, to):
        return self.op("Cast", [x], to=to)


# ---------------------------------------------------------------------------------------
# Activations
# ---------------------------------------------------------------------------------------
def activation(g, x, act):
    """y = act(x) for a cyneuron Activation object."""
    name = act.name
    T = g.onnx.TensorProto
    if name == "linear":
        return x
    simple = {"sigmoid": "Sigmoid", "tanh": "Tanh", "relu": "Relu", "softplus": "Softplus",
              "softsign": "Softsign", "exponential": "Exp"}
    if name in simple:
        return g.op(simple[name], [x])
    if name == "hard_sigmoid":
        return g.op("HardSigmoid", [x], alpha=1.0 / 6.0, beta=0.5)
    if name == "hard_swish":
        return g.op("HardSwish", [x])
    if name == "leaky_relu":
        return g.op("LeakyRelu", [x], alpha=float(act.negative_slope))
    if name == "elu":
        return g.op("Elu", [x], alpha=float(act.alpha))
    if name == "selu":
        from ..activations import SELU_ALPHA, SELU_SCALE
        return g.op("Selu", [x], alpha=float(SELU_ALPHA), gamma=float(SELU_SCALE))
    if name in ("relu6", "hard_tanh"):
        lo, hi = (0.0, 6.0) if name == "relu6" else (-1.0, 1.0)
        return g.op("Clip", [x, g.scalar(lo), g.scalar(hi)])
    if name == "binary_step":
        return g.cast(g.op("GreaterOrEqual", [x, g.scalar(0.0)]), T.FLOAT)
    if name == "swish":
        return g.op("Mul", [x, g.op("Sigmoid", [x])])
    if name == "mish":
        if g.opset >= 18:
            return g.op("Mish", [x])
        return g.op("Mul", [x, g.op("Tanh", [g.op("Softplus", [x])])])
    if name in ("gelu", "gelu_tanh"):
        tanh = name == "gelu_tanh"
        if g.opset >= 20:
            return g.op("Gelu", [x], approximate="tanh" if tanh else "none")
        if tanh:   # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
            x3 = g.op("Mul", [g.op("Mul", [x, x]), x])
            inner = g.op("Mul", [g.op("Add", [x, g.op("Mul", [x3, g.scalar(0.044715)])]),
                                 g.scalar(math.sqrt(2.0 / math.pi))])
            half = g.op("Mul", [x, g.scalar(0.5)])
            return g.op("Mul", [half, g.op("Add", [g.op("Tanh", [inner]), g.scalar(1.0)])])
        erf = g.op("Erf", [g.op("Mul", [x, g.scalar(1.0 / math.sqrt(2.0))])])
        return g.op("Mul", [g.op("Mul", [x, g.scalar(0.5)]), g.op("Add", [erf, g.scalar(1.0)])])
    if name == "softmax":
        return g.op("Softmax", [x], axis=-1)
    if name == "log_softmax":
        return g.op("LogSoftmax", [x], axis=-1)
    raise NotImplementedError(f"activation {name!r} has no ONNX export")


# ---------------------------------------------------------------------------------------
# Converters: f(g, layer, xs, ctx) -> output names (a list), or (outputs, mask)
# ctx: in_shapes / out_shapes (per-sample), masks (per input: a bool (N, T) name or None)
# ---------------------------------------------------------------------------------------
class Ctx:
    __slots__ = ("in_shapes", "out_shapes", "masks")

    def __init__(self, in_shapes, out_shapes, masks):
        self.in_shapes, self.out_shapes, self.masks = in_shapes, out_shapes, masks


def dense(g, layer, x):
    y = g.op("MatMul", [x, g.weight(layer, "kernel")])
    if layer.use_bias:
        y = g.op("Add", [y, g.weight(layer, "bias")])
    return activation(g, y, layer.activation)


def _conv_pads(layer, spatial, kernel, strides, dilation, padding):
    befores, afters = [], []
    for size, k, s, d in zip(spatial, kernel, strides, dilation):
        out, before = output_size(size, k, s, d, padding, "kernel_size", "axis")
        span = (k - 1) * d + 1
        befores.append(before)
        afters.append(max((out - 1) * s + span - size - before, 0))
    return befores + afters


def _to_channels_first(g, x, r):
    return g.transpose(x, (0, r + 1) + tuple(range(1, r + 1)))


def _to_channels_last(g, x, r):
    return g.transpose(x, (0,) + tuple(range(2, r + 2)) + (1,))


def conv(g, layer, xs, ctx):
    r = layer.spatial_rank
    x = _to_channels_first(g, xs[0], r)
    w = g.transpose(g.weight(layer, "kernel"), (r + 1, r) + tuple(range(r)))
    ins = [x, w] + ([g.weight(layer, "bias")] if layer.use_bias else [])
    pads = _conv_pads(layer, ctx.in_shapes[0][:r], layer.kernel_size, layer.strides,
                      layer.dilation_rate, layer.padding)
    y = g.op("Conv", ins, kernel_shape=list(layer.kernel_size), strides=list(layer.strides),
             dilations=list(layer.dilation_rate), pads=pads)
    return [activation(g, _to_channels_last(g, y, r), layer.activation)]


def conv_transpose(g, layer, xs, ctx):
    x = _to_channels_first(g, xs[0], 2)
    w = g.transpose(g.weight(layer, "kernel"), (3, 2, 0, 1))
    y = g.op("ConvTranspose", [x, w], kernel_shape=list(layer.kernel_size),
             strides=list(layer.strides), dilations=list(layer.dilation_rate))
    (oh, ow), crop = layer._plan(tuple(ctx.in_shapes[0]))
    full = [(size - 1) * s + (k - 1) * d + 1 for size, k, s, d in
            zip(ctx.in_shapes[0][:2], layer.kernel_size, layer.strides, layer.dilation_rate)]
    extra = [max(c + o - f, 0) for c, o, f in zip(crop, (oh, ow), full)]
    if any(extra):      # Keras's output may reach past the full transposed convolution
        y = g.op("Pad", [y, g.ints([0, 0, 0, 0, 0, 0] + extra, "pads")])
    y = g.slice(y, list(crop), [crop[0] + oh, crop[1] + ow], [2, 3])
    y = _to_channels_last(g, y, 2)
    if layer.use_bias:
        y = g.op("Add", [y, g.weight(layer, "bias")])
    return [activation(g, y, layer.activation)]


def pooling(g, layer, xs, ctx):
    r = layer.spatial_rank
    x = _to_channels_first(g, xs[0], r)
    pads = _conv_pads(layer, ctx.in_shapes[0][:r], layer.pool_size, layer.strides,
                      (1,) * r, layer.padding)
    kind = "MaxPool" if isinstance(layer, (L.MaxPooling1D, L.MaxPooling2D)) else "AveragePool"
    attrs = {} if kind == "MaxPool" else {"count_include_pad": 0}
    y = g.op(kind, [x], kernel_shape=list(layer.pool_size), strides=list(layer.strides),
             pads=pads, **attrs)
    return [_to_channels_last(g, y, r)]


def global_pooling(g, layer, xs, ctx):
    r = layer.spatial_rank
    kind = "ReduceMax" if isinstance(layer, (L.GlobalMaxPooling1D, L.GlobalMaxPooling2D)) \
        else "ReduceMean"
    return [g.reduce(kind, xs[0], range(1, r + 1), layer.keepdims)]


def batch_norm(g, layer, xs, ctx):
    rank = len(ctx.in_shapes[0]) + 1
    channels = ctx.in_shapes[0][layer._axis - 1]
    shape = (channels,) + (1,) * (rank - 1 - layer._axis)
    inv = g.op("Reciprocal", [g.op("Sqrt", [g.op("Add", [g.weight(layer, "moving_variance"),
                                                         g.scalar(layer.epsilon)])])])
    scale = g.op("Mul", [inv, g.weight(layer, "gamma")]) if layer.scale else inv
    shift = g.op("Neg", [g.op("Mul", [g.weight(layer, "moving_mean"), scale])])
    if layer.center:
        shift = g.op("Add", [shift, g.weight(layer, "beta")])
    y = g.op("Mul", [xs[0], g.reshape(scale, shape)])
    return [g.op("Add", [y, g.reshape(shift, shape)])]


def layer_norm_of(g, layer, x, in_shape):
    n = layer._n_axes
    param = tuple(in_shape[len(in_shape) - n:])
    scale = g.weight(layer, "gamma") if layer.scale else g.const(np.ones(param), "ones")
    ins = [x, scale] + ([g.weight(layer, "beta")] if layer.center else [])
    return g.op("LayerNormalization", ins, axis=-n, epsilon=float(layer.epsilon))


def layer_norm(g, layer, xs, ctx):
    return [layer_norm_of(g, layer, xs[0], ctx.in_shapes[0])]


def normalization(g, layer, xs, ctx):
    full = (1,) + tuple(ctx.in_shapes[0])
    kept = layer._kept(len(full))
    shape = [full[a] if a in kept else 1 for a in range(1, len(full))]
    mean = g.reshape(g.weight(layer, "mean"), shape)
    std = g.op("Max", [g.op("Sqrt", [g.weight(layer, "variance")]),
                       g.scalar(layer.STD_FLOOR)])
    std = g.reshape(std, shape)
    if layer.invert:
        return [g.op("Add", [g.op("Mul", [xs[0], std]), mean])]
    return [g.op("Div", [g.op("Sub", [xs[0], mean]), std])]


def identity(g, layer, xs, ctx):
    return [g.op("Identity", [xs[0]])]


def reshape_to_output(g, layer, xs, ctx):
    return [g.reshape(xs[0], [0] + list(ctx.out_shapes[0]))]


def permute(g, layer, xs, ctx):
    return [g.transpose(xs[0], (0,) + tuple(layer.dims))]


def repeat_vector(g, layer, xs, ctx):
    return [g.op("Tile", [g.unsqueeze(xs[0], [1]), g.ints([1, layer.n, 1], "repeats")])]


def zero_padding(g, layer, xs, ctx):
    (t, b), (left, right) = layer.padding
    return [g.op("Pad", [xs[0], g.ints([0, t, left, 0, 0, b, right, 0], "pads")])]


def cropping(g, layer, xs, ctx):
    shape = ctx.in_shapes[0]
    starts = [c[0] for c in layer.cropping]
    ends = [shape[i] - c[1] for i, c in enumerate(layer.cropping)]
    return [g.slice(xs[0], starts, ends, list(range(1, len(starts) + 1)))]


def upsampling1d(g, layer, xs, ctx):
    steps, c = ctx.in_shapes[0]
    y = g.op("Tile", [g.unsqueeze(xs[0], [2]), g.ints([1, 1, layer.size, 1], "repeats")])
    return [g.reshape(y, [0, steps * layer.size, c])]


def upsampling2d(g, layer, xs, ctx):
    h, w, c = ctx.in_shapes[0]
    sh, sw = layer.size
    if layer.interpolation == "nearest":
        y = g.reshape(xs[0], [0, h, 1, w, 1, c])
        y = g.op("Tile", [y, g.ints([1, 1, sh, 1, sw, 1], "repeats")])
        return [g.reshape(y, [0, h * sh, w * sw, c])]
    x = _to_channels_first(g, xs[0], 2)
    y = g.op("Resize", [x, "", g.const([1, 1, sh, sw], "scales")], mode="linear",
             coordinate_transformation_mode="half_pixel")
    return [_to_channels_last(g, y, 2)]


def activation_layer(g, layer, xs, ctx):
    return [activation(g, xs[0], layer.activation)]


def prelu(g, layer, xs, ctx):
    return [g.op("PRelu", [xs[0], g.weight(layer, "alpha")])]


def maxout(g, layer, xs, ctx):
    z = g.op("MatMul", [xs[0], g.weight(layer, "kernel")])
    if layer.use_bias:
        z = g.op("Add", [z, g.weight(layer, "bias")])
    z = g.reshape(z, [0, layer.units, layer.pieces])
    return [g.reduce("ReduceMax", z, [2], False)]


def rbf(g, layer, xs, ctx):
    x, c = xs[0], g.weight(layer, "centers")
    xx = g.reduce("ReduceSum", g.op("Mul", [x, x]), [1], True)
    cc = g.reduce("ReduceSum", g.op("Mul", [c, c]), [1], False)
    xc = g.op("MatMul", [x, g.transpose(c, (1, 0))])
    d2 = g.op("Add", [g.op("Sub", [xx, g.op("Mul", [xc, g.scalar(2.0)])]), cc])
    gd2 = g.op("Mul", [g.op("Max", [d2, g.scalar(0.0)]), g.weight(layer, "gamma")])
    if layer.kernel == "gaussian":
        return [g.op("Exp", [g.op("Neg", [gd2])])]
    root = g.op("Sqrt", [g.op("Add", [gd2, g.scalar(1.0)])])
    return [root if layer.kernel == "multiquadric" else g.op("Reciprocal", [root])]


def embedding(g, layer, xs, ctx):
    T = g.onnx.TensorProto
    ids = g.cast(xs[0], T.INT64)
    y = g.op("Gather", [g.weight(layer, "embeddings"), ids], axis=0)
    if isinstance(layer, L.TokenAndPositionEmbedding):
        steps = ctx.in_shapes[0][0]
        pos = g.slice(g.weight(layer, "position_embeddings"), [0], [steps], [0])
        y = g.op("Add", [y, pos])
    mask = g.op("Not", [g.op("Equal", [ids, g.const(0, "zero", np.int64)])]) \
        if layer.mask_zero else None
    return [y], mask


def positional_encoding(g, layer, xs, ctx):
    return [g.op("Add", [xs[0], g.const(layer._pe, f"{layer.name}/encoding")])]


def merge(g, layer, xs, ctx):
    kind = type(layer)
    if isinstance(layer, L.Subtract):
        return [g.op("Sub", xs)]
    if isinstance(layer, L.Concatenate):
        return [g.op("Concat", xs, axis=int(layer.axis))]
    if isinstance(layer, L.Dot):
        return [dot(g, layer, xs, ctx)]
    for cls, op in ((L.Add, "Sum"), (L.Average, "Mean"), (L.Maximum, "Max"),
                    (L.Minimum, "Min"), (L.Multiply, "Mul")):
        if isinstance(layer, cls):
            if op == "Mul":
                y = xs[0]
                for x in xs[1:]:
                    y = g.op("Mul", [y, x])
                return [y]
            return [g.op(op, xs)]
    raise NotImplementedError(f"merge layer {kind.__name__} has no ONNX export")


def dot(g, layer, xs, ctx):
    s0, s1 = ctx.in_shapes
    a, b = layer._sample_axes([s0, s1])
    x0, x1 = xs
    if layer.normalize:
        def unit(x, axis):
            sq = g.reduce("ReduceSum", g.op("Mul", [x, x]), [axis], True)
            return g.op("Div", [x, g.op("Sqrt", [g.op("Max", [sq, g.scalar(layer._EPS)])])])
        x0, x1 = unit(x0, a), unit(x1, b)
    r0, r1 = len(s0) + 1, len(s1) + 1
    k = s0[a - 1]
    perm0 = [0] + [i for i in range(1, r0) if i != a] + [a]
    perm1 = [0, b] + [i for i in range(1, r1) if i != b]
    am = g.reshape(g.transpose(x0, perm0), [0, -1, k])
    bm = g.reshape(g.transpose(x1, perm1), [0, k, -1])
    return g.reshape(g.op("MatMul", [am, bm]), [0] + list(ctx.out_shapes[0]))


# -- recurrent ------------------------------------------------------------------------------
_RNN_ACTS = {"tanh": ("Tanh", None, None), "sigmoid": ("Sigmoid", None, None),
             "relu": ("Relu", None, None), "hard_sigmoid": ("HardSigmoid", 1.0 / 6.0, 0.5),
             "linear": ("Affine", 1.0, 0.0)}


def _gate_rows(g, w, layer, order, units):
    """(G*units, X) rows of w (X, G*units) transposed, gates in `order` (a Gather)."""
    wt = g.transpose(w, (1, 0))
    if order is None:
        return wt
    idx = np.concatenate([np.arange(k * units, (k + 1) * units) for k in order])
    return g.op("Gather", [wt, g.ints(idx, "gates")], axis=0)


def recurrent(g, layer, x, mask, steps):
    """One ONNX RNN/LSTM/GRU for `layer`: (sequence (N, T, H) in processing order or None,
    last state (N, H), last cell (N, H) or None)."""
    T = g.onnx.TensorProto
    units = layer.units
    if isinstance(layer, L.LSTM):
        op, order, acts = "LSTM", (0, 3, 1, 2), (layer.recurrent_activation, layer.activation,
                                                 layer.activation)
    elif isinstance(layer, L.GRU):
        op, order, acts = "GRU", None, (layer.recurrent_activation, layer.activation)
    else:
        op, order, acts = "RNN", None, (layer.activation,)
    W = g.unsqueeze(_gate_rows(g, g.weight(layer, "kernel"), layer, order, units), [0])
    R = g.unsqueeze(_gate_rows(g, g.weight(layer, "recurrent_kernel"), layer, order, units),
                    [0])
    B = ""
    if layer.use_bias:
        b = g.weight(layer, "bias")
        if op == "GRU":          # (2, 3H): input bias, recurrent bias, as ONNX's [Wb, Rb]
            B = g.reshape(b, [1, -1])
        else:
            if order is not None:
                idx = np.concatenate([np.arange(k * units, (k + 1) * units) for k in order])
                b = g.op("Gather", [b, g.ints(idx, "gates")], axis=0)
            zeros = g.const(np.zeros(layer._gate_count * units), "zeros")
            B = g.unsqueeze(g.op("Concat", [b, zeros], axis=0), [0])
    names, alpha, beta = [], [], []
    for a in acts:
        onnx_name, al, be = _RNN_ACTS[a]
        names.append(onnx_name)
        if al is not None:
            alpha.append(al)
            beta.append(be)
    attrs = {"hidden_size": units, "activations": names,
             "direction": "reverse" if layer.go_backwards else "forward"}
    if alpha:
        attrs.update(activation_alpha=alpha, activation_beta=beta)
    if op == "GRU":
        attrs["linear_before_reset"] = 1
    lens = ""
    if mask is not None:
        lens = g.cast(g.reduce("ReduceSum", g.cast(mask, T.INT32), [1], False), T.INT32)
    xt = g.transpose(x, (1, 0, 2))
    n_out = 3 if op == "LSTM" else 2
    outs = g.op(op, [xt, W, R, B, lens], outputs=n_out, **attrs)
    last = g.squeeze(outs[1], [0])
    cell = g.squeeze(outs[2], [0]) if op == "LSTM" else None
    seq = None
    if layer.return_sequences:
        y = g.squeeze(outs[0], [1])                   # (T, N, H), time order
        if mask is not None and not layer.go_backwards:
            # Keras carries the last state over padded steps; ONNX writes zeros there
            keep = g.unsqueeze(g.transpose(mask, (1, 0)), [2])
            y = g.op("Where", [keep, y, last])
        if layer.go_backwards:
            y = g.reverse(y, 0)                       # processing order, as Keras
        seq = g.transpose(y, (1, 0, 2))
    return seq, last, cell


def rnn_layer(g, layer, xs, ctx):
    seq, last, _ = recurrent(g, layer, xs[0], ctx.masks[0], ctx.in_shapes[0][0])
    return [seq if layer.return_sequences else last]


def bidirectional(g, layer, xs, ctx):
    mask, steps = ctx.masks[0], ctx.in_shapes[0][0]
    outs = []
    for sub in (layer.forward_layer, layer.backward_layer):
        seq, last, _ = recurrent(g, sub, xs[0], mask, steps)
        outs.append(seq if layer.return_sequences else last)
    yf, yb = outs
    if layer.return_sequences:
        yb = g.reverse(yb, 1)
    if layer.merge_mode == "concat":
        return [g.op("Concat", [yf, yb], axis=-1)]
    if layer.merge_mode == "mul":
        return [g.op("Mul", [yf, yb])]
    y = g.op("Add", [yf, yb])
    return [g.op("Mul", [y, g.scalar(0.5)]) if layer.merge_mode == "ave" else y]


def time_distributed(g, layer, xs, ctx):
    x = xs[0]
    shape = ctx.in_shapes[0]
    inner_in = g.reshape(x, [-1] + list(shape[1:]))
    inner_out_shape = tuple(ctx.out_shapes[0][1:])
    inner_ctx = Ctx([tuple(shape[1:])], [inner_out_shape], [None])
    y = convert_layer(g, layer.layer, [inner_in], inner_ctx)[0][0]
    batch = g.slice(g.op("Shape", [x]), [0], [1], [0])
    target = g.op("Concat", [batch, g.ints([shape[0]] + list(inner_out_shape), "shape")],
                  axis=0)
    return [g.op("Reshape", [y, target])]


# -- attention ------------------------------------------------------------------------------
def attention(g, mha, q, v, k=None, qmask=None, vmask=None, attn_mask=None, causal=False,
              shapes=None):
    """Keras MultiHeadAttention on names q (N, Tq, Dq), v (N, Tk, Dv), k (default v)."""
    T = g.onnx.TensorProto
    H, dk, dv = mha.num_heads, mha.key_dim, mha.value_dim
    (tq, dq_in), (tk, dv_in) = shapes[0], shapes[1]
    dk_in = mha._features[2]
    k = v if k is None else k

    def project(part, x, d_in, d_head):
        w = g.reshape(g.weight(mha, f"{part}_kernel"), [d_in, H * d_head])
        y = g.op("MatMul", [x, w])
        if mha.use_bias:
            y = g.op("Add", [y, g.reshape(g.weight(mha, f"{part}_bias"), [H * d_head])])
        return g.transpose(g.reshape(y, [0, 0, H, d_head]), (0, 2, 1, 3))   # (N, H, T, d)

    Q = project("query", q, dq_in, dk)
    K = project("key", k, dk_in, dk)
    V = project("value", v, dv_in, dv)
    scores = g.op("Mul", [g.op("MatMul", [Q, g.transpose(K, (0, 1, 3, 2))]),
                          g.scalar(1.0 / math.sqrt(dk))])
    parts = []
    if attn_mask is not None:
        m = g.cast(attn_mask, T.BOOL)
        parts.append(m if shapes[2] is not None and len(shapes[2]) == 3 else
                     g.unsqueeze(m, [1]))
    if qmask is not None:
        parts.append(g.unsqueeze(qmask, [1, 3]))
    if vmask is not None:
        parts.append(g.unsqueeze(vmask, [1, 2]))
    if causal:
        parts.append(g.const(np.tril(np.ones((tq, tk), bool))[None, None], "causal",
                             np.bool_))
    if parts:
        mask = parts[0]
        for p in parts[1:]:
            mask = g.op("And", [mask, p])
        scores = g.op("Where", [mask, scores, g.scalar(_NEG)])
        weights = g.op("Softmax", [scores], axis=-1)
        weights = g.op("Where", [mask, weights, g.scalar(0.0)])  # a row seeing no key: zeros
    else:
        weights = g.op("Softmax", [scores], axis=-1)
    O = g.op("MatMul", [weights, V])                                  # (N, H, Tq, dv)
    O = g.reshape(g.transpose(O, (0, 2, 1, 3)), [0, 0, H * dv])
    d_out = mha._weights[mha._weight_names.index("output_kernel")].shape[-1]
    y = g.op("MatMul", [O, g.reshape(g.weight(mha, "output_kernel"), [H * dv, d_out])])
    if mha.use_bias:
        y = g.op("Add", [y, g.weight(mha, "output_bias")])
    return y


def mha_layer(g, layer, xs, ctx):
    layout = getattr(layer, "_node_layout", ("query", "value"))
    parts = dict(zip(layout, xs))
    shapes = dict(zip(layout, ctx.in_shapes))
    masks = dict(zip(layout, ctx.masks))
    vmask = masks.get("value") if masks.get("value") is not None else masks.get("key")
    y = attention(g, layer, parts["query"], parts["value"], parts.get("key"),
                  masks.get("query"), vmask, parts.get("attention_mask"), layer._causal,
                  shapes=(shapes["query"], shapes["value"], shapes.get("attention_mask")))
    return [y], masks.get("query")


def _ffn(g, block, x):
    return dense(g, block._ff2, dense(g, block._ff1, x))


def _ffn_residual(g, block, h, shape):
    """A block's feed-forward sublayer with its residual and layer norm, as
    _Block._ffn_residual: h + FF(LN(h)) pre-norm, LN(h + FF(h)) post-norm."""
    if block.norm_first:
        return g.op("Add", [h, _ffn(g, block, layer_norm_of(g, block._ln_ff, h, shape))])
    return layer_norm_of(g, block._ln_ff, g.op("Add", [h, _ffn(g, block, h)]), shape)


def transformer_encoder(g, layer, xs, ctx):
    x, shape, mask = xs[0], ctx.in_shapes[0], ctx.masks[0]

    def att(a):
        return attention(g, layer._mha, a, a, qmask=mask, vmask=mask,
                         shapes=(shape, shape, None))

    if layer.norm_first:
        h = g.op("Add", [x, att(layer_norm_of(g, layer._ln1, x, shape))])
    else:
        h = layer_norm_of(g, layer._ln1, g.op("Add", [x, att(x)]), shape)
    return [_ffn_residual(g, layer, h, shape)], mask


def transformer_decoder(g, layer, xs, ctx):
    (x, e), (xs_shape, es_shape), (xm, em) = xs, ctx.in_shapes, ctx.masks

    def self_att(a):
        return attention(g, layer._self, a, a, qmask=xm, vmask=xm, causal=True,
                         shapes=(xs_shape, xs_shape, None))

    def cross_att(c):
        return attention(g, layer._cross, c, e, qmask=xm, vmask=em,
                         shapes=(xs_shape, es_shape, None))

    if layer.norm_first:
        h1 = g.op("Add", [x, self_att(layer_norm_of(g, layer._ln1, x, xs_shape))])
        h2 = g.op("Add", [h1, cross_att(layer_norm_of(g, layer._ln2, h1, xs_shape))])
    else:
        h1 = layer_norm_of(g, layer._ln1, g.op("Add", [x, self_att(x)]), xs_shape)
        h2 = layer_norm_of(g, layer._ln2, g.op("Add", [h1, cross_att(h1)]), xs_shape)
    return [_ffn_residual(g, layer, h2, xs_shape)], xm


# Most specific classes first: the first isinstance match converts the layer.
CONVERTERS = [
    (L.TokenAndPositionEmbedding, embedding), (L.Embedding, embedding),
    (L.Dense, lambda g, layer, xs, ctx: [dense(g, layer, xs[0])]),
    (L.Conv2DTranspose, conv_transpose), ((L.Conv1D, L.Conv2D), conv),
    ((L.GlobalMaxPooling1D, L.GlobalMaxPooling2D, L.GlobalAveragePooling1D,
      L.GlobalAveragePooling2D), global_pooling),
    ((L.MaxPooling1D, L.MaxPooling2D, L.AveragePooling1D, L.AveragePooling2D), pooling),
    (L.BatchNormalization, batch_norm), (L.LayerNormalization, layer_norm),
    (L.Normalization, normalization),
    ((L.Dropout, L.GaussianNoise, L.GaussianDropout), identity),
    ((L.Flatten, L.Reshape), reshape_to_output), (L.Permute, permute),
    (L.RepeatVector, repeat_vector), (L.ZeroPadding2D, zero_padding),
    ((L.Cropping1D, L.Cropping2D), cropping), (L.UpSampling1D, upsampling1d),
    (L.UpSampling2D, upsampling2d), (L.PReLU, prelu), (L.Maxout, maxout),
    (L.Activation, activation_layer), (L.RBF, rbf),
    ((L.SimpleRNN, L.LSTM, L.GRU), rnn_layer), (L.Bidirectional, bidirectional),
    (L.TimeDistributed, time_distributed), (L.MultiHeadAttention, mha_layer),
    (L.PositionalEncoding, positional_encoding),
    (L.TransformerEncoder, transformer_encoder), (L.TransformerDecoder, transformer_decoder),
    ((L.Add, L.Subtract, L.Multiply, L.Average, L.Maximum, L.Minimum, L.Concatenate, L.Dot),
     merge),
]


def converter_for(layer):
    for cls, fn in CONVERTERS:
        if isinstance(layer, cls):
            return fn
    return None


def convert_layer(g, layer, xs, ctx):
    """(output names, output mask) of one layer."""
    fn = converter_for(layer)
    result = fn(g, layer, xs, ctx)
    if isinstance(result, tuple):
        return result
    passed = next((m for m in ctx.masks if m is not None), None)
    return result, passed


def unsupported(model):
    """Class names of the layers (nested models expanded) that have no converter."""
    bad = []
    for layer in model._param_layers:
        if isinstance(layer, Model):
            bad.extend(unsupported(layer))
        elif converter_for(layer) is None:
            bad.append(type(layer).__name__)
    return bad


def convert_model(g, model, in_names, in_masks):
    """Convert the nodes of `model` (its inputs bound to `in_names`): output names, masks."""
    names, masks = {}, {}
    for t, name, mask in zip(model.inputs, in_names, in_masks):
        names[id(t)], masks[id(t)] = name, mask
    for node in model._nodes:
        xs = [names[id(t)] for t in node.inputs]
        ms = [masks.get(id(t)) for t in node.inputs]
        layer = node.layer
        if isinstance(layer, Model):
            outs, out_masks = convert_model(g, layer, xs, ms)
        else:
            ctx = Ctx([tuple(t.shape[1:]) for t in node.inputs],
                      [tuple(t.shape[1:]) for t in node.outputs], ms)
            outs, mask = convert_layer(g, layer, xs, ctx)
            out_masks = [mask] * len(outs)
        for t, name, mask in zip(node.outputs, outs, out_masks):
            names[id(t)] = name
            masks[id(t)] = mask if t.has_mask else None
    return ([names[id(t)] for t in model.outputs], [masks.get(id(t)) for t in model.outputs])


def _weight_arrays(model):
    """Every weight array of `model` in get_weights() order."""
    out = []
    for layer in model._param_layers:
        out.extend(_weight_arrays(layer) if isinstance(layer, Model) else layer._weights)
    return out


def build_proto(model, opset=17, dynamic_batch=True):
    """The onnx.ModelProto of a built cyneuron model (checked by onnx.checker)."""
    onnx = _require("onnx")
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)) \
            or int(opset) not in OPSETS:
        raise ValueError(f"opset must be one of {list(OPSETS)}; got {opset!r}")
    if not isinstance(model, Model):
        raise TypeError(f"model must be a cyneuron Sequential or Model; got "
                        f"{type(model).__name__}")
    if not model.built or not model.inputs:
        raise ValueError("model is not built: build it (model.build(input_shape)) or call "
                         "predict once before exporting")
    bad = unsupported(model)
    if bad:
        raise NotImplementedError(f"no ONNX export for layers {sorted(set(bad))}")
    g = Graph(onnx, int(opset))
    helper, T = onnx.helper, onnx.TensorProto
    batch = "batch" if dynamic_batch else 1
    in_names = [g.fresh(n) for n in model.input_names]
    outs, _ = convert_model(g, model, in_names, [None] * len(in_names))
    out_names = []
    for name, value in zip(model.output_names, outs):
        out_names.append(g.op("Identity", [value], hint=name))
    inputs = [helper.make_tensor_value_info(n, T.FLOAT, [batch] + list(t.shape[1:]))
              for n, t in zip(in_names, model.inputs)]
    outputs = [helper.make_tensor_value_info(n, T.FLOAT, [batch] + list(t.shape[1:]))
               for n, t in zip(out_names, model.outputs)]
    weights = []
    for array in _weight_arrays(model):
        if id(array) not in g._weights:
            raise RuntimeError(f"internal error: a weight of shape {array.shape} is not used "
                               f"by the exported graph")
        weights.append(g._weights[id(array)])
    graph = helper.make_graph(g.nodes, model.name, inputs, outputs, initializer=g.inits)
    proto = helper.make_model(graph, producer_name="cyneuron", producer_version=__version__,
                              opset_imports=[helper.make_opsetid("", int(opset))])
    proto.ir_version = min(proto.ir_version, 10)   # runtimes of opset 21 read IR 10
    helper.set_model_props(proto, {
        "cyneuron.architecture": json.dumps(_serialize(model)),
        "cyneuron.weights": json.dumps(weights),
        "cyneuron.inputs": json.dumps(in_names), "cyneuron.outputs": json.dumps(out_names)})
    onnx.checker.check_model(proto, full_check=True)
    return proto


def export_model(model, path, opset=17, dynamic_batch=True):
    proto = build_proto(model, opset=opset, dynamic_batch=dynamic_batch)
    data = proto.SerializeToString()
    _atomic_write(path, lambda f: f.write(data))
    return path
