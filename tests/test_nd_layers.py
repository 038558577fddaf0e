"""Layers on inputs of any rank, as Keras allows: Dense (one GEMM over the flattened
leading axes, fused epilogues kept), the activation layers, Dropout with noise_shape,
LayerNormalization. Dense on (batch, time, features) must equal TimeDistributed(Dense)
with the same weights, forward and backward."""
import numpy as np
import pytest

import cyneuron as cn
from cyneuron import layers

from test_gradients import numeric_grad


def _layer_fd_check(layer, x, rtol=1e-6, atol=1e-8, seed=0):
    """dx and every weight gradient of `layer` (float64, built) against central differences
    of sum(g * layer.forward(x))."""
    g = np.random.default_rng(seed).normal(size=layer.forward(x).shape)
    dx = layer.backward(g).copy()
    grads = layer.get_gradients()
    np.testing.assert_allclose(dx, numeric_grad(lambda: float(np.sum(g * layer.forward(x))), x),
                               rtol=rtol, atol=atol, err_msg="dx")
    weights = layer.get_weights()
    for k in range(len(weights)):
        def objective():
            layer.set_weights(weights)
            return float(np.sum(g * layer.forward(x)))
        np.testing.assert_allclose(grads[k], numeric_grad(objective, weights[k]), rtol=rtol,
                                   atol=atol, err_msg=f"weight #{k}")


# --------------------------------------------------------------------------- Dense, N-D

@pytest.mark.parametrize("activation", ["linear", "relu", "tanh", "gelu", "softmax", "relu6"])
@pytest.mark.parametrize("shape", [(4, 3, 5), (2, 3, 2, 5), (1, 1, 5)])
def test_dense_nd_equals_time_distributed(shape, activation):
    rng = np.random.default_rng(len(shape))
    x = rng.normal(size=shape)
    dense = layers.Dense(6, activation=activation, dtype="float64")
    td = layers.TimeDistributed(layers.Dense(6, activation=activation), dtype="float64")
    y = dense.forward(x).copy()
    td.forward(x)
    assert dense.kernel.shape == (5, 6) and dense.bias.shape == (6,)
    kernel, bias = rng.normal(size=(5, 6)), rng.normal(size=6)
    dense.set_weights([kernel, bias])
    td.set_weights([kernel, bias])
    y, y_td = dense.forward(x).copy(), td.forward(x).copy()
    assert y.shape == shape[:-1] + (6,)
    np.testing.assert_allclose(y, y_td, rtol=1e-13, atol=1e-14)
    g = rng.normal(size=y.shape)
    dx, dx_td = dense.backward(g).copy(), td.backward(g).copy()
    np.testing.assert_allclose(dx, dx_td, rtol=1e-12, atol=1e-13)
    for a, b in zip(dense.get_gradients(), td.get_gradients()):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)
    # and against plain numpy on the flattened rows
    z = x.reshape(-1, 5) @ kernel + bias
    ref = cn.activations.get(activation)(z).reshape(y.shape)
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("activation", ["linear", "sigmoid", "hard_swish"])
@pytest.mark.parametrize("use_bias", [True, False], ids=["bias", "nobias"])
def test_dense_3d_finite_differences(activation, use_bias):
    rng = np.random.default_rng(3)
    layer = layers.Dense(3, activation=activation, use_bias=use_bias, dtype="float64")
    x = rng.normal(size=(2, 4, 5))
    layer.forward(x)
    layer.set_weights([w + rng.normal(scale=0.3, size=w.shape) for w in layer.get_weights()])
    _layer_fd_check(layer, x)


