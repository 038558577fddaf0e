"""Metrics, averaged over the samples of an epoch (Keras semantics)."""
import numpy as np

from ._registry import Registry


class Metric:
    name = None

    def __init__(self):
        self.reset()

    def reset(self):
        self._total = 0.0
        self._count = 0

    def update(self, targets, y_pred):
        """Add a batch: `targets` as prepared by the loss, `y_pred` the model outputs.

        y_pred may be the logits of a softmax output (the fused training path):
        metrics here depend only on the argmax, which the softmax preserves.
        """
        raise NotImplementedError

    def result(self):
        return self._total / self._count if self._count else 0.0


class Accuracy(Metric):
    """Fraction of correct predictions: argmax for several outputs, threshold 0.5 for one."""

    name = "accuracy"

    def update(self, targets, y_pred):
        if y_pred.ndim == 2 and y_pred.shape[1] > 1:
            predicted = y_pred.argmax(axis=1)
            truth = targets if targets.ndim == 1 else targets.argmax(axis=1)
        else:
            predicted = (y_pred.reshape(-1) > 0.5)
            truth = targets.reshape(-1) > 0.5
        self._total += float(np.count_nonzero(predicted == truth))
        self._count += len(predicted)


_REGISTRY = Registry("metric", Metric, (Accuracy,),
                     aliases={"acc": "accuracy"})


def names():
    """Names accepted by `get`."""
    return _REGISTRY.names()


def get(identifier):
    """A Metric from a name, a Metric instance or class."""
    return _REGISTRY.get(identifier)
