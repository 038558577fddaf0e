"""Symbolic tensors and graph nodes: what `cn.Input` returns and layers called on it record.

`x = cn.Input(shape=(20,))` is a symbolic tensor (per-sample shape, dtype, the node that
made it). Calling a layer on symbolic tensors builds the layer for their shape at once
(so a shape that does not fit fails here, naming the layer) and records a Node: the layer
and its input tensors. `cn.Model(inputs, outputs)` walks the nodes back from the outputs.
"""
import numpy as np

from .._validation import as_dtype
from .base import Layer

# Layers that pass an incoming padding mask on to their output (Keras's supports_masking);
# a layer may also say so itself with a `supports_masking` attribute.
_MASK_PASSING = {"Dense", "Activation", "LeakyReLU", "ELU", "PReLU", "Dropout",
                 "LayerNormalization", "BatchNormalization", "TimeDistributed", "Masking",
                 "Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate"}


class SymbolicTensor:
    """A tensor of a graph under construction: `shape` (batch first, None), `dtype`,
    `node` (the Node that outputs it) and `index` among that node's outputs."""

    __slots__ = ("shape", "dtype", "node", "index", "has_mask", "__weakref__")

    def __init__(self, shape, dtype, node, index=0, has_mask=False):
        self.shape = (None,) + tuple(int(d) for d in shape)
        self.dtype = dtype
        self.node = node
        self.index = index
        self.has_mask = has_mask

    @property
    def ndim(self):
        return len(self.shape)

    @property
    def name(self):
        layer = self.node.layer
        return layer.name if len(self.node.outputs) <= 1 else f"{layer.name}/{self.index}"

    def __repr__(self):
        return f"<SymbolicTensor shape={self.shape} dtype={self.dtype.name} name={self.name!r}>"

    def __array__(self, *args, **kwargs):
        raise TypeError(f"{self!r} is symbolic: it has no values. Build a cn.Model(inputs, "
                        f"outputs) and call predict, or call layers on numpy arrays")


class Node:
    """One call of `layer` on `inputs` (symbolic tensors) with symbolic `outputs`."""

    __slots__ = ("layer", "inputs", "outputs", "many_inputs")

    def __init__(self, layer, inputs, many_inputs):
        self.layer = layer
        self.inputs = list(inputs)
        self.many_inputs = many_inputs
        self.outputs = []


class InputLayer(Layer):
    """The source of a graph: holds the per-sample shape and dtype of one model input."""

    def __init__(self, shape, dtype=None, name=None):
        super().__init__(name=name, dtype=dtype if dtype is not None else "float32")
        shape = _check_shape(shape)
        self.build(shape)

    def get_config(self):
        return {"name": self.name, "shape": list(self.input_shape), "dtype": self.dtype.name}

    def _forward(self, x, training):
        return x

    def _backward(self, grad_output, need_input_grad):
        return grad_output if need_input_grad else None


def _check_shape(shape):
    if shape is None:
        raise ValueError("Input: shape is required, the per-sample shape without the batch "
                         "axis, e.g. shape=(20,)")
    if np.isscalar(shape):
        shape = (shape,)
    try:
        shape = tuple(shape)
    except TypeError:
        raise TypeError(f"Input: shape must be a tuple of sizes, got {shape!r}") from None
    for d in shape:
        if d is None:
            raise ValueError(f"Input: shape {shape} has an unknown size (None); cyneuron "
                             f"graphs need every per-sample size (the batch axis is implied)")
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1:
            raise ValueError(f"Input: shape must hold positive integers, got {shape!r}")
    return tuple(int(d) for d in shape)


def Input(shape=None, dtype=None, name=None, batch_size=None):
    """A symbolic model input of per-sample `shape` (no batch axis), as keras.Input.

    dtype: "float32" (default) or "float64"; integer dtypes are accepted for token ids
    (Embedding inputs) and mean float32 compute. batch_size is accepted and ignored.
    """
    compute = None
    if dtype is not None:
        dt = np.dtype(dtype)
        if dt.kind in "biu":
            compute = np.dtype(np.float32)
        else:
            compute = as_dtype(dt, "dtype")
    layer = InputLayer(shape, dtype=compute, name=name)
    node = Node(layer, [], many_inputs=False)
    tensor = SymbolicTensor(layer.input_shape, layer.dtype, node)
    node.outputs.append(tensor)
    layer._node = node
    return tensor


def is_symbolic(inputs):
    if isinstance(inputs, SymbolicTensor):
        return True
    if isinstance(inputs, dict):
        inputs = list(inputs.values())
    return isinstance(inputs, (list, tuple)) and len(inputs) > 0 and any(
        isinstance(t, SymbolicTensor) for t in inputs)


