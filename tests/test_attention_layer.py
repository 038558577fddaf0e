"""layers.MultiHeadAttention: finite differences, Keras 3 and PyTorch parity, graphs with
padding masks, saving, bad input."""
import os

import numpy as np
import pytest

import cyneuron as cn
from cyneuron import layers


def _fd_layer(layer, inputs, call, w, eps=1e-6, rtol=1e-5, atol=1e-7):
    """Check backward's input and weight gradients against central differences."""
    out = call()
    grads_in = layer.backward(w)
    grads_w = layer.get_gradients()
    assert len(grads_in) == len(inputs)

    def loss():
        return float((call() * w).sum())
    for arrays, grads in ((inputs, grads_in), (layer.weights, grads_w)):
        for a, g in zip(arrays, grads):
            flat = a.reshape(-1)
            idx = np.random.default_rng(0).choice(flat.size, min(flat.size, 25), replace=False)
            for i in idx:
                old = flat[i]
                flat[i] = old + eps
                up = loss()
                flat[i] = old - eps
                down = loss()
                flat[i] = old
                np.testing.assert_allclose(g.reshape(-1)[i], (up - down) / (2 * eps),
                                           rtol=rtol, atol=atol)
    return out


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("with_key", [False, True])
def test_finite_differences(causal, with_key):
    rng = np.random.default_rng(0)
    mha = layers.MultiHeadAttention(2, 3, value_dim=4, output_shape=5, dtype="float64",
                                    bias_initializer="random_normal")
    q = rng.standard_normal((2, 6, 4))
    v = rng.standard_normal((2, 6 if causal else 7, 3))
    k = rng.standard_normal(v.shape[:2] + (5,)) if with_key else None
    vmask = np.ones(v.shape[:2], bool)
    vmask[0, -2:] = False
    am = rng.random((2, 6, v.shape[1])) > 0.2
    inputs = [q, v] + ([k] if with_key else [])

    def call():
        return mha(q, v, key=k, attention_mask=am, use_causal_mask=causal, value_mask=vmask)
    out = _fd_layer(mha, inputs, call, rng.standard_normal((2, 6, 5)))
    assert out.shape == (2, 6, 5)


def test_self_attention_gradient_sums_both_paths():
    """mha(x, x): the input gradient is the sum of the query and key/value paths."""
    rng = np.random.default_rng(1)
    mha = layers.MultiHeadAttention(2, 4, dtype="float64")
    x = rng.standard_normal((2, 5, 6))
    w = rng.standard_normal((2, 5, 6))
    mha(x, x)
    dq, dv = mha.backward(w)
    eps = 1e-6
    num = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + eps
        up = float((mha(x, x) * w).sum())
        x[i] = old - eps
        down = float((mha(x, x) * w).sum())
        x[i] = old
        num[i] = (up - down) / (2 * eps)
    np.testing.assert_allclose(dq + dv, num, rtol=1e-5, atol=1e-8)


@pytest.fixture
def keras():
    os.environ.setdefault("KERAS_BACKEND", "jax")
    return pytest.importorskip("keras")


