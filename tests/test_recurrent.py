"""Recurrent layers: SimpleRNN, LSTM, GRU, Bidirectional, TimeDistributed.

numpy references of every cell and option; float64 finite-difference gradient checks
for every layer and option; parity with torch.nn.RNN/LSTM/GRU (weights mapped between
the Keras and PyTorch layouts) where PyTorch is installed; the sequence kernels
directly (shape checks, the float32 activations on each SIMD path); 1 and 2 threads;
real sequence tasks that must be learned; bad input.
"""
import numpy as np
import pytest

import cyneuron as cn
from cyneuron import layers
from cyneuron._kernels import recurrent as K

EPS = 1e-6
RTOL = 1e-5
ATOL = 1e-7
CELLS = ["SimpleRNN", "LSTM", "GRU"]


def numeric_grad(f, x, eps=EPS):
    """Central differences of the scalar f() w.r.t. every entry of x (perturbed in place)."""
    grad = np.zeros(x.shape, dtype=np.float64)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        orig = flat[i]
        flat[i] = orig + eps
        f_plus = f()
        flat[i] = orig - eps
        f_minus = f()
        flat[i] = orig
        gflat[i] = (f_plus - f_minus) / (2 * eps)
    return grad


# ---------------------------------------------------------------------------------------
# numpy references (float64)
# ---------------------------------------------------------------------------------------
def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


ACT = {"tanh": np.tanh, "sigmoid": _sigmoid, "relu": lambda z: np.maximum(z, 0.0),
       "linear": lambda z: z, "hard_sigmoid": lambda z: np.clip(z / 6 + 0.5, 0.0, 1.0)}


def reference_run(cell, x, weights, units, activation="tanh", recurrent_activation="sigmoid",
                  go_backwards=False, initial_state=None, mask=None, use_bias=True):
    """(outputs (N, T, H) in processing order, final states) of a Keras-layout cell."""
    n, t_steps, _ = x.shape
    act, ract = ACT[activation], ACT[recurrent_activation]
    if go_backwards:
        x = x[:, ::-1]
        mask = None if mask is None else mask[:, ::-1]
    kernel, rec = weights[0], weights[1]
    bias = weights[2] if use_bias else None
    h = np.zeros((n, units)) if initial_state is None else np.array(initial_state[0], float)
    c = np.zeros((n, units)) if initial_state is None or cell != "LSTM" else \
        np.array(initial_state[1], float)
    outs = []
    for t in range(t_steps):
        xt = x[:, t]
        if cell == "SimpleRNN":
            z = xt @ kernel + h @ rec + (0 if bias is None else bias)
            h_new, c_new = act(z), c
        elif cell == "LSTM":
            z = xt @ kernel + h @ rec + (0 if bias is None else bias)
            i, f, g, o = np.split(z, 4, axis=1)
            c_new = ract(f) * c + ract(i) * act(g)
            h_new = ract(o) * act(c_new)
        else:
            xz = xt @ kernel + (0 if bias is None else bias[0])
            hz = h @ rec + (0 if bias is None else bias[1])
            hu = units
            zg = ract(xz[:, :hu] + hz[:, :hu])
            rg = ract(xz[:, hu:2 * hu] + hz[:, hu:2 * hu])
            hh = act(xz[:, 2 * hu:] + rg * hz[:, 2 * hu:])
            h_new, c_new = zg * h + (1 - zg) * hh, c
        if mask is not None:
            keep = (mask[:, t] != 0)[:, None]
            h_new = np.where(keep, h_new, h)
            c_new = np.where(keep, c_new, c)
        h, c = h_new, c_new
        outs.append(h)
    states = [h, c] if cell == "LSTM" else [h]
    return np.stack(outs, axis=1), states


def _make(cell, units=4, **kw):
    return getattr(layers, cell)(units, dtype="float64", **kw)


def _random_weights(layer, rng, scale=0.5):
    ws = [rng.normal(scale=scale, size=w.shape) for w in layer.get_weights()]
    layer.set_weights(ws)
    return ws


def _padding_mask(n, t):
    """Post-padding for one sample, pre-padding for another, a hole in a third."""
    mask = np.ones((n, t), dtype=bool)
    mask[0, t - 2:] = False
    if n > 1:
        mask[1, :2] = False
    if n > 2:
        mask[2, 1] = False
    return mask


# ---------------------------------------------------------------------------------------
# forward against the references
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("go_backwards", [False, True], ids=["fwd", "bwd"])
@pytest.mark.parametrize("return_sequences", [False, True], ids=["last", "seq"])
@pytest.mark.parametrize("cell", CELLS)
def test_forward_matches_reference(cell, return_sequences, go_backwards):
    rng = np.random.default_rng(CELLS.index(cell))
    x = rng.normal(size=(3, 5, 2))
    layer = _make(cell, 4, return_sequences=return_sequences, go_backwards=go_backwards,
                  return_state=True)
    layer.forward(x)
    ws = _random_weights(layer, rng)
    out, *states = layer.forward(x)
    ref_out, ref_states = reference_run(cell, x, ws, 4, go_backwards=go_backwards)
    expected = ref_out if return_sequences else ref_out[:, -1]
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
    assert len(states) == (2 if cell == "LSTM" else 1)
    for s, r in zip(states, ref_states):
        np.testing.assert_allclose(s, r, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cell", CELLS)
def test_forward_initial_state_and_mask_match_reference(cell):
    rng = np.random.default_rng(7)
    n, t = 4, 6
    x = rng.normal(size=(n, t, 3))
    layer = _make(cell, 5, return_sequences=True)
    layer.forward(x)
    ws = _random_weights(layer, rng)
    init = [rng.normal(size=(n, 5)) for _ in range(2 if cell == "LSTM" else 1)]
    mask = _padding_mask(n, t)
    out = layer.forward(x, initial_state=init, mask=mask)
    ref, _ = reference_run(cell, x, ws, 5, initial_state=init, mask=mask)
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cell", CELLS)
def test_activation_options_match_reference(cell):
    rng = np.random.default_rng(8)
    x = rng.normal(size=(3, 4, 2))
    kw = {"activation": "relu"}
    if cell != "SimpleRNN":
        kw["recurrent_activation"] = "hard_sigmoid"
    layer = _make(cell, 3, return_sequences=True, use_bias=False, **kw)
    layer.forward(x)
    ws = _random_weights(layer, rng, scale=1.5)
    assert len(ws) == 2
    out = layer.forward(x)
    ref, _ = reference_run(cell, x, ws, 3, activation="relu",
                           recurrent_activation=kw.get("recurrent_activation", "sigmoid"),
                           use_bias=False)
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)


