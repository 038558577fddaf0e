"""Weight initializers (Keras names and formulas). Dense uses glorot_uniform kernels and
zero biases, as in Keras.

Why not zeros for weights: every neuron of a layer then computes the same function and
receives the same gradient, so the neurons stay identical for ever (the symmetry is
never broken); random initializers scaled to the fan-in / fan-out keep activations and
gradients of similar size across layers (Glorot & Bengio 2010; He et al. 2015).

`seed`: an initializer built with an integer seed draws the same values at every call
(reproducible); without one it draws from the library generator (`cn.set_seed`).
"""
import numpy as np

from ._random import get_rng
from ._registry import Registry

# stddev of a unit normal truncated to [-2, 2]: dividing by it keeps the variance (Keras).
TRUNCATED_NORMAL_STDDEV = 0.87962566103423978


def _fans(shape):
    """(fan_in, fan_out) of a weight shape: Dense (in, out); conv (..., in, out)."""
    if len(shape) < 1:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
    return shape[-2] * receptive, shape[-1] * receptive


def _finite(value, name, positive=False, nonnegative=False):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not np.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    if nonnegative and value < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return float(value)


def _check_seed(seed):
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer or None, got {seed!r}")
    return int(seed)


def _check_shape(shape):
    try:
        shape = tuple(shape)
    except TypeError:
        shape = (shape,)
    if any(isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 0 for d in shape):
        raise ValueError(f"shape must be a tuple of non-negative integers, got {shape!r}")
    return tuple(int(d) for d in shape)


def truncated_normal(rng, shape, mean, stddev):
    """Normal samples with every value beyond 2 stddev drawn again (Keras / TensorFlow)."""
    values = rng.standard_normal(size=shape)
    out_of_range = np.abs(values) > 2
    while out_of_range.any():
        values[out_of_range] = rng.standard_normal(size=int(out_of_range.sum()))
        out_of_range = np.abs(values) > 2
    return mean + stddev * values


class Initializer:
    """Base class: `init(shape, dtype)` returns a new array; subclasses implement `sample`."""

    name = None

    def __init__(self, seed=None):
        self.seed = _check_seed(seed)

    def __call__(self, shape, dtype=np.float32, rng=None):
        shape = _check_shape(shape)
        if self.seed is not None:
            rng = np.random.default_rng(self.seed)
        return np.asarray(self.sample(shape, rng or get_rng()), dtype=dtype)

    def sample(self, shape, rng):
        raise NotImplementedError

    def get_config(self):
        return {"name": self.name, "seed": self.seed}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "name")
        return f"{type(self).__name__}({args})"


class Zeros(Initializer):
    """All zeros: right for biases; for weights it leaves every neuron identical."""

    name = "zeros"

    def sample(self, shape, rng):
        return np.zeros(shape)

    def get_config(self):
        return {"name": self.name}


class Ones(Initializer):
    name = "ones"

    def sample(self, shape, rng):
        return np.ones(shape)

    def get_config(self):
        return {"name": self.name}


class Constant(Initializer):
    """Every value equal to `value`."""

    name = "constant"

    def __init__(self, value=0.0):
        super().__init__()
        self.value = _finite(value, "value")

    def sample(self, shape, rng):
        return np.full(shape, self.value)

    def get_config(self):
        return {"name": self.name, "value": self.value}


class RandomNormal(Initializer):
    """N(mean, stddev^2)."""

    name = "random_normal"

    def __init__(self, mean=0.0, stddev=0.05, seed=None):
        super().__init__(seed)
        self.mean = _finite(mean, "mean")
        self.stddev = _finite(stddev, "stddev", nonnegative=True)

    def sample(self, shape, rng):
        return rng.normal(self.mean, self.stddev, size=shape)

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "stddev": self.stddev}


class TruncatedNormal(RandomNormal):
    """N(mean, stddev^2) with values beyond two standard deviations drawn again."""

    name = "truncated_normal"

    def sample(self, shape, rng):
        return truncated_normal(rng, shape, self.mean, self.stddev)


class RandomUniform(Initializer):
    """U(minval, maxval)."""

    name = "random_uniform"

    def __init__(self, minval=-0.05, maxval=0.05, seed=None):
        super().__init__(seed)
        self.minval = _finite(minval, "minval")
        self.maxval = _finite(maxval, "maxval")
        if self.maxval < self.minval:
            raise ValueError(f"maxval must be >= minval, got minval={minval!r}, maxval={maxval!r}")

    def sample(self, shape, rng):
        return rng.uniform(self.minval, self.maxval, size=shape)

    def get_config(self):
        return {**super().get_config(), "minval": self.minval, "maxval": self.maxval}


