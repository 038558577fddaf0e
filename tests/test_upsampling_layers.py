"""Conv2DTranspose, UpSampling1D/2D, Cropping1D/2D, Permute and RepeatVector: numpy
references, float64 finite differences, PyTorch parity (skipped without torch), Keras 3
parity on the JAX backend (skipped without keras and jax), config round trips, bad input,
and a small convolutional autoencoder trained on scikit-learn's digits."""
import itertools
import json
import os

import numpy as np
import pytest

import cyneuron as cn
from cyneuron import layers

from test_nd_layers import _layer_fd_check


# --------------------------------------------------------------------------- references

def _keras_transpose_geometry(size, k, s, d, padding, output_padding):
    """(output size, crop before) of Keras 3's transposed convolution along one axis,
    restated from its JAX padding rule (keras/src/backend/common/backend_utils.py): the
    full scatter (size - 1) * s + span is padded by (span - 1 - left) before."""
    span = (k - 1) * d + 1
    if padding == "valid":
        op = max(span, s) - span if output_padding is None else output_padding
        left, right = span - 1, span - 1 + op
    else:
        pad = s + span - 2 if output_padding is None else span + span % 2 - 2 + output_padding
        left = min(pad // 2 + pad % 2, span - 1)
        right = pad - left
    out = (size - 1) * s + 1 + left + right - span + 1
    return out, span - 1 - left


def ref_conv_transpose(x, kernel, bias, strides, dilation, padding, output_padding):
    """Scatter each input pixel's kernel-weighted copies, then keep Keras's window."""
    n, h, w, _ = x.shape
    kh, kw, f, _ = kernel.shape
    (sh, sw), (dh, dw) = strides, dilation
    ops = output_padding if output_padding is not None else (None, None)
    (oh, ch), (ow, cw) = (_keras_transpose_geometry(h, kh, sh, dh, padding, ops[0]),
                          _keras_transpose_geometry(w, kw, sw, dw, padding, ops[1]))
    full = np.zeros((n, max((h - 1) * sh + (kh - 1) * dh + 1, ch + oh),
                     max((w - 1) * sw + (kw - 1) * dw + 1, cw + ow), f))
    for i, j, a, b in itertools.product(range(h), range(w), range(kh), range(kw)):
        full[:, i * sh + a * dh, j * sw + b * dw, :] += x[:, i, j, :] @ kernel[a, b].T
    y = full[:, ch:ch + oh, cw:cw + ow, :]
    return y + (0 if bias is None else bias)


def _bilinear_ref(x, sh, sw):
    """tf.image.resize / PyTorch align_corners=False bilinear up-sampling, pixel by pixel."""
    n, h, w, c = x.shape
    out = np.empty((n, h * sh, w * sw, c))

    def coords(o, scale, size):
        src = min(max((o + 0.5) / scale - 0.5, 0.0), size - 1)
        lo = int(np.floor(src))
        return lo, min(lo + 1, size - 1), src - lo

    for oy in range(h * sh):
        y0, y1, fy = coords(oy, sh, h)
        for ox in range(w * sw):
            x0, x1, fx = coords(ox, sw, w)
            out[:, oy, ox] = ((1 - fy) * ((1 - fx) * x[:, y0, x0] + fx * x[:, y0, x1])
                              + fy * ((1 - fx) * x[:, y1, x0] + fx * x[:, y1, x1]))
    return out


TRANSPOSE_CASES = [
    # kernel, strides, padding, output_padding, dilation
    (3, 1, "valid", None, 1),
    (3, 2, "same", None, 1),
    (3, 2, "same", 1, 1),
    (3, 2, "valid", 1, 1),
    (2, 2, "valid", None, 1),
    ((2, 3), (3, 1), "same", (2, 0), 1),
    (4, 2, "same", 0, 1),
    (1, 3, "valid", None, 1),
    (3, 1, "same", None, 2),
    ((2, 3), 1, "valid", None, (2, 1)),
]


def _built_transpose(case, x, activation=None, use_bias=True, filters=3, seed=0):
    k, s, p, op, d = case
    layer = layers.Conv2DTranspose(filters, k, strides=s, padding=p, output_padding=op,
                                   dilation_rate=d, activation=activation, use_bias=use_bias,
                                   dtype="float64")
    layer.forward(x)
    rng = np.random.default_rng(seed)
    layer.set_weights([rng.normal(size=w.shape) for w in layer.get_weights()])
    return layer


# --------------------------------------------------------------------------- Conv2DTranspose

@pytest.mark.parametrize("case", TRANSPOSE_CASES, ids=str)
def test_conv_transpose_matches_numpy(case):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 4, 5, 2))
    layer = _built_transpose(case, x)
    kernel, bias = layer.get_weights()
    assert kernel.shape[2:] == (3, 2)                   # Keras: (kh, kw, filters, c_in)
    y = layer.forward(x)
    layer_args = (layer.strides, layer.dilation_rate, layer.padding, layer.output_padding)
    ref = ref_conv_transpose(x, kernel, bias, *layer_args)
    assert y.shape == ref.shape == (2,) + layer.compute_output_shape((4, 5, 2))
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("size,k,s,padding,op,expected", [
    (5, 3, 2, "valid", None, 11),    # (5 - 1) * 2 + 3
    (5, 3, 2, "same", None, 10),     # 5 * 2
    (5, 3, 2, "same", 1, 10),        # (5 - 1) * 2 + 3 % 2 + 1
    (5, 3, 2, "valid", 1, 12),       # (5 - 1) * 2 + 3 + 1
    (5, 1, 3, "valid", None, 15),    # (5 - 1) * 3 + max(1, 3)
    (5, 4, 2, "same", 0, 8),         # (5 - 1) * 2 + 4 % 2 + 0
    (1, 2, 1, "same", None, 1),
])
def test_conv_transpose_output_sizes_follow_keras(size, k, s, padding, op, expected):
    layer = layers.Conv2DTranspose(2, (k, 1), strides=(s, 1), padding=padding,
                                   output_padding=None if op is None else (op, 0))
    assert layer.compute_output_shape((size, 3, 4))[0] == expected


