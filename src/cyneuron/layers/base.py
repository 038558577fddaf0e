"""Layer: the base class every layer derives from.

A layer builds lazily from the per-sample shape of its first input and owns its
weights, their gradients, and the buffers of its outputs (reused while the batch
shape is unchanged). Inside a model, trainable weights and their gradients are
views into the model's two flat buffers, so an optimizer step is one kernel call.
Non-trainable weights (BatchNormalization's moving statistics, Normalization's
mean and variance) are state the layer itself updates: they stay arrays of the
layer, outside the flat buffers, so no optimizer touches them; they still appear
in get_weights() order, and their "gradient" in get_gradients() is always zero
(the loss does not depend on them while training).

Public `forward` / `backward` check their input; models call the unchecked
`_forward` / `_backward` on data they validated once.

Every public Layer subclass defined in cyneuron registers itself by class name, so a
saved model names its layers as {"class_name": ..., "config": layer.get_config()} and
loading rebuilds them with `cls.from_config(config)` (by default `cls(**config)`): a
new layer type plugs into saving by returning its constructor arguments from get_config.
"""
import copy
import functools
import itertools
import re

import numpy as np

from .. import regularizers as _regularizers
from .._memory import empty_aligned
from .._validation import as_dtype, check_numeric

_name_counters = {}
_LAYER_CLASSES = {}   # class name -> Layer subclass, for deserialization


def _unique_name(base):
    counter = _name_counters.setdefault(base, itertools.count())
    index = next(counter)
    return base if index == 0 else f"{base}_{index}"


def _snake_case(name):
    """Keras's rule: BatchNormalization -> batch_normalization, LSTM -> lstm, Conv2D -> conv2d."""
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


# The file reader (saving.py) builds a model from a file's architecture before it can
# compare the weights: a stack of budgets, each the number of weight elements the file
# declares, makes a forged architecture (e.g. a huge input shape before Flatten + Dense)
# fail with ValueError before allocating, instead of exhausting memory.
_weight_budget = []


class WeightBudget:
    """Context manager: add_weight may create at most `elements` elements in all."""

    def __init__(self, elements):
        self.left = int(elements)

    def spend(self, shape, layer_name):
        try:
            size = int(np.prod([int(d) for d in shape], dtype=object))
        except (TypeError, ValueError):
            return      # the initializer raises its own error for a bad shape
        if size > self.left:
            raise ValueError(f"the weights do not fit the model: layer {layer_name!r} needs "
                             f"a weight of shape {tuple(shape)}, more than the file declares")
        self.left -= size

    def __enter__(self):
        _weight_budget.append(self)
        return self

    def __exit__(self, *exc):
        _weight_budget.remove(self)


def _with_regularizers(init):
    """Wrap a layer's __init__ so that it also takes `activity_regularizer=` (every
    layer) and `<stem>_regularizer=` for each stem of the class's `_regularizable`
    (Keras's kernel_regularizer, bias_regularizer, ...), without each layer's
    constructor spelling them out."""
    @functools.wraps(init)
    def __init__(self, *args, activity_regularizer=None, **kwargs):
        chosen = {}
        for stem in type(self)._regularizable:
            value = kwargs.pop(f"{stem}_regularizer", None)
            if value is not None:
                chosen[stem] = value
        init(self, *args, **kwargs)
        if activity_regularizer is not None:
            self.activity_regularizer = _regularizers.get(activity_regularizer)
        if chosen:
            self._weight_regularizers = {**self._weight_regularizers,
                                         **{k: _regularizers.get(v) for k, v in chosen.items()}}
    return __init__


