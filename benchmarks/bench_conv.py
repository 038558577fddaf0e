"""One training step and inference of a LeNet-style CNN on 28x28x1 images, batch 64,
float32: cyneuron vs PyTorch CPU, each group in the same run; samples/s in extra_info.

The network: Conv2D 32 3x3 same + ReLU, MaxPooling 2, Conv2D 64 3x3 same + ReLU,
MaxPooling 2, Flatten, Dense 128 ReLU, Dense 10 softmax (sparse categorical
cross-entropy). Train step: cyneuron `train_on_batch` on a compiled, built model (NHWC);
torch: zero_grad, forward, CrossEntropyLoss, backward, step, with
torch.set_num_threads(cn.get_num_threads()), twice: in the default NCHW memory format
("torch") and in channels_last ("torch-channels-last": NHWC like cyneuron, PyTorch's
faster CPU layout for this network). Both use Adam when this build of
cyneuron has it (cn.optimizers.get("adam"), the same learning rate in torch); otherwise
both use SGD with momentum 0.9, and the benchmark's extra_info says "optimizer": "sgd".
Inference: softmax probabilities for the batch (torch under no_grad).
Target: cyneuron >= 1.5x PyTorch samples/s for both, at 2 threads
(OMP_NUM_THREADS=2 or cn.set_num_threads(2)).
The callables are the ones `python -m cyneuron bench conv` times (cyneuron.bench.conv).
"""
import numpy as np
import pytest

import cyneuron as cn
from cyneuron.bench.conv import (CONV_BATCH, conv_data, conv_optimizer_name,
                                  conv_predict_callables, conv_train_callables)
from cyneuron.bench.harness import settle_threads

TRAIN_GROUP = f"conv train step (batch {CONV_BATCH})"
PREDICT_GROUP = f"conv inference (batch {CONV_BATCH})"
IMPLEMENTATIONS = ["cyneuron", "torch", "torch-channels-last"]


def _record_rate(benchmark, samples_per_call):
    benchmark.extra_info["optimizer"] = conv_optimizer_name()
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
    return conv_train_callables(cn.get_num_threads(), *conv_data(CONV_BATCH))


@pytest.fixture(scope="module")
def predict_callables():
    return conv_predict_callables(cn.get_num_threads(), conv_data(CONV_BATCH, seed=1)[0])


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_train_step(benchmark, train_callables, name):
    step = _pick(train_callables, name)
    assert np.isfinite(float(step()))
    benchmark.group = TRAIN_GROUP
    settle_threads()
    benchmark(step)
    _record_rate(benchmark, CONV_BATCH)


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_predict(benchmark, predict_callables, name):
    predict = _pick(predict_callables, name)
    np.testing.assert_allclose(predict().sum(axis=1), 1.0, rtol=1e-4)
    benchmark.group = PREDICT_GROUP
    settle_threads()
    benchmark(predict)
    _record_rate(benchmark, CONV_BATCH)
