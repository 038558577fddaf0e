"""Optimizers against numpy references of Keras's update rules (weight_decay, clipnorm,
clipvalue included) and PyTorch where installed; each trains the digits MLP; learning-rate
schedules against their closed forms; fit callbacks and ReduceLROnPlateau; bad settings."""
import math

import numpy as np
import pytest

import cyneuron as cn
from cyneuron import layers
from cyneuron._kernels import optim as ok

S = cn.optimizers.schedules
DTYPES = [np.float32, np.float64]
DTYPE_IDS = ["float32", "float64"]


# --------------------------------------------------------------------------- numpy references
def np_optimize(name, w0, grads_seq, lr=0.01, weight_decay=0.0, clipnorm=None, clipvalue=None,
                **cfg):
    """Keras's rules, in float64: clip the gradient, decay the weights, then the update."""
    w = w0.astype(np.float64).copy()
    zeros = np.zeros_like(w)
    m, v, vhat, avg = zeros.copy(), zeros.copy(), zeros.copy(), zeros.copy()
    acc = np.full_like(w, cfg.get("initial_accumulator_value", 0.1))
    for t, g in enumerate(grads_seq):
        rate = lr(t) if callable(lr) else lr
        g = g.astype(np.float64)
        if clipnorm is not None:
            g = g * clipnorm / max(np.linalg.norm(g), clipnorm)
        if clipvalue is not None:
            g = np.clip(g, -clipvalue, clipvalue)
        w = w - rate * weight_decay * w
        if name == "sgd":
            mu = cfg.get("momentum", 0.0)
            if mu == 0:
                w = w - rate * g
                continue
            m = mu * m - rate * g
            w = w + (mu * m - rate * g if cfg.get("nesterov") else m)
        elif name in ("adam", "adamw"):
            b1, b2 = cfg.get("beta_1", 0.9), cfg.get("beta_2", 0.999)
            eps = cfg.get("epsilon", 1e-7)
            m = m + (g - m) * (1 - b1)
            v = v + (g * g - v) * (1 - b2)
            vhat = np.maximum(vhat, v)
            alpha = rate * math.sqrt(1 - b2 ** (t + 1)) / (1 - b1 ** (t + 1))
            w = w - alpha * m / (np.sqrt(vhat if cfg.get("amsgrad") else v) + eps)
        elif name == "rmsprop":
            rho, mu, eps = cfg.get("rho", 0.9), cfg.get("momentum", 0.0), cfg.get("epsilon", 1e-7)
            v = rho * v + (1 - rho) * g * g
            denom = v
            if cfg.get("centered"):
                avg = rho * avg + (1 - rho) * g
                denom = v - avg * avg
            inc = rate * g / np.sqrt(denom + eps)
            if mu:
                m = mu * m + inc
                inc = m
            w = w - inc
        elif name == "adagrad":
            acc = acc + g * g
            w = w - rate * g / np.sqrt(acc + cfg.get("epsilon", 1e-7))
        else:
            raise AssertionError(name)
    return w


CONFIGS = [
    ("sgd", dict(learning_rate=0.05)),
    ("sgd", dict(learning_rate=0.05, momentum=0.9, nesterov=True)),
    ("sgd", dict(learning_rate=0.05, momentum=0.5, weight_decay=0.1, clipnorm=3.0)),
    ("adam", dict(learning_rate=0.01)),
    ("adam", dict(learning_rate=0.01, beta_1=0.5, beta_2=0.9, epsilon=1e-3, amsgrad=True)),
    ("adam", dict(learning_rate=0.01, clipvalue=0.5, weight_decay=0.01)),
    ("adamw", dict(learning_rate=0.01, weight_decay=0.004)),
    ("adamw", dict(learning_rate=0.01, weight_decay=0.1, clipnorm=2.0)),
    ("rmsprop", dict(learning_rate=0.01)),
    ("rmsprop", dict(learning_rate=0.01, rho=0.8, momentum=0.9, centered=True, epsilon=1e-4)),
    ("rmsprop", dict(learning_rate=0.01, weight_decay=0.05, clipvalue=0.3)),
    ("adagrad", dict(learning_rate=0.1)),
    ("adagrad", dict(learning_rate=0.1, initial_accumulator_value=0.5, epsilon=1e-3,
                     weight_decay=0.02, clipnorm=1.0)),
]
CONFIG_IDS = [f"{name}-{i}" for i, (name, _) in enumerate(CONFIGS)]


def _make(name, settings):
    cls = {"sgd": cn.optimizers.SGD, "adam": cn.optimizers.Adam, "adamw": cn.optimizers.AdamW,
           "rmsprop": cn.optimizers.RMSprop, "adagrad": cn.optimizers.Adagrad}[name]
    return cls(**settings)