def test_weight_layouts_and_initializers():
    x = np.zeros((2, 3, 5))
    lstm, gru, rnn = layers.LSTM(4), layers.GRU(4), layers.SimpleRNN(4)
    for layer in (lstm, gru, rnn):
        layer.forward(x)
    assert [w.shape for w in lstm.get_weights()] == [(5, 16), (4, 16), (16,)]
    assert [w.shape for w in gru.get_weights()] == [(5, 12), (4, 12), (2, 12)]
    assert [w.shape for w in rnn.get_weights()] == [(5, 4), (4, 4), (4,)]
    # unit_forget_bias: ones in the forget gate's block, zeros elsewhere
    np.testing.assert_array_equal(lstm.get_weights()[2],
                                  np.r_[np.zeros(4), np.ones(4), np.zeros(8)])
    # orthogonal recurrent kernel: rows orthonormal for (units, 4 units)
    rec = lstm.get_weights()[1].astype(np.float64)
    np.testing.assert_allclose(rec @ rec.T, np.eye(4), atol=1e-5)
    rec = rnn.get_weights()[1].astype(np.float64)
    np.testing.assert_allclose(rec.T @ rec, np.eye(4), atol=1e-5)
    assert lstm.forward(x).dtype == np.float32
    no_forget = layers.LSTM(4, unit_forget_bias=False)
    no_forget.forward(x)
    np.testing.assert_array_equal(no_forget.get_weights()[2], np.zeros(16))


def test_output_shapes_in_a_model():
    model = cn.Sequential([layers.LSTM(6, return_sequences=True), layers.GRU(5),
                           layers.Dense(2)])
    model.build((7, 3))
    assert model.layers[0].compute_output_shape((7, 3)) == (7, 6)
    assert model.output_shape == (2,)
    assert model.predict(np.zeros((4, 7, 3))).shape == (4, 2)


# ---------------------------------------------------------------------------------------
# float64 gradient checks
# ---------------------------------------------------------------------------------------
def check_gradients(layer, x, rng, initial_state=None, mask=None, training=False, seed=None):
    """Compare backward (dx, every weight, initial states) with central differences of
    sum(g * outputs) (final states included with return_state)."""
    kwargs = {k: v for k, v in (("initial_state", initial_state), ("mask", mask))
              if v is not None}
    if seed is not None:
        cn.set_seed(seed)
    first = layer.forward(x, training=training, **kwargs)
    outs = first if isinstance(first, list) else [first]
    gs = [rng.normal(size=o.shape) for o in outs]

    def objective():
        if seed is not None:
            cn.set_seed(seed)  # the same dropout mask every time
        res = layer.forward(x, training=training, **kwargs)
        res = res if isinstance(res, list) else [res]
        return float(sum(np.sum(g * r) for g, r in zip(gs, res)))

    objective()
    x_before = x.copy()
    dx = np.array(layer.backward(gs if isinstance(first, list) else gs[0]), copy=True)
    np.testing.assert_array_equal(x, x_before)
    grads = layer.get_gradients()
    state_grads = [g.copy() for g in (getattr(layer, "initial_state_gradients", None) or [])]
    np.testing.assert_allclose(dx, numeric_grad(objective, x), rtol=RTOL, atol=ATOL,
                               err_msg="dx")
    for k, w in enumerate(layer.weights):
        np.testing.assert_allclose(grads[k], numeric_grad(objective, w), rtol=RTOL, atol=ATOL,
                                   err_msg=f"weight {layer._weight_names[k]}")
    if initial_state is not None:
        assert len(state_grads) == len(initial_state)
        for k, s in enumerate(initial_state):
            np.testing.assert_allclose(state_grads[k], numeric_grad(objective, s), rtol=RTOL,
                                       atol=ATOL, err_msg=f"initial state {k}")


OPTIONS = ["last", "sequences", "go_backwards", "initial_state", "mask", "dropout", "no_bias",
           "activations"]


@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("cell", CELLS)
def test_layer_gradients(cell, option):
    rng = np.random.default_rng(100 + 10 * CELLS.index(cell) + OPTIONS.index(option))
    n, t, f, units = 3, 4, 3, 4
    x = rng.normal(size=(n, t, f))
    kw, call = {}, {}
    if option != "last":
        kw["return_sequences"] = True
    if option == "go_backwards":
        kw["go_backwards"] = True
    if option == "initial_state":
        kw["return_state"] = True
        call["initial_state"] = [rng.normal(size=(n, units))
                                 for _ in range(2 if cell == "LSTM" else 1)]
    if option == "mask":
        kw["go_backwards"] = True
        call["mask"] = _padding_mask(n, t)
    if option == "dropout":
        kw["dropout"] = 0.4
        call.update(training=True, seed=5)
    if option == "no_bias":
        kw["use_bias"] = False
    if option == "activations":
        kw["activation"] = "sigmoid"
        if cell != "SimpleRNN":
            kw["recurrent_activation"] = "tanh"
    layer = _make(cell, units, **kw)
    layer.forward(x)
    _random_weights(layer, rng)
    check_gradients(layer, x, rng, **call)


