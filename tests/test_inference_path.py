"""The inference fast paths of issue 20: the one-sample LSTM loop (lstm_forward_one) and
predict's lean path (cyneuron._inference), against numpy references and against the
general paths, on every SIMD path, at 1 and 2 threads, and from several threads at once."""
import copy
import pickle
import threading

import numpy as np
import pytest

import cyneuron as cn
from cyneuron import _config, _inference, layers
from cyneuron._kernels import gemm as _gemm
from cyneuron._kernels import conv as _conv_k
from cyneuron._kernels import pooling as P
from cyneuron._kernels import recurrent as K

from test_recurrent import _padding_mask, reference_run


# -- the one-sample LSTM loop ---------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_one_sample_lstm_matches_reference_and_training_run(isa, kernel_threads, dtype):
    """One sample outside training takes lstm_forward_one: outputs and states equal a
    training run's (the batched loop) and the float64 reference, with default and other
    activations, no bias, a mask, an initial state, go_backwards, return_sequences and
    61 units (not a multiple of any vector width); saturated pre-activations."""
    rng = np.random.default_rng(120)
    units, t, f = 61, 7, 11
    x = rng.normal(scale=2.0, size=(1, t, f)).astype(dtype)
    mask = np.array([[True, False, True, True, True, False, True]])
    state = [rng.normal(size=(1, units)).astype(dtype) for _ in range(2)]
    tol = {"rtol": 2e-5, "atol": 2e-5} if dtype == "float32" else {"rtol": 1e-12,
                                                                    "atol": 1e-13}
    for kw in ({}, {"activation": "relu", "recurrent_activation": "hard_sigmoid"},
               {"use_bias": False}):
        for seqs, back, m, s in ((False, False, None, None), (True, True, None, state),
                                 (True, False, mask, state), (False, True, mask, None)):
            layer = layers.LSTM(units, return_sequences=seqs, go_backwards=back,
                                return_state=True, dtype=dtype, **kw)
            layer.build((t, f))
            ws = [w.copy() for w in layer.get_weights()]
            scale = 0.3 if kw.get("activation") == "relu" else 1.0   # relu: no blow-up
            ws = [rng.normal(scale=scale, size=w.shape).astype(dtype) for w in ws]
            layer.set_weights(ws)
            outs = [[o.copy() for o in layer.forward(x, training=training,
                                                     initial_state=s, mask=m)]
                    for training in (True, False)]
            names = ("activation", "recurrent_activation")
            ref, ref_states = reference_run(
                "LSTM", x.astype(np.float64), [w.astype(np.float64) for w in ws], units,
                go_backwards=back, initial_state=s, mask=m,
                use_bias=kw.get("use_bias", True), **{k: kw[k] for k in names if k in kw})
            expected = [ref if seqs else ref[:, -1]] + ref_states
            label = f"{kw} seqs={seqs} back={back} mask={m is not None} on {isa}"
            for a, b, r in zip(*outs, expected):
                np.testing.assert_allclose(b, a, **tol, err_msg=label)
                np.testing.assert_allclose(b, r, rtol=1e-4 if dtype == "float32" else 1e-10,
                                           atol=2e-5 if dtype == "float32" else 1e-11,
                                           err_msg=label)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_one_sample_lstm_splits_units_among_threads_bit_for_bit(isa, dtype, restore_threads):
    """Threads split the units in blocks of 64 (a step's products and gate math) and meet
    after each step: the same bits as one thread, on two and three threads, for unit counts
    of one block, of whole blocks and with a short last block, with a mask, go_backwards
    and other activations."""
    rng = np.random.default_rng(122)
    t, f = 9, 13
    mask = np.array([[True, False, True, True, True, False, True, True, True]])
    for units in (61, 128, 130, 200):
        for kw in ({}, {"activation": "relu", "recurrent_activation": "hard_sigmoid"}):
            for back in (False, True):
                layer = layers.LSTM(units, return_sequences=True, return_state=True,
                                    go_backwards=back, dtype=dtype, **kw)
                layer.build((t, f))
                layer.set_weights([rng.normal(scale=0.3, size=w.shape).astype(dtype)
                                   for w in layer.get_weights()])
                x = rng.normal(size=(1, t, f)).astype(dtype)
                runs = []
                for threads in (1, 3, 2):
                    cn.set_num_threads(threads)
                    K._set_one_parallel_min_macs_for_tests(0 if threads > 1 else -1)
                    try:
                        runs.append([o.copy() for o in layer.forward(x, training=False,
                                                                     mask=mask)])
                    finally:
                        K._set_one_parallel_min_macs_for_tests(-1)
                for other in runs[1:]:
                    for a, b in zip(runs[0], other):
                        np.testing.assert_array_equal(a, b, err_msg=f"{units} {kw} {back}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lstm_forward_one_reads_strided_weights_and_checks_buffers(isa, dtype):
    """The kernel against lstm_forward on the step_weights operand, with a kernel and a
    recurrent kernel in Fortran order and as strided views, rings and full buffers."""
    rng = np.random.default_rng(121)
    H, F, T = 19, 5, 6
    kernel = rng.normal(size=(F, 4 * H)).astype(dtype)
    rec = rng.normal(size=(H, 4 * H)).astype(dtype)
    bias = rng.normal(size=4 * H).astype(dtype)
    xf = rng.normal(size=(F, T)).astype(dtype)
    weights = np.empty((4 * H, H + F + 2), dtype)
    K.step_weights(kernel, rec, bias, None, weights)

    def buffers(full):
        return dict(gates=np.zeros((T if full else 1, 4 * H, 1), dtype),
                    h=np.zeros((H, T + 1 if full else 2, 1), dtype),
                    c=np.zeros((T + 1 if full else 2, H, 1), dtype),
                    act_c=np.zeros((T if full else 1, H, 1), dtype))

    want = buffers(True)
    K.lstm_forward(xf, weights, **want)
    wide = np.zeros((H, 8 * H), dtype)
    wide[:, ::2] = rec
    for k, r in ((kernel, rec), (np.asfortranarray(kernel), np.asfortranarray(rec)),
                 (kernel, wide[:, ::2])):
        for full in (True, False):
            got = buffers(full)
            K.lstm_forward_one(xf, k, r, bias, **got)
            if full:
                for name in want:
                    np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6)
            else:
                np.testing.assert_allclose(got["h"][:, T % 2], want["h"][:, T], rtol=1e-5,
                                           atol=1e-6)
                np.testing.assert_allclose(got["c"][T % 2], want["c"][T], rtol=1e-5,
                                           atol=1e-6)
    with pytest.raises(ValueError, match="one sample"):
        bad = buffers(False)
        bad["h"] = np.zeros((H, 2, 2), dtype)
        K.lstm_forward_one(xf, kernel, rec, bias, **bad)
    with pytest.raises(ValueError, match="kernel_rec"):
        K.lstm_forward_one(xf, kernel, rec[:, :-1], bias, **buffers(False))
    with pytest.raises(ValueError, match="bias"):
        K.lstm_forward_one(xf, kernel, rec, bias[:-1], **buffers(False))