def _ref_kwargs(settings):
    kw = dict(settings)
    kw["lr"] = kw.pop("learning_rate")
    return kw


@pytest.mark.parametrize("size", [1, 7, 100003])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name, settings", CONFIGS, ids=CONFIG_IDS)
def test_update_matches_keras_rule(name, settings, dtype, size, kernel_threads, isa):
    rng = np.random.default_rng(size)
    w0 = rng.standard_normal(size).astype(dtype)
    grads_seq = [(2 * rng.standard_normal(size)).astype(dtype) for _ in range(6)]
    opt = _make(name, settings)
    params = w0.copy()
    for g in grads_seq:
        g_before = g.copy()
        opt.apply_gradients(params, g)
        np.testing.assert_array_equal(g, g_before)  # gradients are read only
    assert opt.iterations == len(grads_seq)
    assert params.dtype == dtype
    expected = np_optimize(name, w0, grads_seq, **_ref_kwargs(settings))
    tol = 2e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(params, expected, rtol=tol, atol=tol)
    for slot in opt.slots.values():
        assert slot.shape == params.shape and slot.dtype == dtype


# --------------------------------------------------------------------------- PyTorch parity
TORCH_CASES = [
    # (cyneuron settings, torch class name, torch kwargs); epsilon 0 makes the two exactly
    # comparable (Keras adds epsilon to sqrt(v) before bias correction, PyTorch after).
    (lambda: cn.optimizers.SGD(0.05, momentum=0.9), "SGD", dict(lr=0.05, momentum=0.9)),
    (lambda: cn.optimizers.SGD(0.05, momentum=0.9, nesterov=True), "SGD",
     dict(lr=0.05, momentum=0.9, nesterov=True)),
    (lambda: cn.optimizers.Adam(0.01, epsilon=0.0), "Adam", dict(lr=0.01, eps=0.0)),
    (lambda: cn.optimizers.Adam(0.01, epsilon=0.0, amsgrad=True), "Adam",
     dict(lr=0.01, eps=0.0, amsgrad=True)),
    (lambda: cn.optimizers.AdamW(0.01, weight_decay=0.05, epsilon=0.0), "AdamW",
     dict(lr=0.01, eps=0.0, weight_decay=0.05)),
    (lambda: cn.optimizers.RMSprop(0.01, epsilon=0.0), "RMSprop", dict(lr=0.01, alpha=0.9, eps=0.0)),
    (lambda: cn.optimizers.RMSprop(0.01, momentum=0.8, centered=True, epsilon=0.0), "RMSprop",
     dict(lr=0.01, alpha=0.9, eps=0.0, momentum=0.8, centered=True)),
    (lambda: cn.optimizers.Adagrad(0.1, epsilon=0.0), "Adagrad",
     dict(lr=0.1, initial_accumulator_value=0.1, eps=0.0)),
]


@pytest.mark.parametrize("make, torch_name, torch_kwargs", TORCH_CASES,
                         ids=[f"{c[1]}-{i}" for i, c in enumerate(TORCH_CASES)])
def test_torch_parity(make, torch_name, torch_kwargs):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    w0 = rng.standard_normal(40)
    grads_seq = [rng.standard_normal(40) for _ in range(8)]
    opt = make()
    params = w0.copy()
    tw = torch.tensor(w0.copy(), requires_grad=True)
    topt = getattr(torch.optim, torch_name)([tw], **torch_kwargs)
    for g in grads_seq:
        opt.apply_gradients(params, g)
        tw.grad = torch.tensor(g)
        topt.step()
    np.testing.assert_allclose(params, tw.detach().numpy(), rtol=1e-11, atol=1e-12)


