"""The graph engine: cn.Input, layers called on symbolic tensors, cn.Model with several
inputs and outputs, merge layers, shared layers, nested models, custom training loops,
frozen layers, save/load, and the errors of bad graphs and bad data."""
import numpy as np
import pytest

import cyneuron as cn
from cyneuron import layers


# ---------------------------------------------------------------------------------------
# float64 finite-difference checks of whole graphs
# ---------------------------------------------------------------------------------------
def _as_list(v):
    return list(v) if isinstance(v, (list, tuple)) else [v]


def check_graph_gradients(model, xs, seed=0, n_params=40, n_inputs=12, eps=1e-6):
    """model.backward of a random projection R of the outputs against central
    differences of sum(outputs * R), for parameters and inputs."""
    rng = np.random.default_rng(seed)
    outs = _as_list(model(xs, training=True))
    rs = [rng.standard_normal(o.shape) for o in outs]
    gin = _as_list(model.backward(rs if len(rs) > 1 else rs[0]))
    analytic = model._grads.copy()
    xs_list = _as_list(xs)

    def value():
        return sum(float(np.sum(o * r)) for o, r in zip(_as_list(model(xs, training=True)), rs))

    params = model._params
    assert params.size > 0
    for i in rng.choice(params.size, min(n_params, params.size), replace=False):
        keep = params[i]
        params[i] = keep + eps
        plus = value()
        params[i] = keep - eps
        minus = value()
        params[i] = keep
        np.testing.assert_allclose(analytic[i], (plus - minus) / (2 * eps), rtol=1e-5, atol=1e-7,
                                   err_msg=f"parameter {i}")
    for x, g in zip(xs_list, gin):
        flat, gflat = x.reshape(-1), g.reshape(-1)
        for i in rng.choice(flat.size, min(n_inputs, flat.size), replace=False):
            keep = flat[i]
            flat[i] = keep + eps
            plus = value()
            flat[i] = keep - eps
            minus = value()
            flat[i] = keep
            np.testing.assert_allclose(gflat[i], (plus - minus) / (2 * eps), rtol=1e-5,
                                       atol=1e-7, err_msg=f"input element {i}")


def _x(*shape, seed=1):
    return np.random.default_rng(seed).standard_normal(shape)


def test_gradients_fan_out_and_intermediate_output():
    inp = cn.Input((6,), dtype="float64")
    h = layers.Dense(5, activation="tanh")(inp)
    a = layers.Dense(5, activation="tanh")(h)            # h feeds two layers (fan-out)
    b = layers.Dense(5, activation="sigmoid")(h)
    out = layers.Dense(3)(layers.Add()([a, b, h]))       # and the Add too
    model = cn.Model(inp, [out, a])                      # a is an output and is consumed
    check_graph_gradients(model, _x(7, 6))


def test_gradients_shared_layer_sums_both_calls():
    a_in, b_in = cn.Input((4,), dtype="float64"), cn.Input((4,), dtype="float64")
    shared = layers.Dense(4, activation="tanh")
    twice = shared(shared(a_in))                          # called in sequence ...
    other = shared(b_in)                                  # ... and on another input
    out = layers.Dense(2)(layers.Concatenate()([twice, other]))
    model = cn.Model([a_in, b_in], out)
    assert model.count_params() == shared.count_params() + (8 * 2 + 2)
    check_graph_gradients(model, [_x(5, 4), _x(5, 4, seed=2)])


def test_shared_layer_gradient_is_the_sum_of_its_calls():
    """One shared Dense on two inputs equals two copies of it whose gradients are added."""
    a_in, b_in = cn.Input((3,), dtype="float64"), cn.Input((3,), dtype="float64")
    shared = layers.Dense(2)
    model = cn.Model([a_in, b_in], layers.Add()([shared(a_in), shared(b_in)]))
    xa, xb = _x(4, 3), _x(4, 3, seed=2)
    model([xa, xb], training=True)
    dy = _x(4, 2, seed=3)
    model.backward(dy)
    kernel_grad = model.get_gradients()[0]
    np.testing.assert_allclose(kernel_grad, xa.T @ dy + xb.T @ dy, rtol=1e-12)


MERGES = {
    "Add": (lambda: layers.Add(), [(3, 4), (3, 4), (3, 4)]),
    "Subtract": (lambda: layers.Subtract(), [(5,), (5,)]),
    "Multiply": (lambda: layers.Multiply(), [(4,), (4,), (4,)]),
    "Average": (lambda: layers.Average(), [(2, 3), (2, 3)]),
    "Maximum": (lambda: layers.Maximum(), [(6,), (6,), (6,)]),
    "Minimum": (lambda: layers.Minimum(), [(6,), (6,)]),
    "Concatenate": (lambda: layers.Concatenate(), [(3,), (5,)]),
    "Concatenate_axis1": (lambda: layers.Concatenate(axis=1), [(2, 3), (4, 3)]),
    "Dot": (lambda: layers.Dot(axes=1), [(5,), (5,)]),
    "Dot_3d": (lambda: layers.Dot(axes=(2, 2)), [(3, 4), (2, 4)]),
    "Dot_mixed": (lambda: layers.Dot(axes=(1, 2)), [(3, 4), (2, 3)]),
    "Dot_normalize": (lambda: layers.Dot(axes=-1, normalize=True), [(3, 5), (2, 5)]),
}


@pytest.mark.parametrize("case", sorted(MERGES))
def test_gradients_every_merge_layer(case):
    make, shapes = MERGES[case]
    inputs = [cn.Input(s, dtype="float64") for s in shapes]
    # a Dense in front of each input, so the merge's gradients reach parameters
    def dense(size):
        return layers.Dense(size, activation="tanh")

    pre = [(dense(s[-1]) if len(s) == 1 else layers.TimeDistributed(dense(s[-1])))(t)
           for s, t in zip(shapes, inputs)]
    merged = make()(pre)
    model = cn.Model(inputs, merged)
    xs = [_x(4, *s, seed=i + 1) for i, s in enumerate(shapes)]
    check_graph_gradients(model, xs, seed=len(case))


