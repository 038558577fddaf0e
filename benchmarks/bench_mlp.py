"""One training step and inference of a 784-256-128-10 ReLU/softmax MLP, float32:
cyneuron vs PyTorch CPU vs scikit-learn, each group in the same run; samples/s in extra_info.

Train step (batch 128): cyneuron `train_on_batch` on a compiled, built model (SGD 0.01,
momentum 0.9, sparse categorical cross-entropy); torch: zero_grad, forward, CrossEntropyLoss,
backward, SGD(momentum=0.9).step() with torch.set_num_threads(cn.get_num_threads());
scikit-learn: MLPClassifier(solver="sgd", batch_size=128, max_iter=1).partial_fit on the batch.
Inference: softmax probabilities for 1024 samples (torch under no_grad, sklearn predict_proba).
The callables are the ones `python -m cyneuron bench mlp` times (cyneuron._bench).
"""
import warnings

import numpy as np
import pytest

import cyneuron as cn
from cyneuron._bench import (MLP_BATCH, MLP_PREDICT_SAMPLES, mlp_data, mlp_predict_callables,
                             mlp_train_callables, settle_threads)

TRAIN_GROUP = f"mlp train step (batch {MLP_BATCH})"
PREDICT_GROUP = f"mlp inference ({MLP_PREDICT_SAMPLES} samples)"
IMPLEMENTATIONS = ["cyneuron", "torch", "scikit-learn"]


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
    return mlp_train_callables(cn.get_num_threads(), *mlp_data(MLP_BATCH))


@pytest.fixture(scope="module")
def predict_callables():
    return mlp_predict_callables(cn.get_num_threads(), mlp_data(MLP_PREDICT_SAMPLES, seed=1)[0])


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_train_step(benchmark, train_callables, name):
    step = _pick(train_callables, name)
    benchmark.group = TRAIN_GROUP
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn: ConvergenceWarning on every partial_fit
        step()
        settle_threads()
        benchmark(step)
    _record_rate(benchmark, MLP_BATCH)


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_predict(benchmark, predict_callables, name):
    predict = _pick(predict_callables, name)
    np.testing.assert_allclose(predict().sum(axis=1), 1.0, rtol=1e-4)
    benchmark.group = PREDICT_GROUP
    settle_threads()
    benchmark(predict)
    _record_rate(benchmark, MLP_PREDICT_SAMPLES)