class VarianceScaling(Initializer):
    """Samples with variance scale / n, n = fan_in, fan_out or their mean (`mode`).

    distribution "truncated_normal": stddev sqrt(scale / n) / 0.8796 (the correction for
    the truncation at 2 stddev); "untruncated_normal": stddev sqrt(scale / n);
    "uniform": U(-l, l), l = sqrt(3 scale / n). Glorot, He and LeCun are special cases.
    """

    name = "variance_scaling"
    MODES = ("fan_in", "fan_out", "fan_avg")
    DISTRIBUTIONS = ("truncated_normal", "untruncated_normal", "uniform")

    def __init__(self, scale=1.0, mode="fan_in", distribution="truncated_normal", seed=None):
        super().__init__(seed)
        self.scale = _finite(scale, "scale", positive=True)
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {list(self.MODES)}, got {mode!r}")
        if distribution == "normal":  # Keras's older name
            distribution = "truncated_normal"
        if distribution not in self.DISTRIBUTIONS:
            raise ValueError(f"distribution must be one of {list(self.DISTRIBUTIONS)}, "
                             f"got {distribution!r}")
        self.mode, self.distribution = mode, distribution

    def sample(self, shape, rng):
        fan_in, fan_out = _fans(shape)
        n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[self.mode]
        variance = self.scale / max(1.0, n)
        if self.distribution == "truncated_normal":
            return truncated_normal(rng, shape, 0.0, np.sqrt(variance) / TRUNCATED_NORMAL_STDDEV)
        if self.distribution == "untruncated_normal":
            return rng.normal(0.0, np.sqrt(variance), size=shape)
        limit = np.sqrt(3.0 * variance)
        return rng.uniform(-limit, limit, size=shape)

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "mode": self.mode,
                "distribution": self.distribution}


class _Preset(VarianceScaling):
    """A fixed VarianceScaling setting that takes only a seed."""

    SETTING = None  # (scale, mode, distribution)

    def __init__(self, seed=None):
        super().__init__(*self.SETTING, seed=seed)

    def get_config(self):
        return {"name": self.name, "seed": self.seed}


class GlorotUniform(_Preset):
    """U(-l, l), l = sqrt(6 / (fan_in + fan_out)) (Glorot & Bengio, 2010): Dense's default."""

    name = "glorot_uniform"
    SETTING = (1.0, "fan_avg", "uniform")


class GlorotNormal(_Preset):
    """Truncated normal, stddev sqrt(2 / (fan_in + fan_out)) (Glorot & Bengio, 2010)."""

    name = "glorot_normal"
    SETTING = (1.0, "fan_avg", "truncated_normal")


class HeUniform(_Preset):
    """U(-l, l), l = sqrt(6 / fan_in) (He et al., 2015), for ReLU layers."""

    name = "he_uniform"
    SETTING = (2.0, "fan_in", "uniform")


class HeNormal(_Preset):
    """Truncated normal, stddev sqrt(2 / fan_in) (He et al., 2015), for ReLU layers."""

    name = "he_normal"
    SETTING = (2.0, "fan_in", "truncated_normal")


class LecunUniform(_Preset):
    """U(-l, l), l = sqrt(3 / fan_in) (LeCun et al., 1998), for SELU networks."""

    name = "lecun_uniform"
    SETTING = (1.0, "fan_in", "uniform")


class LecunNormal(_Preset):
    """Truncated normal, stddev sqrt(1 / fan_in) (LeCun et al., 1998), for SELU networks."""

    name = "lecun_normal"
    SETTING = (1.0, "fan_in", "truncated_normal")


class Orthogonal(Initializer):
    """A (semi-)orthogonal matrix times `gain` (Saxe et al., 2014): the QR factor of a
    Gaussian matrix, signs fixed so it is uniformly distributed. Shapes of rank >= 2 are
    treated as (prod(shape[:-1]), shape[-1])."""

    name = "orthogonal"

    def __init__(self, gain=1.0, seed=None):
        super().__init__(seed)
        self.gain = _finite(gain, "gain")

    def sample(self, shape, rng):
        if len(shape) < 2:
            raise ValueError(f"orthogonal needs a shape of rank >= 2, got {shape}")
        rows, cols = int(np.prod(shape[:-1])), shape[-1]
        a = rng.standard_normal(size=(max(rows, cols), min(rows, cols)))
        q, r = np.linalg.qr(a)
        q = q * np.sign(np.diag(r))
        if rows < cols:
            q = q.T
        return self.gain * q.reshape(shape)

    def get_config(self):
        return {**super().get_config(), "gain": self.gain}


_REGISTRY = Registry(
    "initializer", Initializer,
    (Zeros, Ones, Constant, RandomNormal, RandomUniform, TruncatedNormal, VarianceScaling,
     GlorotUniform, GlorotNormal, HeUniform, HeNormal, LecunUniform, LecunNormal, Orthogonal),
    aliases={"zero": "zeros", "one": "ones", "normal": "random_normal",
             "uniform": "random_uniform", "xavier_uniform": "glorot_uniform",
             "xavier_normal": "glorot_normal", "kaiming_uniform": "he_uniform",
             "kaiming_normal": "he_normal"})


def names():
    """Names accepted by `get`."""
    return _REGISTRY.names()


def get(identifier):
    """An Initializer from a name, an instance or class."""
    return _REGISTRY.get(identifier)
