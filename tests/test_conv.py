"""Conv1D and Conv2D: numpy references for the forward pass (TensorFlow's padding rule),
float64 finite-difference gradients for every option, the im2col / col2im / fused
backward kernels, thread-count agreement, PyTorch parity where installed, bad input,
and a small CNN (with BatchNormalization on NHWC) trained end to end."""
import itertools

import numpy as np
import pytest

import cyneuron as cn
from cyneuron import layers
from cyneuron._kernels import conv as _k
from cyneuron._kernels import winograd as _wino
from cyneuron._kernels.gemm import EPILOGUES
from cyneuron.layers import conv as _conv_module

from test_gradients import _np_activation, numeric_grad

RTOL = 1e-5
ATOL = 1e-7


# ---------------------------------------------------------------------------------------
# numpy references
# ---------------------------------------------------------------------------------------
def tf_padding(size, window, stride, dilation, padding):
    """(before, after, output size) by TensorFlow's rules."""
    span = (window - 1) * dilation + 1
    if padding == "valid":
        return 0, 0, (size - span) // stride + 1
    if padding == "causal":
        return span - 1, 0, (size - 1) // stride + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + span - size, 0)
    return total // 2, total - total // 2, out


def ref_conv2d(x, kernel, bias, strides, padding, dilation):
    """Direct convolution: a sum over the kernel taps of strided slices of the padded x."""
    (kh, kw, _, f), (sh, sw), (dh, dw) = kernel.shape, strides, dilation
    pt, pb, oh = tf_padding(x.shape[1], kh, sh, dh, padding)
    pl, pr, ow = tf_padding(x.shape[2], kw, sw, dw, padding)
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    out = np.zeros((x.shape[0], oh, ow, f))
    for i, j in itertools.product(range(kh), range(kw)):
        patch = xp[:, i * dh:i * dh + (oh - 1) * sh + 1:sh, j * dw:j * dw + (ow - 1) * sw + 1:sw]
        out += patch @ kernel[i, j]
    return out + (0 if bias is None else bias)


def ref_conv1d(x, kernel, bias, stride, padding, dilation):
    k, _, f = kernel.shape
    before, after, out_len = tf_padding(x.shape[1], k, stride, dilation, padding)
    xp = np.pad(x, ((0, 0), (before, after), (0, 0)))
    out = np.zeros((x.shape[0], out_len, f))
    for i in range(k):
        out += xp[:, i * dilation:i * dilation + (out_len - 1) * stride + 1:stride] @ kernel[i]
    return out + (0 if bias is None else bias)


def check_layer_gradients(layer, x, rng, training=True):
    """dx and every weight gradient against central differences of sum(g * forward(x))."""
    out = layer.forward(x, training=training).copy()
    g = rng.normal(size=out.shape)
    g_before, x_before = g.copy(), x.copy()
    dx = np.array(layer.backward(g), copy=True)
    grads = layer.get_gradients()
    np.testing.assert_array_equal(g, g_before)   # backward leaves its argument alone
    np.testing.assert_array_equal(x, x_before)   # and forward its input

    def objective():
        return float(np.sum(g * layer.forward(x, training=training)))

    assert dx.shape == x.shape
    np.testing.assert_allclose(dx, numeric_grad(objective, x), rtol=RTOL, atol=ATOL)
    weights = layer.get_weights()
    for k, w in enumerate(weights):
        def objective_w():
            layer.set_weights(weights)
            return objective()

        np.testing.assert_allclose(grads[k], numeric_grad(objective_w, w), rtol=RTOL, atol=ATOL,
                                   err_msg=f"{layer.name}: weight #{k}")
    return out, dx, grads


def _set_random_weights(layer, rng, x):
    layer.forward(x)
    layer.set_weights([rng.normal(scale=0.5, size=w.shape) for w in layer.get_weights()])


# ---------------------------------------------------------------------------------------
# Conv2D forward against numpy
# ---------------------------------------------------------------------------------------
CONV2D_CASES = [
    # kernel_size, strides, padding, dilation_rate
    (3, 1, "valid", 1),
    (3, 1, "same", 1),
    (3, 2, "valid", 1),
    (3, 2, "same", 1),
    ((2, 3), (2, 1), "same", 1),
    ((2, 3), (1, 3), "valid", 1),
    (3, 1, "same", 2),
    (3, 1, "valid", (2, 1)),
    (2, 2, "same", 2),          # strides and dilation together (Keras refuses; we allow)
    (1, 1, "valid", 1),         # pointwise: no patch matrix
    (1, 1, "same", 3),          # pointwise: dilation is irrelevant
    (1, 2, "same", 1),          # 1x1 with a stride still needs the patch matrix
    (4, 3, "same", 1),          # even kernel: TF puts the extra zero after
    ((5, 1), 1, "same", 1),
]


@pytest.mark.parametrize("kernel_size,strides,padding,dilation", CONV2D_CASES)
@pytest.mark.parametrize("use_bias", [True, False], ids=["bias", "nobias"])
def test_conv2d_forward_matches_numpy(kernel_size, strides, padding, dilation, use_bias):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 9, 8, 4))
    layer = layers.Conv2D(5, kernel_size, strides=strides, padding=padding,
                          dilation_rate=dilation, use_bias=use_bias, dtype="float64")
    _set_random_weights(layer, rng, x)
    weights = layer.get_weights()
    y = layer.forward(x)
    ref = ref_conv2d(x, weights[0], weights[1] if use_bias else None, layer.strides,
                     padding, layer.dilation_rate)
    assert y.shape == ref.shape
    assert layer.compute_output_shape(x.shape[1:]) == ref.shape[1:]
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("activation", ["linear", "relu", "sigmoid", "tanh", "softmax"])
def test_conv2d_activation_matches_numpy(activation):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 6, 7, 3))
    layer = layers.Conv2D(4, 3, padding="same", activation=activation, dtype="float64")
    _set_random_weights(layer, rng, x)
    kernel, bias = layer.get_weights()
    ref = _np_activation(activation, ref_conv2d(x, kernel, bias, (1, 1), "same", (1, 1)))
    np.testing.assert_allclose(layer.forward(x), ref, rtol=1e-12, atol=1e-12)


def test_conv2d_float32_matches_numpy():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(4, 10, 10, 3)).astype(np.float32)
    layer = layers.Conv2D(8, 3, padding="same", activation="relu")
    y = layer.forward(x)
    assert y.dtype == np.float32
    kernel, bias = layer.get_weights()
    ref = np.maximum(ref_conv2d(x.astype(np.float64), kernel, bias, (1, 1), "same", (1, 1)), 0)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)


def test_conv2d_weights_layout_and_defaults():
    layer = layers.Conv2D(6, (3, 2))
    layer.forward(np.zeros((1, 5, 5, 4), np.float32))
    kernel, bias = layer.get_weights()
    assert kernel.shape == (3, 2, 4, 6) and bias.shape == (6,)
    np.testing.assert_array_equal(bias, 0)
    limit = np.sqrt(6 / (3 * 2 * 4 + 3 * 2 * 6))   # glorot_uniform with receptive fields
    assert np.abs(kernel).max() <= limit
    assert layer.count_params() == 3 * 2 * 4 * 6 + 6
    assert layer.kernel is layer.weights[0] and layer.bias is layer.weights[1]
    config = layer.get_config()
    assert config["filters"] == 6 and config["kernel_size"] == (3, 2)
    assert config["padding"] == "valid" and config["strides"] == (1, 1)


def test_conv2d_accepts_other_spatial_sizes_after_build():
    """Like Keras: the channel count is fixed once built, the image size is not."""
    rng = np.random.default_rng(3)
    layer = layers.Conv2D(2, 3, padding="valid", dtype="float64")
    layer.forward(rng.normal(size=(1, 6, 6, 3)))
    x = rng.normal(size=(2, 9, 5, 3))
    kernel, bias = layer.get_weights()
    np.testing.assert_allclose(layer.forward(x), ref_conv2d(x, kernel, bias, (1, 1), "valid",
                                                            (1, 1)), rtol=1e-12, atol=1e-12)


def test_padding_name_is_case_insensitive():
    assert layers.Conv2D(1, 3, padding="SAME").padding == "same"


# ---------------------------------------------------------------------------------------
# Conv1D forward against numpy
# ---------------------------------------------------------------------------------------
CONV1D_CASES = [
    (3, 1, "valid", 1), (3, 1, "same", 1), (3, 2, "same", 1), (3, 2, "valid", 1),
    (3, 1, "causal", 1), (2, 1, "causal", 2), (3, 2, "causal", 1), (3, 1, "same", 2),
    (1, 1, "valid", 1), (4, 3, "same", 1),
]


