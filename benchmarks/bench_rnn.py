"""Recurrent networks, float32, 2 threads: cyneuron vs PyTorch CPU, each group in the same
run; sequences/s in extra_info.

Model: LSTM(128) (or GRU(128)) on sequences of T = 50 steps of 32 features, then
Dense(10, softmax) on the last step. Train step (batch 32): cyneuron `train_on_batch` on
a compiled, built model (sparse categorical cross-entropy, Adam 1e-3 where this build
has Adam, otherwise SGD 0.01 with momentum 0.9, and the torch side uses the same kind);
torch: nn.LSTM / nn.GRU (batch_first) + nn.Linear on the last step, CrossEntropyLoss,
zero_grad, backward, optimizer step, torch.set_num_threads(2).
Inference: softmax probabilities for 256 sequences in one batch (torch under no_grad).
The callables are the ones `python -m cyneuron bench rnn` times (cyneuron.bench.rnn).
"""
import numpy as np
import pytest

import cyneuron as cn
from cyneuron.bench.harness import settle_threads
from cyneuron.bench.rnn import (
    RNN_BATCH,
    RNN_CELLS,
    RNN_PREDICT_SAMPLES,
    RNN_THREADS,
    rnn_data,
    rnn_optimizer_label,
    rnn_predict_callables,
    rnn_train_callables,
)

IMPLEMENTATIONS = ["cyneuron", "torch"]


@pytest.fixture(scope="module", autouse=True)
def rnn_threads():
    """The comparison runs on RNN_THREADS (2) threads, put back afterwards."""
    before = cn.get_num_threads()
    cn.set_num_threads(RNN_THREADS)
    yield RNN_THREADS
    cn.set_num_threads(before)


def _record_rate(benchmark, per_call):
    stats = getattr(benchmark, "stats", None)  # None under --benchmark-disable
    if stats is None:
        return
    s = stats.stats
    benchmark.extra_info["sequences_per_s"] = round(per_call / s.min, 1)
    benchmark.extra_info["sequences_per_s_median"] = round(per_call / s.median, 1)


def _pick(fns, missing, name):
    if name not in fns:
        pytest.skip(f"{name}: {missing.get(name, 'unavailable')}")
    return fns[name]


@pytest.fixture(scope="module", params=RNN_CELLS)
def train_callables(request, rnn_threads):
    return request.param, rnn_train_callables(request.param, rnn_threads, *rnn_data(RNN_BATCH))


@pytest.fixture(scope="module", params=RNN_CELLS)
def predict_callables(request, rnn_threads):
    x = rnn_data(RNN_PREDICT_SAMPLES, seed=1)[0]
    return request.param, rnn_predict_callables(request.param, rnn_threads, x)


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_train_step(benchmark, train_callables, name):
    cell, (fns, missing, kind) = train_callables
    step = _pick(fns, missing, name)
    benchmark.group = f"{cell} train step (batch {RNN_BATCH}, {rnn_optimizer_label(kind)})"
    loss = float(step())
    assert np.isfinite(loss)
    settle_threads()
    benchmark(step)
    _record_rate(benchmark, RNN_BATCH)


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_predict(benchmark, predict_callables, name):
    cell, (fns, missing) = predict_callables
    predict = _pick(fns, missing, name)
    np.testing.assert_allclose(predict().sum(axis=1), 1.0, rtol=1e-4)
    benchmark.group = f"{cell} inference ({RNN_PREDICT_SAMPLES} sequences)"
    settle_threads()
    benchmark(predict)
    _record_rate(benchmark, RNN_PREDICT_SAMPLES)