def test_merge_layers_forward_values():
    x1, x2, x3 = _x(4, 3), _x(4, 3, seed=2), _x(4, 3, seed=3)
    np.testing.assert_allclose(layers.Add(dtype="float64").forward([x1, x2, x3]), x1 + x2 + x3)
    np.testing.assert_allclose(layers.Subtract(dtype="float64").forward([x1, x2]), x1 - x2)
    np.testing.assert_allclose(layers.Multiply(dtype="float64").forward([x1, x2, x3]),
                               x1 * x2 * x3)
    np.testing.assert_allclose(layers.Average(dtype="float64").forward([x1, x2]), (x1 + x2) / 2)
    np.testing.assert_allclose(layers.Maximum(dtype="float64").forward([x1, x2, x3]),
                               np.maximum(np.maximum(x1, x2), x3))
    np.testing.assert_allclose(layers.Minimum(dtype="float64").forward([x1, x2]),
                               np.minimum(x1, x2))
    np.testing.assert_allclose(layers.Concatenate(dtype="float64").forward([x1, x2[:, :2]]),
                               np.concatenate([x1, x2[:, :2]], axis=1))
    np.testing.assert_allclose(layers.Dot(1, dtype="float64").forward([x1, x2]),
                               np.sum(x1 * x2, axis=1, keepdims=True))
    a, b = _x(4, 3, 5), _x(4, 2, 5, seed=2)
    np.testing.assert_allclose(layers.Dot(axes=2, dtype="float64").forward([a, b]),
                               np.einsum("nik,njk->nij", a, b))
    an = a / np.linalg.norm(a, axis=2, keepdims=True)
    bn = b / np.linalg.norm(b, axis=2, keepdims=True)
    np.testing.assert_allclose(layers.Dot(axes=2, normalize=True, dtype="float64").forward([a, b]),
                               np.einsum("nik,njk->nij", an, bn))


def test_gradients_nested_models_sequential_and_functional_shared():
    inner_in = cn.Input((4,), dtype="float64")
    inner = cn.Model(inner_in, layers.Dense(4, activation="tanh")(
        layers.Dense(6, activation="tanh")(inner_in)), name="inner")
    seq = cn.Sequential([layers.Dense(3, activation="tanh"), layers.Dense(4)], dtype="float64")
    seq.build((4,))
    a, b = cn.Input((4,), dtype="float64"), cn.Input((4,), dtype="float64")
    out = layers.Add()([inner(a), inner(b), seq(a)])      # inner is shared: called twice
    model = cn.Model([a, b], layers.Dense(2)(out))
    assert model._params.size == inner._params.size + seq._params.size + 4 * 2 + 2
    # the nested models' parameters are slices of the outer buffer
    assert np.shares_memory(inner._params, model._params)
    assert np.shares_memory(seq._params, model._params)
    check_graph_gradients(model, [_x(5, 4), _x(5, 4, seed=2)])


def test_dense_after_dense_fusion_is_planned_in_graphs():
    inp = cn.Input((6,))
    h = layers.Dense(8, activation="relu")(inp)
    h2 = layers.Dense(8, activation="tanh")(h)
    model = cn.Model(inp, layers.Dense(3, activation="softmax")(h2))
    assert [s.fuse_prev for s in model._steps] == [False, True, True]
    model.compile("sgd", "sparse_categorical_crossentropy")
    assert model._fused_output()
    # fan-out blocks the fusion of the derivative: both consumers need dy
    inp = cn.Input((6,))
    h = layers.Dense(8, activation="relu")(inp)
    model = cn.Model(inp, [layers.Dense(2)(h), layers.Dense(3)(h)])
    assert [s.fuse_prev for s in model._steps] == [False, False, False]


# ---------------------------------------------------------------------------------------
# Sequential is the linear graph: same results
# ---------------------------------------------------------------------------------------
def _mlp_layers():
    return [layers.Dense(16, activation="relu"), layers.Dense(12, activation="tanh"),
            layers.Dense(4, activation="softmax")]


