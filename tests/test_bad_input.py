"""Bad input gets a clear Python exception that names the argument (DESIGN.md section 6)."""
import numpy as np
import pytest

import cyneuron as cn
from cyneuron import layers

RNG = np.random.default_rng(0)
X = RNG.normal(size=(12, 4))
Y_SPARSE = np.arange(12) % 3
Y_ONEHOT = np.eye(3)[Y_SPARSE]


def _model(loss="sparse_categorical_crossentropy", out=3, activation="softmax", dtype="float32",
           metrics=("accuracy",), build=True):
    model = cn.Sequential([layers.Dense(5, activation="tanh"), layers.Dense(out, activation=activation)],
                          dtype=dtype)
    model.compile(optimizer="sgd", loss=loss, metrics=list(metrics))
    if build:
        model.build((4,))
    return model


def _call(model, method, x, y=None):
    if method == "fit":
        return model.fit(x, Y_SPARSE[:len(x)] if y is None else y, epochs=1, verbose=0)
    if method == "evaluate":
        return model.evaluate(x, Y_SPARSE[:len(x)] if y is None else y)
    if method == "train_on_batch":
        return model.train_on_batch(x, Y_SPARSE[:len(x)] if y is None else y)
    return model.predict(x)


METHODS = ["fit", "predict", "evaluate", "train_on_batch"]


# ---------------------------------------------------------------------------------------
# x: rank, features, emptiness, values, dtype
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("build", [False, True], ids=["unbuilt", "built"])
@pytest.mark.parametrize("method", METHODS)
def test_x_1d(method, build):
    model = _model(build=build)
    with pytest.raises(ValueError, match=r"\bx\b"):
        _call(model, method, X[:, 0])


def _maxout_model(build=True):
    """A model whose first layer takes 2-D input only (Dense takes any rank, as in Keras)."""
    model = cn.Sequential([layers.Maxout(5, 2), layers.Dense(3, activation="softmax")])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    if build:
        model.build((4,))
    return model


@pytest.mark.parametrize("build", [False, True], ids=["unbuilt", "built"])
@pytest.mark.parametrize("method", METHODS)
def test_x_3d(method, build):
    model = _model(build=True) if build else _maxout_model(build=False)
    with pytest.raises(ValueError, match=r"\bx\b|input"):
        _call(model, method, X.reshape(12, 2, 2))


def test_x_3d_is_fine_for_an_unbuilt_dense_model():
    """Dense applies to the last axis of any rank (Keras): (12, 2, 2) -> (12, 2, 3)."""
    model = _model(build=False)
    assert model.predict(X.reshape(12, 2, 2)).shape == (12, 2, 3)


def test_x_3d_unbuilt_leaves_model_usable():
    model = _maxout_model(build=False)
    with pytest.raises(ValueError):
        model.fit(X.reshape(12, 2, 2), Y_SPARSE, verbose=0)
    model.fit(X, Y_SPARSE, epochs=1, verbose=0)
    assert model.predict(X).shape == (12, 3)


@pytest.mark.parametrize("method", METHODS)
def test_wrong_feature_count_after_build(method):
    model = _model()
    with pytest.raises(ValueError, match=r"\bx\b") as info:
        _call(model, method, X[:, :3])
    assert "4" in str(info.value) and "3" in str(info.value)


def test_wrong_feature_count_after_fit():
    model = _model(build=False)
    model.fit(X, Y_SPARSE, epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"\bx\b"):
        model.predict(np.ones((2, 5)))


def test_wrong_feature_count_layer_forward():
    layer = layers.Dense(3)
    layer.forward(np.ones((2, 4)))
    with pytest.raises(ValueError, match=r"\bx\b|input"):
        layer.forward(np.ones((2, 5)))
    with pytest.raises(ValueError, match=r"\bx\b|input"):
        layer.forward(np.ones(4))
    with pytest.raises(ValueError, match=r"\bx\b|input"):
        layer.forward(np.ones((0, 4)))