# -- predict's lean path --------------------------------------------------------------------
def _mlp(dtype, activations=("relu", "tanh", "softmax"), use_bias=True, seed=0):
    cn.set_seed(seed)
    model = cn.Sequential([layers.Dense(u, activation=a, use_bias=use_bias)
                           for u, a in zip((37, 16, 5), activations)], dtype=dtype)
    model.build((23,))
    return model


def _cnn(seed=0):
    cn.set_seed(seed)
    model = cn.Sequential([
        layers.Conv2D(4, 3, padding="same", activation="relu"), layers.MaxPooling2D(2),
        layers.Flatten(), layers.Dropout(0.5), layers.Dense(9, activation="relu"),
        layers.Dense(3, activation="softmax")])
    model.build((9, 9, 2))
    return model


def _cnn_wide(seed=0):
    """Winograd-sized channels (its chunks of the batch, each pooled), average pooling,
    a pointwise convolution, no bias, an activation the epilogue does not apply."""
    cn.set_seed(seed)
    model = cn.Sequential([
        layers.Conv2D(16, 3, padding="same", activation="relu"), layers.MaxPooling2D(2),
        layers.Conv2D(16, 3, padding="same", activation="tanh"),
        layers.AveragePooling2D(2, padding="same"),
        layers.Conv2D(8, 1, use_bias=False, activation="linear"),
        layers.Conv2D(5, 2, activation="gelu"), layers.GlobalAveragePooling2D(),
        layers.Dense(3)])
    model.build((14, 14, 16))
    return model


