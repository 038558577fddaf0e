"""Recurrent layers: SimpleRNN, LSTM and GRU, with Keras's weight layouts and gate orders.

Data is (batch, timesteps, features). Inside, a layer works unit-major: a step's values
of one unit sit side by side for the N samples (layouts in cyneuron._kernels.recurrent).
The sequence kernel runs the whole loop over time in one parallel region; each step's
GEMM computes the full pre-activation, [W_rec^T | b_rec | W^T | b] (G, H+F+2) @
[h_{t-1}; 1; x_t; 1] (step_weights builds the A operand once per call). The G gate rows
as the GEMM's long side was measured ~1.5x faster than (N, H) @ (H, G) for batch-sized N.
Outside training only rings of states are kept; a backward after such a run replays it
in full. Backpropagation through time mirrors the loop, and the weight gradients are
GEMMs over all T*N columns at once, written into the model's flat gradient buffer (so
the optimizer's gradient clipping sees them).

Weights (Keras): kernel (F, G), recurrent_kernel (units, G), bias, with G = units
(SimpleRNN), 4 units (LSTM: gates i, f, c, o) or 3 units (GRU: z, r, h;
reset_after=True, bias (2, 3 units): input bias, then recurrent bias).
"""
import numbers

import numpy as np

from .. import activations, initializers
from .._kernels import normalization as _norm_kernels
from .._kernels import recurrent as _k
from .._kernels.gemm import gemm
from .._random import get_rng
from .._validation import check_numeric, check_positive
from .base import Layer, _unique_name


def _activation(identifier, arg):
    """(name, kernel code) of an activation the cells apply; ValueError naming `arg`."""
    if identifier is None:
        key = "linear"
    elif isinstance(identifier, str):
        key = identifier.lower()
    else:
        key = activations.get(identifier).name
    if key not in _k.ACTIVATIONS:
        raise ValueError(f"{arg} must be one of {sorted(_k.ACTIVATIONS)} for a recurrent "
                         f"layer; got {identifier!r}")
    return key, _k.ACTIVATIONS[key]


def _check_flag(value, name):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False; got {value!r}")
    return bool(value)


