"""One training step and inference of a ResNet-style CNN (three residual blocks, 32
channels, 28x28x1, batch 64, float32) built with the functional API: cyneuron vs PyTorch
CPU (NCHW and channels_last), each group in the same run; samples/s in extra_info.
The callables are the ones `python -m cyneuron bench resnet` times (cyneuron.bench.resnet).
Target (issue 15): cyneuron >= 1.5x PyTorch's training samples/s.
"""
import numpy as np
import pytest

import cyneuron as cn
from cyneuron.bench import resnet as graph
from cyneuron.bench.harness import settle_threads

TRAIN_GROUP = f"resnet train step (batch {graph.RESNET_BATCH})"
PREDICT_GROUP = f"resnet inference (batch {graph.RESNET_BATCH})"


def _record_rate(benchmark, samples_per_call):
    stats = getattr(benchmark, "stats", None)  # None under --benchmark-disable
    if stats is None:
        return
    s = stats.stats
    benchmark.extra_info["samples_per_s"] = round(samples_per_call / s.min, 1)
    benchmark.extra_info["samples_per_s_median"] = round(samples_per_call / s.median, 1)


def _pick(callables, name):
    fns, missing = callables
    if name not in fns:
        pytest.skip(f"{name}: {missing.get(name, 'unavailable')}")
    return fns[name]


@pytest.fixture(scope="module")
def train_callables():
    return graph.train_callables(cn.get_num_threads(), *graph.resnet_data())


@pytest.fixture(scope="module")
def predict_callables():
    return graph.predict_callables(cn.get_num_threads(), graph.resnet_data(seed=1)[0])


@pytest.mark.parametrize("name", graph.IMPLEMENTATIONS)
def test_train_step(benchmark, train_callables, name):
    step = _pick(train_callables, name)
    assert np.isfinite(float(step()))
    benchmark.group = TRAIN_GROUP
    settle_threads()
    benchmark(step)
    _record_rate(benchmark, graph.RESNET_BATCH)


@pytest.mark.parametrize("name", graph.IMPLEMENTATIONS)
def test_predict(benchmark, predict_callables, name):
    predict = _pick(predict_callables, name)
    np.testing.assert_allclose(predict().sum(axis=1), 1.0, rtol=1e-4)
    benchmark.group = PREDICT_GROUP
    settle_threads()
    benchmark(predict)
    _record_rate(benchmark, graph.RESNET_BATCH)
