"""B packed once by the caller (gemm.pack_b / gemm_prepacked, for weights it knows are
fixed): the same bits as gemm on every plan, SIMD path and thread count. And predict's
lean path after the weights change (fit, train_on_batch, set_weights, an optimizer step,
load_weights, a write in place into a kernel): always the fresh answer, also with several
threads predicting at once (it keeps no copy derived from the weights)."""
import numpy as np
import pytest

import cyneuron as cn
from cyneuron import layers
from cyneuron._kernels import gemm as _gemm

from test_gemm_plans import DTYPE_IDS, DTYPES, _case, _plan_shapes
from test_inference_path import predict_from_threads

EPI = _gemm.EPILOGUES


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_prepacked_gives_gemms_bits_on_every_plan(isa, kernel_threads, dtype):
    rng = np.random.default_rng(130)
    mr, nr, mc, kc, nc = _gemm.block_sizes(np.dtype(dtype).name)
    shapes = _plan_shapes(dtype) + [
        ("packed-k-blocks", 2 * mc + 5, 2 * kc + 3, 2 * nr + 7, False),
        ("packed-k-one", 300, 1, 3 * nr + 1, False),
        ("packed-nc-blocks", 150, kc + 9, nc + 2 * nr + 1, False)]
    for label, m, k, n, bt in shapes:
        a, b = _case(rng, dtype, m, k, n, bt)
        bias = rng.standard_normal(n).astype(dtype)
        packed = _gemm.pack_b(b)
        assert packed.shape == (k, n) and packed.b is b
        for act, args in (("linear", (None,)), ("relu", (bias, EPI["relu"])),
                          ("tanh", (bias, EPI["tanh"])),
                          ("leaky", (bias, EPI["leaky_relu"], 0.1))):
            want, got = np.empty((m, n), dtype), np.full((m, n), np.nan, dtype)
            _gemm.gemm(a, b, want, *args)
            _gemm.gemm_prepacked(a, packed, got, *args)
            np.testing.assert_array_equal(got, want, err_msg=f"{label} {act}")
        ref = a.astype(np.float64) @ b.astype(np.float64)
        tol = 1e-4 if dtype == np.float32 else 1e-10
        np.testing.assert_allclose(_linear(a, packed, dtype), ref, rtol=tol,
                                   atol=tol * np.sqrt(k), err_msg=label)


def _linear(a, packed, dtype):
    c = np.empty((a.shape[0], packed.shape[1]), dtype)
    _gemm.gemm_prepacked(a, packed, c)
    return c


def test_prepacked_is_a_copy_and_follows_the_instruction_set(isa):
    """A copy made on one path still gives right answers on another (read from b then),
    and changes to b after packing are not seen by the packed plan (the caller's job)."""
    rng = np.random.default_rng(131)
    a, b = _case(rng, np.float32, 300, 70, 45, False)
    packed = _gemm.pack_b(b)
    want = np.empty((300, 45), np.float32)
    _gemm.gemm(a, b, want)
    for other in _gemm.supported_isas():
        _gemm.set_isa(other)
        got = np.empty_like(want)
        _gemm.gemm_prepacked(a, packed, got)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    _gemm.set_isa(isa)
    b[...] = 0
    got = np.empty_like(want)
    _gemm.gemm_prepacked(a, packed, got)
    np.testing.assert_array_equal(got, want)


