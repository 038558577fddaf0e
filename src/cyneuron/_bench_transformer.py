"""The old import path of the Transformer group of the benchmarks: cyneuron.bench.transformer."""
import sys

from .bench import transformer as _module

sys.modules[__name__] = _module
