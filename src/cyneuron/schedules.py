"""Learning-rate schedules (Keras `keras.optimizers.schedules`): callables step -> rate.

An optimizer given a schedule as `learning_rate` uses schedule(iterations) for each
step, iterations counting the steps already taken (0 for the first). Also reachable as
`cn.optimizers.schedules`.
"""
import math

import numpy as np


def _number(value, name, minimum=None, strict=False, maximum=None, integer=False):
    kind = "an integer" if integer else "a number"
    ok_type = isinstance(value, (int, np.integer)) if integer else isinstance(value, (int, float, np.number))
    if isinstance(value, bool) or not ok_type or not np.isfinite(value):
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    if minimum is not None and (value < minimum or (strict and value == minimum)):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value!r}")
    return int(value) if integer else float(value)


def _check_step(step):
    return _number(step, "step", minimum=0)


class LearningRateSchedule:
    """Base class: subclasses implement `__call__(step)` and `get_config()`."""

    def __call__(self, step):
        raise NotImplementedError

    def get_config(self):
        raise NotImplementedError

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class ExponentialDecay(LearningRateSchedule):
    """initial_learning_rate * decay_rate ** (step / decay_steps); with staircase=True the
    exponent is floored, so the rate drops every `decay_steps` steps."""

    def __init__(self, initial_learning_rate, decay_steps, decay_rate, staircase=False,
                 name="ExponentialDecay"):
        self.initial_learning_rate = _number(initial_learning_rate, "initial_learning_rate",
                                             minimum=0, strict=True)
        self.decay_steps = _number(decay_steps, "decay_steps", minimum=0, strict=True)
        self.decay_rate = _number(decay_rate, "decay_rate", minimum=0, strict=True)
        self.staircase = bool(staircase)
        self.name = name

    def __call__(self, step):
        p = _check_step(step) / self.decay_steps
        if self.staircase:
            p = math.floor(p)
        return self.initial_learning_rate * self.decay_rate ** p

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate,
                "decay_steps": self.decay_steps, "decay_rate": self.decay_rate,
                "staircase": self.staircase, "name": self.name}


class PiecewiseConstantDecay(LearningRateSchedule):
    """values[0] for step <= boundaries[0], values[i] for boundaries[i-1] < step <= boundaries[i],
    values[-1] after the last boundary (len(values) == len(boundaries) + 1)."""

    def __init__(self, boundaries, values, name="PiecewiseConstant"):
        boundaries, values = list(boundaries), list(values)
        if len(values) != len(boundaries) + 1:
            raise ValueError(f"values must have one more element than boundaries; got "
                             f"{len(boundaries)} boundaries and {len(values)} values")
        self.boundaries = [_number(b, f"boundaries[{i}]") for i, b in enumerate(boundaries)]
        if any(b >= c for b, c in zip(self.boundaries, self.boundaries[1:])):
            raise ValueError(f"boundaries must be strictly increasing, got {boundaries}")
        self.values = [_number(v, f"values[{i}]", minimum=0) for i, v in enumerate(values)]
        self.name = name

    def __call__(self, step):
        step = _check_step(step)
        for boundary, value in zip(self.boundaries, self.values):
            if step <= boundary:
                return value
        return self.values[-1]

    def get_config(self):
        return {"boundaries": list(self.boundaries), "values": list(self.values), "name": self.name}


class CosineDecay(LearningRateSchedule):
    """Cosine decay (Loshchilov & Hutter, SGDR), with optional linear warmup, as in Keras.

    Without warmup_target: lr(step) = initial * ((1 - alpha) * 0.5 (1 + cos(pi s / decay_steps)) + alpha),
    s = min(step, decay_steps). With warmup_target: the rate rises linearly from
    initial_learning_rate to warmup_target over warmup_steps, then decays from
    warmup_target as above over decay_steps.
    """

    def __init__(self, initial_learning_rate, decay_steps, alpha=0.0, name="CosineDecay",
                 warmup_target=None, warmup_steps=0):
        self.initial_learning_rate = _number(initial_learning_rate, "initial_learning_rate", minimum=0)
        self.decay_steps = _number(decay_steps, "decay_steps", minimum=0, strict=True)
        self.alpha = _number(alpha, "alpha", minimum=0, maximum=1)
        self.warmup_target = None if warmup_target is None else \
            _number(warmup_target, "warmup_target", minimum=0)
        self.warmup_steps = _number(warmup_steps, "warmup_steps", minimum=0)
        self.name = name

    def _decay(self, step, decay_from):
        cosine = 0.5 * (1.0 + math.cos(math.pi * step / self.decay_steps))
        return decay_from * ((1 - self.alpha) * cosine + self.alpha)

    def __call__(self, step):
        step = _check_step(step)
        if self.warmup_target is None:
            return self._decay(min(step, self.decay_steps), self.initial_learning_rate)
        step = min(step, self.decay_steps + self.warmup_steps)
        if step < self.warmup_steps:
            delta = self.warmup_target - self.initial_learning_rate
            return self.initial_learning_rate + delta * step / self.warmup_steps
        return self._decay(step - self.warmup_steps, self.warmup_target)

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate,
                "decay_steps": self.decay_steps, "alpha": self.alpha, "name": self.name,
                "warmup_target": self.warmup_target, "warmup_steps": self.warmup_steps}


_CLASSES = {cls.__name__: cls for cls in (ExponentialDecay, PiecewiseConstantDecay, CosineDecay)}


def serialize(schedule):
    """{"class_name": ..., "config": ...} for a built-in schedule."""
    if not isinstance(schedule, LearningRateSchedule):
        raise TypeError(f"schedule must be a LearningRateSchedule, got {type(schedule).__name__}")
    return {"class_name": type(schedule).__name__, "config": schedule.get_config()}


def deserialize(config):
    """The schedule that `serialize` described."""
    if not isinstance(config, dict) or config.get("class_name") not in _CLASSES:
        raise ValueError(f"unknown learning-rate schedule {config!r}; expected a dict with "
                         f"class_name one of {sorted(_CLASSES)}")
    return _CLASSES[config["class_name"]].from_config(config.get("config", {}))