def test_keras_parity(keras):
    rng = np.random.default_rng(2)
    q = rng.standard_normal((3, 6, 8)).astype(np.float32)
    v = rng.standard_normal((3, 9, 5)).astype(np.float32)
    k = rng.standard_normal((3, 9, 7)).astype(np.float32)
    for kwargs in ({}, {"value_dim": 6, "output_shape": 10}):
        km = keras.layers.MultiHeadAttention(4, 3, **kwargs)
        want, want_scores = km(q, v, key=k, return_attention_scores=True)
        mha = layers.MultiHeadAttention(4, 3, **kwargs)
        mha(q, v, key=k)
        mha.set_weights([np.asarray(w) for w in km.get_weights()])
        got, scores = mha(q, v, key=k, return_attention_scores=True)
        np.testing.assert_allclose(got, np.asarray(want), atol=2e-5)
        np.testing.assert_allclose(scores, np.asarray(want_scores), atol=2e-6)
    # masks: an explicit mask, the causal mask and padding masks (padded query rows
    # differ by convention: Keras averages over all keys, cyneuron outputs the bias)
    km = keras.layers.MultiHeadAttention(2, 4)
    mha = layers.MultiHeadAttention(2, 4)
    x = rng.standard_normal((3, 7, 8)).astype(np.float32)
    km(x, x)
    mha(x, x)
    mha.set_weights([np.asarray(w) for w in km.get_weights()])
    am = rng.random((3, 7, 7)) > 0.3
    for b in range(3):                # every query sees a key (rows that see none are
        np.fill_diagonal(am[b], True)  # zeros in cyneuron, a uniform average in Keras)
    np.testing.assert_allclose(mha(x, x, attention_mask=am, use_causal_mask=True),
                               np.asarray(km(x, x, attention_mask=am, use_causal_mask=True)),
                               atol=2e-5)
    pad = np.ones((3, 7), bool)
    pad[1, 4:] = False
    pad[2, 6:] = False
    want = np.asarray(km(x, x, query_mask=pad, value_mask=pad))
    got = mha(x, x, query_mask=pad, value_mask=pad)
    np.testing.assert_allclose(got[pad], want[pad], atol=2e-5)


