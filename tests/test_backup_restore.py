"""BackupAndRestore: a training process killed with SIGKILL mid-epoch resumes from its
last backup and ends with exactly the weights of an uninterrupted run (float64, one
thread), dropout masks and shuffling included; plus the callback's bookkeeping."""
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import cyneuron as cn
from cyneuron import layers
from cyneuron.callbacks import BackupAndRestore

TRAIN = textwrap.dedent('''
    import os, signal, sys
    import numpy as np
    import cyneuron as cn
    from cyneuron import layers
    from cyneuron.callbacks import BackupAndRestore, Callback

    backup, out, kill_at, mode = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    cn.set_num_threads(1)
    cn.set_seed(7)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((96, 6))
    y = (x[:, 0] + x[:, 1] ** 2 > 0.5).astype(int)
    model = cn.Sequential([layers.Dense(16, activation="relu"), layers.Dropout(0.3),
                           layers.BatchNormalization(), layers.Dense(2, activation="softmax")],
                          dtype="float64")
    model.compile(optimizer=cn.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")

    class KillAt(Callback):
        """SIGKILL this process at (epoch, batch): no clean-up runs, like a crash."""
        def __init__(self, epoch, batch):
            super().__init__()
            self.at, self.epoch = (epoch, batch), None
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch
        def on_train_batch_end(self, batch, logs=None):
            if (self.epoch, batch) == self.at:
                sys.stdout.flush()
                os.kill(os.getpid(), signal.SIGKILL)

    callbacks = [BackupAndRestore(backup)] if backup != "-" else []
    if kill_at != "-":
        e, b = map(int, kill_at.split(","))
        callbacks.append(KillAt(e, b))
    kwargs = {}
    if mode == "explicit" and backup != "-":
        kwargs["initial_epoch"] = BackupAndRestore.resume_epoch(backup)
    history = model.fit(x, y, epochs=6, batch_size=16, verbose=0, callbacks=callbacks, **kwargs)
    np.savez(out, *model.get_weights(), epochs=np.array(history.epoch))
    print("DONE", history.epoch)
''')


def _run(tmp_path, backup, out, kill_at="-", mode="explicit"):
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    return subprocess.run([sys.executable, str(script), str(backup), str(out), kill_at, mode],
                          capture_output=True, text=True, timeout=300)


def _weights(path):
    with np.load(path) as f:
        return [f[f"arr_{i}"] for i in range(len(f.files) - 1)], list(f["epochs"])


def _killed_then_resumed(tmp_path, mode):
    reference = _run(tmp_path, "-", tmp_path / "ref.npz")
    assert reference.returncode == 0, reference.stderr
    backup = tmp_path / "backup"
    killed = _run(tmp_path, backup, tmp_path / "never.npz", kill_at="3,2", mode=mode)
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr)
    assert not (tmp_path / "never.npz").exists()
    assert BackupAndRestore.resume_epoch(backup) == 3        # epochs 0, 1, 2 were backed up
    resumed = _run(tmp_path, backup, tmp_path / "resumed.npz", mode=mode)
    assert resumed.returncode == 0, resumed.stderr
    ref_w, ref_epochs = _weights(tmp_path / "ref.npz")
    got_w, got_epochs = _weights(tmp_path / "resumed.npz")
    assert ref_epochs == [0, 1, 2, 3, 4, 5] and got_epochs == [3, 4, 5]
    for a, b in zip(got_w, ref_w):
        np.testing.assert_array_equal(a, b)           # bit-identical
    assert not backup.exists()                        # delete_checkpoint=True after success


def test_sigkill_mid_epoch_then_resume_gives_identical_weights(tmp_path):
    """The resumed fit is told its first epoch (initial_epoch=resume_epoch(...))."""
    _killed_then_resumed(tmp_path, "explicit")


def test_sigkill_then_resume_without_telling_fit(tmp_path):
    """Keras 3 behaviour: fit itself resumes from the epoch the callback restored."""
    _killed_then_resumed(tmp_path, "auto")


def _model():
    cn.set_seed(1)
    model = cn.Sequential([layers.Dense(4, activation="tanh"), layers.Dense(1)], dtype="float64")
    model.compile(optimizer=cn.optimizers.SGD(0.05, momentum=0.9), loss="mse")
    return model


def test_backup_written_each_epoch_and_kept_after_an_exception(tmp_path):
    x, y = np.linspace(-1, 1, 40).reshape(-1, 2), np.ones(20)
    backup = tmp_path / "b"

    class Boom(cn.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise RuntimeError("boom")

    model = _model()
    with pytest.raises(RuntimeError, match="boom"):
        model.fit(x, y, epochs=4, batch_size=5, verbose=0,
                  callbacks=[BackupAndRestore(backup), Boom()])
    assert BackupAndRestore.resume_epoch(backup) == 2
    files = sorted(os.listdir(backup))
    assert files == ["backup-000002-000000000.cyn", "state.json"]   # the older one removed
    saved = cn.load_model(backup / files[0])
    for a, b in zip(saved.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(saved.optimizer.slots["momentums"], model.optimizer.slots["momentums"])
    # a new model restored from it: weights, optimizer state and iterations
    fresh = _model()
    cb = BackupAndRestore(backup, delete_checkpoint=False)
    fresh.fit(x, y, epochs=2, initial_epoch=2, batch_size=5, verbose=0, callbacks=[cb])
    assert cb.restored_epoch == 2
    assert backup.exists()                               # delete_checkpoint=False keeps it


def test_save_freq_in_batches_and_arguments(tmp_path):
    x, y = np.linspace(-1, 1, 40).reshape(-1, 2), np.ones(20)
    backup = tmp_path / "b"
    model = _model()
    model.fit(x, y, epochs=2, batch_size=5, verbose=0,
              callbacks=[BackupAndRestore(backup, save_freq=3, delete_checkpoint=False)])
    state_epoch = BackupAndRestore.resume_epoch(backup)
    assert state_epoch == 1            # the last backup (batch 6 of 8) was made in epoch 1
    assert len([f for f in os.listdir(backup) if f.endswith(".cyn")]) == 1
    for bad in (0, -1, "batch", 1.5, True):
        with pytest.raises(ValueError, match="save_freq"):
            BackupAndRestore(backup, save_freq=bad)
    with pytest.raises(ValueError, match="backup_dir"):
        BackupAndRestore("")
    (backup / "state.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot be read"):
        BackupAndRestore.resume_epoch(backup)