@pytest.mark.parametrize("kernel_size,strides,padding,dilation", CONV1D_CASES)
@pytest.mark.parametrize("use_bias", [True, False], ids=["bias", "nobias"])
def test_conv1d_forward_matches_numpy(kernel_size, strides, padding, dilation, use_bias):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(3, 11, 4))
    layer = layers.Conv1D(5, kernel_size, strides=strides, padding=padding,
                          dilation_rate=dilation, use_bias=use_bias, dtype="float64")
    _set_random_weights(layer, rng, x)
    weights = layer.get_weights()
    assert weights[0].shape == (kernel_size, 4, 5)
    y = layer.forward(x)
    ref = ref_conv1d(x, weights[0], weights[1] if use_bias else None, strides, padding, dilation)
    assert y.shape == ref.shape
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)


def test_conv1d_causal_output_ignores_the_future():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(1, 10, 2))
    layer = layers.Conv1D(3, 4, padding="causal", dilation_rate=2, dtype="float64")
    y0 = layer.forward(x).copy()
    x[0, 6:] += 10.0
    y1 = layer.forward(x)
    np.testing.assert_array_equal(y0[0, :6], y1[0, :6])
    assert not np.allclose(y0[0, 6:], y1[0, 6:])


# ---------------------------------------------------------------------------------------
# float64 finite-difference gradients
# ---------------------------------------------------------------------------------------
GRAD_CASES_2D = [
    (3, 1, "valid", 1), (3, 1, "same", 1), (3, 2, "same", 1), (3, 2, "valid", 1),
    ((2, 3), (2, 1), "same", 1), (3, 1, "same", 2), (2, 2, "valid", (1, 2)),
    (1, 1, "valid", 1), (1, 2, "same", 1), (4, 3, "same", 1),
]


@pytest.mark.parametrize("kernel_size,strides,padding,dilation", GRAD_CASES_2D)
@pytest.mark.parametrize("use_bias", [True, False], ids=["bias", "nobias"])
def test_conv2d_gradients(kernel_size, strides, padding, dilation, use_bias):
    rng = np.random.default_rng(6)
    x = rng.normal(size=(2, 6, 5, 3))
    layer = layers.Conv2D(3, kernel_size, strides=strides, padding=padding,
                          dilation_rate=dilation, use_bias=use_bias, dtype="float64")
    _set_random_weights(layer, rng, x)
    check_layer_gradients(layer, x, rng)


@pytest.mark.parametrize("activation", ["linear", "relu", "sigmoid", "tanh", "softmax", "gelu",
                                        "hard_swish", "relu6", "swish", "leaky_relu", "elu",
                                        cn.activations.LeakyReLU(1.5), cn.activations.ELU(0.5)],
                         ids=str)
def test_conv2d_gradients_through_activation(activation):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(2, 5, 5, 2))
    layer = layers.Conv2D(3, 3, padding="same", activation=activation, dtype="float64")
    _set_random_weights(layer, rng, x)
    check_layer_gradients(layer, x, rng)


@pytest.mark.parametrize("kernel_size,strides,padding,dilation", CONV1D_CASES)
@pytest.mark.parametrize("use_bias", [True, False], ids=["bias", "nobias"])
def test_conv1d_gradients(kernel_size, strides, padding, dilation, use_bias):
    rng = np.random.default_rng(8)
    x = rng.normal(size=(2, 9, 3))
    layer = layers.Conv1D(2, kernel_size, strides=strides, padding=padding,
                          dilation_rate=dilation, use_bias=use_bias, dtype="float64")
    _set_random_weights(layer, rng, x)
    check_layer_gradients(layer, x, rng)


@pytest.mark.parametrize("activation", ["relu", "tanh", "mish"])
def test_conv1d_gradients_through_activation(activation):
    rng = np.random.default_rng(9)
    x = rng.normal(size=(2, 8, 3))
    layer = layers.Conv1D(4, 3, padding="same", activation=activation, dtype="float64")
    _set_random_weights(layer, rng, x)
    check_layer_gradients(layer, x, rng)


@pytest.mark.parametrize("activation", ["gelu", "hard_swish", cn.activations.LeakyReLU(0.1)])
def test_winograd_with_unfused_activations_matches_im2col(activation):
    """Activations outside the GEMM epilogue (those whose backward reads the
    pre-activation too) on the Winograd path: the same results as im2col."""
    rng = np.random.default_rng(11)
    x = rng.normal(size=(2, 6, 6, 16))
    results = []
    for algorithm in ("winograd", "im2col"):
        layer = layers.Conv2D(16, 3, padding="same", activation=activation, dtype="float64")
        layer.algorithm = algorithm
        layer.forward(x)
        layer.set_weights([np.random.default_rng(12).normal(scale=0.2, size=w.shape)
                           for w in layer.get_weights()])
        y = layer.forward(x).copy()
        dx = layer.backward(np.cos(y)).copy()
        results.append([y, dx] + layer.get_gradients())
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-11)


def test_conv_config_keeps_activation_parameters():
    layer = layers.Conv2D(2, 3, activation=cn.activations.LeakyReLU(0.1))
    clone = layers.deserialize(layers.serialize(layer))
    assert clone.activation.negative_slope == 0.1
    assert layers.Conv1D(2, 3, activation="relu").get_config()["activation"] == "relu"


def test_conv2d_backward_matches_closed_form():
    """dW = cols^T dz, db = sum dz, dx = col2im(dz W^T), against the references."""
    rng = np.random.default_rng(10)
    x = rng.normal(size=(3, 7, 6, 2))
    layer = layers.Conv2D(4, 3, strides=2, padding="same", dtype="float64")
    _set_random_weights(layer, rng, x)
    kernel, _ = layer.get_weights()
    y = layer.forward(x)
    g = rng.normal(size=y.shape)
    dx = layer.backward(g)
    dkernel, dbias = layer.get_gradients()
    np.testing.assert_allclose(dbias, g.sum(axis=(0, 1, 2)), rtol=1e-12)
    # The convolution is linear in x and in the kernel: <g, conv(x, K)> = <dx, x> = <dK, K>.
    total = float(np.sum(g * ref_conv2d(x, kernel, None, (2, 2), "same", (1, 1))))
    np.testing.assert_allclose(float(np.sum(dx * x)), total, rtol=1e-10)
    np.testing.assert_allclose(float(np.sum(dkernel * kernel)), total, rtol=1e-10)


# ---------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("window,strides,dilation,padding", [
    ((3, 3), (1, 1), (1, 1), (1, 1)), ((2, 3), (2, 1), (1, 2), (0, 2)),
    ((1, 1), (2, 2), (1, 1), (0, 0)), ((3, 2), (3, 2), (2, 1), (2, 0)),
])
def test_col2im_is_the_adjoint_of_im2col(dtype, window, strides, dilation, padding):
    rng = np.random.default_rng(11)
    x = rng.normal(size=(2, 7, 6, 3)).astype(dtype)
    oh = (7 + 2 * padding[0] - (window[0] - 1) * dilation[0] - 1) // strides[0] + 1
    ow = (6 + 2 * padding[1] - (window[1] - 1) * dilation[1] - 1) // strides[1] + 1
    cols = np.empty((2 * oh * ow, window[0] * window[1] * 3), dtype)
    _k.im2col(x, cols, window, strides, dilation, padding, (oh, ow))
    c = rng.normal(size=cols.shape).astype(dtype)
    dx = np.full(x.shape, np.nan, dtype)   # col2im overwrites, never accumulates into old data
    _k.col2im(c, dx, window, strides, dilation, padding, (oh, ow))
    lhs = float(np.sum(cols.astype(np.float64) * c))
    rhs = float(np.sum(x.astype(np.float64) * dx))
    np.testing.assert_allclose(lhs, rhs, rtol=1e-4 if dtype == np.float32 else 1e-12)


def _np_col2im(cols, shape, window, strides, dilation, padding, out_hw):
    """numpy reference: scatter-add each patch value onto its input position."""
    n, h, w, c = shape
    dx = np.zeros(shape, np.float64)
    rows = cols.reshape(n, out_hw[0], out_hw[1], window[0], window[1], c)
    for oy, ox, i, j in itertools.product(range(out_hw[0]), range(out_hw[1]),
                                          range(window[0]), range(window[1])):
        iy = oy * strides[0] - padding[0] + i * dilation[0]
        ix = ox * strides[1] - padding[1] + j * dilation[1]
        if 0 <= iy < h and 0 <= ix < w:
            dx[:, iy, ix, :] += rows[:, oy, ox, i, j, :]
    return dx


