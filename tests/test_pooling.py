"""Pooling and reshaping layers: numpy references (TensorFlow's padding rules: padded
positions are never pooled), float64 finite-difference gradients for every option,
the pooling kernels, thread-count agreement, and bad input."""
import itertools

import numpy as np
import pytest

import cyneuron as cn
from cyneuron import layers
from cyneuron._kernels import pooling as _k

from test_conv import check_layer_gradients, tf_padding


# ---------------------------------------------------------------------------------------
# numpy references
# ---------------------------------------------------------------------------------------
def ref_pool2d(x, pool, strides, padding, kind):
    """Max or mean over each window of the positions inside x (padding excluded)."""
    (ph, pw), (sh, sw) = pool, strides
    pt, _, oh = tf_padding(x.shape[1], ph, sh, 1, padding)
    pl, _, ow = tf_padding(x.shape[2], pw, sw, 1, padding)
    out = np.empty((x.shape[0], oh, ow, x.shape[3]))
    for oy, ox in itertools.product(range(oh), range(ow)):
        y0, x0 = oy * sh - pt, ox * sw - pl
        window = x[:, max(y0, 0):y0 + ph, max(x0, 0):x0 + pw, :]
        out[:, oy, ox] = window.max(axis=(1, 2)) if kind == "max" else window.mean(axis=(1, 2))
    return out


def ref_pool1d(x, pool, stride, padding, kind):
    return ref_pool2d(x[:, None], (1, pool), (1, stride), padding, kind)[:, 0]


def _distinct(rng, shape):
    """Values with no near-ties, so that finite differences never swap a maximum."""
    size = int(np.prod(shape))
    return (rng.permutation(size).reshape(shape) / size * 4 - 2) + rng.normal(scale=1e-3,
                                                                               size=shape)


POOL2D_CASES = [
    # pool_size, strides, padding
    (2, None, "valid"), (2, None, "same"), (3, None, "valid"), (3, None, "same"),
    (3, 1, "valid"), (3, 1, "same"), (3, 2, "same"), ((2, 3), (1, 2), "valid"),
    ((2, 3), (1, 2), "same"), (1, None, "valid"), (4, 3, "same"),
]


@pytest.mark.parametrize("pool_size,strides,padding", POOL2D_CASES)
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pool2d_forward_matches_numpy(pool_size, strides, padding, kind):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 7, 8, 4))
    cls = layers.MaxPooling2D if kind == "max" else layers.AveragePooling2D
    layer = cls(pool_size, strides=strides, padding=padding, dtype="float64")
    pool = layer.pool_size
    ref = ref_pool2d(x, pool, layer.strides, padding, kind)
    for training in (False, True):
        y = layer.forward(x, training=training)
        assert y.shape == ref.shape
        np.testing.assert_allclose(y, ref, rtol=1e-13, atol=1e-13)
    assert layer.compute_output_shape(x.shape[1:]) == ref.shape[1:]


POOL1D_CASES = [(2, None, "valid"), (2, None, "same"), (3, 1, "same"), (3, 2, "valid"),
                (4, 3, "same"), (5, 2, "same")]


@pytest.mark.parametrize("pool_size,strides,padding", POOL1D_CASES)
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pool1d_forward_matches_numpy(pool_size, strides, padding, kind):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 11, 5))
    cls = layers.MaxPooling1D if kind == "max" else layers.AveragePooling1D
    layer = cls(pool_size, strides=strides, padding=padding, dtype="float64")
    ref = ref_pool1d(x, pool_size, strides or pool_size, padding, kind)
    y = layer.forward(x)
    assert y.shape == ref.shape
    np.testing.assert_allclose(y, ref, rtol=1e-13, atol=1e-13)


def test_average_pooling_same_excludes_padding():
    x = np.ones((1, 3, 3, 1))
    y = layers.AveragePooling2D(2, padding="same", dtype="float64").forward(x)
    np.testing.assert_array_equal(y, np.ones((1, 2, 2, 1)))   # not 1/2 or 1/4 at the edges