def test_torch_parity_with_default_epsilon_is_close():
    """With Keras's default epsilon=1e-7 the two placements of epsilon differ only slightly."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    w0 = rng.standard_normal(100)
    opt = cn.optimizers.Adam()
    params = w0.copy()
    tw = torch.tensor(w0.copy(), requires_grad=True)
    topt = torch.optim.Adam([tw], lr=0.001, eps=1e-7)
    for _ in range(10):
        g = rng.standard_normal(100)
        opt.apply_gradients(params, g)
        tw.grad = torch.tensor(g)
        topt.step()
    # Ten steps move each weight by up to ~1e-2; the two differ by less than 2e-6.
    np.testing.assert_allclose(params, tw.detach().numpy(), rtol=0, atol=2e-6)


# --------------------------------------------------------------------------- common settings
def test_clipnorm_uses_one_global_norm_over_the_flat_buffer():
    opt = cn.optimizers.SGD(1.0, clipnorm=1.0)
    params = np.zeros(4)
    opt.apply_gradients(params, np.array([3.0, 0.0, 0.0, 4.0]))  # norm 5 over "two arrays"
    np.testing.assert_allclose(params, [-0.6, 0.0, 0.0, -0.8], rtol=1e-15)
    small = np.array([0.3, 0.0, 0.0, 0.4])  # norm 0.5 <= clipnorm: unchanged
    params[:] = 0
    opt.apply_gradients(params, small)
    np.testing.assert_allclose(params, -small, rtol=1e-15)


def test_clipvalue_clips_each_element():
    opt = cn.optimizers.SGD(1.0, clipvalue=0.5)
    params = np.zeros(4)
    opt.apply_gradients(params, np.array([3.0, -4.0, 0.2, 0.0]))
    np.testing.assert_allclose(params, [-0.5, 0.5, -0.2, 0.0])


@pytest.mark.parametrize("make", [
    lambda: cn.optimizers.SGD(0.1, weight_decay=0.5),
    lambda: cn.optimizers.SGD(0.1, momentum=0.9, weight_decay=0.5),
    lambda: cn.optimizers.Adam(0.1, weight_decay=0.5),
    lambda: cn.optimizers.AdamW(0.1, weight_decay=0.5),
    lambda: cn.optimizers.RMSprop(0.1, weight_decay=0.5, centered=True, momentum=0.5),
    lambda: cn.optimizers.Adagrad(0.1, weight_decay=0.5),
], ids=["sgd", "sgd-momentum", "adam", "adamw", "rmsprop", "adagrad"])
def test_weight_decay_is_decoupled_on_every_optimizer(make):
    """With zero gradients only the decay acts: w <- w (1 - lr * weight_decay) per step."""
    opt = make()
    params = np.linspace(-1, 1, 9)
    start = params.copy()
    for _ in range(3):
        opt.apply_gradients(params, np.zeros(9))
    np.testing.assert_allclose(params, start * (1 - 0.1 * 0.5) ** 3, rtol=1e-14, atol=1e-16)


def test_adamw_is_adam_with_decoupled_decay():
    rng = np.random.default_rng(5)
    grads = [rng.standard_normal(20) for _ in range(5)]
    a, b = rng.standard_normal(20), None
    b = a.copy()
    adamw, adam = cn.optimizers.AdamW(), cn.optimizers.Adam(weight_decay=0.004)
    for g in grads:
        adamw.apply_gradients(a, g)
        adam.apply_gradients(b, g)
    np.testing.assert_array_equal(a, b)
    assert cn.optimizers.AdamW().weight_decay == 0.004


def test_keras_defaults():
    adam = cn.optimizers.get("adam")
    assert (adam.learning_rate, adam.beta_1, adam.beta_2, adam.epsilon) == (0.001, 0.9, 0.999, 1e-7)
    rms = cn.optimizers.get("rmsprop")
    assert (rms.learning_rate, rms.rho, rms.momentum, rms.epsilon, rms.centered) == \
        (0.001, 0.9, 0.0, 1e-7, False)
    ada = cn.optimizers.get("adagrad")
    assert (ada.learning_rate, ada.initial_accumulator_value, ada.epsilon) == (0.001, 0.1, 1e-7)
    assert cn.optimizers.get("sgd").learning_rate == 0.01
    assert cn.optimizers.get("adamw").weight_decay == 0.004
    assert set(cn.optimizers.names()) == {"sgd", "adam", "adamw", "rmsprop", "adagrad"}


def test_state_is_flat_and_follows_the_parameter_buffer():
    opt = cn.optimizers.RMSprop(momentum=0.5, centered=True)
    params = np.zeros(6, np.float32)
    opt.apply_gradients(params, np.ones(6, np.float32))
    assert set(opt.slots) == {"velocities", "momentums", "average_gradients"}
    np.testing.assert_allclose(opt.slots["velocities"], 0.1, rtol=1e-6)   # (1 - rho) g^2
    np.testing.assert_allclose(opt.slots["average_gradients"], 0.1, rtol=1e-6)
    params = np.zeros(3)
    opt.apply_gradients(params, np.ones(3))  # another buffer: fresh state of its size and dtype
    assert all(s.shape == (3,) and s.dtype == np.float64 for s in opt.slots.values())
    np.testing.assert_allclose(opt.slots["velocities"], 0.1)
    assert cn.optimizers.Adagrad(initial_accumulator_value=0.3)._slot_initial_value("accumulators") == 0.3
    assert cn.optimizers.SGD().slots == {}


@pytest.mark.parametrize("make", [
    lambda: cn.optimizers.SGD(0.1, momentum=0.9, nesterov=True, clipnorm=1.0),
    lambda: cn.optimizers.Adam(S.ExponentialDecay(0.1, 10, 0.5), amsgrad=True, clipvalue=0.1),
    lambda: cn.optimizers.AdamW(0.01, weight_decay=0.1),
    lambda: cn.optimizers.RMSprop(S.CosineDecay(0.1, 100, warmup_target=0.2, warmup_steps=5)),
    lambda: cn.optimizers.Adagrad(S.PiecewiseConstantDecay([5, 10], [0.3, 0.2, 0.1])),
], ids=["sgd", "adam", "adamw", "rmsprop", "adagrad"])
def test_get_config_round_trip(make):
    opt = make()
    config = opt.get_config()
    assert config["name"] == opt.name
    clone = type(opt).from_config(config)
    assert clone.get_config() == config
    rng = np.random.default_rng(6)
    grads = [rng.standard_normal(5) for _ in range(12)]
    a, b = np.ones(5), np.ones(5)
    for g in grads:
        opt.apply_gradients(a, g)
        clone.apply_gradients(b, g)
    np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- bad settings
@pytest.mark.parametrize("make, match", [
    (lambda: cn.optimizers.Adam(learning_rate=0), "learning_rate"),
    (lambda: cn.optimizers.Adam(learning_rate=-1e-3), "learning_rate"),
    (lambda: cn.optimizers.RMSprop(learning_rate=float("nan")), "learning_rate"),
    (lambda: cn.optimizers.Adagrad(learning_rate="0.1"), "learning_rate"),
    (lambda: cn.optimizers.Adam(beta_1=1.0), "beta_1"),
    (lambda: cn.optimizers.Adam(beta_1=-0.1), "beta_1"),
    (lambda: cn.optimizers.AdamW(beta_2=1.5), "beta_2"),
    (lambda: cn.optimizers.Adam(epsilon=-1e-7), "epsilon"),
    (lambda: cn.optimizers.RMSprop(epsilon=float("inf")), "epsilon"),
    (lambda: cn.optimizers.SGD(weight_decay=-0.1), "weight_decay"),
    (lambda: cn.optimizers.AdamW(weight_decay=None), "weight_decay"),
    (lambda: cn.optimizers.Adam(clipnorm=0), "clipnorm"),
    (lambda: cn.optimizers.SGD(clipnorm=-1.0), "clipnorm"),
    (lambda: cn.optimizers.Adagrad(clipvalue=0.0), "clipvalue"),
    (lambda: cn.optimizers.SGD(clipnorm=1.0, clipvalue=1.0), "clipnorm or clipvalue"),
    (lambda: cn.optimizers.RMSprop(rho=1.0), "rho"),
    (lambda: cn.optimizers.RMSprop(momentum=-0.5), "momentum"),
    (lambda: cn.optimizers.SGD(momentum=1.0), "momentum"),
    (lambda: cn.optimizers.Adagrad(initial_accumulator_value=-0.1), "initial_accumulator_value"),
])
def test_bad_settings_name_the_parameter(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_learning_rate_is_settable_unless_scheduled():
    opt = cn.optimizers.Adam(0.01)
    opt.learning_rate = 0.5
    assert opt.learning_rate == 0.5
    with pytest.raises(ValueError, match="learning_rate"):
        opt.learning_rate = -1.0
    scheduled = cn.optimizers.SGD(S.ExponentialDecay(0.1, 10, 0.5))
    with pytest.raises(TypeError, match="LearningRateSchedule"):
        scheduled.learning_rate = 0.1
    scheduled.learning_rate = S.ExponentialDecay(0.2, 10, 0.5)  # a schedule may replace a schedule
    assert scheduled.learning_rate == pytest.approx(0.2)


def test_kernels_check_their_buffers():
    p, g = np.zeros(4), np.zeros(4)
    with pytest.raises(ValueError, match="m must"):
        ok.adam_update(p, g, np.zeros(3), np.zeros(4), p[:0], 0.1, 0.9, 0.999, 1e-7, 1, False)
    with pytest.raises(ValueError, match="v_max"):
        ok.adam_update(p, g, np.zeros(4), np.zeros(4), p[:0], 0.1, 0.9, 0.999, 1e-7, 1, True)
    with pytest.raises(ValueError, match="step"):
        ok.adam_update(p, g, np.zeros(4), np.zeros(4), p[:0], 0.1, 0.9, 0.999, 1e-7, 0, False)
    with pytest.raises(ValueError, match="momentum_buf"):
        ok.rmsprop_update(p, g, np.zeros(4), p[:0], p[:0], 0.1, 0.9, 0.5, 1e-7, False)
    with pytest.raises(ValueError, match="average_grad"):
        ok.rmsprop_update(p, g, np.zeros(4), p[:0], np.zeros(2), 0.1, 0.9, 0.0, 1e-7, True)
    with pytest.raises(ValueError, match="accumulator"):
        ok.adagrad_update(p, g, np.zeros(5), 0.1, 1e-7)
    with pytest.raises(ValueError, match="grads"):
        ok.adagrad_update(p, np.zeros(3), np.zeros(4), 0.1, 1e-7)
    with pytest.raises(ValueError, match="learning_rate"):
        ok.sgd_update(p, g, p[:0], -0.1, 0.0, False)
    with pytest.raises(ValueError, match="clipvalue"):
        ok.sgd_update(p, g, p[:0], 0.1, 0.0, False, clipvalue=-1.0)
    x = np.arange(100001, dtype=np.float32)
    assert ok.sum_of_squares(x) == pytest.approx(float(np.sum(x.astype(np.float64) ** 2)), rel=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [0, 1, 7, 100003])
def test_add_l2_gradient_matches_numpy(kernel_threads, dtype, n):
    rng = np.random.default_rng(n)
    w = rng.standard_normal(n).astype(dtype)
    g = rng.standard_normal(n).astype(dtype)
    expected = g + dtype(0.25) * w
    total = ok.add_l2_gradient(w, g, 0.25)
    np.testing.assert_allclose(g, expected, rtol=1e-6 if dtype == np.float32 else 1e-14)
    assert total == pytest.approx(float(np.sum(w.astype(np.float64) ** 2)), rel=1e-10, abs=0)
    with pytest.raises(ValueError, match="grads"):
        ok.add_l2_gradient(w, np.zeros(n + 1, dtype), 0.25)


SIMD_KERNELS = {
    "adam": lambda p, g, s, step: ok.adam_update(p, g, s[0], s[1], p[:0], 1e-2, 0.9, 0.999,
                                                 1e-7, step, False, weight_decay=0.01,
                                                 clipvalue=0.5),
    "amsgrad": lambda p, g, s, step: ok.adam_update(p, g, s[0], s[1], s[2], 1e-2, 0.9, 0.999,
                                                    1e-7, step, True),
    "rmsprop": lambda p, g, s, step: ok.rmsprop_update(p, g, s[1], p[:0], p[:0], 1e-2, 0.9,
                                                       0.0, 1e-7, False, weight_decay=0.01),
    "rmsprop-centered-momentum": lambda p, g, s, step: ok.rmsprop_update(
        p, g, s[1], s[0], s[2], 1e-2, 0.9, 0.5, 1e-7, True, clipvalue=0.5),
    "adagrad": lambda p, g, s, step: ok.adagrad_update(p, g, s[1], 1e-2, 1e-7,
                                                       weight_decay=0.01),
}


@pytest.mark.parametrize("kernel", sorted(SIMD_KERNELS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_optimizer_simd_copies_give_the_same_bits(kernel, dtype):
    """The AVX-512, AVX2 and baseline loops of the sqrt/div optimizers (chosen by the
    GEMM's instruction set) use no FMA, so they agree to the last bit."""
    from cyneuron import _config
    from cyneuron._kernels import gemm as gk

    paths = _config.supported_isas()
    if len(paths) < 2:
        pytest.skip("this CPU has only the generic path")
    rng = np.random.default_rng(3)
    n = 10007
    start = [rng.standard_normal(n).astype(dtype) for _ in range(2)]
    state = [np.zeros(n, dtype), np.abs(rng.standard_normal(n)).astype(dtype),
             np.abs(rng.standard_normal(n)).astype(dtype)]
    results = []
    before = gk.get_isa()
    try:
        for path in paths:
            gk.set_isa(path)
            p, g = (a.copy() for a in start)
            s = [a.copy() for a in state]
            for step in range(1, 4):
                SIMD_KERNELS[kernel](p, g, s, step)
            results.append([p] + s)
    finally:
        gk.set_isa(before)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


def test_apply_gradients_refuses_mismatched_buffers():
    opt = cn.optimizers.Adam()
    params = np.zeros(5)
    with pytest.raises(ValueError, match="grads"):
        opt.apply_gradients(params, np.zeros(4))
    with pytest.raises(ValueError, match="grads"):
        opt.apply_gradients(params, np.zeros(5, np.float32))
    with pytest.raises(TypeError, match="params"):
        opt.apply_gradients(np.zeros((5, 1)), np.zeros((5, 1)))
    assert opt.iterations == 0


# --------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def digits():
    pytest.importorskip("sklearn")
    from cyneuron import datasets
    return datasets.load_digits()


EPOCHS, BATCH = 20, 32
STEPS = EPOCHS * 45  # 1,437 training images in batches of 32

DIGIT_OPTIMIZERS = [
    ("sgd", lambda: cn.optimizers.SGD(S.CosineDecay(0.2, STEPS))),
    ("sgd-momentum", lambda: cn.optimizers.SGD(S.CosineDecay(0.05, STEPS), momentum=0.9)),
    ("sgd-nesterov", lambda: cn.optimizers.SGD(0.05, momentum=0.9, nesterov=True, clipvalue=1.0)),
    ("adam", lambda: cn.optimizers.Adam()),
    ("adam-clipnorm", lambda: cn.optimizers.Adam(S.CosineDecay(0.002, STEPS), clipnorm=1.0)),
    ("adamw", lambda: cn.optimizers.AdamW(S.CosineDecay(0.002, STEPS))),
    ("rmsprop", lambda: cn.optimizers.RMSprop(S.CosineDecay(0.001, STEPS))),
    ("adagrad", lambda: cn.optimizers.Adagrad(S.CosineDecay(0.05, STEPS))),
]


@pytest.mark.parametrize("make", [m for _, m in DIGIT_OPTIMIZERS], ids=[i for i, _ in DIGIT_OPTIMIZERS])
def test_each_optimizer_trains_the_digits_mlp(digits, make):
    (x_tr, y_tr), (x_te, y_te) = digits
    cn.set_seed(0)
    model = cn.Sequential([layers.Dense(128, activation="relu"), layers.Dense(64, activation="relu"),
                           layers.Dense(10, activation="softmax")])
    model.compile(optimizer=make(), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x_tr, y_tr, epochs=EPOCHS, batch_size=BATCH, verbose=0)
    assert model.optimizer.iterations == STEPS
    assert history.history["loss"][-1] < history.history["loss"][0] / 5
    assert model.evaluate(x_te, y_te)["accuracy"] >= 0.96


# --------------------------------------------------------------------------- schedules
def test_exponential_decay_closed_form():
    sched = S.ExponentialDecay(0.1, decay_steps=100, decay_rate=0.5)
    for step in [0, 1, 50, 99, 100, 250, 1000]:
        assert sched(step) == pytest.approx(0.1 * 0.5 ** (step / 100), rel=1e-14)
    stair = S.ExponentialDecay(0.1, decay_steps=100, decay_rate=0.5, staircase=True)
    assert [stair(s) for s in (0, 99, 100, 199, 200)] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025])


