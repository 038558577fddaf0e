"""Training progress output, the History that `fit` returns, and callbacks (Keras hooks)."""
import sys
import time
import warnings


class History:
    """Per-epoch values of the loss and metrics: `history.history["loss"]` etc."""

    def __init__(self):
        self.history = {}
        self.epoch = []

    def record(self, epoch, logs):
        self.epoch.append(epoch)
        for key, value in logs.items():
            self.history.setdefault(key, []).append(value)

    def __repr__(self):
        return f"History(epochs={len(self.epoch)}, keys={list(self.history)})"


def _format_logs(logs):
    return " - ".join(f"{k}: {v:.4f}" for k, v in logs.items())


class ProgressPrinter:
    """verbose=1: a progress bar redrawn per batch (at most 10 times a second);
    verbose=2: one line per epoch; verbose=0: silent."""

    def __init__(self, verbose, epochs, steps, stream=None):
        self.verbose, self.epochs, self.steps = verbose, epochs, steps
        self.stream = stream or sys.stdout
        self._last_draw = 0.0

    def epoch_begin(self, epoch):
        self._epoch = epoch
        self._start = time.perf_counter()
        if self.verbose == 1:
            print(f"Epoch {epoch + 1}/{self.epochs}", file=self.stream)

    def batch_end(self, step, logs):
        if self.verbose != 1:
            return
        now = time.perf_counter()
        if step + 1 < self.steps and now - self._last_draw < 0.1:
            return
        self._last_draw = now
        done = int(30 * (step + 1) / self.steps)
        bar = "=" * max(done - 1, 0) + (">" if done < 30 else "=") + "." * (30 - done)
        elapsed = now - self._start
        eta = elapsed / (step + 1) * (self.steps - step - 1)
        width = len(str(self.steps))
        self.stream.write(f"\r{step + 1:>{width}}/{self.steps} [{bar}] - ETA {eta:4.1f}s - "
                          f"{_format_logs(logs)}")
        self.stream.flush()

    def epoch_end(self, logs):
        elapsed = time.perf_counter() - self._start
        if self.verbose == 1:
            self.stream.write(f"\r{self.steps}/{self.steps} [{'=' * 30}] - {elapsed:.2f}s - "
                              f"{_format_logs(logs)}\n")
        elif self.verbose == 2:
            self.stream.write(f"Epoch {self._epoch + 1}/{self.epochs} - {elapsed:.2f}s - "
                              f"{_format_logs(logs)}\n")
        self.stream.flush()


class Callback:
    """Base class for hooks into `fit` (Keras names). `self.model` is the model being
    trained; `logs` holds the running loss and metrics (and val_* at epoch end).
    Setting `model.stop_training = True` ends fit after the current epoch."""

    def __init__(self):
        self.model = None
        self.params = {}

    def set_model(self, model):
        self.model = model

    def set_params(self, params):
        self.params = dict(params)

    def on_train_begin(self, logs=None):
        pass

    def on_train_end(self, logs=None):
        pass

    def on_epoch_begin(self, epoch, logs=None):
        pass

    def on_epoch_end(self, epoch, logs=None):
        pass

    def on_train_batch_begin(self, batch, logs=None):
        pass

    def on_train_batch_end(self, batch, logs=None):
        pass


class CallbackList:
    """Calls each hook on every callback, in order."""

    def __init__(self, callbacks, model, params):
        if callbacks is None:
            callbacks = []
        elif isinstance(callbacks, Callback):
            callbacks = [callbacks]
        callbacks = list(callbacks)
        for cb in callbacks:
            if not isinstance(cb, Callback):
                raise TypeError(f"callbacks must be cyneuron Callback instances; got "
                                f"{type(cb).__name__}")
        self.callbacks = callbacks
        for cb in callbacks:
            cb.set_model(model)
            cb.set_params(params)

    def call(self, hook, *args):
        """callback.<hook>(*args) for every callback, e.g. call("on_epoch_end", epoch, logs)."""
        for cb in self.callbacks:
            getattr(cb, hook)(*args)


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
        maximize = self.mode == "max" or (self.mode == "auto" and "acc" in self.monitor)
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
