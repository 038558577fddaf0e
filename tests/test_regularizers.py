"""Weight and activity regularizers: values, float64 gradient checks (alone and inside
models: the engine adds their terms to the loss and their gradients to the flat buffer),
every layer that takes them as Keras does, configs, and no cost when unused."""
import numpy as np
import pytest

import cyneuron as cn
from cyneuron import layers
from cyneuron.regularizers import L1, L1L2, L2

from test_gradients import numeric_grad


def test_values_match_keras_formulas():
    x = np.array([[1.5, -2.0], [0.0, 3.0]])
    assert L1(0.1)(x) == pytest.approx(0.1 * 6.5)
    assert L2(0.2)(x) == pytest.approx(0.2 * (2.25 + 4 + 9))
    assert L1L2(0.1, 0.2)(x) == pytest.approx(0.1 * 6.5 + 0.2 * 15.25)
    assert L1()(x) == pytest.approx(0.01 * 6.5) and L2()(x) == pytest.approx(0.01 * 15.25)


@pytest.mark.parametrize("reg", [L1(0.3), L2(0.7), L1L2(0.2, 0.5)], ids=["l1", "l2", "l1l2"])
def test_regularizer_gradients_float64(reg):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3))
    x[np.abs(x) < 0.05] = 0.3            # away from the kink of |x|
    num = numeric_grad(lambda: reg(x), x)
    np.testing.assert_allclose(reg.gradient(x), num, rtol=1e-6, atol=1e-8)


def test_get_and_serialize():
    assert cn.regularizers.get(None) is None
    assert isinstance(cn.regularizers.get("l2"), L2)
    assert isinstance(cn.regularizers.get("l1_l2"), L1L2)
    reg = cn.regularizers.get(cn.regularizers.serialize(L1L2(0.25, 0.5)))
    assert (reg.l1, reg.l2) == (0.25, 0.5)
    with pytest.raises(ValueError, match="unknown regularizer"):
        cn.regularizers.get("l3")
    with pytest.raises(ValueError, match="l2 must be a finite number >= 0"):
        L2(-1.0)
    with pytest.raises(ValueError, match="l1 must be"):
        L1(float("nan"))


def _check_model_gradients(model, x, y, rtol=1e-5):
    """compute_gradients (loss + penalties) against central differences of its loss."""
    loss, grads = model.compute_gradients(x, y)
    for w, g in zip(model.trainable_weights, grads):
        num = numeric_grad(lambda: model.compute_gradients(x, y)[0], w)
        np.testing.assert_allclose(g, num, rtol=rtol, atol=1e-7)
    return loss


def test_sequential_regularizers_gradient_float64():
    rng = np.random.default_rng(1)
    cn.set_seed(1)
    model = cn.Sequential([
        layers.Dense(5, activation="tanh", kernel_regularizer=L1L2(0.01, 0.02),
                     bias_regularizer=L2(0.03), activity_regularizer=L1L2(0.02, 0.05)),
        layers.Dense(3, activation="softmax", activity_regularizer=L2(0.1),
                     kernel_regularizer="l2")], dtype="float64")
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    x, y = rng.standard_normal((7, 4)), rng.integers(0, 3, 7)
    model.build((4,))
    model.layers[0].set_weights([rng.standard_normal((4, 5)), rng.standard_normal(5) * 0.5])
    loss = _check_model_gradients(model, x, y)
    # the loss reported is the data loss plus every penalty (Keras)
    plain = cn.losses.SparseCategoricalCrossentropy()(y, model.predict(x))
    assert loss == pytest.approx(plain + sum(model.losses), rel=1e-9)
    assert len(model.losses) == 2 + 3        # two activity terms, three weight penalties
    assert model.evaluate(x, y)["loss"] == pytest.approx(loss, rel=1e-9)