def test_validation_data_wrong_features():
    model = _model()
    with pytest.raises(ValueError, match="x_val"):
        model.fit(X, Y_SPARSE, verbose=0, validation_data=(X[:, :3], Y_SPARSE))
    with pytest.raises(ValueError, match="y_val"):
        model.fit(X, Y_SPARSE, verbose=0, validation_data=(X, Y_SPARSE[:5]))
    with pytest.raises(ValueError, match="validation_data"):
        model.fit(X, Y_SPARSE, verbose=0, validation_data=X)


@pytest.mark.parametrize("loss,y_val", [
    ("sparse_categorical_crossentropy", np.full(12, 5)),
    ("sparse_categorical_crossentropy", np.full(12, np.nan)),
    ("sparse_categorical_crossentropy", np.full(12, 0.5)),
    ("categorical_crossentropy", np.ones((12, 2))),
    ("mean_squared_error", np.full((12, 3), np.inf)),
], ids=["label_range", "label_nan", "label_float", "onehot_width", "mse_inf"])
def test_bad_validation_targets_name_y_val(loss, y_val):
    """Errors in validation_data's targets must name y_val, not the training y."""
    model = _model(loss=loss)
    y = Y_ONEHOT if loss != "sparse_categorical_crossentropy" else Y_SPARSE
    with pytest.raises(ValueError, match="y_val"):
        model.fit(X, y, verbose=0, validation_data=(X, y_val))


@pytest.mark.parametrize("method", ["fit", "evaluate", "train_on_batch"])
def test_length_mismatch(method):
    model = _model()
    with pytest.raises(ValueError, match=r"\bx\b.*\by\b|\by\b.*\bx\b") as info:
        _call(model, method, X, Y_SPARSE[:7])
    assert "12" in str(info.value) and "7" in str(info.value)


@pytest.mark.parametrize("method", METHODS)
def test_empty_x(method):
    model = _model()
    with pytest.raises(ValueError, match=r"\bx\b"):
        _call(model, method, np.empty((0, 4)), np.empty((0,), dtype=int))


@pytest.mark.parametrize("method", METHODS)
def test_empty_x_unbuilt(method):
    model = _model(build=False)
    with pytest.raises(ValueError, match=r"\bx\b"):
        _call(model, method, np.empty((0, 4)), np.empty((0,), dtype=int))


@pytest.mark.parametrize("loss,y", [("sparse_categorical_crossentropy", np.empty((0,), dtype=int)),
                                    ("categorical_crossentropy", np.empty((0, 3))),
                                    ("mean_squared_error", np.empty((0, 3)))])
def test_empty_y(loss, y):
    model = _model(loss=loss)
    with pytest.raises(ValueError, match=r"\by\b"):
        model.fit(X, y, verbose=0)


def test_y_none():
    model = _model()
    with pytest.raises(ValueError, match=r"\by\b"):
        model.fit(X, None, verbose=0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("method", METHODS)
def test_nonfinite_x(method, bad):
    x = X.copy()
    x[3, 2] = bad
    model = _model()
    with pytest.raises(ValueError, match=r"\bx\b"):
        _call(model, method, x)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_y_mse(bad):
    model = _model(loss="mean_squared_error", activation="linear", metrics=())
    y = RNG.normal(size=(12, 3))
    y[5, 1] = bad
    with pytest.raises(ValueError, match=r"\by\b"):
        model.fit(X, y, verbose=0)
    with pytest.raises(ValueError, match=r"\by\b"):
        model.evaluate(X, y)


def test_nonfinite_y_sparse():
    model = _model()
    y = Y_SPARSE.astype(float)
    y[0] = np.nan
    with pytest.raises(ValueError, match=r"\by\b"):
        model.fit(X, y, verbose=0)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("bad", [
    np.array([["a", "b", "c", "d"]] * 12),
    np.array([[1.0, 2.0, None, 4.0]] * 12, dtype=object),
    np.ones((12, 4), dtype=object),
    np.ones((12, 4), dtype=np.complex128),
], ids=["str", "object_none", "object_numbers", "complex"])
def test_non_numeric_x(method, bad):
    model = _model()
    with pytest.raises(TypeError, match=r"\bx\b"):
        _call(model, method, bad)


def test_ragged_x_list():
    model = _model()
    with pytest.raises((TypeError, ValueError), match=r"\bx\b"):
        model.predict([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0]])


