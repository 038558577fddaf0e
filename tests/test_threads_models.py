"""Models used from several Python threads, and interrupted training.

Inference (predict / evaluate / model(x)) from 8 threads at once equals the serial result
bit for bit; fit in one thread while others predict never corrupts the trainer and every
prediction comes from one consistent set of weights; a second training thread is refused
with a clear RuntimeError; Ctrl-C (KeyboardInterrupt, SIGINT) stops fit after the current
step with the model consistent and saveable. The checks are made deterministic with events
(a training thread paused inside a callback) rather than timing."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import cyneuron as cn
from cyneuron import layers, models

N_THREADS = 8
WAIT = 60        # seconds: only reached when something hangs


def _sequential(dtype, seed=0):
    cn.set_seed(seed)
    model = cn.Sequential([layers.Dense(32, activation="relu"), layers.Dropout(0.3),
                           layers.Dense(16, activation="tanh"),
                           layers.Dense(4, activation="softmax")], dtype=dtype)
    model.compile("sgd", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.build((12,))
    return model


def _functional(dtype, seed=0):
    """Fan-out and fan-in, a shared layer, BatchNormalization and two outputs."""
    cn.set_seed(seed)
    inp = cn.Input((12,), dtype=dtype)
    h = layers.Dense(32, activation="relu")(inp)
    shared = layers.Dense(32, activation="tanh")
    a = shared(h)
    b = shared(layers.Dense(32)(h))
    j = layers.BatchNormalization()(layers.Add()([a, b, h]))
    cls = layers.Dense(4, activation="softmax", name="cls")(layers.Dropout(0.2)(j))
    reg = layers.Dense(1, name="reg")(h)
    model = cn.Model(inp, {"cls": cls, "reg": reg})
    model.compile("adam", loss={"cls": "sparse_categorical_crossentropy", "reg": "mse"},
                  metrics={"cls": ["accuracy"]})
    return model


def _data(dtype, n, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 12)).astype(dtype)
    return x, rng.integers(0, 4, n), rng.standard_normal((n, 1)).astype(dtype)


def _targets(model, y, r):
    return {"cls": y, "reg": r} if isinstance(model.output_names, list) and \
        "reg" in model.output_names else y


def _run_threads(fns):
    """Start every fn in its own thread at the same moment; return their results (an
    exception in a thread is re-raised here)."""
    barrier = threading.Barrier(len(fns))
    results, errors = [None] * len(fns), []

    def run(i):
        try:
            barrier.wait(WAIT)
            results[i] = fns[i]()
        except BaseException as exc:        # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
        assert not t.is_alive(), "a thread hung"
    if errors:
        raise errors[0]
    return results


def _assert_same(a, b):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_same(a[k], b[k])
    else:
        np.testing.assert_array_equal(a, b)


# -- inference from many threads ------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("make", [_sequential, _functional], ids=["sequential", "functional"])
@pytest.mark.parametrize("method", ["predict", "evaluate", "call"])
def test_eight_threads_give_the_serial_results(dtype, make, method):
    model = make(dtype)
    model.fit(*_fit_args(model, dtype), epochs=1, batch_size=32, verbose=0)   # non-trivial BN
    # different inputs and batch sizes per thread: buffers of every size are in use at once
    batches = [_data(dtype, 200 + 37 * i, 100 + i) for i in range(N_THREADS)]

    def run(i):
        x, y, r = batches[i]
        if method == "predict":
            return model.predict(x, batch_size=16 + 8 * i)
        if method == "evaluate":
            return model.evaluate(x, _targets(model, y, r), batch_size=16 + 8 * i)
        return model(x)

    expected = [run(i) for i in range(N_THREADS)]
    for _ in range(3):
        got = _run_threads([lambda i=i: [run(i) for _ in range(4)] for i in range(N_THREADS)])
        for e, g in zip(expected, got):
            for one in g:
                _assert_same(e, one)
    assert len(model._pool) <= models.MAX_IDLE_REPLICAS


def _fit_args(model, dtype, n=96, seed=1):
    x, y, r = _data(dtype, n, seed)
    return x, _targets(model, y, r)


def test_first_calls_from_many_threads_build_an_unbuilt_model_once():
    cn.set_seed(0)
    model = cn.Sequential([layers.Dense(8, activation="relu"), layers.Dense(3)])
    x = _data("float32", 50, 0)[0]
    got = _run_threads([lambda: model.predict(x)] * N_THREADS)
    for g in got[1:]:
        np.testing.assert_array_equal(got[0], g)
    np.testing.assert_array_equal(got[0], model.predict(x))
    assert len(model.get_weights()) == 4


@pytest.mark.parametrize("method", ["predict", "evaluate", "call"])
def test_a_busy_model_runs_the_caller_on_a_pooled_replica(method):
    """While the model's own state is in use (held here), a call from another thread runs on
    a replica with the same weights, kept for reuse; compile makes new ones."""
    model = _functional("float32")
    x, y, r = _data("float32", 30, 3)
    t = {"cls": y, "reg": r}
    call = {"predict": lambda: model.predict(x), "evaluate": lambda: model.evaluate(x, t),
            "call": lambda: model(x)}[method]
    expected = call()
    assert model._pool == []          # unshared use never makes a replica
    with model._own:
        first = _run_threads([call])[0]
        replica = model._pool[0]
        second = _run_threads([call])[0]
        assert model._pool == [replica]
        model.compile("sgd", loss={"cls": "sparse_categorical_crossentropy", "reg": "mse"},
                      metrics={"cls": ["accuracy"]})
        third = _run_threads([call])[0]
        assert model._pool[0] is not replica
    for g in (first, second):
        _assert_same(expected, g)
    if method == "evaluate":        # the same losses and metrics, compiled again
        assert third.keys() == expected.keys()
    else:
        _assert_same(expected, third)


# -- training and inference at once ----------------------------------------------------------
def _train_model(stateful, seed=5):
    cn.set_seed(seed)
    stack = [layers.Dense(24, activation="relu")]
    if stateful:
        stack.append(layers.BatchNormalization())
    stack += [layers.Dense(12, activation="tanh"), layers.Dense(3)]
    model = cn.Sequential(stack, dtype="float64")
    model.compile(cn.optimizers.Adam(1e-2), "mse")
    model.build((6,))
    return model


@pytest.mark.parametrize("stateful", [False, True], ids=["dense", "batchnorm"])
def test_fit_in_one_thread_predict_in_others(stateful, restore_threads):
    """The trainer never fails and ends with the weights of a run without readers; every
    prediction and every get_weights() taken meanwhile is one of the weight sets the
    trainer went through (recorded after each step)."""
    cn.set_num_threads(1)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((256, 6))
    y = rng.standard_normal((256, 3))
    probe = rng.standard_normal((64, 6))

    alone = _train_model(stateful)
    alone.fit(x, y, epochs=4, batch_size=16, verbose=0, shuffle=False)

    model = _train_model(stateful)
    snapshots = [model.get_weights()]
    record = cn.callbacks.LambdaCallback(
        on_train_batch_end=lambda b, logs: snapshots.append(model.get_weights()))
    done = threading.Event()
    seen_predictions, seen_weights = [], []

    def train():
        try:
            return model.fit(x, y, epochs=4, batch_size=16, verbose=0, shuffle=False,
                             callbacks=[record])
        finally:
            done.set()

    def read(k):
        def loop():
            while not done.is_set() or len(seen_predictions) < 2:
                seen_predictions.append(model.predict(probe, batch_size=32 if k else 64))
                if k == 0:
                    seen_weights.append(model.get_weights())
        return loop

    history = _run_threads([train, read(0), read(1)])[0]
    assert len(history.history["loss"]) == 4
    for a, b in zip(model.get_weights(), alone.get_weights()):
        np.testing.assert_array_equal(a, b)

    reference = _train_model(stateful)
    outputs = {}
    for w in snapshots:
        reference.set_weights(w)
        outputs[reference.predict(probe).tobytes()] = True
    weight_sets = {b"".join(a.tobytes() for a in w) for w in snapshots}
    assert len(outputs) == len(snapshots)           # every step changed the outputs
    assert all(p.tobytes() in outputs for p in seen_predictions)
    assert all(b"".join(a.tobytes() for a in w) in weight_sets for w in seen_weights)


def _paused_fit(model, x, y):
    """Start fit in a thread that pauses in its first on_train_batch_end; returns
    (inside, resume, thread, box): box gets the History or the exception."""
    inside, resume, box = threading.Event(), threading.Event(), {}

    def pause(batch, logs):
        if batch == 0 and not inside.is_set():
            inside.set()
            assert resume.wait(WAIT)

    def run():
        try:
            box["history"] = model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[
                cn.callbacks.LambdaCallback(on_train_batch_end=pause)])
        except BaseException as exc:     # noqa: BLE001 - checked by the test
            box["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    assert inside.wait(WAIT)
    return resume, thread, box


def test_a_second_training_thread_is_refused_clearly():
    model = _train_model(stateful=True)
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((64, 6)), rng.standard_normal((64, 3))
    resume, thread, box = _paused_fit(model, x, y)
    try:
        for call in (lambda: model.fit(x, y, verbose=0), lambda: model.train_on_batch(x, y),
                     lambda: model.compute_gradients(x, y)):
            with pytest.raises(RuntimeError, match="already being trained in another thread"):
                call()
        for call in (lambda: model.set_weights(model.get_weights()),
                     lambda: model(x, training=True),
                     lambda: model.optimizer.apply_gradients(model)):
            with pytest.raises(RuntimeError, match="being trained .* in another thread"):
                call()
        # inference meanwhile: the weights of the paused step, on a replica
        frozen = model.get_weights()
        got = model.predict(x)
        twin = _train_model(stateful=True)
        twin.set_weights(frozen)
        np.testing.assert_array_equal(got, twin.predict(x))
    finally:
        resume.set()
        thread.join(WAIT)
    assert "error" not in box, box.get("error")
    assert box["history"].epoch == [0, 1]
    # free again: this thread may train now
    model.fit(x, y, epochs=1, verbose=0)
    assert model._trainer is None


def test_custom_loop_state_survives_predictions_from_another_thread():
    """model(x, training=True) keeps its pass for backward: predictions in other threads
    run on replicas meanwhile and the gradients equal compute_gradients'."""
    model = _train_model(stateful=False)
    rng = np.random.default_rng(4)
    x, y, other = (rng.standard_normal((32, 6)), rng.standard_normal((32, 3)),
                   rng.standard_normal((50, 6)))
    _, expected = model.compute_gradients(x, y)
    out = model(x, training=True)
    _run_threads([lambda: model.predict(other)] * 4)
    _, dy = model.compute_loss(y=y, y_pred=out)
    model.backward(dy)
    for a, b in zip(model.get_gradients(), expected):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


