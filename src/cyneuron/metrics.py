"""Metrics, accumulated over the batches of an epoch (Keras names and semantics).

Each metric keeps running state: `reset()` clears it, `update(y_true, y_pred)` adds
a batch, `result()` gives the value over everything added since the reset
(`reset_state` / `update_state` are the Keras spellings of the same methods).

y_true may be integer class labels (n,) or (n, 1), or one-hot / binary targets of
the shape of y_pred; y_pred is the model output (probabilities for classifiers).

Metrics marked `needs_probabilities = False` depend only on the order of the
scores within a row, so softmax logits give the same result as probabilities.
"""
import numbers

import numpy as np

from ._registry import Registry
from ._validation import check_numeric


class Metric:
    name = None
    needs_probabilities = True   # False: invariant under a softmax of the scores

    def __init__(self):
        self.reset()

    def reset(self):
        self._total = 0.0
        self._count = 0

    def update(self, targets, y_pred):
        """Add a batch: `targets` as prepared by the loss (or the raw y_true), `y_pred`
        the model outputs."""
        raise NotImplementedError

    def result(self):
        return self._total / self._count if self._count else 0.0

    def reset_state(self):
        self.reset()

    def update_state(self, y_true, y_pred, sample_weight=None):
        if sample_weight is None:
            self.update(y_true, y_pred)
        else:
            self.update(y_true, y_pred, sample_weight=sample_weight)

    def get_config(self):
        return {"name": self.name}

    def __repr__(self):
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "name")
        return f"{type(self).__name__}({params})"


# --------------------------------------------------------------------------- input handling

def _as_arrays(targets, y_pred):
    targets = check_numeric(targets, "y_true")
    y_pred = check_numeric(y_pred, "y_pred")
    if y_pred.ndim == 0:
        raise ValueError("y_pred must have a sample axis; got a scalar")
    if len(targets) != len(y_pred):
        raise ValueError(f"y_true and y_pred must have the same number of samples; "
                         f"got {len(targets)} and {len(y_pred)}")
    return targets, y_pred


def _is_labels(targets, y_pred):
    """True when targets are class indices for the columns of y_pred."""
    if y_pred.ndim < 2 or y_pred.shape[-1] < 2:
        return False
    return targets.ndim == y_pred.ndim - 1 or (targets.shape[-1:] == (1,) and
                                               targets.ndim == y_pred.ndim)


def _labels(targets, y_pred):
    """Class indices: the labels themselves, or the argmax of one-hot targets."""
    if _is_labels(targets, y_pred):
        labels = targets.reshape(y_pred.shape[:-1])
        if labels.dtype.kind == "f" and not np.array_equal(labels, np.round(labels)):
            raise ValueError("y_true must hold integer class labels")
        labels = labels.astype(np.int64)
        c = y_pred.shape[-1]
        if labels.size and (labels.min() < 0 or labels.max() >= c):
            raise ValueError(f"y_true holds labels outside [0, {c})")
        return labels
    if targets.shape != y_pred.shape:
        raise ValueError(f"y_true must be class labels {y_pred.shape[:-1]} or one-hot "
                         f"{y_pred.shape}; got shape {targets.shape}")
    return targets.argmax(axis=-1)


def _same_shape(targets, y_pred):
    """Targets of y_pred's shape: (n,) and (n, 1) are interchangeable; labels are one-hot
    encoded for several output columns."""
    if targets.shape == y_pred.shape:
        return targets
    if targets.size == y_pred.size and y_pred.size == len(y_pred):   # (n,) vs (n, 1)
        return targets.reshape(y_pred.shape)
    if _is_labels(targets, y_pred):
        labels = _labels(targets, y_pred)
        return (labels[..., None] == np.arange(y_pred.shape[-1])).astype(y_pred.dtype)
    raise ValueError(f"y_true must have the shape of y_pred {y_pred.shape}; got {targets.shape}")


def _weights(sample_weight, shape):
    """Weights (float64) of the positions `shape` (a scalar per sample, or per position:
    a padding mask of a sequence output is one), or None."""
    if sample_weight is None:
        return None
    w = np.asarray(sample_weight, dtype=np.float64)
    if w.shape == tuple(shape):
        return w
    if w.ndim == 1 and len(shape) >= 1 and w.shape[0] == shape[0]:
        return np.broadcast_to(w.reshape((-1,) + (1,) * (len(shape) - 1)), shape)
    if w.size == int(np.prod(shape)):
        return w.reshape(shape)
    raise ValueError(f"sample_weight of shape {w.shape} does not fit predictions of "
                     f"positions {tuple(shape)}")


