"""Sequential end to end: learning (XOR, digits, regression), dtypes, History, verbosity,
one-step APIs, weights, summary, predict batching and reproducibility."""
import re

import numpy as np
import pytest

import cyneuron as cn
from cyneuron import layers

XOR_X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float64)
XOR_Y = np.array([0, 1, 1, 0])


def _small_classifier(seed=0, dtype="float32", n_classes=3, metrics=("accuracy",)):
    cn.set_seed(seed)
    model = cn.Sequential([layers.Dense(8, activation="tanh"),
                           layers.Dense(n_classes, activation="softmax")], dtype=dtype)
    model.compile(optimizer=cn.optimizers.SGD(0.1, momentum=0.9),
                  loss="sparse_categorical_crossentropy", metrics=list(metrics))
    return model


def _blobs(n=60, d=4, n_classes=3, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    centers = rng.normal(scale=3.0, size=(n_classes, d))
    x = centers[y] + rng.normal(size=(n, d))
    return x, y


def _numpy_forward(weights, acts, x):
    h = x
    for kernel, bias, act in zip(weights[::2], weights[1::2], acts):
        z = h @ kernel + bias
        if act == "tanh":
            h = np.tanh(z)
        elif act == "relu":
            h = np.maximum(z, 0)
        elif act == "sigmoid":
            h = 1 / (1 + np.exp(-z))
        elif act == "softmax":
            e = np.exp(z - z.max(axis=1, keepdims=True))
            h = e / e.sum(axis=1, keepdims=True)
        else:
            h = z
    return h


# ---------------------------------------------------------------------------------------
# learning
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_xor_mse_sigmoid(seed):
    cn.set_seed(seed)
    model = cn.Sequential([layers.Dense(4, activation="tanh"), layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer=cn.optimizers.SGD(0.5, momentum=0.9), loss="mean_squared_error",
                  metrics=["accuracy"])
    history = model.fit(XOR_X, XOR_Y.astype(float), epochs=500, batch_size=4, verbose=0)
    pred = model.predict(XOR_X)
    assert pred.shape == (4, 1)
    np.testing.assert_array_equal((pred[:, 0] > 0.5).astype(int), XOR_Y)
    assert history.history["loss"][-1] < 0.01
    assert history.history["accuracy"][-1] == 1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_xor_softmax_two_outputs(seed):
    cn.set_seed(seed)
    model = cn.Sequential([layers.Dense(4, activation="tanh"), layers.Dense(2, activation="softmax")])
    model.compile(optimizer=cn.optimizers.SGD(0.1, momentum=0.9),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(XOR_X, XOR_Y, epochs=500, batch_size=4, verbose=0)
    pred = model.predict(XOR_X)
    np.testing.assert_allclose(pred.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(pred.argmax(axis=1), XOR_Y)
    assert model.evaluate(XOR_X, XOR_Y)["accuracy"] == 1.0


@pytest.fixture(scope="module")
def digits():
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = x / 16.0
    return train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)


def _digits_model(loss):
    cn.set_seed(0)
    model = cn.Sequential([
        layers.Dense(128, activation="relu"),
        layers.Dense(64, activation="relu"),
        layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer=cn.optimizers.SGD(0.05, momentum=0.9), loss=loss, metrics=["accuracy"])
    return model


def test_digits_sparse_categorical(digits):
    x_tr, x_te, y_tr, y_te = digits
    model = _digits_model("sparse_categorical_crossentropy")
    history = model.fit(x_tr, y_tr, epochs=30, batch_size=32, verbose=0)
    assert len(history.history["loss"]) == 30
    assert history.history["loss"][-1] < history.history["loss"][0]
    result = model.evaluate(x_te, y_te)
    assert set(result) == {"loss", "accuracy"}
    assert result["accuracy"] >= 0.96
    pred = model.predict(x_te)
    assert pred.shape == (len(x_te), 10) and pred.dtype == np.float32
    np.testing.assert_allclose(pred.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.mean(pred.argmax(axis=1) == y_te), result["accuracy"])


def test_digits_categorical_one_hot(digits):
    x_tr, x_te, y_tr, y_te = digits
    model = _digits_model("categorical_crossentropy")
    model.fit(x_tr, np.eye(10)[y_tr], epochs=30, batch_size=32, verbose=0)
    result = model.evaluate(x_te, np.eye(10)[y_te])
    assert result["accuracy"] >= 0.96
    assert np.mean(model.predict(x_te).argmax(axis=1) == y_te) >= 0.96


def test_linear_regression_reaches_low_loss():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    w_true = np.array([[1.5], [-2.0], [0.5]])
    y = x @ w_true + 0.3 + 0.01 * rng.normal(size=(200, 1))
    cn.set_seed(0)
    model = cn.Sequential([layers.Dense(1)])
    model.compile(optimizer=cn.optimizers.SGD(0.05, momentum=0.5), loss="mse")
    history = model.fit(x, y, epochs=60, batch_size=20, verbose=0)
    assert history.history["loss"][-1] < 1e-3
    assert model.evaluate(x, y)["loss"] < 1e-3
    kernel, bias = model.get_weights()
    np.testing.assert_allclose(kernel, w_true, atol=0.02)
    np.testing.assert_allclose(bias, [0.3], atol=0.02)
    # 1-D targets are accepted for a single-output regression
    assert model.evaluate(x, y[:, 0])["loss"] < 1e-3


def test_mlp_regression_nonlinear():
    rng = np.random.default_rng(1)
    x = rng.uniform(-2, 2, size=(256, 2))
    y = np.stack([np.sin(x[:, 0]) + 0.5 * x[:, 1], x[:, 0] * x[:, 1] / 2], axis=1)
    cn.set_seed(3)
    model = cn.Sequential([layers.Dense(32, activation="tanh"), layers.Dense(2)])
    model.compile(optimizer=cn.optimizers.SGD(0.05, momentum=0.9), loss="mean_squared_error")
    start = model.evaluate(x, y)["loss"]
    model.fit(x, y, epochs=100, batch_size=32, verbose=0)
    end = model.evaluate(x, y)["loss"]
    assert end < 0.02 and end < start / 10


def test_nesterov_momentum_trains():
    x, y = _blobs()
    cn.set_seed(0)
    model = cn.Sequential([layers.Dense(8, activation="relu"), layers.Dense(3, activation="softmax")])
    model.compile(optimizer=cn.optimizers.SGD(0.05, momentum=0.9, nesterov=True),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=40, batch_size=16, verbose=0)
    assert model.evaluate(x, y)["accuracy"] >= 0.95


def test_sgd_step_matches_formula():
    """One plain SGD step: w <- w - lr * grad, for every weight array."""
    x, y = _blobs(n=12)
    model = _small_classifier(dtype="float64")
    model.compile(optimizer=cn.optimizers.SGD(0.3), loss="sparse_categorical_crossentropy")
    model.build((4,))
    before = model.get_weights()
    _, grads = model.compute_gradients(x, y)
    grads = [g.copy() for g in grads]
    model.train_on_batch(x, y)
    for w0, g, w1 in zip(before, grads, model.get_weights()):
        np.testing.assert_allclose(w1, w0 - 0.3 * g, rtol=1e-12, atol=1e-15)


def test_sgd_momentum_two_steps_match_formula():
    """Keras momentum: v = m v - lr g; w += v (state kept across steps)."""
    x, y = _blobs(n=12)
    model = _small_classifier(dtype="float64")
    lr, mom = 0.2, 0.8
    model.compile(optimizer=cn.optimizers.SGD(lr, momentum=mom), loss="sparse_categorical_crossentropy")
    model.build((4,))
    w = model.get_weights()
    v = [np.zeros_like(a) for a in w]
    for _ in range(2):
        _, grads = model.compute_gradients(x, y)
        v = [mom * vi - lr * g for vi, g in zip(v, grads)]
        w = [wi + vi for wi, vi in zip(w, v)]
        model.train_on_batch(x, y)
    for expected, got in zip(w, model.get_weights()):
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------------------------------------
# dtypes
# ---------------------------------------------------------------------------------------
def test_float64_model():
    x, y = _blobs()
    model = _small_classifier(dtype="float64")
    assert model.dtype == np.float64
    model.fit(x, y, epochs=3, batch_size=16, verbose=0)
    assert all(w.dtype == np.float64 for w in model.get_weights())
    pred = model.predict(x)
    assert pred.dtype == np.float64
    pred32_input = model.predict(x.astype(np.float32))
    assert pred32_input.dtype == np.float64
    loss, grads = model.compute_gradients(x, y)
    assert all(g.dtype == np.float64 for g in grads)
    np.testing.assert_allclose(pred, _numpy_forward(model.get_weights(), ["tanh", "softmax"], x),
                               rtol=1e-12, atol=1e-14)


def test_float32_default():
    x, y = _blobs()
    model = _small_classifier()
    assert model.dtype == np.float32
    model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    assert all(w.dtype == np.float32 for w in model.get_weights())
    pred = model.predict(x)                       # float64 input
    assert pred.dtype == np.float32
    assert model.predict(x.astype(np.int64)).dtype == np.float32  # ints are converted
    ref = _numpy_forward([w.astype(np.float64) for w in model.get_weights()], ["tanh", "softmax"], x)
    np.testing.assert_allclose(pred, ref, rtol=1e-4, atol=1e-6)


def test_integer_and_noncontiguous_inputs_are_converted():
    x, y = _blobs(n=30)
    model = _small_classifier(dtype="float64")
    model.build((4,))
    ref = model.predict(x)
    np.testing.assert_allclose(model.predict(np.asfortranarray(x)), ref, rtol=1e-14)
    wide = np.zeros((30, 8))
    wide[:, ::2] = x
    np.testing.assert_allclose(model.predict(wide[:, ::2]), ref, rtol=1e-14)
    np.testing.assert_allclose(model.predict(x[::-1])[::-1], ref, rtol=1e-14)
    xi = np.round(x).astype(np.int32)
    np.testing.assert_allclose(model.predict(xi), model.predict(xi.astype(np.float64)), rtol=1e-14)
    # float labels holding integers are accepted for sparse CE
    l1 = model.evaluate(x, y)["loss"]
    l2 = model.evaluate(x, y.astype(np.float64))["loss"]
    l3 = model.evaluate(x, y.reshape(-1, 1))["loss"]
    assert l1 == pytest.approx(l2) == pytest.approx(l3)


# ---------------------------------------------------------------------------------------
# History, validation, verbosity
# ---------------------------------------------------------------------------------------
def test_history_contents_and_lengths():
    x, y = _blobs()
    model = _small_classifier()
    history = model.fit(x, y, epochs=5, batch_size=16, verbose=0)
    assert isinstance(history, cn.History)
    assert set(history.history) == {"loss", "accuracy"}
    assert all(len(v) == 5 for v in history.history.values())
    assert list(history.epoch) == [0, 1, 2, 3, 4]
    assert all(isinstance(v, float) and np.isfinite(v) for v in history.history["loss"])
    assert all(0.0 <= a <= 1.0 for a in history.history["accuracy"])


def test_history_without_metrics_has_only_loss():
    x, y = _blobs()
    model = _small_classifier(metrics=())
    history = model.fit(x, y, epochs=2, verbose=0)
    assert set(history.history) == {"loss"}


def test_history_single_batch_epoch_logs_loss_before_update():
    """With one batch per epoch, the epoch's loss is the loss of the weights it started with."""
    x, y = _blobs(n=20)
    model = _small_classifier(dtype="float64")
    model.build((4,))
    before = model.evaluate(x, y)
    history = model.fit(x, y, epochs=1, batch_size=64, shuffle=False, verbose=0)
    assert history.history["loss"][0] == pytest.approx(before["loss"], rel=1e-12)
    assert history.history["accuracy"][0] == pytest.approx(before["accuracy"])


def test_validation_data_keys_and_values():
    x, y = _blobs(n=60)
    xv, yv = _blobs(n=21, seed=5)
    model = _small_classifier(dtype="float64")
    history = model.fit(x, y, epochs=3, batch_size=16, validation_data=(xv, yv), verbose=0)
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(len(v) == 3 for v in history.history.values())
    final = model.evaluate(xv, yv)
    assert history.history["val_loss"][-1] == pytest.approx(final["loss"], rel=1e-12)
    assert history.history["val_accuracy"][-1] == pytest.approx(final["accuracy"])


def test_validation_split_keys_and_holdout():
    x, y = _blobs(n=50)
    model = _small_classifier(dtype="float64")
    history = model.fit(x, y, epochs=2, batch_size=50, validation_split=0.2, shuffle=False, verbose=0)
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(len(v) == 2 for v in history.history.values())
    # Keras semantics: the last 20 % of the samples are held out
    final = model.evaluate(x[-10:], y[-10:])
    assert history.history["val_loss"][-1] == pytest.approx(final["loss"], rel=1e-12)


def test_validation_split_trains_only_on_the_first_part():
    x, y = _blobs(n=40)
    m1 = _small_classifier(dtype="float64", metrics=())
    m1.compile(optimizer=cn.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    m1.build((4,))
    w0 = m1.get_weights()
    m1.fit(x, y, epochs=2, batch_size=8, validation_split=0.25, shuffle=False, verbose=0)
    m2 = _small_classifier(dtype="float64", metrics=())
    m2.compile(optimizer=cn.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    m2.build((4,))
    m2.set_weights(w0)
    m2.fit(x[:30], y[:30], epochs=2, batch_size=8, shuffle=False, verbose=0)
    for a, b in zip(m1.get_weights(), m2.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_verbose_0_prints_nothing(capsys):
    x, y = _blobs()
    _small_classifier().fit(x, y, epochs=3, batch_size=16, verbose=0)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_verbose_2_one_line_per_epoch(capsys):
    x, y = _blobs()
    _small_classifier().fit(x, y, epochs=4, batch_size=16, validation_split=0.2, verbose=2)
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert len(lines) == 4
    for i, line in enumerate(lines, 1):
        assert f"Epoch {i}/4" in line
        assert "loss" in line and "val_loss" in line and "accuracy" in line
    assert "\r" not in out


def test_verbose_1_prints_progress(capsys, monkeypatch):
    monkeypatch.setattr(cn.callbacks, "_load_tqdm", lambda: None)  # the plain bar, tqdm or not
    x, y = _blobs()
    _small_classifier().fit(x, y, epochs=2, batch_size=16, verbose=1)
    out = capsys.readouterr().out
    assert "Epoch 1/2" in out and "Epoch 2/2" in out
    steps = int(np.ceil(len(x) / 16))
    assert re.search(rf"{steps}/{steps} \[=+\]", out), out
    assert "loss" in out and "accuracy" in out


def test_evaluate_verbose_default_silent(capsys):
    x, y = _blobs()
    model = _small_classifier()
    model.fit(x, y, epochs=1, verbose=0)
    model.evaluate(x, y)
    model.predict(x)
    assert capsys.readouterr().out == ""


# ---------------------------------------------------------------------------------------
# one step, gradients, weights
# ---------------------------------------------------------------------------------------
def test_train_on_batch_changes_weights_and_returns_loss():
    x, y = _blobs(n=16)
    model = _small_classifier(metrics=())
    model.build((4,))
    before = model.get_weights()
    loss = model.train_on_batch(x, y)
    assert isinstance(loss, float) and np.isfinite(loss)
    after = model.get_weights()
    assert all(not np.array_equal(a, b) for a, b in zip(before, after))
    # repeated steps on one batch reduce its loss
    for _ in range(20):
        last = model.train_on_batch(x, y)
    assert last < loss


def test_train_on_batch_with_metrics():
    x, y = _blobs(n=16)
    model = _small_classifier()
    result = model.train_on_batch(x, y)
    assert isinstance(result, list) and len(result) == 2
    loss, acc = result
    assert isinstance(loss, float) and 0.0 <= acc <= 1.0
    logs = model.train_on_batch(x, y, return_dict=True)
    assert set(logs) == {"loss", "accuracy"}


def test_compute_gradients_updates_nothing():
    x, y = _blobs(n=16)
    model = _small_classifier(dtype="float64")
    model.build((4,))
    before = model.get_weights()
    loss1, grads1 = model.compute_gradients(x, y)
    grads1 = [g.copy() for g in grads1]
    loss2, grads2 = model.compute_gradients(x, y)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert loss1 == loss2
    for a, b in zip(grads1, grads2):
        np.testing.assert_array_equal(a, b)
    assert model.optimizer.iterations == 0
    assert loss1 == pytest.approx(model.evaluate(x, y)["loss"], rel=1e-12)


def test_get_set_weights_round_trip_and_layouts():
    model = cn.Sequential([layers.Dense(5, activation="relu"), layers.Dense(3, use_bias=False),
                           layers.Dense(2, activation="softmax")])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    x = np.random.default_rng(0).normal(size=(7, 4))
    model.predict(x)                                     # builds lazily
    weights = model.get_weights()
    assert [w.shape for w in weights] == [(4, 5), (5,), (5, 3), (3, 2), (2,)]
    assert model.count_params() == 4 * 5 + 5 + 5 * 3 + 3 * 2 + 2
    # Keras layouts: Dense kernel (in, out), bias (out,)
    assert model.layers[0].kernel.shape == (4, 5) and model.layers[0].bias.shape == (5,)
    assert model.layers[1].bias is None

    rng = np.random.default_rng(1)
    new = [rng.normal(size=w.shape).astype(np.float32) for w in weights]
    model.set_weights(new)
    got = model.get_weights()
    for a, b in zip(new, got):
        np.testing.assert_array_equal(a, b)
    # get_weights returns copies
    got[0][...] = 123.0
    assert not np.any(model.get_weights()[0] == 123.0)
    # the new weights are the ones used
    ref = _numpy_forward([new[0], new[1], new[2], np.zeros(3), new[3], new[4]],
                         ["relu", "linear", "softmax"], x)
    np.testing.assert_allclose(model.predict(x), ref, rtol=1e-4, atol=1e-6)
    # per-layer weights agree with the model's list
    assert [w.shape for lyr in model.layers for w in lyr.get_weights()] == [w.shape for w in weights]


def test_set_weights_does_not_keep_references():
    model = _small_classifier(dtype="float64")
    model.build((4,))
    new = [np.ones_like(w) for w in model.get_weights()]
    model.set_weights(new)
    new[0][...] = 5.0
    assert np.all(model.get_weights()[0] == 1.0)


def test_summary_prints_layers_and_total(capsys):
    model = cn.Sequential([layers.Dense(128, activation="relu", name="hidden_a"),
                           layers.Dense(64, activation="relu", name="hidden_b"),
                           layers.Dense(10, activation="softmax", name="probs")], name="digits_net")
    model.build((64,))
    model.summary()
    out = capsys.readouterr().out
    for name in ("hidden_a", "hidden_b", "probs", "Dense", "digits_net"):
        assert name in out
    total = 64 * 128 + 128 + 128 * 64 + 64 + 64 * 10 + 10
    assert f"{total:,}" in out
    assert "Total params" in out
    for count in ("8320", "8256", "650"):
        assert count in out
    assert "(None, 128)" in out and "(None, 10)" in out


def test_summary_default_names_are_unique(capsys):
    model = cn.Sequential([layers.Dense(3), layers.Dense(2)])
    model.build((4,))
    lines = []
    model.summary(print_fn=lines.append)
    names = [lyr.name for lyr in model.layers]
    assert len(set(names)) == 2
    assert all(any(n in ln for ln in lines) for n in names)
    assert any("Total params: 23" in ln for ln in lines)


def test_summary_before_build(capsys):
    model = cn.Sequential([layers.Dense(3)])
    model.summary()
    assert "Total params" in capsys.readouterr().out


@pytest.mark.parametrize("batch_size", [1, 3, 7, 16, 100])
def test_predict_batch_sizes_not_dividing_n(batch_size):
    x, y = _blobs(n=37)
    model = _small_classifier(dtype="float64")
    model.build((4,))
    ref = _numpy_forward(model.get_weights(), ["tanh", "softmax"], x)
    pred = model.predict(x, batch_size=batch_size)
    assert pred.shape == (37, 3)
    np.testing.assert_allclose(pred, ref, rtol=1e-12, atol=1e-14)
    # evaluate in uneven batches gives the full-batch loss
    full = model.evaluate(x, y, batch_size=37)["loss"]
    assert model.evaluate(x, y, batch_size=batch_size)["loss"] == pytest.approx(full, rel=1e-12)


def test_predict_returns_new_array():
    x, _ = _blobs(n=10)
    model = _small_classifier()
    p1 = model.predict(x)
    keep = p1.copy()
    model.predict(x * 2)
    np.testing.assert_array_equal(p1, keep)


def test_fit_with_uneven_last_batch_and_no_shuffle():
    x, y = _blobs(n=23)
    model = _small_classifier()
    history = model.fit(x, y, epochs=2, batch_size=5, shuffle=False, verbose=0)
    assert len(history.history["loss"]) == 2


# ---------------------------------------------------------------------------------------
# reproducibility
# ---------------------------------------------------------------------------------------
def _seeded_fit(seed):
    x, y = _blobs(n=50)
    cn.set_seed(seed)
    model = cn.Sequential([layers.Dense(16, activation="relu"), layers.Dense(3, activation="softmax")])
    model.compile(optimizer=cn.optimizers.SGD(0.05, momentum=0.9), loss="sparse_categorical_crossentropy")
    history = model.fit(x, y, epochs=5, batch_size=8, shuffle=True, verbose=0)
    return model.get_weights(), history.history["loss"]


def test_same_seed_same_weights():
    w1, h1 = _seeded_fit(123)
    w2, h2 = _seeded_fit(123)
    for a, b in zip(w1, w2):
        np.testing.assert_array_equal(a, b)
    assert h1 == h2


def test_different_seed_different_weights():
    w1, _ = _seeded_fit(123)
    w2, _ = _seeded_fit(124)
    assert not np.array_equal(w1[0], w2[0])


def test_same_seed_same_initial_weights():
    cn.set_seed(9)
    a = cn.Sequential([layers.Dense(6), layers.Dense(2)])
    a.build((3,))
    cn.set_seed(9)
    b = cn.Sequential([layers.Dense(6), layers.Dense(2)])
    b.build((3,))
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    # Glorot uniform kernels, zero biases
    limit = np.sqrt(6 / (3 + 6))
    assert np.abs(a.get_weights()[0]).max() <= limit
    assert np.all(a.get_weights()[1] == 0)


def test_fit_with_noncontiguous_inputs_matches_contiguous():
    x, y = _blobs(n=24)
    onehot = np.eye(3)[y]

    def train(xx, yy):
        cn.set_seed(5)
        model = cn.Sequential([layers.Dense(6, activation="tanh"), layers.Dense(3, activation="softmax")],
                              dtype="float64")
        model.compile(optimizer=cn.optimizers.SGD(0.1), loss="categorical_crossentropy")
        model.fit(xx, yy, epochs=2, batch_size=8, verbose=0)
        return model.get_weights()

    ref = train(x, onehot)
    wide = np.zeros((48, 8))
    wide[::2, ::2] = x
    got = train(wide[::2, ::2], np.asfortranarray(onehot))
    for a, b in zip(ref, got):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)


def test_predict_takes_keras_verbose(capsys):
    """predict(x, verbose=0) as Keras code writes it: quiet; verbose=1 prints one line."""
    x, _ = _blobs(n=10)
    model = _small_classifier()
    quiet = model.predict(x, verbose=0)
    assert capsys.readouterr().out == ""
    np.testing.assert_array_equal(model.predict(x, verbose="auto"), quiet)
    np.testing.assert_array_equal(model.predict(x, verbose=1), quiet)
    assert "10/10 samples" in capsys.readouterr().out
    with pytest.raises(ValueError, match="verbose"):
        model.predict(x, verbose=3)