# -- interrupts -------------------------------------------------------------------------------
def _blobs(n=96):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, n)
    return rng.standard_normal((n, 4)).astype(np.float32) + 2.0 * y[:, None], y


def _classifier():
    cn.set_seed(3)
    model = cn.Sequential([layers.Dense(8, activation="relu"),
                           layers.Dense(3, activation="softmax")])
    model.compile(cn.optimizers.Adam(1e-2), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def _stop_at(model, epoch, batch, action):
    state = {"epoch": 0, "ends": 0}

    def begin(e, logs):
        state["epoch"] = e

    def end(b, logs):
        state["ends"] += 1
        if (state["epoch"], b) == (epoch, batch):
            action()

    return state, cn.callbacks.LambdaCallback(on_epoch_begin=begin, on_train_batch_end=end)


def _raise_interrupt():
    raise KeyboardInterrupt


def test_keyboard_interrupt_from_a_callback_leaves_a_consistent_saveable_model(tmp_path):
    x, y = _blobs()
    model = _classifier()
    state, cb = _stop_at(model, 1, 2, _raise_interrupt)
    with pytest.raises(KeyboardInterrupt):
        model.fit(x, y, epochs=5, batch_size=16, verbose=0, validation_split=0.25, callbacks=[cb])
    assert model.optimizer.iterations == state["ends"] == 5 + 3   # 5 batches per epoch
    assert model.history.epoch == [0] and "val_loss" in model.history.history
    # the same weights as a run told to stop after that step
    twin = _classifier()
    _, stop = _stop_at(twin, 1, 2, lambda: setattr(twin, "stop_training", True))
    twin.fit(x, y, epochs=5, batch_size=16, verbose=0, validation_split=0.25, callbacks=[stop])
    for a, b in zip(model.get_weights(), twin.get_weights()):
        np.testing.assert_array_equal(a, b)
    model.save(tmp_path / "m.cyn")
    loaded = cn.load_model(tmp_path / "m.cyn")
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    assert loaded.optimizer.iterations == 8
    assert model._trainer is None and model._own.acquire(False)    # released
    model._own.release()
    model.fit(x, y, epochs=1, verbose=0)                          # trains on


def test_sigint_in_fit_stops_after_the_current_step():
    """A Ctrl-C arriving during a step (here raised just before it) ends fit once that
    step is done: KeyboardInterrupt, optimizer and callbacks in step; Python's handler
    is back afterwards. A second Ctrl-C stops at once."""
    x, y = _blobs()
    # Python's own handler, as an interactive session has it (a shell that starts the
    # tests in the background leaves Ctrl-C ignored, and then fit rightly leaves it so)
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        for count, steps in ((1, 3), (2, 2)):
            model = _classifier()
            ends = []

            def begin(batch, logs, count=count):
                if batch == 2:
                    for _ in range(count):
                        signal.raise_signal(signal.SIGINT)

            cb = cn.callbacks.LambdaCallback(on_train_batch_begin=begin,
                                             on_train_batch_end=lambda b, logs: ends.append(b))
            with pytest.raises(KeyboardInterrupt):
                model.fit(x, y, epochs=3, batch_size=16, verbose=0, callbacks=[cb])
            assert model.optimizer.iterations == len(ends) == steps
            assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, inherited)