def _check_threshold(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


# --------------------------------------------------------------------------- accuracies

class _MeanOfMatches(Metric):
    """A fraction of matches over samples (or elements)."""

    def _add(self, matches, sample_weight=None):
        w = _weights(sample_weight, matches.shape)
        if w is None:
            self._total += float(np.count_nonzero(matches))
            self._count += matches.size
        else:
            self._total += float(np.sum(w * matches))
            self._count += float(np.sum(w))


class Accuracy(_MeanOfMatches):
    """Fraction of correct predictions: argmax for several outputs (labels or one-hot
    targets), threshold 0.5 for one output (what Keras picks for "accuracy")."""

    name = "accuracy"

    def update(self, targets, y_pred, sample_weight=None):
        targets, y_pred = _as_arrays(targets, y_pred)
        if y_pred.ndim >= 2 and y_pred.shape[-1] > 1:
            self._add(y_pred.argmax(axis=-1) == _labels(targets, y_pred), sample_weight)
        else:
            truth = _same_shape(targets, y_pred) > 0.5
            matches = (y_pred > 0.5) == truth
            if sample_weight is not None and matches.ndim >= 2 and matches.shape[-1] == 1:
                matches = matches[..., 0]
            self._add(matches.reshape(-1) if sample_weight is None else matches, sample_weight)


class BinaryAccuracy(_MeanOfMatches):
    """Fraction of outputs where (y_pred > threshold) equals y_true (0/1), over all outputs."""

    name = "binary_accuracy"

    def __init__(self, threshold=0.5):
        if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real):
            raise ValueError(f"threshold must be a number, got {threshold!r}")
        self.threshold = float(threshold)
        super().__init__()

    def update(self, targets, y_pred, sample_weight=None):
        targets, y_pred = _as_arrays(targets, y_pred)
        targets = _same_shape(targets, y_pred)
        matches = (y_pred > self.threshold) == targets
        if sample_weight is not None:
            w = _weights(sample_weight, matches.shape[:-1] if matches.ndim > 1 else matches.shape)
            matches = matches.mean(axis=-1) if matches.ndim > 1 else matches
            self._add(matches, w)
        else:
            self._add(matches)

    def get_config(self):
        return {"name": self.name, "threshold": self.threshold}


class CategoricalAccuracy(_MeanOfMatches):
    """Fraction of samples where argmax(y_pred) is the argmax of the one-hot y_true."""

    name = "categorical_accuracy"
    needs_probabilities = False

    def update(self, targets, y_pred, sample_weight=None):
        targets, y_pred = _as_arrays(targets, y_pred)
        self._add(y_pred.argmax(axis=-1) == _labels(targets, y_pred), sample_weight)


class SparseCategoricalAccuracy(CategoricalAccuracy):
    """Fraction of samples where argmax(y_pred) is the integer label y_true."""

    name = "sparse_categorical_accuracy"


class TopKCategoricalAccuracy(_MeanOfMatches):
    """Fraction of samples whose true class is among the k highest scores (k=5).

    Ties at the k-th place count as inside the top k (as TensorFlow's in_top_k).
    """

    name = "top_k_categorical_accuracy"
    needs_probabilities = False

    def __init__(self, k=5):
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        self.k = int(k)
        super().__init__()

    def update(self, targets, y_pred, sample_weight=None):
        targets, y_pred = _as_arrays(targets, y_pred)
        if y_pred.ndim < 2:
            raise ValueError(f"{self.name} needs y_pred of shape (n_samples, n_classes); "
                             f"got {y_pred.shape}")
        labels = _labels(targets, y_pred)
        true_score = np.take_along_axis(y_pred, labels[..., None], axis=-1)
        self._add((y_pred > true_score).sum(axis=-1) < self.k, sample_weight)

    def get_config(self):
        return {"name": self.name, "k": self.k}


class SparseTopKCategoricalAccuracy(TopKCategoricalAccuracy):
    name = "sparse_top_k_categorical_accuracy"


# --------------------------------------------------------------------------- regression

class _MeanOfErrors(Metric):
    def update(self, targets, y_pred, sample_weight=None):
        targets, y_pred = _as_arrays(targets, y_pred)
        targets = _same_shape(targets, y_pred)
        diff = y_pred.astype(np.float64) - targets
        if sample_weight is None:
            self._total += float(self._error(diff).sum())
            self._count += diff.size
            return
        per = self._error(diff).mean(axis=-1) if diff.ndim > 1 else self._error(diff)
        w = _weights(sample_weight, per.shape)
        self._total += float(np.sum(w * per))
        self._count += float(np.sum(w))


class MeanSquaredError(_MeanOfErrors):
    """mean((y_pred - y_true)^2) over all outputs of all samples."""

    name = "mean_squared_error"

    @staticmethod
    def _error(diff):
        return diff * diff


class MeanAbsoluteError(_MeanOfErrors):
    """mean(|y_pred - y_true|) over all outputs of all samples."""

    name = "mean_absolute_error"

    @staticmethod
    def _error(diff):
        return np.abs(diff)


# --------------------------------------------------------------------------- binary classification

