"""Callbacks that write files: ModelCheckpoint, CSVLogger, BackupAndRestore."""
import csv
import json
import math
import numbers
import os
import tempfile

from .base import Callback
from .monitor import _check_mode, _check_number, _maximize, _monitored


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
    from .._random import get_rng

    states = {"global": get_rng().bit_generator.state}
    for path, layer in _layers_with_rng(model):
        rng = getattr(layer, "_rng", None)
        if rng is not None:
            states["layer:" + path] = rng.bit_generator.state
    return states


def _set_rng_states(model, states):
    from .._random import get_rng

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
        from .. import saving

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
