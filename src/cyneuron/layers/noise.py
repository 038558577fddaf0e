"""Noise layers for denoising and regularisation (Keras names): GaussianNoise adds
N(0, stddev^2) noise, GaussianDropout multiplies by N(1, rate / (1 - rate)) noise.
Both act only while training; at inference they return their input (no copy).

seed: a non-negative int gives the layer its own random stream (the same seed draws
the same noise); None draws from the library generator, which `cn.set_seed` seeds.
"""
import math
import numbers

import numpy as np

from .._random import get_rng
from .base import Layer


def _check_seed(seed):
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)
                             or seed < 0):
        raise ValueError(f"seed must be a non-negative int or None; got {seed!r}")
    return seed


class _Noise(Layer):
    _abstract = True

    def __init__(self, seed=None, name=None, dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.seed = _check_seed(seed)
        self._rng = None if seed is None else np.random.default_rng(int(seed))

    def _normal(self, shape):
        """Standard normal noise of `shape` in the layer dtype, into a reused buffer."""
        buf = self._buffer("noise", shape)
        (self._rng or get_rng()).standard_normal(dtype=buf.dtype, out=buf)
        return buf


class GaussianNoise(_Noise):
    """y = x + stddev * N(0, 1) while training; the identity at inference. The gradient
    passes through unchanged."""

    def __init__(self, stddev, seed=None, name=None, dtype=None):
        super().__init__(seed=seed, name=name, dtype=dtype)
        if isinstance(stddev, bool) or not isinstance(stddev, numbers.Real) \
                or not math.isfinite(stddev) or stddev < 0:
            raise ValueError(f"stddev must be a finite number >= 0; got {stddev!r}")
        self.stddev = float(stddev)

    def _forward(self, x, training):
        self._last_output_shape = x.shape
        if not training or self.stddev == 0:
            return x
        y = self._normal(x.shape)
        y *= self.stddev
        y += x
        return y

    def _backward(self, grad_output, need_input_grad):
        return grad_output if need_input_grad else None

    def get_config(self):
        return {"name": self.name, "stddev": self.stddev, "seed": self.seed}


class GaussianDropout(_Noise):
    """y = x * m, m ~ N(1, rate / (1 - rate)) per element, while training (the
    multiplicative noise of the same variance as dropout's); the identity at inference.
    The gradient is multiplied by the same m."""

    def __init__(self, rate, seed=None, name=None, dtype=None):
        super().__init__(seed=seed, name=name, dtype=dtype)
        if isinstance(rate, bool) or not isinstance(rate, numbers.Real) \
                or not math.isfinite(rate) or not 0 <= rate < 1:
            raise ValueError(f"rate must be a number in [0, 1); got {rate!r}")
        self.rate = float(rate)

    def _forward(self, x, training):
        self._last_output_shape = x.shape
        if not training or self.rate == 0:
            self._mask = None
            return x
        mask = self._normal(x.shape)
        mask *= math.sqrt(self.rate / (1.0 - self.rate))
        mask += 1.0
        self._mask = mask
        return np.multiply(x, mask, out=self._buffer("y", x.shape))

    def _backward(self, grad_output, need_input_grad):
        if not need_input_grad:
            return None
        if self._mask is None:
            return grad_output
        return np.multiply(grad_output, self._mask, out=self._buffer("dx", grad_output.shape))

    def get_config(self):
        return {"name": self.name, "rate": self.rate, "seed": self.seed}
