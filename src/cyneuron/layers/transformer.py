"""Transformer building blocks: token + position embeddings, sinusoidal positional
encoding, encoder and decoder blocks (keras-hub's names and arguments).

The blocks are made of the public layers (MultiHeadAttention, Dropout, LayerNormalization,
Dense) and run them in order, so a user can assemble the same block from those layers in
a functional graph. A block's weights are its sublayers' weights (in the order listed in
each class) and live in the model's flat parameter buffer like any layer's.
"""
import math
import numbers

import numpy as np

from .. import activations, initializers
from .._config import fusion_enabled
from .._kernels.arrays import add
from .attention import MultiHeadAttention
from .base import Layer
from .dense import Dense
from .embedding import Embedding
from .normalization import LayerNormalization
from .regularization import Dropout


# ---------------------------------------------------------------------------------------
# Embeddings
# ---------------------------------------------------------------------------------------
class TokenAndPositionEmbedding(Embedding):
    """Token embeddings plus learned position embeddings (keras-hub's layer):
    y[b, t] = token_embeddings[ids[b, t]] + position_embeddings[t].

    vocabulary_size: ids lie in [0, vocabulary_size); sequence_length: the longest input
    it takes; embedding_dim: the vector size; mask_zero: id 0 is padding (the output
    carries the padding mask, as Embedding's). Weights: token_embeddings
    (vocabulary_size, embedding_dim), position_embeddings (sequence_length, embedding_dim).
    """

    def __init__(self, vocabulary_size, sequence_length, embedding_dim,
                 embeddings_initializer="uniform", mask_zero=False, name=None, dtype=None):
        super().__init__(vocabulary_size, embedding_dim,
                         embeddings_initializer=embeddings_initializer, mask_zero=mask_zero,
                         name=name, dtype=dtype)
        if isinstance(sequence_length, bool) or not isinstance(sequence_length,
                                                               numbers.Integral) \
                or sequence_length < 1:
            raise ValueError(f"sequence_length must be a positive int; got {sequence_length!r}")
        self.sequence_length = int(sequence_length)
        self._initializer_name = embeddings_initializer

    def build(self, input_shape):
        if len(input_shape) != 1:
            raise ValueError(f"TokenAndPositionEmbedding {self.name!r} takes ids of shape "
                             f"(batch, steps); got per-sample shape {tuple(input_shape)}")
        if input_shape[0] > self.sequence_length:
            raise ValueError(f"TokenAndPositionEmbedding {self.name!r}: sequences of "
                             f"{input_shape[0]} steps exceed sequence_length="
                             f"{self.sequence_length}")
        super().build(input_shape)
        self.add_weight("position_embeddings", (self.sequence_length, self.output_dim),
                        self.embeddings_initializer)

    def _forward(self, x, training):
        y = super()._forward(x, training)
        y += self._weights[1][:x.shape[1]]
        return y

    def _backward(self, grad_output, need_input_grad):
        dpos = self._gradients[1]
        T = grad_output.shape[1]
        np.sum(grad_output, axis=0, out=dpos[:T])
        dpos[T:] = 0
        return super()._backward(grad_output, need_input_grad)

    def get_config(self):
        return {"name": self.name, "vocabulary_size": self.input_dim,
                "sequence_length": self.sequence_length, "embedding_dim": self.output_dim,
                "embeddings_initializer": self._initializer_name
                if isinstance(self._initializer_name, str) else "uniform",
                "mask_zero": self.mask_zero}


