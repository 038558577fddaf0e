"""Recursive (tree) layers: TreeRNN (Socher et al. 2011) and TreeLSTM (Tai et al. 2015).

Both take two inputs, [x, children]: x (batch, max_nodes, features) the input vector of
every node (usually an Embedding of cn.trees' tokens) and children (batch, max_nodes,
max_children) the child indices (-1: none) in cn.trees' layout: node 0 is the root, a
node's children come after it, rows the root does not reach are padding. The same
weights compose every node bottom-up. The batch's nodes are ordered by height
(cyneuron._kernels.tree.schedule) and each level of the whole batch is one GEMM; the
backward pass (backpropagation through structure) walks the levels in reverse.

Output: the root's state (batch, units), or with return_nodes=True every node's state
(batch, max_nodes, units), zeros at padding; that output carries a padding mask (as
Embedding(mask_zero=True) does), so a model's loss and the layers after it skip the
padding nodes, and per-node labels (Stanford Sentiment Treebank style) just work.

Weights (Keras-like): kernel (features, G), recurrent_kernel (R, G), bias (G,):
  TreeRNN                  h = act(x W + [h_0, h_1] U + b)   G = units, R = 2 units
  TreeLSTM "binary"        gates i, f_0, f_1, c, o            G = 5 units, R = 2 units
  TreeLSTM "child_sum"     gates i, f, c, o; i, c, o from the sum of the children's h,
                           one forget gate per child from its own h     G = 4 units, R = units
Binary layers take the first two listed children as the left and right child (a
missing one counts as zeros); a node with more children is an error.
"""
import numpy as np

from .. import initializers
from .._kernels import tree as _k
from .._kernels.gemm import gemm
from .._validation import check_numeric, check_positive
from ..trees import _as_index_array
from .base import Layer
from .embedding import MaskedOutput


