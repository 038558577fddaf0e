"""Optimizers (Keras names, defaults and update rules): each step is one fused kernel
over the model's flat parameter buffer.

Every optimizer accepts, as in Keras:

- learning_rate: a positive number or a `schedules.LearningRateSchedule`;
- weight_decay: decoupled decay, w -= learning_rate * weight_decay * w, each step;
- clipnorm: rescale the gradient so that its norm is at most clipnorm. The norm is the
  *global* norm over the whole flat gradient buffer (one norm for all parameters, as
  Keras's global_clipnorm), not one norm per weight array;
- clipvalue: clip each gradient element to [-clipvalue, clipvalue].

The state (velocities, moments, accumulators) lives in flat arrays the size of the
parameter buffer: `optimizer.slots`.
"""
import math

import numpy as np

from . import schedules
from ._kernels import optim as _k
from ._registry import Registry
from .schedules import LearningRateSchedule


def _check_flat(params, grads):
    for name, arr in (("params", params), ("grads", grads)):
        if not isinstance(arr, np.ndarray) or arr.ndim != 1 or not arr.flags.c_contiguous \
                or arr.dtype.char not in "fd":      # float32, float64
            raise TypeError(f"{name} must be a contiguous 1-D float32/float64 array")
    if not params.flags.writeable:
        raise ValueError("params must be writeable")
    if grads.shape != params.shape or grads.dtype != params.dtype:
        raise ValueError(f"grads must match params: params {params.shape} {params.dtype.name}, "
                         f"grads {grads.shape} {grads.dtype.name}")


