"""Property-based tests of the GEMM (hypothesis) against numpy in float64.

ops.matmul over every trans_a / trans_b / bias / activation / out combination, and the
kernel's own options (accumulate, b_sums, act_out), with shapes 0..300 (0, 1 and the
block edges favoured), operands C- or Fortran-ordered, strided, with negative strides,
float32 / float64, on every SIMD path this CPU supports and on 1 and 2 threads.
The error bound is the classical one for a dot product: |C - ref| <= c K eps (|A| |B|).
Profiles (tests/conftest.py): "ci" by default, HYPOTHESIS_PROFILE=long for release checks.
"""
import contextlib
import math

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, strategies as st  # noqa: E402

import cyneuron as cn  # noqa: E402
from cyneuron import _config  # noqa: E402
from cyneuron._kernels import gemm as _gemm  # noqa: E402

EDGES = [0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 23, 24, 25, 31, 32, 33, 47, 48, 49, 63, 64,
         65, 127, 128, 129, 255, 256, 257, 299, 300]
dims = st.one_of(st.sampled_from(EDGES), st.integers(0, 300))
ISAS = list(_config.supported_isas())


@contextlib.contextmanager
def running_on(isa, threads):
    before_isa, before_threads = _gemm.get_isa(), cn.get_num_threads()
    _gemm.set_isa(isa)
    cn.set_num_threads(threads)
    try:
        yield
    finally:
        _gemm.set_isa(before_isa)
        cn.set_num_threads(before_threads)


@st.composite
def stored(draw, rows, cols, dtype):
    """A (rows, cols) array of `dtype` in a drawn memory layout."""
    layout = draw(st.sampled_from(["C", "F", "strided", "negative", "negative_rows",
                                   "strided_negative", "transposed_view"]))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    scale = draw(st.sampled_from([1.0, 1.0, 1e-3, 1e3]))

    def base(r, c):
        return (rng.standard_normal((r, c)) * scale).astype(dtype)

    if layout == "C":
        return base(rows, cols)
    if layout == "F":
        return np.asfortranarray(base(rows, cols))
    if layout == "transposed_view":
        return base(cols, rows).T
    sr, sc = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    big = base(max(rows * sr, 1), max(cols * sc, 1))
    if layout == "strided":
        return big[::sr, ::sc][:rows, :cols]
    if layout == "negative":
        return big[::-sr, ::-sc][:rows, :cols]
    if layout == "negative_rows":
        return big[::-sr, :][:rows, :cols]
    return big[::sr, ::-sc][:rows, :cols]


# float64 references of the epilogue activations, and their Lipschitz constants
def _sigmoid(x):
    return 0.5 * (1 + np.tanh(0.5 * x))


_ERF = np.vectorize(math.erf, otypes=[float])
REFERENCE = {
    None: (lambda z: z, 1.0),
    "linear": (lambda z: z, 1.0),
    "relu": (lambda z: np.maximum(z, 0), 1.0),
    "sigmoid": (_sigmoid, 0.25),
    "tanh": (np.tanh, 1.0),
    "gelu": (lambda z: 0.5 * z * (1 + _ERF(z / math.sqrt(2))), 1.13),
    "gelu_tanh": (lambda z: z * _sigmoid(2 * math.sqrt(2 / math.pi) * (z + 0.044715 * z ** 3)),
                  1.13),
    "swish": (lambda z: z * _sigmoid(z), 1.1),
    "softplus": (lambda z: np.logaddexp(0, z), 1.0),
    "leaky_relu": (lambda z: np.where(z > 0, z, 0.2 * z), 1.0),
    "elu": (lambda z: np.where(z > 0, z, np.expm1(np.minimum(z, 0))), 1.0),
    "selu": (lambda z: 1.0507009873554805 * np.where(z > 0, z, 1.6732632423543772
                                                     * np.expm1(np.minimum(z, 0))), 1.76),
    "mish": (lambda z: z * np.tanh(np.logaddexp(0, z)), 1.1),
    "hard_sigmoid": (lambda z: np.clip(z / 6 + 0.5, 0, 1), 1 / 6),
}


def _check_close(got, ref, bound, lipschitz, dtype):
    eps = np.finfo(dtype).eps
    tol = lipschitz * bound + 64 * eps * np.abs(ref) + 4 * np.finfo(dtype).tiny
    err = np.abs(got.astype(np.float64) - ref)
    worst = np.unravel_index(np.argmax(err - tol), err.shape) if err.size else None
    assert np.all(err <= tol), (f"max excess {np.max(err - tol):.3g} at {worst}: got "
                                f"{got[worst]!r}, expected {ref[worst]!r} (tol {tol[worst]:.3g})")


