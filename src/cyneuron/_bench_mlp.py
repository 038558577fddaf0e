"""The old import path of the MLP group of the benchmarks: cyneuron.bench.mlp."""
import sys

from .bench import mlp as _module

sys.modules[__name__] = _module
