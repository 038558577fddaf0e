"""Issue 8: end-to-end MLP training and inference, cyneuron vs PyTorch CPU vs scikit-learn.

Training groups (one per architecture and batch size): one epoch over 20,000 samples with
Adam (lr 1e-3), float32, shuffled batches: cyneuron `fit(epochs=1)`, the same network and
optimizer in PyTorch (torch.set_num_threads = cyneuron's threads), scikit-learn's
MLPClassifier(solver="adam", max_iter=1, warm_start=True) `fit`. extra_info: samples/s.
Inference groups: one sample (latency) and 10,000 samples (throughput), softmax outputs.
The callables are the ones `python -m cyneuron bench mlp` times (cyneuron.bench.mlp).
"""
import pytest

import cyneuron as cn
from cyneuron.bench import mlp
from cyneuron.bench.harness import settle_threads

CASES = [(arch, b) for arch in mlp.ARCHITECTURES for b in mlp.BATCH_SIZES]


def _record(benchmark, items_per_call, key="samples_per_s"):
    stats = getattr(benchmark, "stats", None)  # None under --benchmark-disable
    if stats is None:
        return
    s = stats.stats
    benchmark.extra_info[key] = round(items_per_call / s.min, 1)
    benchmark.extra_info[key + "_median"] = round(items_per_call / s.median, 1)


def _pick(callables, name):
    fns, missing = callables
    if name not in fns:
        pytest.skip(f"{name}: {missing.get(name, 'unavailable')}")
    return fns[name]


@pytest.fixture(scope="module")
def train_data():
    return mlp.data()


@pytest.mark.parametrize("name", mlp.IMPLEMENTATIONS)
@pytest.mark.parametrize("arch, batch", CASES, ids=[f"{a}-b{b}" for a, b in CASES])
def test_train_epoch(benchmark, train_data, arch, batch, name):
    x, y = train_data
    epoch = _pick(mlp.train_epoch_callables(mlp.ARCHITECTURES[arch], batch,
                                            cn.get_num_threads(), x, y), name)
    benchmark.group = f"mlp train {arch} batch {batch} (Adam, {len(x)} samples)"
    epoch()
    settle_threads()
    benchmark.pedantic(epoch, rounds=3, iterations=1)
    _record(benchmark, len(x))


@pytest.mark.parametrize("name", mlp.IMPLEMENTATIONS)
@pytest.mark.parametrize("samples", [1, mlp.PREDICT_SAMPLES], ids=["one-sample", "batched"])
@pytest.mark.parametrize("arch", list(mlp.ARCHITECTURES))
def test_predict(benchmark, train_data, arch, samples, name):
    x = train_data[0][:samples]
    predict = _pick(mlp.predict_callables(mlp.ARCHITECTURES[arch], cn.get_num_threads(), x), name)
    out = predict()
    assert abs(float(out.sum()) - samples) < 1e-3 * samples   # rows of probabilities
    benchmark.group = f"mlp predict {arch} ({samples} samples)"
    settle_threads()
    benchmark(predict)
    _record(benchmark, samples)