def test_dense_nd_logits_path_for_fused_losses():
    """_forward_logits / _backward_logits (the softmax + cross-entropy fusion) on
    (batch, time, k): the logits and gradients of TimeDistributed rows."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(3, 4, 6))
    dense = layers.Dense(5, activation="softmax", dtype="float64")
    dense.forward(x)
    kernel, bias = dense.get_weights()
    z = dense._forward_logits(x, True)
    assert z.shape == (3, 4, 5)
    np.testing.assert_allclose(z, x @ kernel + bias, rtol=1e-13, atol=1e-14)
    dz = rng.normal(size=z.shape)
    dx = dense._backward_logits(dz, True)
    assert dx.shape == x.shape
    np.testing.assert_allclose(dx, dz @ kernel.T, rtol=1e-12, atol=1e-14)
    dw, db = dense.get_gradients()
    np.testing.assert_allclose(dw, x.reshape(-1, 6).T @ dz.reshape(-1, 5), rtol=1e-12)
    np.testing.assert_allclose(db, dz.reshape(-1, 5).sum(axis=0), rtol=1e-12)


@pytest.mark.parametrize("first", ["relu", "tanh", "sigmoid", "elu", "gelu"])
def test_dense_nd_input_gradient_fusion(first):
    """The next Dense's input-gradient GEMM applies the previous Dense's activation
    derivative in its epilogue (_grad_epilogue / into=) on 3-D tensors too."""
    rng = np.random.default_rng(8)
    x = rng.normal(size=(2, 5, 4))
    a = layers.Dense(6, activation=first, dtype="float64")
    b = layers.Dense(3, dtype="float64")
    h = a.forward(x)
    y = b.forward(h)
    g = rng.normal(size=y.shape)
    into = a._grad_epilogue()
    if first == "gelu":      # derivative needs the input: not fused, as on 2-D data
        assert into is None
        return
    assert into is not None
    dz_fused = b._backward(g, True, into=into).copy()
    dx_fused = a._backward(dz_fused, True, grad_is_dz=True).copy()
    grads_fused = a.get_gradients() + b.get_gradients()
    dx_plain = a._backward(b._backward(g, True).copy(), True).copy()
    np.testing.assert_allclose(dx_fused, dx_plain, rtol=1e-12, atol=1e-14)
    for u, v in zip(grads_fused, a.get_gradients() + b.get_gradients()):
        np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-14)


def test_sequential_with_3d_dense_stack_gradients():
    """A model whose Dense layers run on (batch, time, features): compute_gradients
    against finite differences of evaluate (the fused derivative epilogues included)."""
    rng = np.random.default_rng(9)
    cn.set_seed(9)
    model = cn.Sequential([layers.Dense(5, activation="tanh"), layers.Dense(4, activation="relu6"),
                           layers.Dense(3, activation="sigmoid"), layers.Flatten(),
                           layers.Dense(2)], dtype="float64")
    model.compile(optimizer="sgd", loss="mse")
    model.build((3, 4))
    assert model.output_shape == (2,)
    x, y = rng.normal(size=(6, 3, 4)), rng.normal(size=(6, 2))
    weights = [w + rng.normal(scale=0.2, size=w.shape) for w in model.get_weights()]
    model.set_weights(weights)
    _, grads = model.compute_gradients(x, y)
    grads = [g.copy() for g in grads]
    for k in range(len(weights)):
        w = [a.copy() for a in weights]

        def objective():
            model.set_weights(w)
            return model.evaluate(x, y)["loss"]
        np.testing.assert_allclose(grads[k], numeric_grad(objective, w[k]), rtol=1e-5, atol=1e-8,
                                   err_msg=f"weight array #{k}")


def test_dense_nd_reuses_buffers_and_takes_any_middle_sizes():
    layer = layers.Dense(4)
    x = np.ones((2, 3, 5), np.float32)
    y1 = layer.forward(x)
    y2 = layer.forward(x + 1)
    assert y1 is y2                                  # same batch shape: same buffer
    dx1 = layer.backward(np.ones_like(y2))
    assert layer.backward(np.ones_like(y2)) is dx1
    assert layer.forward(np.ones((2, 7, 5))).shape == (2, 7, 4)   # like Keras: last axis only
    assert layer.forward(np.ones((3, 5))).shape == (3, 4)
    assert layer.compute_output_shape((9, 2, 5)) == (9, 2, 4)


def test_dense_nd_bad_input():
    layer = layers.Dense(4)
    layer.forward(np.ones((2, 3, 5)))
    with pytest.raises(ValueError, match=r"\bx\b.*\(2, 3, 6\)"):
        layer.forward(np.ones((2, 3, 6)))
    with pytest.raises(ValueError, match=r"\bx\b"):
        layer.forward(np.ones(5))
    with pytest.raises(ValueError, match="empty"):
        layer.forward(np.ones((2, 0, 5)))
    with pytest.raises(TypeError, match=r"\bx\b"):
        layer.forward(np.full((2, 3, 5), None, dtype=object))
    with pytest.raises(ValueError, match="grad_output"):
        layer.backward(np.ones((2, 3, 5)))


# --------------------------------------------------------------------------- other layers

@pytest.mark.parametrize("make", [
    lambda: layers.Activation("relu6"),
    lambda: layers.Activation("softmax"),
    lambda: layers.Activation("hard_swish"),
    lambda: layers.LeakyReLU(0.1),
    lambda: layers.ELU(0.5),
    lambda: layers.PReLU(alpha_initializer="ones"),
    lambda: layers.PReLU(shared_axes=[1, 2]),
], ids=["relu6", "softmax", "hard_swish", "LeakyReLU", "ELU", "PReLU", "PReLU-shared"])
def test_activation_layers_on_4d(make):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 3, 2, 4))
    x[np.abs(x) < 1e-3] = 0.5            # keep finite differences off the kinks
    layer = make()
    layer.dtype = np.dtype(np.float64)
    y = layer.forward(x)
    assert y.shape == x.shape
    if layer.get_weights():
        layer.set_weights([rng.normal(scale=0.5, size=w.shape) for w in layer.get_weights()])
    _layer_fd_check(layer, x)


@pytest.mark.parametrize("shape,noise_shape", [
    ((4, 5, 6), (None, 1, 6)),
    ((4, 5, 6), (None, 5, 1)),
    ((3, 4, 5, 2), (None, 1, 1, 2)),
    ((3, 4, 5, 2), None),
])
def test_dropout_noise_shape_nd(shape, noise_shape):
    layer = layers.Dropout(0.5, noise_shape=noise_shape, seed=4, dtype="float64")
    x = np.random.default_rng(1).uniform(1, 2, size=shape)
    y = layer.forward(x, training=True).copy()
    kept = y != 0
    np.testing.assert_allclose(y[kept], 2 * x[kept], rtol=1e-15)
    if noise_shape is not None:           # one decision per mask entry, broadcast
        mask_shape = tuple(s if d is None else d for d, s in zip(noise_shape, shape))
        for axis, d in enumerate(mask_shape):
            if d == 1:
                first = np.take(kept, [0], axis=axis)
                assert np.array_equal(np.broadcast_to(first, kept.shape), kept)
    assert 0.2 < kept.mean() < 0.8
    g = np.random.default_rng(2).normal(size=shape)
    np.testing.assert_allclose(layer.backward(g), np.where(kept, 2 * g, 0), rtol=1e-15)
    np.testing.assert_array_equal(layer.forward(x, training=False), x)


@pytest.mark.parametrize("shape,axis", [((3, 4, 5), -1), ((2, 3, 4, 5), -1),
                                        ((2, 3, 4, 5), [-2, -1])])
def test_layer_normalization_nd(shape, axis):
    rng = np.random.default_rng(6)
    x = rng.normal(2.0, 3.0, size=shape)
    layer = layers.LayerNormalization(axis=axis, dtype="float64")
    layer.forward(x)
    layer.set_weights([rng.normal(size=w.shape) for w in layer.get_weights()])
    gamma, beta = layer.get_weights()
    axes = tuple(range(len(shape) - gamma.ndim, len(shape)))
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    ref = gamma * (x - mean) / np.sqrt(var + 1e-3) + beta
    np.testing.assert_allclose(layer.forward(x), ref, rtol=1e-12, atol=1e-12)
    _layer_fd_check(layer, x)