def sinusoidal_encoding(steps, dim, max_wavelength=10000.0, dtype=np.float32):
    """The (steps, dim) sinusoidal position encoding of "Attention Is All You Need":
    sin(t / w^(2i/dim)) in the even columns, cos in the odd ones."""
    pos = np.arange(steps, dtype=np.float64)[:, None]
    i = np.arange(0, dim, 2, dtype=np.float64)
    freq = np.exp(-math.log(max_wavelength) * i / dim)
    pe = np.zeros((steps, dim))
    pe[:, 0::2] = np.sin(pos * freq)
    pe[:, 1::2] = np.cos(pos * freq[:dim // 2])
    return pe.astype(dtype)


class PositionalEncoding(Layer):
    """Adds the fixed sinusoidal position encoding to its input (batch, steps, dim):
    y = x + PE[:steps] (sinusoidal_encoding; no weights). Padding masks pass through."""

    supports_masking = True

    def __init__(self, max_wavelength=10000.0, name=None, dtype=None):
        super().__init__(name=name, dtype=dtype)
        if isinstance(max_wavelength, bool) or not isinstance(max_wavelength, numbers.Real) \
                or not max_wavelength > 1:
            raise ValueError(f"max_wavelength must be a number > 1; got {max_wavelength!r}")
        self.max_wavelength = float(max_wavelength)

    def build(self, input_shape):
        if len(input_shape) != 2:
            raise ValueError(f"PositionalEncoding {self.name!r} takes (batch, steps, dim); "
                             f"got per-sample shape {tuple(input_shape)}")
        super().build(input_shape)
        self._pe = sinusoidal_encoding(*self.input_shape, self.max_wavelength, self.dtype)

    def _forward(self, x, training):
        y = self._buffer("y", x.shape)
        np.add(x, self._pe, out=y)
        self._last_output_shape = y.shape
        return y

    def _backward(self, grad_output, need_input_grad):
        return grad_output if need_input_grad else None

    def get_config(self):
        return {"name": self.name, "max_wavelength": self.max_wavelength}


# ---------------------------------------------------------------------------------------
# Blocks made of sublayers
# ---------------------------------------------------------------------------------------
class _Block(Layer):
    """A layer made of sublayers: its weights and gradients are theirs, in order."""

    _abstract = True
    supports_masking = True
    _input_masks = True
    _mask_from_first_input = True

    def __init__(self, num_heads, intermediate_dim=None, dropout=0.0, activation="relu",
                 norm_first=False, layer_norm_epsilon=1e-5, key_dim=None, ff_dim=None,
                 name=None, dtype=None):
        super().__init__(name=name, dtype=dtype)
        if intermediate_dim is None:
            intermediate_dim = ff_dim
        elif ff_dim is not None and ff_dim != intermediate_dim:
            raise ValueError("give intermediate_dim or ff_dim, not two different values")
        self._check_options(num_heads, intermediate_dim, dropout, activation, norm_first,
                            layer_norm_epsilon, key_dim)

    def _sublayers(self):
        raise NotImplementedError

    def _collect(self):
        subs = self._sublayers()
        self._weights = [w for layer in subs for w in layer._weights]
        self._gradients = [g for layer in subs for g in layer._gradients]
        self._weight_names = [f"{layer.name}/{n}" for layer in subs
                              for n in layer._weight_names]
        self._trainable = [t for layer in subs for t in layer._trainable]

    def _build_sub(self, layer, shape):
        layer.dtype = self.dtype
        layer.build(shape)
        return layer.compute_output_shape(shape)

    def _bind(self, params, grads, offset):
        for layer in self._sublayers():
            offset = layer._bind(params, grads, offset)
        self._collect()
        return offset

    def _replica(self):
        r = super()._replica()
        r._replicate_sublayers()
        r._collect()
        return r

    def _attend(self, mha, q, v, training, qmask, vmask, causal):
        mha._layout = ("query", "value")
        mha._causal = causal
        return mha._forward([q, v], training, masks=[qmask, vmask])

    def _add(self, key, a, b, c=None):
        """a + b (+ c) into the block's buffer `key`: residual sums and gradient fan-in,
        on all threads (numpy's add runs on one: 2048 x 128 float32, 2 threads, 84 -> 17 us)."""
        out = self._buffer(key, a.shape)
        add(a, b, out, c)
        return out

    # The feed-forward sublayer, the same in both blocks: FF = Dense(intermediate_dim,
    # activation), Dense(d_model), dropout; with its residual connection and layer norm,
    # h + Drop(FF(LN(h))) (pre-norm) or LN(h + Drop(FF(h))) (post-norm).
    _FFN_KEYS = ("_ff1", "_ff2", "_drop_ff", "_ln_ff")

    def _make_ffn(self, d_model):
        n = self.name
        self._ff1 = Dense(self.intermediate_dim, activation=self.activation,
                          name=f"{n}/intermediate_dense")
        self._ff2 = Dense(d_model, name=f"{n}/output_dense")
        self._drop_ff = Dropout(self.dropout, name=f"{n}/feedforward_dropout")
        self._ln_ff = LayerNormalization(epsilon=self.layer_norm_epsilon,
                                         name=f"{n}/feedforward_layer_norm")

    def _build_ffn(self, shape):
        for layer in (self._drop_ff, self._ln_ff):
            self._build_sub(layer, shape)
        self._build_sub(self._ff2, self._build_sub(self._ff1, shape))

    def _ffn(self, x, training):
        return self._drop_ff._forward(self._ff2._forward(self._ff1._forward(x, training),
                                                         training), training)

    def _ffn_backward(self, g):
        g = self._drop_ff._backward(g, True)
        # the first Dense's activation derivative in the second's input-gradient GEMM
        # (as a Sequential model fuses it), not a pass of its own over both arrays
        into = self._ff1._grad_epilogue() if fusion_enabled() else None
        if into is None:
            return self._ff1._backward(self._ff2._backward(g, True), True)
        return self._ff1._backward(self._ff2._backward(g, True, into=into), True,
                                   grad_is_dz=True)

    def _ffn_residual(self, h, training):
        """The block's output from h: the feed-forward sublayer with residual and norm."""
        if self.norm_first:
            return self._add("y", h, self._ffn(self._ln_ff._forward(h, training), training))
        return self._ln_ff._forward(self._add("y", h, self._ffn(h, training)), training)

    def _ffn_residual_backward(self, g):
        """The gradient of _ffn_residual's input h, given that of its output."""
        if not self.norm_first:
            g = self._ln_ff._backward(g, True)
        f = self._ffn_backward(g)
        if self.norm_first:
            f = self._ln_ff._backward(f, True)
        return self._add("g_ffn", g, f)

    def _check_options(self, num_heads, intermediate_dim, dropout, activation, norm_first,
                       layer_norm_epsilon, key_dim):
        if isinstance(num_heads, bool) or not isinstance(num_heads, numbers.Integral) \
                or num_heads < 1:
            raise ValueError(f"num_heads must be a positive int; got {num_heads!r}")
        if isinstance(intermediate_dim, bool) or not isinstance(intermediate_dim,
                                                                numbers.Integral) \
                or intermediate_dim < 1:
            raise ValueError(f"intermediate_dim (ff_dim) must be a positive int; got "
                             f"{intermediate_dim!r}")
        if key_dim is not None and (isinstance(key_dim, bool) or not isinstance(
                key_dim, numbers.Integral) or key_dim < 1):
            raise ValueError(f"key_dim must be a positive int or None; got {key_dim!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) \
                or not 0 <= dropout < 1:
            raise ValueError(f"dropout must be a number in [0, 1); got {dropout!r}")
        self.num_heads = int(num_heads)
        self.intermediate_dim = int(intermediate_dim)
        self.dropout = float(dropout)
        self.activation = activations.get(activation)
        self.norm_first = bool(norm_first)
        self.layer_norm_epsilon = float(layer_norm_epsilon)
        self.key_dim = None if key_dim is None else int(key_dim)

    def _head_dim(self, d_model):
        if self.key_dim is not None:
            return self.key_dim
        if d_model % self.num_heads:
            raise ValueError(f"{type(self).__name__} {self.name!r}: the feature size "
                             f"{d_model} is not divisible by num_heads={self.num_heads} "
                             f"(give key_dim)")
        return d_model // self.num_heads

    def _base_config(self):
        return {"name": self.name, "num_heads": self.num_heads,
                "intermediate_dim": self.intermediate_dim, "dropout": self.dropout,
                "activation": activations.serialize(self.activation),
                "norm_first": self.norm_first, "layer_norm_epsilon": self.layer_norm_epsilon,
                "key_dim": self.key_dim}


class TransformerEncoder(_Block):
    """One Transformer encoder block (keras-hub's TransformerEncoder):

    norm_first=False (post-norm, the original): h = LN1(x + Drop(MHA(x, x)));
    y = LN2(h + Drop(FF(h))). norm_first=True (pre-norm): h = x + Drop(MHA(LN1(x)));
    y = h + Drop(FF(LN2(h))). FF = Dense(intermediate_dim, activation) then
    Dense(d_model). Heads of size d_model / num_heads (or key_dim). A padding mask on
    the input (Embedding(mask_zero=True)) masks the padded keys and passes on; or give
    padding_mask= (batch, steps) when calling it on arrays.

    ff_dim is accepted as another name for intermediate_dim. Weights, in order: the
    attention's (8), LN1's gamma and beta, FF1's kernel and bias, FF2's, LN2's.
    """

    def _sublayers(self):
        return [self._mha, self._ln1, self._ff1, self._ff2, self._ln_ff]

    def _make(self, d_model):
        n = self.name
        self._mha = MultiHeadAttention(self.num_heads, self._head_dim(d_model),
                                       dropout=self.dropout, name=f"{n}/self_attention")
        self._drop_att = Dropout(self.dropout, name=f"{n}/attention_dropout")
        self._ln1 = LayerNormalization(epsilon=self.layer_norm_epsilon,
                                       name=f"{n}/self_attention_layer_norm")
        self._make_ffn(d_model)

    def build(self, input_shape):
        if len(input_shape) != 2:
            raise ValueError(f"TransformerEncoder {self.name!r} takes (batch, steps, "
                             f"features); got per-sample shape {tuple(input_shape)}")
        shape = tuple(int(d) for d in input_shape)
        self._make(shape[-1])
        self._mha.dtype = self.dtype
        self._mha.build([shape, shape])
        for layer in (self._drop_att, self._ln1):
            self._build_sub(layer, shape)
        self._build_ffn(shape)
        self._collect()
        super().build(shape)

    def _replicate_sublayers(self):
        for key in ("_mha", "_drop_att", "_ln1") + self._FFN_KEYS:
            setattr(self, key, getattr(self, key)._replica())

    def forward(self, x, training=False, padding_mask=None):
        mask = padding_mask if padding_mask is not None else getattr(x, "_keras_mask", None)
        x = self._check_input(x)
        return self._forward(x, training, masks=[mask])

    def _forward(self, x, training, masks=None):
        mask = masks[0] if masks else None
        if mask is not None:
            mask = np.asarray(mask, bool)
            if mask.shape != x.shape[:2]:
                raise ValueError(f"padding_mask must have shape (batch, steps) = "
                                 f"{x.shape[:2]}; got {mask.shape}")
        if self.norm_first:
            a = self._ln1._forward(x, training)
            a = self._drop_att._forward(self._attend(self._mha, a, a, training, mask, mask,
                                                     False), training)
            h = self._add("h", x, a)
        else:
            a = self._drop_att._forward(self._attend(self._mha, x, x, training, mask, mask,
                                                     False), training)
            h = self._ln1._forward(self._add("h", x, a), training)
        y = self._ffn_residual(h, training)
        self._last_output_shape = y.shape
        return y

    def _backward(self, grad_output, need_input_grad):
        g = grad_output
        gh = self._ffn_residual_backward(g)
        if self.norm_first:
            ga = self._drop_att._backward(gh, True)
            dq, dv = self._mha._backward(ga, True)
            gx = self._ln1._backward(self._add("gx", dq, dv), True)
            return self._add("gx2", gx, gh)
        gh = self._ln1._backward(gh, True)
        ga = self._drop_att._backward(gh, True)
        dq, dv = self._mha._backward(ga, True)
        return self._add("gx", dq, dv, gh)

    def get_config(self):
        return self._base_config()


class TransformerDecoder(_Block):
    """One Transformer decoder block (keras-hub's TransformerDecoder): causal
    self-attention, then cross-attention to the encoder's output, then the feed-forward
    network, each with a residual connection and layer normalization (post-norm by
    default, pre-norm with norm_first=True), as TransformerEncoder.

    Called on [decoder_sequence, encoder_sequence] (in a graph:
    `TransformerDecoder(...)([x, enc])`); the padding masks of both are used (the
    decoder's for its queries and self-attention keys, the encoder's for the
    cross-attention keys). Weights: self-attention (8), LN1, cross-attention (8), LN2,
    FF1, FF2, LN3.
    """

    _n_inputs = 2

    def _sublayers(self):
        return [self._self, self._ln1, self._cross, self._ln2, self._ff1, self._ff2,
                self._ln_ff]

    def build(self, input_shape):
        shapes = list(input_shape)
        if len(shapes) != 2 or any(len(s) != 2 for s in shapes):
            raise ValueError(f"TransformerDecoder {self.name!r} takes [decoder (batch, steps, "
                             f"features), encoder (batch, steps, features)]; got "
                             f"{input_shape!r}")
        x_shape, e_shape = (tuple(int(d) for d in s) for s in shapes)
        d_model = x_shape[-1]
        hd = self._head_dim(d_model)
        n = self.name
        self._self = MultiHeadAttention(self.num_heads, hd, dropout=self.dropout,
                                        name=f"{n}/self_attention")
        self._drop1 = Dropout(self.dropout, name=f"{n}/self_attention_dropout")
        self._ln1 = LayerNormalization(epsilon=self.layer_norm_epsilon,
                                       name=f"{n}/self_attention_layer_norm")
        self._cross = MultiHeadAttention(self.num_heads, hd, dropout=self.dropout,
                                         name=f"{n}/cross_attention")
        self._drop2 = Dropout(self.dropout, name=f"{n}/cross_attention_dropout")
        self._ln2 = LayerNormalization(epsilon=self.layer_norm_epsilon,
                                       name=f"{n}/cross_attention_layer_norm")
        self._make_ffn(d_model)
        for mha, shapes_ in ((self._self, [x_shape, x_shape]), (self._cross, [x_shape, e_shape])):
            mha.dtype = self.dtype
            mha.build(shapes_)
        for layer in (self._drop1, self._ln1, self._drop2, self._ln2):
            self._build_sub(layer, x_shape)
        self._build_ffn(x_shape)
        self._collect()
        self.input_shape = [x_shape, e_shape]
        self.built = True

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])

    def _check_call_shapes(self, shapes):
        if [tuple(s) for s in shapes] != [tuple(s) for s in self.input_shape]:
            raise ValueError(f"layer {self.name!r} was built for inputs {self.input_shape}; "
                             f"called on {shapes}")

    def _replicate_sublayers(self):
        for key in ("_self", "_drop1", "_ln1", "_cross", "_drop2", "_ln2") + self._FFN_KEYS:
            setattr(self, key, getattr(self, key)._replica())

    def __call__(self, inputs, training=False, **kwargs):
        from . import input_layer
        if not input_layer.is_symbolic(inputs):
            return self.forward(inputs, training=training, **kwargs)
        return super().__call__(inputs, training=training, **kwargs)

    def forward(self, inputs, training=False, decoder_padding_mask=None,
                encoder_padding_mask=None):
        if not isinstance(inputs, (list, tuple)) or len(inputs) != 2:
            raise TypeError(f"TransformerDecoder {self.name!r} takes [decoder_sequence, "
                            f"encoder_sequence]")
        x, e = inputs
        xm = decoder_padding_mask if decoder_padding_mask is not None else \
            getattr(x, "_keras_mask", None)
        em = encoder_padding_mask if encoder_padding_mask is not None else \
            getattr(e, "_keras_mask", None)
        xs = []
        for a, name in ((x, "decoder_sequence"), (e, "encoder_sequence")):
            a = np.asarray(a)
            if a.ndim != 3 or a.size == 0:
                raise ValueError(f"{name} must be a non-empty (batch, steps, features) array; "
                                 f"got shape {a.shape}")
            xs.append(a)
        if xs[0].shape[0] != xs[1].shape[0]:
            raise ValueError("decoder_sequence and encoder_sequence have different batch sizes")
        if self.dtype is None:
            self.dtype = np.dtype(np.float32)
        if not self.built:
            self.build([xs[0].shape[1:], xs[1].shape[1:]])
            size = self._count_trainable()
            self._bind(np.empty(size, self.dtype), np.zeros(size, self.dtype), 0)
        else:
            self._check_call_shapes([xs[0].shape[1:], xs[1].shape[1:]])
        xs = [np.ascontiguousarray(a, dtype=self.dtype) for a in xs]
        return self._forward(xs, training, masks=[xm, em])

    def backward(self, grad_output):
        g = np.ascontiguousarray(grad_output, dtype=self.dtype)
        if g.shape != getattr(self, "_last_output_shape", None):
            raise ValueError("grad_output must have the shape of the last output")
        return self._backward(g, True)

    def _forward(self, xs, training, masks=None):
        x, e = xs
        xm, em = (masks or [None, None])
        xm = None if xm is None else np.asarray(xm, bool)
        em = None if em is None else np.asarray(em, bool)
        if self.norm_first:
            a = self._ln1._forward(x, training)
            a = self._drop1._forward(self._attend(self._self, a, a, training, xm, xm, True),
                                     training)
            h1 = self._add("h1", x, a)
            c = self._ln2._forward(h1, training)
            c = self._drop2._forward(self._attend(self._cross, c, e, training, xm, em, False),
                                     training)
            h2 = self._add("h2", h1, c)
        else:
            a = self._drop1._forward(self._attend(self._self, x, x, training, xm, xm, True),
                                     training)
            h1 = self._ln1._forward(self._add("h1", x, a), training)
            c = self._drop2._forward(self._attend(self._cross, h1, e, training, xm, em,
                                                  False), training)
            h2 = self._ln2._forward(self._add("h2", h1, c), training)
        y = self._ffn_residual(h2, training)
        self._last_output_shape = y.shape
        return y

    def _backward(self, grad_output, need_input_grad):
        g = grad_output
        g2 = self._ffn_residual_backward(g)
        if self.norm_first:
            dq, de = self._cross._backward(self._drop2._backward(g2, True), True)
            g1 = self._add("g1", g2, self._ln2._backward(dq, True))
            dq, dv = self._self._backward(self._drop1._backward(g1, True), True)
            gx = self._ln1._backward(self._add("gx", dq, dv), True)
            return [self._add("gx2", gx, g1), de]
        g2 = self._ln2._backward(g2, True)
        dq, de = self._cross._backward(self._drop2._backward(g2, True), True)
        g1 = self._ln1._backward(self._add("g1", g2, dq), True)
        dq, dv = self._self._backward(self._drop1._backward(g1, True), True)
        return [self._add("gx", dq, dv, g1), de]

    def get_config(self):
        return self._base_config()