def test_piecewise_constant_decay():
    sched = S.PiecewiseConstantDecay([100, 200], [1.0, 0.5, 0.1])
    assert [sched(s) for s in (0, 100, 101, 200, 201, 10 ** 6)] == [1.0, 1.0, 0.5, 0.5, 0.1, 0.1]


def test_cosine_decay_closed_form():
    sched = S.CosineDecay(0.1, decay_steps=100, alpha=0.1)
    for step in [0, 25, 50, 99, 100, 150]:
        s = min(step, 100)
        expected = 0.1 * (0.9 * 0.5 * (1 + math.cos(math.pi * s / 100)) + 0.1)
        assert sched(step) == pytest.approx(expected, rel=1e-14)
    assert sched(0) == pytest.approx(0.1) and sched(100) == pytest.approx(0.01)


def test_cosine_decay_with_warmup():
    sched = S.CosineDecay(0.0, decay_steps=100, warmup_target=0.2, warmup_steps=10)
    assert sched(0) == 0.0
    assert sched(5) == pytest.approx(0.1)
    assert sched(10) == pytest.approx(0.2)
    assert sched(60) == pytest.approx(0.2 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert sched(110) == pytest.approx(0.0, abs=1e-15) and sched(500) == pytest.approx(0.0, abs=1e-15)


def test_optimizer_evaluates_its_schedule_at_each_step():
    sched = S.ExponentialDecay(0.1, decay_steps=2, decay_rate=0.5)
    opt = cn.optimizers.SGD(sched)
    params = np.zeros(3)
    rates = []
    for _ in range(5):
        rates.append(opt.learning_rate)
        opt.apply_gradients(params, np.ones(3))
    assert rates == pytest.approx([sched(t) for t in range(5)])
    np.testing.assert_allclose(params, -sum(rates))


def test_schedule_serialization():
    for sched in (S.ExponentialDecay(0.1, 10, 0.9, staircase=True),
                  S.PiecewiseConstantDecay([3], [0.2, 0.1]),
                  S.CosineDecay(0.1, 50, alpha=0.2, warmup_target=0.3, warmup_steps=4)):
        clone = S.deserialize(S.serialize(sched))
        assert type(clone) is type(sched) and clone.get_config() == sched.get_config()
        assert [clone(s) for s in range(60)] == [sched(s) for s in range(60)]
    with pytest.raises(ValueError, match="schedule"):
        S.deserialize({"class_name": "Nope"})
    assert cn.schedules is S


@pytest.mark.parametrize("make, match", [
    (lambda: S.ExponentialDecay(0.0, 10, 0.5), "initial_learning_rate"),
    (lambda: S.ExponentialDecay(0.1, 0, 0.5), "decay_steps"),
    (lambda: S.ExponentialDecay(0.1, 10, -0.5), "decay_rate"),
    (lambda: S.PiecewiseConstantDecay([1, 2], [0.1, 0.2]), "one more"),
    (lambda: S.PiecewiseConstantDecay([2, 1], [0.3, 0.2, 0.1]), "increasing"),
    (lambda: S.CosineDecay(0.1, 10, alpha=1.5), "alpha"),
    (lambda: S.CosineDecay(0.1, -10), "decay_steps"),
    (lambda: S.CosineDecay(0.1, 10, warmup_target=0.2, warmup_steps=-1), "warmup_steps"),
])
def test_bad_schedule_settings(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_schedule_refuses_negative_step():
    with pytest.raises(ValueError, match="step"):
        S.CosineDecay(0.1, 10)(-1)


# --------------------------------------------------------------------------- callbacks
class _Recorder(cn.Callback):
    def __init__(self):
        super().__init__()
        self.calls = []

    def on_train_begin(self, logs=None):
        self.calls.append("train_begin")

    def on_train_end(self, logs=None):
        self.calls.append("train_end")

    def on_epoch_begin(self, epoch, logs=None):
        self.calls.append(("epoch_begin", epoch))

    def on_epoch_end(self, epoch, logs=None):
        self.calls.append(("epoch_end", epoch, sorted(logs)))

    def on_train_batch_begin(self, batch, logs=None):
        self.calls.append(("batch_begin", batch))

    def on_train_batch_end(self, batch, logs=None):
        self.calls.append(("batch_end", batch, sorted(logs)))


def _tiny_model(lr=0.1):
    cn.set_seed(0)
    model = cn.Sequential([layers.Dense(4, activation="tanh"), layers.Dense(3, activation="softmax")])
    model.compile(optimizer=cn.optimizers.SGD(lr), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def _tiny_data(n=20):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 2)), np.arange(n) % 3


def test_fit_calls_every_hook_in_order():
    model = _tiny_model()
    x, y = _tiny_data()
    rec = _Recorder()
    model.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[rec], validation_data=(x, y))
    assert rec.model is model
    assert rec.params == {"epochs": 2, "steps": 3, "verbose": 0}
    expected = ["train_begin"]
    for epoch in range(2):
        expected.append(("epoch_begin", epoch))
        for step in range(3):
            expected += [("batch_begin", step), ("batch_end", step, ["accuracy", "loss"])]
        expected.append(("epoch_end", epoch, ["accuracy", "loss", "val_accuracy", "val_loss"]))
    expected.append("train_end")
    assert rec.calls == expected


