"""Every activation and activation layer: numpy references, finite differences, stability.

Kernels against float64 numpy references over awkward sizes (1, primes, past the
parallel threshold), float32 and float64, on 1 and 2 threads; float64 central
finite differences for every activation (through cn.ops, Dense and the
Activation layer) and for the layers with weights (PReLU alpha, Maxout kernel
and bias); |x| up to 1e4 in float32 with warnings as errors; bad names and
parameters raise.
"""
import math
import warnings

import numpy as np
import pytest

import cyneuron as cn
from cyneuron import activations, layers

from test_gradients import numeric_grad

DTYPES = [np.float32, np.float64]
DTYPE_IDS = ["float32", "float64"]
SIZES = [1, 7, 1000, 100003]

ELEMENTWISE = ["linear", "binary_step", "sigmoid", "hard_sigmoid", "tanh", "relu", "leaky_relu",
               "elu", "selu", "gelu", "gelu_tanh", "swish", "mish", "softplus", "softsign",
               "relu6", "hard_tanh", "exponential", "hard_swish"]
ROWWISE = ["softmax", "log_softmax"]
ALL = ELEMENTWISE + ROWWISE
NEEDS_INPUT = {"gelu", "gelu_tanh", "swish", "mish", "softsign", "hard_swish"}
# Points where the derivative jumps: finite differences must keep away from them.
KINKS = {"relu": [0.0], "leaky_relu": [0.0], "elu": [0.0], "selu": [0.0],
         "hard_sigmoid": [-3.0, 3.0], "binary_step": [0.0], "relu6": [0.0, 6.0],
         "hard_tanh": [-1.0, 1.0], "hard_swish": [-3.0, 3.0]}
# exp overflows past these (float32, float64): kernel comparisons stay below them.
EXP_MAX = {np.dtype(np.float32): 88.0, np.dtype(np.float64): 709.0}

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946
GELU_C = math.sqrt(2 / math.pi)

_erfc = np.vectorize(math.erfc, otypes=[np.float64])


def _expit(x):
    """sigmoid without overflow: e^-|x| never overflows."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def _gelu_tanh_u(x):
    return GELU_C * (x + 0.044715 * x ** 3)


# --------------------------------------------------------------------------- numpy references

def ref_forward(name, x, slope=0.2, alpha=1.0):
    x = np.asarray(x, np.float64)
    with np.errstate(over="ignore"):
        if name == "linear":
            return x.copy()
        if name == "binary_step":
            return np.where(x >= 0, 1.0, 0.0)
        if name == "sigmoid":
            return _expit(x)
        if name == "hard_sigmoid":
            return np.clip(x / 6 + 0.5, 0, 1)
        if name == "tanh":
            return np.tanh(x)
        if name == "relu":
            return np.maximum(x, 0)
        if name == "leaky_relu":
            return np.where(x > 0, x, slope * x)
        if name == "elu":
            return np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0)))
        if name == "selu":
            return SELU_SCALE * np.where(x > 0, x, SELU_ALPHA * np.expm1(np.minimum(x, 0)))
        if name == "gelu":
            return 0.5 * x * _erfc(-x / math.sqrt(2))
        if name == "gelu_tanh":
            u = _gelu_tanh_u(np.clip(x, -1e3, 1e3))
            return x * _expit(2 * u)          # = 0.5 x (1 + tanh(u)), without cancellation
        if name == "swish":
            return x * _expit(x)
        if name == "mish":
            return x * np.tanh(np.logaddexp(0, x))
        if name == "softplus":
            return np.logaddexp(0, x)
        if name == "softsign":
            return x / (1 + np.abs(x))
        if name == "relu6":
            return np.clip(x, 0, 6)
        if name == "hard_tanh":
            return np.clip(x, -1, 1)
        if name == "exponential":
            return np.exp(x)
        if name == "hard_swish":
            return x * np.clip(x + 3, 0, 6) / 6
        if name == "softmax":
            e = np.exp(x - x.max(axis=-1, keepdims=True))
            return e / e.sum(axis=-1, keepdims=True)
        if name == "log_softmax":
            m = x.max(axis=-1, keepdims=True)
            return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))
    raise AssertionError(name)


def ref_derivative(name, x, slope=0.2, alpha=1.0):
    """f'(x) element-wise, in float64, from x."""
    x = np.asarray(x, np.float64)
    with np.errstate(over="ignore", under="ignore"):
        if name == "linear":
            return np.ones_like(x)
        if name == "binary_step":
            return np.zeros_like(x)
        if name == "sigmoid":
            return _expit(x) * _expit(-x)
        if name == "hard_sigmoid":
            return np.where((x > -3) & (x < 3), 1 / 6, 0.0)
        if name == "tanh":
            return 1 - np.tanh(x) ** 2
        if name == "relu":
            return np.where(x > 0, 1.0, 0.0)
        if name == "leaky_relu":
            return np.where(x > 0, 1.0, slope)
        if name == "elu":
            return np.where(x > 0, 1.0, alpha * np.exp(np.minimum(x, 0)))
        if name == "selu":
            return SELU_SCALE * np.where(x > 0, 1.0, SELU_ALPHA * np.exp(np.minimum(x, 0)))
        if name == "gelu":
            return 0.5 * _erfc(-x / math.sqrt(2)) + x * np.exp(-0.5 * np.minimum(x * x, 1e300)) \
                / math.sqrt(2 * math.pi)
        if name == "gelu_tanh":
            xc = np.clip(x, -1e3, 1e3)
            u = _gelu_tanh_u(xc)
            du = GELU_C * (1 + 3 * 0.044715 * xc ** 2)
            return _expit(2 * u) + xc * _expit(2 * u) * _expit(-2 * u) * 2 * du
        if name == "swish":
            return _expit(x) + x * _expit(x) * _expit(-x)
        if name == "mish":
            t = np.tanh(np.logaddexp(0, x))
            return t + x * (1 - t * t) * _expit(x)
        if name == "softplus":
            return _expit(x)
        if name == "softsign":
            return 1 / (1 + np.abs(x)) ** 2
        if name == "relu6":
            return np.where((x > 0) & (x < 6), 1.0, 0.0)
        if name == "hard_tanh":
            return np.where((x > -1) & (x < 1), 1.0, 0.0)
        if name == "exponential":
            return np.exp(x)
        if name == "hard_swish":
            return np.where(x < -3, 0.0, np.where(x > 3, 1.0, (2 * x + 3) / 6))
    raise AssertionError(name)


