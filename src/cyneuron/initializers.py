"""Weight initializers (Keras names). Dense uses glorot_uniform kernels and zero biases."""
import numpy as np

from ._random import get_rng
from ._registry import Registry


def _fans(shape):
    """(fan_in, fan_out) of a weight shape: Dense (in, out); conv (..., in, out)."""
    if len(shape) < 2:
        n = shape[0] if shape else 1
        return n, n
    receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
    return shape[-2] * receptive, shape[-1] * receptive


class Initializer:
    name = None

    def __call__(self, shape, dtype=np.float32, rng=None):
        return np.asarray(self.sample(tuple(shape), rng or get_rng()), dtype=dtype)

    def sample(self, shape, rng):
        raise NotImplementedError

    def get_config(self):
        return {"name": self.name}


class Zeros(Initializer):
    """All zeros: fine for biases; for weights it leaves every neuron identical."""

    name = "zeros"

    def sample(self, shape, rng):
        return np.zeros(shape)


class Ones(Initializer):
    name = "ones"

    def sample(self, shape, rng):
        return np.ones(shape)


class GlorotUniform(Initializer):
    """U(-l, l), l = sqrt(6 / (fan_in + fan_out)) (Glorot & Bengio, 2010)."""

    name = "glorot_uniform"

    def sample(self, shape, rng):
        fan_in, fan_out = _fans(shape)
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-limit, limit, size=shape)


class HeUniform(Initializer):
    """U(-l, l), l = sqrt(6 / fan_in) (He et al., 2015), for ReLU layers."""

    name = "he_uniform"

    def sample(self, shape, rng):
        fan_in, _ = _fans(shape)
        limit = np.sqrt(6.0 / fan_in)
        return rng.uniform(-limit, limit, size=shape)


_REGISTRY = Registry("initializer", Initializer, (Zeros, Ones, GlorotUniform, HeUniform),
                     aliases=None)


def names():
    """Names accepted by `get`."""
    return _REGISTRY.names()


def get(identifier):
    """An Initializer from a name, an instance or class."""
    return _REGISTRY.get(identifier)