COL2IM_GEMM_CASES = [
    (2, (14, 14), 5, 7, (4, 4), (2, 2), (1, 1), (1, 1)),     # the GAN's geometry
    (1, (7, 6), 3, 4, (3, 3), (1, 1), (1, 1), (1, 1)),       # batch 1
    (3, (9, 5), 2, 33, (2, 3), (2, 1), (1, 2), (0, 2)),      # K past one micro-tile
    (5, (5, 7), 4, 1, (1, 1), (2, 2), (1, 1), (0, 0)),       # K = 1
    (4, (11, 8), 1, 6, (5, 2), (3, 2), (1, 1), (2, 0)),      # stride 3, one channel
    (70, (3, 3), 2, 3, (3, 3), (1, 1), (1, 1), (1, 1)),      # many images per chunk
    (2, (23, 17), 9, 10, (5, 5), (1, 3), (2, 1), (4, 2)),    # more rows than a chunk
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n,hw,c,k,window,strides,dilation,padding", COL2IM_GEMM_CASES)
def test_col2im_gemm_matches_numpy(kernel_threads, isa, dtype, n, hw, c, k, window, strides,
                                   dilation, padding):
    """col2im(a @ b) a few images at a time: the patch matrix never whole."""
    h, w = hw
    oh = (h + 2 * padding[0] - (window[0] - 1) * dilation[0] - 1) // strides[0] + 1
    ow = (w + 2 * padding[1] - (window[1] - 1) * dilation[1] - 1) // strides[1] + 1
    rng = np.random.default_rng(18)
    a = rng.normal(size=(n * oh * ow, k)).astype(dtype)
    b = rng.normal(size=(k, window[0] * window[1] * c)).astype(dtype)
    dx = np.full((n, h, w, c), np.nan, dtype)     # overwritten, never accumulated into
    _k.col2im_gemm(a, b, dx, window, strides, dilation, padding, (oh, ow))
    want = _np_col2im(a.astype(np.float64) @ b.astype(np.float64), dx.shape, window,
                      strides, dilation, padding, (oh, ow))
    tol = 1e-4 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(dx, want, rtol=tol, atol=tol * np.abs(want).max())
    # the same bits as the two-pass path (one GEMM, then col2im)
    cols = np.empty((n * oh * ow, b.shape[1]), dtype)
    cn.ops.matmul(a, b, out=cols)
    two_pass = np.empty_like(dx)
    _k.col2im(cols, two_pass, window, strides, dilation, padding, (oh, ow))
    np.testing.assert_allclose(dx, two_pass, rtol=tol, atol=tol * np.abs(want).max())


def _np_im2col(x, window, strides, dilation, padding, out_hw):
    """numpy reference: row (n, oy, ox) = the receptive field in (i, j, c) order."""
    n, h, w, c = x.shape
    cols = np.zeros((n, out_hw[0], out_hw[1], window[0], window[1], c), np.float64)
    for oy, ox, i, j in itertools.product(range(out_hw[0]), range(out_hw[1]),
                                          range(window[0]), range(window[1])):
        iy = oy * strides[0] - padding[0] + i * dilation[0]
        ix = ox * strides[1] - padding[1] + j * dilation[1]
        if 0 <= iy < h and 0 <= ix < w:
            cols[:, oy, ox, i, j, :] = x[:, iy, ix, :]
    return cols.reshape(n * out_hw[0] * out_hw[1], -1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n,hw,c,k,window,strides,dilation,padding", COL2IM_GEMM_CASES)
def test_im2col_gemm_tn_matches_numpy(kernel_threads, isa, dtype, n, hw, c, k, window,
                                      strides, dilation, padding):
    """a^T @ im2col(x), the patches made a few images at a time; the same bits on 1 and
    2 threads (fixed partial-sum groups)."""
    h, w = hw
    oh = (h + 2 * padding[0] - (window[0] - 1) * dilation[0] - 1) // strides[0] + 1
    ow = (w + 2 * padding[1] - (window[1] - 1) * dilation[1] - 1) // strides[1] + 1
    rng = np.random.default_rng(19)
    x = rng.normal(size=(n, h, w, c)).astype(dtype)
    a = rng.normal(size=(n * oh * ow, k)).astype(dtype)
    out = np.full((k, window[0] * window[1] * c), np.nan, dtype)
    _k.im2col_gemm_tn(x, a, out, window, strides, dilation, padding, (oh, ow))
    want = a.T.astype(np.float64) @ _np_im2col(x.astype(np.float64), window, strides,
                                                dilation, padding, (oh, ow))
    tol = 1e-4 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out, want, rtol=tol, atol=tol * np.abs(want).max())
    threads = cn.get_num_threads()
    try:
        cn.set_num_threads(3 - threads)
        other = np.empty_like(out)
        _k.im2col_gemm_tn(x, a, other, window, strides, dilation, padding, (oh, ow))
    finally:
        cn.set_num_threads(threads)
    np.testing.assert_array_equal(out, other)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n,hw,c,k,window,strides,dilation,padding", COL2IM_GEMM_CASES)
def test_im2col_gemm_matches_numpy(kernel_threads, isa, dtype, n, hw, c, k, window, strides,
                                   dilation, padding):
    """im2col(x) @ b, the patches made a few images at a time."""
    h, w = hw
    oh = (h + 2 * padding[0] - (window[0] - 1) * dilation[0] - 1) // strides[0] + 1
    ow = (w + 2 * padding[1] - (window[1] - 1) * dilation[1] - 1) // strides[1] + 1
    rng = np.random.default_rng(20)
    x = rng.normal(size=(n, h, w, c)).astype(dtype)
    b = rng.normal(size=(window[0] * window[1] * c, k)).astype(dtype)
    out = np.full((n * oh * ow, k), np.nan, dtype)
    _k.im2col_gemm(x, b, out, window, strides, dilation, padding, (oh, ow))
    want = _np_im2col(x.astype(np.float64), window, strides, dilation, padding,
                      (oh, ow)) @ b.astype(np.float64)
    tol = 1e-4 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out, want, rtol=tol, atol=tol * np.abs(want).max())
    # with the bias and activation the chunks apply in cache
    bias = rng.normal(size=k).astype(dtype)
    z = want + bias.astype(np.float64)
    for name, alpha in [("relu", 0.0), ("leaky_relu", 0.2), ("leaky_relu", 1.5),
                        ("leaky_relu", 0.0), ("linear", 0.0)]:
        _k.im2col_gemm(x, b, out, window, strides, dilation, padding, (oh, ow), bias=bias,
                       activation=EPILOGUES[name], alpha=alpha)
        ref = z if name == "linear" else np.where(z > 0, z, alpha * z)
        np.testing.assert_allclose(out, ref, rtol=tol, atol=tol * np.abs(z).max(),
                                   err_msg=f"{name} {alpha}")


def test_im2col_gemm_checks_its_arguments():
    x = np.zeros((2, 5, 5, 3))
    args = ((3, 3), (1, 1), (1, 1), (0, 0), (3, 3))
    with pytest.raises(ValueError, match="b must have shape"):
        _k.im2col_gemm(x, np.zeros((26, 4)), np.zeros((18, 4)), *args)
    with pytest.raises(ValueError, match="out \\(18, F\\)"):
        _k.im2col_gemm(x, np.zeros((27, 4)), np.zeros((18, 5)), *args)
    with pytest.raises(ValueError, match="bias must have 4 values"):
        _k.im2col_gemm(x, np.zeros((27, 4)), np.zeros((18, 4)), *args, bias=np.zeros(3))
    with pytest.raises(ValueError, match="activation code"):
        _k.im2col_gemm(x, np.zeros((27, 4)), np.zeros((18, 4)), *args,
                       activation=EPILOGUES["sigmoid"])


def test_im2col_gemm_tn_checks_its_arguments():
    x = np.zeros((2, 5, 5, 3))
    args = ((3, 3), (1, 1), (1, 1), (0, 0), (3, 3))
    with pytest.raises(ValueError, match="a must have shape"):
        _k.im2col_gemm_tn(x, np.zeros((17, 4)), np.zeros((4, 27)), *args)
    with pytest.raises(ValueError, match="out \\(K, 27\\)"):
        _k.im2col_gemm_tn(x, np.zeros((18, 4)), np.zeros((5, 27)), *args)
    out = np.full((0, 27), np.nan)
    _k.im2col_gemm_tn(x, np.zeros((18, 0)), out, *args)