def _number(value, name, low=None, high=None, low_open=False, high_open=False):
    """A finite float within the bounds, else a ValueError naming the parameter."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not np.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    too_low = low is not None and (value < low or (low_open and value == low))
    too_high = high is not None and (value > high or (high_open and value == high))
    if too_low or too_high:
        lo = "" if low is None else ("(" if low_open else "[") + f"{low}, "
        hi = "inf)" if high is None else f"{high}" + (")" if high_open else "]")
        raise ValueError(f"{name} must be in {lo or '(-inf, '}{hi}, got {value!r}")
    return float(value)


def _check_learning_rate(value):
    if isinstance(value, LearningRateSchedule):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not np.isfinite(value) or value <= 0:
        raise ValueError(f"learning_rate must be a positive number or a LearningRateSchedule, "
                         f"got {value!r}")
    return float(value)


class Optimizer:
    """Base class. Subclasses set `name`, `_slot_names` and implement `_update`."""

    name = None
    _slot_names = ()

    def __init__(self, learning_rate, weight_decay=None, clipnorm=None, clipvalue=None):
        self._learning_rate = _check_learning_rate(learning_rate)
        self.weight_decay = 0.0 if weight_decay is None else _number(weight_decay, "weight_decay", low=0)
        self.clipnorm = None if clipnorm is None else _number(clipnorm, "clipnorm", low=0, low_open=True)
        self.clipvalue = None if clipvalue is None else _number(clipvalue, "clipvalue", low=0, low_open=True)
        if clipnorm is not None and clipvalue is not None:
            raise ValueError("give clipnorm or clipvalue, not both")
        self.iterations = 0
        self.slots = {}

    # -- learning rate ---------------------------------------------------------------------
    @property
    def learning_rate(self):
        """The rate the next step uses (a schedule is evaluated at `iterations`)."""
        if isinstance(self._learning_rate, LearningRateSchedule):
            return float(self._learning_rate(self.iterations))
        return self._learning_rate

    @learning_rate.setter
    def learning_rate(self, value):
        if isinstance(self._learning_rate, LearningRateSchedule) \
                and not isinstance(value, LearningRateSchedule):
            raise TypeError("this optimizer's learning_rate is a LearningRateSchedule; it "
                            "cannot be set to a number (give the optimizer a float instead)")
        self._learning_rate = _check_learning_rate(value)

    # -- the step ----------------------------------------------------------------------------
    def apply_gradients(self, params, grads=None):
        """Update the flat `params` in place from the flat `grads` (same size and dtype).

        `apply_gradients(model)`: one step on a model's flat buffers from its last
        `backward` (custom training loops); frozen layers (trainable=False) are skipped."""
        if grads is None and hasattr(params, "_params") and hasattr(params, "_trainable_segments"):
            model = params
            if not model.built:
                raise RuntimeError("apply_gradients(model): the model is not built yet")
            model._ensure_bound()
            model._apply_optimizer(self, model._trainable_segments())
            return
        if grads is None:
            raise TypeError("apply_gradients takes (params, grads) flat arrays, or a model")
        _check_flat(params, grads)
        self._build_slots(params)
        grad_scale = 1.0
        if self.clipnorm is not None:
            norm = math.sqrt(_k.sum_of_squares(grads))
            if norm > self.clipnorm:
                grad_scale = self.clipnorm / norm
        self._update(params, grads, self.learning_rate, dict(
            weight_decay=self.weight_decay, grad_scale=grad_scale,
            clipvalue=self.clipvalue or 0.0))
        self.iterations += 1

    def _apply_segments(self, params, grads, segments):
        """One step over the (start, end) ranges of the flat buffers only (the rest is
        frozen: neither updated nor decayed, its optimizer state untouched)."""
        _check_flat(params, grads)
        self._build_slots(params)
        grad_scale = 1.0
        if self.clipnorm is not None:
            norm = math.sqrt(sum(_k.sum_of_squares(grads[a:b]) for a, b in segments))
            if norm > self.clipnorm:
                grad_scale = self.clipnorm / norm
        common = dict(weight_decay=self.weight_decay, grad_scale=grad_scale,
                      clipvalue=self.clipvalue or 0.0)
        lr = self.learning_rate
        slots = self.slots
        try:
            for a, b in segments:
                self.slots = {k: v[a:b] for k, v in slots.items()}
                self._update(params[a:b], grads[a:b], lr, common)
        finally:
            self.slots = slots
        self.iterations += 1

    def _build_slots(self, params):
        """State arrays like params; made again (from their initial values) when the
        parameter buffer changes size or dtype."""
        first = next(iter(self.slots.values()), None)
        if first is not None and first.shape == params.shape and first.dtype == params.dtype:
            return
        self.slots = {name: np.full_like(params, self._slot_initial_value(name))
                      for name in self._slot_names}

    def _slot_initial_value(self, name):
        return 0.0

    def _slot(self, name, params):
        """The named state array, or an empty one where this configuration has no use for it."""
        return self.slots.get(name, params[:0])

    def _update(self, params, grads, learning_rate, common):
        raise NotImplementedError

    # -- config --------------------------------------------------------------------------------
    def get_config(self):
        lr = self._learning_rate
        return {"name": self.name,
                "learning_rate": schedules.serialize(lr) if isinstance(lr, LearningRateSchedule) else lr,
                "weight_decay": self.weight_decay, "clipnorm": self.clipnorm,
                "clipvalue": self.clipvalue}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config.pop("name", None)
        if isinstance(config.get("learning_rate"), dict):
            config["learning_rate"] = schedules.deserialize(config["learning_rate"])
        return cls(**config)

    def __repr__(self):
        return f"{type(self).__name__}(learning_rate={self._learning_rate!r})"


class SGD(Optimizer):
    """Gradient descent, with optional (Nesterov) momentum, as in Keras:
    v = momentum * v - lr * g;  w += v   (Nesterov: w += momentum * v - lr * g)."""

    name = "sgd"

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, weight_decay=None,
                 clipnorm=None, clipvalue=None):
        super().__init__(learning_rate, weight_decay, clipnorm, clipvalue)
        self.momentum = _number(momentum, "momentum", low=0, high=1, high_open=True)
        self.nesterov = bool(nesterov)
        self._slot_names = ("momentums",) if self.momentum else ()

    def _update(self, params, grads, lr, common):
        _k.sgd_update(params, grads, self._slot("momentums", params), lr, self.momentum,
                      self.nesterov, **common)

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "nesterov": self.nesterov}


class Adam(Optimizer):
    """Adam (Kingma & Ba), Keras form: m and v are running means of g and g^2, and
    w -= lr * sqrt(1 - beta_2^t) / (1 - beta_1^t) * m / (sqrt(v) + epsilon)."""

    name = "adam"

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                 amsgrad=False, weight_decay=None, clipnorm=None, clipvalue=None):
        super().__init__(learning_rate, weight_decay, clipnorm, clipvalue)
        self.beta_1 = _number(beta_1, "beta_1", low=0, high=1, high_open=True)
        self.beta_2 = _number(beta_2, "beta_2", low=0, high=1, high_open=True)
        self.epsilon = _number(epsilon, "epsilon", low=0)
        self.amsgrad = bool(amsgrad)
        self._slot_names = ("momentums", "velocities") + (("velocity_hats",) if self.amsgrad else ())

    def _update(self, params, grads, lr, common):
        _k.adam_update(params, grads, self.slots["momentums"], self.slots["velocities"],
                       self._slot("velocity_hats", params), lr, self.beta_1, self.beta_2,
                       self.epsilon, self.iterations + 1, self.amsgrad, **common)

    def get_config(self):
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2,
                "epsilon": self.epsilon, "amsgrad": self.amsgrad}


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): each step also does
    w -= lr * weight_decay * w. Keras default weight_decay=0.004."""

    name = "adamw"

    def __init__(self, learning_rate=0.001, weight_decay=0.004, beta_1=0.9, beta_2=0.999,
                 epsilon=1e-7, amsgrad=False, clipnorm=None, clipvalue=None):
        if weight_decay is None:
            raise ValueError("weight_decay must be a number >= 0 for AdamW, got None")
        super().__init__(learning_rate, beta_1, beta_2, epsilon, amsgrad, weight_decay,
                         clipnorm, clipvalue)


