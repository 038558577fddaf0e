"""Training progress output, the History that `fit` returns, and callbacks (Keras hooks).

Callbacks (Keras names and semantics): EarlyStopping, ModelCheckpoint, BackupAndRestore,
LearningRateScheduler, ReduceLROnPlateau, CSVLogger, TerminateOnNaN, LambdaCallback.
MetricAverage averages epoch logs over MPI ranks (cyneuron.distributed).
Progress: verbose=1 draws a per-batch bar (tqdm where installed, a plain one otherwise),
verbose=2 one line per epoch.
"""
import csv
import inspect
import json
import math
import numbers
import os
import sys
import tempfile
import time
import warnings


def _format_logs(logs):
    return " - ".join(f"{k}: {v:.4f}" for k, v in logs.items())


def _load_tqdm():
    """tqdm's bar class, or None when tqdm is not installed."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm


def make_progress(verbose, epochs, steps, stream=None):
    """The progress display for fit: a tqdm bar for verbose=1 where tqdm is installed,
    else the plain ProgressPrinter (which also does verbose=2 and silence)."""
    tqdm = _load_tqdm() if verbose == 1 else None
    if tqdm is not None:
        return TqdmProgress(tqdm, epochs, steps, stream)
    return ProgressPrinter(verbose, epochs, steps, stream)


class TqdmProgress:
    """verbose=1 with tqdm: one bar per epoch, with loss and metrics as its postfix
    (tqdm adds rate and ETA)."""

    def __init__(self, tqdm, epochs, steps, stream=None):
        self._tqdm, self.epochs, self.steps = tqdm, epochs, steps
        self.stream = stream or sys.stdout
        self._bar = None

    def epoch_begin(self, epoch):
        self.close()
        self._bar = self._tqdm(total=self.steps, desc=f"Epoch {epoch + 1}/{self.epochs}",
                               unit="batch", file=self.stream, leave=True, mininterval=0.1)

    def batch_end(self, step, logs):
        self._bar.set_postfix_str(_format_logs(logs), refresh=False)
        self._bar.update(1)

    def epoch_end(self, logs):
        self._bar.set_postfix_str(_format_logs(logs), refresh=False)
        self.close()

    def close(self):
        if self._bar is not None:
            self._bar.close()
            self._bar = None


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

    def close(self):
        pass


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


class History(Callback):
    """Per-epoch values of the loss and metrics: `history.history["loss"]` etc.
    `fit` returns it (and sets it as `model.history`); `plot(path)` draws the curves."""

    def __init__(self):
        super().__init__()
        self.history = {}
        self.epoch = []

    def record(self, epoch, logs):
        self.epoch.append(epoch)
        for key, value in logs.items():
            self.history.setdefault(key, []).append(value)

    def on_epoch_end(self, epoch, logs=None):
        self.record(epoch, logs or {})

    def plot(self, path, keys=None, dpi=100):
        """Write a PNG to `path`: one panel per loss or metric (its val_ curve beside it),
        against the epoch. keys: the names to draw (default: all). Needs matplotlib."""
        try:
            from matplotlib.figure import Figure
        except ImportError:
            raise ImportError("History.plot needs matplotlib: pip install matplotlib "
                              "(or pip install 'cyneuron[plot]')") from None
        if not self.epoch:
            raise ValueError("nothing to plot: the history has no epochs")
        names = []
        for key in self.history:
            base = key[4:] if key.startswith("val_") else key
            if base not in names:
                names.append(base)
        if keys is not None:
            keys = [keys] if isinstance(keys, str) else list(keys)
            unknown = [k for k in keys if k not in names]
            if unknown:
                raise ValueError(f"keys {unknown} are not in the history; it has {names}")
            names = keys
        epochs = [e + 1 for e in self.epoch]
        fig = Figure(figsize=(4.5 * len(names), 3.5), dpi=dpi)
        axes = fig.subplots(1, len(names), squeeze=False)[0]
        for ax, name in zip(axes, names):
            for key, style in ((name, "-"), ("val_" + name, "--")):
                values = self.history.get(key)
                if values is not None:
                    ax.plot(epochs[-len(values):], values, style, marker="o", markersize=3,
                            label=key)
            ax.set_title(name)
            ax.set_xlabel("epoch")
            if name in ("learning_rate", "lr"):
                ax.set_yscale("log")
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
        fig.savefig(os.fspath(path), format="png")
        return path

    def __repr__(self):
        return f"History(epochs={len(self.epoch)}, keys={list(self.history)})"


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


class ModelCheckpoint(Callback):
    """Save the model (model.save) or its weights (save_weights_only: model.save_weights)
    each epoch, or every `save_freq` batches when save_freq is an int.

    filepath may hold format fields: {epoch} (1-based), {batch} and any log key, e.g.
    "ckpt-{epoch:02d}-{val_loss:.3f}.cyn". save_best_only: save only when `monitor`
    beats the best value so far (initial_value_threshold: the value to beat first).
    Files are written atomically; missing folders are created.
    """

    def __init__(self, filepath, monitor="val_loss", verbose=0, save_best_only=False,
                 save_weights_only=False, mode="auto", save_freq="epoch",
                 initial_value_threshold=None):
        super().__init__()
        self.filepath = os.fspath(filepath)
        self.monitor = monitor
        self.verbose = verbose
        self.save_best_only = bool(save_best_only)
        self.save_weights_only = bool(save_weights_only)
        self.mode = _check_mode(mode)
        if save_freq != "epoch" and (isinstance(save_freq, bool)
                                     or not isinstance(save_freq, numbers.Integral)
                                     or save_freq < 1):
            raise ValueError(f"save_freq must be 'epoch' or a positive integer (batches), "
                             f"got {save_freq!r}")
        self.save_freq = save_freq
        self.initial_value_threshold = _check_number(initial_value_threshold,
                                                     "initial_value_threshold", allow_none=True)
        self._sign = 1.0 if _maximize(monitor, mode) else -1.0
        self.on_train_begin()

    def on_train_begin(self, logs=None):
        self.best = (-self._sign * math.inf if self.initial_value_threshold is None
                     else self.initial_value_threshold)
        self._batches_seen = 0
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.save_freq != "epoch":
            self._batches_seen += 1
            if self._batches_seen % self.save_freq == 0:
                self._save(self._epoch, batch, logs or {})

    def on_epoch_end(self, epoch, logs=None):
        if self.save_freq == "epoch":
            self._save(epoch, None, logs or {})

    def _path(self, epoch, batch, logs):
        fields = dict(logs)
        fields["epoch"] = epoch + 1
        if batch is not None:
            fields["batch"] = batch + 1
        try:
            return self.filepath.format(**fields)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"ModelCheckpoint filepath {self.filepath!r} cannot be formatted "
                             f"with epoch, batch and the logs {sorted(logs)}: {exc!r}") from None

    def _save(self, epoch, batch, logs):
        if self.save_best_only:
            current = _monitored(self, logs)
            if current is None:
                return
            if not self._sign * (current - self.best) > 0:
                if self.verbose:
                    print(f"Epoch {epoch + 1}: {self.monitor} did not improve from {self.best:.5f}")
                return
            if self.verbose:
                print(f"Epoch {epoch + 1}: {self.monitor} improved from {self.best:.5f} to "
                      f"{current:.5f}, saving the model")
            self.best = current
        path = self._path(epoch, batch, logs)
        folder = os.path.dirname(path)
        if folder:
            os.makedirs(folder, exist_ok=True)
        if self.save_weights_only:
            self.model.save_weights(path)
        else:
            self.model.save(path)
        if self.verbose and not self.save_best_only:
            print(f"Epoch {epoch + 1}: saving model to {path}")


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


class CSVLogger(Callback):
    """Write one CSV row per epoch: the epoch number and every log value (columns
    sorted, fixed at the first epoch; "NA" where a value is missing). append=True adds
    to an existing file (the header only if the file is empty)."""

    def __init__(self, filename, separator=",", append=False):
        super().__init__()
        self.filename = os.fspath(filename)
        self.separator = separator
        self.append = bool(append)
        self.keys = None
        self._file = None
        self._writer = None

    def on_train_begin(self, logs=None):
        has_rows = self.append and os.path.exists(self.filename) \
            and os.path.getsize(self.filename) > 0
        self._file = open(self.filename, "a" if self.append else "w", newline="")
        self._write_header = not has_rows
        self.keys = None
        self._writer = None

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self._file is None:
            self.on_train_begin()
        if self.keys is None:
            self.keys = sorted(logs)
            self._writer = csv.writer(self._file, delimiter=self.separator)
            if self._write_header:
                self._writer.writerow(["epoch"] + self.keys)
        self._writer.writerow([epoch] + [logs.get(k, "NA") for k in self.keys])
        self._file.flush()

    def on_train_end(self, logs=None):
        if self._file is not None:
            self._file.close()
            self._file = None


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


# ------------------------------------------------------------------------------------------
def _layers_with_rng(model):
    """(path, layer) of every layer, sublayers of wrappers included, in a fixed order."""
    found = []

    def visit(layer, path):
        found.append((path, layer))
        subs = layer._sublayers() if hasattr(layer, "_sublayers") else (
            [layer.layer] if getattr(layer, "layer", None) is not None else [])
        for j, sub in enumerate(subs):
            visit(sub, f"{path}/{j}")

    for i, layer in enumerate(getattr(model, "layers", [])):
        visit(layer, str(i))
    return found


def _rng_states(model):
    """The random state of a run: the library generator and each layer's own one."""
    from ._random import get_rng

    states = {"global": get_rng().bit_generator.state}
    for path, layer in _layers_with_rng(model):
        rng = getattr(layer, "_rng", None)
        if rng is not None:
            states["layer:" + path] = rng.bit_generator.state
    return states


