"""Weight and activity regularizers (Keras names): penalties added to the training loss.

    layers.Dense(64, kernel_regularizer=cn.regularizers.L2(1e-4),
                 activity_regularizer=cn.regularizers.L1(1e-5))

A regularizer is a function of an array: `reg(x)` is the penalty (a float) and
`reg.add_gradient(x, out)` adds d(penalty)/dx to `out` in place. The model adds the
penalties of every layer's weights to the loss it reports and their gradients to the
flat gradient buffer after the backward pass. An activity regularizer is applied to
the layer's output and divided by the batch size (as tf.keras did), so its weight
does not depend on the batch. A model with no regularizers pays nothing for them.
"""
import math
import numbers

import numpy as np


def _coefficient(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) \
            or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


class Regularizer:
    """Base class: `__call__(x) -> float` and `add_gradient(x, out)`."""

    name = None

    def __call__(self, x):
        raise NotImplementedError

    def add_gradient(self, x, out):
        raise NotImplementedError

    def gradient(self, x):
        """d(penalty)/dx as a new array."""
        return self.add_gradient(x, np.zeros_like(x))

    def get_config(self):
        return {}

    def __repr__(self):
        args = ", ".join(f"{k}={v}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class L1L2(Regularizer):
    """l1 * sum(|x|) + l2 * sum(x**2). The gradient of |x| at 0 is taken as 0."""

    name = "l1_l2"

    def __init__(self, l1=0.0, l2=0.0):
        self.l1 = _coefficient(l1, "l1")
        self.l2 = _coefficient(l2, "l2")

    def __call__(self, x):
        total = 0.0
        if self.l1:
            total += self.l1 * float(np.abs(x).sum(dtype=np.float64))
        if self.l2:
            flat = x.reshape(-1)
            total += self.l2 * float(np.dot(flat, flat))
        return total

    def add_gradient(self, x, out):
        if self.l1:
            out += self.l1 * np.sign(x)
        if self.l2:
            out += (2.0 * self.l2) * x
        return out

    def get_config(self):
        return {"l1": self.l1, "l2": self.l2}


class L1(L1L2):
    """l1 * sum(|x|) (Keras default l1=0.01)."""

    name = "l1"

    def __init__(self, l1=0.01):
        super().__init__(l1=l1, l2=0.0)

    def get_config(self):
        return {"l1": self.l1}


class L2(L1L2):
    """l2 * sum(x**2) (Keras default l2=0.01)."""

    name = "l2"

    def __init__(self, l2=0.01):
        super().__init__(l1=0.0, l2=l2)

    def get_config(self):
        return {"l2": self.l2}


_CLASSES = {"L1": L1, "L2": L2, "L1L2": L1L2}
_NAMES = {"l1": L1, "l2": L2, "l1_l2": L1L2, "l1l2": L1L2}


def get(identifier):
    """A Regularizer from an instance, a name ('l1', 'l2', 'l1_l2': Keras defaults), a
    serialize() dict, or None (no regularizer)."""
    if identifier is None or isinstance(identifier, Regularizer):
        return identifier
    if isinstance(identifier, str) and identifier.lower() in _NAMES:
        return _NAMES[identifier.lower()]()
    if isinstance(identifier, dict) and identifier.get("class_name") in _CLASSES:
        return _CLASSES[identifier["class_name"]](**dict(identifier.get("config") or {}))
    raise ValueError(f"unknown regularizer {identifier!r}; expected a cn.regularizers.L1 / L2 / "
                     f"L1L2 instance, one of {sorted(_NAMES)}, or None")


def serialize(regularizer):
    """{"class_name", "config"} for a regularizer (None stays None)."""
    if regularizer is None:
        return None
    return {"class_name": type(regularizer).__name__, "config": regularizer.get_config()}


__all__ = ["Regularizer", "L1", "L2", "L1L2", "get", "serialize"]