def test_prepacked_bad_input():
    b = np.ones((8, 5), np.float32)
    packed = _gemm.pack_b(b)
    with pytest.raises(TypeError, match="float32 or float64"):
        _gemm.pack_b(np.ones((3, 3), np.int32))
    with pytest.raises(ValueError, match="K >= 1"):
        _gemm.pack_b(np.ones((0, 3), np.float32))
    with pytest.raises(ValueError, match="shapes do not agree"):
        _gemm.gemm_prepacked(np.ones((4, 7), np.float32), packed, np.empty((4, 5), np.float32))
    with pytest.raises(TypeError, match="dtype"):
        _gemm.gemm_prepacked(np.ones((4, 8)), packed, np.empty((4, 5)))
    with pytest.raises(ValueError, match="bias"):
        _gemm.gemm_prepacked(np.ones((4, 8), np.float32), packed, np.empty((4, 5), np.float32),
                             np.ones(4, np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        _gemm.gemm_prepacked(np.ones((4, 8), np.float32), packed,
                             np.empty((5, 4), np.float32).T)


# -- predict's lean path after the weights change --------------------------------------------
# batches past the direct plan's rows: the packed plan, at least for Dense(120), whose
# rows of 480 bytes are not whole cache lines
ROWS = _gemm.plan_limits()["direct_max_m"] + 7


def _model(seed=0, kind="mlp"):
    """Two large kernels (Dense, or a convolution and a Dense) and a small one; 3 outputs."""
    cn.set_seed(seed)
    if kind == "mlp":
        model = cn.Sequential([layers.Dense(160, activation="relu"),
                               layers.Dense(120, activation="tanh"), layers.Dense(3)])
        model.build(SHAPES[kind])
    else:       # 3x3x32x64: 72 KiB; 15 x 15 x n rows
        model = cn.Sequential([layers.Conv2D(64, 3, activation="relu"),
                               layers.MaxPooling2D(2), layers.Flatten(),
                               layers.Dense(400, activation="relu"), layers.Dense(3)])
        model.build(SHAPES[kind])
        model.layers[0].algorithm = "im2col"     # Winograd packs nothing beforehand
    model.compile(optimizer=cn.optimizers.SGD(0.05), loss="mse")
    return model


SHAPES = {"mlp": (110,), "cnn": (17, 17, 32)}


def _fresh(model, x):
    """The general path (a list input), which packs nothing beforehand."""
    return model.predict([x], batch_size=len(x))


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_predict_is_fresh_after_every_kind_of_weights_write(tmp_path, isa, kernel_threads, kind):
    model = _model(kind=kind)
    rng = np.random.default_rng(132)
    x = rng.normal(size=(ROWS,) + SHAPES[kind]).astype(np.float32)
    y = rng.normal(size=(ROWS, 3)).astype(np.float32)

    def check(what):
        got = model.predict(x, batch_size=ROWS)
        # float32 rounding of two summation orders (a stale kernel is off by far more)
        np.testing.assert_allclose(got, _fresh(model, x), rtol=1e-5, atol=1e-5, err_msg=what)
        return got

    before = check("first call")
    np.testing.assert_array_equal(model.predict(x, batch_size=ROWS), before)
    model.save_weights(tmp_path / "w.cnw")
    changes = {
        "fit": lambda: model.fit(x, y, epochs=1, batch_size=64, verbose=0),
        "train_on_batch": lambda: model.train_on_batch(x, y),
        "layer.set_weights": lambda: model.layers[0].set_weights(
            [w * 1.5 for w in model.layers[0].get_weights()]),
        "in place": lambda: (model.layers[0].kernel.__imul__(0.5),
                             model.layers[-1].bias.__iadd__(1.0)),
        "model.set_weights": lambda: model.set_weights(
            [w[::-1].copy() if w.ndim == 1 else w * -1 for w in model.get_weights()]),
        "optimizer step": _step(model, x, y),
        "load_weights": lambda: model.load_weights(tmp_path / "w.cnw"),
    }
    last = before
    for what, change in changes.items():
        change()
        got = check(what)
        assert not np.array_equal(got, last), f"{what} should change the outputs"
        last = got
    np.testing.assert_array_equal(last, before)     # load_weights brought the first back


def _step(model, x, y):
    def step():
        out = model(x, training=True)
        model.backward(2 * (out - y) / y.size)
        model.optimizer.apply_gradients(model)
    return step


def test_predict_from_many_threads_gives_the_serial_results_across_writes(restore_threads):
    """Eight threads predict at once while the weights change between rounds."""
    model = _model(1)
    cn.set_num_threads(1)
    rng = np.random.default_rng(133)
    xs = [rng.normal(size=(ROWS + i, 110)).astype(np.float32) for i in range(8)]
    for round_ in range(2):
        expected = [_fresh(model, x) for x in xs]
        got = predict_from_threads(lambda x: model.predict(x, batch_size=len(x)), xs,
                                   calls=5)
        for e, g in zip(expected, got):
            for one in g:
                np.testing.assert_allclose(one, e, rtol=1e-5, atol=1e-6)
        model.set_weights([w * 0.5 for w in model.get_weights()])