def _set_rng_states(model, states):
    from ._random import get_rng

    get_rng().bit_generator.state = states["global"]   # in place: fit holds this generator
    for path, layer in _layers_with_rng(model):
        rng = getattr(layer, "_rng", None)
        key = "layer:" + path
        if rng is not None and key in states:
            rng.bit_generator.state = states[key]


def _write_json_atomic(path, obj):
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".state.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise


class BackupAndRestore(Callback):
    """Back up the training state so that a run killed mid-training resumes where its
    last backup left off (Keras 3 semantics).

    At the end of every epoch (save_freq="epoch"), or every `save_freq` batches (an
    int), the model's weights, its optimizer state (slots and iteration count), the
    epoch reached and the random generators' states (cyneuron's generator, which
    shuffles and draws dropout masks, and any layer's own seeded one) are written to
    `backup_dir`. Fitting again with this callback restores all of it in
    `on_train_begin` and continues from the next epoch: with save_freq="epoch" the
    resumed run ends with exactly the weights of an uninterrupted one (float64, one
    thread: bit-identical). With an int save_freq a resumed run restarts the epoch in
    which the backup was made, from that backup's weights (as Keras does).
    delete_checkpoint: remove the backup once training finishes (not when it is
    interrupted: an exception or a killed process leaves it for the next run).

    Each backup is written completely before a small state file (written atomically)
    points to it, so a process killed while writing leaves the previous backup intact.

    fit resumes from the epoch the callback sets as `model._initial_epoch` (Keras 3's
    attribute); `BackupAndRestore.resume_epoch(backup_dir)` tells it, for a fit that
    needs it passed as `initial_epoch`.
    """

    STATE = "state.json"

    def __init__(self, backup_dir, save_freq="epoch", delete_checkpoint=True):
        super().__init__()
        if not backup_dir:
            raise ValueError("backup_dir is required (a folder for the backup)")
        self.backup_dir = os.fspath(backup_dir)
        if save_freq != "epoch" and save_freq is not False and (
                isinstance(save_freq, bool) or not isinstance(save_freq, numbers.Integral)
                or save_freq < 1):
            raise ValueError(f"save_freq must be 'epoch', a positive integer (batches) or "
                             f"False, got {save_freq!r}")
        self.save_freq = save_freq
        self.delete_checkpoint = bool(delete_checkpoint)
        self._epoch = 0
        self._batches = 0
        self._rng_at_epoch_start = None
        self.restored_epoch = None

    # -- reading ------------------------------------------------------------------------
    @classmethod
    def _read_state(cls, backup_dir):
        path = os.path.join(os.fspath(backup_dir), cls.STATE)
        if not os.path.exists(path):
            return None
        try:
            with open(path) as f:
                state = json.load(f)
        except (OSError, ValueError) as exc:
            raise ValueError(f"the backup state {path!r} cannot be read: {exc}") from None
        if not isinstance(state, dict) or not isinstance(state.get("epoch"), int) \
                or not isinstance(state.get("model_file"), str) \
                or not isinstance(state.get("rng"), dict):
            raise ValueError(f"the backup state {path!r} is not a BackupAndRestore state")
        return state

    @classmethod
    def resume_epoch(cls, backup_dir):
        """The epoch a run with a backup in `backup_dir` resumes from (0 without one)."""
        state = cls._read_state(backup_dir)
        return 0 if state is None else state["epoch"]

    def on_train_begin(self, logs=None):
        from . import saving

        self._batches = 0
        self.restored_epoch = None
        state = self._read_state(self.backup_dir)
        if state is None:
            self._rng_at_epoch_start = _rng_states(self.model)
            return
        model_file = os.path.join(self.backup_dir, os.path.basename(state["model_file"]))
        self.model.load_weights(model_file)
        optimizer = getattr(self.model, "optimizer", None)
        with saving._Archive(model_file) as archive:
            opt_state = archive.header.get("optimizer_state")
            if optimizer is not None and opt_state is not None:
                saving._restore_optimizer(archive, self.model, opt_state)
        if optimizer is not None and "learning_rate" in state \
                and isinstance(getattr(optimizer, "_learning_rate", None), float):
            optimizer.learning_rate = state["learning_rate"]
        _set_rng_states(self.model, state["rng"])
        self._rng_at_epoch_start = state["rng"]
        self._epoch = state["epoch"]
        self.restored_epoch = state["epoch"]
        self.model._initial_epoch = state["epoch"]      # fit starts from here (Keras 3)

    # -- writing ------------------------------------------------------------------------
    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if isinstance(self.save_freq, int) and not isinstance(self.save_freq, bool):
            self._batches += 1
            if self._batches % self.save_freq == 0:
                self._backup(self._epoch, self._rng_at_epoch_start)

    def on_epoch_end(self, epoch, logs=None):
        self._rng_at_epoch_start = _rng_states(self.model)     # before the next shuffle
        if self.save_freq == "epoch":
            self._backup(epoch + 1, self._rng_at_epoch_start)

    def _backup(self, next_epoch, rng_states):
        os.makedirs(self.backup_dir, exist_ok=True)
        previous = self._read_state(self.backup_dir)
        name = f"backup-{next_epoch:06d}-{self._batches:09d}.cyn"
        self.model.save(os.path.join(self.backup_dir, name))     # atomic
        state = {"epoch": int(next_epoch), "model_file": name, "rng": rng_states}
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is not None and isinstance(getattr(optimizer, "_learning_rate", None), float):
            state["learning_rate"] = optimizer._learning_rate
        _write_json_atomic(os.path.join(self.backup_dir, self.STATE), state)   # the commit
        if previous is not None and previous["model_file"] != name:
            try:
                os.remove(os.path.join(self.backup_dir, os.path.basename(previous["model_file"])))
            except OSError:
                pass

    def on_train_end(self, logs=None):
        if self.model is not None and hasattr(self.model, "_initial_epoch"):
            self.model._initial_epoch = None
        if self.delete_checkpoint and os.path.isdir(self.backup_dir):
            state_path = os.path.join(self.backup_dir, self.STATE)
            state = self._read_state(self.backup_dir) if os.path.exists(state_path) else None
            if state is not None:
                try:
                    os.remove(os.path.join(self.backup_dir, os.path.basename(state["model_file"])))
                except OSError:
                    pass
                os.remove(state_path)
            try:
                os.rmdir(self.backup_dir)          # only if nothing else is in it
            except OSError:
                pass


class MetricAverage(Callback):
    """Data-parallel training (cyneuron.distributed): at each epoch's end, replace the
    loss, metrics and val_* in the logs by their mean over the MPI ranks, so that every
    rank records, prints and decides on (EarlyStopping, ReduceLROnPlateau) the same
    values. Put it first among the callbacks; fit(distributed=True) adds it."""

    def on_epoch_end(self, epoch, logs=None):
        from . import distributed
        distributed.average_logs(logs if logs is not None else {})