@pytest.mark.parametrize("activation", ["relu", "linear", "hard_sigmoid"])
def test_simple_rnn_activation_gradients(activation):
    rng = np.random.default_rng(31)
    x = rng.normal(size=(2, 3, 2))
    layer = _make("SimpleRNN", 3, activation=activation, return_sequences=True)
    layer.forward(x)
    _random_weights(layer, rng, scale=0.8)
    check_gradients(layer, x, rng)


def test_return_state_gradients_without_sequences():
    """return_state with the last output: the output and h_T are the same array, and the
    gradients of both (and of c_T) add up."""
    rng = np.random.default_rng(41)
    x = rng.normal(size=(2, 5, 3))
    layer = _make("LSTM", 3, return_state=True)
    layer.forward(x)
    _random_weights(layer, rng)
    check_gradients(layer, x, rng)


@pytest.mark.parametrize("merge_mode", ["concat", "sum", "ave", "mul"])
@pytest.mark.parametrize("return_sequences", [False, True], ids=["last", "seq"])
@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_bidirectional_gradients(cell, return_sequences, merge_mode):
    rng = np.random.default_rng(51)
    x = rng.normal(size=(2, 4, 3))
    layer = layers.Bidirectional(_make(cell, 3, return_sequences=return_sequences),
                                 merge_mode=merge_mode, dtype="float64")
    layer.forward(x)
    _random_weights(layer, rng)
    check_gradients(layer, x, rng, mask=_padding_mask(2, 4))


def test_bidirectional_matches_its_two_layers():
    rng = np.random.default_rng(52)
    x = rng.normal(size=(3, 5, 2))
    bi = layers.Bidirectional(_make("GRU", 4, return_sequences=True))
    out = bi.forward(x).copy()
    assert out.shape == (3, 5, 8) and out.dtype == np.float64
    ws = bi.get_weights()
    assert len(ws) == 6
    fwd_out, _ = reference_run("GRU", x, ws[:3], 4)
    bwd_out, _ = reference_run("GRU", x, ws[3:], 4, go_backwards=True)
    np.testing.assert_allclose(out[..., :4], fwd_out, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out[..., 4:], bwd_out[:, ::-1], rtol=1e-12, atol=1e-12)
    assert bi.backward_layer.go_backwards and not bi.forward_layer.go_backwards
    for mode, combine in [("sum", np.add), ("mul", np.multiply),
                          ("ave", lambda a, b: (a + b) / 2)]:
        other = layers.Bidirectional(_make("GRU", 4, return_sequences=True), merge_mode=mode)
        other.forward(x)
        other.set_weights(ws)
        np.testing.assert_allclose(other.forward(x), combine(fwd_out, bwd_out[:, ::-1]),
                                   rtol=1e-12, atol=1e-12)


def test_bidirectional_return_state_and_initial_state():
    rng = np.random.default_rng(53)
    x = rng.normal(size=(2, 3, 2))
    bi = layers.Bidirectional(_make("LSTM", 3, return_state=True))
    init = [rng.normal(size=(2, 3)) for _ in range(4)]
    out, hf, cf, hb, cb = bi.forward(x, initial_state=init)
    ws = bi.get_weights()
    ref_f, (rhf, rcf) = reference_run("LSTM", x, ws[:3], 3, initial_state=init[:2])
    ref_b, (rhb, rcb) = reference_run("LSTM", x, ws[3:], 3, go_backwards=True,
                                      initial_state=init[2:])
    np.testing.assert_allclose(out, np.concatenate([ref_f[:, -1], ref_b[:, -1]], axis=1),
                               rtol=1e-12, atol=1e-12)
    for got, want in [(hf, rhf), (cf, rcf), (hb, rhb), (cb, rcb)]:
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    check_gradients(bi, x, rng, initial_state=init)


def test_time_distributed_dense():
    rng = np.random.default_rng(61)
    x = rng.normal(size=(3, 4, 5))
    td = layers.TimeDistributed(layers.Dense(2, activation="tanh"), dtype="float64")
    out = td.forward(x)
    kernel, bias = td.get_weights()
    np.testing.assert_allclose(out, np.tanh(x @ kernel + bias), rtol=1e-12, atol=1e-12)
    assert td.compute_output_shape((4, 5)) == (4, 2)
    check_gradients(td, x, rng)


def test_time_distributed_after_lstm_in_a_model():
    rng = np.random.default_rng(62)
    model = cn.Sequential([layers.LSTM(4, return_sequences=True),
                           layers.TimeDistributed(layers.Dense(3)),
                           layers.LSTM(2), layers.Dense(1)], dtype="float64")
    model.compile(optimizer="sgd", loss="mse")
    x, y = rng.normal(size=(3, 5, 2)), rng.normal(size=(3, 1))
    _check_model_gradients(model, x, y)


def _check_model_gradients(model, x, y):
    _, grads = model.compute_gradients(x, y)
    live = [w for layer in model.layers for w in layer.weights]
    assert len(grads) == len(live)

    def objective():
        return model.compute_gradients(x, y)[0]

    for g, w in zip(grads, live):
        np.testing.assert_allclose(g, numeric_grad(objective, w), rtol=RTOL, atol=ATOL)