def _cnn_parametric(seed=0):
    """Convolutions whose epilogue takes a parameter (leaky_relu's slope, elu's alpha):
    thin with pooling (the shifted rows), wide with pooling, pointwise without."""
    cn.set_seed(seed)
    model = cn.Sequential([
        layers.Conv2D(4, 3, padding="same", activation="leaky_relu"), layers.MaxPooling2D(2),
        layers.Conv2D(6, 3, activation="elu"), layers.MaxPooling2D(2),
        layers.Conv2D(5, 1, activation="leaky_relu"), layers.Flatten(), layers.Dense(3)])
    model.build((12, 12, 2))
    return model


def _cnn_banded(seed=0):
    """Convolutions too wide for the direct kernel, pooled band by band
    (im2col_gemm_pool): leaky_relu with average pooling, a strided one with relu and a
    max pool of (2, 1)."""
    cn.set_seed(seed)
    model = cn.Sequential([
        layers.Conv2D(12, 3, activation="leaky_relu"), layers.AveragePooling2D(2),
        layers.Conv2D(8, 2, strides=2, activation="relu"), layers.MaxPooling2D((2, 1)),
        layers.Flatten(), layers.Dense(3)])
    model.build((10, 10, 5))
    return model


def test_wide_pooled_convolutions_take_the_banded_kernel():
    model = _cnn_banded()
    x = np.random.default_rng(5).normal(size=(3, 10, 10, 5)).astype(np.float32)
    model.predict(x)
    convs = [op for op in model._buffers[_inference._KEY].ops if hasattr(op, "setups")]
    assert len(convs) == 2
    for op in convs:
        (setup,) = op.setups.values()
        assert setup.fused[0] is _conv_k.im2col_gemm_pool


def _conv1d(seed=0):
    cn.set_seed(seed)
    model = cn.Sequential([layers.Conv1D(6, 3, activation="sigmoid"), layers.MaxPooling1D(2),
                           layers.Conv1D(4, 2, strides=2), layers.Flatten(), layers.Dense(2)])
    model.build((17, 3))
    return model


def _lstm(seed=0, **kw):
    cn.set_seed(seed)
    model = cn.Sequential([layers.LSTM(12, **kw), layers.Dense(4, activation="sigmoid")])
    model.build((5, 3))
    return model


def _general(model, x):
    """predict's general path: a list input is not taken by the lean path."""
    return model.predict([x], batch_size=len(x))