class RNN(Layer):
    """Base of the recurrent layers; subclasses give the gate count and the cell kernels.

    units: size of the state h. activation: the state/candidate activation (tanh).
    dropout: fraction of the input features dropped while training; one mask per
    sequence, shared by all its steps (as in Keras). return_sequences: output every
    step's h, (batch, timesteps, units), instead of the last one. return_state: the
    public `forward` also returns the final states (h, and c for LSTM); inside a model
    the layer passes on its main output only. go_backwards: process the sequence from
    its end (the output sequence is then in processing order, as in Keras).

    `forward(x, training=False, initial_state=None, mask=None)`: initial_state is a list
    of (batch, units) arrays (LSTM: [h, c]); mask (batch, timesteps) marks real steps
    (0 = padding: the state is carried over). After `backward`, the gradients w.r.t. the
    initial states are in `initial_state_gradients` (when initial_state was given).
    """
    _regularizable = {"kernel": ("kernel",), "recurrent": ("recurrent_kernel",),
                      "bias": ("bias",)}

    _abstract = True   # a base class: SimpleRNN, LSTM and GRU are the layers
    _gate_count = 1
    _state_names = ("h",)
    _default_name = "rnn"   # Keras's names: simple_rnn, lstm, gru

    def __init__(self, units, activation="tanh", use_bias=True,
                 kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal",
                 bias_initializer="zeros", dropout=0.0, return_sequences=False,
                 return_state=False, go_backwards=False, seed=None, name=None, dtype=None):
        super().__init__(name=name if name is not None else _unique_name(self._default_name),
                         dtype=dtype)
        self.units = int(check_positive(units, "units", integer=True))
        self.activation, self._act = _activation(activation, "activation")
        self.use_bias = _check_flag(use_bias, "use_bias")
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.recurrent_initializer = initializers.get(recurrent_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) \
                or not 0 <= dropout < 1:
            raise ValueError(f"dropout must be a number in [0, 1); got {dropout!r}")
        self.dropout = float(dropout)
        self.return_sequences = _check_flag(return_sequences, "return_sequences")
        self.return_state = _check_flag(return_state, "return_state")
        self.go_backwards = _check_flag(go_backwards, "go_backwards")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)
                                 or seed < 0):
            raise ValueError(f"seed must be a non-negative int or None; got {seed!r}")
        self.seed = seed
        self._rng = None if seed is None else np.random.default_rng(int(seed))
        self.states = []
        self.initial_state_gradients = None

    # -- building -------------------------------------------------------------------------
    def _expect_3d(self, shape, what):
        raise ValueError(f"{type(self).__name__} {self.name!r} expects 3-D input x (batch, "
                         f"timesteps, features); got {what} {tuple(shape)}")

    def build(self, input_shape):
        if len(input_shape) != 2:
            self._expect_3d(input_shape, "per-sample shape")
        timesteps, features = (int(d) for d in input_shape)
        if timesteps < 1 or features < 1:
            raise ValueError(f"{type(self).__name__} {self.name!r} needs at least one time step "
                             f"and one feature; got per-sample shape {tuple(input_shape)}")
        width = self._gate_count * self.units
        self.add_weight("kernel", (features, width), self.kernel_initializer)
        self.add_weight("recurrent_kernel", (self.units, width), self.recurrent_initializer)
        if self.use_bias:
            self.add_weight("bias", self._bias_shape(), self._bias_init())
        super().build(input_shape)

    def _bias_shape(self):
        return (self._gate_count * self.units,)

    def _bias_init(self):
        return self.bias_initializer

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 2:
            self._expect_3d(input_shape, "per-sample shape")
        return (int(input_shape[0]), self.units) if self.return_sequences else (self.units,)

    @property
    def kernel(self):
        return self._weights[0]

    @property
    def recurrent_kernel(self):
        return self._weights[1]

    @property
    def bias(self):
        return self._weights[2] if self.use_bias else None

    def _input_bias(self):
        return self._weights[2] if self.use_bias else None

    def _recurrent_bias(self):
        return None

    def _recurrent_kernel(self):
        """The recurrent kernel, C-contiguous (an initializer may leave it transposed)."""
        return np.ascontiguousarray(self._weights[1])

    # -- checks ---------------------------------------------------------------------------
    def _check_input(self, x):
        x = check_numeric(x, "x")
        if x.ndim != 3:
            self._expect_3d(x.shape, "x of shape")
        if x.shape[0] == 0 or x.shape[1] == 0:
            raise ValueError(f"layer {self.name!r}: x is empty (shape {x.shape})")
        if not self.built:
            self._build_standalone(x)
        if x.shape[2] != self.input_shape[1]:
            raise ValueError(f"layer {self.name!r} was built for {self.input_shape[1]} features "
                             f"per step; x has {x.shape[2]} (shape {x.shape})")
        return np.ascontiguousarray(x, dtype=self.dtype)

    def _check_initial_state(self, initial_state, n):
        if initial_state is None:
            return None
        if isinstance(initial_state, np.ndarray) and len(self._state_names) == 1:
            initial_state = [initial_state]
        states = list(initial_state)
        if len(states) != len(self._state_names):
            raise ValueError(f"initial_state must be a list of {len(self._state_names)} arrays "
                             f"({', '.join(self._state_names)}) for {type(self).__name__}; "
                             f"got {len(states)}")
        checked = []
        for name, s in zip(self._state_names, states):
            s = check_numeric(s, f"initial_state ({name})")
            if s.shape != (n, self.units):
                raise ValueError(f"initial_state ({name}) must have shape ({n}, {self.units}); "
                                 f"got {s.shape}")
            checked.append(s)
        return checked

    @staticmethod
    def _check_mask(mask, n, t):
        if mask is None:
            return None
        mask = check_numeric(mask, "mask")
        if mask.shape != (n, t):
            raise ValueError(f"mask must have shape (batch, timesteps) = ({n}, {t}); "
                             f"got {mask.shape}")
        return mask

    # -- running --------------------------------------------------------------------------
    def forward(self, x, training=False, initial_state=None, mask=None):
        """Output for a batch x (batch, timesteps, features); with return_state, the list
        [output, *final_states]. Arrays returned are the layer's buffers (copy to keep)."""
        if mask is None:
            mask = getattr(x, "_keras_mask", None)
        x = self._check_input(x)
        if self._shares_buffer(x):
            x = x.copy()
        initial_state = self._check_initial_state(initial_state, x.shape[0])
        mask = self._check_mask(mask, x.shape[0], x.shape[1])
        out = self._forward(x, training, initial_state=initial_state, mask=mask)
        return [out] + list(self.states) if self.return_state else out

    def backward(self, grad_output):
        """Gradient w.r.t. the last forward's x; fills get_gradients(). With return_state,
        grad_output may be a list [d_output, *d_final_states] (None entries count as 0)."""
        if not hasattr(self, "_last_output_shape"):
            raise RuntimeError(f"layer {self.name!r}: call forward before backward")
        state_grads = None
        if self.return_state and isinstance(grad_output, (list, tuple)):
            if len(grad_output) != 1 + len(self._state_names):
                raise ValueError(f"grad_output must be a list of {1 + len(self._state_names)} "
                                 f"arrays (output, {', '.join(self._state_names)}); "
                                 f"got {len(grad_output)}")
            grad_output, *state_grads = grad_output
            n = self._last_output_shape[0]
            state_grads = [None if g is None else self._checked_grad(g, (n, self.units),
                                                                     f"grad of state {name}")
                           for g, name in zip(state_grads, self._state_names)]
        if grad_output is None:
            g = np.zeros(self._last_output_shape, self.dtype)
        else:
            g = self._checked_grad(grad_output, self._last_output_shape, "grad_output")
        return self._backward(g, need_input_grad=True, state_grads=state_grads)

    def _checked_grad(self, g, shape, name):
        g = check_numeric(g, name)
        if g.shape != shape:
            raise ValueError(f"{name} must have shape {shape}; got {g.shape}")
        return np.ascontiguousarray(g, dtype=self.dtype)

    def _step_mask(self, mask, n, t):
        """(T, N) uint8 in processing order, or None when every step is real."""
        if mask is None:
            return None
        keep = np.asarray(mask) != 0
        if keep.all():
            return None
        keep = keep.T[::-1] if self.go_backwards else keep.T
        return np.ascontiguousarray(keep, dtype=np.uint8)

    def _forward(self, x, training, initial_state=None, mask=None):
        if mask is None:
            mask = getattr(x, "_keras_mask", None)
        n, t, f = x.shape
        self._mask = self._step_mask(mask, n, t)
        self._drop = None
        if training and self.dropout > 0:
            self._drop = self._buffer("dropout_mask", (n, f))
            key = int((self._rng or get_rng()).integers(0, 2 ** 64, dtype=np.uint64))
            _norm_kernels.dropout_mask(self._drop.reshape(-1), self.dropout, key)
        # The inputs feature-major, (F, T*N): each step's x_t is a block of N columns.
        xf = self._buffer("xf", (f, t * n))
        _k.to_feature_major(x, xf, self.go_backwards, self._drop)
        self._xf, self._steps = xf, (t, n)
        self._has_initial_state = initial_state is not None
        self.initial_state_gradients = None
        # Outside training only the states the output needs are kept (rings); a backward
        # after such a run replays it in full first (_backward).
        self._full = bool(training)
        self._replay_state = None
        if not self._full and initial_state is not None:
            self._replay_state = [np.array(s, dtype=self.dtype) for s in initial_state]
        return self._run(initial_state, self._full)

    def _run(self, initial_state, full):
        """Run the sequence kernel over self._xf; returns the layer's output."""
        xf, (t, n) = self._xf, self._steps
        f = xf.shape[0]
        units, width = self.units, self._gate_count * self.units
        # The A operand of every step's GEMM: [W_rec^T | b_rec | W^T | b] (see the kernels).
        weights = None
        if not self._one_sample(n, full):   # that loop reads the Keras weights as they are
            weights = self._buffer("step_weights", (width, units + f + 2))
            _k.step_weights(self._weights[0], self._weights[1], self._input_bias(),
                            self._recurrent_bias(), weights)
        ring = "" if full else "_ring"
        spans = t + 1 if full or self.return_sequences else 2
        h = self._buffer("h" if spans == t + 1 else "h_ring", (units, spans, n))
        self._set_initial(h[:, 0, :], initial_state, 0)
        gates = self._buffer("gates" + ring, (t if full else 1, width, n))
        self._run_forward(xf, weights, gates, h, initial_state, full)
        self._gates, self._h = gates, h
        last = self._buffer("state_h", (n, units))
        np.copyto(last, h[:, t % spans, :].T)
        self.states = [last] + self.states[1:]
        if self.return_sequences:
            result = self._buffer("out", (n, t, units))
            _k.states_to_batch_major(h, result)
        else:
            result = last
        self._last_output_shape = result.shape
        return result

    @staticmethod
    def _set_initial(buf, initial_state, index):
        """buf (units, N) = initial_state[index] (N, units), transposed, or zeros."""
        if initial_state is None:
            buf.fill(0)
        else:
            np.copyto(buf, np.asarray(initial_state[index]).T)

    def _backward(self, grad_output, need_input_grad, state_grads=None):
        if not self._full:   # the forward kept rings only: replay it keeping every step
            self._run(self._replay_state, True)
            self._full = True
        f, rows = self._xf.shape
        t, _, n = self._gates.shape
        units, width = self.units, self._gate_count * self.units
        dh = self._buffer("dh", (units, n))
        dy = None
        if self.return_sequences:
            dh.fill(0)
            dy = self._buffer("dy", (units, t, n))
            _k.batch_to_unit_major(grad_output, dy)
        else:
            np.copyto(dh, grad_output.T)
        if state_grads and state_grads[0] is not None:
            dh += state_grads[0].T
        dgx, dgr = self._run_backward(dh, dy, state_grads)
        if self._has_initial_state:
            self.initial_state_gradients = [np.ascontiguousarray(dh.T)] + \
                self.initial_state_gradients[1:]
        else:
            self.initial_state_gradients = None
        # Weight gradients, one GEMM each over all T*N columns (computed transposed, the
        # faster orientation here, then copied into the Keras layout).
        dkernel_t = self._buffer("dkernel_t", (width, f))
        gemm(dgx, self._xf.T, dkernel_t)
        np.copyto(self._gradients[0], dkernel_t.T)
        drec_t = self._buffer("drecurrent_kernel_t", (width, units))
        gemm(dgr, self._h[:, :t, :].reshape(units, rows).T, drec_t)
        np.copyto(self._gradients[1], drec_t.T)
        if self.use_bias:
            self._bias_gradient(dgx, dgr)
        if not need_input_grad:
            return None
        dxt = self._buffer("dxt", (t, n, f))
        gemm(dgx.T, self._weights[0].T, dxt.reshape(rows, f))
        dx = self._buffer("dx", (n, t, f))
        _k.to_batch_major(dxt, dx, self.go_backwards, self._drop)
        return dx

    def _row_sums(self, m, out):
        """out (rows,) = the sums of m's rows (the bias gradient from the gate gradients)."""
        _k.row_sums(m, out.reshape(-1))

    def _bias_gradient(self, dgx, dgr):
        self._row_sums(dgx, self._gradients[2])

    def _run_forward(self, xf, weights, gates, h, initial_state, full):
        """Run the sequence kernel (the layouts are in cyneuron._kernels.recurrent); `full`:
        keep every step for backward, else rings."""
        raise NotImplementedError

    def _one_sample(self, n, full):
        """Whether _run_forward takes a one-sample loop that needs no step_weights."""
        return False

    def _run_backward(self, dh, dy, state_grads):
        """BPTT; returns the gradients of the input and of the recurrent products."""
        raise NotImplementedError

    def get_config(self):
        return {"name": self.name, "units": self.units, "activation": self.activation,
                "use_bias": self.use_bias, "dropout": self.dropout,
                "return_sequences": self.return_sequences, "return_state": self.return_state,
                "go_backwards": self.go_backwards, "seed": self.seed,
                "kernel_initializer": self.kernel_initializer.name,
                "recurrent_initializer": self.recurrent_initializer.name,
                "bias_initializer": self.bias_initializer.name}

    def _init_kwargs(self):
        """Constructor arguments that rebuild this layer's settings (initializers as objects)."""
        kw = {k: v for k, v in self.get_config().items() if k != "name"}
        kw.update(kernel_initializer=self.kernel_initializer,
                  recurrent_initializer=self.recurrent_initializer,
                  bias_initializer=self.bias_initializer)
        return kw