def test_torch_multihead_attention_parity():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    E, H, B, T = 12, 3, 2, 9
    tm = torch.nn.MultiheadAttention(E, H, batch_first=True, dtype=torch.float64)
    x = rng.standard_normal((B, T, E))
    kpm = np.zeros((B, T), bool)
    kpm[1, -3:] = True                                  # torch: True = ignore this key
    tx = torch.tensor(x, requires_grad=True)
    want, _ = tm(tx, tx, tx, key_padding_mask=torch.tensor(kpm), need_weights=False)
    w = rng.standard_normal(want.shape)
    want.backward(torch.tensor(w))
    mha = layers.MultiHeadAttention(H, E // H, dtype="float64")
    mha(x, x)
    Win = tm.in_proj_weight.detach().numpy()
    bin_ = tm.in_proj_bias.detach().numpy()
    weights = []
    for i in range(3):
        weights += [Win[i * E:(i + 1) * E].T.reshape(E, H, E // H),
                    bin_[i * E:(i + 1) * E].reshape(H, E // H)]
    weights += [tm.out_proj.weight.detach().numpy().T.reshape(H, E // H, E),
                tm.out_proj.bias.detach().numpy()]
    mha.set_weights(weights)
    got = mha(x, x, value_mask=~kpm)
    np.testing.assert_allclose(got, want.detach().numpy(), atol=1e-12)
    dq, dv = mha.backward(w)
    np.testing.assert_allclose(dq + dv, tx.grad.numpy(), atol=1e-12)
    dWq = mha.get_gradients()[0]
    np.testing.assert_allclose(dWq, tm.in_proj_weight.grad.numpy()[:E].T.reshape(E, H, E // H),
                               atol=1e-12)


def test_in_a_graph_with_embedding_padding_masks():
    rng = np.random.default_rng(4)
    tokens = cn.Input(shape=(8,), dtype="int32")
    emb = layers.Embedding(20, 16, mask_zero=True)(tokens)
    att = layers.MultiHeadAttention(4, 4, name="mha")(emb, emb, use_causal_mask=True)
    x = layers.Add()([emb, att])
    x = layers.LayerNormalization()(x)
    out = layers.Dense(20)(x)
    model = cn.Model(tokens, out)
    ids = rng.integers(1, 20, (5, 8))
    ids[0, 5:] = 0
    ids[3, 2:] = 0
    model.compile(optimizer="adam", loss=cn.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    y = model.predict(ids)
    # padding: the same as running the layers by hand with the padding mask
    mha = model.get_layer("mha") if hasattr(model, "get_layer") else \
        [layer for layer in model.layers if layer.name == "mha"][0]
    e = np.asarray(model.layers[1].forward(ids))
    pad = ids != 0
    ref = mha(e, e, use_causal_mask=True, query_mask=pad, value_mask=pad)
    h = model.layers[3].forward([e, ref])
    want = model.layers[5].forward(model.layers[4].forward(h))
    np.testing.assert_allclose(y, want, atol=1e-5)
    # a padded key changes nothing for the others
    ids2 = ids.copy()
    ids2[0, 6] = 7            # a token behind the padding is still padding (mask 0 at 5)
    ids3 = ids.copy()
    ids3[0, 5:] = 0
    assert np.allclose(model.predict(ids3)[0, :5], y[0, :5], atol=1e-6)
    loss0 = model.evaluate(ids, ids, verbose=0)["loss"]
    model.fit(ids, ids, epochs=30, batch_size=5, verbose=0)
    assert model.evaluate(ids, ids, verbose=0)["loss"] < loss0


def test_cross_attention_graph_trains_and_saves(tmp_path):
    rng = np.random.default_rng(5)
    a = cn.Input(shape=(6, 5))
    b = cn.Input(shape=(9, 7))
    m = cn.Input(shape=(6, 9))
    y = layers.MultiHeadAttention(2, 3, output_shape=4)(a, b, attention_mask=m)
    model = cn.Model([a, b, m], y)
    model.compile(optimizer="adam", loss="mse")
    xa = rng.standard_normal((10, 6, 5)).astype(np.float32)
    xb = rng.standard_normal((10, 9, 7)).astype(np.float32)
    xm = (rng.random((10, 6, 9)) > 0.3).astype(np.float32)
    target = rng.standard_normal((10, 6, 4)).astype(np.float32)
    loss, grads = model.compute_gradients([xa, xb, xm], target)
    assert len(grads) == 8 and all(np.all(np.isfinite(g)) for g in grads)
    model.fit([xa, xb, xm], target, epochs=3, verbose=0)
    path = tmp_path / "mha.cyn"
    model.save(path)
    loaded = cn.load_model(path)
    np.testing.assert_allclose(loaded.predict([xa, xb, xm]), model.predict([xa, xb, xm]),
                               atol=1e-6)


def test_dropout_only_while_training():
    rng = np.random.default_rng(6)
    mha = layers.MultiHeadAttention(2, 4, dropout=0.5, seed=3)
    x = rng.standard_normal((2, 10, 8)).astype(np.float32)
    a = mha(x, x).copy()
    np.testing.assert_array_equal(mha(x, x), a)
    t1 = mha(x, x, training=True).copy()
    t2 = mha(x, x, training=True).copy()
    assert not np.allclose(t1, a) and not np.allclose(t1, t2)


def test_bad_input():
    with pytest.raises(ValueError, match="num_heads"):
        layers.MultiHeadAttention(0, 4)
    with pytest.raises(ValueError, match="key_dim"):
        layers.MultiHeadAttention(2, -1)
    with pytest.raises(ValueError, match="value_dim"):
        layers.MultiHeadAttention(2, 4, value_dim=0)
    with pytest.raises(ValueError, match="dropout"):
        layers.MultiHeadAttention(2, 4, dropout=1.5)
    mha = layers.MultiHeadAttention(2, 4)
    x = np.zeros((2, 5, 6), np.float32)
    mha(x, x)
    with pytest.raises(ValueError, match="query"):
        mha(np.zeros((2, 5, 7), np.float32), x)
    with pytest.raises(ValueError, match="value"):
        mha(x, np.zeros((2, 5, 3), np.float32))
    with pytest.raises(ValueError, match="attention_mask"):
        mha(x, x, attention_mask=np.ones((2, 4, 5), bool))
    with pytest.raises(ValueError, match="query"):
        mha(np.zeros((2, 6)), x)
    with pytest.raises(TypeError, match="value"):
        mha(x)
    a = cn.Input(shape=(5, 6))
    with pytest.raises(ValueError, match="query"):
        mha(cn.Input(shape=(5, 3)), a)
    with pytest.raises(ValueError, match="attention_mask"):
        mha(a, a, attention_mask=cn.Input(shape=(4, 4)))