def test_max_pooling_same_never_picks_padding():
    x = -np.ones((1, 3, 3, 1))
    y = layers.MaxPooling2D(2, padding="same", dtype="float64").forward(x)
    np.testing.assert_array_equal(y, -np.ones((1, 2, 2, 1)))  # a zero pad would give 0


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("rank", [1, 2])
@pytest.mark.parametrize("keepdims", [False, True])
def test_global_pooling_matches_numpy(kind, rank, keepdims):
    rng = np.random.default_rng(2)
    shape = (3, 5, 6, 4) if rank == 2 else (3, 7, 4)
    x = rng.normal(size=shape)
    name = f"Global{'Max' if kind == 'max' else 'Average'}Pooling{rank}D"
    layer = getattr(layers, name)(keepdims=keepdims, dtype="float64")
    axes = tuple(range(1, rank + 1))
    ref = x.max(axis=axes, keepdims=keepdims) if kind == "max" else \
        x.mean(axis=axes, keepdims=keepdims)
    y = layer.forward(x)
    assert y.shape == ref.shape
    np.testing.assert_allclose(y, ref, rtol=1e-13)
    assert layer.compute_output_shape(shape[1:]) == ref.shape[1:]
    # a built global pooling takes any spatial size with the same channels
    x2 = rng.normal(size=(2,) + tuple(d + 1 for d in shape[1:-1]) + (4,))
    assert layer.forward(x2).shape == (2,) + ref.shape[1:]


# ---------------------------------------------------------------------------------------
# float64 finite-difference gradients
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("pool_size,strides,padding", POOL2D_CASES)
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pool2d_gradients(pool_size, strides, padding, kind):
    rng = np.random.default_rng(3)
    x = _distinct(rng, (2, 5, 6, 3))
    cls = layers.MaxPooling2D if kind == "max" else layers.AveragePooling2D
    check_layer_gradients(cls(pool_size, strides=strides, padding=padding, dtype="float64"),
                          x, rng)


@pytest.mark.parametrize("pool_size,strides,padding", POOL1D_CASES)
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pool1d_gradients(pool_size, strides, padding, kind):
    rng = np.random.default_rng(4)
    x = _distinct(rng, (2, 9, 3))
    cls = layers.MaxPooling1D if kind == "max" else layers.AveragePooling1D
    check_layer_gradients(cls(pool_size, strides=strides, padding=padding, dtype="float64"),
                          x, rng)


@pytest.mark.parametrize("name", ["GlobalMaxPooling2D", "GlobalAveragePooling2D",
                                  "GlobalMaxPooling1D", "GlobalAveragePooling1D"])
@pytest.mark.parametrize("keepdims", [False, True])
def test_global_pooling_gradients(name, keepdims):
    rng = np.random.default_rng(5)
    x = _distinct(rng, (2, 4, 5, 3) if name.endswith("2D") else (2, 6, 3))
    check_layer_gradients(getattr(layers, name)(keepdims=keepdims, dtype="float64"), x, rng)


@pytest.mark.parametrize("training", [False, True])
def test_max_pool_backward_after_either_forward_mode(training):
    """Backward after an inference forward (no indices kept) finds the maxima itself."""
    rng = np.random.default_rng(6)
    x = _distinct(rng, (2, 4, 4, 2))
    layer = layers.MaxPooling2D(2, dtype="float64")
    y = layer.forward(x, training=training)
    g = rng.normal(size=y.shape)
    dx = layer.backward(g)
    want = np.zeros_like(x)
    for n, oy, ox, c in itertools.product(range(2), range(2), range(2), range(2)):
        win = x[n, 2 * oy:2 * oy + 2, 2 * ox:2 * ox + 2, c]
        i, j = np.unravel_index(np.argmax(win), win.shape)
        want[n, 2 * oy + i, 2 * ox + j, c] = g[n, oy, ox, c]
    np.testing.assert_array_equal(dx, want)


