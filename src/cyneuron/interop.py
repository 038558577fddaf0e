"""Weights from the other frameworks: Keras 3 models (live, any backend, or a .keras file
read with zipfile + h5py, no TensorFlow) and PyTorch modules or state dicts.

    net = cn.interop.from_keras(keras_model)          # or from_keras("model.keras")
    net = cn.interop.from_torch(torch_module, like=cn_model)

cyneuron layers use Keras's names, arguments and weight layouts, so a Keras model maps
layer for layer. PyTorch has no architecture to read: `like` gives the cyneuron model,
and the weighted torch modules (Linear, Conv1d/2d, ConvTranspose2d, RNN/LSTM/GRU,
BatchNorm, LayerNorm, Embedding, MultiheadAttention) are paired with its weighted
layers in order, each converted to the Keras layout (transposed kernels, gate order
i,f,c,o for LSTM and z,r,h for GRU, the two torch recurrent biases summed).
Every weight is converted and shape-checked before any is written.
"""
import inspect
import io
import json
import os
import zipfile

import numpy as np

from . import layers as L
from .layers.input_layer import Input
from .models import Model, Sequential, _deserialize, _serialize


# ---------------------------------------------------------------------------------------
# Keras
# ---------------------------------------------------------------------------------------
# Keras config keys that never change what a trained layer computes at inference.
_IGNORED = {"trainable", "dtype", "name", "seed", "unroll", "stateful", "time_major",
            "recurrent_dropout", "zero_output_for_mask", "ragged", "optional",
            "batch_shape", "batch_input_shape", "input_shape", "lora_rank", "lora_alpha",
            "quantization_config", "synchronized", "input_length", "autocast",
            "embeddings_initializer", "renorm_momentum", "renorm_clipping"}
# Keras config values that cyneuron cannot honour, with the value it needs.
_REQUIRED = {"data_format": ("channels_last", None), "groups": (1,), "reset_after": (True,),
             "rms_scaling": (False,), "attention_axes": (None, (1,)), "flash_attention": (None,
                                                                                      False),
             "sparse": (False,), "implementation": (1, 2), "use_gamma": (True,), "renorm": (False,)}

_KERAS_LAYERS = ("Dense", "Activation", "LeakyReLU", "ELU", "PReLU", "Dropout",
                 "BatchNormalization", "LayerNormalization", "Normalization", "Conv1D",
                 "Conv2D", "Conv2DTranspose", "MaxPooling1D", "MaxPooling2D",
                 "AveragePooling1D", "AveragePooling2D", "GlobalMaxPooling1D",
                 "GlobalMaxPooling2D", "GlobalAveragePooling1D", "GlobalAveragePooling2D",
                 "Flatten", "Reshape", "Permute", "RepeatVector", "ZeroPadding2D",
                 "Cropping1D", "Cropping2D", "UpSampling1D", "UpSampling2D", "Embedding",
                 "SimpleRNN", "LSTM", "GRU", "Bidirectional", "TimeDistributed", "Add",
                 "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate",
                 "Dot", "MultiHeadAttention")


def _activation(value):
    if isinstance(value, dict):      # a serialized function {"class_name": ..., "config": ...}
        value = value.get("config", value.get("class_name"))
    return value


def _keras_layer(spec):
    """A cyneuron layer from a Keras layer spec {"class_name", "config"}."""
    cls_name, config = spec.get("class_name"), dict(spec.get("config") or {})
    if cls_name not in _KERAS_LAYERS:
        raise ValueError(f"Keras layer {config.get('name')!r} of class {cls_name!r} has no "
                         f"cyneuron counterpart (supported: {', '.join(_KERAS_LAYERS)})")
    cls = getattr(L, cls_name)
    params = inspect.signature(cls.__init__).parameters
    kwargs = {"name": config.get("name")}
    for key, value in config.items():
        if isinstance(value, list) and key in _REQUIRED:
            value = tuple(value)
        if key in _REQUIRED and value not in _REQUIRED[key]:
            raise ValueError(f"Keras layer {config.get('name')!r}: {key}={value!r} is not "
                             f"supported by cyneuron (it needs {_REQUIRED[key][0]!r})")
        if key in _IGNORED or key in _REQUIRED or key.endswith(("_initializer", "_regularizer",
                                                                "_constraint")):
            continue
        if key == "unit_forget_bias":
            continue                           # an initializer choice
        if key not in params:
            if value in (None, False, 0, 0.0):
                continue
            raise ValueError(f"Keras layer {config.get('name')!r} ({cls_name}): option "
                             f"{key}={value!r} is not supported by cyneuron")
        if key in ("activation", "recurrent_activation"):
            value = _activation(value)
        elif key in ("layer", "backward_layer") and isinstance(value, dict):
            value = _keras_layer(value)
        elif isinstance(value, list) and key not in ("axes",):
            value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        if cls_name in ("LayerNormalization", "BatchNormalization") and key == "axis" \
                and isinstance(value, tuple) and len(value) == 1:
            value = value[0]
        if cls_name == "MultiHeadAttention" and key == "output_shape" \
                and isinstance(value, tuple):
            if len(value) != 1:
                raise ValueError(f"Keras layer {config.get('name')!r}: output_shape {value} "
                                 f"(cyneuron projects to one last axis)")
            value = value[0]
        kwargs[key] = value
    if cls_name == "Normalization":
        for key in ("mean", "variance"):
            if kwargs.get(key) is not None:
                kwargs[key] = np.asarray(kwargs[key], np.float64)
        if kwargs.get("axis") == (-1,):
            kwargs["axis"] = -1
    return cls(**kwargs)


