"""Metrics against numpy and scikit-learn references, streamed over uneven batches."""
import numpy as np
import pytest

import cyneuron as cn
from cyneuron import layers, metrics

skm = pytest.importorskip("sklearn.metrics")

BATCHINGS = [[1000], [1, 7, 92, 500, 400], [333, 333, 334]]


def _stream(metric, y_true, y_pred, sizes):
    """Feed (y_true, y_pred) in batches of `sizes` after a reset; return result()."""
    metric.reset()
    start = 0
    for size in sizes:
        metric.update(y_true[start:start + size], y_pred[start:start + size])
        start += size
    assert start == len(y_true)
    return metric.result()


def _classification(rng, n=1000, c=6):
    logits = rng.normal(scale=2, size=(n, c))
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    labels = np.where(rng.random(n) < 0.6, p.argmax(axis=1), rng.integers(0, c, n))
    return labels, p


def _binary(rng, n=1000, rounded=False):
    y = rng.integers(0, 2, n)
    score = np.clip(0.5 + 0.3 * (y - 0.5) + rng.normal(scale=0.25, size=n), 0, 1)
    if rounded:              # many exact ties
        score = np.round(score, 1)
    return y, score


@pytest.mark.parametrize("sizes", BATCHINGS, ids=["one", "uneven", "thirds"])
def test_categorical_accuracies(sizes):
    rng = np.random.default_rng(0)
    labels, p = _classification(rng)
    onehot = np.eye(p.shape[1])[labels]
    expected = skm.accuracy_score(labels, p.argmax(axis=1))
    assert _stream(metrics.get("sparse_categorical_accuracy"), labels, p, sizes) == \
        pytest.approx(expected, rel=1e-15)
    assert _stream(metrics.get("sparse_categorical_accuracy"), labels[:, None], p, sizes) == \
        pytest.approx(expected, rel=1e-15)
    assert _stream(metrics.get("categorical_accuracy"), onehot, p, sizes) == \
        pytest.approx(expected, rel=1e-15)
    assert _stream(metrics.get("accuracy"), labels, p, sizes) == pytest.approx(expected, rel=1e-15)
    assert _stream(metrics.get("acc"), onehot, p, sizes) == pytest.approx(expected, rel=1e-15)
    # Logits give the same answer: argmax is unchanged by the softmax.
    assert not metrics.get("categorical_accuracy").needs_probabilities
    assert _stream(metrics.get("categorical_accuracy"), onehot, np.log(p), sizes) == \
        pytest.approx(expected, rel=1e-15)


@pytest.mark.parametrize("k", [1, 2, 5, 6, 9])
@pytest.mark.parametrize("sizes", BATCHINGS, ids=["one", "uneven", "thirds"])
def test_top_k_categorical_accuracy(k, sizes):
    rng = np.random.default_rng(k)
    labels, p = _classification(rng)
    onehot = np.eye(p.shape[1])[labels]
    if k < p.shape[1]:
        expected = skm.top_k_accuracy_score(labels, p, k=k, labels=np.arange(p.shape[1]))
    else:
        expected = 1.0       # every class is in the top k (scikit-learn warns here)
    m = metrics.TopKCategoricalAccuracy(k=k)
    assert _stream(m, onehot, p, sizes) == pytest.approx(expected, rel=1e-15)
    assert _stream(metrics.SparseTopKCategoricalAccuracy(k), labels, p, sizes) == \
        pytest.approx(expected, rel=1e-15)
    assert metrics.get("top_k_categorical_accuracy").k == 5


def test_top_k_ties_count_as_inside():
    """As TensorFlow's in_top_k: a class tied with the k-th score is in the top k."""
    p = np.array([[0.5, 0.2, 0.2, 0.1], [0.4, 0.4, 0.1, 0.1]])
    m = metrics.SparseTopKCategoricalAccuracy(k=2)
    m.update(np.array([2, 1]), p)
    assert m.result() == 1.0
    m.reset()
    m.update(np.array([3, 2]), p)
    assert m.result() == 0.0


@pytest.mark.parametrize("threshold", [0.5, 0.3, 0.9])
@pytest.mark.parametrize("shape", [(1000,), (1000, 1), (250, 4)])
def test_binary_accuracy(shape, threshold):
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, size=shape)
    score = rng.random(shape)
    expected = np.mean((score > threshold) == y)
    m = metrics.BinaryAccuracy(threshold=threshold)
    sizes = [1, 3, shape[0] - 4]
    assert _stream(m, y, score, sizes) == pytest.approx(expected, rel=1e-15)
    if len(shape) == 2 and shape[1] == 1:   # (n,) targets for (n, 1) outputs
        assert _stream(m, y[:, 0], score, sizes) == pytest.approx(expected, rel=1e-15)
    if threshold == 0.5 and shape[-1:] != (4,):
        assert _stream(metrics.get("accuracy"), y, score, sizes) == pytest.approx(expected)