def test_overlapping_max_windows_add_their_gradients():
    x = np.zeros((1, 1, 5, 1))
    x[0, 0, 2, 0] = 1.0        # the maximum of all three overlapping windows
    layer = layers.MaxPooling2D((1, 3), strides=1, dtype="float64")
    layer.forward(x, training=True)
    dx = layer.backward(np.array([1.0, 2.0, 3.0]).reshape(1, 1, 3, 1))
    np.testing.assert_array_equal(dx.ravel(), [0, 0, 6, 0, 0])


# ---------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("channels", [1, 5, 32, 33, 70])   # straddle the 32-channel block
def test_max_pool_kernel_values_and_indices(dtype, channels):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(2, 6, 6, channels)).astype(dtype)
    y = np.empty((2, 3, 3, channels), dtype)
    arg = np.empty(y.shape, np.int32)
    _k.max_pool_forward(x, y, arg, (2, 2), (2, 2), (0, 0))
    np.testing.assert_array_equal(y, ref_pool2d(x, (2, 2), (2, 2), "valid", "max").astype(dtype))
    flat = x.reshape(2, -1)
    np.testing.assert_array_equal(np.take_along_axis(flat, arg.reshape(2, -1), axis=1),
                                  y.reshape(2, -1))
    y2 = np.empty_like(y)
    _k.max_pool_forward(x, y2, None, (2, 2), (2, 2), (0, 0))
    np.testing.assert_array_equal(y2, y)


def test_pool_kernel_window_wholly_in_padding_gives_zero():
    x = np.ones((1, 2, 2, 1))
    y = np.full((1, 2, 2, 1), np.nan)
    arg = np.empty(y.shape, np.int32)
    _k.max_pool_forward(x, y, arg, (1, 1), (2, 2), (1, 1))   # only (1, 1) reaches the input
    np.testing.assert_array_equal(y[0, :, :, 0], [[0, 0], [0, 1]])
    np.testing.assert_array_equal(arg[0, :, :, 0], [[-1, -1], [-1, 3]])
    dx = np.full_like(x, np.nan)
    _k.max_pool_backward(np.ones_like(y), arg, dx)
    np.testing.assert_array_equal(dx[0, :, :, 0], [[0, 0], [0, 1]])
    _k.avg_pool_forward(x, y, (1, 1), (2, 2), (1, 1))
    np.testing.assert_array_equal(y[0, :, :, 0], [[0, 0], [0, 1]])


def test_pool_kernels_check_their_arguments():
    x = np.zeros((2, 4, 4, 3))
    y = np.zeros((2, 2, 2, 3))
    with pytest.raises(ValueError, match="must have 2 samples and 3 channels"):
        _k.max_pool_forward(x, np.zeros((2, 2, 2, 4)), None, (2, 2), (2, 2), (0, 0))
    with pytest.raises(ValueError, match="argmax must have the output's shape"):
        _k.max_pool_forward(x, y, np.zeros((2, 2, 1, 3), np.int32), (2, 2), (2, 2), (0, 0))
    with pytest.raises(ValueError, match="pool size must be positive"):
        _k.avg_pool_forward(x, y, (0, 2), (2, 2), (0, 0))
    with pytest.raises(ValueError, match="strides must be positive"):
        _k.avg_pool_backward(y, x, (2, 2), (2, -1), (0, 0))
    with pytest.raises(ValueError, match="padding must be non-negative"):
        _k.avg_pool_forward(x, y, (2, 2), (2, 2), (0, -1))
    bad = np.full(y.shape, 48, np.int32)   # one past the 4 * 4 * 3 values of a sample
    with pytest.raises(ValueError, match="indices outside the 48 values"):
        _k.max_pool_backward(y, bad, x)
    with pytest.raises(ValueError, match="argmax must have dy's shape"):
        _k.max_pool_backward(y, np.zeros((2, 2, 2, 2), np.int32), x)