def test_col2im_gemm_checks_its_arguments():
    dx = np.zeros((2, 5, 5, 3))
    args = ((3, 3), (1, 1), (1, 1), (0, 0), (3, 3))
    with pytest.raises(ValueError, match="a must have shape"):
        _k.col2im_gemm(np.zeros((17, 4)), np.zeros((4, 27)), dx, *args)
    with pytest.raises(ValueError, match="b \\(K, 27\\)"):
        _k.col2im_gemm(np.zeros((18, 4)), np.zeros((4, 26)), dx, *args)
    with pytest.raises(ValueError, match="b \\(K, 27\\)"):
        _k.col2im_gemm(np.zeros((18, 4)), np.zeros((5, 27)), dx, *args)
    with pytest.raises(ValueError, match="inner dimension"):
        _k.col2im_gemm(np.zeros((18, 0)), np.zeros((0, 27)), dx, *args)
    with pytest.raises(ValueError, match="strides must be positive"):
        _k.col2im_gemm(np.zeros((18, 4)), np.zeros((4, 27)), dx, (3, 3), (0, 1), (1, 1),
                       (0, 0), (3, 3))


def test_im2col_rows_are_receptive_fields():
    x = np.arange(2 * 4 * 4 * 2, dtype=np.float64).reshape(2, 4, 4, 2)
    cols = np.empty((2 * 2 * 2, 3 * 3 * 2))
    _k.im2col(x, cols, (3, 3), (2, 2), (1, 1), (1, 1), (2, 2))
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    for n, oy, ox in itertools.product(range(2), range(2), range(2)):
        want = xp[n, 2 * oy:2 * oy + 3, 2 * ox:2 * ox + 3, :].reshape(-1)
        np.testing.assert_array_equal(cols[(n * 2 + oy) * 2 + ox], want)


def test_conv_kernels_check_their_buffers():
    x = np.zeros((2, 5, 5, 3))
    with pytest.raises(ValueError, match="cols must have shape"):
        _k.im2col(x, np.zeros((10, 27)), (3, 3), (1, 1), (1, 1), (0, 0), (3, 3))
    with pytest.raises(ValueError, match="cols must have shape"):
        _k.col2im(np.zeros((18, 26)), x, (3, 3), (1, 1), (1, 1), (0, 0), (3, 3))
    with pytest.raises(ValueError, match="strides must be positive"):
        _k.im2col(x, np.zeros((18, 27)), (3, 3), (0, 1), (1, 1), (0, 0), (3, 3))
    with pytest.raises(ValueError, match="padding must be non-negative"):
        _k.im2col(x, np.zeros((18, 27)), (3, 3), (1, 1), (1, 1), (-1, 0), (3, 3))
    with pytest.raises(ValueError, match="dy must have shape"):
        _k.activation_bias_backward(np.zeros((4, 3)), np.zeros((4, 2)), np.zeros((4, 3)),
                                    None, 1)
    with pytest.raises(ValueError, match="db must have 3 values"):
        _k.activation_bias_backward(np.zeros((4, 3)), np.zeros((4, 3)), None, np.zeros(2), 0)
    with pytest.raises(ValueError, match="dz must be an array"):
        _k.activation_bias_backward(np.zeros((4, 3)), np.zeros((4, 3)), None, None, 1)
    with pytest.raises(ValueError, match="activation code"):
        _k.activation_bias_backward(np.zeros((4, 3)), np.zeros((4, 3)), np.zeros((4, 3)),
                                    None, EPILOGUES["gelu"])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name,alpha", [("leaky_relu", 0.2), ("leaky_relu", 0.0),
                                        ("leaky_relu", 1.5), ("elu", 1.0), ("elu", 0.3)])
@pytest.mark.parametrize("rows", [1, 7, 64, 1000])
def test_activation_bias_backward_with_a_parameter(dtype, name, alpha, rows):
    """leaky_relu and elu: the derivative from the output y, as the GEMM epilogue takes it."""
    rng = np.random.default_rng(14)
    z = rng.normal(size=(rows, 13)) * 3
    z[0, :3] = 0.0
    y = np.where(z > 0, z, alpha * z if name == "leaky_relu" else alpha * np.expm1(z))
    y, dy = y.astype(dtype), rng.normal(size=z.shape).astype(dtype)
    dz, db = np.empty_like(y), np.empty(13, dtype)
    _k.activation_bias_backward(y, dy, dz, db, EPILOGUES[name], alpha)
    below = alpha if name == "leaky_relu" else y + dtype(alpha)
    want = dy * np.where(y > 0, dtype(1), below).astype(dtype)
    np.testing.assert_allclose(dz, want, rtol=1e-6 if dtype == np.float32 else 1e-14)
    np.testing.assert_allclose(db, want.astype(np.float64).sum(axis=0),
                               rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-5)


def test_activation_bias_backward_refuses_a_negative_slope():
    with pytest.raises(ValueError, match="slope"):
        _k.activation_bias_backward(np.zeros((4, 3)), np.zeros((4, 3)), np.zeros((4, 3)),
                                    None, EPILOGUES["leaky_relu"], -0.1)


@pytest.mark.parametrize("name", ["linear", "relu", "sigmoid", "tanh"])
@pytest.mark.parametrize("rows", [1, 7, 64, 1000])
def test_activation_bias_backward_matches_numpy(name, rows):
    rng = np.random.default_rng(12)
    y = _np_activation(name, rng.normal(size=(rows, 13)))
    dy = rng.normal(size=y.shape)
    db = np.empty(13)
    if name == "linear":
        _k.activation_bias_backward(y, dy, None, db, EPILOGUES[name])
        dz = dy
    else:
        dz = np.empty_like(y)
        _k.activation_bias_backward(y, dy, dz, db, EPILOGUES[name])
        deriv = {"relu": (y > 0) * 1.0, "sigmoid": y * (1 - y), "tanh": 1 - y * y}[name]
        np.testing.assert_allclose(dz, dy * deriv, rtol=1e-14)
    np.testing.assert_allclose(db, dz.sum(axis=0), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------
# Threads
# ---------------------------------------------------------------------------------------
def _conv_run(threads, dtype):
    cn.set_num_threads(threads)
    rng = np.random.default_rng(13)
    x = rng.normal(size=(16, 12, 12, 8)).astype(dtype)
    cn.set_seed(0)
    layer = layers.Conv2D(16, 3, strides=1, padding="same", activation="relu", dtype=dtype)
    y = layer.forward(x, training=True).copy()
    dx = layer.backward(rng.normal(size=y.shape).astype(dtype)).copy()
    return [y, dx] + layer.get_gradients()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_and_two_threads_agree(restore_threads, dtype):
    one, two = _conv_run(1, dtype), _conv_run(2, dtype)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for a, b in zip(one, two):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


def test_conv_gradients_on_each_thread_count(kernel_threads):
    rng = np.random.default_rng(14)
    x = rng.normal(size=(3, 6, 6, 2))
    layer = layers.Conv2D(2, 3, strides=2, padding="same", activation="tanh", dtype="float64")
    _set_random_weights(layer, rng, x)
    check_layer_gradients(layer, x, rng)


# ---------------------------------------------------------------------------------------
# PyTorch parity (optional)
# ---------------------------------------------------------------------------------------
def test_conv2d_matches_pytorch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(15)
    x = rng.normal(size=(2, 9, 8, 3))
    layer = layers.Conv2D(4, 3, strides=2, padding="valid", dilation_rate=1, dtype="float64")
    _set_random_weights(layer, rng, x)
    kernel, bias = layer.get_weights()
    y = layer.forward(x).copy()
    g = rng.normal(size=y.shape)
    dx = layer.backward(g).copy()
    dkernel, dbias = layer.get_gradients()

    xt = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    kt = torch.tensor(kernel.transpose(3, 2, 0, 1), requires_grad=True)
    bt = torch.tensor(bias, requires_grad=True)
    yt = torch.nn.functional.conv2d(xt, kt, bt, stride=2)
    yt.backward(torch.tensor(g.transpose(0, 3, 1, 2)))
    np.testing.assert_allclose(y, yt.detach().numpy().transpose(0, 2, 3, 1), rtol=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dkernel, kt.grad.numpy().transpose(2, 3, 1, 0), rtol=1e-10)
    np.testing.assert_allclose(dbias, bt.grad.numpy(), rtol=1e-10)


# ---------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,match", [
    ({"filters": 0, "kernel_size": 3}, "filters must be a positive integer"),
    ({"filters": 2.5, "kernel_size": 3}, "filters must be a positive integer"),
    ({"filters": 2, "kernel_size": 0}, "kernel_size must be"),
    ({"filters": 2, "kernel_size": (3, 3, 3)}, "kernel_size must be"),
    ({"filters": 2, "kernel_size": "3"}, "kernel_size must be"),
    ({"filters": 2, "kernel_size": 3, "strides": 0}, "strides must be"),
    ({"filters": 2, "kernel_size": 3, "strides": (1, -2)}, "strides must be"),
    ({"filters": 2, "kernel_size": 3, "dilation_rate": 0}, "dilation_rate must be"),
    ({"filters": 2, "kernel_size": 3, "padding": "full"}, "padding must be one of"),
    ({"filters": 2, "kernel_size": 3, "padding": "causal"}, "padding must be one of"),
    ({"filters": 2, "kernel_size": 3, "padding": None}, "padding must be one of"),
    ({"filters": 2, "kernel_size": 3, "activation": "nope"}, "unknown activation"),
])
def test_conv2d_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        layers.Conv2D(**kwargs)


