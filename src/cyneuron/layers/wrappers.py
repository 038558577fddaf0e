"""Layers around layers: Bidirectional (a recurrent layer run both ways) and
TimeDistributed (one layer applied to every time step)."""
import numpy as np

from .._validation import check_numeric
from .base import Layer, deserialize, serialize
from .recurrent import RNN


class Wrapper(Layer):
    """A layer made of other layers; their weights are its weights, in their order
    (so get_weights, set_weights and the model's flat buffers see them all)."""

    _abstract = True   # a base class: not a layer a saved model names

    def __init__(self, layer, name=None, dtype=None):
        if not isinstance(layer, Layer):
            raise TypeError(f"layer must be a cyneuron Layer; got {type(layer).__name__}")
        super().__init__(name=name, dtype=dtype if dtype is not None else layer.dtype)
        self.layer = layer

    @classmethod
    def from_config(cls, config):
        """The wrapper and its wrapped layers (saved as {"class_name", "config"} specs)."""
        config = dict(config)
        for key in ("layer", "backward_layer"):
            if isinstance(config.get(key), dict):
                config[key] = deserialize(config[key])
        return cls(**config)

    def _sublayers(self):
        return [self.layer]

    def _build_sublayer(self, layer, input_shape):
        if layer.dtype is not None and self.dtype is not None and layer.dtype != self.dtype:
            raise ValueError(f"layer {layer.name!r} has dtype {layer.dtype.name} but the wrapper "
                             f"{self.name!r} is {self.dtype.name}")
        layer.dtype = self.dtype
        if not layer.built:
            layer.build(input_shape)
        elif layer.input_shape != tuple(input_shape):
            raise ValueError(f"layer {layer.name!r} was built for inputs {layer.input_shape}, "
                             f"but receives {tuple(input_shape)} here")

    def _collect(self):
        subs = self._sublayers()
        self._weights = [w for s in subs for w in s._weights]
        self._gradients = [g for s in subs for g in s._gradients]
        self._weight_names = [f"{s.name}/{n}" for s in subs for n in s._weight_names]
        self._trainable = [t for s in subs for t in s._trainable]

    def _replica(self):
        """Replicas of the wrapped layers (see Layer._replica), gathered as this copy's."""
        r = super()._replica()
        subs = {id(s): s._replica() for s in self._sublayers()}
        for attr in ("layer", "forward_layer", "backward_layer"):
            value = self.__dict__.get(attr)
            if value is not None and id(value) in subs:
                r.__dict__[attr] = subs[id(value)]
        r._collect()
        return r

    def _bind(self, params, grads, offset):
        for s in self._sublayers():
            offset = s._bind(params, grads, offset)
        self._collect()
        return offset

    def _regularized_weights(self):
        """The wrapped layers' weight regularizers (kernel_regularizer=... given to them)."""
        return [r for s in self._sublayers() for r in s._regularized_weights()]