def _passes_mask(layer):
    flag = getattr(layer, "supports_masking", None)
    if flag is not None:
        return bool(flag)
    if getattr(layer, "return_sequences", False) and hasattr(layer, "units"):
        return True   # recurrent layers (and Bidirectional) with return_sequences
    return type(layer).__name__ in _MASK_PASSING


def output_has_mask(layer, inputs):
    """Whether the output of `layer` on `inputs` carries a padding mask (static)."""
    if getattr(layer, "mask_zero", False):
        return True
    if hasattr(layer, "_output_has_mask"):          # nested models
        return layer._output_has_mask(inputs)
    return any(t.has_mask for t in inputs) and _passes_mask(layer)


def connect(layer, inputs, many_inputs, output_shapes, has_mask=None):
    """Record a node of `layer` on `inputs` with outputs of per-sample `output_shapes`
    (a list); the layer must already be built. Returns the output tensors."""
    node = Node(layer, inputs, many_inputs)
    dtype = layer.dtype if layer.dtype is not None else inputs[0].dtype
    masks = has_mask if isinstance(has_mask, list) else \
        [output_has_mask(layer, inputs) if has_mask is None else has_mask] * len(output_shapes)
    for i, shape in enumerate(output_shapes):
        node.outputs.append(SymbolicTensor(shape, dtype, node, i, masks[i]))
    return node.outputs


def call_symbolic(layer, inputs):
    """`layer(inputs)` on symbolic tensors: check, build, and record the node."""
    if isinstance(inputs, dict):
        if not hasattr(layer, "_input_names"):
            raise TypeError(f"layer {layer.name!r} ({type(layer).__name__}) takes a tensor or a "
                            f"list of tensors, not a dict")
        inputs = layer._inputs_from_dict(inputs)
    many = isinstance(inputs, (list, tuple))
    tensors = list(inputs) if many else [inputs]
    for i, t in enumerate(tensors):
        if not isinstance(t, SymbolicTensor):
            raise TypeError(f"layer {layer.name!r} ({type(layer).__name__}) called on a mix of "
                            f"symbolic tensors and {type(t).__name__} (input {i}); call it on "
                            f"the outputs of cn.Input and other layers")
    kind = type(layer).__name__
    wanted = layer._n_inputs
    if wanted == "many":
        if not many or len(tensors) < 2:
            raise ValueError(f"layer {layer.name!r} ({kind}) merges a list of at least 2 "
                             f"tensors; got {len(tensors)}")
    elif wanted == 1:
        if many:
            if len(tensors) != 1:
                raise ValueError(f"layer {layer.name!r} ({kind}) takes one input tensor; "
                                 f"got a list of {len(tensors)}")
            many = False
    elif len(tensors) != wanted:
        raise ValueError(f"layer {layer.name!r} ({kind}) takes {wanted} input tensors; got "
                         f"{len(tensors)}")
    if getattr(layer, "return_state", False):
        raise NotImplementedError(f"layer {layer.name!r}: return_state=True is not supported "
                                  f"in functional graphs (the states are not graph outputs yet)")
    dtypes = {t.dtype for t in tensors}
    if len(dtypes) > 1:
        raise ValueError(f"layer {layer.name!r} ({kind}) called on tensors of different dtypes "
                         f"{sorted(d.name for d in dtypes)}")
    dtype = tensors[0].dtype
    if layer.dtype is None:
        layer.dtype = dtype
    elif layer.dtype != dtype:
        raise ValueError(f"layer {layer.name!r} ({kind}) is {layer.dtype.name} but is called on a "
                         f"{dtype.name} tensor; give cn.Input the model's dtype")
    shapes = [t.shape[1:] for t in tensors]
    arg = shapes if many else shapes[0]
    shown = ", ".join(str(t.shape) for t in tensors)
    if layer.built:
        if hasattr(layer, "_check_call_shapes"):
            layer._check_call_shapes(arg)
        elif not layer._accepts_input_shape(arg):
            raise ValueError(f"layer {layer.name!r} ({kind}) was built for inputs of shape "
                             f"{(None,) + tuple(layer.input_shape)}; it is called on {shown}")
    else:
        try:
            layer.build(arg)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"layer {layer.name!r} ({kind}) cannot take input {shown}: {exc}") \
                from None
    try:
        out = layer.compute_output_shape(arg)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"layer {layer.name!r} ({kind}) cannot take input {shown}: {exc}") \
            from None
    multi_out = isinstance(out, list)
    outputs = connect(layer, tensors, many, out if multi_out else [out])
    return outputs if multi_out else outputs[0]