def test_a_callback_can_stop_training():
    class StopAfterTwo(cn.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                self.model.stop_training = True

    model = _tiny_model()
    history = model.fit(*_tiny_data(), epochs=10, verbose=0, callbacks=[StopAfterTwo()])
    assert history.epoch == [0, 1]
    history = model.fit(*_tiny_data(), epochs=3, verbose=0)  # the flag is reset by the next fit
    assert history.epoch == [0, 1, 2]


def test_callbacks_must_be_callback_instances():
    model = _tiny_model()
    with pytest.raises(TypeError, match="Callback"):
        model.fit(*_tiny_data(), verbose=0, callbacks=[lambda *a: None])


class _FakeModel:
    def __init__(self, optimizer):
        self.optimizer = optimizer


def test_reduce_lr_on_plateau_patience_cooldown_min_lr():
    opt = cn.optimizers.SGD(1.0)
    cb = cn.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=2, cooldown=1,
                                        min_lr=0.1)
    cb.set_model(_FakeModel(opt))
    cb.on_train_begin()
    losses = [1.0, 0.9] + [0.9] * 10
    rates, logged = [], []
    for epoch, value in enumerate(losses):
        logs = {"val_loss": value}
        cb.on_epoch_end(epoch, logs)
        logged.append(logs["learning_rate"])
        rates.append(opt.learning_rate)
    assert rates == pytest.approx([1, 1, 1, 0.5, 0.5, 0.25, 0.25, 0.125, 0.125, 0.1, 0.1, 0.1])
    assert logged == pytest.approx([1.0] + rates[:-1])  # the rate in use during that epoch


