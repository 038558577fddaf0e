"""Property-based tests (hypothesis): convolution, pooling and recurrent forward passes
against plain numpy references (direct loops, TensorFlow's padding rules, Keras's gate
conventions) on random small shapes, float32 and float64, 1 and 2 threads.
Profiles (tests/conftest.py): "ci" by default, HYPOTHESIS_PROFILE=long for release checks.
"""
import contextlib

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import assume, given, strategies as st  # noqa: E402

import cyneuron as cn  # noqa: E402
from cyneuron import layers  # noqa: E402

dtypes = st.sampled_from([np.float32, np.float64])
threads = st.sampled_from([1, 2])


@contextlib.contextmanager
def on_threads(n):
    before = cn.get_num_threads()
    cn.set_num_threads(n)
    try:
        yield
    finally:
        cn.set_num_threads(before)


def _tol(dtype, terms):
    return dict(rtol=(1e-4 if dtype == np.float32 else 1e-11),
                atol=(1e-5 if dtype == np.float32 else 1e-12) * max(terms, 1))


def _out_and_pad(size, window, stride, dilation, padding):
    span = (window - 1) * dilation + 1
    if padding == "same":
        out = -(-size // stride)
        return out, max((out - 1) * stride + span - size, 0) // 2
    if padding == "causal":
        return -(-size // stride), span - 1
    return (size - span) // stride + 1, 0


# -- convolution ----------------------------------------------------------------------------
def conv_nd_reference(x, kernel, bias, strides, dilation, padding):
    """Direct loops over output positions; x (N, *spatial, C), kernel (*window, C, F)."""
    spatial = x.shape[1:-1]
    window = kernel.shape[:-2]
    outs, pads = zip(*(_out_and_pad(s, k, st_, d, padding)
                       for s, k, st_, d in zip(spatial, window, strides, dilation)))
    y = np.zeros((x.shape[0],) + tuple(outs) + (kernel.shape[-1],))
    for pos in np.ndindex(*outs):
        for tap in np.ndindex(*window):
            idx = [p * s - pad + t * d for p, s, pad, t, d in zip(pos, strides, pads, tap, dilation)]
            if all(0 <= i < n for i, n in zip(idx, spatial)):
                y[(slice(None),) + pos] += x[(slice(None),) + tuple(idx)] @ kernel[tap]
    return y + bias


@given(data=st.data(), dtype=dtypes, n_threads=threads, rank=st.sampled_from([1, 2]),
       padding=st.sampled_from(["valid", "same", "causal"]), algorithm=st.sampled_from(
           ["auto", "im2col", "winograd"]))
def test_conv_forward_matches_direct_loops(data, dtype, n_threads, rank, padding, algorithm):
    if padding == "causal":
        assume(rank == 1)
    n = data.draw(st.integers(1, 3), label="n")
    c_in = data.draw(st.integers(1, 4), label="c_in")
    filters = data.draw(st.integers(1, 5), label="filters")
    window = tuple(data.draw(st.integers(1, 4), label="k") for _ in range(rank))
    if data.draw(st.booleans(), label="dilated"):
        dilation, strides = tuple(data.draw(st.integers(1, 3)) for _ in range(rank)), (1,) * rank
    else:
        strides, dilation = tuple(data.draw(st.integers(1, 3)) for _ in range(rank)), (1,) * rank
    spans = [(k - 1) * d + 1 for k, d in zip(window, dilation)]
    spatial = tuple(data.draw(st.integers(span if padding == "valid" else 1, 12), label="size")
                    for span in spans)
    if algorithm == "winograd":
        assume(rank == 2 and window == (3, 3) and strides == (1, 1) and dilation == (1, 1))
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 32 - 1), label="seed"))
    x = rng.standard_normal((n,) + spatial + (c_in,)).astype(dtype)
    kernel = rng.standard_normal(window + (c_in, filters)).astype(dtype)
    bias = rng.standard_normal(filters).astype(dtype)
    cls = layers.Conv2D if rank == 2 else layers.Conv1D
    layer = cls(filters, window if rank == 2 else window[0],
                strides=strides if rank == 2 else strides[0], padding=padding,
                dilation_rate=dilation if rank == 2 else dilation[0], dtype=dtype)
    layer.build(x.shape[1:])
    layer.set_weights([kernel, bias])
    if rank == 2 and algorithm != "auto":
        layer.algorithm = algorithm
    ref = conv_nd_reference(x.astype(np.float64), kernel.astype(np.float64),
                            bias.astype(np.float64), strides, dilation, padding)
    with on_threads(n_threads):
        got = layer.forward(x, training=False)
    assert got.shape == ref.shape and got.dtype == dtype
    np.testing.assert_allclose(got, ref, **_tol(dtype, int(np.prod(window)) * c_in))