class Bidirectional(Wrapper):
    """Runs a recurrent layer forwards and a copy of it backwards over the sequence and
    merges the two outputs: merge_mode "concat" (default; features side by side), "sum",
    "ave" or "mul". With return_sequences the backward layer's outputs are put back in
    time order before the merge, as in Keras. backward_layer: the layer to use for the
    backward direction (default: a copy of `layer`'s settings with go_backwards flipped).
    Weights: the forward layer's, then the backward layer's. With return_state, the
    public forward returns [output, *forward_states, *backward_states].
    """

    MERGE_MODES = ("concat", "sum", "ave", "mul")

    def __init__(self, layer, merge_mode="concat", backward_layer=None, name=None, dtype=None):
        if not isinstance(layer, RNN):
            raise TypeError(f"Bidirectional wraps a recurrent layer (SimpleRNN, LSTM, GRU); "
                            f"got {type(layer).__name__}")
        if merge_mode not in self.MERGE_MODES:
            raise ValueError(f"merge_mode must be one of {self.MERGE_MODES}; got {merge_mode!r}")
        super().__init__(layer, name=name, dtype=dtype)
        self.merge_mode = merge_mode
        if backward_layer is None:
            kwargs = layer._init_kwargs()
            kwargs["go_backwards"] = not layer.go_backwards
            backward_layer = type(layer)(**kwargs, name="backward_" + layer.name,
                                         dtype=layer.dtype)
            backward_layer._weight_regularizers = dict(layer._weight_regularizers)
        elif not isinstance(backward_layer, RNN):
            raise TypeError(f"backward_layer must be a recurrent layer; got "
                            f"{type(backward_layer).__name__}")
        elif backward_layer is layer:
            raise ValueError("backward_layer must be a different layer instance from layer")
        if backward_layer.go_backwards == layer.go_backwards:
            raise ValueError("backward_layer must have the opposite go_backwards of layer")
        for attr in ("return_sequences", "return_state"):
            if getattr(backward_layer, attr) != getattr(layer, attr):
                raise ValueError(f"backward_layer must have the same {attr} as layer")
        self.forward_layer = layer
        self.backward_layer = backward_layer
        self.return_sequences = layer.return_sequences
        self.return_state = layer.return_state
        self.states = []
        self.initial_state_gradients = None

    def _sublayers(self):
        return [self.forward_layer, self.backward_layer]

    def build(self, input_shape):
        for s in self._sublayers():
            self._build_sublayer(s, input_shape)
        self._collect()
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        shape = self.forward_layer.compute_output_shape(input_shape)
        if self.merge_mode == "concat":
            return shape[:-1] + (shape[-1] + self.backward_layer.compute_output_shape(
                input_shape)[-1],)
        return shape

    def _check_input(self, x):
        x = check_numeric(x, "x")
        if x.ndim != 3:
            raise ValueError(f"Bidirectional {self.name!r} expects 3-D input x (batch, timesteps, "
                             f"features); got x of shape {x.shape}")
        if x.shape[0] == 0 or x.shape[1] == 0:
            raise ValueError(f"layer {self.name!r}: x is empty (shape {x.shape})")
        if not self.built:
            self._build_standalone(x)
        return self.forward_layer._check_input(x)

    def forward(self, x, training=False, initial_state=None, mask=None):
        """Merged output for x (batch, timesteps, features); with return_state the list
        [output, *forward_states, *backward_states]. initial_state: the forward layer's
        states then the backward layer's."""
        if mask is None:
            mask = getattr(x, "_keras_mask", None)
        x = self._check_input(x)
        if self._shares_buffer(x):
            x = x.copy()
        mask = self.forward_layer._check_mask(mask, x.shape[0], x.shape[1])
        if initial_state is not None:
            k = len(self.forward_layer._state_names)
            initial_state = list(initial_state)
            if len(initial_state) != 2 * k:
                raise ValueError(f"initial_state must list {2 * k} arrays (the forward layer's "
                                 f"states, then the backward layer's); got {len(initial_state)}")
            initial_state = (self.forward_layer._check_initial_state(initial_state[:k], len(x))
                             + self.backward_layer._check_initial_state(initial_state[k:], len(x)))
        out = self._forward(x, training, initial_state=initial_state, mask=mask)
        return [out] + list(self.states) if self.return_state else out

    def _forward(self, x, training, initial_state=None, mask=None):
        if mask is None:
            mask = getattr(x, "_keras_mask", None)
        fwd, bwd = self.forward_layer, self.backward_layer
        k = len(fwd._state_names)
        init_f = initial_state[:k] if initial_state is not None else None
        init_b = initial_state[k:] if initial_state is not None else None
        yf = fwd._forward(x, training, initial_state=init_f, mask=mask)
        yb = bwd._forward(x, training, initial_state=init_b, mask=mask)
        if self.return_sequences:
            yb = yb[:, ::-1]  # back into time order
        if self.merge_mode == "concat":
            out = self._buffer("y", yf.shape[:-1] + (yf.shape[-1] + yb.shape[-1],))
            out[..., :yf.shape[-1]] = yf
            out[..., yf.shape[-1]:] = yb
        else:
            out = self._buffer("y", yf.shape)
            if self.merge_mode == "mul":
                np.multiply(yf, yb, out=out)
            else:
                np.add(yf, yb, out=out)
                if self.merge_mode == "ave":
                    out *= 0.5
        self._yf, self._yb = yf, yb
        self.states = list(fwd.states) + list(bwd.states)
        self._has_initial_state = initial_state is not None
        self._last_output_shape = out.shape
        return out

    def backward(self, grad_output):
        """Gradient w.r.t. x; with return_state grad_output may be a list [d_output,
        *d_forward_states, *d_backward_states] (None entries count as zero)."""
        if not hasattr(self, "_last_output_shape"):
            raise RuntimeError(f"layer {self.name!r}: call forward before backward")
        state_grads = None
        if self.return_state and isinstance(grad_output, (list, tuple)):
            k = len(self.forward_layer._state_names)
            if len(grad_output) != 1 + 2 * k:
                raise ValueError(f"grad_output must be a list of {1 + 2 * k} arrays; "
                                 f"got {len(grad_output)}")
            grad_output, *state_grads = grad_output
            n = self._last_output_shape[0]
            units = self.forward_layer.units
            state_grads = [None if g is None else self.forward_layer._checked_grad(
                g, (n, units), "grad of a final state") for g in state_grads]
        if grad_output is None:
            g = np.zeros(self._last_output_shape, self.dtype)
        else:
            g = self.forward_layer._checked_grad(grad_output, self._last_output_shape,
                                                 "grad_output")
        return self._backward(g, True, state_grads)

    def _backward(self, grad_output, need_input_grad, state_grads=None):
        fwd, bwd = self.forward_layer, self.backward_layer
        k = len(fwd._state_names)
        g = grad_output
        if self.merge_mode == "concat":
            units = self._yf.shape[-1]
            gf, gb = g[..., :units], g[..., units:]
        elif self.merge_mode == "mul":
            gf = np.multiply(g, self._yb, out=self._buffer("gf", g.shape))
            gb = np.multiply(g, self._yf, out=self._buffer("gb", g.shape))
        elif self.merge_mode == "ave":
            gf = gb = np.multiply(g, 0.5, out=self._buffer("gf", g.shape))
        else:
            gf = gb = g
        if self.return_sequences:
            gb = gb[:, ::-1]  # into the backward layer's processing order
        gf = self._contiguous(gf, "gf")
        gb = self._contiguous(gb, "gb")
        sg_f = state_grads[:k] if state_grads else None
        sg_b = state_grads[k:] if state_grads else None
        dxf = fwd._backward(gf, need_input_grad, sg_f)
        dxb = bwd._backward(gb, need_input_grad, sg_b)
        if self._has_initial_state:
            self.initial_state_gradients = (fwd.initial_state_gradients
                                            + bwd.initial_state_gradients)
        if not need_input_grad:
            return None
        return np.add(dxf, dxb, out=self._buffer("dx", dxf.shape))

    def _contiguous(self, a, key):
        if a.flags.c_contiguous:
            return a
        buf = self._buffer(key + "_c", a.shape)
        np.copyto(buf, a)
        return buf

    def get_config(self):
        return {"name": self.name, "merge_mode": self.merge_mode,
                "layer": serialize(self.forward_layer),
                "backward_layer": serialize(self.backward_layer)}