class _TreeLayer(Layer):
    """The shared machinery of TreeRNN and TreeLSTM; subclasses set the cell."""

    _abstract = True
    _n_inputs = 2
    _cell = None
    _max_children = 2

    def __init__(self, units, return_nodes=False, kernel_initializer="glorot_uniform",
                 recurrent_initializer="glorot_uniform", bias_initializer="zeros",
                 name=None, dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.units = int(check_positive(units, "units", integer=True))
        if not isinstance(return_nodes, (bool, np.bool_)):
            raise TypeError(f"return_nodes must be True or False; got {return_nodes!r}")
        self.return_nodes = bool(return_nodes)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.recurrent_initializer = initializers.get(recurrent_initializer)
        self.bias_initializer = initializers.get(bias_initializer)

    # The per-node output carries a padding mask that the model engine reads as it does
    # Embedding(mask_zero=True)'s (see input_layer.output_has_mask).
    @property
    def mask_zero(self):
        return self.return_nodes

    def _widths(self):
        """(G, R): gate columns and recurrent-kernel rows."""
        raise NotImplementedError

    # -- building -------------------------------------------------------------------------
    def _shapes(self, input_shape):
        if not isinstance(input_shape, (list, tuple)) or len(input_shape) != 2 or \
                not all(isinstance(s, (list, tuple)) for s in input_shape):
            raise ValueError(f"{type(self).__name__} {self.name!r} takes two inputs [x, children]: "
                             f"x (batch, max_nodes, features), children (batch, max_nodes, "
                             f"max_children); got input shapes {input_shape!r}")
        xs, cs = (tuple(int(d) for d in s) for s in input_shape)
        if len(xs) != 2 or len(cs) != 2 or xs[0] != cs[0] or min(xs + cs) < 1:
            raise ValueError(f"{type(self).__name__} {self.name!r}: x must be (batch, max_nodes, "
                             f"features) and children (batch, max_nodes, max_children) with the "
                             f"same max_nodes; got per-sample shapes {xs} and {cs}")
        return xs, cs

    def build(self, input_shape):
        xs, cs = self._shapes(input_shape)
        g, r = self._widths()
        self.add_weight("kernel", (xs[1], g), self.kernel_initializer)
        self.add_weight("recurrent_kernel", (r, g), self.recurrent_initializer)
        self.add_weight("bias", (g,), self._bias_initializer())
        self.input_shape = [xs, cs]
        self.built = True

    def _bias_initializer(self):
        return self.bias_initializer

    def _check_call_shapes(self, shapes):
        xs, cs = self._shapes(shapes)
        if xs[1] != self.input_shape[0][1] or xs[0] != cs[0]:
            raise ValueError(f"layer {self.name!r} was built for x with {self.input_shape[0][1]} "
                             f"features; called on shapes {xs}, {cs}")

    def _accepts_input_shape(self, input_shape):
        try:
            self._check_call_shapes(input_shape)
        except ValueError:
            return False
        return True

    def compute_output_shape(self, input_shape):
        xs, _ = self._shapes(input_shape)
        return (xs[0], self.units) if self.return_nodes else (self.units,)

    @property
    def kernel(self):
        return self._weights[0]

    @property
    def recurrent_kernel(self):
        return self._weights[1]

    @property
    def bias(self):
        return self._weights[2]

    # -- running --------------------------------------------------------------------------
    def forward(self, inputs, training=False):
        """The output for [x, children] (see the module docstring); the array returned is
        the layer's buffer (copy it to keep it)."""
        if not isinstance(inputs, (list, tuple)) or len(inputs) != 2:
            raise TypeError(f"{type(self).__name__} {self.name!r} takes a list [x, children]; "
                            f"got {type(inputs).__name__}")
        x = check_numeric(inputs[0], "x")
        children = np.asarray(inputs[1])
        if x.ndim != 3 or children.ndim != 3 or x.shape[:2] != children.shape[:2] \
                or 0 in x.shape or 0 in children.shape:
            raise ValueError(f"layer {self.name!r}: x must be (batch, max_nodes, features) and "
                             f"children (batch, max_nodes, max_children), non-empty, with the "
                             f"same batch and max_nodes; got {x.shape} and {children.shape}")
        if self.dtype is None:
            self.dtype = np.dtype(np.float32)
        if not self.built:
            self.build([x.shape[1:], children.shape[1:]])
            size = self._count_trainable()
            self._bind(np.empty(size, self.dtype), np.zeros(size, self.dtype), 0)
        else:
            self._check_call_shapes([x.shape[1:], children.shape[1:]])
        x = np.ascontiguousarray(x, dtype=self.dtype)
        return self._forward([x, children], training)

    def backward(self, grad_output):
        """[dx, dchildren] for the last forward (dchildren is zeros); fills get_gradients()."""
        if not hasattr(self, "_last_output_shape"):
            raise RuntimeError(f"layer {self.name!r}: call forward before backward")
        g = check_numeric(grad_output, "grad_output")
        if g.shape != self._last_output_shape:
            raise ValueError(f"grad_output must have the shape of the last output "
                             f"{self._last_output_shape}; got {g.shape}")
        dx, _ = self._backward(np.ascontiguousarray(g, dtype=self.dtype), True)
        return [dx, np.zeros(self._state[-1], self.dtype)]

    def _forward(self, inputs, training):
        x, children = inputs
        n, m, f = x.shape
        sched = _k.schedule(_as_index_array(children, "children"), self._max_children)
        src, pos = sched["src"], sched["pos"]
        p, h_units = len(src), self.units
        e = len(sched["kids"])
        g, r = self._widths()
        child_sum = self._cell == _k.CELL_CHILD_SUM
        xg = self._buffer("xg", (p, f))
        _k.gather(x.reshape(n * m, f), src, xg)
        z = self._buffer("z", (p, g))
        gemm(xg, self._weights[0], z, bias=self._weights[2])
        hc = self._buffer("hc", (p, r))
        h = self._buffer("h", (p, h_units))
        lstm = self._cell != _k.CELL_RNN
        c = self._buffer("c", (p, h_units) if lstm else (0, 0))
        tc = self._buffer("tc", (p, h_units) if lstm else (0, 0))
        hk = self._buffer("hk", (e, h_units) if child_sum else (0, 0))
        fe = self._buffer("fe", (e, h_units) if child_sum else (0, 0))
        _k.forward(self._cell, self._act_code(), sched["level_start"], sched["edge_start"],
                   sched["kids"], z, self._weights[1], hc, h, c, tc, hk, fe)
        self._state = (sched, xg, z, hc, h, c, tc, hk, fe, x.shape, children.shape)
        if self.return_nodes:
            out = self._buffer("out", (n * m, h_units))
            _k.scatter(h, pos, out)
            y = out.reshape(n, m, h_units).view(MaskedOutput)
            y._keras_mask = (pos >= 0).reshape(n, m)
        else:
            y = self._buffer("out_root", (n, h_units))
            np.take(h, sched["roots"], axis=0, out=y)
        self._last_output_shape = y.shape
        return y

    def _backward(self, grad_output, need_input_grad):
        sched, xg, z, hc, h, c, tc, hk, fe, x_shape, c_shape = self._state
        n, m, f = x_shape
        p, units = h.shape
        e = len(sched["kids"])
        g, r = self._widths()
        lstm = self._cell != _k.CELL_RNN
        child_sum = self._cell == _k.CELL_CHILD_SUM
        dh = self._buffer("dh", (p, units))
        if self.return_nodes:
            _k.gather(grad_output.reshape(n * m, units), sched["src"], dh)
        else:
            dh.fill(0)
            dh[sched["roots"]] = grad_output
        dc = self._buffer("dc", (p, units) if lstm else (0, 0))
        dc.fill(0)
        dz = self._buffer("dz", (p, g))
        dhc = self._buffer("dhc", (p, r))
        dfe = self._buffer("dfe", (e, units) if child_sum else (0, 0))
        dhk = self._buffer("dhk", (e, units) if child_sum else (0, 0))
        ut = self._buffer("ut", (g, r))      # U^T, contiguous: read in place by the GEMMs
        np.copyto(ut, self._weights[1].T)
        _k.backward(self._cell, self._act_code(), sched["level_start"], sched["edge_start"],
                    sched["kids"], z, ut, h, c, tc, fe, dh, dc, dz, dhc, dfe,
                    dhk)
        dw, du, db = self._gradients
        w = self._weights[0]
        first = int(sched["level_start"][1]) if len(sched["level_start"]) > 2 else p
        # The leaves (rows [0, first)) have no forget gates: their columns of dz are zero,
        # so the leaves' share of dW and dx skips them (LSTM cells).
        blocks = self._leaf_gate_blocks() if first > 0 else None
        if blocks is None:
            gemm(xg.T, dz, dw, b_sums=db)
        else:
            if first < p:
                gemm(xg[first:].T, dz[first:], dw, b_sums=db)
            else:
                dw.fill(0)
                db.fill(0)
            for a, b in blocks:
                t = self._buffer(f"dw_leaves_{a}", (f, b - a))
                tb = self._buffer(f"db_leaves_{a}", (b - a,))
                gemm(xg[:first].T, dz[:first, a:b], t, b_sums=tb)
                dw[:, a:b] += t
                db[a:b] += tb
        if first < p:      # the rows with children (the leaves' hc is zero)
            gemm(hc[first:].T, dz[first:], du)
        else:
            du.fill(0)
        if child_sum:      # the forget columns: each edge's child h with its gate gradient
            if e:
                df = self._buffer("du_forget", (units, units))
                gemm(hk.T, dfe, df)
                du[:, units:2 * units] = df
            else:
                du[:, units:2 * units] = 0
        if not need_input_grad:
            return None
        dxg = self._buffer("dxg", (p, f))
        if blocks is None:
            gemm(dz, w.T, dxg)
        else:
            if first < p:
                gemm(dz[first:], w.T, dxg[first:])
            for i, (a, b) in enumerate(blocks):
                gemm(dz[:first, a:b], w[:, a:b].T, dxg[:first], accumulate=i > 0)
        dx = self._buffer("dx", (n * m, f))
        _k.scatter(dxg, sched["pos"], dx)
        return [dx.reshape(n, m, f), None]    # children (indices) have no gradient

    def _act_code(self):
        return _k.TACT_TANH

    def _leaf_gate_blocks(self):
        """Column blocks of z a leaf uses (its gates other than the forget gates), or
        None when every column is used."""
        return None

    def get_config(self):
        return {"name": self.name, "units": self.units, "return_nodes": self.return_nodes,
                "kernel_initializer": self.kernel_initializer.name,
                "recurrent_initializer": self.recurrent_initializer.name,
                "bias_initializer": self.bias_initializer.name}


class TreeRNN(_TreeLayer):
    """Recursive neural network over binary trees (Socher et al. 2011): every node's state
    h = activation(x W + [h_left, h_right] U + b), missing children counting as zeros (a
    leaf: activation(x W + b)). activation: "tanh" (default), "relu", "sigmoid",
    "linear". Inputs [x, children]; see the module docstring."""

    _cell = _k.CELL_RNN

    def __init__(self, units, activation="tanh", return_nodes=False, **kwargs):
        super().__init__(units, return_nodes=return_nodes, **kwargs)
        key = "linear" if activation is None else activation
        if not isinstance(key, str) or key.lower() not in _k.ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_k.ACTIVATIONS)} for TreeRNN; "
                             f"got {activation!r}")
        self.activation = key.lower()

    def _widths(self):
        return self.units, 2 * self.units

    def _act_code(self):
        return _k.ACTIVATIONS[self.activation]

    def get_config(self):
        return {**super().get_config(), "activation": self.activation}