# -- pooling ----------------------------------------------------------------------------------
def pool_reference(x, pool, strides, padding, kind):
    spatial = x.shape[1:-1]
    outs, pads = zip(*(_out_and_pad(s, p, st_, 1, padding)
                       for s, p, st_ in zip(spatial, pool, strides)))
    y = np.empty((x.shape[0],) + tuple(outs) + (x.shape[-1],))
    for pos in np.ndindex(*outs):
        sl = []
        for p, s, pad, k, size in zip(pos, strides, pads, pool, spatial):
            lo = p * s - pad
            sl.append(slice(max(lo, 0), min(lo + k, size)))      # padding never pooled
        window = x[(slice(None),) + tuple(sl)]
        axes = tuple(range(1, 1 + len(spatial)))
        y[(slice(None),) + pos] = window.max(axis=axes) if kind == "max" else window.mean(axis=axes)
    return y


@given(data=st.data(), dtype=dtypes, n_threads=threads, rank=st.sampled_from([1, 2]),
       kind=st.sampled_from(["max", "average"]), padding=st.sampled_from(["valid", "same"]))
def test_pooling_forward_matches_direct_loops(data, dtype, n_threads, rank, kind, padding):
    n, c = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 5))
    pool = tuple(data.draw(st.integers(1, 4), label="pool") for _ in range(rank))
    strides = tuple(data.draw(st.integers(1, 4), label="stride") for _ in range(rank))
    spatial = tuple(data.draw(st.integers(p if padding == "valid" else 1, 11), label="size")
                    for p in pool)
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 32 - 1), label="seed"))
    x = rng.standard_normal((n,) + spatial + (c,)).astype(dtype)
    name = ("MaxPooling" if kind == "max" else "AveragePooling") + f"{rank}D"
    layer = getattr(layers, name)(pool if rank == 2 else pool[0],
                                  strides=strides if rank == 2 else strides[0], padding=padding,
                                  dtype=dtype)
    ref = pool_reference(x.astype(np.float64), pool, strides, padding, kind)
    with on_threads(n_threads):
        got = layer.forward(x, training=data.draw(st.booleans(), label="training"))
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, **_tol(dtype, 1))
    glob = getattr(layers, ("GlobalMaxPooling" if kind == "max" else "GlobalAveragePooling")
                   + f"{rank}D")(dtype=dtype)
    axes = tuple(range(1, 1 + rank))
    gref = x.astype(np.float64).max(axis=axes) if kind == "max" else \
        x.astype(np.float64).mean(axis=axes)
    with on_threads(n_threads):
        np.testing.assert_allclose(glob.forward(x), gref, **_tol(dtype, 1))


# -- recurrent --------------------------------------------------------------------------------
def _sig(v):
    return 0.5 * (1 + np.tanh(0.5 * v))


def rnn_reference(kind, x, weights, units, go_backwards):
    n, t_len, _ = x.shape
    h = np.zeros((n, units))
    c = np.zeros((n, units))
    outs = []
    steps = range(t_len - 1, -1, -1) if go_backwards else range(t_len)
    for t in steps:
        xt = x[:, t]
        if kind == "SimpleRNN":
            w, u, b = weights
            h = np.tanh(xt @ w + h @ u + b)
        elif kind == "LSTM":
            w, u, b = weights
            z = xt @ w + h @ u + b
            i, f, g, o = (z[:, k * units:(k + 1) * units] for k in range(4))
            c = _sig(f) * c + _sig(i) * np.tanh(g)
            h = _sig(o) * np.tanh(c)
        else:   # GRU, reset_after=True, gates z, r, h; bias (2, 3H): input and recurrent
            w, u, b = weights
            xz = xt @ w + b[0]
            hz = h @ u + b[1]
            zg = _sig(xz[:, :units] + hz[:, :units])
            rg = _sig(xz[:, units:2 * units] + hz[:, units:2 * units])
            hh = np.tanh(xz[:, 2 * units:] + rg * hz[:, 2 * units:])
            h = zg * h + (1 - zg) * hh
        outs.append(h)
    return np.stack(outs, axis=1), h


@given(data=st.data(), dtype=dtypes, n_threads=threads,
       kind=st.sampled_from(["SimpleRNN", "LSTM", "GRU"]), return_sequences=st.booleans(),
       go_backwards=st.booleans())
def test_recurrent_forward_matches_reference(data, dtype, n_threads, kind, return_sequences,
                                             go_backwards):
    n, t_len = data.draw(st.integers(1, 5), label="n"), data.draw(st.integers(1, 7), label="T")
    features, units = data.draw(st.integers(1, 6), label="F"), data.draw(st.integers(1, 9), label="H")
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 32 - 1), label="seed"))
    x = rng.standard_normal((n, t_len, features)).astype(dtype)
    layer = getattr(layers, kind)(units, return_sequences=return_sequences,
                                  go_backwards=go_backwards, dtype=dtype)
    layer.build(x.shape[1:])
    weights = [(rng.standard_normal(w.shape) * 0.5).astype(dtype) for w in layer.get_weights()]
    layer.set_weights(weights)
    seq, last = rnn_reference(kind, x.astype(np.float64), [w.astype(np.float64) for w in weights],
                              units, go_backwards)
    with on_threads(n_threads):
        got = layer.forward(x, training=data.draw(st.booleans(), label="training"))
    ref = seq if return_sequences else last
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, **_tol(dtype, t_len * (features + units)))