# ---------------------------------------------------------------------------------------
# Threads
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [layers.MaxPooling2D, layers.AveragePooling2D,
                                 layers.GlobalMaxPooling2D, layers.GlobalAveragePooling2D])
def test_pooling_one_and_two_threads_agree(restore_threads, cls):
    rng = np.random.default_rng(8)
    x = rng.normal(size=(32, 16, 16, 24)).astype(np.float32)
    results = []
    for threads in (1, 2):
        cn.set_num_threads(threads)
        layer = cls() if cls.__name__.startswith("Global") else cls(3, strides=2, padding="same")
        y = layer.forward(x, training=True).copy()
        dx = layer.backward(np.ones_like(y)).copy()
        results.append((y, dx))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])


# ---------------------------------------------------------------------------------------
# Flatten, Reshape, ZeroPadding2D
# ---------------------------------------------------------------------------------------
def test_flatten_forward_backward():
    rng = np.random.default_rng(9)
    x = rng.normal(size=(3, 4, 5, 2))
    layer = layers.Flatten(dtype="float64")
    y = layer.forward(x)
    np.testing.assert_array_equal(y, x.reshape(3, -1))
    assert layer.compute_output_shape((4, 5, 2)) == (40,)
    g = rng.normal(size=y.shape)
    np.testing.assert_array_equal(layer.backward(g), g.reshape(x.shape))
    check_layer_gradients(layers.Flatten(dtype="float64"), x, rng)


def test_reshape_forward_backward():
    rng = np.random.default_rng(10)
    x = rng.normal(size=(3, 12))
    layer = layers.Reshape((2, -1, 3), dtype="float64")
    y = layer.forward(x)
    assert y.shape == (3, 2, 2, 3)
    np.testing.assert_array_equal(y, x.reshape(3, 2, 2, 3))
    assert layer.compute_output_shape((12,)) == (2, 2, 3)
    check_layer_gradients(layers.Reshape((4, 3), dtype="float64"), x, rng)


@pytest.mark.parametrize("padding,want", [
    (1, ((1, 1), (1, 1))), ((2, 0), ((2, 2), (0, 0))), (((0, 1), (2, 3)), ((0, 1), (2, 3))),
])
def test_zero_padding2d(padding, want):
    rng = np.random.default_rng(11)
    x = rng.normal(size=(2, 3, 4, 2))
    layer = layers.ZeroPadding2D(padding, dtype="float64")
    assert layer.padding == want
    for _ in range(2):   # the second call reuses the buffer: the border must stay zero
        y = layer.forward(x)
        np.testing.assert_array_equal(y, np.pad(x, ((0, 0),) + want + ((0, 0),)))
        x = x + 1
    check_layer_gradients(layers.ZeroPadding2D(padding, dtype="float64"), x, rng)


def test_zero_padding_then_valid_conv_equals_same_conv():
    rng = np.random.default_rng(12)
    x = rng.normal(size=(2, 6, 6, 2))
    same = layers.Conv2D(3, 3, padding="same", dtype="float64")
    valid = layers.Conv2D(3, 3, padding="valid", dtype="float64")
    same.forward(x)
    valid.forward(np.zeros((1, 8, 8, 2)))
    valid.set_weights(same.get_weights())
    padded = layers.ZeroPadding2D(1, dtype="float64").forward(x)
    np.testing.assert_allclose(valid.forward(padded), same.forward(x), rtol=1e-13)


