"""Callbacks (EarlyStopping, ModelCheckpoint, LearningRateScheduler, CSVLogger,
TerminateOnNaN, LambdaCallback), the History that fit returns, its plot, and the
progress output of verbose=1 (tqdm where installed, a plain bar otherwise)."""
import csv
import io
import math
import sys

import numpy as np
import pytest

import cyneuron as cn
from cyneuron import callbacks, layers


def _blobs(n=96, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.standard_normal((n, 4)).astype(np.float32) + 2.0 * y[:, None]
    return x, y


def _classifier(lr=0.05, seed=0):
    cn.set_seed(seed)
    model = cn.Sequential([layers.Dense(8, activation="relu"), layers.Dense(3, activation="softmax")])
    model.compile(optimizer=cn.optimizers.SGD(lr, momentum=0.9),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.build((4,))
    return model


class _FakeModel:
    """Just what EarlyStopping touches: weights and stop_training."""

    def __init__(self):
        self.stop_training = False
        self.weights = [np.zeros(2)]

    def get_weights(self):
        return [w.copy() for w in self.weights]

    def set_weights(self, weights):
        self.weights = [w.copy() for w in weights]


def _drive(callback, values, key="val_loss"):
    """Feed one monitored value per epoch; return the epoch at which training stopped."""
    model = _FakeModel()
    callback.set_model(model)
    callback.on_train_begin()
    for epoch, value in enumerate(values):
        model.weights = [np.full(2, float(epoch))]
        callback.on_epoch_end(epoch, {key: value})
        if model.stop_training:
            callback.on_train_end()
            return epoch, model
    callback.on_train_end()
    return None, model


# -- EarlyStopping ----------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, values, stop", [
    (dict(patience=2), [1.0, 0.9, 0.95, 0.93, 0.92], 3),
    (dict(patience=0), [1.0, 1.1], 1),
    (dict(patience=1, min_delta=0.1), [1.0, 0.95, 0.9], 1),
    (dict(patience=3), [5, 4, 3, 2, 1], None),
    (dict(patience=2, start_from_epoch=3), [1, 2, 3, 4, 5, 6, 7], 5),
    (dict(patience=2, mode="max", baseline=0.8), [0.5, 0.4, 0.45], 1),
    (dict(patience=2, mode="max", baseline=0.8), [0.5, 0.6, 0.7, 0.75], None),
])
def test_early_stopping_schedule(kwargs, values, stop):
    epoch, _ = _drive(callbacks.EarlyStopping(**kwargs), values)
    assert epoch == stop


def test_early_stopping_auto_mode_maximizes_accuracy():
    epoch, _ = _drive(callbacks.EarlyStopping(monitor="val_accuracy", patience=1),
                      [0.5, 0.6, 0.55], key="val_accuracy")
    assert epoch == 2
    epoch, _ = _drive(callbacks.EarlyStopping(monitor="val_accuracy", patience=1, mode="min"),
                      [0.5, 0.6, 0.55], key="val_accuracy")
    assert epoch == 1


def test_early_stopping_restores_best_weights():
    cb = callbacks.EarlyStopping(patience=2, restore_best_weights=True)
    epoch, model = _drive(cb, [1.0, 0.5, 0.7, 0.8])
    assert epoch == 3 and cb.best_epoch == 1 and cb.stopped_epoch == 3
    np.testing.assert_array_equal(model.weights[0], [1.0, 1.0])


def test_early_stopping_warns_on_missing_monitor():
    cb = callbacks.EarlyStopping(monitor="val_nope")
    cb.set_model(_FakeModel())
    with pytest.warns(RuntimeWarning, match="val_nope"):
        cb.on_epoch_end(0, {"loss": 1.0})


@pytest.mark.parametrize("kwargs", [dict(patience=-1), dict(mode="up"), dict(min_delta="x"),
                                    dict(start_from_epoch=1.5), dict(baseline=float("nan"))])
def test_early_stopping_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        callbacks.EarlyStopping(**kwargs)


def test_early_stopping_in_fit_restores_the_best_epoch():
    x, y = _blobs()
    model = _classifier(lr=0.5)  # a large step: validation loss bounces
    snapshots = []
    record = cn.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: snapshots.append(model.get_weights()))
    stopper = cn.callbacks.EarlyStopping(patience=2, restore_best_weights=True)
    history = model.fit(x, y, epochs=40, batch_size=16, validation_split=0.25, verbose=0,
                        callbacks=[record, stopper])
    val = history.history["val_loss"]
    best = int(np.argmin(val))
    assert stopper.best_epoch == best
    assert len(val) == stopper.stopped_epoch + 1 if stopper.stopped_epoch else len(val) == 40
    for w, saved in zip(model.get_weights(), snapshots[best]):
        np.testing.assert_array_equal(w, saved)