def ref_backward(name, x, dy, **params):
    x, dy = np.asarray(x, np.float64), np.asarray(dy, np.float64)
    if name in ROWWISE:
        y = ref_forward(name, x)
        if name == "softmax":
            return y * (dy - (dy * y).sum(axis=-1, keepdims=True))
        return dy - np.exp(y) * dy.sum(axis=-1, keepdims=True)
    return dy * ref_derivative(name, x, **params)


def _ops(name):
    """(forward(x), grad(y, dy, x)) for a registry name, through cn.ops."""
    if name == "gelu_tanh":
        return (lambda x: cn.ops.gelu(x, approximate=True),
                lambda y, dy, x: cn.ops.gelu_grad(y, dy, x=x, approximate=True))
    fwd, grad = getattr(cn.ops, name), getattr(cn.ops, name + "_grad")
    return fwd, (lambda y, dy, x: grad(y, dy, x=x))


def _tol(dtype):
    if np.dtype(dtype) == np.float32:
        return 4e-6, 1e-30
    return 2e-13, 1e-300


def _awkward_inputs(size, dtype, seed):
    rng = np.random.default_rng(seed)
    x = 4 * rng.standard_normal(size)
    special = [0.0, -0.0, 1e-30, -1e-30, 3.0, -3.0, 2.999, -2.999, 19.9, 20.5, 39.9, 40.5,
               -20.0, -40.0, 99.0, -99.0, 101.0, -101.0, 1e-3, -1e-3]
    k = min(size, len(special))
    x[:k] = special[:k]
    return x.astype(dtype)


# --------------------------------------------------------------------------- kernels vs numpy

@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", ELEMENTWISE)
def test_elementwise_matches_numpy(name, dtype, size, kernel_threads):
    x = _awkward_inputs(size, dtype, size)
    if name == "exponential":        # e^x is inf past EXP_MAX by definition
        x = np.minimum(x, EXP_MAX[np.dtype(dtype)]).astype(dtype)
    x_before = x.copy()
    fwd, grad = _ops(name)
    y = fwd(x)
    assert y.dtype == dtype and y.shape == x.shape
    np.testing.assert_array_equal(x, x_before)
    rtol, atol = _tol(dtype)
    eps = np.finfo(dtype).eps
    ref = ref_forward(name, x)
    np.testing.assert_allclose(y, ref, rtol=rtol, atol=atol)

    dy = np.random.default_rng(size + 1).standard_normal(size).astype(dtype)
    dx = grad(y, dy, x)
    assert dx.dtype == dtype and dx.shape == x.shape
    # Derivatives taken from y (sigmoid, tanh, elu, selu) lose up to a few ulp of the
    # derivative's scale where 1 - y or y + alpha cancels.
    np.testing.assert_allclose(dx, ref_backward(name, x, dy), rtol=4 * rtol,
                               atol=8 * eps * np.abs(dy).max() * (2 if name == "selu" else 1))


@pytest.mark.parametrize("rows", [1, 7, 4001])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_log_softmax_matches_numpy(dtype, rows, kernel_threads):
    rng = np.random.default_rng(rows)
    x = (4 * rng.standard_normal((rows, 11))).astype(dtype)
    y = cn.ops.log_softmax(x)
    assert y.dtype == dtype and y.shape == x.shape
    eps = np.finfo(dtype).eps
    ref = ref_forward("log_softmax", x)
    np.testing.assert_allclose(y, ref, rtol=0, atol=16 * eps * max(1.0, np.abs(ref).max()))
    np.testing.assert_allclose(np.exp(y.astype(np.float64)), cn.ops.softmax(x.astype(np.float64)),
                               rtol=32 * eps, atol=32 * eps)
    dy = rng.standard_normal(x.shape).astype(dtype)
    dx = cn.ops.log_softmax_grad(y, dy)
    assert dx.dtype == dtype
    np.testing.assert_allclose(dx, ref_backward("log_softmax", x, dy), rtol=0,
                               atol=64 * eps * np.abs(dy).sum(axis=-1).max())