def test_non_numeric_y():
    model = _model()
    with pytest.raises(TypeError, match=r"\by\b"):
        model.fit(X, np.array(["a"] * 12), verbose=0)
    model = _model(loss="mean_squared_error", metrics=())
    with pytest.raises(TypeError, match=r"\by\b"):
        model.fit(X, np.ones((12, 3), dtype=object), verbose=0)


def test_layer_forward_non_numeric():
    layer = layers.Dense(2)
    with pytest.raises(TypeError, match=r"\bx\b"):
        layer.forward(np.array([["a", "b"]]))


# ---------------------------------------------------------------------------------------
# targets
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("labels", [[0, 1, 3], [-1, 0, 1], [0, 1, 2, 100]], ids=["eq_n", "neg", "big"])
def test_sparse_labels_out_of_range(labels):
    model = _model()
    y = np.resize(np.array(labels), 12)
    with pytest.raises(ValueError, match=r"\by\b"):
        model.fit(X, y, verbose=0)
    with pytest.raises(ValueError, match=r"\by\b"):
        model.evaluate(X, y)


def test_sparse_labels_non_integer_floats():
    model = _model()
    y = Y_SPARSE.astype(float)
    y[4] = 1.5
    with pytest.raises(ValueError, match=r"\by\b"):
        model.fit(X, y, verbose=0)


def test_sparse_labels_wrong_rank():
    model = _model()
    with pytest.raises(ValueError, match=r"\by\b"):
        model.fit(X, Y_ONEHOT, verbose=0)  # one-hot given to the sparse loss


@pytest.mark.parametrize("width", [2, 4])
def test_categorical_wrong_width(width):
    model = _model(loss="categorical_crossentropy")
    with pytest.raises(ValueError, match=r"\by\b"):
        model.fit(X, np.eye(width)[np.arange(12) % width], verbose=0)


def test_categorical_with_integer_labels():
    model = _model(loss="categorical_crossentropy")
    with pytest.raises(ValueError, match=r"\by\b"):
        model.fit(X, Y_SPARSE, verbose=0)


@pytest.mark.parametrize("y", [np.ones((12, 2)), np.ones((12, 4)), np.ones(12), np.ones((12, 3, 1))],
                         ids=["narrow", "wide", "1d_for_3_outputs", "3d"])
def test_mse_wrong_target_width(y):
    model = _model(loss="mean_squared_error", activation="linear", metrics=())
    with pytest.raises(ValueError, match=r"\by\b"):
        model.fit(X, y, verbose=0)


# ---------------------------------------------------------------------------------------
# names: activation, loss, optimizer, metric, initializer
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("act", ["relux", "Softmaxx", "", 3])
def test_unknown_activation(act):
    with pytest.raises(ValueError, match="activation"):
        layers.Dense(3, activation=act)


def test_unknown_loss():
    model = cn.Sequential([layers.Dense(2)])
    with pytest.raises(ValueError, match="loss") as info:
        model.compile(optimizer="sgd", loss="mean_squared_errr")
    assert "mean_squared_error" in str(info.value)  # lists the valid names
    with pytest.raises(ValueError, match="loss"):
        model.compile(optimizer="sgd", loss=None)
    with pytest.raises(ValueError, match="loss"):
        model.compile(optimizer="sgd", loss=42)


@pytest.mark.parametrize("opt", ["sdg", "adamz", 3, None])
def test_unknown_optimizer(opt):
    model = cn.Sequential([layers.Dense(2)])
    with pytest.raises(ValueError, match="optimizer"):
        model.compile(optimizer=opt, loss="mse")


def test_unknown_metric():
    model = cn.Sequential([layers.Dense(2)])
    with pytest.raises(ValueError, match="metric"):
        model.compile(optimizer="sgd", loss="mse", metrics=["accuracyy"])
    with pytest.raises(ValueError, match="metric"):
        model.compile(optimizer="sgd", loss="mse", metrics="f2")