def test_reduce_lr_on_plateau_maximizes_accuracy_and_honours_min_delta():
    opt = cn.optimizers.SGD(1.0)
    cb = cn.callbacks.ReduceLROnPlateau(monitor="val_accuracy", patience=1, min_delta=0.01)
    cb.set_model(_FakeModel(opt))
    cb.on_train_begin()
    for epoch, acc in enumerate([0.5, 0.6, 0.7, 0.8]):  # improving: no change
        cb.on_epoch_end(epoch, {"val_accuracy": acc})
    assert opt.learning_rate == 1.0
    cb.on_epoch_end(4, {"val_accuracy": 0.805})  # below min_delta: a plateau
    assert opt.learning_rate == pytest.approx(0.1)


def test_reduce_lr_on_plateau_in_fit():
    model = _tiny_model(lr=0.2)
    x, y = _tiny_data()
    # min_delta so large that nothing after the first epoch counts as an improvement.
    cb = cn.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=1, min_delta=1e9)
    history = model.fit(x, y, epochs=4, verbose=0, validation_data=(x, y), callbacks=[cb])
    assert history.history["learning_rate"] == pytest.approx([0.2, 0.2, 0.1, 0.05])
    assert model.optimizer.learning_rate == pytest.approx(0.025)


def test_reduce_lr_on_plateau_warns_without_the_monitored_value():
    model = _tiny_model()
    cb = cn.callbacks.ReduceLROnPlateau()  # val_loss, but no validation data
    with pytest.warns(RuntimeWarning, match="val_loss"):
        model.fit(*_tiny_data(), epochs=1, verbose=0, callbacks=[cb])