def test_conv1d_bad_arguments():
    with pytest.raises(ValueError, match="kernel_size must be a positive int"):
        layers.Conv1D(2, (3, 3))
    with pytest.raises(ValueError, match="strides must be"):
        layers.Conv1D(2, 3, strides=-1)
    with pytest.raises(ValueError, match="padding must be one of"):
        layers.Conv1D(2, 3, padding="reflect")


def test_conv_wrong_rank():
    with pytest.raises(ValueError, match=r"expects 4-D input x \(batch, height, width, channels\)"):
        layers.Conv2D(2, 3).forward(np.zeros((2, 8, 8)))
    with pytest.raises(ValueError, match=r"expects 3-D input x \(batch, steps, channels\)"):
        layers.Conv1D(2, 3).forward(np.zeros((2, 8, 8, 1)))
    model = cn.Sequential([layers.Conv2D(2, 3)])
    with pytest.raises(ValueError, match="expects 4-D input"):
        model.build((28, 28))


def test_conv_channel_count_differs_from_built_layer():
    layer = layers.Conv2D(2, 3)
    layer.forward(np.zeros((1, 6, 6, 3), np.float32))
    with pytest.raises(ValueError, match="built for inputs with 3 channels"):
        layer.forward(np.zeros((1, 6, 6, 4), np.float32))
    layer1 = layers.Conv1D(2, 3)
    layer1.forward(np.zeros((1, 6, 2), np.float32))
    with pytest.raises(ValueError, match="built for inputs with 2 channels"):
        layer1.forward(np.zeros((1, 6, 1), np.float32))


def test_conv_kernel_larger_than_input():
    with pytest.raises(ValueError, match="kernel_size 5 is larger than the input's 4 positions "
                                         "along height with padding 'valid'"):
        layers.Conv2D(2, 5).forward(np.zeros((1, 4, 9, 1)))
    with pytest.raises(ValueError, match=r"kernel_size 3 \(dilated by 3: 7 positions\)"):
        layers.Conv1D(2, 3, dilation_rate=3).forward(np.zeros((1, 6, 1)))
    layer = layers.Conv2D(2, 3)
    layer.forward(np.zeros((1, 6, 6, 1)))
    with pytest.raises(ValueError, match="kernel_size 3 is larger .* along width"):
        layer.forward(np.zeros((1, 6, 2, 1)))
    with pytest.raises(ValueError, match="kernel_size"):
        cn.Sequential([layers.Conv2D(2, 3), layers.Conv2D(2, 5)]).build((6, 6, 1))
    # 'same' pads as needed: any kernel fits
    assert layers.Conv2D(2, 5, padding="same").forward(np.zeros((1, 2, 2, 1))).shape == (1, 2, 2, 2)


def test_conv_other_bad_input():
    layer = layers.Conv2D(2, 3)
    with pytest.raises(ValueError, match="x is empty"):
        layer.forward(np.zeros((0, 5, 5, 1)))
    with pytest.raises(TypeError, match="x must hold real numbers"):
        layer.forward(np.full((1, 5, 5, 1), "a"))
    with pytest.raises(RuntimeError, match="call forward before backward"):
        layers.Conv2D(2, 3).backward(np.zeros((1, 3, 3, 2)))
    layer.forward(np.zeros((1, 5, 5, 1)))
    with pytest.raises(ValueError, match="grad_output must have the shape"):
        layer.backward(np.zeros((1, 3, 3, 3)))


# ---------------------------------------------------------------------------------------
# In a model
# ---------------------------------------------------------------------------------------
def _small_cnn(dtype="float64"):
    return cn.Sequential([
        layers.Conv2D(3, 3, padding="same", activation="relu"),
        layers.BatchNormalization(),
        layers.MaxPooling2D(2),
        layers.Conv2D(4, (2, 3), strides=(1, 2), activation="tanh"),
        layers.GlobalAveragePooling2D(),
        layers.Dense(3, activation="softmax"),
    ], dtype=dtype)


def test_cnn_model_gradients_with_batchnorm_on_nhwc():
    rng = np.random.default_rng(16)
    x = rng.normal(size=(4, 6, 7, 2))
    y = rng.integers(0, 3, size=4)
    cn.set_seed(1)
    model = _small_cnn()
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    model.build(x.shape[1:])
    assert model.output_shape == (3,)
    _, grads = model.compute_gradients(x, y)
    weights = model.get_weights()
    trainable = [t for layer in model.layers for t in layer._trainable]
    for k, w in enumerate(weights):
        if not trainable[k]:
            np.testing.assert_array_equal(grads[k], 0)
            continue

        def objective():
            model.set_weights(weights)
            return model.compute_gradients(x, y)[0]

        np.testing.assert_allclose(grads[k], numeric_grad(objective, w), rtol=1e-5, atol=1e-7,
                                   err_msg=f"weight #{k}")