def _keras_input_shape(spec):
    config = spec["config"]
    shape = config.get("batch_shape") or config.get("batch_input_shape")
    if shape is None:
        raise ValueError(f"Keras InputLayer {config.get('name')!r} has no shape")
    return tuple(shape[1:]), config.get("dtype", "float32")


def _build_sequential(config):
    specs = list(config["layers"])
    if specs and specs[0]["class_name"] == "InputLayer":
        shape, dtype = _keras_input_shape(specs.pop(0))
    elif config.get("build_input_shape"):
        shape, dtype = tuple(config["build_input_shape"][1:]), "float32"
    else:
        raise ValueError("the Keras Sequential model has no input shape (build it first)")
    layers = [_keras_layer(s) for s in specs]
    model = Sequential([Input(shape, dtype=_float_dtype(dtype))] + layers,
                       name=config.get("name", "sequential"))
    return model, layers


def _float_dtype(dtype):
    if isinstance(dtype, dict):
        dtype = dtype.get("config", {}).get("name", "float32")
    return dtype if dtype in ("float32", "float64", "int32", "int64") else "float32"


def _build_functional(config):
    tensors, layers = {}, []

    def resolve(arg):
        if isinstance(arg, dict) and arg.get("class_name") == "__keras_tensor__":
            name, node, index = arg["config"]["keras_history"]
            return tensors[(name, node, index)]
        if isinstance(arg, (list, tuple)):
            return [resolve(a) for a in arg]
        return arg

    needed = _needed_layers(config)
    for spec in config["layers"]:
        name = spec.get("name") or spec["config"]["name"]
        if name not in needed:
            continue        # e.g. Keras's NotEqual computing a padding mask
        if spec["class_name"] == "InputLayer":
            shape, dtype = _keras_input_shape(spec)
            tensors[(name, 0, 0)] = Input(shape, dtype=_float_dtype(dtype), name=name)
            continue
        layer = _keras_layer(spec)
        layers.append(layer)
        for k, node in enumerate(spec.get("inbound_nodes", [])):
            args = [resolve(a) for a in node.get("args", [])]
            kwargs = {key: resolve(v) for key, v in (node.get("kwargs") or {}).items()
                      if key not in ("training", "mask")}
            out = layer(*args, **kwargs)
            outs = out if isinstance(out, list) else [out]
            for i, t in enumerate(outs):
                tensors[(name, k, i)] = t

    def pick(entries):
        if entries and not isinstance(entries[0], (list, tuple)):
            entries = [entries]
        return [tensors[tuple(e)] for e in entries]

    ins, outs = pick(config["input_layers"]), pick(config["output_layers"])
    model = Model(ins[0] if len(ins) == 1 else ins, outs[0] if len(outs) == 1 else outs,
                  name=config.get("name"))
    return model, layers


def _history(arg, out):
    """Collect the layer names of the Keras tensors in a node argument."""
    if isinstance(arg, dict) and arg.get("class_name") == "__keras_tensor__":
        out.append(arg["config"]["keras_history"][0])
    elif isinstance(arg, (list, tuple)):
        for a in arg:
            _history(a, out)


def _needed_layers(config):
    """Names of the layers the outputs depend on, masks aside (Keras records the
    padding-mask computation of Embedding(mask_zero=True) as layers of its own)."""
    specs = {(s.get("name") or s["config"]["name"]): s for s in config["layers"]}
    outs = config["output_layers"]
    stack = [outs] if outs and not isinstance(outs[0], (list, tuple)) else list(outs)
    stack = [e[0] for e in stack]
    needed = set()
    while stack:
        name = stack.pop()
        if name in needed:
            continue
        needed.add(name)
        for node in specs[name].get("inbound_nodes", []):
            refs = []
            _history(node.get("args", []), refs)
            for key, value in (node.get("kwargs") or {}).items():
                if key not in ("mask", "training"):
                    _history(value, refs)
            stack.extend(refs)
    return needed