@given(data=st.data(), m=dims, n=dims, k=dims,
       dtype=st.sampled_from([np.float32, np.float64]),
       trans_a=st.booleans(), trans_b=st.booleans(), use_bias=st.booleans(),
       activation=st.sampled_from(list(REFERENCE)),
       out_kind=st.sampled_from(["new", "out", "out_aliases_a"]),
       isa=st.sampled_from(ISAS), threads=st.sampled_from([1, 2]))
def test_matmul_matches_numpy(data, m, n, k, dtype, trans_a, trans_b, use_bias, activation,
                              out_kind, isa, threads):
    a_st = data.draw(stored(k, m, dtype) if trans_a else stored(m, k, dtype), label="a")
    b_st = data.draw(stored(n, k, dtype) if trans_b else stored(k, n, dtype), label="b")
    a = a_st.T if trans_a else a_st
    b = b_st.T if trans_b else b_st
    bias = (np.random.default_rng(m * 7 + n).standard_normal(n).astype(dtype)
            if use_bias else None)
    a_copy, b_copy = a_st.copy(), b_st.copy()
    out = None
    if out_kind == "out":
        out = np.full((m, n), np.nan, dtype)
    elif out_kind == "out_aliases_a" and a_st.shape == (m, n) and a_st.flags.c_contiguous \
            and not trans_a and k == n:
        out = a_st          # the result overwrites an operand: must still be right

    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    lin = a64 @ b64 + (bias.astype(np.float64) if use_bias else 0.0)
    bound = (k + 4) * np.finfo(dtype).eps * (np.abs(a64) @ np.abs(b64)
                                             + (np.abs(bias) if use_bias else 0.0))
    fn, lipschitz = REFERENCE[activation]
    with np.errstate(over="ignore", invalid="ignore"):
        ref = fn(lin)
    with running_on(isa, threads):
        got = cn.ops.matmul(a_st, b_st, trans_a=trans_a, trans_b=trans_b, bias=bias,
                            activation=activation, out=out)
    assert got.shape == (m, n) and got.dtype == dtype
    assert got.flags.c_contiguous
    if out is not None:
        assert got is out
    if out is not a_st:
        np.testing.assert_array_equal(a_st, a_copy)          # inputs untouched
    np.testing.assert_array_equal(b_st, b_copy)
    _check_close(got, ref, bound, lipschitz, dtype)


# The kernel's own options: accumulate, b_sums, act_out (the fused backward epilogue).
GRAD_FROM_Y = {
    "linear": lambda y: np.ones_like(y),
    "relu": lambda y: (y > 0).astype(float),
    "leaky_relu": lambda y: np.where(y > 0, 1.0, 0.2),
    "elu": lambda y: np.where(y > 0, 1.0, y + 1.0),
    "sigmoid": lambda y: y * (1 - y),
    "tanh": lambda y: 1 - y * y,
    "softplus": lambda y: -np.expm1(-y),
}


@given(data=st.data(), m=dims, n=dims, k=dims.filter(lambda v: v > 0),
       dtype=st.sampled_from([np.float32, np.float64]),
       mode=st.sampled_from(["accumulate", "b_sums", "act_out"]),
       grad_act=st.sampled_from(list(GRAD_FROM_Y)),
       isa=st.sampled_from(ISAS), threads=st.sampled_from([1, 2]))
