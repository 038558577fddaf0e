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
from . import (activations, callbacks, datasets, initializers, layers, losses,  # noqa: E402
               metrics, ops, optimizers, saving, schedules, trees)
from .callbacks import Callback, History  # noqa: E402
from .layers.input_layer import Input  # noqa: E402
from .models import Model, Sequential  # noqa: E402
from .perceptron import Perceptron  # noqa: E402
from .saving import load_model  # noqa: E402
from ._estimator_io import load as load_estimator  # noqa: E402


_LAZY = {"BernoulliRBM": "rbm", "GaussianBernoulliRBM": "rbm", "DBN": "rbm",
         "DBNClassifier": "rbm", "SOM": "som", "RBFClassifier": "rbf", "RBFRegressor": "rbf"}


def __getattr__(name):
    """`cn.sklearn` is imported on first use (it imports scikit-learn)."""
    import importlib

    if name in ("sklearn", "rbm", "som", "rbf", "distributed", "onnx", "interop"):
        return importlib.import_module("." + name, __name__)
    if name in _LAZY:   # the classic estimators import scikit-learn: load on first use
        return getattr(importlib.import_module("." + _LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Sequential", "Model", "Input", "Perceptron", "History", "Callback", "layers", "ops", "activations", "losses",
    "optimizers", "schedules", "initializers", "metrics", "callbacks", "datasets",
    "set_num_threads", "get_num_threads", "show_config", "get_isa", "set_seed", "__version__",
    "load_model", "saving", "trees", "load_estimator", *_LAZY,
]