def test_unknown_initializer():
    with pytest.raises(ValueError, match="initializer"):
        layers.Dense(3, kernel_initializer="glorot_uniformm")
    with pytest.raises(ValueError, match="initializer"):
        layers.Dense(3, bias_initializer="nope")


@pytest.mark.parametrize("kwargs,match", [
    ({"learning_rate": 0}, "learning_rate"),
    ({"learning_rate": -0.1}, "learning_rate"),
    ({"learning_rate": float("nan")}, "learning_rate"),
    ({"learning_rate": "0.1"}, "learning_rate"),
    ({"momentum": -0.5}, "momentum"),
    ({"momentum": 1.5}, "momentum"),
])
def test_bad_sgd_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        cn.optimizers.SGD(**kwargs)


@pytest.mark.parametrize("units", [0, -3, 2.5, True, None, "4"])
def test_dense_bad_units(units):
    with pytest.raises((ValueError, TypeError), match="units"):
        layers.Dense(units)


# ---------------------------------------------------------------------------------------
# fit arguments and order of calls
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,match", [
    ({"epochs": 0}, "epochs"),
    ({"epochs": -1}, "epochs"),
    ({"epochs": 2.5}, "epochs"),
    ({"batch_size": 0}, "batch_size"),
    ({"batch_size": -8}, "batch_size"),
    ({"batch_size": 3.0}, "batch_size"),
    ({"validation_split": 1.5}, "validation_split"),
    ({"validation_split": 1.0}, "validation_split"),
    ({"validation_split": -0.1}, "validation_split"),
    ({"validation_split": 0.01}, "validation_split"),  # 12 * 0.01 -> an empty split
    ({"verbose": 7}, "verbose"),
    ({"verbose": -1}, "verbose"),
])
def test_bad_fit_arguments(kwargs, match):
    model = _model()
    before = model.get_weights()
    with pytest.raises(ValueError, match=match):
        model.fit(X, Y_SPARSE, **{"verbose": 0, **kwargs})
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_bad_predict_evaluate_batch_size():
    model = _model()
    with pytest.raises(ValueError, match="batch_size"):
        model.predict(X, batch_size=0)
    with pytest.raises(ValueError, match="batch_size"):
        model.evaluate(X, Y_SPARSE, batch_size=-2)


@pytest.mark.parametrize("method", ["fit", "evaluate", "train_on_batch", "compute_gradients"])
def test_use_before_compile(method):
    model = cn.Sequential([layers.Dense(3, activation="softmax")])
    with pytest.raises(RuntimeError, match="compile"):
        getattr(model, method)(X, Y_SPARSE)


def test_set_weights_before_build():
    model = cn.Sequential([layers.Dense(3)])
    with pytest.raises(RuntimeError, match="built"):
        model.set_weights([np.ones((4, 3)), np.ones(3)])


def test_model_without_layers():
    model = cn.Sequential([])
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match="layers"):
        model.fit(X, np.ones((12, 1)), verbose=0)


# ---------------------------------------------------------------------------------------
# set_weights, backward
# ---------------------------------------------------------------------------------------
def test_model_set_weights_wrong_count():
    model = _model()
    weights = model.get_weights()
    with pytest.raises(ValueError, match="weight") as info:
        model.set_weights(weights[:-1])
    assert str(len(weights)) in str(info.value)
    with pytest.raises(ValueError, match="weight"):
        model.set_weights(weights + [np.ones(3)])


def test_model_set_weights_wrong_shape():
    model = _model()
    weights = model.get_weights()
    bad = list(weights)
    bad[0] = bad[0].T                      # (5, 4) instead of (4, 5)
    with pytest.raises(ValueError, match="kernel") as info:
        model.set_weights(bad)
    assert "(4, 5)" in str(info.value)
    bad = list(weights)
    bad[1] = np.ones(6)
    with pytest.raises(ValueError, match="bias"):
        model.set_weights(bad)