def test_graph_regularizers_nested_and_conv_gradient_float64():
    rng = np.random.default_rng(2)
    cn.set_seed(2)
    inp = cn.Input((5, 5, 2), dtype="float64")
    h = layers.Conv2D(3, 3, activation="tanh", kernel_regularizer=L2(0.05),
                      bias_regularizer=L1(0.02), activity_regularizer=L1(0.01))(inp)
    inner = cn.Model(inp, layers.Flatten()(h), name="inner")
    x_in = cn.Input((5, 5, 2), dtype="float64")
    f = inner(x_in)
    a = layers.Dense(4, activation="sigmoid", activity_regularizer=L2(0.2))(f)
    b = layers.Dense(4, kernel_regularizer=L1L2(0.01, 0.01))(f)
    out = layers.Dense(2)(layers.Add()([a, b]))
    model = cn.Model(x_in, out)
    model.compile(optimizer="sgd", loss="mse")
    x, y = rng.standard_normal((3, 5, 5, 2)), rng.standard_normal((3, 2))
    _check_model_gradients(model, x, y)


def test_wrapped_layers_keep_their_regularizers_gradient_float64():
    rng = np.random.default_rng(6)
    cn.set_seed(6)
    inp = cn.Input((3, 4), dtype="float64")
    h = layers.TimeDistributed(layers.Dense(3, kernel_regularizer=L2(0.3)))(inp)
    h = layers.Bidirectional(layers.SimpleRNN(2, recurrent_regularizer=L1L2(0.1, 0.2),
                                              bias_regularizer=L2(0.4)))(h)
    model = cn.Model(inp, layers.Dense(1)(h))
    model.compile(optimizer="sgd", loss="mse")
    model.layers[2].set_weights([w + 0.1 * rng.standard_normal(w.shape)
                                 for w in model.layers[2].get_weights()])
    assert len(model._weight_regs) == 1 + 2 * 2
    _check_model_gradients(model, rng.standard_normal((4, 3, 4)), rng.standard_normal((4, 1)))
    again = cn.models.model_from_config(model.get_config())
    assert len(again._weight_regs) == 5


def test_custom_loop_backward_includes_the_penalties():
    rng = np.random.default_rng(3)
    cn.set_seed(3)
    inp = cn.Input((4,), dtype="float64")
    out = layers.Dense(2, kernel_regularizer=L2(0.5), activity_regularizer=L2(0.25))(inp)
    model = cn.Model(inp, out)
    model.compile(optimizer="sgd", loss="mse")
    x, y = rng.standard_normal((6, 4)), rng.standard_normal((6, 2))
    _, expected = model.compute_gradients(x, y)
    y_pred = model(x, training=True)
    loss, dy = model.compute_loss(y=y, y_pred=y_pred)
    model.backward(dy)
    for g, e in zip(model.get_gradients(), expected):
        np.testing.assert_allclose(g, e, rtol=1e-12)
    assert loss == pytest.approx(model.compute_gradients(x, y)[0], rel=1e-12)


