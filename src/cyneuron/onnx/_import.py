"""ONNX file -> cyneuron Model.

A file written by cyneuron carries its architecture and the names of its weight
initializers (metadata): the model is rebuilt from them. Any other file is read
operator by operator. Each ONNX value is kept as a cyneuron tensor plus a map of its
axes (`Val.axes`: for each ONNX axis, the cyneuron axis it is, or None for an inserted
unit axis), so Transpose/Squeeze/Unsqueeze cost nothing and channels-first data from
PyTorch becomes channels-last cyneuron layers with one Permute where the layout must
change (before a Flatten, say). Shape arithmetic (Shape, Gather, Concat, ...) is
evaluated symbolically with "N" for the batch size.
"""
import json

import numpy as np

from . import OPSETS, _require
from .. import layers as L
from ..layers.input_layer import Input
from ..layers._spatial import output_size
from ..models import Model, _deserialize

IMPORT_OPSETS = range(13, max(OPSETS) + 1)

_UNARY = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "Softplus": "softplus",
          "Softsign": "softsign", "Exp": "exponential", "HardSwish": "hard_swish",
          "Mish": "mish"}
_SHAPE_OPS = {"Shape", "ConstantOfShape", "Constant"}
SUPPORTED = set(_UNARY) | _SHAPE_OPS | {
    "Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Conv", "MaxPool", "AveragePool",
    "GlobalAveragePool", "GlobalMaxPool", "BatchNormalization", "LayerNormalization",
    "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Gather", "Concat",
    "Identity", "Dropout", "Softmax", "LogSoftmax", "LeakyRelu", "Elu", "Selu",
    "HardSigmoid", "Clip", "Gelu", "PRelu", "LSTM", "GRU", "RNN", "Cast", "Erf"}


class Val:
    """An ONNX value held by cyneuron tensor `t`; axes[i] is the cyneuron axis of ONNX
    axis i (None: a unit axis that cyneuron does not have)."""

    __slots__ = ("t", "axes")

    def __init__(self, t, axes=None):
        self.t = t
        self.axes = list(range(len(t.shape))) if axes is None else list(axes)


class Shape(list):
    """A symbolic shape or index vector: ints and "N" (the batch size)."""


class Zeros:
    """ConstantOfShape(value 0) of a symbolic shape: zero initial states."""

    def __init__(self, shape):
        self.shape = shape


def load_model(path):
    onnx = _require("onnx")
    try:
        proto = onnx.load(str(path))
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise ValueError(f"{path!s} is not an ONNX model: {type(exc).__name__}: {exc}") \
            from None
    if len(proto.graph.node) == 0 and len(proto.graph.output) == 0:
        raise ValueError(f"{path!s} is not an ONNX model (no graph)")
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or opset not in IMPORT_OPSETS:
        raise ValueError(f"{path!s}: ONNX opset {opset} is not supported; cyneuron reads opsets "
                         f"{IMPORT_OPSETS.start} to {IMPORT_OPSETS.stop - 1}")
    props = {p.key: p.value for p in proto.metadata_props}
    if "cyneuron.architecture" in props:
        return _rebuild(onnx, proto, props)
    return Importer(onnx, proto).run()


def _rebuild(onnx, proto, props):
    """A model exported by cyneuron: its architecture, then its weights by name."""
    inits = {t.name: t for t in proto.graph.initializer}
    try:
        spec = json.loads(props["cyneuron.architecture"])
        names = json.loads(props["cyneuron.weights"])
    except (KeyError, ValueError) as exc:
        raise ValueError(f"the cyneuron metadata of this ONNX file is damaged: {exc}") from None
    missing = [n for n in names if n not in inits]
    if missing:
        raise ValueError(f"the ONNX file lacks the weight initializers {missing[:5]}")
    model = _deserialize(spec)
    if not isinstance(model, Model):
        raise ValueError("the cyneuron metadata of this ONNX file does not describe a model")
    weights = [onnx.numpy_helper.to_array(inits[n]) for n in names]
    model.set_weights(weights)      # checks count and shapes; raises before changing any
    return model


def _attrs(onnx, node):
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


