"""SOM training: cyneuron.SOM against MiniSom (when installed), same map, seed and data.

30 x 30 map, 50,000 samples of 20 features, sigma 3, learning rate 0.5: online training
(50,000 iterations in random order) and one iteration of batch training
(MiniSom's train_batch_offline). extra_info records samples/s and the quantisation and
topographic errors of the trained map. `python -m cyneuron bench som` times the same.
"""
import pytest

from cyneuron.bench.harness import settle_threads
from cyneuron.bench.som import som_callables, som_data


@pytest.fixture(scope="module")
def data():
    return som_data()


@pytest.mark.parametrize("mode", ["online", "batch"])
@pytest.mark.parametrize("name", ["cyneuron", "MiniSom"])
def test_som_train(benchmark, data, mode, name):
    fns, missing = som_callables(data, mode)
    if name in missing:
        pytest.skip(missing[name])
    benchmark.group = f"SOM 30x30 {mode} training, 50,000 x 20"
    settle_threads()
    som = benchmark.pedantic(fns[name], rounds=2 if name == "MiniSom" else 3, iterations=1,
                             warmup_rounds=0)
    benchmark.extra_info["quantization_error"] = round(float(som.quantization_error(data)), 4)
    benchmark.extra_info["topographic_error"] = round(float(som.topographic_error(data)), 4)
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        benchmark.extra_info["samples_per_s"] = round(len(data) / stats.stats.median, 1)
