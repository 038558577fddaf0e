"""Dropout: inverted scaling, seeding, identity at inference, gradients with a fixed
mask, noise_shape, bad parameters, thread-count agreement."""
import numpy as np
import pytest

import cyneuron as cn
from cyneuron import layers
from cyneuron._kernels import normalization as _k

from test_gradients import numeric_grad


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("rate", [0.1, 0.5, 0.8])
def test_dropout_is_inverted(rate, dtype):
    """Kept elements are scaled by 1 / (1 - rate): the expected output is the input."""
    x = np.full((400, 500), 2.0, dtype=dtype)
    layer = layers.Dropout(rate, seed=1, dtype=dtype)
    y = layer.forward(x, training=True)
    assert y.dtype == np.dtype(dtype) and y.shape == x.shape
    kept = y != 0
    n = x.size
    # fraction dropped within 5 standard deviations of a Binomial(n, rate)
    assert abs((~kept).mean() - rate) < 5 * np.sqrt(rate * (1 - rate) / n)
    np.testing.assert_allclose(y[kept], 2.0 / (1 - rate), rtol=1e-6)
    assert abs(y.mean() - 2.0) < 5 * 2.0 * np.sqrt(rate / ((1 - rate) * n))


def test_dropout_identity_at_inference_and_rate_zero():
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    layer = layers.Dropout(0.5)
    np.testing.assert_array_equal(layer.forward(x), x)
    np.testing.assert_array_equal(layer.forward(x, training=False), x)
    g = np.ones_like(x)
    np.testing.assert_array_equal(layer.backward(g), g)
    zero = layers.Dropout(0.0)
    np.testing.assert_array_equal(zero.forward(x, training=True), x)


def test_dropout_same_seed_same_masks():
    x = np.ones((50, 40))
    a, b = layers.Dropout(0.5, seed=7), layers.Dropout(0.5, seed=7)
    first_a = a.forward(x, training=True).copy()
    np.testing.assert_array_equal(first_a, b.forward(x, training=True))
    second_a = a.forward(x, training=True).copy()
    np.testing.assert_array_equal(second_a, b.forward(x, training=True))
    assert not np.array_equal(first_a, second_a)  # a new mask on every call
    other = layers.Dropout(0.5, seed=8).forward(x, training=True)
    assert not np.array_equal(first_a, other)


def test_dropout_follows_set_seed():
    x = np.ones((30, 30))
    masks = []
    for _ in range(2):
        cn.set_seed(123)
        layer = layers.Dropout(0.3)
        masks.append([layer.forward(x, training=True).copy() for _ in range(2)])
    np.testing.assert_array_equal(masks[0][0], masks[1][0])
    np.testing.assert_array_equal(masks[0][1], masks[1][1])


def test_dropout_backward_uses_the_forward_mask():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(20, 10))
    layer = layers.Dropout(0.4, seed=3, dtype="float64")
    y = layer.forward(x, training=True).copy()
    mask = np.where(y != 0, 1 / 0.6, 0.0)
    np.testing.assert_allclose(y, x * mask, rtol=1e-15)
    g = rng.normal(size=x.shape)
    np.testing.assert_allclose(layer.backward(g), g * mask, rtol=1e-15)
    assert layer.get_weights() == [] and layer.get_gradients() == []


@pytest.mark.parametrize("noise_shape", [None, (None, 1, None)])
def test_dropout_gradient_with_fixed_mask(noise_shape):
    """Finite differences: a fresh layer with the same seed draws the same mask each call."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(3, 4, 5))
    g = rng.normal(size=x.shape)

    def layer():
        return layers.Dropout(0.5, noise_shape=noise_shape, seed=11, dtype="float64")

    fixed = layer()
    fixed.forward(x, training=True)
    dx = fixed.backward(g).copy()

    def objective():
        return float(np.sum(g * layer().forward(x, training=True)))

    np.testing.assert_allclose(dx, numeric_grad(objective, x), rtol=1e-6, atol=1e-8)
    assert (dx == 0).any() and (dx != 0).any()


def test_dropout_noise_shape_shares_mask():
    x = np.ones((8, 6, 5))
    y = layers.Dropout(0.5, noise_shape=(None, 1, 5), seed=0).forward(x, training=True)
    np.testing.assert_array_equal(y, np.broadcast_to(y[:, :1, :], y.shape))
    y2 = layers.Dropout(0.5, noise_shape=[8, 6, 1], seed=0).forward(x, training=True)
    np.testing.assert_array_equal(y2, np.broadcast_to(y2[:, :, :1], y2.shape))


def test_dropout_threads_agree(restore_threads):
    """The counter-based generator gives the same mask for every thread count."""
    x = np.ones((1000, 300), np.float32)
    out = []
    for threads in (1, 2):
        cn.set_num_threads(threads)
        out.append(layers.Dropout(0.25, seed=5).forward(x, training=True).copy())
    np.testing.assert_array_equal(out[0], out[1])


def test_dropout_mask_kernel_statistics():
    """Neighbouring elements and neighbouring keys are independent draws."""
    mask = np.empty(200000)
    _k.dropout_mask(mask, 0.5, 42)
    keep = mask != 0
    assert abs(keep.mean() - 0.5) < 0.005
    # no correlation between neighbours
    assert abs(np.corrcoef(keep[:-1], keep[1:])[0, 1]) < 0.01
    other = np.empty(200000)
    _k.dropout_mask(other, 0.5, 43)
    assert abs(np.corrcoef(keep, other != 0)[0, 1]) < 0.01


def test_dropout_in_model_training_only():
    rng = np.random.default_rng(6)
    cn.set_seed(1)
    model = cn.Sequential([layers.Dense(16, activation="relu"), layers.Dropout(0.5),
                           layers.Dense(2, activation="softmax")], dtype="float64")
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    x, y = rng.normal(size=(10, 3)), rng.integers(0, 2, size=10)
    np.testing.assert_array_equal(model.predict(x), model.predict(x))
    loss1, grads1 = model.compute_gradients(x, y)
    loss2, grads2 = model.compute_gradients(x, y)
    assert loss1 != loss2  # a new mask in each training pass
    model.evaluate(x, y)


@pytest.mark.parametrize("rate", [-0.1, 1, 1.0, 1.5, float("nan"), "0.5", True, None])
def test_dropout_bad_rate(rate):
    with pytest.raises(ValueError, match="rate"):
        layers.Dropout(rate)


@pytest.mark.parametrize("kwargs,match", [
    ({"seed": -1}, "seed"), ({"seed": 1.5}, "seed"), ({"seed": "a"}, "seed"),
    ({"noise_shape": 5}, "noise_shape"), ({"noise_shape": (None, 0)}, "noise_shape"),
    ({"noise_shape": ()}, "noise_shape"), ({"noise_shape": (None, 2.0)}, "noise_shape"),
])
def test_dropout_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        layers.Dropout(0.5, **kwargs)


@pytest.mark.parametrize("noise_shape", [(None, 3), (None, 4, 1), (2, 1)])
def test_dropout_noise_shape_must_broadcast(noise_shape):
    with pytest.raises(ValueError, match="noise_shape"):
        layers.Dropout(0.5, noise_shape=noise_shape).forward(np.ones((5, 4)), training=True)