@pytest.mark.parametrize("shape", [(1,), (5,), (2, 3, 4), (3, 1)])
def test_log_softmax_is_over_the_last_axis(shape):
    x = np.random.default_rng(0).normal(size=shape)
    np.testing.assert_allclose(cn.ops.log_softmax(x), ref_forward("log_softmax", x),
                               rtol=1e-13, atol=1e-13)
    assert cn.ops.log_softmax(np.empty((0, 3))).shape == (0, 3)
    with pytest.raises(ValueError, match="1-D"):
        cn.ops.log_softmax(np.float64(1.0))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("slope", [0.0, 0.01, 0.3, 1.5])
def test_leaky_relu_slopes(slope, dtype):
    x = _awkward_inputs(1000, dtype, 3)
    y = cn.ops.leaky_relu(x, negative_slope=slope)
    np.testing.assert_allclose(y, ref_forward("leaky_relu", x, slope=slope), rtol=1e-7)
    dy = np.ones_like(x)
    np.testing.assert_allclose(cn.ops.leaky_relu_grad(y, dy, negative_slope=slope),
                               ref_derivative("leaky_relu", x, slope=slope), rtol=1e-7)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0, 2.5])
def test_elu_alphas(alpha, dtype):
    x = _awkward_inputs(1000, dtype, 4)
    y = cn.ops.elu(x, alpha=alpha)
    eps = np.finfo(dtype).eps
    np.testing.assert_allclose(y, ref_forward("elu", x, alpha=alpha), rtol=4e-6, atol=4 * eps)
    dx = cn.ops.elu_grad(y, np.ones_like(x), alpha=alpha)
    np.testing.assert_allclose(dx, ref_derivative("elu", x, alpha=alpha), rtol=4e-6,
                               atol=4 * eps * max(alpha, 1))


def test_gelu_tanh_agrees_with_the_tanh_formula_and_is_close_to_exact():
    x = np.linspace(-6, 6, 1201)
    tanh_form = 0.5 * x * (1 + np.tanh(_gelu_tanh_u(x)))
    np.testing.assert_allclose(cn.ops.gelu(x, approximate=True), tanh_form, rtol=1e-12,
                               atol=1e-15)
    # The approximation is within 5e-4 of the exact erf form everywhere.
    assert np.abs(cn.ops.gelu(x, approximate=True) - cn.ops.gelu(x)).max() < 5e-4


def test_binary_step_threshold_and_zero_gradient():
    x = np.array([-2.0, -1e-300, -0.0, 0.0, 1e-300, 3.0])
    y = cn.ops.binary_step(x)
    np.testing.assert_array_equal(y, [0, 0, 1, 1, 1, 1])
    np.testing.assert_array_equal(cn.ops.binary_step_grad(y, np.full(6, 5.0)), np.zeros(6))


def test_silu_is_swish():
    x = np.linspace(-5, 5, 21)
    np.testing.assert_array_equal(cn.ops.silu(x), cn.ops.swish(x))
    assert activations.get("silu").name == "swish"
    assert isinstance(activations.get("SiLU"), activations.Swish)
    assert layers.Dense(2, activation="silu").activation.name == "swish"
    assert layers.Activation("silu").activation.name == "swish"
    np.testing.assert_array_equal(cn.ops.silu_grad(None, np.ones(21), x=x),
                                  cn.ops.swish_grad(None, np.ones(21), x=x))
    assert activations.get("hard_silu").name == "hard_swish"     # Keras 3's other name


@pytest.mark.parametrize("name", ALL)
def test_in_place_forward_and_backward(name):
    """Layers compute activations in place (out is x, dx is dy): same results."""
    act = activations.get(name)
    x = np.random.default_rng(1).normal(scale=3, size=(4, 9))
    y = act.forward(x, out=np.empty_like(x))
    dy = np.random.default_rng(2).normal(size=x.shape)
    dx = act.backward(y, dy, out=np.empty_like(dy), x=x)
    xi, dyi = x.copy(), dy.copy()
    if not act.needs_input:
        yi = act.forward(xi, out=xi)
        assert yi is xi
        np.testing.assert_array_equal(yi, y)
        np.testing.assert_array_equal(act.backward(yi, dyi, out=dyi), dx)
    else:
        np.testing.assert_array_equal(act.backward(None, dyi, out=dyi, x=xi), dx)


# --------------------------------------------------------------------------- finite differences

def _away_from_kinks(name, x, margin=1e-3):
    for k in KINKS.get(name, []):
        close = np.abs(x - k) < margin
        x[close] = k + np.where(x[close] >= k, 1, -1) * 2 * margin
    return x


