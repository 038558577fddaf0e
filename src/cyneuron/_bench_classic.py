"""The old import path of the RBM and SOM groups of the benchmarks: cyneuron.bench.rbm and
cyneuron.bench.som."""
from .bench.rbm import *  # noqa: F401,F403
from .bench.som import *  # noqa: F401,F403