def test_model_set_weights_wrong_shape_changes_nothing():
    """A failed set_weights must not leave the model half-written."""
    model = _model()
    before = model.get_weights()
    new = [np.full_like(w, 7.0) for w in before]
    new[-1] = np.ones(10)                  # only the last array is wrong
    with pytest.raises(ValueError):
        model.set_weights(new)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_set_weights_non_numeric():
    model = _model()
    weights = model.get_weights()
    weights[0] = weights[0].astype(str)
    with pytest.raises(TypeError, match="kernel"):
        model.set_weights(weights)


def test_layer_set_weights_wrong():
    layer = layers.Dense(3)
    layer.forward(np.ones((2, 4)))
    with pytest.raises(ValueError, match="kernel"):
        layer.set_weights([np.ones((4, 3))])
    with pytest.raises(ValueError, match="kernel"):
        layer.set_weights([np.ones((3, 4)), np.ones(3)])
    with pytest.raises(ValueError, match="bias"):
        layer.set_weights([np.ones((4, 3)), np.ones((1, 3))])


def test_layer_backward_before_forward():
    layer = layers.Dense(3)
    with pytest.raises(RuntimeError, match="forward"):
        layer.backward(np.ones((2, 3)))
    layer2 = layers.Dense(3)
    layer2.build((4,))
    with pytest.raises(RuntimeError, match="forward"):
        layer2.backward(np.ones((2, 3)))


@pytest.mark.parametrize("shape", [(2, 4), (3, 3), (3,), (2, 3, 1)])
def test_layer_backward_wrong_grad_shape(shape):
    layer = layers.Dense(3, activation="tanh")
    layer.forward(np.ones((2, 4)))
    with pytest.raises(ValueError, match="grad_output"):
        layer.backward(np.ones(shape))


def test_layer_backward_non_numeric():
    layer = layers.Dense(3)
    layer.forward(np.ones((2, 4)))
    with pytest.raises(TypeError, match="grad_output"):
        layer.backward(np.full((2, 3), "a"))


# ---------------------------------------------------------------------------------------
# Sequential construction
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("item", ["dense", 3, None, lambda x: x, layers.Dense], ids=str)
def test_sequential_non_layer(item):
    with pytest.raises(TypeError, match="[Ll]ayer"):
        cn.Sequential([layers.Dense(2), item])


@pytest.mark.parametrize("dtype", ["int32", "float16", np.int64, "complex128", "bogus", object])
def test_sequential_bad_dtype(dtype):
    with pytest.raises(TypeError, match="dtype"):
        cn.Sequential([layers.Dense(2)], dtype=dtype)


def test_layer_bad_dtype():
    with pytest.raises(TypeError, match="dtype"):
        layers.Dense(2, dtype="int8")


def test_layer_dtype_conflicts_with_model():
    with pytest.raises(ValueError, match="dtype"):
        cn.Sequential([layers.Dense(2, dtype="float64")], dtype="float32")


def test_add_after_build():
    model = cn.Sequential([layers.Dense(2)])
    model.build((3,))
    with pytest.raises(RuntimeError, match="built"):
        model.add(layers.Dense(1))


def test_set_seed_bad():
    for bad in (-1, 1.5, "3", True):
        with pytest.raises(ValueError, match="seed"):
            cn.set_seed(bad)


# ---------------------------------------------------------------------------------------
# ops
# ---------------------------------------------------------------------------------------
def test_ops_activation_bad_input():
    with pytest.raises(TypeError, match=r"\bx\b"):
        cn.ops.sigmoid(np.array(["a"]))
    with pytest.raises(ValueError, match=r"\bdy\b"):
        cn.ops.tanh_grad(np.ones((2, 3)), np.ones((3, 2)))
    with pytest.raises(TypeError, match=r"\bdy\b"):
        cn.ops.relu_grad(np.ones(3), np.array([None, 1, 2], dtype=object))


def test_same_layer_instance_twice_is_refused():
    dense = layers.Dense(3)
    with pytest.raises(ValueError, match="already in the model"):
        cn.Sequential([dense, dense])