def test_model_gradients_embedding_bidirectional_gru():
    """Through a whole model: Embedding (mask_zero) -> Bidirectional GRU -> Dense softmax,
    fused cross-entropy; every weight against central differences."""
    rng = np.random.default_rng(63)
    ids = rng.integers(1, 6, size=(4, 5))
    ids[0, 3:] = 0
    ids[1, :1] = 0
    y = rng.integers(0, 3, size=4)
    model = cn.Sequential([layers.Embedding(6, 3, mask_zero=True),
                           layers.Bidirectional(layers.GRU(3)),
                           layers.Dense(3, activation="softmax")], dtype="float64")
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    _check_model_gradients(model, ids, y)


def test_gradients_land_in_the_model_flat_buffer():
    """The optimizer (and its clipping) sees the recurrent gradients: they are the model's
    flat gradient buffer."""
    rng = np.random.default_rng(64)
    model = cn.Sequential([layers.LSTM(3), layers.Dense(1)], dtype="float64")
    model.compile(optimizer="sgd", loss="mse")
    x, y = rng.normal(size=(4, 3, 2)), rng.normal(size=(4, 1))
    _, grads = model.compute_gradients(x, y)
    np.testing.assert_array_equal(model._grads, np.concatenate([g.ravel() for g in grads]))
    assert np.abs(model._grads[:model.layers[0]._count_trainable()]).sum() > 0


# ---------------------------------------------------------------------------------------
# masks
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("cell", CELLS)
def test_mask_skips_padding(cell):
    """A post-padded sample gives the output of its unpadded prefix; a pre-padded one
    starts from the initial state at its first real step."""
    rng = np.random.default_rng(71)
    x = rng.normal(size=(2, 6, 3))
    layer = _make(cell, 4)
    mask = np.ones((2, 6), bool)
    mask[0, 4:] = False
    mask[1, :2] = False
    out = layer.forward(x, mask=mask).copy()
    short = _make(cell, 4)
    short.forward(x[:1, :4])
    short.set_weights(layer.get_weights())
    np.testing.assert_allclose(out[0], short.forward(x[:1, :4])[0], rtol=1e-12, atol=1e-12)
    short2 = _make(cell, 4)
    short2.forward(x[1:, 2:])
    short2.set_weights(layer.get_weights())
    np.testing.assert_allclose(out[1], short2.forward(x[1:, 2:])[0], rtol=1e-12, atol=1e-12)


