"""Initializers: exact numpy references for seeded draws, the Keras variance formulas,
orthogonality, reproducibility, Dense defaults, and why zeros fail (symmetry)."""
import numpy as np
import pytest

import cyneuron as cn
from cyneuron import initializers as init
from cyneuron import layers

TRUNC = 0.87962566103423978


def _np_truncated(rng, shape):
    """Keras/TensorFlow truncated normal: redraw values beyond 2 standard deviations."""
    values = rng.standard_normal(size=shape)
    bad = np.abs(values) > 2
    while bad.any():
        values[bad] = rng.standard_normal(size=int(bad.sum()))
        bad = np.abs(values) > 2
    return values


# (name, factory, numpy reference from default_rng(seed) for a (fan_in, fan_out) shape)
SHAPE = (30, 20)
FAN_IN, FAN_OUT = SHAPE
REFERENCES = [
    ("random_normal", lambda s: init.RandomNormal(0.5, 0.2, seed=s),
     lambda rng: rng.normal(0.5, 0.2, SHAPE)),
    ("random_uniform", lambda s: init.RandomUniform(-0.3, 0.1, seed=s),
     lambda rng: rng.uniform(-0.3, 0.1, SHAPE)),
    ("truncated_normal", lambda s: init.TruncatedNormal(0.0, 0.3, seed=s),
     lambda rng: 0.3 * _np_truncated(rng, SHAPE)),
    ("glorot_uniform", lambda s: init.GlorotUniform(seed=s),
     lambda rng: rng.uniform(-1, 1, SHAPE) * np.sqrt(6 / (FAN_IN + FAN_OUT))),
    ("glorot_normal", lambda s: init.GlorotNormal(seed=s),
     lambda rng: _np_truncated(rng, SHAPE) * np.sqrt(2 / (FAN_IN + FAN_OUT)) / TRUNC),
    ("he_uniform", lambda s: init.HeUniform(seed=s),
     lambda rng: rng.uniform(-1, 1, SHAPE) * np.sqrt(6 / FAN_IN)),
    ("he_normal", lambda s: init.HeNormal(seed=s),
     lambda rng: _np_truncated(rng, SHAPE) * np.sqrt(2 / FAN_IN) / TRUNC),
    ("lecun_uniform", lambda s: init.LecunUniform(seed=s),
     lambda rng: rng.uniform(-1, 1, SHAPE) * np.sqrt(3 / FAN_IN)),
    ("lecun_normal", lambda s: init.LecunNormal(seed=s),
     lambda rng: _np_truncated(rng, SHAPE) * np.sqrt(1 / FAN_IN) / TRUNC),
    ("variance_scaling-fan_out-untruncated", lambda s: init.VarianceScaling(
        3.0, "fan_out", "untruncated_normal", seed=s),
     lambda rng: rng.normal(0, np.sqrt(3.0 / FAN_OUT), SHAPE)),
]


