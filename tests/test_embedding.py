"""Embedding: lookup and scatter-add gradient against numpy, float64 finite differences,
the padding mask, threads, PyTorch parity, and bad token ids."""
import numpy as np
import pytest

import cyneuron as cn
from cyneuron import layers
from cyneuron._kernels import recurrent as K


def test_lookup_and_gradient_match_numpy():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 7, size=(4, 5))
    layer = layers.Embedding(7, 3, dtype="float64")
    out = layer.forward(ids)
    table = layer.get_weights()[0]
    assert out.shape == (4, 5, 3) and out.dtype == np.float64
    np.testing.assert_array_equal(out, table[ids])
    g = rng.normal(size=out.shape)
    dx = layer.backward(g)
    expected = np.zeros_like(table)
    np.add.at(expected, ids.reshape(-1), g.reshape(-1, 3))
    np.testing.assert_allclose(layer.get_gradients()[0], expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(dx, np.zeros(ids.shape))  # ids get no gradient


def test_gradient_finite_differences():
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 5, size=(3, 4))
    layer = layers.Embedding(5, 2, dtype="float64")
    out = layer.forward(ids)
    g = rng.normal(size=out.shape)
    layer.backward(g)
    grad = layer.get_gradients()[0]
    table = layer.weights[0]
    num = np.zeros_like(table)
    for i in range(table.size):
        orig = table.flat[i]
        table.flat[i] = orig + 1e-6
        plus = np.sum(g * layer.forward(ids))
        table.flat[i] = orig - 1e-6
        minus = np.sum(g * layer.forward(ids))
        table.flat[i] = orig
        num.flat[i] = (plus - minus) / 2e-6
    np.testing.assert_allclose(grad, num, rtol=1e-6, atol=1e-9)


def test_float_ids_holding_integers_are_accepted():
    layer = layers.Embedding(4, 2)
    a = layer.forward(np.array([[0, 3, 1]])).copy()
    b = layer.forward(np.array([[0.0, 3.0, 1.0]], dtype=np.float32))
    np.testing.assert_array_equal(a, b)
    assert b.dtype == np.float32


def test_default_initializer_and_config():
    layer = layers.Embedding(50, 8)
    layer.forward(np.zeros((1, 2), int))
    w = layer.get_weights()[0]
    assert w.shape == (50, 8) and np.abs(w).max() <= 0.05 and w.std() > 0.01
    assert layer.get_config() == {"name": layer.name, "input_dim": 50, "output_dim": 8,
                                  "embeddings_initializer": "random_uniform", "mask_zero": False}
    assert layers.Embedding(3, 2, embeddings_initializer="zeros").compute_output_shape((7,)) \
        == (7, 2)


def test_mask_zero_carries_a_mask():
    ids = np.array([[3, 1, 0, 0], [0, 2, 2, 1]])
    layer = layers.Embedding(4, 2, mask_zero=True)
    out = layer.forward(ids)
    np.testing.assert_array_equal(out._keras_mask, ids != 0)
    np.testing.assert_array_equal(layer.compute_mask(ids), ids != 0)
    assert getattr(out + 1, "_keras_mask", None) is None  # derived arrays do not inherit it
    assert getattr(layers.Embedding(4, 2).forward(ids), "_keras_mask", None) is None


def test_in_a_model_with_training():
    rng = np.random.default_rng(2)
    ids = rng.integers(0, 10, size=(64, 6))
    y = (ids == 3).any(axis=1).astype(int)
    cn.set_seed(0)
    model = cn.Sequential([layers.Embedding(10, 4), layers.LSTM(8),
                           layers.Dense(2, activation="softmax")])
    model.compile(optimizer=cn.optimizers.SGD(0.5, momentum=0.9),
                  loss="sparse_categorical_crossentropy")
    model.build((6,))
    before = model.get_weights()[0].copy()
    hist = model.fit(ids, y, epochs=30, batch_size=16, verbose=0).history["loss"]
    assert hist[-1] < hist[0]
    changed = np.abs(model.get_weights()[0] - before).sum(axis=1) > 0
    np.testing.assert_array_equal(changed, np.isin(np.arange(10), ids))  # only rows used