def test_l2_regularized_regression_finds_the_ridge_solution():
    """mse + l2 * |w|^2 has the closed-form minimum (X'X/n + l2 I)^-1 X'y/n."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((64, 8))
    y = x @ rng.standard_normal((8, 1))
    n, l2 = len(x), 0.5
    ridge = np.linalg.solve(x.T @ x / n + l2 * np.eye(8), x.T @ y / n)
    ols = np.linalg.lstsq(x, y, rcond=None)[0]
    cn.set_seed(4)
    model = cn.Sequential([layers.Dense(1, use_bias=False, kernel_regularizer=L2(l2))])
    model.compile(optimizer=cn.optimizers.SGD(0.1), loss="mse")
    model.fit(x.astype(np.float32), y.astype(np.float32), epochs=200, batch_size=64,
              verbose=0)
    kernel = model.layers[0].kernel
    np.testing.assert_allclose(kernel, ridge, atol=1e-4)
    assert np.abs(kernel - ols).max() > 0.1


# Keras's regularizer arguments per layer, and the weights each one reaches
LAYERS = [
    (lambda **kw: layers.Dense(3, **kw), (4,), {"kernel": ["kernel"], "bias": ["bias"]}),
    (lambda **kw: layers.Conv1D(2, 3, **kw), (6, 2), {"kernel": ["kernel"], "bias": ["bias"]}),
    (lambda **kw: layers.Conv2D(2, 3, **kw), (5, 5, 1), {"kernel": ["kernel"], "bias": ["bias"]}),
    (lambda **kw: layers.Conv2DTranspose(2, 3, **kw), (3, 3, 1),
     {"kernel": ["kernel"], "bias": ["bias"]}),
    (lambda **kw: layers.Embedding(10, 3, **kw), (4,), {"embeddings": ["embeddings"]}),
    (lambda **kw: layers.LSTM(3, **kw), (4, 2),
     {"kernel": ["kernel"], "recurrent": ["recurrent_kernel"], "bias": ["bias"]}),
    (lambda **kw: layers.GRU(3, **kw), (4, 2),
     {"kernel": ["kernel"], "recurrent": ["recurrent_kernel"], "bias": ["bias"]}),
    (lambda **kw: layers.SimpleRNN(3, **kw), (4, 2),
     {"kernel": ["kernel"], "recurrent": ["recurrent_kernel"], "bias": ["bias"]}),
    (lambda **kw: layers.BatchNormalization(**kw), (3,), {"gamma": ["gamma"], "beta": ["beta"]}),
    (lambda **kw: layers.LayerNormalization(**kw), (3,), {"gamma": ["gamma"], "beta": ["beta"]}),
    (lambda **kw: layers.PReLU(**kw), (3,), {"alpha": ["alpha"]}),
    (lambda **kw: layers.MultiHeadAttention(2, 2, **kw), None,
     {"kernel": ["query_kernel", "key_kernel", "value_kernel", "output_kernel"],
      "bias": ["query_bias", "key_bias", "value_bias", "output_bias"]}),
]


@pytest.mark.parametrize("make, shape, stems", LAYERS,
                         ids=[f"layer{i}" for i in range(len(LAYERS))])
def test_every_keras_regularizer_argument(make, shape, stems):
    kwargs = {f"{stem}_regularizer": L2(0.01 * (i + 1)) for i, stem in enumerate(stems)}
    layer = make(activity_regularizer=L1(0.5), **kwargs)
    if shape is None:
        layer.build([(4, 3), (4, 3)])
    else:
        layer.build(shape)
    reached = {id(reg): [] for reg in layer._weight_regularizers.values()}
    names = {id(w): n for w, n in zip(layer._weights, layer._weight_names)}
    for w, _, reg in layer._regularized_weights():
        reached[id(reg)].append(names[id(w)])
    for stem, wanted in stems.items():
        assert reached[id(layer._weight_regularizers[stem])] == wanted, stem
    spec = layers.serialize(layer)
    again = layers.deserialize(spec)
    assert isinstance(again.activity_regularizer, L1) and again.activity_regularizer.l1 == 0.5
    assert {k: v.l2 for k, v in again._weight_regularizers.items()} == \
        {k: v.l2 for k, v in layer._weight_regularizers.items()}


def test_any_layer_takes_an_activity_regularizer_and_bad_arguments_are_named():
    assert isinstance(layers.Flatten(activity_regularizer="l1").activity_regularizer, L1)
    assert isinstance(layers.Dropout(0.1, activity_regularizer=L2()).activity_regularizer, L2)
    with pytest.raises(TypeError, match="kernel_regularizer"):
        layers.Flatten(kernel_regularizer=L2())
    with pytest.raises(ValueError, match="unknown regularizer"):
        layers.Dense(2, kernel_regularizer="l7")


def test_saved_model_keeps_its_regularizers(tmp_path):
    cn.set_seed(5)
    model = cn.Sequential([layers.Dense(3, kernel_regularizer=L2(0.1),
                                        activity_regularizer=L1(0.2)), layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x = np.random.default_rng(5).standard_normal((4, 2)).astype(np.float32)
    model.fit(x, x[:, :1], epochs=1, verbose=0)
    model.save(tmp_path / "m.cyn")
    again = cn.load_model(tmp_path / "m.cyn")
    assert again.layers[0]._weight_regularizers["kernel"].l2 == pytest.approx(0.1)
    assert again.evaluate(x, x[:, :1])["loss"] == pytest.approx(
        model.evaluate(x, x[:, :1])["loss"], rel=1e-6)


def test_unregularized_models_keep_the_fast_paths():
    model = cn.Sequential([layers.Dense(4, activation="relu"), layers.Dense(3,
                                                                         activation="softmax")])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    model.build((5,))
    assert model._chain is not None and not model._has_aux and not model._weight_regs
    reg = cn.Sequential([layers.Dense(4, activation="relu", activity_regularizer=L1()),
                         layers.Dense(3, activation="softmax")])
    reg.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    reg.build((5,))
    assert reg._chain is None and reg._has_aux