class TreeLSTM(_TreeLayer):
    """Tree-LSTM (Tai et al. 2015). variant="child_sum" (any number of children, order
    ignored: dependency trees) or "binary" (N-ary with N = 2: left and right child have
    their own weights and forget gates; constituency trees). unit_forget_bias: the
    forget gates' bias starts at 1 (as Keras's LSTM). Inputs [x, children]; see the
    module docstring."""

    def __init__(self, units, variant="child_sum", return_nodes=False, unit_forget_bias=True,
                 **kwargs):
        super().__init__(units, return_nodes=return_nodes, **kwargs)
        if variant not in ("child_sum", "binary"):
            raise ValueError(f"variant must be 'child_sum' or 'binary'; got {variant!r}")
        self.variant = variant
        if not isinstance(unit_forget_bias, (bool, np.bool_)):
            raise TypeError(f"unit_forget_bias must be True or False; got {unit_forget_bias!r}")
        self.unit_forget_bias = bool(unit_forget_bias)
        self._cell = _k.CELL_BINARY if variant == "binary" else _k.CELL_CHILD_SUM
        # child-sum takes any number of children (limited only by the children array)
        self._max_children = 2 if variant == "binary" else 2 ** 31 - 1

    def _widths(self):
        u = self.units
        return (5 * u, 2 * u) if self.variant == "binary" else (4 * u, u)

    def _leaf_gate_blocks(self):
        u = self.units      # binary i | f0 f1 | u o; child-sum i | f | u o
        return [(0, u), (3 * u, 5 * u)] if self.variant == "binary" else [(0, u), (2 * u, 4 * u)]

    def _bias_initializer(self):
        if not self.unit_forget_bias:
            return self.bias_initializer
        base, u = self.bias_initializer, self.units
        forget = slice(u, 3 * u) if self.variant == "binary" else slice(u, 2 * u)

        def init(shape, dtype=None):
            b = np.array(base(shape, dtype=dtype))
            b[forget] = 1
            return b

        init.name = base.name
        return init

    def get_config(self):
        return {**super().get_config(), "variant": self.variant,
                "unit_forget_bias": self.unit_forget_bias}