def test_sequential_and_equivalent_functional_model_train_bit_for_bit():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 10)).astype(np.float32)
    y = rng.integers(0, 4, 64)
    cn.set_seed(3)
    seq = cn.Sequential(_mlp_layers())
    seq.build((None, 10))
    inp = cn.Input((10,))
    h = inp
    for layer in _mlp_layers():
        h = layer(h)
    fun = cn.Model(inp, h)
    fun.set_weights(seq.get_weights())
    for m in (seq, fun):
        m.compile(optimizer=cn.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    hs = seq.fit(x, y, epochs=3, batch_size=16, shuffle=False, verbose=0)
    hf = fun.fit(x, y, epochs=3, batch_size=16, shuffle=False, verbose=0)
    assert hs.history == hf.history
    for a, b in zip(seq.get_weights(), fun.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(seq.predict(x), fun.predict(x))
    assert seq.evaluate(x, y) == fun.evaluate(x, y)


def test_build_accepts_shapes_with_and_without_the_batch_axis():
    a = cn.Sequential([layers.Dense(3)])
    a.build((None, 20))
    b = cn.Sequential([layers.Dense(3)])
    b.build((20,))
    assert a.input_shape == b.input_shape == (20,)
    assert a.output_shape == (3,)
    c = cn.Sequential([cn.Input((20,)), layers.Dense(3)])
    assert c.built and c.input_shape == (20,)


# ---------------------------------------------------------------------------------------
# training graphs end to end
# ---------------------------------------------------------------------------------------
def _blobs(n, features, classes, seed):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3, (classes, features))
    labels = rng.integers(0, classes, n)
    return (centers[labels] + rng.normal(0, 1.0, (n, features))).astype(np.float32), labels


def test_residual_mlp_learns():
    x, y = _blobs(600, 8, 4, seed=0)
    cn.set_seed(0)
    inp = cn.Input((8,))
    h = layers.Dense(32, activation="relu")(inp)
    for _ in range(2):                                     # two residual blocks
        r = layers.Dense(32, activation="relu")(h)
        r = layers.Dense(32)(r)
        h = layers.Activation("relu")(layers.Add()([h, r]))
    model = cn.Model(inp, layers.Dense(4, activation="softmax")(h))
    model.compile(optimizer=cn.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    before = model.evaluate(x, y)["loss"]
    model.fit(x[:500], y[:500], epochs=15, batch_size=32, verbose=0)
    logs = model.evaluate(x[500:], y[500:])
    assert logs["loss"] < 0.5 * before
    assert logs["accuracy"] > 0.9


def test_two_inputs_two_outputs_learn_with_dicts_and_loss_weights():
    rng = np.random.default_rng(1)
    xa, labels = _blobs(800, 6, 3, seed=2)
    xb = rng.standard_normal((800, 4)).astype(np.float32)
    target = (xb @ np.array([1.0, -2.0, 0.5, 1.5]) + 0.5 * xa[:, 0]).astype(np.float32)[:, None]
    cn.set_seed(1)
    a, b = cn.Input((6,), name="a"), cn.Input((4,), name="b")
    joint = layers.Concatenate()([layers.Dense(16, activation="relu")(a),
                                  layers.Dense(16, activation="relu")(b)])
    h = layers.Dense(32, activation="relu")(joint)
    cls = layers.Dense(3, activation="softmax", name="cls")(h)
    reg = layers.Dense(1, name="reg")(layers.Concatenate()([h, b]))
    model = cn.Model({"a": a, "b": b}, {"cls": cls, "reg": reg})
    assert model.output_names == ["cls", "reg"]
    model.compile(optimizer=cn.optimizers.Adam(3e-3),
                  loss={"cls": "sparse_categorical_crossentropy", "reg": "mse"},
                  loss_weights={"cls": 1.0, "reg": 0.5}, metrics={"cls": ["accuracy"]})
    history = model.fit({"a": xa[:600], "b": xb[:600]}, {"cls": labels[:600], "reg": target[:600]},
                        epochs=20, batch_size=32, verbose=0, validation_split=0.1)
    assert {"loss", "cls_loss", "reg_loss", "cls_accuracy", "val_loss", "val_cls_accuracy"} \
        <= set(history.history)
    logs = model.evaluate([xa[600:], xb[600:]], [labels[600:], target[600:]])
    assert logs["cls_accuracy"] > 0.9
    assert logs["reg_loss"] < 0.1 * float(np.var(target))
    np.testing.assert_allclose(logs["loss"], logs["cls_loss"] + 0.5 * logs["reg_loss"],
                               rtol=1e-5)
    pred = model.predict({"a": xa[:5], "b": xb[:5]})
    assert set(pred) == {"cls", "reg"} and pred["cls"].shape == (5, 3)


def _echo_data(n, steps, vocab, delay, seed):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocab + 1, (n, steps))
    target = np.zeros((n, steps), np.int64)
    target[:, delay:] = ids[:, :-delay]
    return ids, target


@pytest.mark.parametrize("head", ["dense", "time_distributed"])
def test_lstm_return_sequences_learns_delayed_echo(head):
    """Per-step targets (batch, time) against (batch, time, classes) outputs: output at t
    is the input at t - 2."""
    vocab, steps, delay = 4, 8, 2
    ids, target = _echo_data(768, steps, vocab, delay, seed=0)
    x = np.eye(vocab + 1, dtype=np.float32)[ids]           # one-hot (n, steps, vocab + 1)
    cn.set_seed(2)
    inp = cn.Input((steps, vocab + 1))
    h = layers.LSTM(24, return_sequences=True)(inp)
    dense = layers.Dense(vocab + 1, activation="softmax")
    out = (dense if head == "dense" else layers.TimeDistributed(dense))(h)
    model = cn.Model(inp, out)
    model.compile(optimizer=cn.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    assert model._fused_output() == (head == "dense")
    model.fit(x[:640], target[:640], epochs=20, batch_size=32, verbose=0)
    logs = model.evaluate(x[640:], target[640:])
    assert logs["accuracy"] > 0.95, logs


def test_embedding_mask_reaches_losses_and_metrics():
    """Padded steps (id 0) count zero: their targets do not change the loss or metrics,
    and the mean is over the real steps."""
    rng = np.random.default_rng(4)
    ids = rng.integers(1, 5, (6, 5))
    ids[:, 3:] = 0                                         # the last two steps are padding
    target = rng.integers(0, 3, (6, 5))
    cn.set_seed(4)
    inp = cn.Input((5,))
    h = layers.LSTM(4, return_sequences=True)(layers.Embedding(5, 3, mask_zero=True)(inp))
    out = layers.TimeDistributed(layers.Dense(3, activation="softmax"))(h)
    model = cn.Model(inp, out)
    model.compile("sgd", "sparse_categorical_crossentropy", metrics=["accuracy"])
    logs = model.evaluate(ids, target)
    garbage = target.copy()
    garbage[:, 3:] = (garbage[:, 3:] + 1) % 3
    assert model.evaluate(ids, garbage) == logs
    probs = model.predict(ids)
    real = probs[:, :3].reshape(-1, 3)
    expected = -np.mean(np.log(real[np.arange(len(real)), target[:, :3].reshape(-1)]))
    np.testing.assert_allclose(logs["loss"], expected, rtol=1e-5)
    acc = np.mean(probs[:, :3].argmax(-1) == target[:, :3])
    np.testing.assert_allclose(logs["accuracy"], acc)
    _, grads = model.compute_gradients(ids, target)
    _, grads_garbage = model.compute_gradients(ids, garbage)
    for g, h in zip(grads, grads_garbage):
        np.testing.assert_allclose(g, h, rtol=1e-6)


def test_per_step_sample_weight_and_nd_regression_targets():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((8, 4, 3)).astype(np.float64)
    y = rng.standard_normal((8, 4, 2))
    inp = cn.Input((4, 3), dtype="float64")
    model = cn.Model(inp, layers.TimeDistributed(layers.Dense(2))(inp))
    model.compile("sgd", "mse")
    w = rng.uniform(0, 1, (8, 4))
    pred = model.predict(x)
    expected = np.mean(np.mean((pred - y) ** 2, axis=-1) * w)
    np.testing.assert_allclose(model.evaluate(x, y, sample_weight=w)["loss"], expected,
                               rtol=1e-10)
    w_sample = rng.uniform(0, 1, 8)
    expected = np.mean(np.mean((pred - y) ** 2, axis=-1) * w_sample[:, None])
    np.testing.assert_allclose(model.evaluate(x, y, sample_weight=w_sample)["loss"], expected,
                               rtol=1e-10)
    with pytest.raises(ValueError, match="sample_weight"):
        model.fit(x, y, sample_weight=np.ones((8, 3)), verbose=0)


# ---------------------------------------------------------------------------------------
# custom training loops and freezing
# ---------------------------------------------------------------------------------------
def _small_graph(seed):
    cn.set_seed(seed)
    inp = cn.Input((5,))
    h = layers.Dense(8, activation="tanh")(inp)
    out = layers.Dense(2)(layers.Add()([layers.Dense(8, activation="relu")(h), h]))
    return cn.Model(inp, out)


def test_custom_loop_step_equals_train_on_batch():
    rng = np.random.default_rng(6)
    x, y = rng.standard_normal((16, 5)).astype(np.float32), rng.standard_normal((16, 2))
    a, b = _small_graph(0), _small_graph(0)
    b.set_weights(a.get_weights())
    for m in (a, b):
        m.compile(optimizer=cn.optimizers.Adam(0.01), loss="mse")
    for _ in range(3):
        loss_a = a.train_on_batch(x, y)
        y_pred = b(x, training=True)
        loss_b, dy = b.compute_loss(y=y, y_pred=y_pred)
        dx = b.backward(dy)
        b.optimizer.apply_gradients(b)
        assert dx.shape == x.shape
        np.testing.assert_allclose(loss_a, loss_b, rtol=1e-6)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)


def test_backward_without_input_grads_fills_the_same_weight_gradients():
    """model.backward(dy, input_grads=False): the same weight gradients, no dx (a
    discriminator's step on data skips its first convolution's input gradient)."""
    rng = np.random.default_rng(16)
    x = rng.standard_normal((6, 8, 8, 2))
    models = []
    for _ in range(2):
        cn.set_seed(3)
        m = cn.Sequential([cn.Input((8, 8, 2)),
                           layers.Conv2D(4, 4, strides=2, padding="same",
                                         activation="leaky_relu"),
                           layers.Flatten(), layers.Dense(1)], dtype="float64")
        models.append(m)
    dy = rng.standard_normal((6, 1))
    grads = []
    for m, flag in zip(models, (True, False)):
        m(x, training=True)
        dx = m.backward(dy, input_grads=flag)
        assert (dx is None) == (not flag)
        grads.append(m._grads.copy())
    np.testing.assert_array_equal(grads[0], grads[1])


def test_backward_without_weight_grads_gives_the_same_input_gradient():
    """model.backward(dy, weight_grads=False): the same d loss / d x, a zeroed gradient
    buffer (convolutions skip their kernel and bias gradients; the others are zeroed),
    and the next full backward is complete again."""
    rng = np.random.default_rng(17)
    x = rng.standard_normal((3, 8, 8, 2))
    cn.set_seed(4)
    m = cn.Sequential([cn.Input((8, 8, 2)),
                       layers.Conv2D(16, 3, padding="same", activation="relu"),   # Winograd
                       layers.Conv2D(16, 3, padding="same", activation="elu"),
                       layers.Conv2DTranspose(3, 4, strides=2, padding="same",
                                              activation="leaky_relu"),
                       layers.Conv2D(2, 4, strides=2, padding="same", activation="tanh",
                                     kernel_regularizer=cn.regularizers.L2(0.1)),
                       layers.Flatten(), layers.Dense(1)], dtype="float64")
    dy = rng.standard_normal((3, 1))
    m(x, training=True)
    full = m.backward(dy)
    grads = m._grads.copy()
    assert np.any(grads)
    m(x, training=True)
    np.testing.assert_array_equal(m.backward(dy, weight_grads=False), full)
    assert not np.any(m._grads)
    assert not any(layer._skip_weight_grads for layer in m.layers)
    m(x, training=True)
    np.testing.assert_array_equal(m.backward(dy), full)
    np.testing.assert_array_equal(m._grads, grads)


def test_train_step_override_is_used_by_fit():
    calls = []

    class Custom(cn.Model):
        def train_step(self, data):
            x, y = data
            calls.append(len(x))
            y_pred = self(x, training=True)
            loss, dy = self.compute_loss(y=y, y_pred=y_pred)
            self.backward(dy)
            self.optimizer.apply_gradients(self)
            return {"loss": loss}

    cn.set_seed(1)
    inp = cn.Input((3,))
    model = Custom(inp, layers.Dense(1)(inp))
    model.compile(optimizer=cn.optimizers.SGD(0.1), loss="mse")
    rng = np.random.default_rng(7)
    x = rng.standard_normal((40, 3)).astype(np.float32)
    y = x @ np.array([[1.0], [-1.0], [2.0]], np.float32)
    history = model.fit(x, y, epochs=30, batch_size=10, verbose=0)
    assert calls[:4] == [10, 10, 10, 10]
    assert history.history["loss"][-1] < 0.05 * history.history["loss"][0]


def test_frozen_layers_and_gan_recipe():
    rng = np.random.default_rng(8)
    cn.set_seed(8)
    z_in = cn.Input((4,))
    generator = cn.Model(z_in, layers.Dense(6)(layers.Dense(8, activation="relu")(z_in)),
                         name="generator")
    d_in = cn.Input((6,))
    discriminator = cn.Model(d_in, layers.Dense(1, activation="sigmoid")(
        layers.Dense(8, activation="relu")(d_in)), name="discriminator")
    discriminator.compile(optimizer=cn.optimizers.Adam(0.01), loss="binary_crossentropy")
    discriminator.trainable = False                       # Keras 2 recipe: frozen in the GAN
    z = cn.Input((4,))
    gan = cn.Model(z, discriminator(generator(z)))
    gan.compile(optimizer=cn.optimizers.Adam(0.01), loss="binary_crossentropy")
    noise = rng.standard_normal((16, 4)).astype(np.float32)
    d_before, g_before = discriminator.get_weights(), generator.get_weights()
    gan.train_on_batch(noise, np.ones(16))
    for a, b in zip(d_before, discriminator.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(g_before, generator.get_weights()))
    # the discriminator was compiled while trainable: it still trains on its own
    fake = generator.predict(noise)
    discriminator.train_on_batch(fake, np.zeros(16))
    assert any(not np.array_equal(a, b) for a, b in zip(d_before, discriminator.get_weights()))
    # custom loop: the live flag decides; frozen gradients are zero
    d_now = discriminator.get_weights()
    gan(noise, training=True)
    gan.backward(np.ones((16, 1), np.float32))
    assert not np.any(discriminator._grads)
    gan.optimizer.apply_gradients(gan)
    for a, b in zip(d_now, discriminator.get_weights()):
        np.testing.assert_array_equal(a, b)
    lines = []
    gan.summary(print_fn=lines.append)
    assert f"Trainable params: {generator.count_params():,}" in lines


def test_layer_trainable_false_in_sequential():
    model = cn.Sequential([layers.Dense(4), layers.Dense(2)])
    model.layers[0].trainable = False
    model.compile(optimizer=cn.optimizers.SGD(0.1, momentum=0.9), loss="mse")
    rng = np.random.default_rng(9)
    x, y = rng.standard_normal((8, 3)), rng.standard_normal((8, 2))
    model.build((3,))
    first = model.layers[0].get_weights()
    last = model.layers[1].get_weights()
    model.fit(x, y, epochs=3, verbose=0)
    for a, b in zip(first, model.layers[0].get_weights()):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(last[0], model.layers[1].get_weights()[0])


def test_layer_shared_between_two_models_keeps_one_value():
    """A layer in two models that are not nested: each model takes the weights back into
    its own buffer when it runs, so both always see the layer's current values."""
    inp = cn.Input((3,))
    shared = layers.Dense(2)
    code = shared(inp)
    encoder = cn.Model(inp, code)
    auto = cn.Model(inp, layers.Dense(3)(code))
    auto.compile(optimizer=cn.optimizers.SGD(0.1), loss="mse")
    x = np.random.default_rng(10).standard_normal((8, 3)).astype(np.float32)
    auto.fit(x, x, epochs=2, verbose=0)
    np.testing.assert_allclose(encoder.predict(x), x @ shared.kernel + shared.bias, rtol=1e-5)
    kernel = shared.get_weights()[0]
    encoder.set_weights([kernel * 2, shared.get_weights()[1]])
    np.testing.assert_array_equal(shared.kernel, kernel * 2)
    auto.predict(x)       # auto re-binds: the new value is kept
    np.testing.assert_array_equal(shared.kernel, kernel * 2)


# ---------------------------------------------------------------------------------------
# save / load, summary
# ---------------------------------------------------------------------------------------
def test_save_load_round_trip_functional(tmp_path):
    """Every merge layer, a shared layer, a nested Sequential and a nested Model, two
    outputs: the loaded model predicts, evaluates and trains on identically."""
    rng = np.random.default_rng(11)
    cn.set_seed(11)
    a, b = cn.Input((6,), name="a"), cn.Input((6,), name="b")
    shared = layers.Dense(6, activation="tanh", name="shared")
    sa, sb = shared(a), shared(b)
    sub_in = cn.Input((6,))
    sub = cn.Model(sub_in, layers.Dense(6, activation="tanh")(sub_in), name="sub")
    seq = cn.Sequential([layers.Dense(6, activation="tanh"), layers.Dense(6)], name="seq")
    merged = [layers.Add()([sa, sb]), layers.Subtract()([sa, sb]), layers.Multiply()([sa, sb]),
              layers.Average()([sa, sb]), layers.Maximum()([sa, sb]),
              layers.Minimum()([sa, sub(sb)]), seq(sa)]
    cat = layers.Concatenate()(merged)
    dot = layers.Dot(axes=1, normalize=True)([sa, sb])
    out1 = layers.Dense(3, activation="softmax", name="cls")(cat)
    out2 = layers.Dense(1, name="reg")(layers.Concatenate()([cat, dot]))
    model = cn.Model([a, b], [out1, out2], name="everything")
    model.compile(optimizer=cn.optimizers.Adam(0.01),
                  loss=["sparse_categorical_crossentropy", "mse"], loss_weights=[1.0, 0.3],
                  metrics=[["accuracy"], ["mae"]])
    xa = rng.standard_normal((32, 6)).astype(np.float32)
    xb = rng.standard_normal((32, 6)).astype(np.float32)
    ys = [rng.integers(0, 3, 32), rng.standard_normal((32, 1)).astype(np.float32)]
    model.fit([xa, xb], ys, epochs=2, batch_size=8, verbose=0)
    path = tmp_path / "graph.cyn"
    model.save(path)
    loaded = cn.load_model(path)
    assert isinstance(loaded, cn.Model) and loaded.name == "everything"
    assert loaded.output_names == model.output_names
    for u, v in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(u, v)
    for p, q in zip(model.predict([xa, xb]), loaded.predict([xa, xb])):
        np.testing.assert_array_equal(p, q)
    assert loaded.evaluate([xa, xb], ys) == model.evaluate([xa, xb], ys)
    model.fit([xa, xb], ys, epochs=1, batch_size=8, shuffle=False, verbose=0)
    loaded.fit([xa, xb], ys, epochs=1, batch_size=8, shuffle=False, verbose=0)
    for u, v in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(u, v)


def test_summary_shows_the_graph():
    a, b = cn.Input((4,), name="left"), cn.Input((4,), name="right")
    out = layers.Dense(2, name="head")(layers.Add(name="join")([a, layers.Dense(4, name="d")(b)]))
    model = cn.Model([a, b], out, name="two")
    lines = []
    model.summary(print_fn=lines.append)
    text = "\n".join(lines)
    assert "Connected to" in text and 'Model: "two"' in text
    join = next(line for line in lines if line.startswith("join (Add)"))
    assert "left, d" in join and "(None, 4)" in join
    assert "Total params: 30" in text


# ---------------------------------------------------------------------------------------
# bad graphs and bad data: clear errors at build or call time
# ---------------------------------------------------------------------------------------
def test_layer_on_incompatible_shape_names_the_layer():
    inp = cn.Input((5,))
    with pytest.raises(ValueError, match=r"conv.*Conv2D.*\(None, 5\)"):
        layers.Conv2D(4, 3, name="conv")(inp)
    dense = layers.Dense(3, name="d5")
    dense(inp)
    with pytest.raises(ValueError, match=r"d5.*built for inputs"):
        dense(cn.Input((6,)))
    with pytest.raises(ValueError, match=r"add_bad.*one shape"):
        layers.Add(name="add_bad")([inp, cn.Input((4,))])
    with pytest.raises(ValueError, match="at least 2"):
        layers.Add()([inp])
    with pytest.raises(ValueError, match=r"cat.*except along axis"):
        layers.Concatenate(axis=1, name="cat")([cn.Input((2, 3)), cn.Input((2, 4))])
    with pytest.raises(ValueError, match="differ"):
        layers.Dot(axes=1)([inp, cn.Input((4,))])
    with pytest.raises(TypeError, match="mix of symbolic"):
        layers.Add()([inp, np.ones((2, 5))])


def test_output_not_depending_on_inputs():
    a, b = cn.Input((3,), name="a_in"), cn.Input((3,), name="b_in")
    out = layers.Dense(2)(b)
    with pytest.raises(ValueError, match=r"depends on Input 'b_in'.*not in the model's inputs"):
        cn.Model(a, out)
    with pytest.raises(ValueError, match="must come from cn.Input"):
        cn.Model(out, out)
    with pytest.raises(TypeError, match="outputs must be a symbolic tensor"):
        cn.Model(a, np.ones(3))


def test_mismatched_inputs_targets_and_losses():
    a, b = cn.Input((3,), name="a"), cn.Input((2,), name="b")
    h = layers.Concatenate()([a, b])
    model = cn.Model([a, b], [layers.Dense(2, name="o1")(h), layers.Dense(1, name="o2")(h)])
    with pytest.raises(ValueError, match=r"loss has 3 entries.*2 outputs"):
        model.compile("sgd", loss=["mse", "mse", "mse"])
    with pytest.raises(ValueError, match=r"unknown outputs \['nope'\]"):
        model.compile("sgd", loss={"nope": "mse"})
    model.compile("sgd", loss=["mse", "mse"])
    xa, xb = np.ones((4, 3)), np.ones((4, 2))
    ys = [np.ones((4, 2)), np.ones((4, 1))]
    with pytest.raises(ValueError, match=r"2 inputs.*list of 2"):
        model.fit(xa, ys, verbose=0)
    with pytest.raises(ValueError, match=r"unknown inputs \['c'\]"):
        model.fit({"a": xa, "c": xb}, ys, verbose=0)
    with pytest.raises(ValueError, match=r"2 outputs.*list of 2"):
        model.fit([xa, xb], ys[:1], verbose=0)
    with pytest.raises(ValueError, match=r"unknown outputs \['o3'\]"):
        model.fit([xa, xb], {"o1": ys[0], "o3": ys[1]}, verbose=0)
    with pytest.raises(ValueError, match=r"no target for output 'o2'"):
        model.fit([xa, xb], {"o1": ys[0]}, verbose=0)
    with pytest.raises(ValueError, match=r"x\['b'\] has per-sample shape \(3,\)"):
        model.fit([xa, xa], ys, verbose=0)
    with pytest.raises(ValueError, match="same number of samples"):
        model.fit([xa, xb], [ys[0][:3], ys[1]], verbose=0)
    with pytest.raises(ValueError, match=r"y\['o1'\] must have shape"):
        model.fit([xa, xb], [np.ones((4, 3)), ys[1]], verbose=0)


def test_backward_checks_its_arguments():
    model = _small_graph(0)
    with pytest.raises(RuntimeError, match="before backward"):
        model.backward(np.ones((2, 2)))
    model(np.ones((3, 5), np.float32), training=True)
    with pytest.raises(ValueError, match=r"grad_output must have the shape of the output \(3, 2\)"):
        model.backward(np.ones((3, 3)))
    with pytest.raises(TypeError, match="apply_gradients"):
        cn.optimizers.SGD().apply_gradients(np.ones(3))


def test_eager_layer_call_on_arrays_still_works():
    dense = layers.Dense(3, dtype="float64")
    x = _x(4, 2)
    np.testing.assert_allclose(dense(x), x @ dense.kernel + dense.bias)
    np.testing.assert_allclose(layers.Add(dtype="float64")([x, x]), 2 * x)


def test_general_graph_loop_equals_the_one_path_loop():
    """A linear graph runs a tight loop over its layers; the general loop over the plan
    (used by every other graph) gives the same bits."""
    rng = np.random.default_rng(12)
    x = rng.standard_normal((32, 10)).astype(np.float32)
    y = rng.integers(0, 4, 32)
    models = []
    for general in (False, True):
        cn.set_seed(5)
        model = cn.Sequential(_mlp_layers())
        model.compile(optimizer=cn.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
        model.build((10,))
        assert model._chain is not None
        if general:
            model._chain = None
        model.fit(x, y, epochs=2, batch_size=8, shuffle=False, verbose=0)
        models.append(model)
    for a, b in zip(models[0].get_weights(), models[1].get_weights()):
        np.testing.assert_array_equal(a, b)


def test_losses_on_outputs_of_any_rank():
    rng = np.random.default_rng(13)
    p = rng.uniform(0.05, 1, (3, 4, 5))
    p /= p.sum(-1, keepdims=True)
    labels = rng.integers(0, 5, (3, 4))
    loss = cn.losses.SparseCategoricalCrossentropy(reduction="none")
    per = loss(labels, p)
    assert per.shape == (3, 4)
    np.testing.assert_allclose(per, -np.log(np.take_along_axis(p, labels[..., None], -1))[..., 0])
    np.testing.assert_allclose(cn.losses.SparseCategoricalCrossentropy()(labels, p), per.mean())
    w = rng.uniform(0, 1, (3, 4))
    np.testing.assert_allclose(cn.losses.SparseCategoricalCrossentropy()(labels, p, w),
                               (per * w).mean())
    t = rng.standard_normal((3, 4, 5))
    np.testing.assert_allclose(cn.losses.MeanSquaredError()(t, p), np.mean((t - p) ** 2))
    onehot = np.eye(5)[labels]
    np.testing.assert_allclose(cn.losses.CategoricalCrossentropy()(onehot, p), per.mean())
    with pytest.raises(ValueError, match=r"class labels of shape \(3, 4\)"):
        loss(labels[:, :3], p)


def test_metrics_with_a_padding_mask():
    acc = cn.metrics.get("accuracy")
    y_pred = np.array([[[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]])
    labels = np.array([[0, 0, 1]])
    acc.update(labels, y_pred, sample_weight=np.array([[True, False, False]]))
    assert acc.result() == 1.0
    mse = cn.metrics.get("mse")
    mse.update(np.zeros((1, 3, 2)), y_pred, sample_weight=np.array([[1, 1, 0]]))
    np.testing.assert_allclose(mse.result(), np.mean(y_pred[0, :2] ** 2))


def test_sequential_inside_sequential_and_unbuilt_sequential_in_a_graph():
    rng = np.random.default_rng(14)
    x = rng.standard_normal((6, 3)).astype(np.float32)
    inner = cn.Sequential([layers.Dense(4, activation="tanh")])
    outer = cn.Sequential([inner, layers.Dense(2)])
    outer.build((3,))
    assert np.shares_memory(inner._params, outer._params)
    np.testing.assert_allclose(outer.predict(x), layers.Dense.forward(
        outer.layers[1], inner.predict(x)), rtol=1e-6)
    block = cn.Sequential([layers.Dense(3)])
    inp = cn.Input((3,))
    model = cn.Model(inp, layers.Add()([inp, block(inp)]))
    np.testing.assert_allclose(model.predict(x), x + block.predict(x), rtol=1e-6)


def test_model_replica_shares_weights_with_its_own_buffers():
    """model._replica(): the same weights, its own per-call state (what concurrent
    inference builds on): predictions from threads agree with the model's."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(15)
    a, b = cn.Input((5,)), cn.Input((5,))
    shared = layers.Dense(6, activation="tanh")
    model = cn.Model([a, b], layers.Dense(3)(layers.Concatenate()([shared(a), shared(b)])))
    xs = [[rng.standard_normal((50, 5)).astype(np.float32) for _ in range(2)] for _ in range(4)]
    expected = [model.predict(x) for x in xs]
    replicas = [model._replica() for _ in range(4)]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda rx: rx[0].predict(rx[1]), zip(replicas, xs)))
    for e, g in zip(expected, got):
        np.testing.assert_array_equal(e, g)
    model.get_layer(shared.name).set_weights([np.zeros((5, 6)), np.zeros(6)])
    np.testing.assert_array_equal(replicas[0].predict(xs[0]), model.predict(xs[0]))
    # the model re-binds (another model took the shared layer): its replicas follow
    other = cn.Model(a, shared(a))
    other.predict(xs[0][0])
    np.testing.assert_array_equal(replicas[1].predict(xs[1]), model.predict(xs[1]))
    np.testing.assert_array_equal(other.predict(xs[0][0]), np.zeros((50, 6), np.float32))
    with pytest.raises(ValueError, match="no layer named 'nope'"):
        model.get_layer("nope")


def test_replica_of_a_replica_runs_on_its_own_layers():
    """A replica's replica (what a replica's predict makes when the model's own buffers
    are busy) never runs the model's layers: it used to, racing the model's buffers."""
    a, b = cn.Input((5,)), cn.Input((5,))
    model = cn.Model([a, b], layers.Dense(3)(layers.Add()([layers.Dense(6)(a),
                                                           layers.Dense(6)(b)])))
    model.predict([np.ones((2, 5), np.float32)] * 2)
    first = model._replica()
    second = first._replica()
    originals = {id(layer) for layer in model._param_layers}
    for replica in (first, second):
        assert not any(id(step.layer) in originals for step in replica._steps)
        assert replica._replica_of is model


def test_gradients_attention_built_from_merge_layers():
    """Self-attention from Dot, softmax and Dot: one input fans out to queries, keys and
    values, a residual Add closes the block."""
    inp = cn.Input((5, 4), dtype="float64")
    q = layers.TimeDistributed(layers.Dense(4))(inp)
    k = layers.TimeDistributed(layers.Dense(4))(inp)
    v = layers.TimeDistributed(layers.Dense(4))(inp)
    scores = layers.Dot(axes=(2, 2))([q, k])                       # (batch, 5, 5)
    weights = layers.Activation("softmax")(scores)
    attended = layers.Dot(axes=(2, 1))([weights, v])               # (batch, 5, 4)
    out = layers.Add()([inp, attended])
    model = cn.Model(inp, out)
    assert model.output_shape == (5, 4)
    check_graph_gradients(model, _x(3, 5, 4))


def test_layer_both_inside_a_nested_model_and_outside_is_refused():
    inp = cn.Input((3,))
    dense = layers.Dense(3, name="twice_used")
    inner = cn.Model(inp, dense(inp), name="holder")
    outer_in = cn.Input((3,))
    with pytest.raises(ValueError, match=r"'twice_used' is used both inside nested model 'holder'"):
        cn.Model(outer_in, dense(inner(outer_in)))


def test_load_refuses_a_forged_graph(tmp_path):
    import json
    import zipfile

    inp = cn.Input((3,))
    model = cn.Model(inp, layers.Dense(2)(inp))
    path = tmp_path / "g.cyn"
    model.save(path)
    with zipfile.ZipFile(path) as zf:
        header = json.loads(zf.read("cyneuron.json"))
        members = {n: zf.read(n) for n in zf.namelist() if n != "cyneuron.json"}
    for forged in ({"outputs": [-1]}, {"outputs": [7]}, {"nodes": [{"layer": "nope",
                                                                      "inputs": [0]}]}):
        bad = json.loads(json.dumps(header))
        bad["model"].update(forged)
        target = tmp_path / "bad.cyn"
        with zipfile.ZipFile(target, "w") as zf:
            zf.writestr("cyneuron.json", json.dumps(bad))
            for name, data in members.items():
                zf.writestr(name, data)
        with pytest.raises(ValueError, match="cannot rebuild the model"):
            cn.load_model(target)


def test_autoencoder_with_a_shared_encoder_model():
    """An encoder model nested in an autoencoder and called on two views: training the
    autoencoder trains the encoder (its parameters are a slice of the outer buffer)."""
    rng = np.random.default_rng(16)
    basis = rng.standard_normal((3, 12))
    x = (rng.standard_normal((400, 3)) @ basis).astype(np.float32)
    noisy = (x + 0.05 * rng.standard_normal(x.shape)).astype(np.float32)
    cn.set_seed(16)
    enc_in = cn.Input((12,))
    encoder = cn.Model(enc_in, layers.Dense(3)(layers.Dense(16, activation="tanh")(enc_in)),
                       name="encoder")
    clean_in, noisy_in = cn.Input((12,), name="clean"), cn.Input((12,), name="noisy")
    decoder = layers.Dense(12, name="decoder")
    code_clean, code_noisy = encoder(clean_in), encoder(noisy_in)
    model = cn.Model([clean_in, noisy_in],
                     {"recon": decoder(code_noisy),
                      "agree": layers.Subtract(name="agree")([code_clean, code_noisy])})
    model.compile(optimizer=cn.optimizers.Adam(0.01), loss={"recon": "mse", "agree": "mse"},
                  loss_weights={"recon": 1.0, "agree": 0.1})
    before = encoder.get_weights()
    zeros = np.zeros((400, 3), np.float32)
    first = model.evaluate([x, noisy], {"recon": x, "agree": zeros})["recon_loss"]
    model.fit([x, noisy], {"recon": x, "agree": zeros}, epochs=30, batch_size=32, verbose=0)
    last = model.evaluate([x, noisy], {"recon": x, "agree": zeros})["recon_loss"]
    assert last < 0.2 * first
    assert all(not np.array_equal(a, b) for a, b in zip(before, encoder.get_weights()))
    codes = model.predict([x, noisy])
    np.testing.assert_allclose(codes["agree"], encoder.predict(x) - encoder.predict(noisy),
                               rtol=1e-4, atol=1e-5)


def test_sequence_graph_with_nd_dense_fused_softmax_and_mask():
    """(batch, time, k) outputs from Dense on 3-D inputs: the softmax + cross-entropy
    fusion and the Dense -> Dense derivative fusion hold, the embedding's mask reaches
    the loss, and float64 gradients match finite differences."""
    inp = cn.Input((4, 3), dtype="float64")
    h = layers.Dense(5, activation="tanh")(inp)
    h = layers.Dense(5, activation="sigmoid")(h)
    out = layers.Dense(3, activation="softmax")(layers.Add()([h, layers.Dense(5)(inp)]))
    model = cn.Model(inp, out)
    assert [s.fuse_prev for s in model._steps][:2] == [False, True]
    model.compile("sgd", "sparse_categorical_crossentropy")
    assert model._fused_output()
    check_graph_gradients(model, _x(3, 4, 3))
    rng = np.random.default_rng(17)
    x, labels = rng.standard_normal((6, 4, 3)), rng.integers(0, 3, (6, 4))
    loss, grads = model.compute_gradients(x, labels)
    probs = model.predict(x)
    expected = -np.mean(np.log(np.take_along_axis(probs, labels[..., None], -1)))
    np.testing.assert_allclose(loss, expected, rtol=1e-10)
    # the same graph behind an Embedding(mask_zero=True): padded steps count zero
    ids_in = cn.Input((4,))
    emb = layers.Embedding(6, 3, mask_zero=True)(ids_in)
    seq = layers.Dense(3, activation="softmax")(layers.Dense(5, activation="tanh")(emb))
    masked = cn.Model(ids_in, seq)
    masked.compile("sgd", "sparse_categorical_crossentropy", metrics=["accuracy"])
    ids = rng.integers(1, 6, (6, 4))
    ids[:, 2:] = 0
    garbage = labels.copy()
    garbage[:, 2:] = (garbage[:, 2:] + 1) % 3
    assert masked.evaluate(ids, labels) == masked.evaluate(ids, garbage)


def test_shared_dense_on_sequences_of_different_lengths():
    a, b = cn.Input((5, 4), dtype="float64"), cn.Input((7, 4), dtype="float64")
    shared = layers.Dense(3, activation="tanh")
    pooled = [layers.GlobalAveragePooling1D()(shared(t)) for t in (a, b)]
    model = cn.Model([a, b], layers.Dot(axes=1)(pooled))
    check_graph_gradients(model, [_x(2, 5, 4), _x(2, 7, 4, seed=2)])
    with pytest.raises(ValueError, match="built for inputs"):
        shared(cn.Input((5, 6), dtype="float64"))


def test_frozen_batch_normalization_runs_in_inference_mode():
    rng = np.random.default_rng(18)
    x = (3 + 2 * rng.standard_normal((64, 4))).astype(np.float64)
    y = rng.standard_normal((64, 2))
    inp = cn.Input((4,), dtype="float64")
    bn = layers.BatchNormalization()
    model = cn.Model(inp, layers.Dense(2)(bn(inp)))
    bn.trainable = False
    model.compile(optimizer=cn.optimizers.SGD(0.001), loss="mse")
    before, dense_before = bn.get_weights(), model.layers[-1].get_weights()
    model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    for a, b in zip(before, bn.get_weights()):          # gamma, beta and the statistics
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(dense_before[0], model.layers[-1].get_weights()[0])
    out = model(x, training=True)                       # the moving statistics, not the batch's
    np.testing.assert_allclose(out, model.predict(x), rtol=1e-12)
    model.backward(np.ones_like(out))
    assert not np.any(model._grads[:8])                 # frozen: gamma and beta get no gradient