MODELS = {
    "mlp32": lambda: _mlp("float32"),
    "mlp64": lambda: _mlp("float64"),
    "mlp-no-bias-linear-gelu": lambda: _mlp("float32", ("linear", "gelu", "linear"), False),
    "mlp-elu-swish-leaky": lambda: _mlp("float32", ("elu", "swish", "leaky_relu")),
    "cnn": _cnn,
    "cnn-wide": _cnn_wide,
    "cnn-leaky-elu": _cnn_parametric,
    "cnn-banded": _cnn_banded,
    "conv1d": _conv1d,
    "lstm": _lstm,
    "lstm-backwards-relu-no-bias": lambda: _lstm(go_backwards=True, activation="relu",
                                                 use_bias=False),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_lean_predict_equals_the_general_path_and_numpy(name, isa, kernel_threads):
    model = MODELS[name]()
    rng = np.random.default_rng(122)
    shape = model.inputs[0].shape[1:]
    for n in (1, 3, 17, 40):
        x = rng.normal(size=(n,) + tuple(shape)).astype(model.dtype)
        lean = _inference.predict(model, x, n)
        assert lean is not None, "the lean path should take a plain array"
        np.testing.assert_allclose(lean, _general(model, x), rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(model.predict(x, batch_size=n), lean)
        if name.startswith("mlp"):      # numpy, layer by layer
            h = x.astype(np.float64)
            for layer in model.layers:
                w = [v.astype(np.float64) for v in layer.get_weights()]
                h = h @ w[0] + (w[1] if layer.use_bias else 0)
                h = layer.activation.forward(h)
            tol = 1e-5 if model.dtype == np.float32 else 1e-12
            np.testing.assert_allclose(lean, h, rtol=tol, atol=tol)


def test_lean_predict_returns_new_arrays_and_follows_changes():
    model = _mlp("float32")
    x = np.random.default_rng(123).normal(size=(2, 23)).astype(np.float32)
    a = model.predict(x)
    b = model.predict(x)
    assert a is not b and not np.shares_memory(a, b)
    np.testing.assert_array_equal(a, b)
    a[:] = 0        # the caller owns the result
    np.testing.assert_array_equal(model.predict(x), b)
    # new weights, a new activation, another batch size: the program follows
    model.layers[0].set_weights([w * 2 for w in model.layers[0].get_weights()])
    np.testing.assert_allclose(model.predict(x), _general(model, x), rtol=1e-6)
    model.layers[1].activation = cn.activations.get("sigmoid")
    np.testing.assert_allclose(model.predict(x), _general(model, x), rtol=1e-6)
    np.testing.assert_allclose(model.predict(x[:1]), _general(model, x[:1]), rtol=1e-6)


@pytest.mark.parametrize("make", [lambda: _mlp("float32"), _cnn], ids=["mlp", "thin-cnn"])
def test_lean_predict_sees_weights_written_in_place(make):
    """Weights are numpy arrays user code may write in place: one element changed in the
    first kernel (a thin convolution's, whose reordered copy the lean path keeps while
    its bytes stay the same) shows in the next predict."""
    model = make()
    shape = (4,) + tuple(model.inputs[0].shape[1:])
    x = np.random.default_rng(124).normal(size=shape).astype(np.float32)
    before = model.predict(x)
    model.layers[0].kernel.reshape(-1)[0] += 3.0
    after = model.predict(x)
    assert not np.array_equal(after, before)
    np.testing.assert_allclose(after, _general(model, x), rtol=1e-5, atol=1e-6)


def _wide_input_mlp(activation="relu", seed=0):
    """A first Dense layer with many more inputs than outputs: predict checks its
    product instead of the input (_Op.run_checked)."""
    cn.set_seed(seed)
    model = cn.Sequential([layers.Dense(32, activation=activation),
                           layers.Dense(4, activation="softmax")])
    model.build((784,))
    return model


@pytest.mark.parametrize("activation", ["relu", "tanh", "leaky_relu", "linear"])
def test_lean_predict_checks_the_first_product_for_a_wide_input(activation):
    """Batch 64 x 784 -> 32: the first product is checked instead of x (in the GEMM's
    epilogue, before the activation). Finite x: the same bits as the unchecked path;
    a NaN or an infinity anywhere in x: the general path's ValueError naming x; a
    finite x whose product overflows: the general path's output, no error."""
    model = _wide_input_mlp(activation)
    rng = np.random.default_rng(125)
    x = rng.normal(size=(64, 784)).astype(np.float32)
    program_ops = lambda: model._buffers[_inference._KEY].ops  # noqa: E731
    got = model.predict(x)
    assert program_ops()[0].checks(x)
    np.testing.assert_allclose(got, _general(model, x), rtol=1e-6, atol=1e-6)
    unchecked = program_ops()[0].run(x, False).copy()
    np.testing.assert_array_equal(program_ops()[0].run_checked(x, False), unchecked)
    for bad in (np.nan, np.inf, -np.inf):
        for row, col in ((0, 0), (37, 500), (63, 783)):
            y = x.copy()
            y[row, col] = bad
            assert _inference.predict(model, y, 64) is None
            with pytest.raises(ValueError, match=r"\bx\b"):
                model.predict(y)
    huge = x.copy()
    huge[5] = 3e38             # finite, but its products overflow
    assert not np.all(np.isfinite(program_ops()[0].run(huge, False)))
    np.testing.assert_array_equal(model.predict(huge), _general(model, huge))


def test_lean_predict_leaves_other_inputs_to_the_general_path():
    model = _mlp("float32")
    x = np.random.default_rng(124).normal(size=(4, 23))
    assert _inference.predict(model, x, 4) is None                       # float64 input
    assert _inference.predict(model, x.astype(np.float32)[:, ::2], 4) is None   # strided
    assert _inference.predict(model, x.astype(np.float32), 3) is None    # several chunks
    bad = x.astype(np.float32)
    bad[1, 2] = np.nan
    assert _inference.predict(model, bad, 4) is None
    with pytest.raises(ValueError, match="NaN or infinity"):
        model.predict(bad)
    with pytest.raises(ValueError, match="per-sample shape"):
        model.predict(np.zeros((2, 22), np.float32))
    np.testing.assert_allclose(model.predict(x), _general(model, x.astype(np.float32)),
                               rtol=1e-6)


@pytest.mark.parametrize("make", [_mlp.__name__, "cnn", "cnn-banded", "lstm"])
def test_lean_predict_from_many_threads_gives_the_serial_results(make, restore_threads):
    """Eight threads, each its own batch size, predict on one model at once (runners: the
    model and its replicas, each with its own programs and buffers)."""
    model = {"_mlp": lambda: _mlp("float32"), "cnn": _cnn, "cnn-banded": _cnn_banded,
             "lstm": _lstm}[make]()
    cn.set_num_threads(1)
    rng = np.random.default_rng(125)
    shape = tuple(model.inputs[0].shape[1:])
    xs = [rng.normal(size=(1 + i % 4,) + shape).astype(np.float32) for i in range(8)]
    expected = [model.predict(x) for x in xs]
    got = predict_from_threads(model.predict, xs, calls=30)
    for e, g in zip(expected, got):
        for one in g:
            np.testing.assert_array_equal(one, e)


def predict_from_threads(predict, xs, calls):
    """One thread per array of xs, all released at once, each calling predict on its
    array `calls` times; returns their results (a list of lists, in xs's order) after
    checking that every thread finished without an error."""
    barrier = threading.Barrier(len(xs))
    got, errors = [None] * len(xs), []

    def run(i):
        try:
            barrier.wait(60)
            got[i] = [predict(xs[i]) for _ in range(calls)]
        except BaseException as exc:     # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
        assert not t.is_alive()
    assert not errors, errors[0]
    return got


@pytest.mark.parametrize("shape", [(3, 8, 8, 5), (2, 9, 7, 33), (1, 2, 2, 1), (4, 5, 12, 64)])
def test_two_by_two_max_pool_matches_the_general_loop_and_numpy(shape, kernel_threads):
    """The inference loop of 2x2 / stride 2 max pooling (no indices) against the general
    loop (with indices) and numpy, odd sizes (the last row / column left out), NaN and
    infinities (a NaN never wins, as in the general loop)."""
    rng = np.random.default_rng(126)
    x = rng.normal(size=shape).astype(np.float32)
    flat = x.reshape(-1)
    flat[rng.integers(0, flat.size, size=max(1, flat.size // 50))] = np.nan
    flat[rng.integers(0, flat.size, size=max(1, flat.size // 50))] = -np.inf
    n, h, w, c = shape
    oh, ow = h // 2, w // 2
    fast, general = (np.empty((n, oh, ow, c), np.float32) for _ in range(2))
    P.max_pool_forward(x, fast, None, (2, 2), (2, 2), (0, 0))
    P.max_pool_forward(x, general, np.empty(general.shape, np.int32), (2, 2), (2, 2), (0, 0))
    np.testing.assert_array_equal(fast, general)
    windows = x[:, :2 * oh, :2 * ow].reshape(n, oh, 2, ow, 2, c)
    ref = np.where(np.isnan(windows), -np.inf, windows).max(axis=(2, 4))
    np.testing.assert_array_equal(fast, ref)


_REFERENCE_ACTIVATIONS = {"relu": lambda y: np.maximum(y, 0), "linear": lambda y: y,
                          "leaky_relu": lambda y: np.where(y > 0, y, 0.2 * y),
                          "tanh": np.tanh}


def _conv_pool_reference(x, kernel, bias, padding, pool, activation="relu", max_pool=True):
    """numpy, float64: act(conv2d(x) + bias) (stride 1), then pool x pool max or average
    pooling (pool 1: none)."""
    kh, kw, c, f = kernel.shape
    x = x.astype(np.float64)
    if padding == "same":
        x = np.pad(x, ((0, 0), ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2), (0, 0)))
    n, h, w, _ = x.shape
    oh, ow = h - kh + 1, w - kw + 1
    y = np.zeros((n, oh, ow, f)) + (0 if bias is None else bias)
    for i in range(kh):
        for j in range(kw):
            y += x[:, i:i + oh, j:j + ow] @ kernel[i, j].astype(np.float64)
    y = _REFERENCE_ACTIVATIONS[activation](y)
    ph, pw = oh // pool, ow // pool
    windows = y[:, :ph * pool, :pw * pool].reshape(n, ph, pool, pw, pool, f)
    return windows.max(axis=(2, 4)) if max_pool else windows.mean(axis=(2, 4))


@pytest.mark.parametrize("activation, pooling", [("relu", "max"), ("leaky_relu", "average"),
                                                 ("linear", "none"), ("tanh", "max")])
@pytest.mark.parametrize("geometry", [((28, 28, 1), 3, "same", 32), ((9, 11, 3), 3, "valid", 7),
                                      ((8, 7, 2), (2, 3), "same", 17), ((5, 6, 8), 2, "same", 3),
                                      ((12, 13, 1), 5, "same", 40)])
def test_thin_convolution_and_pooling_at_every_batch_size(geometry, activation, pooling, isa,
                                                          kernel_threads):
    """Thin convolutions (KH*KW*C <= 32), pooled or not: relu, leaky_relu and linear take
    the direct kernel (conv rows pooled in L1), other activations (tanh) the shifted-rows
    patch view, at every batch size: against numpy and the general path, batch sizes
    coming back after others, and new weights at a shape already seen (the reordered
    kernel is refilled on every call)."""
    shape, kernel_size, padding, filters = geometry
    cn.set_seed(127)
    stack = [layers.Conv2D(filters, kernel_size, padding=padding, activation=activation)]
    if pooling != "none":
        stack.append(layers.MaxPooling2D(2) if pooling == "max" else layers.AveragePooling2D(2))
    model = cn.Sequential(stack)
    model.build(shape)
    conv = model.layers[0]
    pool, max_pool = (1, True) if pooling == "none" else (2, pooling == "max")
    rng = np.random.default_rng(128)
    for n in (1, 3, 1, 6, 1):
        x = rng.normal(size=(n,) + shape).astype(np.float32)
        kernel, bias = conv.get_weights()
        got = _inference.predict(model, x, n)
        assert got is not None
        setup = model._buffers[_inference._KEY].ops[0].setups[x.shape, x.dtype]
        direct = setup.fused is not None and setup.fused[0] is _conv_k.thin_conv_pool
        assert direct == (activation != "tanh")
        np.testing.assert_allclose(
            got, _conv_pool_reference(x, kernel, bias, padding, pool, activation, max_pool),
            rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got, _general(model, x), rtol=1e-5, atol=1e-5)
        conv.set_weights([rng.normal(size=kernel.shape).astype(np.float32),
                          rng.normal(size=bias.shape).astype(np.float32)])
        kernel, bias = conv.get_weights()
        np.testing.assert_allclose(
            model.predict(x, batch_size=n),
            _conv_pool_reference(x, kernel, bias, padding, pool, activation, max_pool),
            rtol=1e-5, atol=1e-5)


# -- Winograd convolution with its pooling, fused (winograd_conv_pool) -----------------------
@pytest.fixture
def winograd_threads(kernel_threads):
    """On 2 threads, every winograd_conv_pool call is shared, however small."""
    if kernel_threads > 1:
        _conv_k._set_winograd_parallel_min_macs_for_tests(0)
    yield kernel_threads
    _conv_k._set_winograd_parallel_min_macs_for_tests(-1)


def _winograd_reference(x, kernel, bias, padding, conv_size, pool_window, max_pool, activation,
                        alpha):
    """numpy, float64: act(conv2d(x) + bias), 3x3, stride 1, padding (top, left) and the
    output size given (zeros past the input), then pool_window pooling at its strides."""
    (pt, pl), (oh, ow), (ph, pw) = padding, conv_size, pool_window
    n, h, w, c = x.shape
    xp = np.zeros((n, oh + 2, ow + 2, c))
    rows, cols = min(h, oh + 2 - pt), min(w, ow + 2 - pl)
    xp[:, pt:pt + rows, pl:pl + cols] = x[:, :rows, :cols]
    y = np.zeros((n, oh, ow, kernel.shape[3])) + (0 if bias is None else bias)
    for i in range(3):
        for j in range(3):
            y += xp[:, i:i + oh, j:j + ow] @ kernel[i, j].astype(np.float64)
    y = {0: y, 1: np.maximum(y, 0), 8: np.where(y > 0, y, alpha * y)}[activation]
    qh, qw = oh // ph, ow // pw
    windows = y[:, :qh * ph, :qw * pw].reshape(n, qh, ph, qw, pw, -1)
    return windows.max(axis=(2, 4)) if max_pool else windows.mean(axis=(2, 4))


# (N, H, W, C, F), padding, conv size, pool window, max pool, activation code
_WINOGRAD_CASES = [
    ((1, 14, 14, 32, 64), (1, 1), (14, 14), (2, 2), True, 1),      # LeNet's second layer
    ((2, 9, 7, 5, 37), (0, 0), (7, 5), (1, 1), True, 0),           # valid, ragged filters
    ((3, 13, 11, 17, 70), (1, 2), (13, 10), (2, 4), False, 8),     # average, leaky_relu
    ((1, 5, 6, 3, 3), (2, 2), (7, 8), (4, 1), True, 1),            # wide padding, few filters
    ((2, 16, 16, 40, 96), (1, 1), (16, 16), (2, 2), True, 1),
    ((1, 1, 1, 1, 1), (1, 1), (1, 1), (1, 1), False, 0),           # one pixel
    ((2, 70, 66, 3, 20), (1, 1), (70, 66), (2, 2), True, 1),       # 306 tiles a sample:
]                                                                   # chunks cut samples


@pytest.mark.parametrize("case", _WINOGRAD_CASES, ids=lambda c: "x".join(map(str, c[0])))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_winograd_conv_pool_matches_numpy(case, dtype, isa, winograd_threads):
    shape, padding, conv_size, pool_window, max_pool, act = case
    n, h, w, c, f = shape
    rng = np.random.default_rng(131)
    x = rng.normal(size=(n, h, w, c)).astype(dtype)
    kernel = rng.normal(size=(3, 3, c, f)).astype(dtype)
    cache = _conv_k.WinogradKernel()
    for bias in (rng.normal(size=f).astype(dtype), None):
        want = _winograd_reference(x, kernel, bias, padding, conv_size, pool_window, max_pool,
                                   act, 0.3)
        y = np.full(want.shape, np.nan, dtype)
        _conv_k.winograd_conv_pool(x, kernel, bias, y, padding, conv_size, pool_window,
                                   max_pool, act, 0.3, cache)
        tol = 2e-5 if dtype == np.float32 else 1e-12
        np.testing.assert_allclose(y, want, rtol=tol, atol=tol * np.abs(want).max())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_winograd_conv_pool_gives_the_same_bits_on_any_thread_count(dtype, isa,
                                                                    restore_threads):
    """320 tiles: the threads take chunks of their own (cut where the thread count
    says); 16 tiles: they share the one chunk, the products split by slices and filter
    parts, the output by filters."""
    rng = np.random.default_rng(132)
    kernel = rng.normal(size=(3, 3, 24, 100)).astype(dtype)
    bias = rng.normal(size=100).astype(dtype)
    _conv_k._set_winograd_parallel_min_macs_for_tests(0)
    try:
        for n, h, w in ((5, 30, 31), (1, 14, 13)):
            x = rng.normal(size=(n, h, w, 24)).astype(dtype)
            results = []
            for threads in (1, 2, 3):
                cn.set_num_threads(threads)
                y = np.empty((n, h // 2, w // 2, 100), dtype)
                _conv_k.winograd_conv_pool(x, kernel, bias, y, (1, 1), (h, w), (2, 2), True, 1)
                results.append(y)
            for y in results[1:]:
                np.testing.assert_array_equal(y, results[0])
    finally:
        _conv_k._set_winograd_parallel_min_macs_for_tests(-1)


def test_winograd_kernel_cache_follows_the_kernel_bytes_shape_and_isa():
    """The kept transform is used only for a kernel of the same bytes, shape and SIMD
    path: a kernel written in place, another kernel, another shape and another path all
    give what an uncached call gives."""
    rng = np.random.default_rng(133)
    x = rng.normal(size=(2, 9, 9, 16)).astype(np.float32)
    kernel = rng.normal(size=(3, 3, 16, 32)).astype(np.float32)
    cache = _conv_k.WinogradKernel()

    def both(k, x=x):
        y, fresh = (np.empty((len(x), 4, 4, k.shape[3]), np.float32) for _ in range(2))
        _conv_k.winograd_conv_pool(x, k, None, y, (1, 1), (9, 9), (2, 2), True, 1, 0.0, cache)
        _conv_k.winograd_conv_pool(x, k, None, fresh, (1, 1), (9, 9), (2, 2), True, 1)
        np.testing.assert_array_equal(y, fresh)
        return y

    first = both(kernel)
    np.testing.assert_array_equal(both(kernel), first)          # kept
    for copied in (pickle.loads(pickle.dumps(cache)), copy.deepcopy(cache)):
        y = np.empty_like(first)                                 # a copy starts empty
        _conv_k.winograd_conv_pool(x, kernel, None, y, (1, 1), (9, 9), (2, 2), True, 1, 0.0,
                                   copied)
        np.testing.assert_array_equal(y, first)
    kernel[2, 1, 7, 30] += 1.0                                   # written in place
    assert not np.array_equal(both(kernel), first)
    both(rng.normal(size=(3, 3, 16, 32)).astype(np.float32))     # another kernel
    both(rng.normal(size=(3, 3, 16, 8)).astype(np.float32))      # another shape
    both(kernel[:, :, :8].copy(), x[..., :8].copy())
    before = _gemm.get_isa()
    try:
        for name in _config.supported_isas():
            _gemm.set_isa(name)
            both(kernel)
    finally:
        _gemm.set_isa(before)


def test_winograd_conv_pool_refuses_bad_arguments():
    x = np.zeros((1, 8, 8, 4), np.float32)
    k = np.zeros((3, 3, 4, 6), np.float32)
    y = np.zeros((1, 4, 4, 6), np.float32)
    call = _conv_k.winograd_conv_pool
    with pytest.raises(ValueError, match="kernel the shape"):
        call(x, np.zeros((5, 5, 4, 6), np.float32), None, y, (1, 1), (8, 8), (2, 2), True)
    with pytest.raises(ValueError, match="kernel the shape"):
        call(x, np.zeros((3, 3, 5, 6), np.float32), None, y, (1, 1), (8, 8), (2, 2), True)
    with pytest.raises(ValueError, match="padding must be 0-2"):
        call(x, k, None, y, (3, 1), (8, 8), (2, 2), True)
    with pytest.raises(ValueError, match="padding must be 0-2"):
        call(x, k, None, y, (1, 1), (10, 8), (2, 2), True)
    with pytest.raises(ValueError, match="pool_window"):
        call(x, k, None, y, (1, 1), (8, 8), (3, 3), True)
    with pytest.raises(ValueError, match=r"y must have shape \(1, 4, 4, 6\)"):
        call(x, k, None, np.zeros((1, 8, 8, 6), np.float32), (1, 1), (8, 8), (2, 2), True)
    with pytest.raises(ValueError, match="bias must have 6"):
        call(x, k, np.zeros(5, np.float32), y, (1, 1), (8, 8), (2, 2), True)
    with pytest.raises(ValueError, match="activation code"):
        call(x, k, None, y, (1, 1), (8, 8), (2, 2), True, 2)
    with pytest.raises(ValueError, match="slope"):
        call(x, k, None, y, (1, 1), (8, 8), (2, 2), True, 8, -0.5)
    with pytest.raises(TypeError, match="dtype"):
        call(x.astype(np.float64), k, None, y, (1, 1), (8, 8), (2, 2), True)
    with pytest.raises(ValueError, match="share memory"):
        shared = np.zeros(256, np.float32)
        call(shared.reshape(1, 8, 8, 4), k, None, shared[:96].reshape(1, 4, 4, 6), (1, 1),
             (8, 8), (2, 2), True)
    assert np.all(y == 0)


def _cnn_winograd(seed=0, activation="relu", pooling=layers.MaxPooling2D):
    """LeNet's second block: 3x3 'same' with 16+ channels in and out, pooled 2x2."""
    cn.set_seed(seed)
    stack = [layers.Conv2D(24, 3, padding="same", activation=activation)]
    if pooling is not None:
        stack.append(pooling(2))
    model = cn.Sequential(stack + [layers.Flatten(), layers.Dense(5)])
    model.build((10, 10, 16))
    return model


@pytest.mark.parametrize("activation, pooling", [
    ("relu", layers.MaxPooling2D), ("leaky_relu", layers.AveragePooling2D),
    ("linear", None)])
def test_winograd_convolutions_take_the_fused_kernel_at_every_batch_size(
        activation, pooling, isa, winograd_threads):
    """3x3 stride-1 convolutions wide enough for Winograd run fused in predict (9 tiles a
    sample here: 40 samples go through the kernel's transform domain in two chunks),
    against numpy and the general path (the layer's own Winograd), and follow weights
    written in place."""
    model = _cnn_winograd(activation=activation, pooling=pooling)
    conv = model.layers[0]
    rng = np.random.default_rng(134)
    pool = 1 if pooling is None else 2
    for n in (1, 3, 40, 1):
        x = rng.normal(size=(n, 10, 10, 16)).astype(np.float32)
        got = _inference.predict(model, x, n)
        setup = model._buffers[_inference._KEY].ops[0].setups[x.shape, x.dtype]
        assert setup.fused[0] is _conv_k.winograd_conv_pool
        np.testing.assert_allclose(got, _general(model, x), rtol=1e-5, atol=1e-5)
        conv_out = model._buffers[_inference._KEY].ops[0].run(x, True)
        kernel, bias = conv.get_weights()
        np.testing.assert_allclose(
            conv_out, _conv_pool_reference(x, kernel, bias, "same", pool, activation,
                                           pooling is not layers.AveragePooling2D),
            rtol=2e-5, atol=2e-5)
        conv.kernel.reshape(-1)[n] += 1.0
        np.testing.assert_allclose(model.predict(x), _general(model, x), rtol=1e-5, atol=1e-5)