class RMSprop(Optimizer):
    """RMSprop, Keras form: v = rho v + (1 - rho) g^2; w -= lr g / sqrt(v + epsilon)
    (centered: v - mean(g)^2 under the root; momentum: a velocity of these steps)."""

    name = "rmsprop"

    def __init__(self, learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7, centered=False,
                 weight_decay=None, clipnorm=None, clipvalue=None):
        super().__init__(learning_rate, weight_decay, clipnorm, clipvalue)
        self.rho = _number(rho, "rho", low=0, high=1, high_open=True)
        self.momentum = _number(momentum, "momentum", low=0, high=1, high_open=True)
        self.epsilon = _number(epsilon, "epsilon", low=0)
        self.centered = bool(centered)
        self._slot_names = ("velocities",) + (("momentums",) if self.momentum else ()) \
            + (("average_gradients",) if self.centered else ())

    def _update(self, params, grads, lr, common):
        _k.rmsprop_update(params, grads, self.slots["velocities"], self._slot("momentums", params),
                          self._slot("average_gradients", params), lr, self.rho, self.momentum,
                          self.epsilon, self.centered, **common)

    def get_config(self):
        return {**super().get_config(), "rho": self.rho, "momentum": self.momentum,
                "epsilon": self.epsilon, "centered": self.centered}


class Adagrad(Optimizer):
    """Adagrad, Keras form: a = sum of g^2 (starting at initial_accumulator_value);
    w -= lr g / sqrt(a + epsilon)."""

    name = "adagrad"
    _slot_names = ("accumulators",)

    def __init__(self, learning_rate=0.001, initial_accumulator_value=0.1, epsilon=1e-7,
                 weight_decay=None, clipnorm=None, clipvalue=None):
        super().__init__(learning_rate, weight_decay, clipnorm, clipvalue)
        self.initial_accumulator_value = _number(initial_accumulator_value,
                                                 "initial_accumulator_value", low=0)
        self.epsilon = _number(epsilon, "epsilon", low=0)

    def _slot_initial_value(self, name):
        return self.initial_accumulator_value

    def _update(self, params, grads, lr, common):
        _k.adagrad_update(params, grads, self.slots["accumulators"], lr, self.epsilon, **common)

    def get_config(self):
        return {**super().get_config(), "initial_accumulator_value": self.initial_accumulator_value,
                "epsilon": self.epsilon}


_REGISTRY = Registry("optimizer", Optimizer, (SGD, Adam, AdamW, RMSprop, Adagrad),
                     aliases=None)


def names():
    """Names accepted by `get`."""
    return _REGISTRY.names()


def get(identifier):
    """An Optimizer from a name (default settings), an instance or class."""
    return _REGISTRY.get(identifier)
