"""cyneuron: neural networks on the CPU, with a compiled Cython/OpenMP/SIMD core.

    import cyneuron as cn
    from cyneuron import layers
    model = cn.Sequential([layers.Dense(64, activation="relu"), layers.Dense(10, activation="softmax")])
"""
__version__ = "0.1.0"

from . import _config

_config._apply_isa_override()

from ._config import get_isa, get_num_threads, set_num_threads, show_config  # noqa: E402
from ._random import set_seed  # noqa: E402
from . import (activations, callbacks, initializers, layers, losses, metrics, ops,  # noqa: E402
               optimizers, schedules)
from .callbacks import Callback, History  # noqa: E402
from .models import Sequential  # noqa: E402

__all__ = [
    "Sequential", "History", "Callback", "layers", "ops", "activations", "losses", "optimizers",
    "schedules", "initializers", "metrics", "callbacks", "set_num_threads", "get_num_threads",
    "show_config", "get_isa", "set_seed", "__version__",
]