class Importer:
    """Reads a general ONNX graph into a functional cyneuron Model."""

    def __init__(self, onnx, proto):
        self.onnx = onnx
        self.graph = proto.graph
        self.vals = {}
        for t in self.graph.initializer:
            self.vals[t.name] = onnx.numpy_helper.to_array(t)
        self.consumers = {}
        for node in self.graph.node:      # constants first: patterns look ahead at them
            if node.op_type == "Constant" and node.output and "value" in _attrs(onnx, node):
                self.vals[node.output[0]] = onnx.numpy_helper.to_array(_attrs(onnx,
                                                                              node)["value"])
        for node in self.graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.skip = set()

    # -- entry ----------------------------------------------------------------------------
    def run(self):
        bad = sorted({n.op_type for n in self.graph.node
                      if n.op_type not in SUPPORTED or n.domain not in ("", "ai.onnx")})
        if bad:
            raise ValueError(f"the ONNX graph uses operators cyneuron cannot load: "
                             f"{', '.join(bad)} (supported: {', '.join(sorted(SUPPORTED))})")
        inputs = []
        for vi in self.graph.input:
            if vi.name in self.vals:
                continue          # an initializer listed as an input (old exporters)
            dims = vi.type.tensor_type.shape.dim
            shape = []
            for d in list(dims)[1:]:
                if not d.HasField("dim_value"):
                    raise ValueError(f"input {vi.name!r}: only the first (batch) axis may be "
                                     f"symbolic; axis {len(shape) + 1} is {d.dim_param!r}")
                shape.append(int(d.dim_value))
            elem = vi.type.tensor_type.elem_type
            dtype = "int64" if elem in (self.onnx.TensorProto.INT64,
                                        self.onnx.TensorProto.INT32) else "float32"
            t = Input(tuple(shape), dtype=dtype, name=_layer_name(vi.name))
            inputs.append(t)
            self.vals[vi.name] = Val(t)
        for node in self.graph.node:
            if id(node) in self.skip:
                continue
            try:
                self.convert(node)
            except (ValueError, NotImplementedError) as exc:
                raise ValueError(f"ONNX node {node.name or node.op_type!r} ({node.op_type}): "
                                 f"{exc}") from None
        outs = []
        for vi in self.graph.output:
            v = self.vals.get(vi.name)
            if not isinstance(v, Val):
                raise ValueError(f"output {vi.name!r} is not computed from the inputs")
            outs.append(self.plain(v).t)
        return Model(inputs[0] if len(inputs) == 1 else inputs,
                     outs[0] if len(outs) == 1 else outs, name=self.graph.name or None)

    # -- tensors --------------------------------------------------------------------------
    def tensor(self, name):
        v = self.vals.get(name)
        if not isinstance(v, Val):
            raise NotImplementedError(f"input {name!r} must be a tensor computed from the model "
                                      f"inputs (constants are supported only as weights)")
        return v

    def const(self, name, what="a constant"):
        v = self.vals.get(name)
        if isinstance(v, Shape) and "N" not in v:
            return np.asarray(list(v), np.int64)
        if not isinstance(v, np.ndarray):
            raise NotImplementedError(f"input {name!r} must be {what} (an initializer or a "
                                      f"Constant)")
        return v

    def optional(self, node, i):
        return node.input[i] if len(node.input) > i and node.input[i] else None

    def plain(self, v):
        """v as a cyneuron tensor in ONNX's own axis order (batch first)."""
        real = [a for a in v.axes if a is not None]
        if not real or real[0] != 0:
            raise NotImplementedError("the batch axis must stay the first axis")
        t = v.t
        if real != list(range(len(real))):
            t = L.Permute(tuple(real[1:]))(t)
        if len(real) != len(v.axes):
            shape = [1 if a is None else v.t.shape[a] for a in v.axes]
            t = L.Reshape(tuple(shape[1:]))(t)
        return Val(t)

    def channels_last(self, v, rank):
        """v (N, C, spatial...) as a channels-last cyneuron tensor (N, spatial..., C)."""
        want = [0, rank + 1] + list(range(1, rank + 1))
        if v.axes == want:
            return v.t
        p = self.plain(v)
        if len(p.t.shape) != rank + 2:
            raise NotImplementedError(f"expected a {rank + 2}-D input; got shape "
                                      f"{p.t.shape}")
        return L.Permute(tuple(range(2, rank + 2)) + (1,))(p.t)

    @staticmethod
    def channels_first(t, rank):
        return Val(t, [0, rank + 1] + list(range(1, rank + 1)))

    def set(self, node, *values):
        for name, v in zip(node.output, values):
            if name:
                self.vals[name] = v

    def used(self, name):
        if any(o.name == name for o in self.graph.output):
            return True
        return bool(self.consumers.get(name))

    # -- operators ------------------------------------------------------------------------
    def convert(self, node):
        op = node.op_type
        a = _attrs(self.onnx, node)
        handler = getattr(self, "op_" + op, None)
        if handler is not None:
            return handler(node, a)
        if op in _UNARY:
            v = self.tensor(node.input[0])
            return self.set(node, Val(L.Activation(_UNARY[op])(v.t), v.axes))
        raise NotImplementedError(f"operator {op} is not supported")

    # shape arithmetic and constants
    def op_Constant(self, node, a):
        if "value" not in a:
            raise NotImplementedError(f"Constant with {sorted(a)} is not supported")
        self.set(node, self.onnx.numpy_helper.to_array(a["value"]))

    def op_Shape(self, node, a):
        v = self.tensor(node.input[0])
        shape = Shape(["N" if ax == 0 else (1 if ax is None else v.t.shape[ax])
                       for ax in v.axes])
        start, end = a.get("start", 0), a.get("end", None)
        self.set(node, Shape(shape[start:end]))

    def op_ConstantOfShape(self, node, a):
        value = a.get("value")
        fill = 0.0 if value is None else float(self.onnx.numpy_helper.to_array(value).ravel()[0])
        shape = self.vals.get(node.input[0])
        if isinstance(shape, np.ndarray):
            self.set(node, np.full(tuple(shape.astype(int)), fill, np.float32))
        elif isinstance(shape, Shape) and fill == 0.0:
            self.set(node, Zeros(list(shape)))
        else:
            raise NotImplementedError("ConstantOfShape of a batch-sized shape must fill zeros")

    def op_Cast(self, node, a):
        v = self.vals.get(node.input[0])
        if isinstance(v, np.ndarray):
            return self.set(node, v.astype(self.onnx.helper.tensor_dtype_to_np_dtype(a["to"])))
        self.set(node, v)     # shapes and tensors: cyneuron computes in its own dtype

    def op_Identity(self, node, a):
        self.set(node, self.vals[node.input[0]])

    op_Dropout = op_Identity

    def op_Gather(self, node, a):
        data, axis = self.vals.get(node.input[0]), int(a.get("axis", 0))
        index = self.vals.get(node.input[1])
        if isinstance(data, np.ndarray) and isinstance(index, Val):
            if data.ndim != 2 or axis != 0:
                raise NotImplementedError("Gather of a constant table must be a 2-D lookup "
                                          "on axis 0 (an embedding)")
            layer = L.Embedding(data.shape[0], data.shape[1])
            t = layer(self.plain(index).t)
            layer.set_weights([data])
            return self.set(node, Val(t))
        if isinstance(data, (np.ndarray, Shape)) and isinstance(index, np.ndarray):
            if isinstance(data, Shape):
                picked = np.asarray(list(data), object)[index]
                return self.set(node, Shape(picked.reshape(-1).tolist()) if index.ndim
                                else Shape([picked]))
            return self.set(node, np.take(data, index, axis=axis))
        if not isinstance(data, Val) or not isinstance(index, np.ndarray) or index.ndim != 0:
            raise NotImplementedError("Gather is supported on constants, shapes, embeddings "
                                      "and one scalar index of a tensor")
        axis = axis % len(data.axes)
        ax, i = data.axes[axis], int(index)
        rest = data.axes[:axis] + data.axes[axis + 1:]
        if ax is None:
            return self.set(node, Val(data.t, rest))
        t = data.t
        if ax == 0 or len(t.shape) != 3 or ax != 1:
            raise NotImplementedError("Gather on a tensor axis works on the time axis of a "
                                      "(batch, time, features) tensor")
        steps = t.shape[1]
        i = i % steps
        picked = L.Reshape((t.shape[2],))(L.Cropping1D((i, steps - 1 - i))(t))
        self.set(node, Val(picked, [None if x is None else (0 if x == 0 else 1) for x in rest]))

    def op_Unsqueeze(self, node, a):
        axes = a.get("axes")
        if axes is None:
            axes = self.const(node.input[1]).tolist()
        v = self.vals[node.input[0]]
        if isinstance(v, (Shape, np.ndarray)):
            if isinstance(v, np.ndarray):
                return self.set(node, np.expand_dims(v, tuple(axes)))
            return self.set(node, Shape(list(v)))       # a scalar becomes a 1-vector
        out = list(v.axes)
        rank = len(out) + len(axes)
        for ax in sorted(x % rank for x in axes):
            out.insert(ax, None)
        self.set(node, Val(v.t, out))

    def op_Squeeze(self, node, a):
        axes = a.get("axes")
        if axes is None and self.optional(node, 1):
            axes = self.const(node.input[1]).tolist()
        v = self.tensor(node.input[0])
        rank = len(v.axes)
        drop = {x % rank for x in axes} if axes is not None else \
            {i for i, x in enumerate(v.axes) if x is None or v.t.shape[x] == 1}
        if any(v.axes[i] is not None for i in drop):
            p = self.plain(v)
            shape = [d for i, d in enumerate(p.t.shape) if i not in drop]
            return self.set(node, Val(L.Reshape(tuple(shape[1:]))(p.t)))
        self.set(node, Val(v.t, [x for i, x in enumerate(v.axes) if i not in drop]))

    def op_Transpose(self, node, a):
        v = self.tensor(node.input[0])
        perm = a.get("perm", list(range(len(v.axes)))[::-1])
        self.set(node, Val(v.t, [v.axes[p] for p in perm]))

    def op_Concat(self, node, a):
        vals = [self.vals.get(n) for n in node.input]
        if all(isinstance(v, (Shape, np.ndarray)) for v in vals):
            if all(isinstance(v, np.ndarray) for v in vals):
                return self.set(node, np.concatenate(vals, axis=a["axis"]))
            out = Shape()
            for v in vals:
                out.extend(np.asarray(v).reshape(-1).tolist() if isinstance(v, np.ndarray)
                           else list(v))
            return self.set(node, out)
        ts = [self.plain(self.tensor(n)) for n in node.input]
        axis = a["axis"] % len(ts[0].axes)
        if axis == 0:
            raise NotImplementedError("Concat along the batch axis")
        self.set(node, Val(L.Concatenate(axis=axis)([v.t for v in ts])))

    def op_Flatten(self, node, a):
        if a.get("axis", 1) != 1:
            raise NotImplementedError("Flatten with axis other than 1")
        v = self.plain(self.tensor(node.input[0]))
        self.set(node, Val(L.Flatten()(v.t) if len(v.t.shape) > 2 else v.t))

    def op_Reshape(self, node, a):
        target = self.vals.get(node.input[1])
        if isinstance(target, np.ndarray):
            target = target.tolist()
        if not isinstance(target, list) or not target or target[0] not in (0, -1, "N"):
            raise NotImplementedError("Reshape must keep the batch axis first (shape[0] 0, "
                                      "-1 or the batch size)")
        v = self.plain(self.tensor(node.input[0]))
        rest = [v.t.shape[i + 1] if d == 0 else int(d) for i, d in enumerate(target[1:])]
        if target[0] == -1 and -1 in rest:
            raise NotImplementedError("Reshape with two unknown sizes")
        self.set(node, Val(L.Reshape(tuple(rest))(v.t)))

    # dense and convolution
    def _dense(self, node, x, kernel, bias):
        layer = L.Dense(kernel.shape[1], use_bias=bias is not None)
        t = layer(self.plain(x).t)
        layer.set_weights([kernel] + ([bias] if bias is not None else []))
        return Val(t)

    def op_Gemm(self, node, a):
        if a.get("transA", 0):
            raise NotImplementedError("Gemm with transA=1")
        x = self.tensor(node.input[0])
        w = self.const(node.input[1], "a constant weight matrix")
        w = (w.T if a.get("transB", 0) else w) * a.get("alpha", 1.0)
        c = self.optional(node, 2)
        bias = None
        if c is not None:
            bias = np.broadcast_to(self.const(c, "a constant bias") * a.get("beta", 1.0),
                                   (w.shape[1],))
        self.set(node, self._dense(node, x, w, bias))

    def op_MatMul(self, node, a):
        x, w = self.vals.get(node.input[0]), self.vals.get(node.input[1])
        if isinstance(x, Val) and isinstance(w, Val):
            raise NotImplementedError("MatMul of two computed tensors")
        if not isinstance(w, np.ndarray) or w.ndim != 2:
            raise NotImplementedError("MatMul needs a constant 2-D right operand")
        bias = None
        users = self.consumers.get(node.output[0], [])
        if len(users) == 1 and users[0].op_type == "Add" and not self.used_as_output(node):
            other = [n for n in users[0].input if n != node.output[0]]
            b = self.vals.get(other[0]) if len(other) == 1 else None
            if isinstance(b, np.ndarray) and b.size == w.shape[1] and b.ndim <= 1:
                bias = b.reshape(-1)
                self.skip.add(id(users[0]))
                out = self._dense(node, self.tensor(node.input[0]), w, bias)
                return self.set(users[0], out)
        self.set(node, self._dense(node, self.tensor(node.input[0]), w, None))

    def used_as_output(self, node):
        return any(o.name == node.output[0] for o in self.graph.output)

    def _pads(self, a, rank, spatial, kernel, strides, dilations):
        """"valid", "same" or explicit ((before, after), ...) pads."""
        if a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID", b"NOTSET", b"VALID"):
            raise NotImplementedError(f"auto_pad {a['auto_pad']!r}")
        pads = list(a.get("pads", [0] * (2 * rank)))
        pairs = list(zip(pads[:rank], pads[rank:]))
        if not any(pads):
            return "valid"
        same = []
        for size, k, s, d in zip(spatial, kernel, strides, dilations):
            out, before = output_size(size, k, s, d, "same", "kernel", "axis")
            span = (k - 1) * d + 1
            same.append((before, max((out - 1) * s + span - size - before, 0)))
        return "same" if same == pairs else pairs

    def op_Conv(self, node, a):
        if a.get("group", 1) != 1:
            raise NotImplementedError("grouped convolution (group > 1)")
        w = self.const(node.input[1], "a constant kernel")
        rank = w.ndim - 2
        if rank not in (1, 2):
            raise NotImplementedError(f"{rank}-D convolution")
        x = self.tensor(node.input[0])
        t = self.channels_last(x, rank)
        kernel = tuple(w.shape[2:])
        strides = tuple(a.get("strides", [1] * rank))
        dil = tuple(a.get("dilations", [1] * rank))
        padding = self._pads(a, rank, t.shape[1:1 + rank], kernel, strides, dil)
        if not isinstance(padding, str):
            if rank != 2:
                raise NotImplementedError(f"1-D convolution with pads {padding}")
            t = L.ZeroPadding2D(tuple(padding))(t)
            padding = "valid"
        bias = self.optional(node, 2)
        cls = L.Conv2D if rank == 2 else L.Conv1D
        layer = cls(w.shape[0], kernel, strides=strides, padding=padding, dilation_rate=dil,
                    use_bias=bias is not None)
        y = layer(t)
        perm = (2, 3, 1, 0) if rank == 2 else (2, 1, 0)
        layer.set_weights([w.transpose(perm)] + ([self.const(bias)] if bias else []))
        self.set(node, self.channels_first(y, rank))

    def _pool(self, node, a, kind):
        if a.get("ceil_mode", 0):
            raise NotImplementedError("ceil_mode=1")
        kernel = tuple(a["kernel_shape"])
        rank = len(kernel)
        if any(d != 1 for d in a.get("dilations", [1] * rank)):
            raise NotImplementedError("dilated pooling")
        x = self.tensor(node.input[0])
        t = self.channels_last(x, rank)
        strides = tuple(a.get("strides", [1] * rank))
        padding = self._pads(a, rank, t.shape[1:1 + rank], kernel, strides, (1,) * rank)
        if not isinstance(padding, str) or (padding == "same" and kind == "avg"
                                            and a.get("count_include_pad", 0)):
            raise NotImplementedError(f"pooling pads {a.get('pads')} (only none or "
                                      f"TensorFlow's 'same' padding)")
        names = {("max", 1): L.MaxPooling1D, ("max", 2): L.MaxPooling2D,
                 ("avg", 1): L.AveragePooling1D, ("avg", 2): L.AveragePooling2D}
        y = names[kind, rank](kernel, strides=strides, padding=padding)(t)
        self.set(node, self.channels_first(y, rank))

    def op_MaxPool(self, node, a):
        if len(node.output) > 1 and node.output[1]:
            raise NotImplementedError("MaxPool's indices output")
        self._pool(node, a, "max")

    def op_AveragePool(self, node, a):
        self._pool(node, a, "avg")

    def _global_pool(self, node, kind):
        x = self.tensor(node.input[0])
        rank = len(x.axes) - 2
        t = self.channels_last(x, rank)
        cls = {("max", 1): L.GlobalMaxPooling1D, ("max", 2): L.GlobalMaxPooling2D,
               ("avg", 1): L.GlobalAveragePooling1D, ("avg", 2): L.GlobalAveragePooling2D}
        y = cls[kind, rank](keepdims=True)(t)
        self.set(node, self.channels_first(y, rank))

    def op_GlobalAveragePool(self, node, a):
        self._global_pool(node, "avg")

    def op_GlobalMaxPool(self, node, a):
        self._global_pool(node, "max")

    # normalization
    def op_BatchNormalization(self, node, a):
        if a.get("training_mode", 0):
            raise NotImplementedError("BatchNormalization in training mode")
        x = self.tensor(node.input[0])
        axis = x.axes[1]
        if axis is None or axis == 0:
            raise NotImplementedError("BatchNormalization over an inserted axis")
        gamma, beta, mean, var = (self.const(n) for n in node.input[1:5])
        layer = L.BatchNormalization(axis=axis, epsilon=float(a.get("epsilon", 1e-5)))
        t = layer(x.t)
        layer.set_weights([gamma, beta, mean, var])
        self.set(node, Val(t, x.axes))

    def op_LayerNormalization(self, node, a):
        x = self.plain(self.tensor(node.input[0]))
        rank = len(x.t.shape)
        axis = a.get("axis", -1) % rank
        if axis == 0:
            raise NotImplementedError("LayerNormalization over the batch axis")
        scale = self.const(node.input[1])
        bias = self.optional(node, 2)
        layer = L.LayerNormalization(axis=list(range(axis, rank)),
                                     epsilon=float(a.get("epsilon", 1e-5)),
                                     center=bias is not None)
        t = layer(x.t)
        shape = tuple(x.t.shape[axis:])
        layer.set_weights([np.broadcast_to(scale, shape)] +
                          ([np.broadcast_to(self.const(bias), shape)] if bias else []))
        self.set(node, Val(t))

    # elementwise
    def _activation(self, node, act):
        v = self.tensor(node.input[0])
        self.set(node, Val(L.Activation(act)(v.t), v.axes))

    def op_LeakyRelu(self, node, a):
        self._activation(node, {"name": "leaky_relu", "negative_slope": a.get("alpha", 0.01)})

    def op_Elu(self, node, a):
        self._activation(node, {"name": "elu", "alpha": a.get("alpha", 1.0)})

    def op_Selu(self, node, a):
        from ..activations import SELU_ALPHA, SELU_SCALE
        if not (np.isclose(a.get("alpha", SELU_ALPHA), SELU_ALPHA)
                and np.isclose(a.get("gamma", SELU_SCALE), SELU_SCALE)):
            raise NotImplementedError("Selu with non-standard alpha/gamma")
        self._activation(node, "selu")

    def op_HardSigmoid(self, node, a):
        if not (np.isclose(a.get("alpha", 0.2), 1 / 6) and np.isclose(a.get("beta", 0.5), 0.5)):
            raise NotImplementedError("HardSigmoid other than clip(x/6 + 1/2, 0, 1)")
        self._activation(node, "hard_sigmoid")

    def op_Gelu(self, node, a):
        self._activation(node, "gelu_tanh" if a.get("approximate", "none") == "tanh"
                         else "gelu")

    def op_Clip(self, node, a):
        lo = self.const(node.input[1]) if self.optional(node, 1) else a.get("min")
        hi = self.const(node.input[2]) if self.optional(node, 2) else a.get("max")
        bounds = (None if lo is None else float(lo), None if hi is None else float(hi))
        acts = {(0.0, 6.0): "relu6", (-1.0, 1.0): "hard_tanh", (0.0, None): "relu"}
        if bounds not in acts:
            raise NotImplementedError(f"Clip to {bounds}")
        self._activation(node, acts[bounds])

    def _softmax(self, node, a, name):
        v = self.tensor(node.input[0])
        axis = a.get("axis", -1) % len(v.axes)
        if v.axes[axis] != len(v.t.shape) - 1:
            v = self.plain(v)
            if axis != len(v.axes) - 1:
                raise NotImplementedError(f"{node.op_type} over axis {axis}, not the last")
        self.set(node, Val(L.Activation(name)(v.t), v.axes))

    def op_Softmax(self, node, a):
        self._softmax(node, a, "softmax")

    def op_LogSoftmax(self, node, a):
        self._softmax(node, a, "log_softmax")

    def op_PRelu(self, node, a):
        v = self.plain(self.tensor(node.input[0]))
        slope = self.const(node.input[1])
        layer = L.PReLU()
        t = layer(v.t)
        layer.set_weights([np.broadcast_to(slope, v.t.shape[1:]).copy()])
        self.set(node, Val(t))

    def _binary(self, node, cls):
        a, b = (self.vals.get(n) for n in node.input)
        if not (isinstance(a, Val) and isinstance(b, Val)):
            raise NotImplementedError(f"{node.op_type} with a constant operand (only the bias "
                                      f"of a MatMul is supported)")
        if a.axes == b.axes and a.t.shape == b.t.shape:
            return self.set(node, Val(cls()([a.t, b.t]), a.axes))
        pa, pb = self.plain(a), self.plain(b)
        if pa.t.shape != pb.t.shape:
            raise NotImplementedError(f"{node.op_type} of shapes {pa.t.shape} and {pb.t.shape} "
                                      f"(broadcasting)")
        self.set(node, Val(cls()([pa.t, pb.t])))

    def op_Add(self, node, a):
        self._binary(node, L.Add)

    def op_Sub(self, node, a):
        self._binary(node, L.Subtract)

    def op_Mul(self, node, a):
        self._binary(node, L.Multiply)

    def op_Div(self, node, a):
        if not self._erf_gelu(node):
            raise NotImplementedError("Div (only as part of GELU's erf form)")

    def op_Erf(self, node, a):
        raise NotImplementedError("Erf (only as part of GELU's erf form)")

    def _only_user(self, name, op):
        users = self.consumers.get(name, [])
        if len(users) != 1 or users[0].op_type != op or self.used_as_output_name(name):
            return None
        return users[0]

    def used_as_output_name(self, name):
        return any(o.name == name for o in self.graph.output)

    def _erf_gelu(self, div):
        """x * 0.5 * (1 + erf(x / sqrt(2))) as PyTorch writes GELU below opset 20:
        Div -> Erf -> Add 1 -> Mul x -> Mul 0.5."""
        x = div.input[0]
        k = self.vals.get(div.input[1])
        if not isinstance(self.vals.get(x), Val) or not isinstance(k, np.ndarray) \
                or k.size != 1 or not np.isclose(float(k), np.sqrt(2.0), rtol=1e-5):
            return False
        erf = self._only_user(div.output[0], "Erf")
        add = erf and self._only_user(erf.output[0], "Add")
        if not add or not self._is_const(add, erf.output[0], 1.0):
            return False
        m1 = self._only_user(add.output[0], "Mul")
        if not m1:
            return False
        last = self._only_user(m1.output[0], "Mul")
        if [n for n in m1.input if n != add.output[0]] != [x] or not last \
                or not self._is_const(last, m1.output[0], 0.5):
            return False
        chain = [erf, add, m1, last]
        for n in chain:
            self.skip.add(id(n))
        v = self.vals[x]
        self.set(last, Val(L.Activation("gelu")(v.t), v.axes))
        return True

    def _is_const(self, node, name, value):
        other = [n for n in node.input if n != name]
        c = self.vals.get(other[0]) if len(other) == 1 else None
        return isinstance(c, np.ndarray) and c.size == 1 and np.isclose(float(c), value)

    # recurrent
    def _recurrent(self, node, a, kind):
        direction = a.get("direction", "forward")
        direction = direction.decode() if isinstance(direction, bytes) else direction
        for key in ("clip", "input_forget"):
            if a.get(key):
                raise NotImplementedError(f"{kind} with {key}")
        if a.get("layout", 0):
            raise NotImplementedError(f"{kind} with layout=1")
        if direction not in ("forward", "reverse"):
            raise NotImplementedError(f"{kind} with direction {direction!r} (forward and "
                                      f"reverse only)")
        for i in (4, 5, 6):
            name = self.optional(node, i)
            if name is None:
                continue
            value = self.vals.get(name)
            zero = isinstance(value, Zeros) or (isinstance(value, np.ndarray) and
                                                not np.any(value))
            if i == 4 or not zero:
                raise NotImplementedError(f"{kind} with sequence_lens or non-zero initial "
                                          f"states")
        x = self.tensor(node.input[0])
        if x.axes != [1, 0, 2]:
            p = self.plain(x)
            if len(p.t.shape) != 3:
                raise NotImplementedError(f"{kind} input must be 3-D")
            raise NotImplementedError(f"{kind} input must be (time, batch, features) made "
                                      f"from a (batch, time, features) tensor by a Transpose")
        W, R = self.const(node.input[1])[0], self.const(node.input[2])[0]
        H = int(a["hidden_size"])
        B = self.const(node.input[3])[0] if self.optional(node, 3) else None
        acts = [s.decode() if isinstance(s, bytes) else s for s in a.get("activations", [])]
        defaults = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"],
                    "RNN": ["Tanh"]}[kind]
        names = {"Sigmoid": "sigmoid", "Tanh": "tanh", "Relu": "relu"}
        acts = acts or defaults
        if any(s not in names for s in acts) or (kind == "LSTM" and acts[1] != acts[2]):
            raise NotImplementedError(f"{kind} activations {acts}")
        if kind == "LSTM":
            order = [0, 2, 3, 1]              # Keras i, f, c, o from ONNX i, o, f, c
            cols = np.concatenate([np.arange(k * H, (k + 1) * H) for k in order])
            kernel, rec = W[cols].T, R[cols].T
            bias = None if B is None else (B[:4 * H] + B[4 * H:])[cols]
            layer = dict(cls=L.LSTM, recurrent_activation=names[acts[0]],
                         activation=names[acts[1]])
        elif kind == "GRU":
            if not a.get("linear_before_reset", 0):
                raise NotImplementedError("GRU with linear_before_reset=0 (cyneuron's GRU "
                                          "resets after the recurrent product)")
            kernel, rec = W.T, R.T
            bias = None if B is None else B.reshape(2, 3 * H)
            layer = dict(cls=L.GRU, recurrent_activation=names[acts[0]],
                         activation=names[acts[1]])
        else:
            kernel, rec = W.T, R.T
            bias = None if B is None else B[:H] + B[H:]
            layer = dict(cls=L.SimpleRNN, activation=names[acts[0]])
        cls = layer.pop("cls")
        want_seq = len(node.output) > 0 and bool(node.output[0]) and self.used(node.output[0])
        if len(node.output) > 2 and node.output[2] and self.used(node.output[2]):
            raise NotImplementedError("the LSTM's final cell state output (Y_c)")
        if direction == "reverse" and want_seq:
            raise NotImplementedError(f"{kind} direction 'reverse' with its sequence output")
        rnn = cls(H, use_bias=bias is not None, return_sequences=want_seq,
                  go_backwards=direction == "reverse", **layer)
        t = rnn(x.t)
        rnn.set_weights([kernel, rec] + ([bias] if bias is not None else []))
        if want_seq:
            steps = t.shape[1]
            last = L.Reshape((H,))(L.Cropping1D((steps - 1, 0))(t))
            self.set(node, Val(t, [1, None, 0, 2]), Val(last, [None, 0, 1]))
        else:
            self.set(node, None, Val(t, [None, 0, 1]))

    def op_LSTM(self, node, a):
        self._recurrent(node, a, "LSTM")

    def op_GRU(self, node, a):
        self._recurrent(node, a, "GRU")

    def op_RNN(self, node, a):
        self._recurrent(node, a, "RNN")


def _layer_name(name):
    """A layer name from an ONNX value name."""
    clean = "".join(c if c.isalnum() or c in "_-" else "_" for c in name).strip("_")
    return clean or "input"
