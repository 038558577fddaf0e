"""The transcendental activations, float32 forward on 131,072 values (a batch of 128 x
1024 units), cyneuron next to PyTorch CPU (its vectorized kernels) and numpy (where it has
the function) in the same group and run, at cn.get_num_threads() threads on both.

cyneuron runs the vector copy of csrc/vmath.h for its instruction set (AVX2 + FMA or
AVX-512); `CYNEURON_ISA=generic` shows the libm loops.

    python -m pytest benchmarks/bench_activations.py --benchmark-only
"""
import numpy as np
import pytest

import cyneuron as cn
from cyneuron._bench import settle_threads

N = 128 * 1024
NAMES = ["sigmoid", "tanh", "gelu", "gelu_tanh", "swish", "elu", "exponential"]


def _x():
    return np.random.default_rng(0).standard_normal(N).astype(np.float32) * 3


def _cyneuron(name):
    fn = cn.activations.get(name)
    x = _x()
    return lambda: fn.forward(x)


def _torch(name):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(cn.get_num_threads())
    f = torch.nn.functional
    fns = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "gelu": f.gelu,
           "gelu_tanh": lambda t: f.gelu(t, approximate="tanh"), "swish": f.silu, "elu": f.elu,
           "exponential": torch.exp}
    x = torch.from_numpy(_x())
    fn = fns[name]

    def run():
        with torch.no_grad():
            return fn(x)
    return run


def _numpy(name):
    fns = {"tanh": np.tanh, "exponential": np.exp}
    if name not in fns:
        pytest.skip(f"numpy has no {name}")
    x, fn = _x(), fns[name]
    return lambda: fn(x)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("library", ["cyneuron", "torch", "numpy"])
def test_activation_forward(benchmark, library, name):
    run = {"cyneuron": _cyneuron, "torch": _torch, "numpy": _numpy}[library](name)
    out = np.asarray(run())
    assert out.shape == (N,)
    benchmark.group = f"{name} forward, {N} float32"
    settle_threads(0.05)
    benchmark(run)
