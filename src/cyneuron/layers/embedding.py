"""Embedding: integer token ids -> rows of a learned table (input_dim, output_dim)."""
import numpy as np

from .. import initializers
from .._kernels import recurrent as _k
from .._validation import check_numeric, check_positive
from .base import Layer


class MaskedOutput(np.ndarray):
    """An Embedding output that carries its padding mask to the next layers of a model,
    as Keras's `_keras_mask`: a (batch, timesteps) boolean array, False at id 0.
    Recurrent layers (and Bidirectional) read it; arrays derived from this one do not
    inherit it, so a layer in between (Dropout, Dense...) ends the masking."""

    _keras_mask = None

    def __array_finalize__(self, obj):
        self._keras_mask = None


class Embedding(Layer):
    """Turns token ids into dense vectors: output[..., :] = embeddings[id].

    input_dim: vocabulary size (ids lie in [0, input_dim)). output_dim: vector size.
    embeddings_initializer: "uniform" (U(-0.05, 0.05), the Keras default) or any name
    from cyneuron.initializers. mask_zero: id 0 is padding; the output then carries a
    mask that recurrent layers use to skip those steps (so 0 is not a real token and
    input_dim should be the vocabulary size + 1).

    Ids may arrive as integers or as floats holding integers (a Sequential model turns
    its input into its float dtype; float32 holds integers exactly up to 2**24).
    Anything else is refused with an error naming x. The ids get no gradient (backward
    returns zeros of the input's shape).
    """
    _regularizable = {"embeddings": ("embeddings",)}

    def __init__(self, input_dim, output_dim, embeddings_initializer="uniform", mask_zero=False,
                 name=None, dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.input_dim = int(check_positive(input_dim, "input_dim", integer=True))
        self.output_dim = int(check_positive(output_dim, "output_dim", integer=True))
        self.embeddings_initializer = initializers.get(embeddings_initializer)
        if not isinstance(mask_zero, (bool, np.bool_)):
            raise TypeError(f"mask_zero must be True or False; got {mask_zero!r}")
        self.mask_zero = bool(mask_zero)

    def build(self, input_shape):
        if len(input_shape) < 1:
            raise ValueError(f"Embedding {self.name!r} expects ids x of shape (batch, timesteps, "
                             f"...); got per-sample shape {tuple(input_shape)}")
        self.add_weight("embeddings", (self.input_dim, self.output_dim),
                        self.embeddings_initializer)
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape) + (self.output_dim,)

    @property
    def embeddings(self):
        return self._weights[0]

    def _check_input(self, x):
        x = check_numeric(x, "x")
        if x.ndim < 2:
            raise ValueError(f"layer {self.name!r}: x must have a batch axis, (batch, timesteps); "
                             f"got shape {x.shape}")
        if x.size == 0:
            raise ValueError(f"layer {self.name!r}: x is empty (shape {x.shape})")
        if not self.built:
            self._build_standalone(x)
        if x.shape[1:] != self.input_shape:
            raise ValueError(f"layer {self.name!r} was built for ids of shape "
                             f"(batch, {', '.join(map(str, self.input_shape))}); got {x.shape}")
        return x

    def _token_ids(self, x):
        """x as flat int64 ids, checked: integers (also when stored as floats) in range."""
        if x.dtype.kind == "f":
            if not np.isfinite(x).all():
                raise ValueError("x (token ids) contains NaN or infinity")
            fractional = x != np.floor(x)
            if fractional.any():
                raise ValueError(f"x (token ids) must hold integers; got "
                                 f"{x[fractional].reshape(-1)[0].item()!r}")
        elif x.dtype.kind not in "biu":
            raise TypeError(f"x (token ids) must hold integers; got dtype {x.dtype.name!r}")
        lo, hi = x.min(), x.max()
        if lo < 0 or hi >= self.input_dim:
            raise ValueError(f"x (token ids) must lie in [0, input_dim={self.input_dim}); got "
                             f"ids from {lo:g} to {hi:g}")
        ids = self._ids_buffer(x.size)
        np.copyto(ids, x.reshape(-1), casting="unsafe")
        return ids

    def _ids_buffer(self, size):
        buf = self._buffers.get("ids")
        if buf is None or buf.shape != (size,):
            buf = self._buffers["ids"] = np.empty(size, np.int64)
        return buf

    def _forward(self, x, training):
        ids = self._token_ids(x)
        out = self._buffer("y", (ids.size, self.output_dim))
        _k.embedding_lookup(ids, self._weights[0], out)
        y = out.reshape(x.shape + (self.output_dim,))
        if self.mask_zero:
            y = y.view(MaskedOutput)
            y._keras_mask = np.asarray(x) != 0
        self._ids = ids
        self._input_shape_last = x.shape
        self._last_output_shape = y.shape
        return y

    def _backward(self, grad_output, need_input_grad):
        _k.embedding_grad(self._ids, grad_output.reshape(-1, self.output_dim),
                          self._gradients[0])
        if not need_input_grad:
            return None
        dx = self._buffer("dx", self._input_shape_last)
        dx.fill(0)
        return dx

    def compute_mask(self, x):
        """The padding mask of ids x (True where x != 0), or None without mask_zero."""
        return (np.asarray(x) != 0) if self.mask_zero else None

    def get_config(self):
        return {"name": self.name, "input_dim": self.input_dim, "output_dim": self.output_dim,
                "embeddings_initializer": self.embeddings_initializer.name,
                "mask_zero": self.mask_zero}