# -- ModelCheckpoint --------------------------------------------------------------------------
def test_checkpoint_every_epoch_with_formatted_names(tmp_path):
    x, y = _blobs()
    model = _classifier()
    pattern = str(tmp_path / "ckpt" / "m-{epoch:02d}-{val_loss:.3f}.cyn")
    history = model.fit(x, y, epochs=3, batch_size=32, validation_split=0.25, verbose=0,
                        callbacks=[cn.callbacks.ModelCheckpoint(pattern)])
    names = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    expected = sorted(f"m-{e + 1:02d}-{v:.3f}.cyn" for e, v in enumerate(history.history["val_loss"]))
    assert names == expected
    last = cn.load_model(tmp_path / "ckpt" / next(n for n in names if n.startswith("m-03")))
    np.testing.assert_array_equal(last.predict(x), model.predict(x))


def test_checkpoint_save_best_only_and_weights_only(tmp_path):
    model = _classifier()
    path = tmp_path / "best.cyn"
    cb = cn.callbacks.ModelCheckpoint(path, monitor="val_loss", save_best_only=True,
                                      save_weights_only=True)
    cb.set_model(model)
    cb.on_train_begin()
    for epoch, value in enumerate([1.0, 0.8, 0.9, 0.7, 0.75]):
        model.layers[0].kernel[...] = epoch
        cb.on_epoch_end(epoch, {"val_loss": value})
        probe = _classifier()
        probe.load_weights(path)
        assert probe.layers[0].kernel[0, 0] == max(e for e in (0, 1, 3) if e <= epoch)
    assert cb.best == 0.7
    with pytest.raises(ValueError, match="only weights"):
        cn.load_model(path)


def test_checkpoint_batch_frequency_and_bad_pattern(tmp_path):
    x, y = _blobs()
    model = _classifier()
    pattern = str(tmp_path / "b-{epoch}-{batch}.cyn")
    model.fit(x, y, epochs=2, batch_size=32, verbose=0,
              callbacks=[cn.callbacks.ModelCheckpoint(pattern, save_freq=2)])
    # 3 batches per epoch, 6 in all: saved after global batches 2, 4, 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b-1-2.cyn", "b-2-1.cyn", "b-2-3.cyn"]
    with pytest.raises(ValueError, match="cannot be formatted"):
        model.fit(x, y, epochs=1, verbose=0,
                  callbacks=[cn.callbacks.ModelCheckpoint(str(tmp_path / "{nope}.cyn"))])
    with pytest.raises(ValueError, match="save_freq"):
        cn.callbacks.ModelCheckpoint("x.cyn", save_freq=0)


def test_checkpoint_warns_when_monitor_missing(tmp_path):
    model = _classifier()
    x, y = _blobs()
    with pytest.warns(RuntimeWarning, match="val_loss"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[
            cn.callbacks.ModelCheckpoint(tmp_path / "m.cyn", save_best_only=True)])
    assert not (tmp_path / "m.cyn").exists()


# -- LearningRateScheduler --------------------------------------------------------------------
def test_learning_rate_scheduler_two_and_one_argument():
    x, y = _blobs()
    model = _classifier(lr=0.1)
    history = model.fit(x, y, epochs=4, verbose=0, callbacks=[
        cn.callbacks.LearningRateScheduler(lambda epoch, lr: lr * 0.5)])
    np.testing.assert_allclose(history.history["learning_rate"], [0.05, 0.025, 0.0125, 0.00625])
    history = model.fit(x, y, epochs=3, verbose=0, callbacks=[
        cn.callbacks.LearningRateScheduler(lambda epoch: 0.01 * (epoch + 1))])
    np.testing.assert_allclose(history.history["learning_rate"], [0.01, 0.02, 0.03])
    assert model.optimizer.learning_rate == pytest.approx(0.03)