class SimpleRNN(RNN):
    """h_t = activation(x_t @ kernel + h_{t-1} @ recurrent_kernel + bias).

    kernel (F, units), recurrent_kernel (units, units), bias (units,), as in Keras.
    activation: tanh (default), relu, sigmoid, hard_sigmoid or linear.
    """

    _default_name = "simple_rnn"

    def _run_forward(self, xf, weights, gates, h, initial_state, full):
        _k.rnn_forward(xf, weights, gates, h, self._mask, self._act)
        self.states = [None]

    def _run_backward(self, dh, dy, state_grads):
        t, _, n = self._gates.shape
        dg = self._buffer("dgates", (self.units, t * n))
        scratch = self._buffer("scratch", (self.units, n))
        _k.rnn_backward(self._gates, self._recurrent_kernel(), dh, dg, scratch, dy,
                        self._mask, self._act, self._has_initial_state)
        self.initial_state_gradients = [None]
        return dg, dg


class LSTM(RNN):
    """Long short-term memory (Hochreiter & Schmidhuber, 1997), Keras layout.

    Gates i, f, c, o in blocks of `units` columns: kernel (F, 4 units), recurrent_kernel
    (units, 4 units), bias (4 units,). c_t = f c_{t-1} + i g, h_t = o activation(c_t),
    with i, f, o = recurrent_activation(...) and g = activation(...).
    unit_forget_bias: start the forget gate's bias at 1 (Jozefowicz et al., 2015).
    States: [h, c].
    """

    _gate_count = 4
    _state_names = ("h", "c")
    _default_name = "lstm"

    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid", use_bias=True,
                 kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal",
                 bias_initializer="zeros", unit_forget_bias=True, dropout=0.0,
                 return_sequences=False, return_state=False, go_backwards=False, seed=None,
                 name=None, dtype=None):
        super().__init__(units, activation=activation, use_bias=use_bias,
                         kernel_initializer=kernel_initializer,
                         recurrent_initializer=recurrent_initializer,
                         bias_initializer=bias_initializer, dropout=dropout,
                         return_sequences=return_sequences, return_state=return_state,
                         go_backwards=go_backwards, seed=seed, name=name, dtype=dtype)
        self.recurrent_activation, self._ract = _activation(recurrent_activation,
                                                            "recurrent_activation")
        self.unit_forget_bias = _check_flag(unit_forget_bias, "unit_forget_bias")

    def _bias_init(self):
        if not self.unit_forget_bias:
            return self.bias_initializer
        base, units = self.bias_initializer, self.units

        def init(shape, dtype=np.float32):
            return np.concatenate([base((units,), dtype=dtype), np.ones(units, dtype),
                                   base((2 * units,), dtype=dtype)])
        return init

    def _run_forward(self, xf, weights, gates, h, initial_state, full):
        t, n = self._steps
        ring = "" if full else "_ring"
        c = self._buffer("c" + ring, (t + 1 if full else 2, self.units, n))
        self._set_initial(c[0], initial_state, 1)
        act_c = self._buffer("act_c" + ring, (t if full else 1, self.units, n))
        if self._one_sample(n, full):
            _k.lstm_forward_one(xf, self._weights[0], self._weights[1], self._input_bias(),
                                gates, h, c, act_c, self._mask, self._act, self._ract)
        else:
            _k.lstm_forward(xf, weights, gates, h, c, act_c, self._mask, self._act,
                            self._ract)
        self._c, self._act_c = c, act_c
        last_c = self._buffer("state_c", (n, self.units))
        np.copyto(last_c, c[t % c.shape[0]].T)
        self.states = [None, last_c]

    def _one_sample(self, n, full):
        """One sample outside training: the vector-matrix loop of lstm_forward_one."""
        return n == 1 and not full

    def _run_backward(self, dh, dy, state_grads):
        t, width, n = self._gates.shape
        dc = self._buffer("dc", (self.units, n))
        if state_grads and state_grads[1] is not None:
            np.copyto(dc, state_grads[1].T)
        else:
            dc.fill(0)
        dg = self._buffer("dgates", (width, t * n))
        scratch = self._buffer("scratch", (5 * self.units, n))
        _k.lstm_backward(self._gates, self._c, self._act_c, self._recurrent_kernel(), dh, dc,
                         dg, scratch, dy, self._mask, self._act, self._ract,
                         self._has_initial_state)
        self.initial_state_gradients = [None, np.ascontiguousarray(dc.T)]
        return dg, dg

    def get_config(self):
        return {**super().get_config(), "recurrent_activation": self.recurrent_activation,
                "unit_forget_bias": self.unit_forget_bias}


