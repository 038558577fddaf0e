"""The library's random generator: weight initialization, shuffling, dropout."""
import numpy as np

_rng = np.random.default_rng()


def set_seed(seed):
    """Make initialization and shuffling reproducible."""
    global _rng
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    _rng = np.random.default_rng(int(seed))


def get_rng():
    return _rng