def test_one_and_two_threads_agree(kernel_threads):
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 300, size=(64, 50))
    g = rng.normal(size=(64, 50, 40)).astype(np.float32)
    cn.set_seed(1)
    layer = layers.Embedding(300, 40)
    out = layer.forward(ids).copy()
    layer.backward(g)
    grad = layer.get_gradients()[0]
    expected = np.zeros((300, 40), np.float32)
    np.add.at(expected, ids.reshape(-1), g.reshape(-1, 40))
    np.testing.assert_array_equal(out, layer.get_weights()[0][ids])
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-5)


def test_torch_parity():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    ids = rng.integers(0, 9, size=(5, 7))
    layer = layers.Embedding(9, 3, dtype="float64")
    out = layer.forward(ids)
    emb = torch.nn.Embedding(9, 3).double()
    with torch.no_grad():
        emb.weight.copy_(torch.from_numpy(layer.get_weights()[0]))
    t_out = emb(torch.from_numpy(ids))
    np.testing.assert_allclose(out, t_out.detach().numpy(), rtol=0, atol=0)
    g = rng.normal(size=out.shape)
    layer.backward(g)
    (t_out * torch.from_numpy(g)).sum().backward()
    np.testing.assert_allclose(layer.get_gradients()[0], emb.weight.grad.numpy(), rtol=1e-12,
                               atol=1e-12)


@pytest.mark.parametrize("bad, message", [
    (np.array([[0, 1.5]]), r"x \(token ids\) must hold integers; got 1.5"),
    (np.array([[0, np.nan]]), r"x \(token ids\) contains NaN"),
    (np.array([[0, 5]]), r"x \(token ids\) must lie in \[0, input_dim=5\); got ids from 0 to 5"),
    (np.array([[-1, 2]]), r"must lie in \[0, input_dim=5\); got ids from -1 to 2"),
])
def test_bad_token_ids(bad, message):
    layer = layers.Embedding(5, 2)
    with pytest.raises(ValueError, match=message):
        layer.forward(bad)
    model = cn.Sequential([layers.Embedding(5, 2), layers.LSTM(2)])
    with pytest.raises(ValueError, match=r"x (\(token ids\) |contains NaN)"):
        model.predict(bad)


def test_bad_arguments_and_shapes():
    with pytest.raises(ValueError, match="input_dim"):
        layers.Embedding(0, 3)
    with pytest.raises(ValueError, match="output_dim"):
        layers.Embedding(3, -1)
    with pytest.raises(TypeError, match="mask_zero"):
        layers.Embedding(3, 2, mask_zero="yes")
    with pytest.raises(TypeError, match="x must hold real numbers"):
        layers.Embedding(3, 2).forward(np.array([["a", "b"]]))
    with pytest.raises(ValueError, match="batch axis"):
        layers.Embedding(3, 2).forward(np.array([1, 2]))
    layer = layers.Embedding(3, 2)
    layer.forward(np.zeros((2, 4), int))
    with pytest.raises(ValueError, match=r"built for ids of shape \(batch, 4\)"):
        layer.forward(np.zeros((2, 5), int))


def test_kernels_check_ids_and_shapes():
    table = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match=r"ids\[1\] = 4 is outside \[0, 4\)"):
        K.embedding_lookup(np.array([0, 4]), table, np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="out"):
        K.embedding_lookup(np.array([0, 1]), table, np.zeros((3, 3), np.float32))
    with pytest.raises(ValueError, match=r"ids\[0\] = -1"):
        K.embedding_grad(np.array([-1]), np.zeros((1, 3), np.float32), table)
    with pytest.raises(ValueError, match="dy"):
        K.embedding_grad(np.array([1]), np.zeros((2, 3), np.float32), table)