@pytest.mark.parametrize("sizes", BATCHINGS, ids=["one", "uneven", "thirds"])
def test_mean_squared_and_absolute_error(sizes):
    rng = np.random.default_rng(2)
    y, p = rng.normal(size=(1000, 3)), rng.normal(size=(1000, 3)).astype(np.float32)
    assert _stream(metrics.get("mse"), y, p, sizes) == \
        pytest.approx(skm.mean_squared_error(y, p.astype(np.float64)), rel=1e-12)
    assert _stream(metrics.get("mean_absolute_error"), y, p, sizes) == \
        pytest.approx(skm.mean_absolute_error(y, p.astype(np.float64)), rel=1e-12)
    assert _stream(metrics.get("mae"), y[:, 0], p[:, :1], sizes) == \
        pytest.approx(skm.mean_absolute_error(y[:, 0], p[:, 0].astype(np.float64)), rel=1e-12)


@pytest.mark.parametrize("threshold", [0.5, 0.2, 0.8])
@pytest.mark.parametrize("sizes", BATCHINGS, ids=["one", "uneven", "thirds"])
def test_precision_and_recall(sizes, threshold):
    rng = np.random.default_rng(3)
    y, score = _binary(rng)
    pred = (score > threshold).astype(int)
    assert _stream(metrics.Precision(thresholds=threshold), y, score, sizes) == \
        pytest.approx(skm.precision_score(y, pred), rel=1e-15)
    assert _stream(metrics.Recall(thresholds=threshold), y, score, sizes) == \
        pytest.approx(skm.recall_score(y, pred), rel=1e-15)
    # (n, 1) columns as a model with one sigmoid output gives them.
    assert _stream(metrics.get("precision"), y[:, None], score[:, None], sizes) == \
        pytest.approx(skm.precision_score(y, (score > 0.5).astype(int)), rel=1e-15)


def test_precision_recall_multi_column_and_class_id():
    rng = np.random.default_rng(4)
    labels, p = _classification(rng, n=300, c=4)
    onehot = np.eye(4)[labels]
    pred = (p > 0.5).astype(int)
    m = metrics.Precision()
    m.update(onehot, p)
    assert m.result() == pytest.approx(skm.precision_score(onehot.ravel(), pred.ravel()))
    m = metrics.Recall(class_id=2)
    m.update(labels, p)         # integer labels are one-hot encoded for several columns
    assert m.result() == pytest.approx(skm.recall_score(onehot[:, 2], pred[:, 2]))


def test_precision_recall_empty_denominators_are_zero():
    m = metrics.Precision()
    m.update([1, 1, 0], [0.1, 0.2, 0.3])      # nothing predicted positive
    assert m.result() == 0.0
    r = metrics.Recall()
    r.update([0, 0], [0.9, 0.1])              # no positives
    assert r.result() == 0.0


@pytest.mark.parametrize("rounded", [False, True], ids=["distinct", "ties"])
@pytest.mark.parametrize("sizes", BATCHINGS + [[1] * 50 + [950]],
                         ids=["one", "uneven", "thirds", "singles"])
def test_auc_matches_sklearn(sizes, rounded):
    rng = np.random.default_rng(5)
    y, score = _binary(rng, rounded=rounded)
    expected = skm.roc_auc_score(y, score)
    assert _stream(metrics.get("auc"), y, score, sizes) == pytest.approx(expected, rel=1e-13)
    assert _stream(metrics.AUC(), y[:, None], score[:, None].astype(np.float32), sizes) == \
        pytest.approx(skm.roc_auc_score(y, score.astype(np.float32)), rel=1e-13)


def test_auc_multi_column_is_micro_and_one_class_is_zero():
    rng = np.random.default_rng(6)
    labels, p = _classification(rng, n=200, c=3)
    onehot = np.eye(3)[labels]
    m = metrics.AUC()
    m.update(onehot, p)
    assert m.result() == pytest.approx(skm.roc_auc_score(onehot, p, average="micro"), rel=1e-13)
    m.reset()
    assert m.result() == 0.0
    m.update(np.ones(5), rng.random(5))
    assert m.result() == 0.0
    with pytest.raises(ValueError, match="y_pred"):
        m.update(np.ones(2), np.array([0.5, np.nan]))


def test_results_reset_between_epochs_and_keras_spellings():
    m = metrics.get("precision")
    m.update_state([1, 0], [0.9, 0.8])
    assert m.result() == 0.5
    m.reset_state()
    assert m.result() == 0.0
    m.update([1], [0.9])
    assert m.result() == 1.0


