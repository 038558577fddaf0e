"""The old import path of the inference group of the benchmarks: cyneuron.bench.inference."""
import sys

from .bench import inference as _module

sys.modules[__name__] = _module
