"""Sequential: a linear stack of layers, the graph engine's one-path case."""
from .. import _config
from .._validation import as_dtype
from ..layers.base import Layer
from ..layers.input_layer import Input, InputLayer, SymbolicTensor, connect
from ._graph import _sample_shape
from .model import Model, _deserialize, _serialize


class Sequential(Model):
    """A linear stack of layers: the graph engine's one-path case (same plan, same
    fused paths, no extra cost).

    layers: list of Layer (a first `cn.Input(shape)` fixes the input shape).
    dtype: 'float32' (default) or 'float64' for every layer.
    """

    _keep_layers = True
    _abstract = True

    def __init__(self, layers=None, name="sequential", dtype="float32"):
        Layer.__init__(self, name=name, dtype=None)
        self._init_model_state()
        self.dtype = as_dtype(dtype, "dtype")
        self.layers = []
        self.built = False
        self.input_shape = None
        self._param_layers = []
        self._in_struct = self._out_struct = "single"
        self.inputs, self.outputs = [], []
        self.input_names, self.output_names = [], [name]
        pending_input = None
        for i, layer in enumerate(layers or []):
            if i == 0 and isinstance(layer, SymbolicTensor) and isinstance(layer.node.layer,
                                                                             InputLayer):
                pending_input = layer.shape[1:]
                continue
            self.add(layer)
        if pending_input is not None and self.layers:
            self.build(pending_input)

    # -- structure --------------------------------------------------------------
    def add(self, layer):
        if isinstance(layer, SymbolicTensor):
            raise TypeError("cn.Input goes first in Sequential([cn.Input(shape), ...])")
        if not isinstance(layer, Layer):
            raise TypeError(f"layers must be cyneuron Layer instances; got {type(layer).__name__}")
        if self.built:
            raise RuntimeError("cannot add layers to a model that is already built")
        if any(layer is existing for existing in self.layers):
            raise ValueError(f"layer {layer.name!r} is already in the model; a layer instance "
                             f"can appear only once (its buffers hold one forward pass)")
        if layer.dtype is not None and layer.dtype != self.dtype:
            raise ValueError(f"layer {layer.name!r} has dtype {layer.dtype.name} but the model "
                             f"is {self.dtype.name}; set dtype on the model")
        if getattr(layer, "_n_inputs", 1) != 1:
            raise ValueError(f"layer {layer.name!r} ({type(layer).__name__}) takes several "
                             f"inputs; it cannot be a step of a Sequential model")
        self.layers.append(layer)

    def build(self, input_shape):
        """Build every layer for the per-sample `input_shape` (e.g. (784,); (None, 784)
        with the batch axis is accepted too) and gather the parameters into the model's
        flat buffers."""
        if not self.layers:
            raise ValueError("the model has no layers")
        shape = _sample_shape(input_shape)
        if self.built:
            if shape != self.input_shape:
                raise ValueError(f"the model is built for inputs {self.input_shape}; got {shape}")
            return
        inp = Input(shape=shape, dtype=self.dtype.name, name=f"{self.name}_input")
        t = inp
        for layer in self.layers:
            here = t.shape[1:]
            if layer.built and not isinstance(layer, Model) and \
                    not layer._accepts_input_shape(here):
                raise ValueError(f"layer {layer.name!r} was built for inputs {layer.input_shape}, "
                                 f"but receives {here} here")
            if isinstance(layer, Model):
                if layer.dtype != self.dtype:
                    raise ValueError(f"model {layer.name!r} is {layer.dtype.name} but the "
                                     f"Sequential {self.name!r} is {self.dtype.name}")
                if layer.built:
                    layer._check_call_shapes(here)
                else:
                    layer.build(here)
            else:
                layer.dtype = self.dtype
                if not layer.built:
                    layer.build(here)
            out = layer.compute_output_shape(here)
            t = connect(layer, [t], False, [out])[0]
        self._init_graph(inp, t)
        self.input_shape = shape
        self.output_shape = tuple(t.shape[1:])

    # -- configuration ---------------------------------------------------------------------
    def get_config(self):
        """The architecture as JSON types: name, dtype, per-sample input shape (None
        until built) and each layer as {"class_name", "config"}."""
        return {"name": self.name, "dtype": self.dtype.name,
                "input_shape": list(self.input_shape) if self.built else None,
                "layers": [_serialize(layer) for layer in self.layers]}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        """A new model (fresh weights, built if the config has an input shape) from
        get_config()'s dict; custom_objects maps class names to your own Layer classes."""
        if not isinstance(config, dict) or not isinstance(config.get("layers"), list):
            raise ValueError("a Sequential config must be a dict with a 'layers' list")
        layers = [_deserialize(spec, custom_objects) for spec in config["layers"]]
        try:
            model = cls(layers, name=config.get("name", "sequential"),
                        dtype=config.get("dtype", "float32"))
            if config.get("input_shape") is not None:
                model.build(tuple(config["input_shape"]))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"invalid Sequential config: {exc}") from None
        return model

    @property
    def trainable(self):
        return self._model_trainable

    @trainable.setter
    def trainable(self, value):
        self._model_trainable = bool(value)
        for layer in self.layers:
            layer.trainable = bool(value)

    def _fused_output(self):
        """True when the loss absorbs the last layer's activation (softmax + cross-entropy)."""
        if not self._losses:
            return False
        loss = self._losses[0]
        last = self.layers[-1]
        fuses = loss.fuses_with
        return (fuses is not None and _config.fusion_enabled()
                and not getattr(loss, "from_logits", False)
                and getattr(getattr(last, "activation", None), "name", None) == fuses
                and hasattr(last, "_forward_logits") and last.activity_regularizer is None)

    def _require_built_graph(self):
        pass      # compile before build: the graph is made from the first data

    def _output_fuses(self, k):
        return self._fused_output()