class _Confusion(Metric):
    """Counts of true/false positives over all outputs (micro-averaged, as Keras):
    predicted positive where y_pred > thresholds, true where y_true != 0. With
    class_id, only that output column counts."""

    def __init__(self, thresholds=0.5, class_id=None):
        self.thresholds = _check_threshold(thresholds, "thresholds")
        if class_id is not None and (isinstance(class_id, bool) or
                                     not isinstance(class_id, numbers.Integral) or class_id < 0):
            raise ValueError(f"class_id must be None or a non-negative integer, got {class_id!r}")
        self.class_id = None if class_id is None else int(class_id)
        super().__init__()

    def reset(self):
        self.true_positives = 0
        self.false_positives = 0
        self.false_negatives = 0

    def update(self, targets, y_pred, sample_weight=None):
        targets, y_pred = _as_arrays(targets, y_pred)
        targets = _same_shape(targets, y_pred)
        if sample_weight is not None:     # positions of weight 0 (masked steps) drop out
            keep = _weights(sample_weight, y_pred.shape[:-1] if y_pred.ndim > 1
                            else y_pred.shape) > 0
            targets, y_pred = targets[keep], y_pred[keep]
        if self.class_id is not None:
            if y_pred.ndim < 2 or self.class_id >= y_pred.shape[-1]:
                raise ValueError(f"class_id={self.class_id} is not a column of y_pred "
                                 f"{y_pred.shape}")
            targets, y_pred = targets[..., self.class_id], y_pred[..., self.class_id]
        predicted, truth = y_pred > self.thresholds, targets != 0
        self.true_positives += int(np.count_nonzero(predicted & truth))
        self.false_positives += int(np.count_nonzero(predicted & ~truth))
        self.false_negatives += int(np.count_nonzero(~predicted & truth))

    def get_config(self):
        return {"name": self.name, "thresholds": self.thresholds, "class_id": self.class_id}


class Precision(_Confusion):
    """TP / (TP + FP); 0 when nothing was predicted positive."""

    name = "precision"

    def result(self):
        predicted = self.true_positives + self.false_positives
        return self.true_positives / predicted if predicted else 0.0


class Recall(_Confusion):
    """TP / (TP + FN); 0 when there were no positives."""

    name = "recall"

    def result(self):
        positives = self.true_positives + self.false_negatives
        return self.true_positives / positives if positives else 0.0


class AUC(Metric):
    """Area under the ROC curve of scores y_pred for binary targets y_true != 0, over
    all outputs (micro, as Keras with multi_label=False).

    Exact: the Mann-Whitney count of (positive, negative) pairs ranked correctly, ties
    counted half, so it equals scikit-learn's roc_auc_score (Keras interpolates over
    200 thresholds instead). Streaming: each batch is merged into sorted arrays of the
    positive and negative scores seen since the reset, and only its own pairs are
    counted, so `result()` is O(1). 0 while either class is missing.
    """

    name = "auc"

    def reset(self):
        self._pos = np.empty(0)
        self._neg = np.empty(0)
        self._pairs = 0.0     # correctly ordered (positive, negative) pairs, ties as 1/2

    def update(self, targets, y_pred, sample_weight=None):
        targets, y_pred = _as_arrays(targets, y_pred)
        targets = _same_shape(targets, y_pred)
        if sample_weight is not None:     # positions of weight 0 (masked steps) drop out
            keep = _weights(sample_weight, y_pred.shape[:-1] if y_pred.ndim > 1
                            else y_pred.shape) > 0
            targets, y_pred = targets[keep], y_pred[keep]
        scores = np.asarray(y_pred, np.float64).reshape(-1)
        if not np.isfinite(scores).all():
            raise ValueError("y_pred contains NaN or infinity")
        truth = np.asarray(targets).reshape(-1) != 0
        new_pos, new_neg = np.sort(scores[truth]), np.sort(scores[~truth])
        # Old positives against the new negatives ...
        above = self._pos.size - np.searchsorted(self._pos, new_neg, "right")
        tied = np.searchsorted(self._pos, new_neg, "right") - np.searchsorted(self._pos, new_neg)
        self._pairs += float(above.sum()) + 0.5 * float(tied.sum())
        # ... then the new positives against every negative, old and new.
        self._neg = np.insert(self._neg, np.searchsorted(self._neg, new_neg), new_neg)
        below = np.searchsorted(self._neg, new_pos)
        tied = np.searchsorted(self._neg, new_pos, "right") - below
        self._pairs += float(below.sum()) + 0.5 * float(tied.sum())
        self._pos = np.insert(self._pos, np.searchsorted(self._pos, new_pos), new_pos)

    def result(self):
        if self._pos.size == 0 or self._neg.size == 0:
            return 0.0
        return self._pairs / (self._pos.size * self._neg.size)


_REGISTRY = Registry(
    "metric", Metric,
    (Accuracy, BinaryAccuracy, CategoricalAccuracy, SparseCategoricalAccuracy,
     TopKCategoricalAccuracy, SparseTopKCategoricalAccuracy, MeanSquaredError, MeanAbsoluteError,
     Precision, Recall, AUC),
    aliases={"acc": "accuracy", "mse": "mean_squared_error", "mae": "mean_absolute_error",
             "top_k_accuracy": "top_k_categorical_accuracy"})


def names():
    """Names accepted by `get`."""
    return _REGISTRY.names()


def get(identifier):
    """A Metric from a name, a Metric instance or class."""
    return _REGISTRY.get(identifier)