def _snake(name):
    """Keras's default layer name for a class: "Conv2DTranspose" -> "conv2d_transpose"."""
    out = ""
    for i, c in enumerate(name):
        prev = name[i - 1] if i else ""
        nxt = name[i + 1] if i + 1 < len(name) else ""
        if c.isupper() and i and (prev.islower() or nxt.islower()):
            out += "_"
        out += c.lower()
    return out


# Where each layer keeps its variables in a .keras file's model.weights.h5, in
# get_weights() order (sub-paths under "layers/<name>").
_H5_PARTS = {"SimpleRNN": ["cell"], "LSTM": ["cell"], "GRU": ["cell"],
             "MultiHeadAttention": ["query_dense", "key_dense", "value_dense", "output_dense"]}


def _h5_vars(group, cls_name, config):
    if cls_name == "Bidirectional":
        out = []
        for part, key in (("forward_layer", "layer"), ("backward_layer", "backward_layer")):
            inner = config.get(key) or config["layer"]
            out += _h5_vars(group[part], inner["class_name"], inner["config"])
        return out
    if cls_name == "TimeDistributed":
        inner = config["layer"]
        return _h5_vars(group["layer"], inner["class_name"], inner["config"])
    out = []
    for part in _H5_PARTS.get(cls_name, [None]):
        g = group if part is None else group[part]
        if "vars" in g:
            out += [np.asarray(g["vars"][k]) for k in sorted(g["vars"], key=int)]
    return out


