"""Callbacks that steer training from its logs: ReduceLROnPlateau, EarlyStopping,
LearningRateScheduler, TerminateOnNaN, LambdaCallback, MetricAverage (MPI ranks), and the
checks of a monitored quantity they share with ModelCheckpoint."""
import inspect
import math
import numbers
import warnings

from .base import Callback


# ------------------------------------------------------------------------------------------
_MAX_METRICS = ("acc", "auc", "precision", "recall")


def _maximize(monitor, mode):
    """True when larger values of `monitor` are better: mode "max", or "auto" with an
    accuracy / AUC / precision / recall name (as Keras)."""
    return mode == "max" or (mode == "auto" and any(m in monitor for m in _MAX_METRICS))


def _check_mode(mode):
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
    return mode


def _check_count(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def _check_number(value, name, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _monitored(callback, logs):
    """logs[callback.monitor], or None with a warning naming what is there."""
    value = (logs or {}).get(callback.monitor)
    if value is None:
        warnings.warn(f"{type(callback).__name__} monitors {callback.monitor!r}, which is not in "
                      f"the logs (available: {sorted(logs or {})})", RuntimeWarning, stacklevel=3)
    return value


class ReduceLROnPlateau(Callback):
    """Multiply the optimizer's learning rate by `factor` once `monitor` has not improved
    (by more than `min_delta`) for `patience` epochs; then wait `cooldown` epochs before
    counting again; never go below `min_lr`. Keras semantics and defaults. The current
    rate is added to the epoch logs as "learning_rate"."""

    def __init__(self, monitor="val_loss", factor=0.1, patience=10, verbose=0, mode="auto",
                 min_delta=1e-4, cooldown=0, min_lr=0.0):
        super().__init__()
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0 < factor < 1:
            raise ValueError(f"factor must be in (0, 1), got {factor!r}")
        for name, value in (("patience", patience), ("cooldown", cooldown)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        for name, value in (("min_delta", min_delta), ("min_lr", min_lr)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
        self.monitor, self.factor, self.patience = monitor, float(factor), patience
        self.verbose, self.mode, self.min_delta = verbose, mode, float(min_delta)
        self.cooldown, self.min_lr = cooldown, float(min_lr)
        self._reset()

    def _reset(self):
        maximize = _maximize(self.monitor, self.mode)
        self._sign = 1.0 if maximize else -1.0   # improvement: sign * (current - best) > min_delta
        self.best = -self._sign * float("inf")
        self.wait = 0
        self.cooldown_counter = 0

    def on_train_begin(self, logs=None):
        self._reset()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        optimizer = self.model.optimizer
        logs["learning_rate"] = optimizer.learning_rate
        current = logs.get(self.monitor)
        if current is None:
            warnings.warn(f"ReduceLROnPlateau monitors {self.monitor!r}, which is not in the "
                          f"logs (available: {sorted(logs)})", RuntimeWarning, stacklevel=2)
            return
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self._sign * (current - self.best) > self.min_delta:
            self.best = current
            self.wait = 0
        elif self.cooldown_counter <= 0:
            self.wait += 1
            if self.wait >= self.patience:
                old_lr = optimizer.learning_rate
                if old_lr > self.min_lr:
                    new_lr = max(old_lr * self.factor, self.min_lr)
                    optimizer.learning_rate = new_lr
                    if self.verbose:
                        print(f"Epoch {epoch + 1}: ReduceLROnPlateau reducing learning rate "
                              f"to {new_lr:.4g}.")
                    self.cooldown_counter = self.cooldown
                    self.wait = 0


class EarlyStopping(Callback):
    """Stop training once `monitor` has stopped improving (Keras semantics).

    An epoch improves when the value beats the best so far by more than `min_delta`;
    after `patience` epochs without improvement fit stops. baseline: training also
    stops if the value never beats it within `patience` epochs. start_from_epoch:
    epochs to wait before monitoring. restore_best_weights: at the end of training,
    put back the weights of the best epoch.
    After training, `stopped_epoch` (0 if never stopped) and `best_epoch` are set.
    """

    def __init__(self, monitor="val_loss", min_delta=0.0, patience=0, verbose=0, mode="auto",
                 baseline=None, restore_best_weights=False, start_from_epoch=0):
        super().__init__()
        self.monitor = monitor
        self.min_delta = abs(_check_number(min_delta, "min_delta"))
        self.patience = _check_count(patience, "patience")
        self.verbose = verbose
        self.mode = _check_mode(mode)
        self.baseline = _check_number(baseline, "baseline", allow_none=True)
        self.restore_best_weights = bool(restore_best_weights)
        self.start_from_epoch = _check_count(start_from_epoch, "start_from_epoch")
        self._sign = 1.0 if _maximize(monitor, mode) else -1.0
        self.on_train_begin()

    def _is_improvement(self, value, reference):
        return self._sign * (value - reference) > self.min_delta

    def on_train_begin(self, logs=None):
        self.wait = 0
        self.stopped_epoch = 0
        self.best = -self._sign * math.inf
        self.best_weights = None
        self.best_epoch = 0

    def on_epoch_end(self, epoch, logs=None):
        current = _monitored(self, logs)
        if current is None or epoch < self.start_from_epoch:
            return
        if self.restore_best_weights and self.best_weights is None:
            self.best_weights = self.model.get_weights()  # something to restore, at least
        self.wait += 1
        if self._is_improvement(current, self.best):
            self.best, self.best_epoch = current, epoch
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            if self.baseline is None or self._is_improvement(current, self.baseline):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.stopped_epoch > 0 and self.verbose:
            print(f"Epoch {self.stopped_epoch + 1}: early stopping")
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose:
                print(f"Restoring model weights from the end of the best epoch: "
                      f"{self.best_epoch + 1}.")
            self.model.set_weights(self.best_weights)


class LearningRateScheduler(Callback):
    """At the start of each epoch set the optimizer's learning rate to
    schedule(epoch, lr) (or schedule(epoch) for a one-argument function); epochs count
    from 0. The rate is added to the epoch logs as "learning_rate"."""

    def __init__(self, schedule, verbose=0):
        super().__init__()
        if not callable(schedule):
            raise TypeError(f"schedule must be callable, got {type(schedule).__name__}")
        self.schedule = schedule
        self.verbose = verbose
        self._two_args = self._takes_two_args(schedule)

    @staticmethod
    def _takes_two_args(fn):
        try:
            params = inspect.signature(fn).parameters.values()
        except (TypeError, ValueError):
            return True
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)

    def on_epoch_begin(self, epoch, logs=None):
        optimizer = self.model.optimizer
        lr = self.schedule(epoch, optimizer.learning_rate) if self._two_args \
            else self.schedule(epoch)
        if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not math.isfinite(lr) \
                or lr <= 0:
            raise ValueError(f"the schedule must return a positive finite number; it returned "
                             f"{lr!r} for epoch {epoch}")
        optimizer.learning_rate = float(lr)
        if self.verbose:
            print(f"Epoch {epoch + 1}: LearningRateScheduler setting learning rate to {lr:.6g}.")

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = self.model.optimizer.learning_rate


class TerminateOnNaN(Callback):
    """Stop training as soon as the loss becomes NaN or infinite."""

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            print(f"Batch {batch}: invalid loss, terminating training")
            self.model.stop_training = True


class LambdaCallback(Callback):
    """A callback from plain functions, with Keras's signatures:
    on_epoch_begin(epoch, logs), on_epoch_end(epoch, logs), on_train_begin(logs),
    on_train_end(logs), on_train_batch_begin(batch, logs), on_train_batch_end(batch, logs)
    (on_batch_begin / on_batch_end are accepted as the Keras aliases of the last two)."""

    def __init__(self, on_epoch_begin=None, on_epoch_end=None, on_train_begin=None,
                 on_train_end=None, on_train_batch_begin=None, on_train_batch_end=None,
                 on_batch_begin=None, on_batch_end=None):
        super().__init__()
        hooks = {"on_epoch_begin": on_epoch_begin, "on_epoch_end": on_epoch_end,
                 "on_train_begin": on_train_begin, "on_train_end": on_train_end,
                 "on_train_batch_begin": on_train_batch_begin or on_batch_begin,
                 "on_train_batch_end": on_train_batch_end or on_batch_end}
        for name, fn in hooks.items():
            if fn is not None:
                if not callable(fn):
                    raise TypeError(f"{name} must be callable, got {type(fn).__name__}")
                setattr(self, name, fn)


class MetricAverage(Callback):
    """Data-parallel training (cyneuron.distributed): at each epoch's end, replace the
    loss, metrics and val_* in the logs by their mean over the MPI ranks, so that every
    rank records, prints and decides on (EarlyStopping, ReduceLROnPlateau) the same
    values. Put it first among the callbacks; fit(distributed=True) adds it."""

    def on_epoch_end(self, epoch, logs=None):
        from .. import distributed
        distributed.average_logs(logs if logs is not None else {})