@pytest.mark.parametrize("activation", ["linear", "relu", "sigmoid", "tanh", "hard_swish", "elu",
                                        "leaky_relu", cn.activations.LeakyReLU(1.5),
                                        cn.activations.ELU(0.5)], ids=str)
@pytest.mark.parametrize("case", [TRANSPOSE_CASES[2], TRANSPOSE_CASES[5], TRANSPOSE_CASES[8],
                                  TRANSPOSE_CASES[7]], ids=str)   # the last: thin patches
def test_conv_transpose_finite_differences(case, activation):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 3, 3, 2))
    layer = _built_transpose(case, x, activation=activation, filters=2)
    _layer_fd_check(layer, x, rtol=1e-5)


def test_conv_transpose_without_bias_finite_differences():
    x = np.random.default_rng(3).normal(size=(1, 3, 2, 3))
    layer = _built_transpose((2, 2, "valid", None, 1), x, use_bias=False, filters=2)
    assert len(layer.get_weights()) == 1
    _layer_fd_check(layer, x)


@pytest.mark.parametrize("case", TRANSPOSE_CASES, ids=str)
def test_conv_transpose_pytorch_parity(case):
    """Forward and gradients against torch's full transposed convolution (padding 0),
    cropped at Keras's window (torch's own padding cannot express every Keras case)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 4, 5, 2))
    layer = _built_transpose(case, x)
    kernel, bias = layer.get_weights()
    y = layer.forward(x).copy()
    g = rng.normal(size=y.shape)
    dx = layer.backward(g).copy()
    dw, db = layer.get_gradients()

    tx = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    tw = torch.tensor(kernel.transpose(3, 2, 0, 1), requires_grad=True)   # (c_in, f, kh, kw)
    full = torch.nn.functional.conv_transpose2d(tx, tw, stride=layer.strides,
                                                dilation=layer.dilation_rate)
    (oh, ch), (ow, cw) = (_keras_transpose_geometry(4, layer.kernel_size[0], layer.strides[0],
                                                    layer.dilation_rate[0], layer.padding,
                                                    (layer.output_padding or (None,))[0]),
                          _keras_transpose_geometry(5, layer.kernel_size[1], layer.strides[1],
                                                    layer.dilation_rate[1], layer.padding,
                                                    (layer.output_padding or (None, None))[1]))
    pad = (0, max(0, cw + ow - full.shape[3]), 0, max(0, ch + oh - full.shape[2]))
    out = torch.nn.functional.pad(full, pad)[:, :, ch:ch + oh, cw:cw + ow]
    out = out + torch.tensor(bias).reshape(1, -1, 1, 1)
    out.backward(torch.tensor(g.transpose(0, 3, 1, 2)))
    np.testing.assert_allclose(y, out.detach().numpy().transpose(0, 2, 3, 1), rtol=1e-12,
                               atol=1e-12)
    np.testing.assert_allclose(dx, tx.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dw, tw.grad.numpy().transpose(2, 3, 1, 0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(db, g.sum(axis=(0, 1, 2)), rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_conv_transpose_float32_and_threads(dtype, kernel_threads):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(9, 7, 6, 5)).astype(dtype)
    layer = layers.Conv2DTranspose(4, 3, strides=2, padding="same", dtype=dtype)
    y = layer.forward(x)
    assert y.dtype == dtype and y.shape == (9, 14, 12, 4)
    kernel, bias = (w.astype(np.float64) for w in layer.get_weights())
    ref = ref_conv_transpose(x.astype(np.float64), kernel, bias, (2, 2), (1, 1), "same", None)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(y, ref, rtol=tol, atol=tol)
    assert layer.forward(x) is y                       # the output buffer is reused
    assert layer.forward(x[:3]).shape == (3, 14, 12, 4)
    assert layer.forward(x[:, :3]).shape == (9, 6, 12, 4)  # any image size, as Keras


# --------------------------------------------------------------------------- up-sampling

@pytest.mark.parametrize("size", [1, 2, 3])
def test_upsampling1d(size):
    rng = np.random.default_rng(size)
    x = rng.normal(size=(3, 5, 2))
    layer = layers.UpSampling1D(size, dtype="float64")
    y = layer.forward(x)
    np.testing.assert_array_equal(y, np.repeat(x, size, axis=1))
    _layer_fd_check(layer, x)


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
@pytest.mark.parametrize("size", [2, (2, 3), (1, 4), (3, 1)], ids=str)
def test_upsampling2d(size, interpolation):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(2, 3, 4, 2))
    layer = layers.UpSampling2D(size, interpolation=interpolation, dtype="float64")
    y = layer.forward(x)
    sh, sw = layer.size
    if interpolation == "nearest":
        np.testing.assert_array_equal(y, np.repeat(np.repeat(x, sh, axis=1), sw, axis=2))
    else:
        np.testing.assert_allclose(y, _bilinear_ref(x, sh, sw), rtol=1e-13, atol=1e-14)
    _layer_fd_check(layer, x)


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_upsampling2d_pytorch_parity(interpolation, dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(8)
    x = rng.normal(size=(3, 5, 4, 3)).astype(dtype)
    layer = layers.UpSampling2D((2, 3), interpolation=interpolation, dtype=dtype)
    y = layer.forward(x).copy()
    g = rng.normal(size=y.shape).astype(dtype)
    dx = layer.backward(g)
    t = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    extra = {} if interpolation == "nearest" else {"align_corners": False}
    out = torch.nn.functional.interpolate(t, scale_factor=(2, 3), mode=interpolation, **extra)
    out.backward(torch.tensor(g.transpose(0, 3, 1, 2)))
    tol = 1e-5 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(y, out.detach().numpy().transpose(0, 2, 3, 1), rtol=tol, atol=tol)
    np.testing.assert_allclose(dx, t.grad.numpy().transpose(0, 2, 3, 1), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_upsampling_kernels_on_each_thread_count(dtype, kernel_threads):
    rng = np.random.default_rng(9)
    x = rng.normal(size=(5, 9, 7, 3)).astype(dtype)
    tol = 2e-6 if dtype == np.float32 else 1e-13
    for interpolation in ("nearest", "bilinear"):
        layer = layers.UpSampling2D((2, 3), interpolation=interpolation, dtype=dtype)
        y = layer.forward(x)
        assert y.dtype == dtype
        ref = (np.repeat(np.repeat(x, 2, axis=1), 3, axis=2) if interpolation == "nearest"
               else _bilinear_ref(x.astype(np.float64), 2, 3))
        np.testing.assert_allclose(y, ref, rtol=tol, atol=tol)
        g = rng.normal(size=y.shape).astype(dtype)
        dx = layer.backward(g)
        # the adjoint: <forward(x), g> == <x, backward(g)>
        np.testing.assert_allclose(np.vdot(y.astype(np.float64), g),
                                   np.vdot(x, dx.astype(np.float64)),
                                   rtol=1e-5 if dtype == np.float32 else 1e-12)


def test_upsampling_kernels_check_their_buffers():
    from cyneuron._kernels import pooling as k
    x = np.ones((2, 3, 4, 1))
    with pytest.raises(ValueError, match=r"\by\b.*\(2, 6, 8, 1\)"):
        k.upsample_nearest(x, np.empty((2, 6, 7, 1)), 2, 2)
    with pytest.raises(ValueError, match="dy"):
        k.upsample_nearest_backward(np.ones((2, 6, 8, 2)), np.empty((2, 3, 4, 1)), 2, 2)
    with pytest.raises(ValueError, match="size"):
        k.upsample_nearest(x, np.empty((2, 6, 8, 1)), 0, 2)
    lo, f = np.zeros(6, np.intp), np.zeros(6)
    lo_w, f_w = np.zeros(8, np.intp), np.zeros(8)
    bad = lo.copy()
    bad[2] = 3                                     # row 3 does not exist
    with pytest.raises(ValueError, match="row tap"):
        k.upsample_bilinear(x, np.empty((2, 6, 8, 1)), lo, bad, f, lo_w, lo_w, f_w)
    with pytest.raises(ValueError, match="column taps"):
        k.upsample_bilinear(x, np.empty((2, 6, 8, 1)), lo, lo, f, lo_w[:5], lo_w, f_w)
    # the backward takes the taps by input index (CSR): pointers, output indices, weights
    ptr_h, src_h, w_h = np.arange(4, dtype=np.intp) * 2, np.arange(6, dtype=np.intp), np.ones(6)
    ptr_w, src_w, w_w = np.arange(5, dtype=np.intp) * 2, np.arange(8, dtype=np.intp), np.ones(8)
    dy, dx = np.ones((2, 6, 8, 1)), np.empty((2, 3, 4, 1))
    k.upsample_bilinear_backward(dy, dx, ptr_h, src_h, w_h, ptr_w, src_w, w_w)
    np.testing.assert_array_equal(dx, np.full((2, 3, 4, 1), 4.0))    # = the nearest adjoint
    with pytest.raises(ValueError, match="row adjoint taps"):
        k.upsample_bilinear_backward(dy, dx, ptr_h[:3], src_h, w_h, ptr_w, src_w, w_w)
    bad = src_w.copy()
    bad[0] = 8                                     # output column 8 does not exist
    with pytest.raises(ValueError, match="column adjoint tap indices"):
        k.upsample_bilinear_backward(dy, dx, ptr_h, src_h, w_h, ptr_w, bad, w_w)
    with pytest.raises(ValueError, match="must not decrease"):
        k.upsample_bilinear_backward(dy, dx, np.array([0, 4, 2, 6], np.intp), src_h, w_h,
                                     ptr_w, src_w, w_w)


# --------------------------------------------------------------------------- cropping, permute

@pytest.mark.parametrize("cropping,window", [(1, (1, 6)), ((0, 2), (0, 5)), ((3, 0), (3, 7))])
def test_cropping1d(cropping, window):
    x = np.random.default_rng(1).normal(size=(2, 7, 3))
    layer = layers.Cropping1D(cropping, dtype="float64")
    np.testing.assert_array_equal(layer.forward(x), x[:, window[0]:window[1]])
    _layer_fd_check(layer, x)


@pytest.mark.parametrize("cropping,rows,cols", [
    (1, (1, 4), (1, 5)),
    ((1, 2), (1, 4), (2, 4)),
    (((0, 2), (1, 0)), (0, 3), (1, 6)),
    (((0, 0), (0, 0)), (0, 5), (0, 6)),
])
def test_cropping2d(cropping, rows, cols):
    x = np.random.default_rng(2).normal(size=(2, 5, 6, 2))
    layer = layers.Cropping2D(cropping, dtype="float64")
    y = layer.forward(x)
    np.testing.assert_array_equal(y, x[:, rows[0]:rows[1], cols[0]:cols[1]])
    _layer_fd_check(layer, x)
    # the cropped border's gradient stays zero even if a caller wrote into dx
    dx = layer.backward(np.ones_like(y))
    dx += 5
    dx = layer.backward(np.ones_like(y))
    assert dx.sum() == y.size


@pytest.mark.parametrize("dims", [(1, 2), (2, 1), (3, 1, 2), (2, 3, 1)])
def test_permute(dims):
    shape = (2, 3, 4) if len(dims) == 2 else (2, 3, 4, 5)
    x = np.random.default_rng(3).normal(size=shape)
    layer = layers.Permute(dims, dtype="float64")
    y = layer.forward(x)
    np.testing.assert_array_equal(y, np.transpose(x, (0,) + dims))
    assert y.flags.c_contiguous
    _layer_fd_check(layer, x)


@pytest.mark.parametrize("n", [1, 4])
def test_repeat_vector(n):
    x = np.random.default_rng(4).normal(size=(3, 5))
    layer = layers.RepeatVector(n, dtype="float64")
    y = layer.forward(x)
    np.testing.assert_array_equal(y, np.repeat(x[:, None, :], n, axis=1))
    _layer_fd_check(layer, x)


def test_pytorch_parity_permute_crop_repeat():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, 6, 5, 3))
    t = torch.tensor(x)
    np.testing.assert_array_equal(layers.Permute((3, 1, 2)).forward(x).astype(np.float64),
                                  t.permute(0, 3, 1, 2).numpy().astype(np.float32))
    crop = layers.Cropping2D(((1, 2), (0, 1)), dtype="float64").forward(x)
    np.testing.assert_array_equal(crop, t[:, 1:4, 0:4].numpy())
    v = rng.normal(size=(3, 4))
    np.testing.assert_array_equal(layers.RepeatVector(2, dtype="float64").forward(v),
                                  torch.tensor(v)[:, None].repeat(1, 2, 1).numpy())


# --------------------------------------------------------------------------- Keras 3 parity

@pytest.fixture(scope="module")
def keras():
    os.environ.setdefault("KERAS_BACKEND", "jax")
    keras = pytest.importorskip("keras")
    if keras.backend.backend() not in ("jax", "torch", "numpy", "tensorflow"):
        pytest.skip("no usable Keras backend")
    return keras


@pytest.mark.filterwarnings("ignore::DeprecationWarning")    # Keras's own, on numpy 2
@pytest.mark.parametrize("case", [
    (k, s, p, op, d) for k, s, p, op, d in itertools.product(
        [1, 2, 3, 4], [1, 2, 3], ["valid", "same"], [None, 0, 1, 2], [1, 2])
    if (op is None or op < s) and not (s > 1 and d > 1)], ids=str)
def test_conv_transpose_keras_parity(keras, case):
    k, s, p, op, d = case
    rng = np.random.default_rng(6)
    x = rng.normal(size=(2, 4, 5, 2)).astype(np.float32)
    ours = layers.Conv2DTranspose(3, k, strides=s, padding=p, output_padding=op,
                                  dilation_rate=d)
    theirs = keras.layers.Conv2DTranspose(3, k, strides=s, padding=p, output_padding=op,
                                          dilation_rate=d)
    theirs.build(x.shape)
    ours.forward(x)
    weights = [rng.normal(size=w.shape).astype(np.float32) for w in ours.get_weights()]
    assert [w.shape for w in weights] == [tuple(w.shape) for w in theirs.get_weights()]
    ours.set_weights(weights)
    theirs.set_weights(weights)
    expected = np.asarray(theirs(x))
    y = ours.forward(x)
    assert y.shape == expected.shape
    assert tuple(theirs.compute_output_shape(x.shape)) == \
        (2,) + ours.compute_output_shape(x.shape[1:])
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("make,make_keras,shape", [
    (lambda: layers.UpSampling2D((2, 3)), lambda k: k.layers.UpSampling2D((2, 3)), (2, 3, 4, 2)),
    (lambda: layers.UpSampling2D(2, interpolation="bilinear"),
     lambda k: k.layers.UpSampling2D(2, interpolation="bilinear"), (2, 3, 4, 2)),
    (lambda: layers.UpSampling2D((3, 2), interpolation="bilinear"),
     lambda k: k.layers.UpSampling2D((3, 2), interpolation="bilinear"), (2, 5, 4, 2)),
    (lambda: layers.UpSampling1D(3), lambda k: k.layers.UpSampling1D(3), (2, 4, 3)),
    (lambda: layers.Cropping1D((1, 2)), lambda k: k.layers.Cropping1D((1, 2)), (2, 6, 3)),
    (lambda: layers.Cropping2D(((1, 0), (2, 1))),
     lambda k: k.layers.Cropping2D(((1, 0), (2, 1))), (2, 5, 6, 2)),
    (lambda: layers.Permute((2, 3, 1)), lambda k: k.layers.Permute((2, 3, 1)), (2, 3, 4, 5)),
    (lambda: layers.RepeatVector(3), lambda k: k.layers.RepeatVector(3), (2, 4)),
    (lambda: layers.Activation("relu6"), lambda k: k.layers.Activation("relu6"), (3, 40)),
    (lambda: layers.Activation("hard_tanh"), lambda k: k.layers.Activation("hard_tanh"), (3, 40)),
    (lambda: layers.Activation("exponential"), lambda k: k.layers.Activation("exponential"),
     (3, 40)),
    (lambda: layers.Activation("hard_swish"), lambda k: k.layers.Activation("hard_swish"),
     (3, 40)),
    (lambda: layers.Activation("silu"), lambda k: k.layers.Activation("silu"), (3, 40)),
], ids=["UpSampling2D", "UpSampling2D-bilinear", "UpSampling2D-bilinear-3x2", "UpSampling1D",
        "Cropping1D", "Cropping2D", "Permute", "RepeatVector", "relu6", "hard_tanh",
        "exponential", "hard_swish", "silu"])
def test_keras_parity(keras, make, make_keras, shape):
    x = (4 * np.random.default_rng(7).normal(size=shape)).astype(np.float32)
    y = make().forward(x)
    expected = np.asarray(make_keras(keras)(x))
    assert y.shape == expected.shape
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_dense_3d_keras_parity(keras):
    x = np.random.default_rng(8).normal(size=(2, 3, 4)).astype(np.float32)
    theirs = keras.layers.Dense(5, activation="tanh")
    theirs.build(x.shape)
    ours = layers.Dense(5, activation="tanh")
    ours.forward(x)
    ours.set_weights([np.asarray(w) for w in theirs.get_weights()])
    np.testing.assert_allclose(ours.forward(x), np.asarray(theirs(x)), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- configs, models

NEW_LAYERS = [
    (lambda: layers.Conv2DTranspose(4, (3, 2), strides=(2, 1), padding="same",
                                    output_padding=(1, 0), activation="relu6", use_bias=False),
     (5, 4, 3)),
    (lambda: layers.Conv2DTranspose(2, 2, dilation_rate=2,
                                    activation=cn.activations.LeakyReLU(0.1)), (5, 4, 3)),
    (lambda: layers.UpSampling1D(4), (5, 3)),
    (lambda: layers.UpSampling2D((1, 2), interpolation="bilinear"), (5, 4, 3)),
    (lambda: layers.Cropping1D((2, 0)), (5, 3)),
    (lambda: layers.Cropping2D(((1, 2), (0, 1))), (5, 4, 3)),
    (lambda: layers.Permute((3, 1, 2)), (5, 4, 3)),
    (lambda: layers.RepeatVector(2), (5,)),
]


@pytest.mark.parametrize("make,shape", NEW_LAYERS, ids=lambda v: "" if isinstance(v, tuple)
                         else None)
def test_config_round_trip(make, shape):
    layer = make()
    spec = json.loads(json.dumps(layers.serialize(layer)))
    clone = layers.deserialize(spec)
    assert type(clone) is type(layer)
    assert clone.get_config() == layer.get_config()
    x = np.random.default_rng(0).normal(size=(2,) + shape).astype(np.float32)
    y = layer.forward(x)
    clone.forward(x)
    clone.set_weights(layer.get_weights())
    np.testing.assert_array_equal(clone.forward(x), y)
    assert clone.compute_output_shape(shape) == layer.compute_output_shape(shape) == y.shape[1:]
    assert type(layer).__name__ in layers.__all__


@pytest.mark.parametrize("make,match", [
    (lambda: layers.Conv2DTranspose(0, 3), "filters"),
    (lambda: layers.Conv2DTranspose(2, (3, 0)), "kernel_size"),
    (lambda: layers.Conv2DTranspose(2, 3, strides=0), "strides"),
    (lambda: layers.Conv2DTranspose(2, 3, padding="causal"), "padding"),
    (lambda: layers.Conv2DTranspose(2, 3, strides=2, output_padding=2), "output_padding"),
    (lambda: layers.Conv2DTranspose(2, 3, output_padding=(1, -1)), "output_padding"),
    (lambda: layers.Conv2DTranspose(2, 3, output_padding="1"), "output_padding"),
    (lambda: layers.Conv2DTranspose(2, 3, strides=2, dilation_rate=2), "dilation_rate"),
    (lambda: layers.Conv2DTranspose(2, 3, activation="nope"), "activation"),
    (lambda: layers.UpSampling1D(0), "size"),
    (lambda: layers.UpSampling1D(1.5), "size"),
    (lambda: layers.UpSampling2D((2, 0)), "size"),
    (lambda: layers.UpSampling2D(2, interpolation="bicubic"), "interpolation"),
    (lambda: layers.Cropping1D(-1), "cropping"),
    (lambda: layers.Cropping1D((1, 2, 3)), "cropping"),
    (lambda: layers.Cropping2D(((1, 2), (3,))), "cropping"),
    (lambda: layers.Cropping2D("1"), "cropping"),
    (lambda: layers.Permute((1, 3)), "dims"),
    (lambda: layers.Permute((0, 1)), "dims"),
    (lambda: layers.Permute(2), "dims"),
    (lambda: layers.RepeatVector(0), r"\bn\b"),
    (lambda: layers.RepeatVector(True), r"\bn\b"),
])
def test_bad_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("layer,x,match", [
    (lambda: layers.Conv2DTranspose(2, 3), np.ones((2, 4, 3)), "4-D"),
    (lambda: layers.UpSampling2D(), np.ones((2, 4, 3)), "4-D"),
    (lambda: layers.UpSampling1D(), np.ones((2, 4, 3, 1)), "3-D"),
    (lambda: layers.Cropping1D(2), np.ones((2, 4, 3)), "cropping"),
    (lambda: layers.Cropping2D(((2, 2), (0, 0))), np.ones((2, 4, 3, 1)), "cropping"),
    (lambda: layers.Cropping2D(), np.ones((2, 4, 3)), "4-D"),
    (lambda: layers.Permute((2, 1)), np.ones((2, 4, 3, 1)), "dims"),
    (lambda: layers.RepeatVector(2), np.ones((2, 4, 3)), "2-D"),
    (lambda: layers.Conv2DTranspose(2, 2, padding="same", output_padding=0), np.ones((1, 1, 3, 1)),
     "empty output"),
])
def test_bad_input_shapes(layer, x, match):
    with pytest.raises(ValueError, match=match):
        layer().forward(x)


def test_bad_input_after_build_names_channels_and_x():
    layer = layers.Conv2DTranspose(2, 3)
    layer.forward(np.ones((1, 4, 4, 3)))
    with pytest.raises(ValueError, match=r"channels.*\bx\b"):
        layer.forward(np.ones((1, 4, 4, 2)))
    with pytest.raises(TypeError, match=r"\bx\b"):
        layers.UpSampling2D().forward(np.full((1, 2, 2, 1), "a"))
    crop = layers.Cropping1D(1)
    crop.forward(np.ones((1, 5, 2)))
    with pytest.raises(ValueError, match="cropping"):
        crop.forward(np.ones((1, 2, 2)))


def _digits_images():
    pytest.importorskip("sklearn")
    (x, _), _ = cn.datasets.load_digits()
    return x[:512].reshape(-1, 8, 8, 1)


@pytest.mark.parametrize("decoder", ["Conv2DTranspose", "UpSampling2D", "bilinear"])
def test_conv_autoencoder_on_digits(decoder):
    """Conv2D -> MaxPooling2D -> (Conv2DTranspose | UpSampling2D) -> Conv2D, trained with
    MSE to reproduce its input: the reconstruction error falls clearly."""
    x = _digits_images()
    cn.set_seed(0)
    if decoder == "Conv2DTranspose":
        up = [layers.Conv2DTranspose(8, 3, strides=2, padding="same", activation="relu")]
    else:
        up = [layers.UpSampling2D(2, interpolation="nearest" if decoder == "UpSampling2D"
                                  else "bilinear")]
    model = cn.Sequential([layers.Conv2D(8, 3, padding="same", activation="relu"),
                           layers.MaxPooling2D(2)] + up +
                          [layers.Conv2D(1, 3, padding="same", activation="sigmoid"),
                           layers.Flatten()])
    model.compile(optimizer=cn.optimizers.Adam(0.01), loss="mse")
    history = model.fit(x, x.reshape(len(x), -1), epochs=8, batch_size=32, verbose=0)
    losses = history.history["loss"]
    assert model.output_shape == (64,)
    assert losses[-1] < 0.5 * losses[0], losses
    assert model.predict(x[:5]).shape == (5, 64)


def test_model_gradients_through_every_new_layer():
    """compute_gradients of a float64 model chaining all the new layers (and N-D Dense)
    against finite differences of evaluate."""
    from test_gradients import numeric_grad
    rng = np.random.default_rng(10)
    cn.set_seed(10)
    model = cn.Sequential([
        layers.Conv2DTranspose(2, 2, strides=2, activation="tanh"),
        layers.UpSampling2D((1, 2), interpolation="bilinear"),
        layers.Cropping2D(((1, 0), (1, 2))),
        layers.Permute((2, 1, 3)),
        layers.UpSampling2D((2, 1)),
        layers.Flatten(),
        layers.Dense(3),
        layers.RepeatVector(2),
        layers.Dense(3, activation="hard_swish"),
        layers.UpSampling1D(2),
        layers.Cropping1D((1, 0)),
        layers.Flatten(),
        layers.Dense(2),
    ], dtype="float64")
    model.compile(optimizer="sgd", loss="mse")
    model.build((2, 2, 1))
    x, y = rng.normal(size=(3, 2, 2, 1)), rng.normal(size=(3, 2))
    weights = [w + rng.normal(scale=0.3, size=w.shape) for w in model.get_weights()]
    model.set_weights(weights)
    _, grads = model.compute_gradients(x, y)
    grads = [g.copy() for g in grads]
    for k in range(len(weights)):
        w = [a.copy() for a in weights]

        def objective():
            model.set_weights(w)
            return model.evaluate(x, y)["loss"]
        np.testing.assert_allclose(grads[k], numeric_grad(objective, w[k]), rtol=1e-5, atol=1e-8,
                                   err_msg=f"weight array #{k}")


def test_same_bits_on_one_and_two_threads(restore_threads):
    """No kernel of these layers splits a sum over threads: 1 and 2 threads agree exactly."""
    x = np.random.default_rng(0).normal(size=(16, 7, 9, 5)).astype(np.float32)
    results = []
    for threads in (1, 2):
        cn.set_num_threads(threads)
        out = []
        for layer in (layers.Conv2DTranspose(4, 3, strides=2, padding="same", activation="relu"),
                      layers.UpSampling2D(2, interpolation="bilinear"), layers.UpSampling2D(3)):
            layer.forward(x)
            layer.set_weights([np.random.default_rng(1).normal(size=w.shape)
                               for w in layer.get_weights()])
            y = layer.forward(x).copy()
            out += [y, layer.backward(np.cos(y)).copy()] + layer.get_gradients()
        results.append(out)
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)
