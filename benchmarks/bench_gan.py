"""One full GAN step of a DCGAN-style pair (28x28x1, batch 64, float32): cyneuron's
`cn.models.GAN.train_step` vs the same pair stepped the same way in PyTorch CPU (NCHW and
channels_last), in one group; real samples/s in extra_info. The callables are the ones
`python -m cyneuron bench gan` times (cyneuron.bench.gan).
Target (issue 17): cyneuron >= 1.5x PyTorch's steps/s.
"""
import numpy as np
import pytest

import cyneuron as cn
from cyneuron.bench import gan as gan_bench
from cyneuron.bench.harness import settle_threads

GROUP = f"gan step (batch {gan_bench.BATCH})"


@pytest.fixture(scope="module")
def step_callables():
    real = np.random.default_rng(0).random((gan_bench.BATCH, 28, 28, 1), dtype=np.float32)
    return gan_bench.step_callables(cn.get_num_threads(), real)


@pytest.mark.parametrize("name", gan_bench.IMPLEMENTATIONS)
def test_gan_step(benchmark, step_callables, name):
    fns, missing = step_callables
    if name not in fns:
        pytest.skip(f"{name}: {missing.get(name, 'unavailable')}")
    step = fns[name]
    out = step()
    assert all(np.isfinite(float(v)) for v in (out.values() if isinstance(out, dict) else out))
    benchmark.group = GROUP
    settle_threads()
    benchmark(step)
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        benchmark.extra_info["samples_per_s"] = round(gan_bench.BATCH / stats.stats.min, 1)