def test_cnn_learns_a_spatial_task():
    """Bright blob on the left or right half: a conv net separates them after a few epochs."""
    rng = np.random.default_rng(17)
    n = 256
    x = rng.normal(scale=0.3, size=(n, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 2, size=n)
    for i in range(n):
        col = rng.integers(0, 3) + (5 if y[i] else 0)
        x[i, rng.integers(0, 7):, col, 0] += 2.0
    cn.set_seed(0)
    model = cn.Sequential([
        layers.Conv2D(4, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(2),
        layers.Flatten(),
        layers.Dense(2, activation="softmax"),
    ])
    model.compile(optimizer=cn.optimizers.SGD(0.05, momentum=0.9),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=15, batch_size=32, verbose=0)
    assert model.evaluate(x, y)["accuracy"] >= 0.95
    assert model.predict(x[:5]).shape == (5, 2)


def test_shift_augment_moves_each_image_by_one_pixel():
    from cyneuron.__main__ import shift_augment

    x = np.arange(2 * 3 * 3, dtype=np.float32).reshape(2, 3, 3, 1)
    aug = shift_augment(x)
    assert aug.shape == (10, 3, 3, 1)
    np.testing.assert_array_equal(aug[:2], x)
    np.testing.assert_array_equal(aug[2:4, 1:], x[:, :-1])   # content moved down a row
    np.testing.assert_array_equal(aug[2:4, 0], 0)


def test_demo_cnn_reaches_98_percent_on_digits(capsys):
    pytest.importorskip("sklearn")
    from cyneuron.__main__ import demo_cnn

    accuracy, _ = demo_cnn(epochs=10)
    assert accuracy >= 0.98
    assert "test accuracy" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------
# Winograd F(4x4, 3x3)
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("hw", [(7, 9), (4, 4), (3, 5), (13, 6)])
@pytest.mark.parametrize("use_bias", [True, False], ids=["bias", "nobias"])
def test_winograd_forward_matches_numpy(padding, hw, use_bias):
    rng = np.random.default_rng(20)
    x = rng.normal(size=(3,) + hw + (5,))
    layer = layers.Conv2D(6, 3, padding=padding, use_bias=use_bias, dtype="float64")
    layer.algorithm = "winograd"
    _set_random_weights(layer, rng, x)
    weights = layer.get_weights()
    ref = ref_conv2d(x, weights[0], weights[1] if use_bias else None, (1, 1), padding, (1, 1))
    np.testing.assert_allclose(layer.forward(x), ref, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("activation", ["linear", "relu", "sigmoid", "tanh", "softmax",
                                        "leaky_relu", "elu"])
def test_winograd_gradients(padding, activation):
    rng = np.random.default_rng(21)
    x = rng.normal(size=(2, 6, 7, 3))
    layer = layers.Conv2D(4, 3, padding=padding, activation=activation, dtype="float64")
    layer.algorithm = "winograd"
    _set_random_weights(layer, rng, x)
    check_layer_gradients(layer, x, rng)


@pytest.mark.parametrize("chunk_tiles", [1, 5, 16, 10 ** 6])
def test_winograd_batch_chunks(monkeypatch, chunk_tiles):
    """The batch runs in chunks of images (the last one shorter); the result is the same."""
    monkeypatch.setattr(_conv_module, "WINOGRAD_CHUNK_TILES", chunk_tiles)
    rng = np.random.default_rng(22)
    x = rng.normal(size=(7, 9, 6, 4))
    wino = layers.Conv2D(5, 3, padding="same", activation="relu", dtype="float64")
    wino.algorithm = "winograd"
    _set_random_weights(wino, rng, x)
    ref = layers.Conv2D(5, 3, padding="same", activation="relu", dtype="float64")
    ref.algorithm = "im2col"
    ref.forward(x)
    ref.set_weights(wino.get_weights())
    y = wino.forward(x, training=True)
    np.testing.assert_allclose(y, ref.forward(x, training=True), rtol=1e-11, atol=1e-11)
    g = rng.normal(size=y.shape)
    np.testing.assert_allclose(wino.backward(g), ref.backward(g), rtol=1e-10, atol=1e-11)
    for a, b in zip(wino.get_gradients(), ref.get_gradients()):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


def test_winograd_float32_close_to_im2col(restore_threads):
    rng = np.random.default_rng(23)
    x = rng.normal(size=(8, 14, 14, 32)).astype(np.float32)
    results = []
    for algorithm in ("winograd", "im2col"):
        cn.set_seed(0)
        layer = layers.Conv2D(64, 3, padding="same", activation="relu")
        layer.algorithm = algorithm
        y = layer.forward(x, training=True).copy()
        dx = layer.backward(np.ones_like(y)).copy()
        results.append([y, dx] + layer.get_gradients())
    for a, b in zip(*results):
        scale = float(np.abs(b).max())
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-5 * scale)


def test_winograd_one_and_two_threads_agree(restore_threads):
    """Big enough that the GEMMs and transforms of a chunk run on both threads; the
    chunks, and the order of every sum, do not depend on the thread count."""
    rng = np.random.default_rng(24)
    x = rng.normal(size=(40, 14, 14, 32)).astype(np.float32)   # 3 chunks, the last short
    dy = rng.normal(size=(40, 14, 14, 64)).astype(np.float32)
    results = []
    for threads in (1, 2):
        cn.set_num_threads(threads)
        cn.set_seed(0)
        layer = layers.Conv2D(64, 3, padding="same", activation="relu")
        assert layer.algorithm == "auto"
        y = layer.forward(x, training=True).copy()
        assert layer._winograd
        dx = layer.backward(dy).copy()
        results.append([y, dx] + layer.get_gradients())
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_winograd_auto_choice_and_bad_algorithm():
    x = np.zeros((1, 8, 8, 16), np.float32)
    layer = layers.Conv2D(16, 3, padding="same")
    layer.forward(x)
    assert layer._winograd                      # 3x3, stride 1, enough channels
    thin = layers.Conv2D(16, 3, padding="same")
    thin.forward(np.zeros((1, 8, 8, 1), np.float32))
    assert not thin._winograd                   # one input channel: im2col
    strided = layers.Conv2D(16, 3, strides=2)
    strided.forward(x)
    assert not strided._winograd
    with pytest.raises(ValueError, match="algorithm must be one of"):
        layer.algorithm = "fft"
    with pytest.raises(ValueError, match="needs a 3x3 kernel"):
        layers.Conv2D(4, 5).algorithm = "winograd"
    with pytest.raises(ValueError, match="needs a 3x3 kernel"):
        layers.Conv2D(4, 3, dilation_rate=2).algorithm = "winograd"
    with pytest.raises(ValueError, match="needs a 3x3 kernel"):
        layers.Conv1D(4, 3).algorithm = "winograd"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_winograd_input_transform_matches_the_layer_s(isa, kernel_threads, dtype):
    """conv_k.winograd_input (the weight gradient's V, in registers with FMAs) gives the
    transform-domain slices of winograd.input_transform, every padding 0-2, ragged
    tiles, channel counts around the vector widths, into a V with spare rows."""
    rng = np.random.default_rng(31)
    tol = 2e-6 if dtype == np.float32 else 1e-13
    for (n, h, w, c), (pt, pl), (oh, ow) in (((2, 8, 8, 4), (1, 1), (8, 8)),
                                             ((3, 7, 9, 17), (0, 2), (5, 9)),
                                             ((1, 13, 6, 33), (2, 0), (13, 4))):
        x = rng.normal(size=(n, h, w, c)).astype(dtype)
        th, tw = _wino.tiles(oh), _wino.tiles(ow)
        t = n * th * tw
        want = np.zeros((36, t, c), dtype)
        _wino.input_transform(x, want, pt, pl, th, tw)
        got = np.full((36, t + 1, c), np.nan, dtype)
        _k.winograd_input(x, got, (pt, pl), (oh, ow))
        np.testing.assert_allclose(got[:, :t], want, rtol=tol, atol=tol * np.abs(want).max())
        assert np.isnan(got[:, t:]).all()      # the spare rows untouched
    with pytest.raises(ValueError, match="V must have shape"):
        _k.winograd_input(x, np.zeros((36, t - 1, c), dtype), (pt, pl), (oh, ow))
    with pytest.raises(ValueError, match="padding must be 0-2"):
        _k.winograd_input(x, np.zeros((36, t, c), dtype), (3, 0), (oh, ow))
    with pytest.raises(TypeError, match="dtype"):
        _k.winograd_input(x.astype(np.float16), np.zeros((36, t, c), dtype), (pt, pl), (oh, ow))
    with pytest.raises(ValueError, match="non-empty image"):
        _k.winograd_input(x[:, :, :0], np.zeros((36, t, c), dtype), (pt, pl), (oh, ow))


def test_winograd_kernels_check_their_buffers():
    g = np.zeros((3, 3, 4, 5))
    with pytest.raises(ValueError, match="U must have shape"):
        _wino.kernel_transform(g, np.zeros((36, 4, 4)))
    with pytest.raises(ValueError, match="the kernel must be 3x3"):
        _wino.kernel_transform(np.zeros((3, 2, 4, 5)), np.zeros((36, 4, 5)))
    with pytest.raises(ValueError, match="dg must have shape"):
        _wino.kernel_grad_transform(np.zeros((36, 4, 5)), np.zeros((3, 3, 5, 4)))
    x = np.zeros((2, 8, 8, 4))
    with pytest.raises(ValueError, match="V must have shape"):
        _wino.input_transform(x, np.zeros((36, 7, 4)), 1, 1, 2, 2)   # 2 * 2 * 2 = 8 tiles
    with pytest.raises(ValueError, match="tiles must be positive"):
        _wino.input_transform(x, np.zeros((36, 8, 4)), 1, 1, 0, 2)
    with pytest.raises(ValueError, match="M must have shape"):
        _wino.output_transform(np.zeros((36, 8, 3)), np.zeros((2, 8, 8, 4)))
    with pytest.raises(ValueError, match="bias must have 4 values"):
        _wino.output_transform(np.zeros((36, 8, 4)), np.zeros((2, 8, 8, 4)), np.zeros(3))
    with pytest.raises(ValueError, match="activation code"):
        _wino.output_transform(np.zeros((36, 8, 4)), np.zeros((2, 8, 8, 4)), None, 9)
    with pytest.raises(ValueError, match="Q must have shape"):
        _wino.output_grad_transform(np.zeros((2, 8, 8, 4)), np.zeros((36, 8, 5)))
    assert [_wino.tiles(s) for s in (1, 4, 5, 8, 14)] == [1, 1, 2, 2, 4]


# ---------------------------------------------------------------------------------------
# Scratch buffers across alternating batch sizes
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("activation", ["linear", "relu", "leaky_relu", "sigmoid"])
@pytest.mark.parametrize("kernel_size,strides,padding,dilation", GRAD_CASES_2D)
def test_training_forward_matches_inference(kernel_threads, dtype, activation, kernel_size,
                                            strides, padding, dilation):
    """A training forward pass makes the patches a few images at a time (im2col_gemm,
    where the patch depth exceeds the filters); inference makes one patch matrix. Both
    give the numpy result, and the gradients after either agree."""
    rng = np.random.default_rng(41)
    x = rng.normal(size=(7, 9, 8, 3)).astype(dtype)
    layer = layers.Conv2D(2, kernel_size, strides=strides, padding=padding,
                          dilation_rate=dilation, activation=activation, dtype=dtype)
    _set_random_weights(layer, rng, x)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    infer = layer.forward(x).copy()
    dy = rng.normal(size=infer.shape).astype(dtype)
    dx_infer = layer.backward(dy).copy()
    g_infer = [g.copy() for g in layer.get_gradients()]
    train = layer.forward(x, training=True)
    np.testing.assert_allclose(train, infer, rtol=tol, atol=tol)
    kernel, bias = (w.astype(np.float64) for w in layer.get_weights())
    pair = (lambda v: (v, v) if isinstance(v, int) else tuple(v))
    z = ref_conv2d(x.astype(np.float64), kernel, bias, pair(strides), padding, pair(dilation))
    ref = np.where(z > 0, z, 0.2 * z) if activation == "leaky_relu" else \
        _np_activation(activation, z)
    np.testing.assert_allclose(train, ref, rtol=10 * tol, atol=10 * tol)
    np.testing.assert_allclose(layer.backward(dy), dx_infer, rtol=tol, atol=tol)
    for a, b in zip(layer.get_gradients(), g_infer):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * max(1, np.abs(b).max()))


def test_alternating_batch_sizes_reuse_buffers_and_stay_exact():
    """A GAN's discriminator sees 2n then n samples each step: the layer keeps the arrays
    of both shapes (no fresh megabytes per switch), and each result is what a fresh layer
    computes, even when it is fed its own output of the other batch size."""
    rng = np.random.default_rng(40)
    layer = layers.Conv2D(3, 4, strides=2, padding="same", activation="leaky_relu",
                          dtype="float64")
    fresh = layers.Conv2D(3, 4, strides=2, padding="same", activation="leaky_relu",
                          dtype="float64")
    x4, x2 = rng.normal(size=(4, 8, 8, 3)), rng.normal(size=(2, 8, 8, 3))
    layer.build(x4.shape[1:])
    fresh.build(x4.shape[1:])
    fresh.set_weights(layer.get_weights())
    seen = {}
    for x in (x4, x2, x4, x2):
        y = layer.forward(x, training=True)
        dy = rng.normal(size=y.shape)
        dx = layer.backward(dy)
        want_y = fresh.forward(x, training=True).copy()
        np.testing.assert_array_equal(y, want_y)
        np.testing.assert_array_equal(dx, fresh.backward(dy))
        for a, b in zip(layer.get_gradients(), fresh.get_gradients()):
            np.testing.assert_array_equal(a, b)
        seen.setdefault(len(x), set()).add(id(layer._buffers["y"]))
    assert all(len(ids) == 1 for ids in seen.values())   # one array per batch size
    # its own output of the other batch size as input: copied before being overwritten
    same = layers.Conv2D(3, 3, padding="same", dtype="float64")
    want = same.forward(same.forward(x4).copy()).copy()
    a = same.forward(x4)          # a is the batch-4 output buffer ...
    same.forward(x2)              # ... now the spare, which the next call swaps back in
    np.testing.assert_array_equal(same.forward(a), want)


def _np_pool(y, max_pool, window, strides):
    """numpy: max or average pooling without padding of y (N, OH, OW, F)."""
    (ph, pw), (sh, sw) = window, strides
    n, oh, ow, f = y.shape
    qh, qw = (oh - ph) // sh + 1, (ow - pw) // sw + 1
    out = np.empty((n, qh, qw, f))
    for qy in range(qh):
        for qx in range(qw):
            win = y[:, qy * sh:qy * sh + ph, qx * sw:qx * sw + pw]
            out[:, qy, qx] = win.max(axis=(1, 2)) if max_pool else win.mean(axis=(1, 2))
    return out


def _np_thin_conv_pool(x, kernel, bias, padding, conv_size, max_pool, window, strides, act):
    """numpy, float64: act(conv(x) + bias) (stride 1, the given top/left padding, the
    padding after filling conv_size), then pooling without padding."""
    kh, kw, c, f = kernel.shape
    (pt, pl), (oh, ow) = padding, conv_size
    n, h, w, _ = x.shape
    padded = np.zeros((n, oh + kh - 1, ow + kw - 1, c))
    rows, cols = min(h, oh + kh - 1 - pt), min(w, ow + kw - 1 - pl)
    padded[:, pt:pt + rows, pl:pl + cols] = x[:, :rows, :cols]
    y = np.zeros((n, oh, ow, f)) + (0 if bias is None else bias)
    for i in range(kh):
        for j in range(kw):
            y += padded[:, i:i + oh, j:j + ow] @ kernel[i, j].astype(np.float64)
    return _np_pool(act(y), max_pool, window, strides)


THIN_CASES = [   # x (N, H, W, C), kernel (KH, KW), padding, conv size, pool window, strides
    ((1, 28, 28, 1), (3, 3), (1, 1), (28, 28), (2, 2), (2, 2)),
    ((3, 9, 11, 3), (3, 3), (0, 0), (7, 9), (3, 2), (2, 3)),       # overlapping / ragged
    ((2, 8, 7, 2), (2, 3), (0, 1), (8, 7), (1, 1), (1, 1)),        # no pooling
    ((5, 1, 17, 4), (1, 5), (0, 2), (1, 17), (1, 3), (1, 3)),      # a Conv1D
    ((2, 6, 6, 32), (1, 1), (0, 0), (6, 6), (2, 2), (2, 2)),       # 32 values a patch
    ((2, 12, 10, 1), (5, 5), (2, 2), (12, 10), (2, 2), (2, 2)),    # 5x5 grey (3x3 grey and
]                                                                  # RGB above: unrolled)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("filters", [1, 7, 16, 32, 45])
@pytest.mark.parametrize("xshape,window,padding,conv_size,pool,pool_strides", THIN_CASES)
def test_thin_conv_pool_matches_numpy(kernel_threads, isa, dtype, filters, xshape, window,
                                      padding, conv_size, pool, pool_strides):
    """The direct thin convolution with its pooling fused, every activation it applies,
    max and average pooling, with and without bias, channel counts around the vector
    widths; the same bits on one and two threads."""
    rng = np.random.default_rng(31)
    x = rng.normal(size=xshape).astype(dtype)
    kernel = rng.normal(size=window + (xshape[-1], filters)).astype(dtype)
    bias = rng.normal(size=filters).astype(dtype)
    qh = (conv_size[0] - pool[0]) // pool_strides[0] + 1
    qw = (conv_size[1] - pool[1]) // pool_strides[1] + 1
    tol = 1e-5 if dtype == np.float32 else 1e-12
    acts = {"relu": (0.0, lambda z: np.maximum(z, 0)),
            "leaky_relu": (0.3, lambda z: np.where(z > 0, z, 0.3 * z)),
            "linear": (0.0, lambda z: z)}
    for name, (alpha, act) in acts.items():
        for max_pool, b in ((True, bias), (False, None)):
            y = np.full((xshape[0], qh, qw, filters), np.nan, dtype)
            _k.thin_conv_pool(x, kernel, b, y, padding, conv_size, max_pool, pool,
                              pool_strides, EPILOGUES[name], alpha)
            want = _np_thin_conv_pool(x, kernel, b, padding, conv_size, max_pool, pool,
                                      pool_strides, act)
            np.testing.assert_allclose(y, want, rtol=tol, atol=tol * max(1, np.abs(want).max()),
                                       err_msg=f"{name} max_pool={max_pool}")
            if kernel_threads > 1:      # samples or rows of one on any thread: serial bits
                cn.set_num_threads(1)
                serial = np.empty_like(y)
                _k.thin_conv_pool(x, kernel, b, serial, padding, conv_size, max_pool, pool,
                                  pool_strides, EPILOGUES[name], alpha)
                cn.set_num_threads(kernel_threads)
                np.testing.assert_array_equal(y, serial)


def test_thin_conv_pool_checks_its_arguments():
    x, k, y = np.zeros((2, 6, 6, 1)), np.zeros((3, 3, 1, 4)), np.zeros((2, 3, 3, 4))
    args = ((1, 1), (6, 6), True, (2, 2), (2, 2))
    _k.thin_conv_pool(x, k, None, y, *args)
    with pytest.raises(ValueError, match="KH\\*KW\\*C <= 32"):
        _k.thin_conv_pool(np.zeros((2, 6, 6, 4)), np.zeros((3, 3, 4, 4)), None, y, *args)
    with pytest.raises(ValueError, match="kernel"):
        _k.thin_conv_pool(x, np.zeros((3, 3, 2, 4)), None, y, *args)
    with pytest.raises(ValueError, match="y must have shape"):
        _k.thin_conv_pool(x, k, None, np.zeros((2, 3, 3, 5)), *args)
    with pytest.raises(ValueError, match="bias must have 4 values"):
        _k.thin_conv_pool(x, k, np.zeros(3), y, *args)
    with pytest.raises(ValueError, match="pooling windows"):
        _k.thin_conv_pool(x, k, None, np.zeros((2, 4, 3, 4)), *args)
    with pytest.raises(ValueError, match="padding must be non-negative"):
        _k.thin_conv_pool(x, k, None, y, (-1, 0), (6, 6), True, (2, 2), (2, 2))
    with pytest.raises(ValueError, match="activation code"):
        _k.thin_conv_pool(x, k, None, y, *args, EPILOGUES["tanh"])
    with pytest.raises(ValueError, match="non-empty image"):
        _k.thin_conv_pool(np.zeros((2, 0, 6, 1)), k, None, y, *args)
    with pytest.raises(TypeError, match="x must have y's dtype float64"):
        _k.thin_conv_pool(x.astype(np.float32), k, None, y, *args)
    with pytest.raises(TypeError, match="float32 or float64"):
        _k.thin_conv_pool(x, k, None, y.astype(np.int64), *args)
    with pytest.raises(ValueError, match="C-contiguous"):
        _k.thin_conv_pool(np.zeros((2, 6, 12, 1))[:, :, ::2], k, None, y, *args)
    with pytest.raises(ValueError, match="writeable"):
        frozen = y.copy()
        frozen.flags.writeable = False
        _k.thin_conv_pool(x, k, None, frozen, *args)
    with pytest.raises(ValueError, match="kernel must be a 4-D"):
        _k.thin_conv_pool(x, k[0], None, y, *args)
    with pytest.raises(ValueError, match="y must not share memory with x, kernel or bias"):
        buf = np.zeros(108)       # x (72 values) and y (72) overlapping by half
        _k.thin_conv_pool(buf[:72].reshape(2, 6, 6, 1), k, None, buf[36:].reshape(2, 3, 3, 4),
                          *args)
    _k.thin_conv_pool(np.zeros((0, 6, 6, 1)), k, None, np.zeros((0, 3, 3, 4)), *args)


# im2col_gemm_pool reads the patches in place (no im2col) when a kernel row is 16 values
# or more and dilation along the width is 1: these add K in blocks of whole kernel rows
# (3 x 150 values: two rows, then one) and kernel rows cut in parts (450 values), with
# ragged filter slivers; a single sample on several threads splits its filters.
POOL_CASES = COL2IM_GEMM_CASES + [
    (1, (6, 7), 50, 37, (3, 3), (1, 1), (1, 1), (1, 1)),
    (2, (5, 5), 150, 3, (3, 3), (2, 2), (1, 1), (1, 1)),
    (1, (9, 8), 20, 70, (3, 3), (1, 1), (1, 1), (1, 1)),    # one sample: threads split F
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("pool,pool_strides", [((2, 2), (2, 2)), ((3, 2), (1, 2)), ((1, 1), (1, 1))])
@pytest.mark.parametrize("n,hw,c,k,window,strides,dilation,padding", POOL_CASES)
def test_im2col_gemm_pool_matches_numpy(kernel_threads, isa, dtype, pool, pool_strides, n, hw,
                                        c, k, window, strides, dilation, padding):
    """The convolution with its pooling band by band, every geometry of the chunked
    kernels, patches copied and read in place, overlapping pools, max and average, each
    activation it applies (after a max pooling, before an average); the same bits on one
    and two threads."""
    h, w = hw
    oh = (h + 2 * padding[0] - (window[0] - 1) * dilation[0] - 1) // strides[0] + 1
    ow = (w + 2 * padding[1] - (window[1] - 1) * dilation[1] - 1) // strides[1] + 1
    if oh < pool[0] or ow < pool[1]:
        pytest.skip("the pooling window is larger than the convolution's output")
    qh, qw = (oh - pool[0]) // pool_strides[0] + 1, (ow - pool[1]) // pool_strides[1] + 1
    rng = np.random.default_rng(21)
    x = rng.normal(size=(n, h, w, c)).astype(dtype)
    b = rng.normal(size=(window[0] * window[1] * c, k)).astype(dtype)
    bias = rng.normal(size=k).astype(dtype)
    z = _np_im2col(x.astype(np.float64), window, strides, dilation, padding,
                   (oh, ow)) @ b.astype(np.float64)
    tol = 1e-4 if dtype == np.float32 else 1e-12
    args = (window, strides, dilation, padding, (oh, ow))
    for name, alpha, with_bias, max_pool in [("relu", 0.0, True, True),
                                             ("leaky_relu", 0.3, False, False),
                                             ("linear", 0.0, True, False),
                                             ("leaky_relu", 0.3, True, True),
                                             ("leaky_relu", 1.5, True, True)]:
        zz = (z + bias if with_bias else z).reshape(n, oh, ow, k)
        act = zz if name == "linear" else np.where(zz > 0, zz, alpha * zz)
        want = _np_pool(act, max_pool, pool, pool_strides)
        y = np.full((n, qh, qw, k), np.nan, dtype)
        _k.im2col_gemm_pool(x, b, bias if with_bias else None, y, *args, max_pool, pool,
                            pool_strides, EPILOGUES[name], alpha)
        np.testing.assert_allclose(y, want, rtol=tol, atol=tol * max(1, np.abs(want).max()),
                                   err_msg=name)
        if kernel_threads > 1:
            cn.set_num_threads(1)
            serial = np.empty_like(y)
            _k.im2col_gemm_pool(x, b, bias if with_bias else None, serial, *args, max_pool,
                                pool, pool_strides, EPILOGUES[name], alpha)
            cn.set_num_threads(kernel_threads)
            np.testing.assert_array_equal(y, serial)


def test_im2col_gemm_pool_checks_its_arguments():
    x, b, y = np.zeros((2, 6, 6, 3)), np.zeros((27, 4)), np.zeros((2, 3, 3, 4))
    args = ((3, 3), (1, 1), (1, 1), (1, 1), (6, 6), True, (2, 2), (2, 2))
    _k.im2col_gemm_pool(x, b, None, y, *args)
    with pytest.raises(ValueError, match="b must have shape"):
        _k.im2col_gemm_pool(x, np.zeros((26, 4)), None, y, *args)
    with pytest.raises(ValueError, match="y \\(2, QH, QW, F\\)"):
        _k.im2col_gemm_pool(x, b, None, np.zeros((2, 3, 3, 5)), *args)
    with pytest.raises(ValueError, match="bias must have 4 values"):
        _k.im2col_gemm_pool(x, b, np.zeros(3), y, *args)
    with pytest.raises(ValueError, match="pooling windows"):
        _k.im2col_gemm_pool(x, b, None, np.zeros((2, 4, 3, 4)), *args)
    with pytest.raises(ValueError, match="activation code"):
        _k.im2col_gemm_pool(x, b, None, y, *args, EPILOGUES["tanh"])
    with pytest.raises(ValueError, match="slope\\) must be >= 0"):
        _k.im2col_gemm_pool(x, b, None, y, *args, EPILOGUES["leaky_relu"], -0.5)
    with pytest.raises(ValueError, match="output size"):
        _k.im2col_gemm_pool(x, b, None, y, (3, 3), (1, 1), (1, 1), (1, 1), (0, 6), True,
                            (2, 2), (2, 2))
    with pytest.raises(TypeError, match="b must have y's dtype"):
        _k.im2col_gemm_pool(x, b.astype(np.float32), None, y, *args)
    with pytest.raises(ValueError, match="b must be a 2-D"):
        _k.im2col_gemm_pool(x, b.ravel(), None, y, *args)
    with pytest.raises(ValueError, match="C-contiguous"):
        _k.im2col_gemm_pool(x, np.zeros((4, 27)).T, None, y, *args)
    with pytest.raises(ValueError, match="y must not share memory with x, b or bias"):
        buf = np.zeros(2 * 6 * 6 * 3)
        _k.im2col_gemm_pool(buf.reshape(2, 6, 6, 3), b, None, buf[:72].reshape(2, 3, 3, 4),
                            *args)
    _k.im2col_gemm_pool(np.zeros((0, 6, 6, 3)), b, None, np.zeros((0, 3, 3, 4)), *args)
