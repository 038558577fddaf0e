"""Model: a graph of layers from inputs to outputs (the Keras functional API), built
from the engine (_graph), the threads (_threads), the training step (_training) and the
loops (_loops). Here: its state, the model as a layer of another model, its weights,
its configuration and its files."""
import numbers

import numpy as np

from .. import saving
from ..layers import base as _layer_base
from ..layers.input_layer import Input
from ._graph import _BIND_EPOCH, GraphEngine, _sample_shape
from ._loops import LoopsMixin
from ._threads import _THREAD_STATE, ThreadsMixin
from ._training import TrainingMixin


class Model(LoopsMixin, TrainingMixin, ThreadsMixin, GraphEngine):
    """A graph of layers from `inputs` to `outputs` (Keras functional API).

        inputs = cn.Input(shape=(20,))
        h = layers.Dense(64, activation="relu")(inputs)
        outputs = layers.Dense(1)(layers.Add()([h, layers.Dense(64)(inputs)]))
        model = cn.Model(inputs, outputs)

    inputs / outputs: a symbolic tensor, a list of them, or a dict {name: tensor}.
    A model is a layer: call it on symbolic tensors to nest it in another model (its
    parameters become a slice of the outer model's flat buffer), or on arrays:
    `model(x, training=True)` then `model.backward(dy)` for custom training loops.
    """

    _abstract = True      # not in the layer registry: saving names models itself

    def __init__(self, inputs=None, outputs=None, name=None, dtype=None):
        super().__init__(name=name, dtype=None)
        self._init_model_state()
        if inputs is None or outputs is None:
            raise TypeError("Model(inputs, outputs): both are required (symbolic tensors from "
                            "cn.Input and layers called on them); for a stack of layers use "
                            "cn.Sequential")
        self._init_graph(inputs, outputs, dtype)

    # -- construction ---------------------------------------------------------------------
    def _init_model_state(self):
        self.optimizer = None
        self.loss = None
        self.metrics = []
        self.stop_training = False     # a callback sets it to end fit after the current epoch
        self._losses = []
        self._loss_tensors = []        # add_loss: symbolic tensors whose batch mean is a loss
        self._loss_weights = []
        self._out_metrics = []
        self._compiled_segments = None
        self._model_trainable = True
        self._epoch = -1
        self._fused_key = None
        self._compile_serial = 0
        self._init_threading()


    # As a layer inside another model.
    def _forward(self, x, training):
        xs = x if self._in_struct != "single" else [x]
        outs = self._run_forward(xs, training)
        return outs[0] if self._out_struct == "single" else outs

    def _backward(self, grad_output, need_input_grad):
        gs = grad_output if self._out_struct != "single" else [grad_output]
        gin = self._run_backward(gs, want_inputs=need_input_grad)
        if not need_input_grad:
            return None
        return gin[0] if self._in_struct == "single" else gin

    def _output_has_mask(self, inputs):
        return any(t.has_mask for t in self.outputs)

    def _check_call_shapes(self, shapes):
        expected = [tuple(t.shape[1:]) for t in self.inputs]
        got = [tuple(s) for s in shapes] if self._in_struct != "single" else [tuple(shapes)]
        if got != expected:
            raise ValueError(f"model {self.name!r} takes inputs of shape "
                             f"{[(None,) + s for s in expected]}; called on "
                             f"{[(None,) + s for s in got]}")

    def build(self, input_shape):
        """Already built from its inputs: checks that `input_shape` (with or without the
        batch axis) is the inputs' shape."""
        if self._in_struct == "single":
            shape = _sample_shape(input_shape, len(self.input_shape))
            self._check_call_shapes(shape)
        else:
            self._check_call_shapes([_sample_shape(s, len(e)) for s, e in
                                     zip(input_shape, self.input_shape)])

    def compute_output_shape(self, input_shape):
        shapes = [tuple(t.shape[1:]) for t in self.outputs]
        return shapes[0] if self._out_struct == "single" else shapes

    @property
    def _n_inputs(self):
        return 1 if self._in_struct == "single" else len(self.inputs)

    @property
    def _input_names(self):
        return self.input_names

    def _inputs_from_dict(self, inputs):
        unknown = sorted(set(inputs) - set(self.input_names))
        if unknown:
            raise ValueError(f"model {self.name!r} has no inputs named {unknown}; its inputs are "
                             f"{self.input_names}")
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise ValueError(f"model {self.name!r}: inputs {missing} are missing")
        return [inputs[n] for n in self.input_names]

    def get_layer(self, name=None, index=None):
        """The layer called `name` (or at position `index` of model.layers)."""
        if index is not None:
            if not isinstance(index, numbers.Integral) or not -len(self.layers) <= index < len(
                    self.layers):
                raise ValueError(f"index {index!r} is not a position in model.layers "
                                 f"({len(self.layers)} layers)")
            return self.layers[index]
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise ValueError(f"model {self.name!r} has no layer named {name!r}; its layers are "
                         f"{[layer.name for layer in self.layers]}")

    # -- trainable ---------------------------------------------------------------------------
    @property
    def trainable(self):
        return self._model_trainable

    @trainable.setter
    def trainable(self, value):
        """As Keras: setting it sets every layer of the model (nested ones too)."""
        self._model_trainable = bool(value)
        for layer in self._param_layers if self.built else getattr(self, "layers", []):
            layer.trainable = bool(value)

    def _frozen_ranges(self, frozen=False):
        """(start, end) ranges of self._params that belong to frozen layers."""
        out = []
        for layer, a, b in self._ranges:
            f = frozen or not layer.trainable
            if isinstance(layer, Model):
                out.extend((a + x, a + y) for x, y in layer._frozen_ranges(f))
            elif f and b > a:
                out.append((a, b))
        return out

    def _trainable_segments(self):
        """None when everything trains, else the (start, end) ranges that do."""
        frozen = self._frozen_ranges(not self.trainable)
        if not frozen:
            return None
        segments, pos = [], 0
        for a, b in sorted(frozen):
            if a > pos:
                segments.append((pos, a))
            pos = max(pos, b)
        if pos < self._params.size:
            segments.append((pos, self._params.size))
        return segments

    def _zero_frozen(self, segments):
        if segments is None:
            return
        pos = 0
        for a, b in segments:
            self._grads[pos:a] = 0
            pos = b
        self._grads[pos:] = 0

    def _apply_optimizer(self, optimizer, segments):
        """optimizer.apply_gradients(model): a writer of the weights like any other."""
        self._begin_write("apply_gradients")
        try:
            if segments is None:
                optimizer.apply_gradients(self._params, self._grads)
            else:
                optimizer._apply_segments(self._params, self._grads, segments)
        finally:
            self._end_write()

    # -- weights -------------------------------------------------------------------------------
    def get_weights(self):
        """Copies of all weights, one consistent set even while another thread trains."""
        self._wlock.acquire_read()
        try:
            return [w for layer in self._param_layers for w in layer.get_weights()]
        finally:
            self._wlock.release_read()

    def set_weights(self, weights):
        self._require_built()
        weights = list(weights)
        expected = sum(len(layer._weights) for layer in self._param_layers)
        if len(weights) != expected:
            raise ValueError(f"the model has {expected} weight arrays; got {len(weights)}")
        checked, start = [], 0
        for layer in self._param_layers:  # check everything before changing anything
            n = len(layer._weights)
            checked.append(layer._check_weights(weights[start:start + n]))
            start += n
        self._begin_write("set_weights")
        try:
            for layer, layer_weights in zip(self._param_layers, checked):
                for current, new in zip(layer._weights, layer_weights):
                    current[...] = new
        finally:
            self._end_write()

    def _check_weights(self, weights):
        weights = list(weights)
        expected = sum(len(layer._weights) for layer in self._param_layers)
        if len(weights) != expected:
            raise ValueError(f"model {self.name!r} expects {expected} weight arrays; got "
                             f"{len(weights)}")
        checked, start = [], 0
        for layer in self._param_layers:
            n = len(layer._weights)
            checked.extend(layer._check_weights(weights[start:start + n]))
            start += n
        return checked

    def get_gradients(self):
        return [g for layer in self._param_layers for g in layer.get_gradients()]

    @property
    def trainable_weights(self):
        return [w for layer in self._param_layers for w in layer.trainable_weights]

    @property
    def non_trainable_weights(self):
        return [w for layer in self._param_layers for w in layer.non_trainable_weights]

    def __getstate__(self):
        state = self.__dict__.copy()
        for key in ("_vals", "_masks", "_acc", "_batch_buffers", "_buffers", "_slot_of",
                    "_steps", "_pairs", "_expected") + _THREAD_STATE:
            state.pop(key, None)
        return state

    def __setstate__(self, state):
        """Unpickling: layers' trainable weights become views of the flat buffers again
        (pickle stores views as separate copies)."""
        self.__dict__.update(state)
        self._buffers = {}
        self._init_threading()
        if self.built:
            # joblib may hand back read-only memory maps: training needs writable arrays
            self._params = np.require(self._params, requirements=["C", "W"])
            self._grads = np.require(self._grads, requirements=["C", "W"])
            if self.optimizer is not None:
                self.optimizer.slots = {k: np.require(v, requirements=["C", "W"])
                                        for k, v in self.optimizer.slots.items()}
            self._assign_slots()       # slots are keyed by object ids: new ones here
            _BIND_EPOCH[0] += 1
            self._bind(self._params, self._grads, 0)

    # -- configuration and files ---------------------------------------------------------------
    def get_config(self):
        """The graph as JSON types: its layers (each once, as {"class_name", "config"}),
        its inputs, and its nodes in topological order (layer name and input tensor ids:
        the inputs are tensors 0..k-1, each node's outputs the next ids)."""
        self._require_built()
        tensor_id = {}
        for t in self.inputs:
            tensor_id[id(t)] = len(tensor_id)
        nodes = []
        for node in self._nodes:
            nodes.append({"layer": node.layer.name,
                          "inputs": [tensor_id[id(t)] for t in node.inputs],
                          "many": bool(node.many_inputs)})
            for t in node.outputs:
                tensor_id[id(t)] = len(tensor_id)
        names = [layer.name for layer in self._param_layers]
        if len(set(names)) != len(names):
            raise ValueError(f"model {self.name!r} has two layers of one name; layer names must "
                             f"be unique to save the model")
        config = {"name": self.name, "dtype": self.dtype.name,
                "layers": [_serialize(layer) for layer in self._param_layers],
                "inputs": [layer.get_config() for layer in (t.node.layer for t in self.inputs)],
                "input_structure": self._in_struct, "output_structure": self._out_struct,
                "nodes": nodes, "outputs": [tensor_id[id(t)] for t in self.outputs],
                "output_names": list(self.output_names)}
        if self._loss_tensors:
            config["added_losses"] = [tensor_id[id(t)] for t in self._loss_tensors]
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        """A new model (fresh weights) from get_config()'s dict."""
        if not isinstance(config, dict) or not isinstance(config.get("nodes"), list) \
                or not isinstance(config.get("layers"), list) \
                or not isinstance(config.get("inputs"), list):
            raise ValueError("a Model config must be a dict with 'layers', 'inputs' and 'nodes'")
        try:
            layers = {}
            for spec in config["layers"]:
                layer = _deserialize(spec, custom_objects)
                layers[layer.name] = layer
            dtype = config.get("dtype", "float32")
            tensors = [Input(shape=tuple(c["shape"]), dtype=dtype, name=c["name"])
                       for c in config["inputs"]]
            def tensor(i):
                if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(tensors):
                    raise IndexError(f"tensor id {i!r} is not one made before it")
                return tensors[i]

            for node in config["nodes"]:
                layer = layers[node["layer"]]
                args = [tensor(i) for i in node["inputs"]]
                if not args:
                    raise IndexError(f"node of layer {node['layer']!r} has no inputs")
                out = layer(args if node.get("many") or len(args) > 1 else args[0])
                tensors.extend(out if isinstance(out, list) else [out])
            outs = [tensor(i) for i in config["outputs"]]
            names = config.get("output_names")
            ins = tensors[:len(config["inputs"])]
            inputs = ins[0] if config.get("input_structure") == "single" else \
                ({t.node.layer.name: t for t in ins} if config.get("input_structure") == "dict"
                 else ins)
            if config.get("output_structure") == "single":
                outputs = outs[0]
            elif config.get("output_structure") == "dict":
                outputs = dict(zip(names, outs))
            else:
                outputs = outs
            model = cls(inputs, outputs, name=config.get("name"))
            for i in config.get("added_losses") or []:
                model.add_loss(tensor(i))
        except (KeyError, IndexError, TypeError) as exc:
            raise ValueError(f"invalid Model config: {type(exc).__name__}: {exc}") from None
        if names and config.get("output_structure") != "dict":
            model.output_names = list(names)
        return model

    def save(self, filepath, include_optimizer=True):
        """Write architecture, compile settings, weights (and the optimizer state) to one
        file, atomically; `cn.load_model(filepath)` reads it back. No pickle is used."""
        self._wlock.acquire_read()      # one consistent set of weights and optimizer state
        try:
            saving.save_model(self, filepath, include_optimizer=include_optimizer)
        finally:
            self._wlock.release_read()

    def save_weights(self, filepath):
        """Write only the weights (get_weights() order) to a file, atomically."""
        self._wlock.acquire_read()
        try:
            saving.save_weights(self, filepath)
        finally:
            self._wlock.release_read()

    def load_weights(self, filepath):
        """Read weights written by save_weights (or save) into this model (same architecture)."""
        saving.load_weights(self, filepath)


def _serialize(layer):
    from .sequential import Sequential     # sequential.py imports this module
    if isinstance(layer, Model):
        return {"class_name": "Sequential" if isinstance(layer, Sequential) else "Functional",
                "config": layer.get_config()}
    return _layer_base.serialize(layer)


def _deserialize(spec, custom_objects=None):
    from .sequential import Sequential     # sequential.py imports this module
    if isinstance(spec, dict) and spec.get("class_name") in ("Sequential", "Functional"):
        cls = Sequential if spec["class_name"] == "Sequential" else Model
        return cls.from_config(spec.get("config"), custom_objects)
    return _layer_base.deserialize(spec, custom_objects)


def model_from_config(config, custom_objects=None):
    """A Sequential or functional Model from its get_config() dict (functional configs
    have 'nodes')."""
    from .sequential import Sequential     # sequential.py imports this module
    if isinstance(config, dict) and "nodes" in config:
        return Model.from_config(config, custom_objects)
    return Sequential.from_config(config, custom_objects)
