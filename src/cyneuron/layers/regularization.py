"""Dropout: zero a random fraction `rate` of the inputs while training (inverted dropout)."""
import math
import numbers

import numpy as np

from .._kernels import normalization as _k
from .._random import get_rng
from .base import Layer


class Dropout(Layer):
    """Inverted dropout: while training, each element is kept with probability
    1 - rate and scaled by 1 / (1 - rate), so the expected output equals the input;
    at inference the layer is the identity (it returns its input, no copy).

    noise_shape: the shape of the mask, broadcast over the input, as in Keras
    (e.g. (None, 1, features) shares one mask across the time steps); None entries
    take the input's size. seed: a non-negative int gives the layer its own random
    stream (the same seed draws the same sequence of masks); None draws from the
    library generator, which `cn.set_seed` makes reproducible.
    """

    def __init__(self, rate, noise_shape=None, seed=None, name=None, dtype=None):
        super().__init__(name=name, dtype=dtype)
        if isinstance(rate, bool) or not isinstance(rate, numbers.Real) \
                or not math.isfinite(rate) or not 0 <= rate < 1:
            raise ValueError(f"rate must be a number in [0, 1); got {rate!r}")
        self.rate = float(rate)
        if noise_shape is not None:
            try:
                noise_shape = tuple(noise_shape)
            except TypeError:
                noise_shape = None
            if noise_shape is None or not noise_shape or not all(
                    d is None or (isinstance(d, numbers.Integral) and not isinstance(d, bool)
                                  and d > 0) for d in noise_shape):
                raise ValueError("noise_shape must be a sequence of positive ints or None "
                                 "(one per input axis, batch axis included)")
        self.noise_shape = noise_shape
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)
                                 or seed < 0):
            raise ValueError(f"seed must be a non-negative int or None; got {seed!r}")
        self.seed = seed
        self._rng = None if seed is None else np.random.default_rng(int(seed))

    def _mask_shape(self, shape):
        if self.noise_shape is None:
            return shape
        if len(self.noise_shape) != len(shape):
            raise ValueError(f"layer {self.name!r}: noise_shape {self.noise_shape} must have one "
                             f"entry per axis of the input {shape}")
        mask_shape = tuple(s if d is None else int(d) for d, s in zip(self.noise_shape, shape))
        if any(d not in (1, s) for d, s in zip(mask_shape, shape)):
            raise ValueError(f"layer {self.name!r}: noise_shape {self.noise_shape} does not "
                             f"broadcast to the input shape {shape} (each entry is 1 or the size)")
        return mask_shape

    def _forward(self, x, training):
        self._last_output_shape = x.shape
        if not training or self.rate == 0:
            self._mask = None
            return x
        mask = self._buffer("mask", self._mask_shape(x.shape))
        key = int((self._rng or get_rng()).integers(0, 2 ** 64, dtype=np.uint64))
        _k.dropout_mask(mask.reshape(-1), self.rate, key)
        self._mask = mask
        return self._apply_mask(x, "y")

    def _apply_mask(self, a, key):
        out = self._buffer(key, a.shape)
        if self._mask.shape == a.shape:
            _k.multiply(a.reshape(-1), self._mask.reshape(-1), out.reshape(-1))
        else:
            np.multiply(a, self._mask, out=out)
        return out

    def _backward(self, grad_output, need_input_grad):
        if not need_input_grad:
            return None
        if self._mask is None:
            return grad_output
        return self._apply_mask(grad_output, "dx")

    def get_config(self):
        return {"name": self.name, "rate": self.rate, "noise_shape": self.noise_shape,
                "seed": self.seed}