@pytest.mark.parametrize("name, make, reference", REFERENCES, ids=[r[0] for r in REFERENCES])
def test_seeded_draw_matches_numpy_reference(name, make, reference):
    got = make(7)(SHAPE, dtype=np.float64)
    # numpy draws uniform(-l, l) as -l + 2l u: equal to the reference up to rounding.
    np.testing.assert_allclose(got, reference(np.random.default_rng(7)), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name, make, reference", REFERENCES, ids=[r[0] for r in REFERENCES])
def test_seed_makes_every_call_identical(name, make, reference):
    a = make(3)(SHAPE)
    np.testing.assert_array_equal(a, make(3)(SHAPE))
    np.testing.assert_array_equal(a, make(3)(SHAPE))
    assert not np.array_equal(a, make(4)(SHAPE))
    assert a.dtype == np.float32


@pytest.mark.parametrize("name, make, reference", REFERENCES, ids=[r[0] for r in REFERENCES])
def test_unseeded_draws_follow_set_seed(name, make, reference):
    unseeded = make(None)
    cn.set_seed(11)
    a = unseeded(SHAPE)
    b = unseeded(SHAPE)
    assert not np.array_equal(a, b)  # the library generator moves on
    cn.set_seed(11)
    np.testing.assert_array_equal(unseeded(SHAPE), a)


VARIANCE_CASES = [
    # name, shape, expected standard deviation, bound on |values|
    ("glorot_uniform", (400, 600), np.sqrt(2 / 1000), np.sqrt(6 / 1000)),
    ("glorot_normal", (400, 600), np.sqrt(2 / 1000), 2 * np.sqrt(2 / 1000) / TRUNC),
    ("he_uniform", (500, 300), np.sqrt(2 / 500), np.sqrt(6 / 500)),
    ("he_normal", (500, 300), np.sqrt(2 / 500), 2 * np.sqrt(2 / 500) / TRUNC),
    ("lecun_uniform", (500, 300), np.sqrt(1 / 500), np.sqrt(3 / 500)),
    ("lecun_normal", (500, 300), np.sqrt(1 / 500), 2 * np.sqrt(1 / 500) / TRUNC),
    # conv kernel (kh, kw, c_in, c_out): fan_in = 3 * 3 * 16, fan_out = 3 * 3 * 32
    ("he_normal", (3, 3, 16, 32), np.sqrt(2 / 144), 2 * np.sqrt(2 / 144) / TRUNC),
    ("glorot_uniform", (3, 3, 16, 32), np.sqrt(2 / (144 + 288)), np.sqrt(6 / (144 + 288))),
]


@pytest.mark.parametrize("name, shape, std, bound", VARIANCE_CASES,
                         ids=[f"{c[0]}-{len(c[1])}d" for c in VARIANCE_CASES])
def test_variance_scaling_formulas(name, shape, std, bound):
    w = init.get(name)(shape, dtype=np.float64, rng=np.random.default_rng(0))
    assert w.shape == shape
    assert np.abs(w).max() <= bound * (1 + 1e-12)
    assert abs(w.mean()) < 4 * std / np.sqrt(w.size)
    assert w.std() == pytest.approx(std, rel=0.03)


def test_constant_initializers():
    np.testing.assert_array_equal(init.get("zeros")((2, 3)), np.zeros((2, 3)))
    np.testing.assert_array_equal(init.get("ones")((4,)), np.ones(4))
    c = init.Constant(0.25)((2, 2), dtype=np.float64)
    np.testing.assert_array_equal(c, np.full((2, 2), 0.25))
    assert c.dtype == np.float64
    assert init.get("constant")((3,)).tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("shape", [(8, 8), (20, 5), (5, 20), (3, 3, 4, 6)])
@pytest.mark.parametrize("gain", [1.0, 2.5])
def test_orthogonal(shape, gain):
    w = init.Orthogonal(gain=gain, seed=1)(shape, dtype=np.float64)
    assert w.shape == shape
    m = w.reshape(-1, shape[-1])
    rows, cols = m.shape
    gram = m.T @ m if rows >= cols else m @ m.T
    np.testing.assert_allclose(gram, gain ** 2 * np.eye(min(rows, cols)), atol=1e-12)


def test_orthogonal_matches_the_keras_construction():
    rng = np.random.default_rng(5)
    a = rng.standard_normal(size=(6, 4))
    q, r = np.linalg.qr(a)
    expected = (q * np.sign(np.diag(r))).T  # rows < cols: the transpose
    np.testing.assert_allclose(init.Orthogonal(seed=5)((4, 6), dtype=np.float64), expected,
                               rtol=1e-12, atol=1e-14)


def test_names_aliases_and_config():
    expected = {"zeros", "ones", "constant", "random_normal", "random_uniform", "truncated_normal",
                "variance_scaling", "glorot_normal", "glorot_uniform", "he_normal", "he_uniform",
                "lecun_normal", "lecun_uniform", "orthogonal"}
    assert set(init.names()) == expected
    for alias, name in [("xavier_uniform", "glorot_uniform"), ("kaiming_normal", "he_normal"),
                        ("normal", "random_normal"), ("uniform", "random_uniform"),
                        ("Glorot_Normal", "glorot_normal")]:
        assert init.get(alias).name == name
    assert init.HeNormal(seed=3).get_config() == {"name": "he_normal", "seed": 3}
    assert init.RandomUniform(-1, 1).get_config() == {"name": "random_uniform", "seed": None,
                                                      "minval": -1.0, "maxval": 1.0}
    assert init.Orthogonal(gain=2.0).get_config()["gain"] == 2.0
    assert init.Constant(3).get_config() == {"name": "constant", "value": 3.0}


@pytest.mark.parametrize("make, match", [
    (lambda: init.RandomNormal(stddev=-1.0), "stddev"),
    (lambda: init.RandomNormal(mean=float("nan")), "mean"),
    (lambda: init.RandomUniform(1.0, -1.0), "maxval"),
    (lambda: init.GlorotUniform(seed=-1), "seed"),
    (lambda: init.HeNormal(seed=1.5), "seed"),
    (lambda: init.VarianceScaling(scale=0.0), "scale"),
    (lambda: init.VarianceScaling(mode="fan_sum"), "mode"),
    (lambda: init.VarianceScaling(distribution="cauchy"), "distribution"),
    (lambda: init.Constant("a"), "value"),
    (lambda: init.Orthogonal(gain=float("inf")), "gain"),
    (lambda: init.Orthogonal()((5,)), "rank"),
    (lambda: init.GlorotUniform()((3, -2)), "shape"),
])
def test_bad_settings(make, match):
    with pytest.raises(ValueError, match=match):
        make()


# --------------------------------------------------------------------------- in layers and models
def test_dense_defaults_to_glorot_uniform_kernel_and_zero_bias():
    layer = layers.Dense(20)
    assert layer.kernel_initializer.name == "glorot_uniform"
    assert layer.bias_initializer.name == "zeros"
    layer.forward(np.ones((2, 30), np.float32))
    kernel, bias = layer.get_weights()
    np.testing.assert_array_equal(bias, 0)
    assert np.abs(kernel).max() <= np.sqrt(6 / 50)
    assert kernel.std() > 0.5 * np.sqrt(2 / 50)


def test_dense_takes_initializer_instances_with_seeds():
    a = layers.Dense(6, kernel_initializer=init.Orthogonal(seed=2), bias_initializer=init.Constant(0.1))
    b = layers.Dense(6, kernel_initializer=init.Orthogonal(seed=2), bias_initializer="ones")
    x = np.ones((1, 6), np.float32)
    a.forward(x)
    b.forward(x)
    np.testing.assert_array_equal(a.get_weights()[0], b.get_weights()[0])
    np.testing.assert_allclose(a.get_weights()[0].T @ a.get_weights()[0], np.eye(6), atol=1e-6)
    np.testing.assert_allclose(a.get_weights()[1], 0.1)
    np.testing.assert_array_equal(b.get_weights()[1], 1.0)


@pytest.fixture(scope="module")
def digits():
    pytest.importorskip("sklearn")
    from cyneuron import datasets
    return datasets.load_digits()


def _train_digits(digits, kernel_initializer):
    (x_tr, y_tr), (x_te, y_te) = digits
    cn.set_seed(0)
    model = cn.Sequential([
        layers.Dense(32, activation="tanh", kernel_initializer=kernel_initializer),
        layers.Dense(10, activation="softmax", kernel_initializer=kernel_initializer),
    ])
    model.compile(optimizer=cn.optimizers.SGD(0.1, momentum=0.9),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_tr, y_tr, epochs=15, batch_size=32, verbose=0)
    return model, model.evaluate(x_te, y_te)["accuracy"]


def test_zero_weights_cannot_break_symmetry_but_glorot_learns(digits):
    """With every weight zero, all hidden units compute the same value (tanh(0) = 0) and get
    the same (here zero) gradient: they never differ, and the network cannot learn beyond
    the class priors held by the output bias. Glorot's random start learns the task."""
    model, accuracy = _train_digits(digits, "zeros")
    hidden = model.layers[0].get_weights()[0]
    np.testing.assert_array_equal(hidden, 0)             # never moved
    np.testing.assert_array_equal(model.layers[1].get_weights()[0], 0)
    assert accuracy < 0.2                                 # about 1 in 10: the majority class

    model, accuracy = _train_digits(digits, "glorot_uniform")
    assert accuracy >= 0.95
    assert np.linalg.matrix_rank(model.layers[0].get_weights()[0]) == 32


def test_constant_weights_keep_hidden_units_identical(digits):
    """A non-zero constant does move the weights, but every hidden unit receives the same
    update, so they stay copies of each other: in effect a single hidden unit."""
    model, accuracy = _train_digits(digits, init.Constant(0.05))
    hidden = model.layers[0].get_weights()[0]          # (64 inputs, 32 units)
    assert np.abs(hidden - 0.05).max() > 1e-3              # it did train
    np.testing.assert_allclose(hidden, np.repeat(hidden[:, :1], 32, axis=1), rtol=1e-5, atol=1e-6)
    assert np.linalg.matrix_rank(hidden, tol=1e-4) == 1
    _, glorot_accuracy = _train_digits(digits, "glorot_uniform")
    assert accuracy < glorot_accuracy - 0.2