def test_every_name_and_class_resolves():
    expected = {"accuracy", "binary_accuracy", "categorical_accuracy",
                "sparse_categorical_accuracy", "top_k_categorical_accuracy",
                "sparse_top_k_categorical_accuracy", "mean_squared_error", "mean_absolute_error",
                "precision", "recall", "auc"}
    assert expected == set(metrics.names())
    for name in expected:
        m = metrics.get(name)
        assert m.name == name and m.result() == 0.0
        assert isinstance(metrics.get(type(m)), type(m))
    for alias, name in [("acc", "accuracy"), ("mse", "mean_squared_error"),
                        ("mae", "mean_absolute_error"), ("AUC", "auc")]:
        assert metrics.get(alias).name == name


@pytest.mark.parametrize("bad", ["accuracyy", "f1", "", 3, None])
def test_unknown_metric_raises(bad):
    with pytest.raises(ValueError, match="metric"):
        metrics.get(bad)


@pytest.mark.parametrize("make,match", [
    (lambda: metrics.TopKCategoricalAccuracy(k=0), r"\bk\b"),
    (lambda: metrics.TopKCategoricalAccuracy(k=2.5), r"\bk\b"),
    (lambda: metrics.Precision(thresholds=1.5), "thresholds"),
    (lambda: metrics.Recall(thresholds="0.5"), "thresholds"),
    (lambda: metrics.Precision(class_id=-1), "class_id"),
    (lambda: metrics.BinaryAccuracy(threshold=None), "threshold"),
])
def test_invalid_parameters_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="same number of samples"):
        metrics.get("mse").update(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="y_true"):
        metrics.get("mse").update(np.ones((4, 2)), np.ones((4, 3)))
    with pytest.raises(ValueError, match="labels outside"):
        metrics.get("sparse_categorical_accuracy").update(np.array([0, 3]), np.ones((2, 3)))
    with pytest.raises(ValueError, match="integer class labels"):
        metrics.get("sparse_categorical_accuracy").update(np.array([0.5, 1]), np.ones((2, 3)))
    with pytest.raises(TypeError, match="y_pred"):
        metrics.get("auc").update(np.ones(2), np.array(["a", "b"]))
    with pytest.raises(ValueError, match="class_id"):
        metrics.Precision(class_id=5).update(np.ones((2, 3)), np.ones((2, 3)))


def test_metrics_in_fit_and_evaluate():
    """Metrics by name and by instance inside a model: evaluate agrees with numpy on predict."""
    rng = np.random.default_rng(7)
    cn.set_seed(7)
    x = rng.normal(size=(300, 4))
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(int)
    model = cn.Sequential([layers.Dense(8, activation="tanh"),
                           layers.Dense(1, activation="sigmoid")], dtype="float64")
    model.compile(optimizer=cn.optimizers.SGD(0.1), loss="mse",
                  metrics=["binary_accuracy", "precision", metrics.Recall(), "auc", "mae"])
    history = model.fit(x, y, epochs=5, batch_size=32, verbose=0)
    assert set(history.history) >= {"loss", "binary_accuracy", "precision", "recall", "auc",
                                     "mean_absolute_error"}
    logs = model.evaluate(x, y, batch_size=64)
    p = model.predict(x)[:, 0]
    assert logs["binary_accuracy"] == pytest.approx(np.mean((p > 0.5) == y))
    assert logs["precision"] == pytest.approx(skm.precision_score(y, p > 0.5))
    assert logs["recall"] == pytest.approx(skm.recall_score(y, p > 0.5))
    assert logs["auc"] == pytest.approx(skm.roc_auc_score(y, p), rel=1e-12)
    assert logs["mean_absolute_error"] == pytest.approx(np.mean(np.abs(p - y)))


def test_categorical_metrics_in_fused_softmax_model():
    rng = np.random.default_rng(8)
    cn.set_seed(8)
    x = rng.normal(size=(200, 5))
    y = rng.integers(0, 4, 200)
    model = cn.Sequential([layers.Dense(4, activation="softmax")])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy",
                  metrics=["sparse_categorical_accuracy", metrics.SparseTopKCategoricalAccuracy(2)])
    assert model._fused_output()
    logs = model.evaluate(x, y)
    p = model.predict(x)
    assert logs["sparse_categorical_accuracy"] == pytest.approx(np.mean(p.argmax(1) == y))
    assert logs["sparse_top_k_categorical_accuracy"] == \
        pytest.approx(skm.top_k_accuracy_score(y, p, k=2, labels=np.arange(4)))