def test_gemm_kernel_options_match_numpy(data, m, n, k, dtype, mode, grad_act, isa, threads):
    a = data.draw(stored(m, k, dtype), label="a")
    b = data.draw(stored(k, n, dtype), label="b")
    rng = np.random.default_rng(m + 1000 * n + 10 ** 6 * k)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    prod = a64 @ b64
    bound = (k + 4) * np.finfo(dtype).eps * (np.abs(a64) @ np.abs(b64))
    c = np.empty((m, n), dtype)
    with running_on(isa, threads):
        if mode == "accumulate":
            c0 = rng.standard_normal((m, n)).astype(dtype)
            c[...] = c0
            _gemm.gemm(a, b, c, accumulate=True)
            _check_close(c, prod + c0, bound + np.finfo(dtype).eps * np.abs(c0), 1.0, dtype)
        elif mode == "b_sums":
            sums = np.full(n, np.nan, dtype)
            _gemm.gemm(a, b, c, b_sums=sums)
            _check_close(c, prod, bound, 1.0, dtype)
            _check_close(sums, b64.sum(axis=0),
                         (k + 4) * np.finfo(dtype).eps * np.abs(b64).sum(axis=0), 1.0, dtype)
        else:
            forward, _ = REFERENCE[grad_act]
            y = forward(rng.standard_normal((m, n)) * 2).astype(dtype)
            deriv = GRAD_FROM_Y[grad_act](y.astype(np.float64))
            _gemm.gemm(a, b, c, activation=_gemm.EPILOGUES[grad_act],
                       alpha=0.2 if grad_act == "leaky_relu" else 1.0, act_out=y)
            _check_close(c, prod * deriv, bound * np.abs(deriv)
                         + 8 * np.finfo(dtype).eps * np.abs(prod), 1.0, dtype)


@given(m=dims, n=dims, k=dims.filter(lambda v: v > 0), dtype=st.sampled_from([np.float32, np.float64]),
       data=st.data())
def test_every_isa_and_thread_count_agree(m, n, k, dtype, data):
    """Each SIMD path and thread count gives the same answer within the error bound."""
    a = data.draw(stored(m, k, dtype), label="a")
    b = data.draw(stored(k, n, dtype), label="b")
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    bound = (k + 4) * np.finfo(dtype).eps * (np.abs(a64) @ np.abs(b64))
    results = []
    for isa in ISAS:
        for threads in (1, 2):
            with running_on(isa, threads):
                results.append(cn.ops.matmul(a, b))
    for r in results[1:]:
        _check_close(r, results[0].astype(np.float64), 2 * bound, 1.0, dtype)


def test_empty_operands_never_count_as_overlapping():
    # hypothesis finding (HYPOTHESIS_PROFILE=long): with M = 0, c's "extent" reached one
    # row stride before its pointer, so a b_sums buffer allocated just there was refused
    # ("b_sums must not share memory"), depending on where malloc put it
    block = np.zeros(64)
    b_sums = block[:4]
    a = np.ones((0, 3))
    b = np.arange(12.0).reshape(3, 4)
    c = np.ndarray((0, 4), np.float64, buffer=block, offset=4 * 8)   # right after b_sums
    _gemm.gemm(a, b, c, b_sums=b_sums)
    np.testing.assert_array_equal(b_sums, b.sum(axis=0))
    assert not np.shares_memory(b_sums, c)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_misaligned_operands_are_copied_not_misread(dtype):
    # Found by the sanitizer build (UBSan: "load of misaligned address ... for type
    # 'const float'" in the micro-kernel): a data pointer off its item alignment reached
    # the C kernels, undefined behaviour that an aligned vector load turns into a crash.
    # The kernel now refuses it; ops.matmul copies it (operands, bias and out).
    rng = np.random.default_rng(0)

    def misaligned(shape):
        buf = np.zeros(int(np.prod(shape)) * np.dtype(dtype).itemsize + 1, np.uint8)
        x = np.ndarray(shape, dtype=dtype, buffer=buf, offset=1)
        x[...] = rng.standard_normal(shape)
        assert not x.flags.aligned
        return x

    a, b, bias, out = misaligned((5, 6)), misaligned((6, 4)), misaligned((4,)), misaligned((5, 4))
    ref = a.astype(np.float64) @ b.astype(np.float64) + bias
    got = cn.ops.matmul(a, b, bias=bias, out=out)
    assert got is out
    np.testing.assert_allclose(out, ref, rtol=1e-5 if dtype == np.float32 else 1e-12)
    with pytest.raises(ValueError, match="not aligned"):
        _gemm.gemm(a, np.ascontiguousarray(b), np.empty((5, 4), dtype))


def test_model_accepts_misaligned_input():
    rng = np.random.default_rng(1)
    buf = np.zeros(8 * 3 * 4 + 1, np.uint8)
    x = np.ndarray((8, 3), dtype=np.float32, buffer=buf, offset=1)
    x[...] = rng.standard_normal((8, 3))
    model = cn.Sequential([cn.layers.Dense(4, activation="relu"), cn.layers.Dense(2)])
    np.testing.assert_allclose(model.predict(x), model.predict(np.array(x)), rtol=1e-6)