def test_learning_rate_scheduler_steps_use_the_rate():
    """The rate set at epoch begin is the one the SGD steps of that epoch use."""
    x, y = _blobs(n=8)
    a, b = _classifier(lr=0.3), _classifier(lr=0.3)
    a.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0,
          callbacks=[cn.callbacks.LearningRateScheduler(lambda e: 0.02)])
    b.compile(optimizer=cn.optimizers.SGD(0.02, momentum=0.9),
              loss="sparse_categorical_crossentropy")
    b.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    for u, v in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("bad", [lambda e: -1.0, lambda e: float("nan"), lambda e: "0.1"])
def test_learning_rate_scheduler_bad_schedule(bad):
    x, y = _blobs()
    with pytest.raises(ValueError, match="positive finite"):
        _classifier().fit(x, y, epochs=1, verbose=0,
                          callbacks=[cn.callbacks.LearningRateScheduler(bad)])
    with pytest.raises(TypeError):
        cn.callbacks.LearningRateScheduler(0.1)


# -- CSVLogger, TerminateOnNaN, LambdaCallback --------------------------------------------------
def test_csv_logger_writes_and_appends(tmp_path):
    x, y = _blobs()
    path = tmp_path / "log.csv"
    model = _classifier()
    history = model.fit(x, y, epochs=3, verbose=0, validation_split=0.25,
                        callbacks=[cn.callbacks.CSVLogger(path)])
    rows = list(csv.reader(path.open()))
    assert rows[0] == ["epoch", "accuracy", "loss", "val_accuracy", "val_loss"]
    assert [int(r[0]) for r in rows[1:]] == [0, 1, 2]
    np.testing.assert_allclose([float(r[2]) for r in rows[1:]], history.history["loss"])
    model.fit(x, y, epochs=2, verbose=0, validation_split=0.25,
              callbacks=[cn.callbacks.CSVLogger(path, append=True)])
    rows = list(csv.reader(path.open()))
    assert len(rows) == 6 and rows[0][0] == "epoch" and rows[4][0] == "0"
    model.fit(x, y, epochs=1, verbose=0, callbacks=[cn.callbacks.CSVLogger(path, separator=";")])
    assert path.read_text().splitlines()[0] == "epoch;accuracy;loss"


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")
def test_terminate_on_nan_stops_within_the_epoch(capsys):
    x, y = _blobs()
    model = cn.Sequential([layers.Dense(4), layers.Dense(1)])
    model.compile(optimizer=cn.optimizers.SGD(1e12), loss="mse")
    batches = []
    history = model.fit(x * 1e3, y.astype(np.float32), epochs=5, batch_size=8, verbose=0,
                        callbacks=[cn.callbacks.TerminateOnNaN(),
                                   cn.callbacks.LambdaCallback(
                                       on_batch_end=lambda b, logs: batches.append(logs["loss"]))])
    assert len(history.epoch) == 1
    assert len(batches) < len(x) // 8
    assert not math.isfinite(batches[-1]) and all(math.isfinite(v) for v in batches[:-1])
    assert "invalid loss" in capsys.readouterr().out


def test_lambda_callback_hooks_in_order():
    x, y = _blobs(n=20)
    events = []
    cb = cn.callbacks.LambdaCallback(
        on_train_begin=lambda logs: events.append("train_begin"),
        on_epoch_begin=lambda e, logs: events.append(f"epoch_begin {e}"),
        on_batch_begin=lambda b, logs: events.append(f"batch_begin {b}"),
        on_train_batch_end=lambda b, logs: events.append(f"batch_end {b}"),
        on_epoch_end=lambda e, logs: events.append(f"epoch_end {e} {sorted(logs)}"),
        on_train_end=lambda logs: events.append("train_end"))
    _classifier().fit(x, y, epochs=2, batch_size=10, verbose=0, callbacks=[cb])
    epoch = ["batch_begin 0", "batch_end 0", "batch_begin 1", "batch_end 1"]
    assert events == (["train_begin", "epoch_begin 0"] + epoch
                      + ["epoch_end 0 ['accuracy', 'loss']", "epoch_begin 1"] + epoch
                      + ["epoch_end 1 ['accuracy', 'loss']", "train_end"])
    with pytest.raises(TypeError):
        cn.callbacks.LambdaCallback(on_epoch_end=3)


def test_stop_training_from_a_batch_hook_ends_fit_after_that_batch():
    x, y = _blobs()
    model = _classifier()
    seen = []

    def hook(batch, logs):
        seen.append(batch)
        if batch == 1:
            model.stop_training = True

    history = model.fit(x, y, epochs=3, batch_size=16, verbose=0, validation_split=0.25,
                        callbacks=[cn.callbacks.LambdaCallback(on_train_batch_end=hook)])
    assert seen == [0, 1]
    assert history.epoch == [0] and "val_loss" in history.history