class TimeDistributed(Wrapper):
    """Applies `layer` to every time step: input (batch, timesteps, ...) is seen by the
    layer as (batch * timesteps, ...) (a view, no copy), with the same weights for all
    steps, e.g. TimeDistributed(Dense(10)) on a return_sequences output."""

    def build(self, input_shape):
        if len(input_shape) < 2:
            raise ValueError(f"TimeDistributed {self.name!r} expects input x of shape (batch, "
                             f"timesteps, ...) with at least 3 dimensions; got per-sample shape "
                             f"{tuple(input_shape)}")
        self._build_sublayer(self.layer, tuple(input_shape[1:]))
        self._collect()
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        return (int(input_shape[0]),) + tuple(self.layer.compute_output_shape(input_shape[1:]))

    def _check_input(self, x):
        if np.ndim(x) < 3:
            raise ValueError(f"TimeDistributed {self.name!r} expects input x of shape (batch, "
                             f"timesteps, ...) with at least 3 dimensions; got shape "
                             f"{np.shape(x)}")
        return super()._check_input(x)

    def _forward(self, x, training):
        n, t = x.shape[:2]
        y = self.layer._forward(x.reshape((n * t,) + x.shape[2:]), training)
        y = y.reshape((n, t) + y.shape[1:])
        self._last_output_shape = y.shape
        self._x_shape = x.shape
        return y

    def _backward(self, grad_output, need_input_grad):
        n, t = grad_output.shape[:2]
        g = np.ascontiguousarray(grad_output).reshape((n * t,) + grad_output.shape[2:])
        dx = self.layer._backward(g, need_input_grad)
        if dx is None:
            return None
        return dx.reshape(self._x_shape)

    def get_config(self):
        return {"name": self.name, "layer": serialize(self.layer)}
