"""fit options: sample_weight, class_weight, weighted validation, initial_epoch, and
reproducible runs with cn.set_seed."""
import numpy as np
import pytest

import cyneuron as cn
from cyneuron import layers
from cyneuron.models import class_weight_to_sample_weight


def _data(n=40, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.standard_normal((n, 5)) + y[:, None]
    return x, y


def _model(dtype="float64", seed=0, lr=0.1, dropout=0.0):
    cn.set_seed(seed)
    stack = [layers.Dense(6, activation="tanh")]
    if dropout:
        stack.append(layers.Dropout(dropout))
    model = cn.Sequential(stack + [layers.Dense(3, activation="softmax")], dtype=dtype)
    model.compile(optimizer=cn.optimizers.SGD(lr), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.build((5,))
    return model


def _assert_same_weights(a, b, **tol):
    for u, v in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(u, v, **tol)


def _per_sample_losses(model, x, y):
    p = model.predict(x).astype(np.float64)
    return -np.log(p[np.arange(len(y)), y])


# -- sample_weight ----------------------------------------------------------------------------
def test_weighted_loss_matches_numpy():
    x, y = _data()
    model = _model()
    w = np.random.default_rng(1).uniform(0, 3, len(x))
    expected = np.sum(w * _per_sample_losses(model, x, y)) / len(x)
    assert model.evaluate(x, y, sample_weight=w)["loss"] == pytest.approx(expected, rel=1e-10)
    assert model.evaluate(x, y, batch_size=7, sample_weight=w)["loss"] == pytest.approx(
        expected, rel=1e-10)


def test_zero_weights_remove_samples_from_the_gradient():
    """Full batch SGD: weights (1, ..., 1, 0, ..., 0) on n samples give the step of the
    first half with weight 1/2 each (the mean divides by n)."""
    x, y = _data()
    half = len(x) // 2
    a, b = _model(), _model()
    w = np.r_[np.ones(half), np.zeros(len(x) - half)]
    a.fit(x, y, epochs=3, batch_size=len(x), sample_weight=w, verbose=0)
    b.fit(x[:half], y[:half], epochs=3, batch_size=half, sample_weight=np.full(half, 0.5),
          verbose=0)
    _assert_same_weights(a, b, rtol=1e-12, atol=1e-14)


def test_constant_weight_scales_the_gradient_like_the_learning_rate():
    x, y = _data()
    a, b = _model(lr=0.1), _model(lr=0.3)
    a.fit(x, y, epochs=2, batch_size=8, shuffle=False, sample_weight=np.full(len(x), 3.0),
          verbose=0)
    b.fit(x, y, epochs=2, batch_size=8, shuffle=False, verbose=0)
    _assert_same_weights(a, b, rtol=1e-10, atol=1e-13)


def test_train_on_batch_takes_weights():
    x, y = _data()
    a, b = _model(), _model()
    a.train_on_batch(x, y, sample_weight=np.full(len(x), 2.0))
    b.compile(optimizer=cn.optimizers.SGD(0.2), loss="sparse_categorical_crossentropy")
    b.train_on_batch(x, y)
    _assert_same_weights(a, b, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("bad, error", [
    (np.ones(3), ValueError), (-np.ones(40), ValueError), (np.full(40, np.nan), ValueError),
    (np.ones((40, 2)), ValueError), (["a"] * 40, TypeError)])
def test_bad_sample_weight(bad, error):
    x, y = _data()
    with pytest.raises(error, match="sample_weight"):
        _model().fit(x, y, sample_weight=bad, verbose=0)


# -- class_weight ----------------------------------------------------------------------------
def test_class_weight_dict_equals_sample_weight():
    x, y = _data()
    cw = {0: 2.0, 1: 0.5}            # class 2 is missing: weight 1
    a, b = _model(), _model()
    a.fit(x, y, epochs=2, batch_size=8, shuffle=False, class_weight=cw, verbose=0)
    b.fit(x, y, epochs=2, batch_size=8, shuffle=False,
          sample_weight=np.array([cw.get(c, 1.0) for c in y]), verbose=0)
    _assert_same_weights(a, b, rtol=0, atol=0)


def test_class_weight_balanced_matches_scikit_learn():
    compute_sample_weight = pytest.importorskip("sklearn.utils.class_weight").compute_sample_weight

    y = np.array([0, 0, 0, 0, 1, 1, 2, 0, 2, 0])
    np.testing.assert_allclose(class_weight_to_sample_weight(y, "balanced"),
                               compute_sample_weight("balanced", y))
    onehot = np.eye(3)[y]
    np.testing.assert_allclose(class_weight_to_sample_weight(onehot, {1: 3.0}),
                               np.where(y == 1, 3.0, 1.0))
    np.testing.assert_allclose(class_weight_to_sample_weight(y[:, None].astype(float), {2: 0.0}),
                               np.where(y == 2, 0.0, 1.0))


def test_class_weight_multiplies_sample_weight():
    x, y = _data()
    sw = np.random.default_rng(2).uniform(0.5, 2, len(x))
    a, b = _model(), _model()
    a.fit(x, y, epochs=1, batch_size=10, shuffle=False, sample_weight=sw,
          class_weight="balanced", verbose=0)
    b.fit(x, y, epochs=1, batch_size=10, shuffle=False,
          sample_weight=sw * class_weight_to_sample_weight(y, "balanced"), verbose=0)
    _assert_same_weights(a, b, rtol=1e-12, atol=1e-14)


def test_class_weight_shifts_predictions_toward_the_heavy_class():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((300, 5))
    y = (rng.random(300) < 0.5).astype(int)     # labels independent of x
    plain, heavy = _model(), _model()
    plain.fit(x, y, epochs=20, batch_size=30, verbose=0)
    heavy.fit(x, y, epochs=20, batch_size=30, class_weight={0: 10.0}, verbose=0)
    assert (heavy.predict(x).argmax(1) == 0).mean() > (plain.predict(x).argmax(1) == 0).mean()
    assert (heavy.predict(x).argmax(1) == 0).mean() > 0.9


@pytest.mark.parametrize("bad, error", [
    ("balance", ValueError), ([1, 2], TypeError), ({"a": 1.0}, ValueError),
    ({0: -1.0}, ValueError), ({0: float("inf")}, ValueError)])
def test_bad_class_weight(bad, error):
    x, y = _data()
    with pytest.raises(error, match="class_weight"):
        _model().fit(x, y, class_weight=bad, verbose=0)


def test_class_weight_needs_integer_labels():
    with pytest.raises(ValueError, match="integer class labels"):
        class_weight_to_sample_weight(np.array([0.5, 1.0]), "balanced")


# -- validation with weights, initial_epoch ------------------------------------------------------
def test_weighted_validation_data():
    x, y = _data()
    xv, yv = _data(n=20, seed=5)
    wv = np.random.default_rng(4).uniform(0, 2, 20)
    model = _model()
    history = model.fit(x, y, epochs=2, verbose=0, validation_data=(xv, yv, wv))
    assert history.history["val_loss"][-1] == pytest.approx(
        model.evaluate(xv, yv, sample_weight=wv)["loss"], rel=1e-12)
    with pytest.raises(ValueError, match="validation_data"):
        model.fit(x, y, verbose=0, validation_data=(xv,))


def test_validation_split_splits_the_weights_too():
    x, y = _data()
    w = np.random.default_rng(6).uniform(0, 2, len(x))
    model = _model()
    history = model.fit(x, y, epochs=1, verbose=0, sample_weight=w, validation_split=0.25)
    assert history.history["val_loss"][0] == pytest.approx(
        model.evaluate(x[-10:], y[-10:], sample_weight=w[-10:])["loss"], rel=1e-12)


def test_initial_epoch_resumes_the_count():
    x, y = _data()
    seen = []
    history = _model().fit(x, y, epochs=5, initial_epoch=3, verbose=0, callbacks=[
        cn.callbacks.LambdaCallback(on_epoch_begin=lambda e, logs: seen.append(e))])
    assert seen == [3, 4] and history.epoch == [3, 4]
    for bad in (-1, 6, 1.5, True):
        with pytest.raises(ValueError, match="initial_epoch"):
            _model().fit(x, y, epochs=5, initial_epoch=bad, verbose=0)


# -- reproducibility ---------------------------------------------------------------------------------
def _run(seed):
    x, y = _data(n=64)
    model = _model(dtype="float32", seed=seed, dropout=0.3)
    history = model.fit(x, y, epochs=3, batch_size=16, verbose=0, validation_split=0.25)
    return model.get_weights(), history.history


def test_set_seed_makes_runs_reproducible():
    w1, h1 = _run(11)
    w2, h2 = _run(11)
    for a, b in zip(w1, w2):
        np.testing.assert_array_equal(a, b)
    assert h1 == h2
    w3, h3 = _run(12)
    assert not np.array_equal(w1[0], w3[0]) and h1 != h3