# ---------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,match", [
    ({"pool_size": 0}, "pool_size must be"),
    ({"pool_size": (2, 2, 2)}, "pool_size must be"),
    ({"pool_size": 2, "strides": 0}, "strides must be"),
    ({"pool_size": 2, "strides": (1, -1)}, "strides must be"),
    ({"pool_size": 2, "padding": "causal"}, "padding must be one of"),
    ({"pool_size": 2, "padding": "full"}, "padding must be one of"),
])
@pytest.mark.parametrize("cls", [layers.MaxPooling2D, layers.AveragePooling2D])
def test_pool2d_bad_arguments(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


def test_pool1d_bad_arguments():
    with pytest.raises(ValueError, match="pool_size must be a positive int"):
        layers.MaxPooling1D((2, 2))
    with pytest.raises(ValueError, match="strides must be a positive int"):
        layers.AveragePooling1D(2, strides=0)


def test_pooling_wrong_rank_and_channels():
    with pytest.raises(ValueError, match="expects 4-D input x"):
        layers.MaxPooling2D().forward(np.zeros((2, 8, 8)))
    with pytest.raises(ValueError, match="expects 3-D input x"):
        layers.GlobalAveragePooling1D().forward(np.zeros((2, 8, 8, 1)))
    with pytest.raises(ValueError, match="expects 4-D input x"):
        cn.Sequential([layers.GlobalMaxPooling2D()]).build((8, 3))
    layer = layers.AveragePooling2D()
    layer.forward(np.zeros((1, 4, 4, 3)))
    with pytest.raises(ValueError, match="built for inputs with 3 channels"):
        layer.forward(np.zeros((1, 4, 4, 2)))


def test_pool_larger_than_input():
    with pytest.raises(ValueError, match="pool_size 3 is larger than the input's 2 positions "
                                         "along width with padding 'valid'"):
        layers.MaxPooling2D(3).forward(np.zeros((1, 5, 2, 1)))
    with pytest.raises(ValueError, match="pool_size 4 is larger .* along steps"):
        layers.AveragePooling1D(4).forward(np.zeros((1, 3, 1)))
    assert layers.MaxPooling2D(3, padding="same").forward(np.zeros((1, 2, 2, 1))).shape == \
        (1, 1, 1, 1)


def test_reshaping_bad_arguments():
    with pytest.raises(ValueError, match="target_shape must be"):
        layers.Reshape((2, -1, -1))
    with pytest.raises(ValueError, match="target_shape must be"):
        layers.Reshape(5)
    with pytest.raises(ValueError, match="target_shape must be"):
        layers.Reshape((0, 2))
    with pytest.raises(ValueError, match=r"target_shape \(5,\) holds 5 values"):
        layers.Reshape((5,)).forward(np.zeros((2, 6)))
    with pytest.raises(ValueError, match="cannot reshape"):
        layers.Reshape((4, -1)).forward(np.zeros((2, 6)))
    for bad in (-1, (1, 2, 3), ((1, 2), 3), "1", ((1, -1), (0, 0))):
        with pytest.raises(ValueError, match="padding must be"):
            layers.ZeroPadding2D(bad)
    with pytest.raises(ValueError, match="expects 4-D input x"):
        layers.ZeroPadding2D(1).forward(np.zeros((2, 3, 3)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("window", [(2, 2), (1, 3), (3, 2)])
def test_max_pool_backward_tiled_pass_matches_scatter(dtype, window):
    rng = np.random.default_rng(13)
    x = rng.normal(size=(3, 6, 6, 37)).astype(dtype)
    out = (6 // window[0], 6 // window[1])
    y = np.empty((3,) + out + (37,), dtype)
    arg = np.empty(y.shape, np.int32)
    _k.max_pool_forward(x, y, arg, window, window, (0, 0))
    dy = rng.normal(size=y.shape).astype(dtype)
    scattered, gathered = np.full_like(x, np.nan), np.full_like(x, np.nan)
    _k.max_pool_backward(dy, arg, scattered)
    _k.max_pool_backward(dy, arg, gathered, window)
    np.testing.assert_array_equal(gathered, scattered)
    with pytest.raises(ValueError, match="do not cover dx's 7x6 positions exactly"):
        _k.max_pool_backward(dy, arg, np.empty((3, 7, 6, 37), dtype), window)