class Layer:
    # False freezes the layer: a model's optimizer step leaves its weights alone (Keras).
    trainable = True
    # set by Model.backward(weight_grads=False) for its duration: layers that can skip
    # their weight-gradient work do (their gradients are zeroed by the model)
    _skip_weight_grads = False
    # Inputs a layer takes when called in a graph: 1, or "many" (merge layers take a list).
    _n_inputs = 1
    # A penalty on the layer's output (cn.regularizers), added to the training loss.
    activity_regularizer = None
    # Weight regularizers a layer accepts: {stem: weight names}; `stem_regularizer=`
    # applies to those weights (e.g. {"kernel": ("kernel",), "bias": ("bias",)}).
    _regularizable = {}
    _weight_regularizers = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        private = (cls.__name__.startswith("_") or cls.__dict__.get("_abstract", False)
                   or cls.__module__.rsplit(".", 1)[-1].startswith("_"))
        if cls.__module__.startswith("cyneuron.") and not private:   # not abstract bases
            _LAYER_CLASSES[cls.__name__] = cls
        if "__init__" in cls.__dict__:
            cls.__init__ = _with_regularizers(cls.__dict__["__init__"])

    def _regularized_weights(self):
        """(weight, gradient, regularizer) for each trainable weight with a regularizer."""
        out = []
        for stem, reg in self._weight_regularizers.items():
            names = self._regularizable[stem]
            for w, g, name, t in zip(self._weights, self._gradients, self._weight_names,
                                     self._trainable):
                if t and name in names:
                    out.append((w, g, reg))
        return out

    def _regularizer_config(self):
        """The regularizer arguments of get_config (only those set)."""
        config = {f"{stem}_regularizer": _regularizers.serialize(reg)
                  for stem, reg in self._weight_regularizers.items()}
        if self.activity_regularizer is not None:
            config["activity_regularizer"] = _regularizers.serialize(self.activity_regularizer)
        return config

    def __init__(self, name=None, dtype=None):
        self.name = name if name is not None else _unique_name(_snake_case(type(self).__name__))
        self.dtype = None if dtype is None else as_dtype(dtype, "dtype")
        self.built = False
        self.input_shape = None      # per-sample shape, without the batch axis
        self._weights = []
        self._gradients = []
        self._weight_names = []
        self._trainable = []         # per weight: True when it lives in the flat buffers
        self._buffers = {}

    # -- building -------------------------------------------------------------
    def build(self, input_shape):
        """Create the weights for inputs of per-sample shape `input_shape`."""
        self.input_shape = tuple(int(d) for d in input_shape)
        self.built = True

    def add_weight(self, name, shape, initializer, trainable=True):
        """Create a weight. trainable=False: state the layer updates itself, kept out of
        the optimizer's flat buffer (its gradient stays zero)."""
        if _weight_budget:      # loading a file: never allocate more than it declares
            _weight_budget[-1].spend(shape, self.name)
        value = initializer(shape, dtype=self.dtype)
        if not value.flags.c_contiguous:   # e.g. orthogonal's transpose (keeps 0-d as 0-d)
            value = value.copy(order="C")
        self._weights.append(value)
        self._gradients.append(np.zeros_like(value))
        self._weight_names.append(name)
        self._trainable.append(bool(trainable))
        return value

    def compute_output_shape(self, input_shape):
        """Per-sample output shape for per-sample `input_shape`."""
        return tuple(input_shape)

    def _accepts_input_shape(self, input_shape):
        """Whether this built layer takes inputs of per-sample `input_shape` (checked when
        it is called again in a graph); by default only the shape it was built for."""
        return tuple(input_shape) == tuple(self.input_shape)

    def count_params(self):
        """Number of weights, trainable and non-trainable (as Keras counts them)."""
        return int(sum(w.size for w in self._weights))

    def _count_trainable(self):
        return int(sum(w.size for w in self.trainable_weights))

    def _bind(self, params, grads, offset):
        """Move the trainable weights into params[offset:...] (and gradients likewise);
        return the new offset. Non-trainable weights stay the layer's own arrays."""
        for i, w in enumerate(self._weights):
            if not self._trainable[i]:
                continue
            view = params[offset:offset + w.size].reshape(w.shape)
            view[...] = w
            self._weights[i] = view
            self._gradients[i] = grads[offset:offset + w.size].reshape(w.shape)
            offset += w.size
        return offset

    def _build_standalone(self, x):
        """Build from a first input outside a model: the layer gets its own flat buffers."""
        if self.dtype is None:
            self.dtype = np.dtype(np.float32)
        self.build(x.shape[1:])
        size = self._count_trainable()
        self._bind(np.empty(size, self.dtype), np.zeros(size, self.dtype), 0)

    # -- running --------------------------------------------------------------
    def __call__(self, inputs, training=False, **kwargs):
        """On symbolic tensors (cn.Input and layers called on it): record a node of the
        graph and return its symbolic output. On arrays: `forward(inputs, training)`."""
        from . import input_layer

        if input_layer.is_symbolic(inputs):
            if kwargs:
                raise TypeError(f"layer {self.name!r}: unexpected arguments "
                                f"{sorted(kwargs)} when called on symbolic tensors")
            return input_layer.call_symbolic(self, inputs)
        return self.forward(inputs, training=training, **kwargs)

    def _replica(self):
        """A copy for a second call of this layer in a graph: the same weight arrays, its
        own buffers and per-call state, and its own parameter gradients (the model adds
        them into this layer's after the backward pass)."""
        r = copy.copy(self)
        # r's dict is a snapshot: another thread may be running (and adding attributes
        # to) this layer while the replica is made
        for key, value in list(r.__dict__.items()):
            if key.startswith("_") and isinstance(value, dict):
                r.__dict__[key] = {}        # buffers and shape-keyed caches
        r._gradients = [np.zeros_like(g) for g in self._gradients]
        r._replica_of = self
        return r

    def forward(self, x, training=False):
        """Output for a batch `x`. The array returned is owned by the layer and is
        overwritten by its next forward call: copy it to keep it."""
        x = self._check_input(x)
        if self._shares_buffer(x):
            x = x.copy()  # fed its own output: the buffer is about to be overwritten
        return self._forward(x, training)

    def backward(self, grad_output):
        """Gradient w.r.t. the input of the last forward call; fills get_gradients()."""
        if not hasattr(self, "_last_output_shape"):
            raise RuntimeError(f"layer {self.name!r}: call forward before backward")
        g = check_numeric(grad_output, "grad_output")
        if g.shape != self._last_output_shape:
            raise ValueError(f"grad_output must have the shape of the last output "
                             f"{self._last_output_shape}; got {g.shape}")
        g = np.ascontiguousarray(g, dtype=self.dtype)
        return self._backward(g, need_input_grad=True)

    def _forward(self, x, training):
        raise NotImplementedError

    def _backward(self, grad_output, need_input_grad):
        raise NotImplementedError

    def _check_input(self, x):
        x = check_numeric(x, "x")
        if x.ndim < 2:
            raise ValueError(f"layer {self.name!r}: x must have a batch axis; got shape {x.shape}")
        if x.shape[0] == 0:
            raise ValueError(f"layer {self.name!r}: x is empty (shape {x.shape})")
        if not self.built:
            self._build_standalone(x)
        if x.shape[1:] != self.input_shape:
            raise ValueError(f"layer {self.name!r} was built for inputs of shape "
                             f"(batch, {', '.join(map(str, self.input_shape))}); got {x.shape}")
        return np.ascontiguousarray(x, dtype=self.dtype)

    def _shares_buffer(self, x):
        """True when x shares memory with one of this layer's scratch arrays."""
        spares = self.__dict__.get("_spare_buffers", {})
        return any(np.shares_memory(x, buf) for bufs in (self._buffers, spares)
                   for buf in bufs.values())

    def _buffer(self, key, shape):
        """A scratch array reused across calls while `shape` is unchanged. The array of
        the shape before is kept too and comes back when that shape does: batch sizes
        often alternate (a GAN's discriminator sees 2n then n samples each step), and a
        fresh array of megabytes costs its page faults on every switch."""
        buf = self._buffers.get(key)
        if buf is None or buf.shape != shape or buf.dtype != self.dtype:
            spares = self.__dict__.setdefault("_spare_buffers", {})
            spare = spares.get(key)
            if buf is not None:
                spares[key] = buf
            if spare is None or spare.shape != shape or spare.dtype != self.dtype:
                spare = empty_aligned(shape, self.dtype)
            buf = self._buffers[key] = spare
        return buf

    # -- weights --------------------------------------------------------------
    def get_weights(self):
        """Copies of the weights, in Keras order and layout."""
        return [w.copy() for w in self._weights]

    def set_weights(self, weights):
        """Copy `weights` (get_weights() order and shapes) in; nothing changes if any is wrong."""
        for current, new in zip(self._weights, self._check_weights(weights)):
            current[...] = new

    def _check_weights(self, weights):
        weights = list(weights)
        if len(weights) != len(self._weights):
            raise ValueError(f"layer {self.name!r} expects {len(self._weights)} weight arrays "
                             f"({', '.join(self._weight_names) or 'none'}); got {len(weights)}")
        checked = []
        for name, current, new in zip(self._weight_names, self._weights, weights):
            new = check_numeric(new, f"weights[{name!r}]")
            if new.shape != current.shape:
                raise ValueError(f"layer {self.name!r}: {name} must have shape {current.shape}; "
                                 f"got {new.shape}")
            checked.append(new)
        return checked

    def get_gradients(self):
        """Copies of the parameter gradients from the last backward, in get_weights() order."""
        return [g.copy() for g in self._gradients]

    @property
    def weights(self):
        """The live weight arrays, in get_weights() order."""
        return list(self._weights)

    @property
    def trainable_weights(self):
        return [w for w, t in zip(self._weights, self._trainable) if t]

    @property
    def non_trainable_weights(self):
        return [w for w, t in zip(self._weights, self._trainable) if not t]

    def get_config(self):
        """The constructor arguments (JSON types) that rebuild this layer, weights aside."""
        return {"name": self.name}

    @classmethod
    def from_config(cls, config):
        """A new, unbuilt layer from get_config()'s dict."""
        return cls(**config)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_buffers"] = {}   # scratch arrays: rebuilt on the next call
        state.pop("_spare_buffers", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        # unpickled from a read-only memory map (joblib): the layer writes its state
        self._weights = [np.require(w, requirements=["C", "W"]) for w in self._weights]
        self._gradients = [np.require(g, requirements=["C", "W"]) for g in self._gradients]

    def __repr__(self):
        return f"<{type(self).__name__} name={self.name!r} built={self.built}>"


Layer.__init__ = _with_regularizers(Layer.__init__)   # layers without their own __init__


def serialize(layer):
    """{"class_name": ..., "config": ...} for a layer (the form saved model files use)."""
    if not isinstance(layer, Layer):
        raise TypeError(f"expected a cyneuron Layer, got {type(layer).__name__}")
    config = layer.get_config()
    if layer.activity_regularizer is not None or layer._weight_regularizers:
        config = {**config, **layer._regularizer_config()}
    return {"class_name": type(layer).__name__, "config": config}


def get_class(class_name, custom_objects=None):
    """The Layer subclass called `class_name`: a cyneuron layer, or one in `custom_objects`."""
    custom_objects = custom_objects or {}
    cls = custom_objects.get(class_name, _LAYER_CLASSES.get(class_name))
    if not (isinstance(cls, type) and issubclass(cls, Layer)):
        raise ValueError(f"unknown layer class {class_name!r}; cyneuron layers are "
                         f"{sorted(_LAYER_CLASSES)} (pass your own through custom_objects)")
    return cls


def deserialize(spec, custom_objects=None):
    """The layer that serialize() described (unbuilt). Bad specs raise ValueError."""
    if not isinstance(spec, dict) or not isinstance(spec.get("class_name"), str) \
            or not isinstance(spec.get("config", {}), dict):
        raise ValueError(f"a layer spec must be a dict with a 'class_name' string and a "
                         f"'config' dict; got {spec!r}")
    cls = get_class(spec["class_name"], custom_objects)
    try:
        return cls.from_config(dict(spec.get("config", {})))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"invalid config for layer {spec['class_name']}: {exc}") from None