@pytest.mark.parametrize("name", ALL)
def test_ops_gradient_finite_differences(name):
    rng = np.random.default_rng(ALL.index(name))
    x = _away_from_kinks(name, rng.normal(scale=2.5, size=(3, 7)))
    fwd, grad = _ops(name)
    dy = rng.normal(size=x.shape)
    dx = grad(fwd(x), dy, x)
    num = numeric_grad(lambda: float(np.sum(dy * fwd(x))), x)
    np.testing.assert_allclose(dx, num, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", ALL)
def test_dense_gradient_finite_differences(name):
    """Dense(activation=name): dx and the weight gradients, including activations that
    keep their pre-activation (needs_input) next to the in-place ones."""
    rng = np.random.default_rng(100 + ALL.index(name))
    n, d_in, units = 5, 4, 6
    for _ in range(1000):
        x = rng.normal(size=(n, d_in))
        kernel = rng.normal(scale=0.8, size=(d_in, units))
        bias = rng.normal(scale=0.5, size=units)
        z = x @ kernel + bias
        if all(np.abs(z - k).min() > 1e-3 for k in KINKS.get(name, [])):
            break
    layer = layers.Dense(units, activation=name, dtype="float64")
    layer.forward(x)
    layer.set_weights([kernel, bias])
    out = layer.forward(x).copy()
    np.testing.assert_allclose(out, ref_forward(name, z), rtol=1e-12, atol=1e-14)
    g = rng.normal(size=out.shape)
    dx = layer.backward(g).copy()
    grads = layer.get_gradients()
    np.testing.assert_allclose(dx, numeric_grad(lambda: float(np.sum(g * layer.forward(x))), x),
                               rtol=1e-6, atol=1e-8)
    w = [kernel.copy(), bias.copy()]
    for k in range(2):
        def objective():
            layer.set_weights(w)
            return float(np.sum(g * layer.forward(x)))
        np.testing.assert_allclose(grads[k], numeric_grad(objective, w[k]), rtol=1e-6, atol=1e-8,
                                   err_msg=f"weight #{k}")


ACTIVATION_LAYERS = [
    ("Activation(gelu)", lambda: layers.Activation("gelu"), "gelu", {}),
    ("Activation(softmax)", lambda: layers.Activation("softmax"), "softmax", {}),
    ("Activation(log_softmax)", lambda: layers.Activation("log_softmax"), "log_softmax", {}),
    ("Activation(selu)", lambda: layers.Activation(activations.SELU), "selu", {}),
    ("Activation(mish)", lambda: layers.Activation(activations.Mish()), "mish", {}),
    ("Activation(relu6)", lambda: layers.Activation("relu6"), "relu6", {}),
    ("Activation(hard_tanh)", lambda: layers.Activation("hard_tanh"), "hard_tanh", {}),
    ("Activation(exponential)", lambda: layers.Activation("exponential"), "exponential", {}),
    ("Activation(hard_swish)", lambda: layers.Activation(activations.HardSwish), "hard_swish",
     {}),
    ("LeakyReLU()", lambda: layers.LeakyReLU(), "leaky_relu", {"slope": 0.3}),
    ("LeakyReLU(0.05)", lambda: layers.LeakyReLU(negative_slope=0.05), "leaky_relu",
     {"slope": 0.05}),
    ("ELU()", lambda: layers.ELU(), "elu", {}),
    ("ELU(0.4)", lambda: layers.ELU(alpha=0.4), "elu", {"alpha": 0.4}),
]


@pytest.mark.parametrize("make,name,params", [a[1:] for a in ACTIVATION_LAYERS],
                         ids=[a[0] for a in ACTIVATION_LAYERS])
@pytest.mark.parametrize("shape", [(4, 6), (3, 2, 5)])
def test_activation_layers(make, name, params, shape):
    rng = np.random.default_rng(7)
    x = _away_from_kinks(name, rng.normal(scale=2, size=shape))
    layer = make()
    layer.dtype = np.dtype(np.float64)
    y = layer.forward(x).copy()
    assert layer.count_params() == 0 and layer.get_weights() == []
    np.testing.assert_allclose(y, ref_forward(name, x, **params), rtol=1e-12, atol=1e-14)
    g = rng.normal(size=shape)
    dx = layer.backward(g).copy()
    np.testing.assert_allclose(dx, ref_backward(name, x, g, **params), rtol=1e-10, atol=1e-13)
    num = numeric_grad(lambda: float(np.sum(g * layer.forward(x))), x)
    np.testing.assert_allclose(dx, num, rtol=1e-6, atol=1e-8)


def _prelu_problem(rng, shape, margin=1e-3):
    x = rng.normal(size=shape)
    x[np.abs(x) < margin] = 2 * margin
    return x


@pytest.mark.parametrize("shared_axes,shape,alpha_shape", [
    (None, (5, 7), (7,)),
    (None, (4, 3, 2), (3, 2)),
    ([1], (4, 3, 2), (1, 2)),
    ([1, 2], (3, 4, 5, 2), (1, 1, 2)),
    (2, (4, 3, 2), (3, 1)),
])
def test_prelu_forward_backward_and_finite_differences(shared_axes, shape, alpha_shape):
    rng = np.random.default_rng(len(shape))
    x = _prelu_problem(rng, shape)
    layer = layers.PReLU(shared_axes=shared_axes, dtype="float64")
    y0 = layer.forward(x).copy()
    assert layer.alpha.shape == alpha_shape
    np.testing.assert_array_equal(y0, np.maximum(x, 0))        # alpha starts at zero (Keras)
    alpha = rng.normal(scale=0.5, size=alpha_shape)
    layer.set_weights([alpha])
    y = layer.forward(x).copy()
    np.testing.assert_allclose(y, np.where(x > 0, x, alpha * x), rtol=1e-14)
    g = rng.normal(size=shape)
    dx = layer.backward(g).copy()
    (dalpha,) = layer.get_gradients()
    np.testing.assert_allclose(dx, np.where(x > 0, g, alpha * g), rtol=1e-14)
    axes = (0,) + tuple(a for a in range(1, len(shape)) if alpha_shape[a - 1] == 1)
    expected = np.where(x > 0, 0, g * x).sum(axis=axes).reshape(alpha_shape)
    np.testing.assert_allclose(dalpha, expected, rtol=1e-12, atol=1e-14)

    np.testing.assert_allclose(dx, numeric_grad(lambda: float(np.sum(g * layer.forward(x))), x),
                               rtol=1e-6, atol=1e-8)
    a = alpha.copy()

    def objective():
        layer.set_weights([a])
        return float(np.sum(g * layer.forward(x)))
    np.testing.assert_allclose(dalpha, numeric_grad(objective, a), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("n,m", [(1, 1), (7, 3), (300, 1000), (5, 70001)])
def test_prelu_kernel_sizes(n, m, dtype, kernel_threads):
    """Column blocks of the alpha reduction, a single column, many rows."""
    rng = np.random.default_rng(n + m)
    layer = layers.PReLU(dtype=dtype)
    x = rng.normal(size=(n, m)).astype(dtype)
    layer.forward(x)
    alpha = rng.normal(size=m).astype(dtype)
    layer.set_weights([alpha])
    y = layer.forward(x)
    x64, a64 = x.astype(np.float64), alpha.astype(np.float64)
    rtol = 1e-6 if dtype == np.float32 else 1e-14
    np.testing.assert_allclose(y, np.where(x64 > 0, x64, a64 * x64), rtol=rtol)
    g = rng.normal(size=(n, m)).astype(dtype)
    dx = layer.backward(g)
    np.testing.assert_allclose(dx, np.where(x64 > 0, g, a64 * g), rtol=rtol)
    expected = np.where(x64 > 0, 0, g * x64).sum(axis=0)
    atol = 1e-5 * np.sqrt(n) if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(layer.get_gradients()[0], expected, rtol=1e-5, atol=atol)


def _maxout_setup(rng, n, d_in, units, pieces, margin=1e-3):
    """Inputs and weights whose winning piece is at least `margin` ahead of the runner-up."""
    for _ in range(1000):
        x = rng.normal(size=(n, d_in))
        kernel = rng.normal(size=(d_in, units * pieces))
        bias = rng.normal(size=units * pieces)
        z = (x @ kernel + bias).reshape(n, units, pieces)
        top2 = np.sort(z, axis=-1)[..., -2:] if pieces > 1 else None
        if pieces == 1 or (top2[..., 1] - top2[..., 0]).min() > margin:
            return x, kernel, bias
    raise AssertionError("no tie-free Maxout problem drawn")


@pytest.mark.parametrize("use_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("units,pieces", [(3, 2), (1, 4), (4, 1)])
def test_maxout_forward_backward_and_finite_differences(units, pieces, use_bias):
    rng = np.random.default_rng(units * 10 + pieces)
    n, d_in = 6, 5
    x, kernel, bias = _maxout_setup(rng, n, d_in, units, pieces)
    layer = layers.Maxout(units, pieces, use_bias=use_bias, dtype="float64")
    layer.forward(x)
    assert layer.kernel.shape == (d_in, units * pieces)
    weights = [kernel, bias] if use_bias else [kernel]
    if not use_bias:
        bias = np.zeros_like(bias)
    layer.set_weights(weights)
    y = layer.forward(x).copy()
    z = x @ kernel + bias
    np.testing.assert_allclose(y, z.reshape(n, units, pieces).max(axis=-1), rtol=1e-13)

    g = rng.normal(size=y.shape)
    dx = layer.backward(g).copy()
    grads = layer.get_gradients()
    win = z.reshape(n, units, pieces).argmax(axis=-1)
    dz = np.zeros((n, units, pieces))
    np.put_along_axis(dz, win[..., None], g[..., None], axis=-1)
    dz = dz.reshape(n, -1)
    np.testing.assert_allclose(dx, dz @ kernel.T, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(grads[0], x.T @ dz, rtol=1e-12, atol=1e-14)
    if use_bias:
        np.testing.assert_allclose(grads[1], dz.sum(axis=0), rtol=1e-12, atol=1e-14)

    np.testing.assert_allclose(dx, numeric_grad(lambda: float(np.sum(g * layer.forward(x))), x),
                               rtol=1e-6, atol=1e-8)
    w = [a.copy() for a in weights]
    for k in range(len(w)):
        def objective():
            layer.set_weights(w)
            return float(np.sum(g * layer.forward(x)))
        np.testing.assert_allclose(grads[k], numeric_grad(objective, w[k]), rtol=1e-6, atol=1e-8,
                                   err_msg=f"weight #{k}")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_maxout_large_batch_and_ties(dtype, kernel_threads):
    rng = np.random.default_rng(5)
    layer = layers.Maxout(37, 3, dtype=dtype)
    x = rng.normal(size=(700, 13)).astype(dtype)
    y = layer.forward(x)
    kernel, bias = [w.astype(np.float64) for w in layer.get_weights()]
    z = x.astype(np.float64) @ kernel + bias
    np.testing.assert_allclose(y, z.reshape(700, 37, 3).max(-1), rtol=1e-4 if dtype == np.float32
                               else 1e-12, atol=1e-5 if dtype == np.float32 else 1e-13)
    # Exact ties (all pieces equal): the whole gradient goes to one piece, the first.
    layer.set_weights([np.zeros_like(kernel), np.zeros_like(bias)])
    layer.forward(x)
    layer.backward(np.ones((700, 37), dtype))
    db = layer.get_gradients()[1].reshape(37, 3)
    np.testing.assert_array_equal(db, np.tile([700.0, 0.0, 0.0], (37, 1)))


# --------------------------------------------------------------------------- in models

@pytest.mark.parametrize("make", [
    lambda: layers.PReLU(),
    lambda: layers.Maxout(6, 3),
    lambda: layers.LeakyReLU(),
    lambda: layers.ELU(),
    lambda: layers.Activation("gelu_tanh"),
    lambda: layers.Activation("swish"),
    lambda: layers.Activation("hard_swish"),
    lambda: layers.Activation("relu6"),
], ids=["PReLU", "Maxout", "LeakyReLU", "ELU", "gelu_tanh", "swish", "hard_swish", "relu6"])
def test_layers_train_inside_sequential(make):
    """Each layer trains in a model: the loss falls on a small non-linear problem."""
    cn.set_seed(3)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(256, 4))
    y = (x[:, 0] * x[:, 1] > 0).astype(int)
    model = cn.Sequential([layers.Dense(12), make(), layers.Dense(2, activation="softmax")])
    model.compile(optimizer=cn.optimizers.SGD(0.1, momentum=0.9),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x, y, epochs=40, batch_size=32, verbose=0)
    assert history.history["loss"][-1] < 0.6 * history.history["loss"][0]
    assert history.history["accuracy"][-1] > 0.8


@pytest.mark.parametrize("name", ["gelu", "mish", "softsign", "elu", "log_softmax", "hard_swish",
                                  "exponential", "hard_tanh"])
def test_model_gradients_with_new_activations(name):
    """compute_gradients of a whole model against finite differences of evaluate."""
    rng = np.random.default_rng(9)
    cn.set_seed(9)
    model = cn.Sequential([layers.Dense(5, activation=name), layers.PReLU(),
                           layers.Maxout(3, 2), layers.Dense(2)], dtype="float64")
    model.compile(optimizer="sgd", loss="mse")
    x, y = rng.normal(size=(6, 4)), rng.normal(size=(6, 2))
    model.build((4,))
    weights = [w + rng.normal(scale=0.3, size=w.shape) for w in model.get_weights()]
    model.set_weights(weights)
    loss, grads = model.compute_gradients(x, y)
    grads = [g.copy() for g in grads]
    for k in range(len(weights)):
        w = [a.copy() for a in weights]

        def objective():
            model.set_weights(w)
            return model.evaluate(x, y)["loss"]
        np.testing.assert_allclose(grads[k], numeric_grad(objective, w[k]), rtol=1e-5, atol=1e-8,
                                   err_msg=f"weight array #{k}")


def test_softmax_activation_layer_fuses_with_cross_entropy():
    """Dense + Activation("softmax") takes the fused path and matches Dense(softmax)."""
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(10, 3)), rng.integers(0, 4, size=10)
    cn.set_seed(1)
    a = cn.Sequential([layers.Dense(4), layers.Activation("softmax")], dtype="float64")
    cn.set_seed(1)
    b = cn.Sequential([layers.Dense(4, activation="softmax")], dtype="float64")
    for m in (a, b):
        m.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
        m.build((3,))
    b.set_weights(a.get_weights())
    assert a._fused_output()
    la, ga = a.compute_gradients(x, y)
    lb, gb = b.compute_gradients(x, y)
    assert la == pytest.approx(lb, rel=1e-12)
    for u, v in zip(ga, gb):
        np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(a.predict(x), b.predict(x), rtol=1e-12)


# --------------------------------------------------------------------------- stability

@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_large_inputs_stay_finite_without_warnings(dtype):
    x = np.array([-1e4, -3e3, -1e3, -200, -101, -100, -89, -40.5, -20, -3, -1e-3, 0, 1e-3, 3,
                  19.9, 20.1, 40.1, 89, 100, 101, 200, 1e3, 3e3, 1e4], dtype=dtype)
    dy = np.ones_like(x)
    with np.errstate(all="raise"), warnings.catch_warnings():
        warnings.simplefilter("error")
        results = {}
        for name in ALL:
            if name == "exponential":   # overflows by definition: see its own test
                continue
            fwd, grad = _ops(name)
            y = fwd(x)
            results[name] = (y, grad(y, dy, x))
        rows = np.stack([x, x[::-1], np.full_like(x, 1e4)])
        for name in ROWWISE:
            fwd, grad = _ops(name)
            y = fwd(rows)
            results[name + "_rows"] = (y, grad(y, np.ones_like(rows), rows))
    for name, (y, dx) in results.items():
        assert np.all(np.isfinite(y)), name
        assert np.all(np.isfinite(dx)), name
    for name in ELEMENTWISE:
        if name == "exponential":
            continue
        y, dx = results[name]
        eps = np.finfo(dtype).eps
        rtol = _tol(dtype)[0]
        np.testing.assert_allclose(y, ref_forward(name, x), rtol=rtol, atol=1e-30, err_msg=name)
        np.testing.assert_allclose(dx, ref_derivative(name, x), rtol=4 * rtol, atol=8 * eps,
                                   err_msg=name)
    # Saturation is exact at the ends.
    for name in ("gelu", "gelu_tanh", "swish", "mish", "softplus", "relu", "elu"):
        y, dx = results[name]
        assert y[-1] == x[-1] and dx[-1] == 1, name
    for name in ("gelu", "gelu_tanh", "swish", "mish", "softplus"):
        y, dx = results[name]
        assert y[0] == 0 and dx[0] == 0, name
    ls, _ = results["log_softmax"]
    assert ls[-1] == 0 and ls[0] == pytest.approx(-2e4, rel=1e-6)
    for name, bottom, top in (("relu6", 0, 6), ("hard_tanh", -1, 1)):
        y, dx = results[name]
        assert y[0] == bottom and y[-1] == top and dx[0] == 0 and dx[-1] == 0, name
    y, dx = results["hard_swish"]
    assert y[0] == 0 and dx[0] == 0 and y[-1] == x[-1] and dx[-1] == 1


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_exponential_overflows_to_inf_and_underflows_to_zero(dtype):
    """e^x past the float range is inf (as np.exp), far below it 0, gradients alike."""
    top = EXP_MAX[np.dtype(dtype)]
    x = np.array([-1e4, -20.0, 0.0, 1.0, top, top + 2, 1e4], dtype=dtype)
    y = cn.ops.exponential(x)
    assert y[0] == 0 and y[2] == 1 and np.isfinite(y[4]) and np.isinf(y[5]) and np.isinf(y[6])
    np.testing.assert_allclose(y[1:5], np.exp(x[1:5].astype(np.float64)), rtol=_tol(dtype)[0])
    dx = cn.ops.exponential_grad(y, np.ones_like(x))
    np.testing.assert_array_equal(dx, y)


# --------------------------------------------------------------------------- names and params

def test_every_name_resolves_and_round_trips():
    expected = {"linear", "binary_step", "sigmoid", "hard_sigmoid", "tanh", "relu", "leaky_relu",
                "elu", "selu", "gelu", "gelu_tanh", "swish", "mish", "softplus", "softsign",
                "relu6", "hard_tanh", "exponential", "hard_swish", "softmax", "log_softmax"}
    assert expected <= set(activations.names())
    for name in expected:
        act = activations.get(name)
        assert act.name == name
        assert activations.get(activations.serialize(act)).get_config() == act.get_config()
        assert layers.Dense(2, activation=name).activation.name == name
        assert layers.Activation(name).activation.name == name
    assert activations.get("GELU_tanh").approximate
    assert activations.GELU(approximate=True).name == "gelu_tanh"
    assert not activations.get("gelu").approximate
    assert activations.get(None).name == "linear"


def test_parameters_serialize():
    act = activations.LeakyReLU(negative_slope=0.1)
    config = activations.serialize(act)
    assert config == {"name": "leaky_relu", "negative_slope": 0.1}
    assert activations.get(config).negative_slope == 0.1
    assert activations.serialize(activations.ELU()) == "elu"
    assert layers.Dense(3, activation=activations.ELU(0.5)).get_config()["activation"] == \
        {"name": "elu", "alpha": 0.5}
    assert layers.LeakyReLU().get_config()["negative_slope"] == 0.3
    assert layers.Maxout(4, 2).get_config()["pieces"] == 2


@pytest.mark.parametrize("bad", ["gelux", "silu2", "", 7, {"name": "nope"}, {"alpha": 1}])
def test_unknown_activation_names_raise(bad):
    with pytest.raises(ValueError, match="activation"):
        activations.get(bad)
    with pytest.raises(ValueError, match="activation"):
        layers.Activation(bad)


def test_unknown_activation_parameters_raise():
    with pytest.raises(ValueError, match="parameters"):
        activations.get({"name": "elu", "slope": 1})


@pytest.mark.parametrize("make,match", [
    (lambda: layers.LeakyReLU(negative_slope=-0.1), "negative_slope"),
    (lambda: layers.LeakyReLU(negative_slope=float("nan")), "negative_slope"),
    (lambda: layers.LeakyReLU(negative_slope="0.1"), "negative_slope"),
    (lambda: activations.LeakyReLU(-1), "negative_slope"),
    (lambda: layers.ELU(alpha=-1.0), "alpha"),
    (lambda: layers.ELU(alpha=float("inf")), "alpha"),
    (lambda: activations.GELU(approximate="yes"), "approximate"),
    (lambda: layers.Maxout(0, 2), "units"),
    (lambda: layers.Maxout(-3, 2), "units"),
    (lambda: layers.Maxout(3, 0), "pieces"),
    (lambda: layers.Maxout(3, 1.5), "pieces"),
    (lambda: layers.PReLU(shared_axes=[0]), "shared_axes"),
    (lambda: layers.PReLU(shared_axes="x"), "shared_axes"),
    (lambda: layers.PReLU(alpha_initializer="nope"), "initializer"),
    (lambda: cn.ops.leaky_relu(np.ones(2), negative_slope=-2), "negative_slope"),
    (lambda: cn.ops.elu(np.ones(2), alpha=-2), "alpha"),
])
def test_invalid_parameters_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_prelu_shared_axis_beyond_rank_raises():
    with pytest.raises(ValueError, match="shared_axes"):
        layers.PReLU(shared_axes=[2]).forward(np.ones((3, 4)))


def test_maxout_needs_2d_input():
    with pytest.raises(ValueError, match="2-D"):
        layers.Maxout(2, 2).forward(np.ones((3, 4, 5)))


@pytest.mark.parametrize("name", sorted(NEEDS_INPUT - {"gelu_tanh"}))
def test_grad_from_input_needs_x(name):
    fwd = getattr(cn.ops, name)
    grad = getattr(cn.ops, name + "_grad")
    x = np.linspace(-2, 2, 5)
    with pytest.raises(ValueError, match=r"\bx\b"):
        grad(fwd(x), np.ones(5))
    with pytest.raises(ValueError, match=r"\bdy\b"):
        grad(None, np.ones(4), x=x)
    with pytest.raises(ValueError, match="needs the forward input"):
        activations.get(name).backward(fwd(x), np.ones(5))


@pytest.mark.parametrize("name", sorted(set(cn.ops._ACTIVATIONS)))
def test_ops_bad_input(name):
    fwd = getattr(cn.ops, name)
    grad = getattr(cn.ops, name + "_grad")
    with pytest.raises(TypeError, match=r"\bx\b"):
        fwd(np.array(["a", "b"]))
    x = np.ones((3, 4))
    with pytest.raises(ValueError, match=r"\bdy\b"):
        grad(fwd(x), np.ones((4, 3)), x=x)
    with pytest.raises(TypeError, match=r"\bdy\b"):
        grad(fwd(x), np.full((3, 4), None, dtype=object), x=x)


@pytest.mark.parametrize("name", ["relu", "gelu", "swish"])
def test_kernels_check_buffer_sizes(name):
    """A direct kernel call with a short buffer raises instead of writing out of bounds."""
    from cyneuron._kernels import activations as k
    with pytest.raises(ValueError, match="out"):
        getattr(k, name + "_forward")(np.ones(5), np.empty(4))
    with pytest.raises(ValueError, match="dx"):
        getattr(k, name + "_backward")(np.ones(5), np.ones(5), np.empty(3))
    with pytest.raises(ValueError, match="alpha"):
        k.prelu_forward(np.ones((2, 5)), np.ones(4), np.empty((2, 5)))
    with pytest.raises(ValueError, match="argmax"):
        k.maxout_backward(np.ones((2, 3)), np.full((2, 3), 7, np.intc), np.empty((2, 6)))


# --------------------------------------------------------------------------- PyTorch parity

TORCH_FUNCTIONS = {
    "sigmoid": "torch.sigmoid(t)", "tanh": "torch.tanh(t)", "relu": "F.relu(t)",
    "hard_sigmoid": "F.hardsigmoid(t)", "leaky_relu": "F.leaky_relu(t, 0.2)", "elu": "F.elu(t)",
    "selu": "F.selu(t)", "gelu": "F.gelu(t)", "gelu_tanh": "F.gelu(t, approximate='tanh')",
    "swish": "F.silu(t)", "mish": "F.mish(t)", "softplus": "F.softplus(t)",
    "softsign": "F.softsign(t)", "softmax": "torch.softmax(t, -1)",
    "relu6": "F.relu6(t)", "hard_tanh": "F.hardtanh(t)", "exponential": "torch.exp(t)",
    "hard_swish": "F.hardswish(t)",
    "log_softmax": "torch.log_softmax(t, -1)",
}


@pytest.mark.parametrize("name", sorted(TORCH_FUNCTIONS))
def test_pytorch_parity(name):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(12)
    x = _away_from_kinks(name, rng.normal(scale=3, size=(6, 9)))  # torch's softplus is exact < 20
    t = torch.tensor(x, requires_grad=True)
    out = eval(TORCH_FUNCTIONS[name], {"torch": torch, "F": F, "t": t})
    dy = rng.normal(size=x.shape)
    out.backward(torch.tensor(dy))
    fwd, grad = _ops(name)
    y = fwd(x)
    np.testing.assert_allclose(y, out.detach().numpy(), rtol=1e-12, atol=1e-14)
    # torch's hardsigmoid backward multiplies by 1/6 rounded to float32.
    rtol = 1e-7 if name == "hard_sigmoid" else 1e-11
    np.testing.assert_allclose(grad(y, dy, x), t.grad.numpy(), rtol=rtol, atol=1e-13)


def test_pytorch_parity_prelu():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(13)
    x, alpha, g = rng.normal(size=(8, 5)), rng.normal(size=5), rng.normal(size=(8, 5))
    layer = layers.PReLU(dtype="float64")
    layer.forward(x)
    layer.set_weights([alpha])
    y = layer.forward(x).copy()
    dx = layer.backward(g).copy()
    t, w = torch.tensor(x, requires_grad=True), torch.tensor(alpha, requires_grad=True)
    out = torch.nn.functional.prelu(t, w)      # channels on axis 1 = the last axis here
    out.backward(torch.tensor(g))
    np.testing.assert_allclose(y, out.detach().numpy(), rtol=1e-14)
    np.testing.assert_allclose(dx, t.grad.numpy(), rtol=1e-14)
    np.testing.assert_allclose(layer.get_gradients()[0], w.grad.numpy(), rtol=1e-12)
