"""MultiHeadAttention (Keras 3's names, call signature and weight layout) on the fused
attention kernel (cyneuron._kernels.attention).

Projections are single GEMMs over all positions: query (B·T_q, d_q) · W_q (d_q, H·d_k)
gives (B, T_q, H, d_k), which the kernel reads as a (B, H, T_q, d_k) view: no transposed
copies. The kernel writes the heads' outputs in (B, T_q, H, d_v) order for the output
projection (B·T_q, H·d_v) · W_o (H·d_v, d_out), and the backward pass mirrors it.
"""
import math
import numbers

import numpy as np

from .. import initializers
from .. import ops as _ops
from .._kernels import attention as _k
from .._kernels.gemm import gemm
from .._random import get_rng
from .._validation import check_numeric
from .base import Layer


def _positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive int; got {value!r}")
    return int(value)


def _seq_mask(mask, batch, steps, name):
    """A (batch, steps) boolean padding mask, or None."""
    if mask is None:
        return None
    mask = np.asarray(mask)
    if mask.shape != (batch, steps):
        raise ValueError(f"{name} must have shape (batch, steps) = {(batch, steps)}; "
                         f"got {mask.shape}")
    return mask.astype(bool, copy=False)


class MultiHeadAttention(Layer):
    """Multi-head attention as `keras.layers.MultiHeadAttention`.

    num_heads, key_dim: heads and the size of each query/key head; value_dim: the size
    of each value head (default key_dim); dropout: rate of the attention dropout (on the
    softmax weights, inside the kernel, while training); use_bias; output_shape: the
    size of the last output axis (default: the query's feature size).

    Called as `mha(query, value, key=None, attention_mask=None, use_causal_mask=False,
    return_attention_scores=False)`: query (B, T_q, d_q), value (B, T_k, d_v), key
    (B, T_k, d_k) (default: value); attention_mask boolean, broadcastable to
    (B, T_q, T_k) (or (B, H, T_q, T_k)), True where a query may attend to a key. Padding
    masks carried by the inputs (Embedding(mask_zero=True)) are combined with it as in
    Keras: query rows and value columns at padded steps are masked; a query row that sees
    no key outputs zeros (before the output projection's bias). Works on numpy arrays
    and on symbolic tensors inside `cn.Model` graphs (return_attention_scores only on
    arrays).

    Weights (Keras order and layout): query kernel (d_q, H, d_k) and bias (H, d_k), key
    kernel (d_k_in, H, d_k) and bias, value kernel (d_v_in, H, d_v) and bias, output
    kernel (H, d_v, d_out) and bias (d_out,).
    """
    _regularizable = {"kernel": ("query_kernel", "key_kernel", "value_kernel", "output_kernel"),
                      "bias": ("query_bias", "key_bias", "value_bias", "output_bias")}

    supports_masking = True
    _n_inputs = "many"
    _input_masks = True          # the engine hands every input's padding mask to _forward
    _mask_from_first_input = True

    def __init__(self, num_heads, key_dim, value_dim=None, dropout=0.0, use_bias=True,
                 output_shape=None, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", seed=None, name=None, dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.num_heads = _positive_int(num_heads, "num_heads")
        self.key_dim = _positive_int(key_dim, "key_dim")
        self.value_dim = self.key_dim if value_dim is None else _positive_int(value_dim,
                                                                              "value_dim")
        if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) \
                or not 0 <= dropout < 1:
            raise ValueError(f"dropout must be a number in [0, 1); got {dropout!r}")
        self.dropout = float(dropout)
        self.use_bias = bool(use_bias)
        if output_shape is not None:
            if isinstance(output_shape, (tuple, list)):
                if len(output_shape) != 1:
                    raise ValueError("output_shape must be an int (the last output axis) or a "
                                     f"tuple of one int; got {output_shape!r}")
                output_shape = output_shape[0]
            output_shape = _positive_int(output_shape, "output_shape")
        self.output_shape = output_shape
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)
                                 or seed < 0):
            raise ValueError(f"seed must be a non-negative int or None; got {seed!r}")
        self.seed = seed
        self._rng = None if seed is None else np.random.default_rng(int(seed))
        self._layout = ("query", "value")       # which inputs a graph node passes
        self._causal = False

    # -- building --------------------------------------------------------------------------
    def build(self, input_shape):
        shapes = list(input_shape)
        if len(shapes) < 2 or not all(isinstance(s, (tuple, list)) for s in shapes[:2]):
            raise ValueError(f"MultiHeadAttention {self.name!r} builds from the shapes of "
                             f"[query, value(, key)]; got {input_shape!r}")
        q_shape, v_shape = tuple(shapes[0]), tuple(shapes[1])
        k_shape = tuple(shapes[2]) if len(shapes) > 2 and shapes[2] is not None else v_shape
        for shape, name in ((q_shape, "query"), (v_shape, "value"), (k_shape, "key")):
            if len(shape) != 2:
                raise ValueError(f"{name} must be (batch, steps, features); got per-sample "
                                 f"shape {shape}")
        H, dk, dv = self.num_heads, self.key_dim, self.value_dim
        dq_in, dk_in, dv_in = q_shape[-1], k_shape[-1], v_shape[-1]
        d_out = self.output_shape or dq_in
        for part, d_in, d_head in (("query", dq_in, dk), ("key", dk_in, dk),
                                   ("value", dv_in, dv)):
            self.add_weight(f"{part}_kernel", (d_in, H, d_head), self.kernel_initializer)
            if self.use_bias:
                self.add_weight(f"{part}_bias", (H, d_head), self.bias_initializer)
        self.add_weight("output_kernel", (H, dv, d_out), self.kernel_initializer)
        if self.use_bias:
            self.add_weight("output_bias", (d_out,), self.bias_initializer)
        self.input_shape = (q_shape, v_shape, k_shape)
        self._features = (dq_in, dv_in, dk_in)
        self.built = True

    def compute_output_shape(self, input_shape):
        q_shape = tuple(input_shape[0])
        return (q_shape[0], self.output_shape or q_shape[-1])

    def _w(self, part):
        """(kernel as a (d_in, H·d) matrix, bias as (H·d,) or None) of a projection."""
        step = 2 if self.use_bias else 1
        i = {"query": 0, "key": 1, "value": 2, "output": 3}[part] * step
        w = self._weights[i]
        kernel = w.reshape(w.shape[0], -1) if part != "output" else w.reshape(-1, w.shape[-1])
        bias = self._weights[i + 1].reshape(-1) if self.use_bias else None
        return kernel, bias, i

    # -- calling ---------------------------------------------------------------------------
    def __call__(self, query, value=None, key=None, attention_mask=None, use_causal_mask=False,
                 return_attention_scores=False, training=False, query_mask=None,
                 value_mask=None, key_mask=None):
        from . import input_layer

        if value is None and isinstance(query, (list, tuple)) and \
                getattr(self, "_saved_call", None) is not None:
            # a graph rebuilt from its config: the inputs in the saved order
            layout, causal = self._saved_call
            if len(query) != len(layout):
                raise ValueError(f"MultiHeadAttention {self.name!r}: the saved call takes "
                                 f"{len(layout)} inputs {layout}; got {len(query)}")
            named = dict(zip(layout, query))
            return self(named["query"], named["value"], key=named.get("key"),
                        attention_mask=named.get("attention_mask"), use_causal_mask=causal)
        if value is None:
            raise TypeError(f"MultiHeadAttention {self.name!r} is called as mha(query, value, "
                            f"key=None, attention_mask=None, ...): value is required")
        tensors = [query, value] + ([key] if key is not None else []) + \
            ([attention_mask] if attention_mask is not None else [])
        if any(input_layer.is_symbolic(t) for t in tensors):
            return self._call_symbolic(query, value, key, attention_mask, use_causal_mask,
                                       return_attention_scores)
        return self.forward(query, value, key=key, attention_mask=attention_mask,
                            use_causal_mask=use_causal_mask,
                            return_attention_scores=return_attention_scores,
                            training=training, query_mask=query_mask, value_mask=value_mask,
                            key_mask=key_mask)

    def _call_symbolic(self, query, value, key, attention_mask, use_causal_mask, scores):
        from . import input_layer

        if scores:
            raise NotImplementedError(f"MultiHeadAttention {self.name!r}: "
                                      "return_attention_scores=True works on arrays, not yet "
                                      "inside a cn.Model graph")
        named = [("query", query), ("value", value), ("key", key),
                 ("attention_mask", attention_mask)]
        layout = tuple(n for n, t in named if t is not None)
        tensors = [t for _, t in named if t is not None]
        for n, t in zip(layout, tensors):
            if not isinstance(t, input_layer.SymbolicTensor):
                raise TypeError(f"MultiHeadAttention {self.name!r}: {n} must be a symbolic "
                                f"tensor like the other inputs; got {type(t).__name__}")
        if hasattr(self, "_node_layout") and (self._node_layout, self._causal) != \
                (layout, bool(use_causal_mask)):
            raise NotImplementedError(f"MultiHeadAttention {self.name!r} is already called in a "
                                      f"graph with other inputs or use_causal_mask; use a "
                                      f"second layer")
        dtypes = {t.dtype for t in tensors[:3 if key is not None else 2]}
        if len(dtypes) > 1:
            raise ValueError(f"MultiHeadAttention {self.name!r}: query, value and key have "
                             f"different dtypes {sorted(d.name for d in dtypes)}")
        if self.dtype is None:
            self.dtype = query.dtype
        shapes = [query.shape[1:], value.shape[1:], key.shape[1:] if key is not None else None]
        if self.built:
            self._check_features([s[-1] if s is not None else None for s in shapes], shapes)
        else:
            self.build(shapes)
        if attention_mask is not None:
            tq, tk = query.shape[1], value.shape[1]
            try:
                np.broadcast_shapes((1,) + tuple(attention_mask.shape[1:]), (1, tq, tk))
            except ValueError:
                raise ValueError(f"attention_mask of shape {attention_mask.shape} does not "
                                 f"broadcast to (batch, T_q, T_k) = (None, {tq}, {tk})") \
                    from None
        self._node_layout = layout
        self._layout = layout
        self._causal = bool(use_causal_mask)
        out_shape = (query.shape[1], self.output_shape or self._features[0])
        return input_layer.connect(self, tensors, True, [out_shape],
                                   has_mask=bool(query.has_mask))[0]

    def _check_features(self, feats, shapes):
        for name, f, want, shape in zip(("query", "value", "key"), feats, self._features,
                                        shapes):
            if f is not None and f != want:
                raise ValueError(f"layer {self.name!r} was built for {name} with {want} "
                                 f"features; got {name} of per-sample shape {tuple(shape)}")

    def _check_call_shapes(self, shapes):
        self._check_features([s[-1] if s is not None else None for s in shapes[:3]], shapes)

    def forward(self, query, value, key=None, attention_mask=None, use_causal_mask=False,
                return_attention_scores=False, training=False, query_mask=None,
                value_mask=None, key_mask=None):
        """The attention output (B, T_q, d_out) for arrays (and the scores (B, H, T_q, T_k)
        with return_attention_scores=True)."""
        arrays = []
        for x, name in ((query, "query"), (value, "value"), (key, "key")):
            if x is None:
                arrays.append(None)
                continue
            x = check_numeric(x, name)
            if x.ndim != 3 or x.shape[0] == 0 or x.shape[1] == 0:
                raise ValueError(f"{name} must be a non-empty (batch, steps, features) "
                                 f"array; got shape {x.shape}")
            arrays.append(x)
        q, v, k = arrays
        if v.shape[0] != q.shape[0] or (k is not None and k.shape[:2] != v.shape[:2]):
            raise ValueError(f"query {q.shape}, value {v.shape}"
                             f"{'' if k is None else f', key {k.shape}'}: the batch sizes, and "
                             f"the steps of key and value, must agree")
        if self.dtype is None:
            self.dtype = np.dtype(np.float32)
        shapes = [q.shape[1:], v.shape[1:], None if k is None else k.shape[1:]]
        if not self.built:
            self.build(shapes)
            size = self._count_trainable()
            self._bind(np.empty(size, self.dtype), np.zeros(size, self.dtype), 0)
        else:
            self._check_features([s[-1] if s is not None else None for s in shapes], shapes)
        masks = [query_mask if query_mask is not None else getattr(query, "_keras_mask", None),
                 value_mask if value_mask is not None else getattr(value, "_keras_mask", None)]
        if key is not None:
            masks.append(key_mask if key_mask is not None else getattr(key, "_keras_mask", None))
        xs = [np.ascontiguousarray(q, dtype=self.dtype), np.ascontiguousarray(v, dtype=self.dtype)]
        if k is not None:
            xs.append(np.ascontiguousarray(k, dtype=self.dtype))
        xs = [x.copy() if self._shares_buffer(x) else x
              for x in xs]
        self._layout = ("query", "value") + (("key",) if k is not None else ())
        self._causal = bool(use_causal_mask)
        if attention_mask is not None:
            self._layout += ("attention_mask",)
            xs.append(attention_mask)
            masks.append(None)
        y = self._forward(xs, training, masks=masks)
        if return_attention_scores:
            return y, self._scores()
        return y

    def backward(self, grad_output):
        """Gradients w.r.t. [query, value(, key)] of the last forward call (key's only
        when a key was given); fills get_gradients()."""
        if not hasattr(self, "_last_output_shape"):
            raise RuntimeError(f"layer {self.name!r}: call forward before backward")
        g = check_numeric(grad_output, "grad_output")
        if g.shape != self._last_output_shape:
            raise ValueError(f"grad_output must have the shape of the last output "
                             f"{self._last_output_shape}; got {g.shape}")
        grads = self._backward(np.ascontiguousarray(g, dtype=self.dtype), True)
        return [d for d, n in zip(grads, self._layout) if n != "attention_mask"]

    # -- the computation -------------------------------------------------------------------
    def _mask(self, B, Tq, Tk, attention_mask, qmask, vmask):
        """The combined boolean mask as a uint8 (B, H, T_q, T_k) view (stride 0 on
        broadcast axes), or None."""
        H = self.num_heads
        parts = []
        if attention_mask is not None:
            am = check_numeric(attention_mask, "attention_mask")
            if am.dtype.kind == "f":
                am = am != 0
            if am.ndim == 4:
                target = (B, H, Tq, Tk)
            else:
                target = (B, Tq, Tk)
            try:
                am = np.broadcast_to(am, target)
            except ValueError:
                raise ValueError(f"attention_mask of shape {am.shape} does not broadcast to "
                                 f"(batch, T_q, T_k) = {(B, Tq, Tk)} (or (batch, heads, T_q, "
                                 f"T_k) = {(B, H, Tq, Tk)})") from None
            parts.append(am if am.ndim == 4 else am[:, None])
        if qmask is not None:
            parts.append(_seq_mask(qmask, B, Tq, "query mask")[:, None, :, None])
        if vmask is not None:
            parts.append(_seq_mask(vmask, B, Tk, "value mask")[:, None, None, :])
        if not parts:
            return None
        if len(parts) == 1:
            m = parts[0].astype(bool, copy=False)
        else:
            m = parts[0].astype(bool)
            for p in parts[1:]:
                m = m & p
        return np.broadcast_to(m, (B, H, Tq, Tk)).view(np.uint8)

    def _forward(self, xs, training, masks=None):
        parts = dict(zip(self._layout, xs))
        in_masks = dict(zip(self._layout, masks)) if masks is not None else {}
        q_in, v_in = parts["query"], parts["value"]
        k_in = parts.get("key", v_in)
        B, Tq, Tk = q_in.shape[0], q_in.shape[1], v_in.shape[1]
        H, dk, dv = self.num_heads, self.key_dim, self.value_dim
        vmask = in_masks.get("value")
        if vmask is None:
            vmask = in_masks.get("key")
        mask = self._mask(B, Tq, Tk, parts.get("attention_mask"), in_masks.get("query"), vmask)
        Q = self._project("query", q_in, "Q")
        K = self._project("key", k_in, "K")
        V = self._project("value", v_in, "V")
        O = self._buffer("O", (B, Tq, H, dv))
        lse = self._buffer("lse", (B, H, Tq))
        rate = self.dropout if training else 0.0
        key = 0
        if rate > 0:
            key = int((self._rng or get_rng()).integers(0, 2 ** 64, dtype=np.uint64))
        scale = 1.0 / math.sqrt(dk)
        _k.forward(Q.transpose(0, 2, 1, 3), K.transpose(0, 2, 1, 3), V.transpose(0, 2, 1, 3),
                   O.transpose(0, 2, 1, 3), lse, mask, self._causal, scale, rate, key,
                   *_ops.ATTENTION_TILES)
        wo, bo, _ = self._w("output")
        y = self._buffer("y", (B, Tq, wo.shape[1]))
        _ops.matmul(O.reshape(B * Tq, H * dv), wo, bias=bo, out=y.reshape(B * Tq, -1))
        self._state = (q_in, k_in, v_in, Q, K, V, O, lse, mask, rate, key, scale,
                       "key" in parts)
        self._last_output_shape = y.shape
        return y

    def _project(self, part, x, buf):
        w, b, _ = self._w(part)
        B, T = x.shape[:2]
        out = self._buffer(buf, (B, T, self.num_heads, w.shape[1] // self.num_heads))
        _ops.matmul(x.reshape(B * T, -1), w, bias=b, out=out.reshape(B * T, -1))
        return out

    def _backward(self, grad_output, need_input_grad):
        q_in, k_in, v_in, Q, K, V, O, lse, mask, rate, key, scale, has_key = self._state
        B, Tq = q_in.shape[:2]
        H, dk, dv = self.num_heads, self.key_dim, self.value_dim
        g2 = grad_output.reshape(B * Tq, -1)
        wo, bo, io = self._w("output")
        gw = self._gradients
        _ops.matmul(O.reshape(B * Tq, H * dv), g2, trans_a=True,
                    out=gw[io].reshape(wo.shape))
        if bo is not None:
            np.sum(g2, axis=0, out=gw[io + 1])
        dO = self._buffer("dO", O.shape)
        _ops.matmul(g2, wo, trans_b=True, out=dO.reshape(B * Tq, -1))
        dQ = self._buffer("dQ", Q.shape)
        dK = self._buffer("dK", K.shape)
        dV = self._buffer("dV", V.shape)
        t = (0, 2, 1, 3)
        _k.backward(dO.transpose(t), Q.transpose(t), K.transpose(t), V.transpose(t),
                    O.transpose(t), lse, dQ.transpose(t), dK.transpose(t), dV.transpose(t),
                    mask, self._causal, scale, rate, key, *_ops.ATTENTION_TILES)
        dx = {}
        # value before key: without a key input, the key projection's input gradient is
        # added into the value's by its GEMM (accumulate) instead of a pass of its own
        for part, x, d in (("query", q_in, dQ), ("value", v_in, dV), ("key", k_in, dK)):
            w, b, i = self._w(part)
            n = x.shape[0] * x.shape[1]
            x2, d2 = x.reshape(n, -1), d.reshape(n, -1)
            fused = x2.dtype == d2.dtype == w.dtype and x2.flags.c_contiguous
            if fused:   # the bias gradient as the column sums beside the kernel's
                gemm(x2.T, d2, gw[i].reshape(w.shape),
                     b_sums=None if b is None else gw[i + 1].reshape(-1))
            else:
                _ops.matmul(x2, d2, trans_a=True, out=gw[i].reshape(w.shape))
                if b is not None:
                    np.sum(d2, axis=0, out=gw[i + 1].reshape(-1))
            if not need_input_grad:
                continue
            if part == "key" and not has_key:
                into = dx["value"].reshape(n, -1)
                if fused:
                    gemm(d2, w.T, into, accumulate=True)
                else:
                    into += _ops.matmul(d2, w, trans_b=True)
                continue
            dxi = self._buffer("d" + part, x.shape)
            _ops.matmul(d2, w, trans_b=True, out=dxi.reshape(n, -1))
            dx[part] = dxi
        if not need_input_grad:
            return None
        return [dx.get(n) for n in self._layout]

    def _scores(self):
        """The attention weights (B, H, T_q, T_k) of the last forward pass (without
        dropout), formed explicitly: only for return_attention_scores."""
        q_in, k_in, v_in, Q, K, V, O, lse, mask, rate, key, scale, _ = self._state
        s = np.einsum("bqhd,bkhd->bhqk", Q, K) * scale
        ok = np.ones(s.shape, bool)
        if mask is not None:
            ok &= mask.astype(bool)
        if self._causal:
            ok &= np.tril(np.ones(s.shape[-2:], bool))
        p = np.where(ok, np.exp(s - lse[..., None]), 0)
        return p.astype(self.dtype, copy=False)

    def get_config(self):
        config = {"name": self.name, "num_heads": self.num_heads, "key_dim": self.key_dim,
                  "value_dim": self.value_dim, "dropout": self.dropout,
                  "use_bias": self.use_bias, "output_shape": self.output_shape,
                  "seed": self.seed}
        if hasattr(self, "_node_layout"):
            # how the layer is called in its graph, so that a saved model rebuilds it
            config["call"] = {"inputs": list(self._node_layout),
                              "use_causal_mask": self._causal}
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        call = config.pop("call", None)
        layer = cls(**config)
        if call is not None:
            layout = tuple(call["inputs"])
            if layout[:2] != ("query", "value") or not set(layout) <= {
                    "query", "value", "key", "attention_mask"}:
                raise ValueError(f"MultiHeadAttention config: invalid call inputs {layout}")
            layer._saved_call = (layout, bool(call.get("use_causal_mask", False)))
        return layer
