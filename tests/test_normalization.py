"""BatchNormalization, LayerNormalization, Normalization: numpy references, float64
finite-difference gradients, moving statistics, non-trainable weights in models,
bad parameters, thread-count agreement."""
import numpy as np
import pytest

import cyneuron as cn
from cyneuron import datasets, layers
from cyneuron._kernels import normalization as _k

from test_gradients import numeric_grad

RTOL = 1e-5
ATOL = 1e-7


def _bn_reference(x, gamma, beta, axis, eps, mean=None, var=None):
    """y = gamma (x - mean) / sqrt(var + eps) + beta along `axis`; batch stats if not given."""
    axis = axis % x.ndim
    reduce = tuple(a for a in range(x.ndim) if a != axis)
    if mean is None:
        mean, var = x.mean(axis=reduce), x.var(axis=reduce)
    shape = [1] * x.ndim
    shape[axis] = -1
    r = lambda v: np.reshape(v, shape)  # noqa: E731
    return r(gamma) * (x - r(mean)) / np.sqrt(r(var) + eps) + r(beta), mean, var


def _ln_reference(x, gamma, beta, n_axes, eps):
    axes = tuple(range(x.ndim - n_axes, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    return gamma * (x - mean) / np.sqrt(var + eps) + beta


def _check_layer_gradients(layer, x, rng, training=True, check_weights=True):
    """FD check of backward against sum(g * forward(x)) w.r.t. x and each trainable weight."""
    out = layer.forward(x, training=training).copy()
    g = rng.normal(size=out.shape)
    dx = np.array(layer.backward(g), copy=True)
    grads = layer.get_gradients()

    def objective():
        return float(np.sum(g * layer.forward(x, training=training)))

    np.testing.assert_allclose(dx, numeric_grad(objective, x), rtol=RTOL, atol=ATOL)
    if not check_weights:
        return grads
    weights = layer.get_weights()
    for k, trainable in enumerate(layer._trainable):
        if not trainable:
            np.testing.assert_array_equal(grads[k], 0)
            continue

        def objective_w():
            layer.set_weights(weights)
            return objective()

        num = numeric_grad(objective_w, weights[k])
        np.testing.assert_allclose(grads[k], num, rtol=RTOL, atol=ATOL,
                                   err_msg=f"weight {layer._weight_names[k]}")
    layer.set_weights(weights)
    return grads


def _random_affine(layer, rng):
    """Non-trivial gamma / beta (and moving statistics) so every term is exercised."""
    new = []
    for name, w in zip(layer._weight_names, layer.get_weights()):
        if name in ("moving_variance", "variance"):
            new.append(rng.uniform(0.5, 2.0, size=w.shape))
        elif name == "gamma":
            new.append(rng.uniform(0.5, 1.5, size=w.shape) * rng.choice([-1, 1], size=w.shape))
        else:
            new.append(rng.normal(size=w.shape))
    layer.set_weights(new)
    return new


# ---------------------------------------------------------------------------------------
# BatchNormalization
# ---------------------------------------------------------------------------------------
BN_CASES = [((7, 5), -1), ((4, 3, 5, 6), -1), ((3, 4, 5, 2), 1), ((5, 3, 4), 2)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape,axis", BN_CASES)
def test_batchnorm_forward_matches_numpy(shape, axis, dtype):
    rng = np.random.default_rng(len(shape) + axis)
    x = rng.normal(2.0, 3.0, size=shape)
    layer = layers.BatchNormalization(axis=axis, momentum=0.9, epsilon=1e-3, dtype=dtype)
    layer.forward(x.astype(dtype))  # build
    gamma, beta, mm, mv = _random_affine(layer, rng)
    tol = 1e-5 if dtype == "float32" else 1e-12

    y = layer.forward(x.astype(dtype), training=True)
    ref, mean, var = _bn_reference(x, gamma, beta, axis, 1e-3)
    assert y.dtype == np.dtype(dtype) and y.shape == x.shape
    np.testing.assert_allclose(y, ref, rtol=tol, atol=tol)
    # the moving statistics moved by the momentum rule
    np.testing.assert_allclose(layer.moving_mean, 0.9 * mm + 0.1 * mean, rtol=tol, atol=tol)
    np.testing.assert_allclose(layer.moving_variance, 0.9 * mv + 0.1 * var, rtol=tol, atol=tol)

    # inference uses the moving statistics, and leaves them alone
    mm2, mv2 = layer.moving_mean.copy(), layer.moving_variance.copy()
    y_inf = layer.forward(x.astype(dtype), training=False)
    ref_inf, _, _ = _bn_reference(x, gamma, beta, axis, 1e-3, mm2.astype(np.float64),
                                  mv2.astype(np.float64))
    np.testing.assert_allclose(y_inf, ref_inf, rtol=tol, atol=tol)
    np.testing.assert_array_equal(layer.moving_mean, mm2)
    np.testing.assert_array_equal(layer.moving_variance, mv2)


def test_batchnorm_moving_statistics_converge_to_data_statistics():
    rng = np.random.default_rng(0)
    layer = layers.BatchNormalization(momentum=0.5, dtype="float64")
    expected_mean, expected_var = np.zeros(3), np.ones(3)
    for _ in range(30):
        x = rng.normal([1.0, -2.0, 5.0], [0.5, 2.0, 3.0], size=(64, 3))
        layer.forward(x, training=True)
        expected_mean = 0.5 * expected_mean + 0.5 * x.mean(axis=0)
        expected_var = 0.5 * expected_var + 0.5 * x.var(axis=0)
    np.testing.assert_allclose(layer.moving_mean, expected_mean, rtol=1e-12)
    np.testing.assert_allclose(layer.moving_variance, expected_var, rtol=1e-12)
    np.testing.assert_allclose(layer.moving_mean, [1.0, -2.0, 5.0], atol=0.5)
    np.testing.assert_allclose(layer.moving_variance, [0.25, 4.0, 9.0], rtol=0.5)


@pytest.mark.parametrize("center,scale", [(True, True), (False, True), (True, False),
                                          (False, False)])
@pytest.mark.parametrize("shape,axis", BN_CASES)
def test_batchnorm_gradients_training(shape, axis, center, scale):
    rng = np.random.default_rng(sum(shape) + axis)
    x = rng.normal(1.0, 2.0, size=shape)
    layer = layers.BatchNormalization(axis=axis, center=center, scale=scale, dtype="float64")
    layer.forward(x)
    _random_affine(layer, rng)
    names = (["gamma"] if scale else []) + (["beta"] if center else []) + \
        ["moving_mean", "moving_variance"]
    assert layer._weight_names == names
    grads = _check_layer_gradients(layer, x, rng, training=True)
    assert len(grads) == len(names)


def test_batchnorm_gradients_inference():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(6, 3, 4, 5))
    layer = layers.BatchNormalization(dtype="float64")
    layer.forward(x)
    _random_affine(layer, rng)
    _check_layer_gradients(layer, x, rng, training=False)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_batchnorm_backward_closed_form_matches_numpy(dtype):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(40, 6))
    dy = rng.normal(size=(40, 6))
    layer = layers.BatchNormalization(epsilon=1e-2, dtype=dtype)
    layer.forward(x.astype(dtype))
    gamma, beta, _, _ = _random_affine(layer, rng)
    layer.forward(x.astype(dtype), training=True)
    dx = layer.backward(dy.astype(dtype))
    dgamma, dbeta, dmm, dmv = layer.get_gradients()
    xh = (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-2)
    ref_dbeta, ref_dgamma = dy.sum(0), (dy * xh).sum(0)
    ref_dx = gamma / np.sqrt(x.var(0) + 1e-2) * (dy - ref_dbeta / 40 - xh * ref_dgamma / 40)
    tol = 2e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(dx, ref_dx, rtol=tol, atol=tol)
    np.testing.assert_allclose(dgamma, ref_dgamma, rtol=tol, atol=tol)
    np.testing.assert_allclose(dbeta, ref_dbeta, rtol=tol, atol=tol)
    np.testing.assert_array_equal(dmm, 0)
    np.testing.assert_array_equal(dmv, 0)


def test_batchnorm_single_sample_gives_beta():
    layer = layers.BatchNormalization(dtype="float64")
    layer.forward(np.ones((1, 3)))
    layer.set_weights([np.full(3, 2.0), np.arange(3.0), np.zeros(3), np.ones(3)])
    np.testing.assert_allclose(layer.forward(np.array([[5.0, -1.0, 7.0]]), training=True),
                               [[0.0, 1.0, 2.0]])


@pytest.mark.parametrize("layer_cls", [layers.BatchNormalization, layers.LayerNormalization])
def test_normalization_threads_agree(layer_cls, restore_threads):
    """Column reductions run over fixed chunks: 1 and 2 threads give identical bits."""
    rng = np.random.default_rng(6)
    x = rng.normal(size=(2048, 8, 33)).astype(np.float32)
    dy = rng.normal(size=x.shape).astype(np.float32)
    results = []
    for threads in (1, 2):
        cn.set_num_threads(threads)
        layer = layer_cls(dtype="float32")
        y = layer.forward(x, training=True).copy()
        dx = layer.backward(dy).copy()
        results.append([y, dx] + layer.get_gradients() + layer.get_weights())
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_batchnorm_float32_statistics_are_accurate():
    """Large offsets: the two-pass float64-accumulated statistics keep float32 accurate."""
    rng = np.random.default_rng(7)
    x = (1000.0 + rng.normal(size=(20000, 3))).astype(np.float32)
    mean, var = np.empty(3, np.float32), np.empty(3, np.float32)
    _k.batchnorm_stats(x.reshape(20000, 3, 1), mean, var)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(mean, x64.mean(0), rtol=1e-7)
    np.testing.assert_allclose(var, x64.var(0), rtol=1e-4)


# ---------------------------------------------------------------------------------------
# Non-trainable weights inside a model
# ---------------------------------------------------------------------------------------
def _bn_model(dtype="float64"):
    model = cn.Sequential([layers.Dense(5, activation="tanh"), layers.BatchNormalization(),
                           layers.Dense(3, activation="softmax")], dtype=dtype)
    model.compile(optimizer=cn.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    model.build((4,))
    return model


def test_model_keeps_moving_statistics_out_of_the_flat_buffer():
    model = _bn_model()
    bn = model.layers[1]
    names = [n for layer in model.layers for n in layer._weight_names]
    assert names == ["kernel", "bias", "gamma", "beta", "moving_mean", "moving_variance",
                     "kernel", "bias"]
    trainable = 4 * 5 + 5 + 5 + 5 + 5 * 3 + 3
    assert model._params.size == trainable
    assert model.count_params() == trainable + 10
    assert not any(np.shares_memory(w, model._params) for w in bn.non_trainable_weights)
    assert all(np.shares_memory(w, model._params) for w in bn.trainable_weights)
    lines = []
    model.summary(print_fn=lines.append)
    assert f"Trainable params: {trainable}" in lines
    assert "Non-trainable params: 10" in lines


def test_model_train_step_updates_moving_stats_only_by_momentum():
    """The optimizer must not touch moving statistics; the layer moves them by the rule."""
    rng = np.random.default_rng(8)
    model = cn.Sequential([layers.BatchNormalization(momentum=0.8),
                           layers.Dense(2, activation="softmax")], dtype="float64")
    model.compile(optimizer=cn.optimizers.SGD(1.0), loss="sparse_categorical_crossentropy")
    x = rng.normal(3.0, 2.0, size=(16, 4))
    y = rng.integers(0, 2, size=16)
    model.build((4,))
    bn = model.layers[0]
    before = [w.copy() for w in model.get_weights()]
    model.train_on_batch(x, y)
    after = model.get_weights()
    np.testing.assert_allclose(after[2], 0.8 * before[2] + 0.2 * x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(after[3], 0.8 * before[3] + 0.2 * x.var(0), rtol=1e-12)
    assert not np.allclose(after[0], before[0])  # gamma was trained
    assert bn.moving_mean is bn._weights[2]      # updated in place, still the same array


def test_model_compute_gradients_with_batchnorm():
    """grads follow get_weights() order, zeros for the moving statistics, and match finite
    differences of the training-mode loss; moving statistics are left unchanged."""
    rng = np.random.default_rng(9)
    model = _bn_model()
    x = rng.normal(size=(8, 4))
    y = rng.integers(0, 3, size=8)
    weights = model.get_weights()
    loss, grads = model.compute_gradients(x, y)
    assert [g.shape for g in grads] == [w.shape for w in weights]
    for a, b in zip(weights, model.get_weights()):
        np.testing.assert_array_equal(a, b)  # nothing updated, moving statistics included
    np.testing.assert_array_equal(grads[4], 0)
    np.testing.assert_array_equal(grads[5], 0)
    for k in (0, 1, 2, 3, 6, 7):
        def objective():
            model.set_weights(weights)
            return model.compute_gradients(x, y)[0]

        num = numeric_grad(objective, weights[k])
        np.testing.assert_allclose(grads[k], num, rtol=1e-5, atol=1e-8, err_msg=f"weight {k}")


def test_model_get_set_weights_round_trip_with_moving_statistics():
    rng = np.random.default_rng(10)
    model = _bn_model()
    new = [rng.uniform(0.5, 1.5, size=w.shape) for w in model.get_weights()]
    model.set_weights(new)
    for a, b in zip(new, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    x = rng.normal(size=(5, 4))
    h = np.tanh(x @ new[0] + new[1])
    h = new[2] * (h - new[4]) / np.sqrt(new[5] + 1e-3) + new[3]
    z = h @ new[6] + new[7]
    p = np.exp(z - z.max(1, keepdims=True))
    np.testing.assert_allclose(model.predict(x), p / p.sum(1, keepdims=True), rtol=1e-12)
    # a second model with the same weights predicts the same
    other = _bn_model()
    other.set_weights(model.get_weights())
    np.testing.assert_array_equal(other.predict(x), model.predict(x))


def test_model_with_dropout_and_batchnorm_trains_on_digits():
    pytest.importorskip("sklearn")
    cn.set_seed(0)
    (x_train, y_train), (x_test, y_test) = datasets.load_digits()
    model = cn.Sequential([
        layers.Normalization(),
        layers.Dense(64, activation="relu"),
        layers.BatchNormalization(),
        layers.Dropout(0.2),
        layers.Dense(10, activation="softmax"),
    ])
    model.layers[0].adapt(x_train)
    model.compile(optimizer=cn.optimizers.SGD(0.05, momentum=0.9),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x_train, y_train, epochs=8, batch_size=32, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert model.evaluate(x_test, y_test)["accuracy"] > 0.93
    np.testing.assert_array_equal(model.predict(x_test[:20]), model.predict(x_test[:20]))


# ---------------------------------------------------------------------------------------
# LayerNormalization
# ---------------------------------------------------------------------------------------
LN_CASES = [((6, 7), -1), ((4, 3, 5), -1), ((3, 4, 5), (-2, -1)), ((2, 3, 4, 2), (2, 3))]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape,axis", LN_CASES)
def test_layernorm_forward_matches_numpy(shape, axis, dtype):
    rng = np.random.default_rng(len(shape))
    x = rng.normal(1.0, 2.0, size=shape)
    layer = layers.LayerNormalization(axis=axis, dtype=dtype)
    y0 = layer.forward(x.astype(dtype), training=True).copy()
    n_axes = 1 if isinstance(axis, int) else len(axis)
    tol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(y0, _ln_reference(x, 1.0, 0.0, n_axes, 1e-3), rtol=tol, atol=tol)
    gamma, beta = _random_affine(layer, rng)
    assert gamma.shape == shape[len(shape) - n_axes:]
    ref = _ln_reference(x, gamma, beta, n_axes, 1e-3)
    for training in (True, False):  # the same in both modes
        np.testing.assert_allclose(layer.forward(x.astype(dtype), training=training), ref,
                                   rtol=tol, atol=tol)


@pytest.mark.parametrize("center,scale", [(True, True), (False, True), (True, False)])
@pytest.mark.parametrize("shape,axis", LN_CASES)
def test_layernorm_gradients(shape, axis, center, scale):
    rng = np.random.default_rng(sum(shape))
    x = rng.normal(size=shape)
    layer = layers.LayerNormalization(axis=axis, center=center, scale=scale, dtype="float64")
    layer.forward(x)
    _random_affine(layer, rng)
    assert layer._weight_names == (["gamma"] if scale else []) + (["beta"] if center else [])
    _check_layer_gradients(layer, x, rng)


def _ln_kernels(x, dy, gamma, beta):
    """layernorm_forward then layernorm_backward on (rows, D) arrays: all outputs."""
    n, d = x.shape
    out, mean, inv_std = np.empty_like(x), np.empty(n, x.dtype), np.empty(n, x.dtype)
    _k.layernorm_forward(x, gamma, beta, 1e-3, out, mean, inv_std)
    dgamma, dbeta, dx = np.empty(d, x.dtype), np.empty(d, x.dtype), np.empty_like(x)
    _k.layernorm_backward(x, dy, gamma, mean, inv_std, dgamma, dbeta, dx)
    return out, mean, inv_std, dgamma, dbeta, dx


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layernorm_kernels_same_bits_on_every_simd_path(isa, dtype):
    """The row sums run in eight lanes then a tail, added in one fixed order, on every
    SIMD path: the same bits as the baseline's, and the numpy result, for feature counts
    below, at and past a whole number of lanes."""
    from cyneuron._kernels import gemm as _gemm

    rng = np.random.default_rng(21)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for d in (1, 7, 8, 13, 128, 130):
        x = rng.normal(1.0, 3.0, (9, d)).astype(dtype)
        dy, gamma, beta = (rng.standard_normal(s).astype(dtype) for s in ((9, d), d, d))
        got = _ln_kernels(x, dy, gamma, beta)
        _gemm.set_isa("generic")
        try:
            baseline = _ln_kernels(x, dy, gamma, beta)
        finally:
            _gemm.set_isa(isa)
        for a, b in zip(got, baseline):
            np.testing.assert_array_equal(a, b, err_msg=f"D={d} {isa}")
        x64 = x.astype(np.float64)
        xh = (x64 - x64.mean(1, keepdims=True)) / np.sqrt(x64.var(1, keepdims=True) + 1e-3)
        g = dy * gamma.astype(np.float64)
        want_dx = (g - g.mean(1, keepdims=True) - xh * (g * xh).mean(1, keepdims=True)) \
            / np.sqrt(x64.var(1, keepdims=True) + 1e-3)
        for a, w in ((got[0], xh * gamma + beta), (got[3], (dy * xh).sum(0)),
                     (got[4], dy.sum(0, dtype=np.float64)), (got[5], want_dx)):
            np.testing.assert_allclose(a, w, rtol=tol, atol=tol * 10, err_msg=f"D={d}")


def test_layernorm_in_model_gradients():
    rng = np.random.default_rng(11)
    model = cn.Sequential([layers.Dense(6, activation="tanh"), layers.LayerNormalization(),
                           layers.Dense(1)], dtype="float64")
    model.compile(optimizer="sgd", loss="mean_squared_error")
    x, y = rng.normal(size=(5, 3)), rng.normal(size=(5, 1))
    model.build((3,))
    model.layers[1].set_weights([rng.normal(size=6), rng.normal(size=6)])
    weights = model.get_weights()
    _, grads = model.compute_gradients(x, y)
    for k in range(len(weights)):
        def objective():
            model.set_weights(weights)
            return model.compute_gradients(x, y)[0]

        np.testing.assert_allclose(grads[k], numeric_grad(objective, weights[k]),
                                   rtol=1e-5, atol=1e-8)


# ---------------------------------------------------------------------------------------
# Normalization (input normalization)
# ---------------------------------------------------------------------------------------
def test_normalization_adapt_and_forward():
    rng = np.random.default_rng(12)
    data = rng.normal([1.0, -3.0, 10.0], [2.0, 0.5, 4.0], size=(500, 3))
    layer = layers.Normalization(dtype="float64")
    assert layer.adapt(data) is layer
    out = layer.forward(data)
    np.testing.assert_allclose(layer.mean, data.mean(0), rtol=1e-12)
    np.testing.assert_allclose(layer.variance, data.var(0), rtol=1e-12)
    np.testing.assert_allclose(out, (data - data.mean(0)) / data.std(0), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(out.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(out.std(0), 1, rtol=1e-12)
    assert layer._weight_names == ["mean", "variance"]
    assert layer.count_params() == 6 and layer.trainable_weights == []
    # identical in training and at inference
    np.testing.assert_array_equal(layer.forward(data[:7], training=True), out[:7])


def test_normalization_invert_round_trip():
    rng = np.random.default_rng(13)
    data = rng.normal(5.0, 3.0, size=(100, 4))
    forward = layers.Normalization(dtype="float64").adapt(data)
    inverse = layers.Normalization(invert=True, dtype="float64").adapt(data)
    z = forward.forward(data).copy()
    np.testing.assert_allclose(inverse.forward(z), data, rtol=1e-12)


@pytest.mark.parametrize("axis,kept", [(-1, (3,)), (None, ()), ((1, 2), (1, 2)), (1, (1,))])
def test_normalization_axes(axis, kept):
    rng = np.random.default_rng(14)
    data = rng.normal(2.0, 3.0, size=(50, 3, 4, 2))
    layer = layers.Normalization(axis=axis, dtype="float64").adapt(data)
    reduce = tuple(a for a in range(4) if a not in kept)
    mean, var = data.mean(axis=reduce, keepdims=True), data.var(axis=reduce, keepdims=True)
    assert layer.forward(data).shape == data.shape
    assert layer.mean.shape == tuple(data.shape[a] for a in kept)
    np.testing.assert_allclose(layer.forward(data), (data - mean) / np.sqrt(var), rtol=1e-10,
                               atol=1e-12)


def test_normalization_given_mean_and_variance():
    layer = layers.Normalization(mean=[1.0, 2.0], variance=[4.0, 0.0], dtype="float64")
    out = layer.forward(np.array([[3.0, 2.0], [1.0, 2.5]]))
    # variance 0: the standard deviation is floored at 1e-7, as in Keras
    np.testing.assert_allclose(out, [[1.0, 0.0], [0.0, 0.5 / 1e-7]])
    scalar = layers.Normalization(mean=2.0, variance=4.0, dtype="float64")
    np.testing.assert_allclose(scalar.forward(np.full((2, 3), 4.0)), np.ones((2, 3)))


def test_normalization_before_adapt_is_identity_and_adapt_after_build():
    rng = np.random.default_rng(15)
    data = rng.normal(3.0, 2.0, size=(40, 5))
    layer = layers.Normalization(dtype="float64")
    np.testing.assert_array_equal(layer.forward(data), data)
    layer.adapt(data)
    np.testing.assert_allclose(layer.forward(data).mean(0), 0, atol=1e-12)
    with pytest.raises(ValueError, match="per-sample shape"):
        layer.adapt(rng.normal(size=(10, 4)))


def test_normalization_gradient():
    rng = np.random.default_rng(16)
    x = rng.normal(size=(4, 3, 2))
    for invert in (False, True):
        layer = layers.Normalization(axis=(1,), invert=invert, dtype="float64")
        layer.adapt(rng.normal(1.0, 2.0, size=(30, 3, 2)))
        grads = _check_layer_gradients(layer, x, rng, check_weights=False)
        assert all((g == 0).all() for g in grads)


def test_normalization_in_model_is_not_trained():
    rng = np.random.default_rng(17)
    data = rng.normal(4.0, 2.0, size=(64, 3))
    model = cn.Sequential([layers.Normalization(), layers.Dense(1)], dtype="float64")
    model.layers[0].adapt(data)
    model.compile(optimizer=cn.optimizers.SGD(0.5), loss="mean_squared_error")
    model.fit(data, data.sum(1), epochs=3, verbose=0)
    np.testing.assert_allclose(model.layers[0].mean, data.mean(0), rtol=1e-12)
    np.testing.assert_allclose(model.layers[0].variance, data.var(0), rtol=1e-12)
    assert model._params.size == 4


# ---------------------------------------------------------------------------------------
# Bad parameters and input
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,match", [
    ({"momentum": 1.5}, "momentum"), ({"momentum": -0.1}, "momentum"),
    ({"momentum": "x"}, "momentum"), ({"epsilon": 0}, "epsilon"),
    ({"epsilon": float("nan")}, "epsilon"), ({"axis": "a"}, "axis"), ({"axis": 1.0}, "axis"),
    ({"axis": True}, "axis"), ({"beta_initializer": "nope"}, "initializer"),
])
def test_batchnorm_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        layers.BatchNormalization(**kwargs)


@pytest.mark.parametrize("axis", [0, 2, -3])
def test_batchnorm_axis_out_of_range(axis):
    with pytest.raises(ValueError, match="axis"):
        layers.BatchNormalization(axis=axis).forward(np.ones((3, 4)))


@pytest.mark.parametrize("kwargs,match", [
    ({"epsilon": -1.0}, "epsilon"), ({"axis": "x"}, "axis"), ({"axis": ()}, "axis"),
    ({"axis": 0}, "axis"), ({"axis": (1, 1.5)}, "axis"),
])
def test_layernorm_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        layers.LayerNormalization(**kwargs)


@pytest.mark.parametrize("axis", [1, (1, 2), (-1, -1)])
def test_layernorm_axis_must_be_trailing(axis):
    with pytest.raises(ValueError, match="axis"):
        layers.LayerNormalization(axis=axis).forward(np.ones((2, 3, 4, 5)))


def test_normalization_bad_parameters():
    with pytest.raises(ValueError, match="both mean and variance"):
        layers.Normalization(mean=[0.0])
    with pytest.raises(ValueError, match="variance"):
        layers.Normalization(mean=[0.0], variance=[-1.0])
    with pytest.raises(ValueError, match="axis"):
        layers.Normalization(axis=0)
    with pytest.raises(ValueError, match="consecutive"):
        layers.Normalization(axis=(1, 3)).adapt(np.ones((2, 3, 4, 5)))
    with pytest.raises(ValueError, match="mean"):
        layers.Normalization(mean=[0.0, 1.0], variance=[1.0, 1.0]).forward(np.ones((2, 3)))
    with pytest.raises(ValueError, match="data"):
        layers.Normalization().adapt(np.ones(5))
    with pytest.raises(ValueError, match="NaN"):
        layers.Normalization().adapt(np.array([[1.0], [np.nan]]))


def test_batchnorm_set_weights_checks():
    layer = layers.BatchNormalization()
    layer.forward(np.ones((2, 3)))
    with pytest.raises(ValueError, match="gamma, beta, moving_mean, moving_variance"):
        layer.set_weights([np.ones(3)] * 3)
    with pytest.raises(ValueError, match="moving_variance"):
        layer.set_weights([np.ones(3)] * 3 + [np.ones(4)])


def test_kernels_check_buffer_sizes():
    x = np.ones((4, 3, 2))
    with pytest.raises(ValueError, match="mean"):
        _k.batchnorm_stats(x, np.empty(2), np.empty(3))
    with pytest.raises(ValueError, match="out"):
        _k.channel_affine(x, np.ones(3), np.ones(3), np.empty((4, 3, 1)))
    with pytest.raises(ValueError, match="dx"):
        _k.batchnorm_backward(x, x, np.ones(3), np.ones(3), np.ones(3), 1e-3, np.empty(3),
                              np.empty(3), np.empty((4, 3, 3)))
    x2 = np.ones((4, 5))
    with pytest.raises(ValueError, match="inv_std"):
        _k.layernorm_forward(x2, np.ones(5), np.ones(5), 1e-3, np.empty((4, 5)), np.empty(4),
                             np.empty(3))
    with pytest.raises(ValueError, match="dgamma"):
        _k.layernorm_backward(x2, x2, np.ones(5), np.ones(4), np.ones(4), np.empty(4),
                              np.empty(5))
    with pytest.raises(ValueError, match="rate"):
        _k.dropout_mask(np.empty(3), 1.0, 0)
    with pytest.raises(ValueError, match="mask"):
        _k.multiply(np.ones(3), np.ones(2), np.empty(3))
