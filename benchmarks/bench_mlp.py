"""One training step and inference of a 784-256-128-10 ReLU/softmax MLP, float32:
cyneuron vs PyTorch CPU vs scikit-learn, each group in the same run; samples/s in extra_info.

Train step (batch 128): cyneuron `train_on_batch` on a compiled, built model (SGD 0.01,
momentum 0.9, sparse categorical cross-entropy); torch: zero_grad, forward, CrossEntropyLoss,
backward, SGD(momentum=0.9).step() with torch.set_num_threads(cn.get_num_threads());
scikit-learn: MLPClassifier(solver="sgd", batch_size=128, max_iter=1).partial_fit on the batch.
Inference: softmax probabilities for 1024 samples (torch under no_grad, sklearn predict_proba).
"""
import warnings

import numpy as np
import pytest

import cyneuron as cn
from cyneuron._bench import (MLP_BATCH, MLP_PREDICT_SAMPLES, make_cyneuron_mlp,
                             make_sklearn_mlp, make_torch_mlp, mlp_data, settle_threads)

TRAIN_GROUP = f"mlp train step (batch {MLP_BATCH})"
PREDICT_GROUP = f"mlp inference ({MLP_PREDICT_SAMPLES} samples)"


def _record_rate(benchmark, samples_per_call):
    stats = getattr(benchmark, "stats", None)  # None under --benchmark-disable
    if stats is None:
        return
    s = stats.stats
    benchmark.extra_info["samples_per_s"] = round(samples_per_call / s.min, 1)
    benchmark.extra_info["samples_per_s_median"] = round(samples_per_call / s.median, 1)


@pytest.fixture(scope="module")
def batch():
    return mlp_data(MLP_BATCH)


@pytest.fixture(scope="module")
def predict_x():
    return mlp_data(MLP_PREDICT_SAMPLES, seed=1)[0]


# -- training step ---------------------------------------------------------------------------
def test_train_step_cyneuron(benchmark, batch):
    x, y = batch
    model = make_cyneuron_mlp()
    assert np.isfinite(model.train_on_batch(x, y))
    benchmark.group = TRAIN_GROUP
    settle_threads()
    benchmark(model.train_on_batch, x, y)
    _record_rate(benchmark, MLP_BATCH)


def test_train_step_torch(benchmark, batch):
    pytest.importorskip("torch")
    x, y = batch
    torch, net, opt, loss_fn = make_torch_mlp(cn.get_num_threads())
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(xt), yt)
        loss.backward()
        opt.step()
        return loss

    assert torch.isfinite(step())
    benchmark.group = TRAIN_GROUP
    settle_threads()
    benchmark(step)
    _record_rate(benchmark, MLP_BATCH)


def test_train_step_sklearn(benchmark, batch):
    pytest.importorskip("sklearn")
    x, y = batch
    clf = make_sklearn_mlp(x, y)
    benchmark.group = TRAIN_GROUP
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning on every partial_fit
        settle_threads()
        benchmark(clf.partial_fit, x, y)
    _record_rate(benchmark, MLP_BATCH)


# -- inference -------------------------------------------------------------------------------
def test_predict_cyneuron(benchmark, predict_x):
    model = make_cyneuron_mlp()
    p = model.predict(predict_x)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-4)
    benchmark.group = PREDICT_GROUP
    settle_threads()
    benchmark(model.predict, predict_x)
    _record_rate(benchmark, MLP_PREDICT_SAMPLES)


def test_predict_torch(benchmark, predict_x):
    pytest.importorskip("torch")
    torch, net, _, _ = make_torch_mlp(cn.get_num_threads())
    net.eval()
    xt = torch.from_numpy(predict_x)

    def predict():
        with torch.no_grad():
            return torch.softmax(net(xt), dim=1).numpy()

    np.testing.assert_allclose(predict().sum(axis=1), 1.0, rtol=1e-4)
    benchmark.group = PREDICT_GROUP
    settle_threads()
    benchmark(predict)
    _record_rate(benchmark, MLP_PREDICT_SAMPLES)


def test_predict_sklearn(benchmark, predict_x):
    pytest.importorskip("sklearn")
    clf = make_sklearn_mlp(*mlp_data(MLP_BATCH))
    benchmark.group = PREDICT_GROUP
    settle_threads()
    benchmark(clf.predict_proba, predict_x)
    _record_rate(benchmark, MLP_PREDICT_SAMPLES)