class GRU(RNN):
    """Gated recurrent unit (Cho et al., 2014), Keras layout with reset_after=True (the
    CuDNN / PyTorch formulation).

    Gates z, r, h in blocks of `units` columns: kernel (F, 3 units), recurrent_kernel
    (units, 3 units), bias (2, 3 units) = [input bias, recurrent bias].
    z, r = recurrent_activation(x W + b_in + h W_rec + b_rec) (their blocks);
    hh = activation(x W_h + b_in_h + r * (h W_rec_h + b_rec_h)); h_t = z h_{t-1} + (1 - z) hh.
    """

    _gate_count = 3
    _default_name = "gru"

    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid", use_bias=True,
                 kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal",
                 bias_initializer="zeros", dropout=0.0, return_sequences=False,
                 return_state=False, go_backwards=False, reset_after=True, seed=None,
                 name=None, dtype=None):
        super().__init__(units, activation=activation, use_bias=use_bias,
                         kernel_initializer=kernel_initializer,
                         recurrent_initializer=recurrent_initializer,
                         bias_initializer=bias_initializer, dropout=dropout,
                         return_sequences=return_sequences, return_state=return_state,
                         go_backwards=go_backwards, seed=seed, name=name, dtype=dtype)
        self.recurrent_activation, self._ract = _activation(recurrent_activation,
                                                            "recurrent_activation")
        if reset_after is not True:
            raise ValueError("GRU supports reset_after=True only (the Keras default: the reset "
                             f"gate applies after the recurrent product); got {reset_after!r}")
        self.reset_after = True

    def _bias_shape(self):
        return (2, 3 * self.units)

    def _input_bias(self):
        return self._weights[2][0] if self.use_bias else None

    def _recurrent_bias(self):
        return self._weights[2][1] if self.use_bias else None

    def _run_forward(self, xf, weights, gates, h, initial_state, full):
        t, n = self._steps
        rh = self._buffer("rh" if full else "rh_ring", (t if full else 1, self.units, n))
        _k.gru_forward(xf, weights, gates, rh, h, self._mask, self._act, self._ract)
        self._rh = rh
        self.states = [None]

    def _run_backward(self, dh, dy, state_grads):
        t, width, n = self._gates.shape
        dgx = self._buffer("dgates", (width, t * n))
        dgr = self._buffer("dgates_rec", (width, t * n))
        scratch = self._buffer("scratch", (width, n))
        _k.gru_backward(self._gates, self._rh, self._h, self._recurrent_kernel(), dh, dgx, dgr,
                        scratch, dy, self._mask, self._act, self._ract, self._has_initial_state)
        self.initial_state_gradients = [None]
        return dgx, dgr

    def _bias_gradient(self, dgx, dgr):
        self._row_sums(dgx, self._gradients[2][0])
        self._row_sums(dgr, self._gradients[2][1])

    def get_config(self):
        return {**super().get_config(), "recurrent_activation": self.recurrent_activation,
                "reset_after": self.reset_after}