# -- History ---------------------------------------------------------------------------------
def test_history_is_returned_and_set_on_the_model():
    x, y = _blobs()
    model = _classifier()
    history = model.fit(x, y, epochs=2, verbose=0)
    assert model.history is history and history.model is model
    assert history.params == {"epochs": 2, "steps": 3, "verbose": 0}
    assert history.epoch == [0, 1] and set(history.history) == {"loss", "accuracy"}


def test_history_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    x, y = _blobs()
    history = _classifier().fit(x, y, epochs=3, verbose=0, validation_split=0.25)
    path = history.plot(tmp_path / "curves.png")
    data = (tmp_path / "curves.png").read_bytes()
    assert path == tmp_path / "curves.png" and data[:8] == b"\x89PNG\r\n\x1a\n"
    history.plot(tmp_path / "loss.png", keys="loss")
    assert (tmp_path / "loss.png").stat().st_size > 0
    with pytest.raises(ValueError, match="not in the history"):
        history.plot(tmp_path / "x.png", keys=["nope"])
    with pytest.raises(ValueError, match="no epochs"):
        cn.History().plot(tmp_path / "empty.png")


def test_history_plot_without_matplotlib(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    history = cn.History()
    history.record(0, {"loss": 1.0})
    with pytest.raises(ImportError, match="matplotlib"):
        history.plot(tmp_path / "x.png")


# -- progress ----------------------------------------------------------------------------------
class _FakeTqdm:
    """Records how fit drives a tqdm bar."""
    bars = []

    def __init__(self, total, desc, unit, file, leave, mininterval):
        self.total, self.desc, self.file = total, desc, file
        self.n, self.postfix, self.closed = 0, None, False
        _FakeTqdm.bars.append(self)

    def set_postfix_str(self, text, refresh=True):
        self.postfix = text

    def update(self, n):
        self.n += n

    def close(self):
        self.closed = True


def test_verbose_1_uses_tqdm_when_installed(monkeypatch):
    _FakeTqdm.bars = []
    monkeypatch.setattr(callbacks, "_load_tqdm", lambda: _FakeTqdm)
    x, y = _blobs()
    _classifier().fit(x, y, epochs=2, batch_size=32, verbose=1, validation_split=0.25)
    assert [b.desc for b in _FakeTqdm.bars] == ["Epoch 1/2", "Epoch 2/2"]
    for bar in _FakeTqdm.bars:
        assert bar.total == 3 and bar.n == 3 and bar.closed
        assert "loss:" in bar.postfix and "accuracy:" in bar.postfix and "val_loss:" in bar.postfix


def test_plain_progress_bar_without_tqdm(monkeypatch, capsys):
    monkeypatch.setattr(callbacks, "_load_tqdm", lambda: None)
    x, y = _blobs()
    _classifier().fit(x, y, epochs=1, batch_size=8, verbose=1)
    out = capsys.readouterr().out
    assert "Epoch 1/1" in out and "12/12 [" in out and "loss:" in out and "accuracy:" in out


def test_plain_bar_shows_eta_while_running():
    stream = io.StringIO()
    bar = callbacks.ProgressPrinter(1, epochs=1, steps=4, stream=stream)
    bar.epoch_begin(0)
    bar.batch_end(0, {"loss": 0.5, "accuracy": 0.25})
    assert "1/4 [" in stream.getvalue() and "ETA" in stream.getvalue()
    assert "loss: 0.5000 - accuracy: 0.2500" in stream.getvalue()


def test_real_tqdm_output(capsys):
    pytest.importorskip("tqdm")
    x, y = _blobs()
    _classifier().fit(x, y, epochs=2, batch_size=32, verbose=1)
    out = capsys.readouterr()
    text = out.out + out.err
    assert "Epoch 1/2" in text and "Epoch 2/2" in text and "loss:" in text and "3/3" in text


def test_verbose_2_and_0(capsys):
    x, y = _blobs()
    _classifier().fit(x, y, epochs=2, verbose=2)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln]
    assert len(lines) == 2 and lines[1].startswith("Epoch 2/2")
    _classifier().fit(x, y, epochs=2, verbose=0)
    assert capsys.readouterr().out == ""