_CHILD = textwrap.dedent("""
    import json, signal, sys
    import numpy as np
    import cyneuron as cn
    from cyneuron import layers

    # Ctrl-C as an interactive session has it, even if the tests were started from a
    # shell that ignores it (a background job): an ignored SIGINT is inherited
    signal.signal(signal.SIGINT, signal.default_int_handler)

    cn.set_num_threads(1)
    cn.set_seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((512, 20)).astype(np.float32)
    y = rng.integers(0, 5, 512)
    model = cn.Sequential([layers.Dense(64, activation="relu"), layers.BatchNormalization(),
                           layers.Dense(5, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    ends = []

    def on_end(batch, logs):
        ends.append(batch)
        if len(ends) == 40:
            print("ready", flush=True)

    try:
        model.fit(x, y, epochs=100000, batch_size=16, verbose=0, validation_split=0.25,
                  callbacks=[cn.callbacks.LambdaCallback(on_train_batch_end=on_end)])
        print(json.dumps({"interrupted": False}))
    except KeyboardInterrupt:
        model.save(sys.argv[1])
        loaded = cn.load_model(sys.argv[1])
        loaded.fit(x, y, epochs=1, verbose=0)         # it trains on
        again = cn.load_model(sys.argv[1])
        print(json.dumps({
            "interrupted": True, "iterations": model.optimizer.iterations,
            "batch_ends": len(ends), "epochs": len(model.history.epoch),
            "same": bool(np.array_equal(again.predict(x), model.predict(x))),
            "finite": bool(all(np.isfinite(w).all() for w in model.get_weights())),
            "loaded_iterations": again.optimizer.iterations}), flush=True)
""")


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process is POSIX")
def test_sigint_to_a_process_running_fit(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    path = tmp_path / "interrupted.cyn"
    proc = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        line = proc.stdout.readline()
        assert line.strip() == "ready", (line, proc.stderr.read() if proc.poll() else "")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["interrupted"]
    assert report["iterations"] == report["batch_ends"] == report["loaded_iterations"] >= 40
    assert report["same"] and report["finite"]
    # 384 samples: 24 batches an epoch; a Ctrl-C in an epoch's last step ends fit before
    # that epoch's validation (so it is not in the History), one during validation after it
    full, rest = divmod(report["batch_ends"], 24)
    assert report["epochs"] == full or (rest == 0 and report["epochs"] == full - 1)


# -- callbacks on graphs ----------------------------------------------------------------------
def test_model_checkpoint_on_a_functional_model(tmp_path):
    """save_best_only follows the monitored value (max for an accuracy, as Keras's auto
    mode), save_weights_only writes weights the same graph loads; a full save loads as a
    functional model with the same outputs."""
    model = _functional("float32")
    x, y, r = _data("float32", 120, 9)
    t = {"cls": y, "reg": r}
    best = tmp_path / "best.cyn"
    weights = tmp_path / "w-{epoch}.cyn"
    history = model.fit(x, t, epochs=4, batch_size=32, verbose=0, validation_split=0.25,
                        callbacks=[
                            cn.callbacks.ModelCheckpoint(best, monitor="val_cls_accuracy",
                                                         save_best_only=True),
                            cn.callbacks.ModelCheckpoint(weights, save_weights_only=True)])
    accuracy = history.history["val_cls_accuracy"]
    loaded = cn.load_model(best)
    assert isinstance(loaded, cn.Model) and not isinstance(loaded, cn.Sequential)
    assert loaded.output_names == model.output_names
    twin = _functional("float32", seed=1)
    twin.load_weights(tmp_path / "w-4.cyn")
    _assert_same(twin.predict(x), model.predict(x))
    if int(np.argmax(accuracy)) == len(accuracy) - 1:
        _assert_same(loaded.predict(x), model.predict(x))
    with pytest.raises(ValueError, match="only weights"):
        cn.load_model(tmp_path / "w-1.cyn")


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")
def test_terminate_on_nan_on_a_functional_model(capsys):
    inp = cn.Input((4,))
    h = layers.Dense(4)(inp)
    model = cn.Model(inp, layers.Dense(1)(layers.Add()([h, layers.Dense(4)(inp)])))
    model.compile(cn.optimizers.SGD(1e12), "mse")
    x, y = _blobs()
    losses = []
    history = model.fit(x * 1e3, y.astype(np.float32), epochs=5, batch_size=8, verbose=0,
                        callbacks=[cn.callbacks.TerminateOnNaN(), cn.callbacks.LambdaCallback(
                            on_train_batch_end=lambda b, logs: losses.append(logs["loss"]))])
    assert history.epoch == [0] and len(losses) < len(x) // 8
    assert not np.isfinite(losses[-1]) and np.isfinite(losses[:-1]).all()
    assert "invalid loss" in capsys.readouterr().out


def test_set_num_threads_holds_in_every_python_thread(restore_threads):
    """OpenMP's thread count is per thread: a model run in another thread applies the last
    cn.set_num_threads, also in a worker thread that applied an earlier one."""
    from concurrent.futures import ThreadPoolExecutor

    from cyneuron._kernels import _openmp

    model = _sequential("float32")
    x = _data("float32", 20, 0)[0]
    with ThreadPoolExecutor(2) as pool:
        for n in (1, 2, 1):
            cn.set_num_threads(n)
            gate = threading.Barrier(2)      # both workers take part in every round

            def run(_):
                gate.wait(WAIT)
                model.predict(x)
                return threading.get_ident(), _openmp.get_max_threads()

            seen = list(pool.map(run, range(2)))
            assert len({ident for ident, _ in seen}) == 2
            assert [count for _, count in seen] == [n, n]