def test_embedding_mask_reaches_the_lstm_in_a_model():
    rng = np.random.default_rng(72)
    ids = rng.integers(1, 9, size=(3, 6))
    padded = ids.copy()
    padded[:, 4:] = 0
    model = cn.Sequential([layers.Embedding(9, 4, mask_zero=True), layers.LSTM(5)])
    full = model.predict(padded)
    model2 = cn.Sequential([layers.Embedding(9, 4), layers.LSTM(5)])
    model2.build((4,))
    model2.set_weights(model.get_weights())
    np.testing.assert_allclose(full, model2.predict(ids[:, :4]), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------
# PyTorch parity
# ---------------------------------------------------------------------------------------
def _torch_module(torch, cell, f, units, weights):
    """A torch.nn.RNN/LSTM/GRU (batch_first, float64) holding the Keras-layout weights."""
    def gru_order(a):  # Keras z, r, h -> PyTorch r, z, n (along the last axis)
        return np.concatenate([a[..., units:2 * units], a[..., :units], a[..., 2 * units:]],
                              axis=-1)
    kernel, rec, bias = weights
    mod = {"SimpleRNN": torch.nn.RNN, "LSTM": torch.nn.LSTM, "GRU": torch.nn.GRU}[cell](
        f, units, batch_first=True).double()
    if cell == "GRU":
        kernel, rec = gru_order(kernel), gru_order(rec)
        b_ih, b_hh = gru_order(bias[0]), gru_order(bias[1])
    else:
        b_ih, b_hh = bias, np.zeros_like(bias)
    with torch.no_grad():
        mod.weight_ih_l0.copy_(torch.from_numpy(np.ascontiguousarray(kernel.T)))
        mod.weight_hh_l0.copy_(torch.from_numpy(np.ascontiguousarray(rec.T)))
        mod.bias_ih_l0.copy_(torch.from_numpy(b_ih))
        mod.bias_hh_l0.copy_(torch.from_numpy(b_hh))
    return mod, gru_order


@pytest.mark.parametrize("go_backwards", [False, True], ids=["fwd", "bwd"])
@pytest.mark.parametrize("cell", CELLS)
def test_torch_parity(cell, go_backwards):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(81)
    n, t, f, units = 3, 7, 4, 5
    x = rng.normal(size=(n, t, f))
    layer = _make(cell, units, return_sequences=True, return_state=True,
                  go_backwards=go_backwards)
    init = [rng.normal(size=(n, units)) for _ in range(2 if cell == "LSTM" else 1)]
    layer.forward(x, initial_state=init)
    weights = _random_weights(layer, rng)
    out, *states = layer.forward(x, initial_state=init)
    g = rng.normal(size=out.shape)
    dx = layer.backward(g).copy()
    grads = layer.get_gradients()
    d_init = layer.initial_state_gradients

    mod, gru_order = _torch_module(torch, cell, f, units, weights)
    xt = torch.tensor(x[:, ::-1].copy() if go_backwards else x, requires_grad=True)
    h0 = [torch.tensor(s[None], requires_grad=True) for s in init]
    y_t, state_t = mod(xt, tuple(h0) if cell == "LSTM" else h0[0])
    (y_t * torch.from_numpy(g)).sum().backward()
    np.testing.assert_allclose(out, y_t.detach().numpy(), rtol=1e-10, atol=1e-12)
    state_t = state_t if cell == "LSTM" else (state_t,)
    for s, st in zip(states, state_t):
        np.testing.assert_allclose(s, st.detach().numpy()[0], rtol=1e-10, atol=1e-12)
    dx_t = xt.grad.numpy()
    np.testing.assert_allclose(dx, dx_t[:, ::-1] if go_backwards else dx_t, rtol=1e-9,
                               atol=1e-12)
    for d, h in zip(d_init, h0):
        np.testing.assert_allclose(d, h.grad.numpy()[0], rtol=1e-9, atol=1e-12)
    dk = mod.weight_ih_l0.grad.numpy().T
    dr = mod.weight_hh_l0.grad.numpy().T
    if cell == "GRU":  # PyTorch r, z, n -> Keras z, r, h is the same swap
        dk, dr = gru_order(dk), gru_order(dr)
        db = np.stack([gru_order(mod.bias_ih_l0.grad.numpy()),
                       gru_order(mod.bias_hh_l0.grad.numpy())])
    else:
        db = mod.bias_ih_l0.grad.numpy()
    for got, want in [(grads[0], dk), (grads[1], dr), (grads[2], db)]:
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_torch_parity_float32_training_step(cell):
    """float32 (the polynomial exp/tanh) against PyTorch's float32 on a longer sequence."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(82)
    n, t, f, units = 8, 30, 6, 16
    x = rng.normal(size=(n, t, f)).astype(np.float32)
    layer = getattr(layers, cell)(units, return_sequences=True)
    layer.forward(x)
    w64 = _random_weights(layer, rng, scale=0.3)
    out = layer.forward(x).astype(np.float64)
    g = rng.normal(size=out.shape)
    dx = layer.backward(g.astype(np.float32)).astype(np.float64)
    grads = layer.get_gradients()
    mod, gru_order = _torch_module(torch, cell, f, units,
                                   [w.astype(np.float32).astype(np.float64) for w in w64])
    mod = mod.float()
    xt = torch.tensor(x, requires_grad=True)
    y_t, _ = mod(xt)
    (y_t * torch.from_numpy(g.astype(np.float32))).sum().backward()
    np.testing.assert_allclose(out, y_t.detach().numpy(), rtol=1e-4, atol=2e-5)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-3, atol=1e-4)
    dr = mod.weight_hh_l0.grad.numpy().T
    if cell == "GRU":
        dr = gru_order(dr)
    np.testing.assert_allclose(grads[1], dr, rtol=1e-3, atol=2e-4)


# ---------------------------------------------------------------------------------------
# kernels, SIMD paths and threads
# ---------------------------------------------------------------------------------------
def test_float32_cell_activations_on_each_simd_path(isa):
    """The polynomial tanh / sigmoid stay within a few ulp of float64 math, NaN stays NaN."""
    x = np.concatenate([np.linspace(-100, 100, 20001), np.linspace(-2, 2, 20001),
                        [0.0, -0.0, 1e-30, 87.9, 88.8, -87.5, -104.0]]).astype(np.float32)
    out = np.empty_like(x)
    refs = {"tanh": np.tanh(x.astype(np.float64)),
            "sigmoid": 1 / (1 + np.exp(-x.astype(np.float64)))}
    for name, ref in refs.items():
        K.activation_forward(K.ACTIVATIONS[name], x, out)
        big = np.abs(ref) > 1e-30
        ulp = np.abs(out - ref)[big] / np.spacing(np.abs(ref[big]).astype(np.float32))
        assert ulp.max() <= 4, (name, ulp.max())
        assert np.abs(out - ref).max() <= 2e-7
        nan = np.array([np.nan], np.float32)
        K.activation_forward(K.ACTIVATIONS[name], nan, nan)
        assert np.isnan(nan[0])


def test_float32_layers_agree_across_simd_paths(isa):
    rng = np.random.default_rng(91)
    x = rng.normal(size=(4, 6, 3)).astype(np.float32)
    for cell in CELLS:
        cn.set_seed(3)
        layer = getattr(layers, cell)(8, return_sequences=True)
        out = layer.forward(x).astype(np.float64)
        ref, _ = reference_run(cell, x.astype(np.float64),
                               [w.astype(np.float64) for w in layer.get_weights()], 8)
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=2e-6, err_msg=f"{cell} on {isa}")


@pytest.mark.parametrize("n", [13, 40])
def test_float32_fused_rows_on_ragged_batches_and_wide_inputs(isa, kernel_threads, n):
    """The fused LSTM / GRU rows (AVX2: 8 samples at a time, the rest one by one) with
    pre-activations from about -40 to 40 (saturated gates and states) match float64 (to
    the float32 GEMM's rounding of such large sums)."""
    rng = np.random.default_rng(93)
    units, t, f = 40, 4, 6
    x = rng.normal(scale=3.0, size=(n, t, f))
    for cell in CELLS:
        layer = getattr(layers, cell)(units, return_sequences=True, dtype="float32")
        layer.build((t, f))
        ws = _random_weights(layer, np.random.default_rng(7), scale=2.0)
        out = layer.forward(x.astype(np.float32)).astype(np.float64)
        ref, _ = reference_run(cell, x, ws, units)
        assert np.abs(ref).max() > 0.999
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=2e-5,
                                   err_msg=f"{cell} on {isa}, {kernel_threads} threads")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_sums_and_step_weights(dtype, kernel_threads):
    rng = np.random.default_rng(94)
    for rows, cols in [(0, 5), (3, 0), (7, 1), (37, 13), (512, 1600)]:
        m = rng.normal(size=(rows, cols)).astype(dtype)
        out = np.full(rows, np.nan, dtype)
        K.row_sums(m, out)
        np.testing.assert_allclose(out, m.astype(np.float64).sum(axis=1),
                                   rtol=1e-5 if dtype == np.float32 else 1e-12,
                                   atol=1e-4 if dtype == np.float32 else 1e-12)
    with pytest.raises(ValueError, match="out"):
        K.row_sums(np.zeros((3, 4), dtype), np.zeros(2, dtype))
    for h, f, g in [(5, 3, 20), (61, 11, 183), (128, 32, 512)]:
        kernel, rec = rng.normal(size=(f, g)).astype(dtype), rng.normal(size=(h, g)).astype(dtype)
        b = rng.normal(size=g).astype(dtype)
        for bias, bias_rec in [(b, None), (None, b), (b, b[::-1].copy())]:
            out = np.full((g, h + f + 2), np.nan, dtype)
            K.step_weights(kernel, rec, bias, bias_rec, out)
            zero = np.zeros((g, 1), dtype)
            want = np.concatenate([rec.T, zero if bias_rec is None else bias_rec[:, None],
                                   kernel.T, zero if bias is None else bias[:, None]], axis=1)
            np.testing.assert_array_equal(out, want)


def test_kernels_check_their_buffers():
    f = np.float32
    t, n, h, feat = 3, 2, 4, 5
    ok = {"xf": np.zeros((feat, t * n), f), "weights": np.zeros((4 * h, h + feat + 2), f),
          "gates": np.zeros((t, 4 * h, n), f), "h": np.zeros((h, t + 1, n), f),
          "c": np.zeros((t + 1, h, n), f), "act_c": np.zeros((t, h, n), f)}
    K.lstm_forward(**ok)
    rings = {"gates": np.zeros((1, 4 * h, n), f), "h": np.zeros((h, 2, n), f),
             "c": np.zeros((2, h, n), f), "act_c": np.zeros((1, h, n), f)}
    K.lstm_forward(**{**ok, **rings})
    for name, bad in [("gates", np.zeros((t, 3 * h, n), f)), ("gates", np.zeros((2, 4 * h, n), f)),
                      ("h", np.zeros((h, t, n), f)), ("c", np.zeros((t, h, n), f)),
                      ("weights", np.zeros((4 * h, h + feat), f)),
                      ("xf", np.zeros((feat, t * n + 1), f)),
                      ("act_c", np.zeros((t, h, n + 1), f))]:
        with pytest.raises(ValueError, match=name):
            K.lstm_forward(**{**ok, name: bad})
    with pytest.raises(ValueError, match="out"):
        K.step_weights(np.zeros((feat, 4 * h), f), np.zeros((h, 4 * h), f), None, None,
                       np.zeros((4 * h, h + feat + 1), f))
    with pytest.raises(ValueError, match="mask"):
        K.lstm_forward(**ok, mask=np.ones((n, t), np.uint8))
    with pytest.raises(ValueError, match="activation"):
        K.lstm_forward(**ok, activation=99)
    with pytest.raises(ValueError, match="dy"):
        K.gru_backward(np.zeros((t, 3 * h, n), f), np.zeros((t, h, n), f),
                       np.zeros((h, t + 1, n), f), np.zeros((h, 3 * h), f), np.zeros((h, n), f),
                       np.zeros((3 * h, t * n), f), np.zeros((3 * h, t * n), f),
                       np.zeros((3 * h, n), f), dy=np.zeros((h, t, n + 1), f))
    with pytest.raises(ValueError, match="out"):
        K.to_feature_major(np.zeros((n, t, 3), f), np.zeros((3, t * n + 1), f))
    with pytest.raises(ValueError, match="out"):
        K.states_to_batch_major(np.zeros((h, t + 1, n), f), np.zeros((n, t + 1, h), f))


@pytest.mark.parametrize("cell", CELLS)
def test_one_and_two_threads_agree(cell, kernel_threads):
    """Large enough for the cells and GEMMs to run in parallel on 2 threads."""
    rng = np.random.default_rng(95)
    x = rng.normal(size=(32, 5, 16)).astype(np.float32)
    g = rng.normal(size=(32, 5, 64)).astype(np.float32)

    def run():
        cn.set_seed(9)
        layer = getattr(layers, cell)(64, return_sequences=True, dropout=0.2)
        out = layer.forward(x, training=True).copy()
        dx = layer.backward(g).copy()
        return [out, dx] + layer.get_gradients()

    got = run()
    cn.set_num_threads(1)
    want = run()
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("cell", CELLS)
def test_threaded_sequence_loop_on_odd_sizes(cell, dtype, restore_threads):
    """The one-region sequence loop split over 2 threads (61 units: not a multiple of the
    micro-kernel's MR or NR; 19 samples: a ragged last sliver) matches the float64
    reference, and its gradients match the 1-thread run, with a mask, an initial state,
    go_backwards and every step's output."""
    rng = np.random.default_rng(97)
    units, n, t, f = 61, 19, 5, 11
    x = rng.normal(size=(n, t, f))
    g = rng.normal(size=(n, t, units))
    mask = _padding_mask(n, t)
    states = [rng.normal(size=(n, units)) for _ in range(2 if cell == "LSTM" else 1)]
    tol = {"rtol": 1e-4, "atol": 2e-5} if dtype == "float32" else {"rtol": 1e-10,
                                                                    "atol": 1e-12}

    def run(threads):
        cn.set_num_threads(threads)
        layer = getattr(layers, cell)(units, return_sequences=True, go_backwards=True,
                                      dtype=dtype)
        layer.build((t, f))
        ws = _random_weights(layer, np.random.default_rng(5), scale=0.3)
        out = layer.forward(x.astype(dtype), training=True, initial_state=states,
                            mask=mask).copy()
        dx = layer.backward(g.astype(dtype)).copy()
        return ws, [out, dx] + layer.get_gradients() + list(layer.initial_state_gradients)

    ws, two = run(2)
    _, one = run(1)
    ref, _ = reference_run(cell, x, ws, units, go_backwards=True, initial_state=states,
                           mask=mask)
    np.testing.assert_allclose(two[0], ref, **tol)
    for a, b in zip(two, one):
        np.testing.assert_allclose(a, b, **tol)


@pytest.mark.parametrize("return_sequences", [False, True], ids=["last", "seq"])
@pytest.mark.parametrize("cell", CELLS)
def test_inference_rings_and_replayed_backward(cell, return_sequences, kernel_threads):
    """Outside training the layer keeps rings of states only: the outputs and final states
    are those of a training run, and a backward after it (replayed in full) gives the
    same gradients."""
    rng = np.random.default_rng(98)
    units, n, t, f = 40, 24, 7, 9
    x = rng.normal(size=(n, t, f))
    g = rng.normal(size=(n, t, units) if return_sequences else (n, units))
    mask = _padding_mask(n, t)
    states = [rng.normal(size=(n, units)) for _ in range(2 if cell == "LSTM" else 1)]
    layer = _make(cell, units, return_sequences=True if return_sequences else False,
                  return_state=True)
    layer.build((t, f))
    _random_weights(layer, rng, scale=0.3)
    results = []
    for training in (True, False):
        outs = [o.copy() for o in layer.forward(x, training=training, initial_state=states,
                                               mask=mask)]
        dx = layer.backward(g).copy()
        results.append(outs + [dx] + layer.get_gradients()
                       + list(layer.initial_state_gradients))
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("n", [19, 48])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gru_inference_path_matches_training_run(isa, kernel_threads, dtype, n):
    """The GRU inference loop (fused per sliver, no gates kept) gives the outputs and
    final state of a training run: default activations (AVX2 rows on full slivers, the
    scalar rows on ragged ones and with a mask), other activations, a mask, go_backwards,
    61 units (not a multiple of MR), saturated pre-activations."""
    rng = np.random.default_rng(99)
    units, t, f = 61, 6, 11
    x = rng.normal(scale=2.0, size=(n, t, f)).astype(dtype)
    mask = _padding_mask(n, t)
    state = [rng.normal(size=(n, units)).astype(dtype)]
    tol = {"rtol": 1e-5, "atol": 2e-6} if dtype == "float32" else {"rtol": 1e-12,
                                                                    "atol": 1e-13}
    for kw in ({}, {"activation": "relu", "recurrent_activation": "hard_sigmoid"}):
        for seqs, back, m in ((False, False, None), (True, True, None), (True, False, mask)):
            layer = layers.GRU(units, return_sequences=seqs, go_backwards=back,
                               return_state=True, dtype=dtype, **kw)
            layer.build((t, f))
            _random_weights(layer, np.random.default_rng(8), scale=1.0)
            outs = [[o.copy() for o in layer.forward(x, training=training,
                                                     initial_state=state, mask=m)]
                    for training in (True, False)]
            for a, b in zip(*outs):
                np.testing.assert_allclose(b, a, **tol, err_msg=f"{kw} {seqs} {back} {isa}")


# ---------------------------------------------------------------------------------------
# learning real sequence tasks (1 thread: the results do not depend on it, and a shared
# machine's busy second core would only slow the suite down)
# ---------------------------------------------------------------------------------------
def _adam(lr):
    return cn.optimizers.Adam(learning_rate=lr, clipnorm=1.0)


@pytest.fixture
def one_thread(restore_threads):
    cn.set_num_threads(1)


def _fit_until(model, x, y, xv, yv, metric, goal, max_epochs, batch_size=32):
    """Train epoch by epoch until the validation `metric` reaches `goal`; the history."""
    history = []
    for _ in range(max_epochs):
        model.fit(x, y, epochs=1, batch_size=batch_size, verbose=0)
        value = model.evaluate(xv, yv)[metric]
        history.append(value)
        if (value < goal) if metric == "loss" else (value > goal):
            break
    return history


def adding_problem(n, t, rng):
    """Two channels: uniform values and a marker (1 at one step in each half); the target
    is the sum of the two marked values (Hochreiter & Schmidhuber, 1997)."""
    values = rng.uniform(0, 1, size=(n, t))
    marks = np.zeros((n, t))
    marks[np.arange(n), rng.integers(0, t // 2, n)] = 1
    marks[np.arange(n), rng.integers(t // 2, t, n)] = 1
    x = np.stack([values, marks], axis=-1).astype(np.float32)
    return x, (values * marks).sum(axis=1, keepdims=True).astype(np.float32)


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_learns_the_adding_problem(cell, one_thread):
    rng = np.random.default_rng(0)
    x, y = adding_problem(2000, 50, rng)
    xv, yv = adding_problem(500, 50, rng)
    cn.set_seed(0)
    model = cn.Sequential([getattr(layers, cell)(32), layers.Dense(1)])
    model.compile(optimizer=_adam(0.01), loss="mse")
    # predicting the mean (1.0) scores about 1/6
    history = _fit_until(model, x, y, xv, yv, "loss", 0.01, max_epochs=30)
    assert history[-1] < 0.01, history


def test_learns_next_value_of_a_noisy_sine(one_thread):
    rng = np.random.default_rng(1)
    t = np.arange(4000)
    series = np.sin(0.07 * t) + 0.5 * np.sin(0.023 * t) + rng.normal(scale=0.05, size=t.size)
    window = 20
    idx = np.arange(len(series) - window)
    x = series[idx[:, None] + np.arange(window)][..., None].astype(np.float32)
    y = series[idx + window][:, None].astype(np.float32)
    x_train, y_train, x_val, y_val = x[:3000], y[:3000], x[3000:], y[3000:]
    persistence = float(np.mean((x_val[:, -1] - y_val) ** 2))  # "next = last": ~0.008
    cn.set_seed(1)
    model = cn.Sequential([layers.SimpleRNN(16), layers.Dense(1)])
    model.compile(optimizer=_adam(0.01), loss="mse")
    # the series' variance is ~0.6, the noise's 0.0025
    goal = 0.7 * persistence
    history = _fit_until(model, x_train, y_train, x_val, y_val, "loss", goal, max_epochs=20)
    assert history[-1] < goal, (persistence, history)


def token_majority(n, length, rng):
    """Variable-length token sequences (ids 1..9, zero-padded at the end); the class is
    whichever of the tokens 1, 2, 3 occurs most often (ties broken towards the smaller)."""
    x = np.zeros((n, length), np.int64)
    y = np.zeros(n, np.int64)
    for i in range(n):
        size = rng.integers(6, length + 1)
        seq = rng.integers(1, 10, size)
        x[i, :size] = seq
        y[i] = int(np.argmax([np.sum(seq == k) for k in (1, 2, 3)]))
    return x, y


def test_learns_sequence_classification(one_thread):
    rng = np.random.default_rng(2)
    x, y = token_majority(3000, 20, rng)
    xv, yv = token_majority(500, 20, rng)
    cn.set_seed(2)
    model = cn.Sequential([layers.Embedding(10, 8, mask_zero=True),
                           layers.Bidirectional(layers.GRU(16)),
                           layers.Dense(3, activation="softmax")])
    model.compile(optimizer=_adam(0.01), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    history = _fit_until(model, x, y, xv, yv, "accuracy", 0.9, max_epochs=25)
    assert history[-1] > 0.9, history


# ---------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("cell", CELLS)
def test_two_dimensional_input_is_refused(cell):
    layer = getattr(layers, cell)(4)
    with pytest.raises(ValueError, match=r"3-D input x \(batch, timesteps, features\)"):
        layer.forward(np.zeros((5, 3)))
    model = cn.Sequential([getattr(layers, cell)(4)])
    with pytest.raises(ValueError, match="3-D input x"):
        model.predict(np.zeros((5, 3)))
    with pytest.raises(ValueError, match="3-D input x"):
        layers.Bidirectional(getattr(layers, cell)(4)).forward(np.zeros((5, 3)))


@pytest.mark.parametrize("cell", CELLS)
def test_feature_count_must_match_the_built_layer(cell):
    layer = getattr(layers, cell)(4)
    layer.forward(np.zeros((2, 3, 5)))
    with pytest.raises(ValueError, match="built for 5 features per step; x has 6"):
        layer.forward(np.zeros((2, 3, 6)))
    # other sequence lengths are fine outside a model
    assert layer.forward(np.zeros((2, 7, 5))).shape == (2, 4)


def test_bad_arguments():
    x = np.zeros((2, 3, 4))
    with pytest.raises(ValueError, match="units"):
        layers.LSTM(0)
    with pytest.raises(ValueError, match="activation"):
        layers.GRU(3, activation="softmax")
    with pytest.raises(ValueError, match="recurrent_activation"):
        layers.LSTM(3, recurrent_activation="gelu")
    with pytest.raises(ValueError, match="dropout"):
        layers.SimpleRNN(3, dropout=1.0)
    with pytest.raises(ValueError, match="reset_after"):
        layers.GRU(3, reset_after=False)
    with pytest.raises(TypeError, match="return_sequences"):
        layers.LSTM(3, return_sequences="yes")
    lstm = layers.LSTM(3)
    with pytest.raises(ValueError, match="initial_state must be a list of 2"):
        lstm.forward(x, initial_state=[np.zeros((2, 3))])
    with pytest.raises(ValueError, match=r"initial_state \(c\) must have shape \(2, 3\)"):
        lstm.forward(x, initial_state=[np.zeros((2, 3)), np.zeros((2, 4))])
    with pytest.raises(ValueError, match="mask must have shape"):
        lstm.forward(x, mask=np.ones((2, 4)))
    with pytest.raises(TypeError, match="x must hold real numbers"):
        lstm.forward(np.array([[["a"]]]))
    with pytest.raises(ValueError, match="grad_output must have shape"):
        lstm.forward(x)
        lstm.backward(np.zeros((2, 4)))
    with pytest.raises(TypeError, match="recurrent layer"):
        layers.Bidirectional(layers.Dense(3))
    with pytest.raises(ValueError, match="merge_mode"):
        layers.Bidirectional(layers.LSTM(3), merge_mode="max")
    with pytest.raises(ValueError, match="opposite go_backwards"):
        layers.Bidirectional(layers.LSTM(3), backward_layer=layers.LSTM(3))
    with pytest.raises(ValueError, match="at least 3 dimensions"):
        layers.TimeDistributed(layers.Dense(2)).forward(np.zeros((4, 3)))
    with pytest.raises(TypeError, match="Layer"):
        layers.TimeDistributed("dense")