def test_reduce_lr_on_plateau_refuses_a_scheduled_rate():
    opt = cn.optimizers.SGD(S.ExponentialDecay(0.1, 10, 0.5))
    cb = cn.callbacks.ReduceLROnPlateau(monitor="loss", patience=0)
    cb.set_model(_FakeModel(opt))
    cb.on_train_begin()
    cb.on_epoch_end(0, {"loss": 1.0})
    with pytest.raises(TypeError, match="LearningRateSchedule"):
        cb.on_epoch_end(1, {"loss": 1.0})


@pytest.mark.parametrize("kwargs, match", [
    ({"factor": 1.0}, "factor"), ({"factor": 0}, "factor"), ({"patience": -1}, "patience"),
    ({"cooldown": 1.5}, "cooldown"), ({"min_lr": -1.0}, "min_lr"), ({"min_delta": -0.1}, "min_delta"),
    ({"mode": "up"}, "mode"),
])
def test_reduce_lr_on_plateau_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        cn.callbacks.ReduceLROnPlateau(**kwargs)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adam_and_rmsprop_flush_subnormal_moments(dtype):
    """A gradient that stays 0 lets the moments decay; below the smallest normal number
    they become exactly 0 (a subnormal would take the slow microcode path every step)."""
    tiny = np.finfo(dtype).tiny
    p = np.ones(4, dtype)
    g = np.zeros(4, dtype)
    m = np.array([tiny * 1.05, -tiny * 1.05, 1.0, 0.0], dtype)
    v = np.array([tiny * 1.0005, tiny * 4, 1.0, 0.0], dtype)
    ok.adam_update(p, g, m, v, p[:0], 1e-3, 0.9, 0.999, 1e-7, 5, False)
    assert m[0] == 0 and m[1] == 0 and m[2] == dtype(0.9)
    assert v[0] == 0 and v[1] == dtype(tiny * 4 * 0.999) and v[2] == dtype(0.999)
    assert not np.any((m != 0) & (np.abs(m) < tiny)) and not np.any((v != 0) & (v < tiny))
    velocity = np.array([tiny * 1.05, 1.0], dtype)
    q, h = np.ones(2, dtype), np.zeros(2, dtype)
    ok.rmsprop_update(q, h, velocity, q[:0], q[:0], 1e-3, 0.9, 0.0, 1e-7, False)
    assert velocity[0] == 0 and velocity[1] == dtype(0.9)
