"""The old import path of the ResNet group of the benchmarks: cyneuron.bench.resnet."""
import sys

from .bench import resnet as _module

sys.modules[__name__] = _module