def _keras_file(path):
    """(config, {layer name: [weights]}) from a .keras zip, read with zipfile and h5py."""
    try:
        import h5py
    except ImportError:
        raise ImportError("reading a .keras file needs h5py: pip install h5py "
                          "(or pip install \"cyneuron[onnx]\")") from None
    try:
        with zipfile.ZipFile(path) as zf:
            config = json.loads(zf.read("config.json"))
            weights_bytes = zf.read("model.weights.h5")
    except (zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise ValueError(f"{path!s} is not a Keras 3 .keras file: {exc}") from None
    weights = {}
    with h5py.File(io.BytesIO(weights_bytes), "r") as f:
        group = f["layers"] if "layers" in f else f
        counts = {}
        for spec in config["config"]["layers"]:
            if spec["class_name"] == "InputLayer" and config.get("class_name") == "Sequential":
                continue                # a Sequential saves only its layers proper
            # the file names each layer by its class, counted: dense, dense_1, ...
            base = _snake(spec["class_name"])
            k = counts[base] = counts.get(base, -1) + 1
            key = base if k == 0 else f"{base}_{k}"
            if key in group:
                name = spec.get("name") or spec["config"]["name"]
                weights[name] = _h5_vars(group[key], spec["class_name"], spec["config"])
    return config, weights


def _fit_weights(layer, values):
    """Keras weight values for cyneuron `layer` (Normalization drops Keras's count)."""
    if isinstance(layer, L.Normalization):
        if not values:
            return [w.copy() for w in layer._weights]
        return [np.reshape(v, w.shape) for v, w in zip(values[:2], layer._weights)]
    return list(values)


def from_keras(model):
    """A cyneuron model with the architecture and weights of a Keras 3 model (a live
    `keras.Model`, Sequential or functional, on any backend) or of a `.keras` file (read
    with zipfile and h5py: no Keras or TensorFlow needed). Layers without a cyneuron
    counterpart, or options cyneuron does not support, raise a ValueError naming them."""
    if isinstance(model, (str, os.PathLike)):
        config, weights = _keras_file(model)
        kind, body = config.get("class_name"), config.get("config")
    else:
        if not hasattr(model, "get_config") or not hasattr(model, "layers"):
            raise TypeError(f"model must be a Keras model or the path of a .keras file; got "
                            f"{type(model).__name__}")
        kind = "Sequential" if type(model).__name__ == "Sequential" else "Functional"
        body = model.get_config()
        weights = {layer.name: [np.asarray(w) for w in layer.get_weights()]
                   for layer in model.layers}
    if kind == "Sequential":
        net, layers = _build_sequential(body)
    elif kind in ("Functional", "Model"):
        net, layers = _build_functional(body)
    else:
        raise ValueError(f"unsupported Keras model class {kind!r} (Sequential or Functional)")
    new = []
    for layer in net._param_layers:
        values = _fit_weights(layer, weights.get(layer.name, []))
        if len(values) != len(layer._weights):
            raise ValueError(f"layer {layer.name!r}: Keras has {len(values)} weights, cyneuron's "
                             f"{type(layer).__name__} has {len(layer._weights)}")
        new.extend(values)
    net.set_weights(new)
    return net


# ---------------------------------------------------------------------------------------
# PyTorch
# ---------------------------------------------------------------------------------------
def _numpy(value):
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _torch_groups(state):
    """The state dict as a list of (prefix, {param: array}) per weighted module, in order;
    multi-layer recurrent modules become one group per layer (both directions in one),
    and a MultiheadAttention's out_proj joins its group."""
    groups, index = [], {}
    for key, value in state.items():
        prefix, _, param = key.rpartition(".")
        if param == "num_batches_tracked":
            continue
        if param.startswith(("weight_ih_l", "weight_hh_l", "bias_ih_l", "bias_hh_l")):
            layer = param.split("_l", 1)[1].replace("_reverse", "")
            prefix, param = f"{prefix}#l{layer}", param.replace(f"_l{layer}", "")
        owner = prefix.rpartition(".")[0]
        if prefix.endswith("out_proj") and owner in index and \
                any(k.endswith("proj_weight") for k in groups[index[owner]][1]):
            groups[index[owner]][1]["out_proj." + param] = _numpy(value)
            continue
        if prefix not in index:
            index[prefix] = len(groups)
            groups.append((prefix, {}))
        groups[index[prefix]][1][param] = _numpy(value)
    return groups


def _cn_units(model):
    """The weighted leaf layers of a cyneuron model in weight order (a Bidirectional is
    one unit; a TimeDistributed is its inner layer)."""
    out = []
    for layer in model._param_layers:
        if isinstance(layer, Model):
            out.extend(_cn_units(layer))
        elif isinstance(layer, L.TimeDistributed):
            out.append(layer.layer)
        elif hasattr(layer, "_sublayers") and not isinstance(layer, L.Bidirectional):
            out.extend(s for s in layer._sublayers() if s._weights)
        elif layer._weights:
            out.append(layer)
    return out


def _need(params, keys, prefix, what):
    missing = [k for k in keys if k not in params]
    if missing:
        raise ValueError(f"torch module {prefix!r} has no {missing} for cyneuron {what}; "
                         f"it has {sorted(params)}")
    return [params[k] for k in keys]


def _torch_recurrent(layer, params, prefix, suffix=""):
    """kernel, recurrent_kernel(, bias) of a SimpleRNN/LSTM/GRU from torch's tensors."""
    w_ih, w_hh = _need(params, ["weight_ih" + suffix, "weight_hh" + suffix], prefix,
                       type(layer).__name__)
    H = layer.units
    if isinstance(layer, L.GRU):
        order = np.concatenate([np.arange(H, 2 * H), np.arange(H), np.arange(2 * H, 3 * H)])
    else:
        order = np.arange(w_ih.shape[0])     # torch's LSTM gates i, f, g, o are Keras's
    out = [w_ih[order].T, w_hh[order].T]
    if layer.use_bias:
        b_ih, b_hh = _need(params, ["bias_ih" + suffix, "bias_hh" + suffix], prefix,
                           type(layer).__name__)
        out.append(np.stack([b_ih[order], b_hh[order]]) if isinstance(layer, L.GRU)
                   else (b_ih + b_hh)[order])
    return out


def _torch_weights(layer, params, prefix):
    """cyneuron `layer`'s weights (Keras layouts) from one torch group."""
    kind = type(layer).__name__
    if isinstance(layer, L.Bidirectional):
        return (_torch_recurrent(layer.forward_layer, params, prefix) +
                _torch_recurrent(layer.backward_layer, params, prefix, "_reverse"))
    if isinstance(layer, L.RNN):
        return _torch_recurrent(layer, params, prefix)
    if isinstance(layer, L.MultiHeadAttention):
        return _torch_attention(layer, params, prefix)
    if isinstance(layer, L.Dense):
        (w,) = _need(params, ["weight"], prefix, kind)
        return [w.T] + (_need(params, ["bias"], prefix, kind) if layer.use_bias else [])
    if isinstance(layer, L.Conv2DTranspose):
        (w,) = _need(params, ["weight"], prefix, kind)
        return [w.transpose(2, 3, 1, 0)] + (_need(params, ["bias"], prefix, kind)
                                            if layer.use_bias else [])
    if isinstance(layer, (L.Conv1D, L.Conv2D)):
        (w,) = _need(params, ["weight"], prefix, kind)
        perm = (2, 3, 1, 0) if w.ndim == 4 else (2, 1, 0)
        return [w.transpose(perm)] + (_need(params, ["bias"], prefix, kind)
                                      if layer.use_bias else [])
    if isinstance(layer, L.BatchNormalization):
        keys = (["weight"] if layer.scale else []) + (["bias"] if layer.center else []) + \
            ["running_mean", "running_var"]
        return _need(params, keys, prefix, kind)
    if isinstance(layer, L.LayerNormalization):
        keys = (["weight"] if layer.scale else []) + (["bias"] if layer.center else [])
        return _need(params, keys, prefix, kind)
    if isinstance(layer, L.Embedding) and not isinstance(layer, L.TokenAndPositionEmbedding):
        return _need(params, ["weight"], prefix, kind)
    raise ValueError(f"cyneuron layer {layer.name!r} ({kind}) has no PyTorch counterpart")


def _torch_attention(layer, params, prefix):
    H, dk, dv = layer.num_heads, layer.key_dim, layer.value_dim
    if "in_proj_weight" in params:
        wq, wk, wv = np.split(params["in_proj_weight"], 3)
    else:
        wq, wk, wv = _need(params, ["q_proj_weight", "k_proj_weight", "v_proj_weight"],
                           prefix, "MultiHeadAttention")
    (wo,) = _need(params, ["out_proj.weight"], prefix, "MultiHeadAttention")
    out = []
    biases = np.split(params["in_proj_bias"], 3) if "in_proj_bias" in params else None
    for w, b, d in ((wq, 0, dk), (wk, 1, dk), (wv, 2, dv)):
        out.append(w.T.reshape(w.shape[1], H, d))
        if layer.use_bias:
            if biases is None:
                raise ValueError(f"torch module {prefix!r} has no in_proj_bias for cyneuron "
                                 f"MultiHeadAttention {layer.name!r} (use_bias=True)")
            out.append(biases[b].reshape(H, d))
    out.append(wo.T.reshape(H, dv, wo.shape[0]))
    if layer.use_bias:
        out.extend(_need(params, ["out_proj.bias"], prefix, "MultiHeadAttention"))
    return out


def from_torch(module_or_state_dict, like):
    """A copy of the cyneuron model `like` (built) holding the weights of a PyTorch
    module or state dict. The torch modules with weights are paired in order with the
    weighted layers of `like` (Linear -> Dense, Conv1d/Conv2d -> Conv1D/Conv2D,
    ConvTranspose2d -> Conv2DTranspose, RNN/LSTM/GRU -> SimpleRNN/LSTM/GRU (one per
    torch layer; bidirectional -> Bidirectional), BatchNorm -> BatchNormalization,
    LayerNorm -> LayerNormalization, Embedding, MultiheadAttention -> MultiHeadAttention
    with key_dim = embed_dim / num_heads). Names and shapes that do not fit raise a
    ValueError before anything is written; `like` itself is not changed."""
    if not isinstance(like, Model) or not like.built:
        raise TypeError("like must be a built cyneuron Sequential or Model (the architecture "
                        "the torch weights fill)")
    state = module_or_state_dict
    if hasattr(state, "state_dict") and callable(state.state_dict):
        state = state.state_dict()
    if not hasattr(state, "items"):
        raise TypeError(f"module_or_state_dict must be a torch.nn.Module or a state dict; got "
                        f"{type(module_or_state_dict).__name__}")
    groups = _torch_groups(state)
    net = _deserialize(_serialize(like))
    net.set_weights(like.get_weights())
    units = _cn_units(net)
    if len(groups) != len(units):
        raise ValueError(f"the torch weights come in {len(groups)} modules "
                         f"{[p.split('#')[0] for p, _ in groups]}, but the cyneuron model has "
                         f"{len(units)} weighted layers {[u.name for u in units]}")
    new = {}
    for layer, (prefix, params) in zip(units, groups):
        values = _torch_weights(layer, params, prefix.split("#")[0])
        checked = layer._check_weights(values)
        for w, v in zip(layer._weights, checked):
            new[id(w)] = v
    flat = [new.get(id(w), w) for w in _all_weights(net)]
    net.set_weights(flat)
    return net


def _all_weights(model):
    out = []
    for layer in model._param_layers:
        out.extend(_all_weights(layer) if isinstance(layer, Model) else layer._weights)
    return out


__all__ = ["from_keras", "from_torch"]
