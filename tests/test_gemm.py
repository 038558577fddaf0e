"""cn.ops.matmul against a float64 numpy reference.

Shapes are built from the block sizes of the SIMD path in use, so every edge of
the register block (MR, NR) and of the cache blocks (MC, KC, NC) is straddled;
every supported path runs in-process (set_isa) and in a fresh interpreter
(CYNEURON_ISA), on 1 and 2 threads, for all four transpose combinations.
"""
import json
import os
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest

import cyneuron as cn
from cyneuron import _config
from cyneuron._kernels import gemm as _gemm

DTYPES = [np.float32, np.float64]
TRANSPOSES = [(False, False), (True, False), (False, True), (True, True)]
TRANS_IDS = ["nn", "tn", "nt", "tt"]
ALL_ISAS = ("generic", "avx2", "avx512")  # every SIMD path the library knows
SRC_DIR = str(Path(cn.__file__).resolve().parent.parent)


# --------------------------------------------------------------------------- helpers

def _operands(rng, m, n, k, dtype, trans_a=False, trans_b=False):
    """Arrays a, b such that op(a) is (m, k) and op(b) is (k, n)."""
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
    return a, b


def _op(x, trans):
    x = np.asarray(x, dtype=np.float64)
    return x.T if trans else x


def _gemm_bound(a64, b64, dtype):
    """Rigorous forward-error bound of a K-term dot product, elementwise: 2K eps |A||B|."""
    k = a64.shape[1]
    eps = np.finfo(dtype).eps
    return 2 * max(k, 1) * eps * (np.abs(a64) @ np.abs(b64))


def assert_matmul_close(got, a, b, trans_a=False, trans_b=False, dtype=None, what=""):
    a64, b64 = _op(a, trans_a), _op(b, trans_b)
    expected = a64 @ b64
    dtype = got.dtype if dtype is None else np.dtype(dtype)
    assert got.dtype == dtype, f"{what}: dtype {got.dtype}, expected {dtype}"
    assert got.shape == expected.shape, f"{what}: shape {got.shape}, expected {expected.shape}"
    err = np.abs(got.astype(np.float64) - expected)
    bound = _gemm_bound(a64, b64, dtype)
    bad = ~(err <= bound)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise AssertionError(
            f"{what}: {bad.sum()} of {bad.size} entries wrong; first at ({i}, {j}): "
            f"got {got[i, j]!r}, expected {expected[i, j]!r} (|err| {err[i, j]:.3g} > "
            f"bound {bound[i, j]:.3g}); max err {np.nanmax(err):.3g}")


def edge_shapes(dtype):
    """(M, N, K) straddling every block edge of the current path for `dtype`."""
    mr, nr, mc, kc, nc = _gemm.block_sizes(np.dtype(dtype).name)
    shapes = [(1, 1, 1), (2, 3, 5), (7, 11, 13), (1, 17, 1), (17, 1, 3), (31, 29, 37)]
    for m in (1, mr - 1, mr, mr + 1, 2 * mr - 1, 2 * mr + 1):
        shapes.append((m, nr + 1, 7))
    for n in (1, nr - 1, nr, nr + 1, 2 * nr - 1, 2 * nr + 1):
        shapes.append((mr + 1, n, 7))
    for m in (mc - 1, mc, mc + 1):
        shapes.append((m, nr - 1, 11))
    for k in (1, 2, kc - 1, kc, kc + 1, 2 * kc, 2 * kc + 1):
        shapes.append((mr + 1, nr + 1, k))
    # N across the NC block (M and K small: cheap), the second one also big enough
    # (>= 2**20 multiply-adds) to take the parallel path.
    shapes += [(3, nc - 1, 5), (3, nc, 5), (3, nc + 1, 5), (16, nc + nr + 1, 17),
               (3, nc + 1, kc + 1)]
    # Every edge at once, in the parallel regime.
    shapes += [(mc + 1, 2 * nr + 3, kc + 1), (2 * mc + 5, 3 * nr + 1, 2 * kc + 3)]
    shapes = [tuple(max(1, d) for d in s) for s in shapes]
    return list(dict.fromkeys(shapes))


# --------------------------------------------------------------------------- shapes, paths, threads

@pytest.mark.parametrize("trans", TRANSPOSES, ids=TRANS_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_block_edges_every_path(isa, kernel_threads, dtype, trans):
    assert cn.get_isa() == isa
    trans_a, trans_b = trans
    rng = np.random.default_rng(zlib.crc32(repr((isa, kernel_threads, np.dtype(dtype).name, trans)).encode()))
    for m, n, k in edge_shapes(dtype):
        a, b = _operands(rng, m, n, k, dtype, trans_a, trans_b)
        got = cn.ops.matmul(a, b, trans_a=trans_a, trans_b=trans_b)
        assert_matmul_close(got, a, b, trans_a, trans_b, dtype,
                            what=f"{isa}/{kernel_threads} threads/{np.dtype(dtype).name} "
                                 f"(M, N, K)={(m, n, k)} trans={trans}")


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_random_shapes_including_primes(isa, kernel_threads, dtype):
    rng = np.random.default_rng(12345)
    primes = [1, 2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71,
              73, 79, 83, 89, 97, 101, 127, 131, 257, 263]
    for _ in range(20):
        m, n, k = rng.choice(primes, 3)
        trans_a, trans_b = bool(rng.integers(2)), bool(rng.integers(2))
        a, b = _operands(rng, m, n, k, dtype, trans_a, trans_b)
        got = cn.ops.matmul(a, b, trans_a=trans_a, trans_b=trans_b)
        assert_matmul_close(got, a, b, trans_a, trans_b, dtype,
                            what=f"{isa} {(m, n, k)} trans=({trans_a}, {trans_b})")


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_paths_and_thread_counts_agree(dtype, restore_threads):
    """Every supported path, on 1 and 2 threads, gives the same product within tolerance."""
    rng = np.random.default_rng(7)
    m, n, k = 150, 70, 300  # > 2**20 multiply-adds: parallel with 2 threads
    a, b = _operands(rng, m, n, k, dtype)
    bound = _gemm_bound(a.astype(np.float64), b.astype(np.float64), dtype)
    before = _gemm.get_isa()
    results = {}
    try:
        for name in _config.supported_isas():
            _gemm.set_isa(name)
            for threads in (1, 2):
                cn.set_num_threads(threads)
                results[(name, threads)] = cn.ops.matmul(a, b).astype(np.float64)
    finally:
        _gemm.set_isa(before)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    for key, c in results.items():
        assert np.all(np.abs(c - ref) <= bound), key
    first = next(iter(results.values()))
    for key, c in results.items():
        assert np.all(np.abs(c - first) <= 2 * bound), key


def test_set_isa_rejects_unknown_and_unsupported():
    before = _gemm.get_isa()
    with pytest.raises(ValueError, match="isa"):
        _gemm.set_isa("sse9")
    for name in ALL_ISAS:
        if name not in _config.supported_isas():
            with pytest.raises(ValueError, match="not supported"):
                _gemm.set_isa(name)
    assert _gemm.get_isa() == before


def test_default_isa_is_the_best_supported():
    supported = _config.supported_isas()
    assert supported[0] == "generic"
    assert set(supported) <= set(ALL_ISAS)
    if os.environ.get("CYNEURON_ISA", "").strip():
        pytest.skip("CYNEURON_ISA is set for this test run")
    assert cn.get_isa() == supported[-1]


# --------------------------------------------------------------------------- CYNEURON_ISA (subprocess)

_CHILD = textwrap.dedent("""
    import json, warnings
    import numpy as np
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import cyneuron as cn
    from cyneuron import _config
    rng = np.random.default_rng(0)
    max_rel = 0.0
    for dtype in (np.float32, np.float64):
        for (m, n, k) in [(1, 1, 1), (7, 17, 257), (13, 33, 5), (145, 40, 100)]:
            for ta in (False, True):
                for tb in (False, True):
                    a = rng.standard_normal((k, m) if ta else (m, k)).astype(dtype)
                    b = rng.standard_normal((n, k) if tb else (k, n)).astype(dtype)
                    c = cn.ops.matmul(a, b, trans_a=ta, trans_b=tb)
                    A = a.astype(np.float64).T if ta else a.astype(np.float64)
                    B = b.astype(np.float64).T if tb else b.astype(np.float64)
                    assert c.dtype == dtype, c.dtype
                    scale = np.abs(A) @ np.abs(B)
                    rel = np.max(np.abs(c - A @ B) / scale / (k * np.finfo(dtype).eps))
                    max_rel = max(max_rel, float(rel))
    print(json.dumps({
        "isa": cn.get_isa(),
        "supported": list(_config.supported_isas()),
        "warnings": [[w.category.__name__, str(w.message)] for w in caught],
        "max_rel_err_over_k_eps": max_rel,
    }))
""")


def _run_child(isa_value):
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC_DIR + os.pathsep + env.get("PYTHONPATH", "")
    if isa_value is None:
        env.pop("CYNEURON_ISA", None)
    else:
        env["CYNEURON_ISA"] = isa_value
    proc = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, f"child failed (rc {proc.returncode}):\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", ALL_ISAS)
def test_cyneuron_isa_env_selects_path(name):
    if name not in _config.supported_isas():
        pytest.skip(f"the {name!r} SIMD path is not supported by this CPU "
                    f"(supported: {', '.join(_config.supported_isas())})")
    result = _run_child(name)
    assert result["isa"] == name
    assert result["warnings"] == []
    assert result["max_rel_err_over_k_eps"] <= 2.0


def test_cyneuron_isa_env_is_case_and_space_insensitive():
    result = _run_child("  GENERIC ")
    assert result["isa"] == "generic"
    assert result["warnings"] == []


def test_cyneuron_isa_env_unset_or_empty_uses_best():
    for value in (None, ""):
        result = _run_child(value)
        assert result["isa"] == result["supported"][-1]
        assert result["warnings"] == []


def _unusable_isa_values():
    values = [pytest.param(n, id=f"unsupported-{n}") for n in ALL_ISAS]
    values += [pytest.param(v, id=f"unknown-{v}") for v in ("sse9", "avx-512", "native")]
    return values


@pytest.mark.parametrize("value", _unusable_isa_values())
def test_cyneuron_isa_env_unusable_warns_and_falls_back(value):
    if value in ALL_ISAS and value in _config.supported_isas():
        pytest.skip(f"the {value!r} SIMD path is supported by this CPU, so it is not a "
                    f"fallback case here")
    result = _run_child(value)
    best = result["supported"][-1]
    assert result["isa"] == best
    runtime = [msg for cat, msg in result["warnings"] if cat == "RuntimeWarning"]
    assert len(runtime) == 1, result["warnings"]
    assert "CYNEURON_ISA" in runtime[0] and value in runtime[0] and best in runtime[0]
    assert result["max_rel_err_over_k_eps"] <= 2.0


# --------------------------------------------------------------------------- layouts and dtypes

def _layout_cases(rng, dtype):
    base_a = rng.standard_normal((40, 60)).astype(dtype)
    base_b = rng.standard_normal((70, 30)).astype(dtype)
    yield "strided slices", base_a[::2, ::3], base_b[::3, ::2][:20]
    yield "fortran order", np.asfortranarray(base_a[:13, :21]), np.asfortranarray(base_b[:21, :9])
    yield "negative row strides", base_a[::-1, :17], base_b[:17][::-1]
    yield "negative column strides", base_a[:9, ::-1], base_b[:60, ::-1]
    yield "both negative", base_a[::-2, ::-3], base_b[19::-1, ::-2]
    yield "transposed views", base_b.T[:11, :21], base_a.T[:21, :5]
    yield "offset sub-block", base_a[3:30, 5:41], base_b[7:43, 4:29]
    yield "broadcast (zero stride)", np.broadcast_to(base_a[0, :19], (6, 19)), base_b[:19, :7]
    field = np.zeros((9, 12), dtype=[("x", dtype), ("pad", np.int8)])
    field["x"] = rng.standard_normal((9, 12))
    yield "stride not a multiple of the item size", field["x"], base_b[:12, :5]
    buf = np.zeros(5 * 6 * np.dtype(dtype).itemsize + 1, np.uint8)
    misaligned = np.ndarray((5, 6), dtype=dtype, buffer=buf, offset=1)
    misaligned[...] = rng.standard_normal((5, 6))
    yield "misaligned data pointer", misaligned, base_b[:6, :4]


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_layouts(isa, dtype):
    rng = np.random.default_rng(3)
    for what, a, b in _layout_cases(rng, dtype):
        a_copy, b_copy = a.copy(), b.copy()
        got = cn.ops.matmul(a, b)
        assert_matmul_close(got, a, b, dtype=dtype, what=what)
        assert got.flags.c_contiguous
        np.testing.assert_array_equal(a, a_copy)  # inputs untouched
        np.testing.assert_array_equal(b, b_copy)
        # The same operands through the transpose flags.
        got_t = cn.ops.matmul(a.T, b.T, trans_a=True, trans_b=True)
        assert_matmul_close(got_t, a, b, dtype=dtype, what=what + " (trans flags)")


def test_strided_large_parallel(kernel_threads):
    rng = np.random.default_rng(4)
    a = rng.standard_normal((600, 900))[::-2, ::3]       # (300, 300), negative row stride
    b = np.asfortranarray(rng.standard_normal((300, 200)))
    got = cn.ops.matmul(a, b, trans_a=True)
    assert_matmul_close(got, a, b, trans_a=True, dtype=np.float64)


@pytest.mark.parametrize("da, db, expected", [
    (np.float32, np.float32, np.float32),
    (np.float32, np.float64, np.float64),
    (np.float64, np.float32, np.float64),
    (np.float64, np.float64, np.float64),
])
def test_result_dtype_of_floats(da, db, expected):
    rng = np.random.default_rng(5)
    a = rng.standard_normal((9, 17)).astype(da)
    b = rng.standard_normal((17, 6)).astype(db)
    got = cn.ops.matmul(a, b)
    assert got.dtype == expected
    assert_matmul_close(got, a, b, dtype=expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_product_makes_a_fresh_result(kernel_threads, dtype):
    """gemm.product (cn.ops.matmul without out=): a new C-contiguous array of a's dtype,
    from any strided views; mixed dtypes and wrong ranks are refused as gemm does."""
    rng = np.random.default_rng(8)
    a = rng.standard_normal((37, 64)).astype(dtype)
    b = rng.standard_normal((29, 64)).astype(dtype)
    got = _gemm.product(a, b.T)
    assert got.dtype == dtype and got.flags.c_contiguous and got.shape == (37, 29)
    assert_matmul_close(got, a, b.T, dtype=dtype)
    assert _gemm.product(a, b.T) is not got
    with pytest.raises(TypeError):
        _gemm.product(a, b.T.astype(np.float32 if dtype == np.float64 else np.float64))
    with pytest.raises(ValueError, match="2-D"):
        _gemm.product(a[0], b.T)


@pytest.mark.parametrize("int_dtype", [np.int8, np.uint8, np.int16, np.int32, np.int64, np.uint64])
def test_integer_inputs_are_converted_to_float64(int_dtype):
    """Docstring: 'float32 when both inputs are float32, float64 otherwise (integers are converted)'."""
    rng = np.random.default_rng(6)
    a = rng.integers(0, 100, (5, 7)).astype(int_dtype)
    b = rng.integers(0, 100, (7, 4)).astype(int_dtype)
    got = cn.ops.matmul(a, b)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, a.astype(np.int64) @ b.astype(np.int64))


def test_integer_times_float32_is_float64():
    a = np.arange(12, dtype=np.int64).reshape(3, 4)
    b = np.ones((4, 2), np.float32)
    got = cn.ops.matmul(a, b)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, a @ b.astype(np.float64))


def test_nested_lists_are_accepted():
    got = cn.ops.matmul([[1, 2], [3, 4]], [[5.0], [6.0]])
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, [[17.0], [39.0]])


# --------------------------------------------------------------------------- epilogue

def _np_activation(name, z):
    if name == "relu":
        return np.maximum(z, 0)
    if name == "sigmoid":
        return 0.5 * (1 + np.tanh(z / 2))
    if name == "tanh":
        return np.tanh(z)
    if name == "softmax":
        e = np.exp(z - z.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    if name in ("linear", None):
        return z
    raise AssertionError(name)


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh", "softmax", "linear", None])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_bias_and_activation_epilogue(isa, dtype, with_bias, activation):
    rng = np.random.default_rng(8)
    mr, nr, mc, kc, nc = _gemm.block_sizes(np.dtype(dtype).name)
    for m, n, k in [(1, 1, 1), (mr + 1, nr + 1, kc + 1), (mc + 1, 2 * nr + 1, 9)]:
        a, b = _operands(rng, m, n, k, dtype, trans_b=True)
        bias = rng.standard_normal(n).astype(dtype) if with_bias else None
        got = cn.ops.matmul(a, b, trans_b=True, bias=bias, activation=activation)
        assert got.dtype == dtype and got.shape == (m, n)
        a64, b64 = a.astype(np.float64), b.astype(np.float64).T
        z = a64 @ b64 + (bias.astype(np.float64) if with_bias else 0)
        expected = _np_activation(activation, z)
        bound = _gemm_bound(a64, b64, dtype)
        atol = 4 * bound.max() + 8 * np.finfo(dtype).eps * max(1.0, np.abs(expected).max())
        np.testing.assert_allclose(got, expected, rtol=0, atol=atol,
                                   err_msg=f"{activation} bias={with_bias} {(m, n, k)}")
        if activation == "softmax":
            np.testing.assert_allclose(got.sum(axis=1), 1, atol=1e3 * np.finfo(dtype).eps)


@pytest.mark.parametrize("alpha", [0.0, 0.2, 1.0, 1.5])
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_leaky_relu_epilogue_and_derivative_bits(isa, dtype, alpha):
    """The leaky_relu epilogue (forward, and derivative from the output with act_out) is
    exactly x > 0 ? x : slope * x, NaN included, for any slope (max / min forms)."""
    rng = np.random.default_rng(31)
    m, n = 37, 45       # edges of every micro-tile shape
    v = (rng.standard_normal((1, n)) * 10).astype(dtype)
    v[0, :4] = [0.0, np.nan, np.inf, -np.inf]
    a = np.ones((m, 1), dtype)              # c = a @ v: each row of c is v, exactly
    c = np.empty((m, n), dtype)
    _gemm.gemm(a, v, c, activation=_gemm.EPILOGUES["leaky_relu"], alpha=alpha)
    with np.errstate(invalid="ignore"):
        want = np.where(v > 0, v, dtype(alpha) * v)
    np.testing.assert_array_equal(c, np.broadcast_to(want, (m, n)))
    y = (rng.standard_normal((m, n)) * 3).astype(dtype)
    y[0, :2] = [0.0, np.nan]
    _gemm.gemm(a, v, c, activation=_gemm.EPILOGUES["leaky_relu"], alpha=alpha, act_out=y)
    with np.errstate(invalid="ignore"):
        want = np.where(y > 0, v, v * dtype(alpha))
    np.testing.assert_array_equal(c, want)


@pytest.mark.parametrize("activation", ["linear", "relu", "leaky_relu", "sigmoid"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_check_finite_reports_any_non_finite_product(isa, kernel_threads, dtype, activation):
    """gemm(check_finite=True) returns whether every value of a @ b + bias was finite
    (before the activation), on every plan (the edge shapes, the swapped and one-column
    products), with the same C as without the check."""
    rng = np.random.default_rng(32)
    code = _gemm.EPILOGUES[activation]
    shapes = edge_shapes(dtype) + [(300, 1, 64), (3, 700, 40), (64, 256, 784)]
    for m, n, k in shapes[::2]:
        a, b = rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((k, n)).astype(dtype)
        bias = rng.standard_normal(n).astype(dtype)
        plain, checked = np.empty((m, n), dtype), np.empty((m, n), dtype)
        _gemm.gemm(a, b, plain, bias, code, 0.2)
        assert _gemm.gemm(a, b, checked, bias, code, 0.2, check_finite=True) is True
        np.testing.assert_array_equal(checked, plain)
        i, j, p = m // 2, n - 1, k // 3
        for bad in (np.nan, np.inf, -np.inf):
            for what in ("a", "b", "bias"):
                x, y, z = a.copy(), b.copy(), bias.copy()
                {"a": lambda: x.__setitem__((i, p), bad), "b": lambda: y.__setitem__((p, j), bad),
                 "bias": lambda: z.__setitem__(j, bad)}[what]()
                with np.errstate(invalid="ignore", over="ignore"):
                    got = _gemm.gemm(x, y, checked, z, code, 0.2, check_finite=True)
                    _gemm.gemm(x, y, plain, z, code, 0.2)
                assert got is False, (m, n, k, bad, what)
                np.testing.assert_array_equal(checked, plain)
        big = np.full((m, k), np.finfo(dtype).max / 2, dtype)       # finite, overflows
        assert _gemm.gemm(big, np.abs(b) + 2, checked, None, code, 0.2,
                          check_finite=True) is False


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_bias_and_relu_in_the_micro_kernel_give_the_epilogue_bits(isa, kernel_threads, dtype):
    """The bias and relu that the direct and packed plans apply in the micro-kernel's last
    stores give exactly (a @ b) + bias, then x > 0 ? x : 0 (NaN and -0 giving 0), on every
    tile shape and edge; with check_finite too."""
    rng = np.random.default_rng(33)
    for m, n, k in edge_shapes(dtype)[::2] + [(64, 256, 784), (9, 40, 3)]:
        a, b = rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((k, n)).astype(dtype)
        bias = rng.standard_normal(n).astype(dtype)
        bias[:3] = [np.nan, -0.0, np.inf][:min(3, n)]
        plain, got = np.empty((m, n), dtype), np.empty((m, n), dtype)
        _gemm.gemm(a, b, plain)
        with np.errstate(invalid="ignore"):
            z = plain + bias
            want = np.where(z > 0, z, dtype(0))
        for check in (False, True):
            _gemm.gemm(a, b, got, bias, _gemm.EPILOGUES["relu"], check_finite=check)
            np.testing.assert_array_equal(got, want)
            assert not np.signbit(got).any()
            _gemm.gemm(a, b, got, bias, check_finite=check)
            np.testing.assert_array_equal(got, z)


def test_check_finite_arguments():
    a, b, c = np.ones((3, 4)), np.ones((4, 5)), np.empty((3, 5))
    assert _gemm.gemm(a, b, c) is None
    assert _gemm.gemm(np.ones((0, 4)), b, np.empty((0, 5)), check_finite=True) is True
    with pytest.raises(ValueError, match="check_finite"):
        _gemm.gemm(a, b, c, accumulate=True, check_finite=True)
    with pytest.raises(ValueError, match="check_finite"):
        _gemm.gemm(a, b, c, activation=_gemm.EPILOGUES["relu"], act_out=np.ones((3, 5)),
                   check_finite=True)


def test_activation_instance_and_case():
    rng = np.random.default_rng(9)
    a, b = rng.standard_normal((4, 5)), rng.standard_normal((5, 3))
    np.testing.assert_allclose(cn.ops.matmul(a, b, activation=cn.activations.get("relu")),
                               np.maximum(a @ b, 0), atol=1e-12)
    np.testing.assert_allclose(cn.ops.matmul(a, b, activation="ReLU"),
                               np.maximum(a @ b, 0), atol=1e-12)


def test_integer_bias_is_converted():
    a, b = np.ones((2, 3), np.float32), np.ones((3, 4), np.float32)
    got = cn.ops.matmul(a, b, bias=np.arange(4))
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, 3 + np.arange(4, dtype=np.float32)[None, :].repeat(2, 0))


# --------------------------------------------------------------------------- out=

@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_out_is_written_and_returned(dtype):
    rng = np.random.default_rng(10)
    a, b = _operands(rng, 13, 21, 34, dtype)
    out = np.full((13, 21), np.nan, dtype)
    got = cn.ops.matmul(a, b, out=out)
    assert got is out
    assert_matmul_close(out, a, b, dtype=dtype)
    # K spanning two KC blocks: the second block accumulates, so stale out content must not leak in.
    a, b = _operands(rng, 7, 9, 300, dtype)
    out = np.full((7, 9), 1e30, dtype)
    cn.ops.matmul(a, b, out=out)
    assert_matmul_close(out, a, b, dtype=dtype)


def test_out_aliasing_an_input():
    rng = np.random.default_rng(11)
    a = rng.standard_normal((9, 9))
    expected = a @ a
    got = cn.ops.matmul(a, a, out=a)
    assert got is a
    np.testing.assert_allclose(a, expected, rtol=1e-12, atol=1e-12)

    b = rng.standard_normal((9, 9)).astype(np.float32)
    c = rng.standard_normal((9, 9)).astype(np.float32)
    expected = b.astype(np.float64).T @ c.astype(np.float64)
    cn.ops.matmul(b, c, trans_a=True, out=c)
    np.testing.assert_allclose(c, expected, rtol=1e-5, atol=1e-5)

    # out overlapping part of an operand (a view into the same buffer).
    big = rng.standard_normal((20, 6))
    x, w = big[:6], rng.standard_normal((6, 6))
    expected = x @ w
    out = big[2:8]
    cn.ops.matmul(x, w, out=out)
    np.testing.assert_allclose(big[2:8], expected, rtol=1e-12, atol=1e-12)


def test_out_aliasing_with_bias_and_activation():
    rng = np.random.default_rng(12)
    a = rng.standard_normal((8, 8))
    bias = rng.standard_normal(8)
    expected = np.tanh(a @ a.T + bias)
    cn.ops.matmul(a, a, trans_b=True, bias=bias, activation="tanh", out=a)
    np.testing.assert_allclose(a, expected, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- errors

def test_inner_dimension_mismatch():
    a, b = np.ones((3, 4)), np.ones((5, 2))
    with pytest.raises(ValueError, match="inner"):
        cn.ops.matmul(a, b)
    with pytest.raises(ValueError, match="inner"):
        cn.ops.matmul(a, b, trans_a=True)
    with pytest.raises(ValueError, match="inner"):
        cn.ops.matmul(a, np.ones((4, 2)), trans_b=True)
    with pytest.raises(ValueError, match="inner"):
        cn.ops.matmul(np.ones((3, 4), np.float32), np.ones((3, 4), np.float32))


@pytest.mark.parametrize("shape", [(4,), (2, 2, 4), ()], ids=["1d", "3d", "0d"])
def test_wrong_rank_names_the_argument(shape):
    good = np.ones((4, 3))
    with pytest.raises(ValueError, match=r"\ba must be 2-D"):
        cn.ops.matmul(np.ones(shape), good)
    with pytest.raises(ValueError, match=r"\bb must be 2-D"):
        cn.ops.matmul(good.T, np.ones(shape))


@pytest.mark.parametrize("bad", [
    np.array([["a", "b"], ["c", "d"]]),
    np.array([[1, None], [2, 3]], dtype=object),
    np.ones((2, 2), dtype=object),
    np.ones((2, 2), dtype=np.complex128),
    [["x", "y"], ["z", "w"]],
], ids=["str", "object-with-none", "object-numbers", "complex", "list-of-str"])
def test_non_numeric_dtype_is_type_error(bad):
    good = np.ones((2, 2))
    with pytest.raises(TypeError, match=r"\ba\b"):
        cn.ops.matmul(bad, good)
    with pytest.raises(TypeError, match=r"\bb\b"):
        cn.ops.matmul(good, bad)


def test_out_wrong_shape_dtype_layout():
    a, b = np.ones((3, 4)), np.ones((4, 5))
    with pytest.raises(ValueError, match="out"):
        cn.ops.matmul(a, b, out=np.empty((5, 3)))
    with pytest.raises(ValueError, match="out"):
        cn.ops.matmul(a, b, out=np.empty((3, 5, 1)))
    with pytest.raises(TypeError, match="out"):
        cn.ops.matmul(a, b, out=np.empty((3, 5), np.float32))
    with pytest.raises(TypeError, match="out"):
        cn.ops.matmul(a.astype(np.float32), b.astype(np.float32), out=np.empty((3, 5)))
    with pytest.raises(TypeError, match="out"):
        cn.ops.matmul(a, b, out=[[0.0] * 5] * 3)
    with pytest.raises(ValueError, match="out"):
        cn.ops.matmul(a, b, out=np.empty((5, 3)).T)          # Fortran order
    with pytest.raises(ValueError, match="out"):
        cn.ops.matmul(a, b, out=np.empty((3, 10))[:, ::2])   # strided
    readonly = np.empty((3, 5))
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match="out"):
        cn.ops.matmul(a, b, out=readonly)


@pytest.mark.parametrize("bias_shape", [(4,), (1,), (1, 5), (5, 1), ()])
def test_bias_wrong_shape(bias_shape):
    with pytest.raises(ValueError, match="bias"):
        cn.ops.matmul(np.ones((3, 2)), np.ones((2, 5)), bias=np.ones(bias_shape))


def test_bias_non_numeric():
    with pytest.raises(TypeError, match="bias"):
        cn.ops.matmul(np.ones((3, 2)), np.ones((2, 5)), bias=np.array(["a"] * 5))


@pytest.mark.parametrize("activation", ["nope", "soft_max", "", 3])
def test_unknown_activation(activation):
    with pytest.raises(ValueError, match="activation"):
        cn.ops.matmul(np.ones((3, 2)), np.ones((2, 5)), activation=activation)


def test_errors_leave_out_untouched():
    out = np.full((3, 5), 7.0)
    with pytest.raises(ValueError):
        cn.ops.matmul(np.ones((3, 2)), np.ones((2, 5)), bias=np.ones(4), out=out)
    with pytest.raises(ValueError):
        cn.ops.matmul(np.ones((3, 2)), np.ones((2, 5)), activation="nope", out=out)
    np.testing.assert_array_equal(out, 7.0)


# --------------------------------------------------------------------------- empty operands

@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_k_zero_gives_zeros(dtype):
    a, b = np.empty((3, 0), dtype), np.empty((0, 4), dtype)
    got = cn.ops.matmul(a, b)
    assert got.shape == (3, 4) and got.dtype == dtype
    np.testing.assert_array_equal(got, 0)
    got = cn.ops.matmul(a.T, b.T, trans_a=True, trans_b=True)
    np.testing.assert_array_equal(got, np.zeros((3, 4)))
    out = np.full((3, 4), np.nan, dtype)
    cn.ops.matmul(a, b, out=out)
    np.testing.assert_array_equal(out, 0)
    bias = np.arange(4, dtype=dtype)
    np.testing.assert_array_equal(cn.ops.matmul(a, b, bias=bias, activation="relu"),
                                  np.broadcast_to(bias, (3, 4)))


@pytest.mark.parametrize("m, n, k", [(0, 4, 5), (3, 0, 5), (0, 0, 5), (0, 4, 0), (3, 0, 0)])
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_empty_m_or_n(m, n, k, dtype):
    a, b = np.ones((m, k), dtype), np.ones((k, n), dtype)
    got = cn.ops.matmul(a, b)
    assert got.shape == (m, n) and got.dtype == dtype
    got = cn.ops.matmul(a.T.copy(), b, trans_a=True, bias=np.ones(n, dtype), activation="relu")
    assert got.shape == (m, n) and got.dtype == dtype
    out = np.empty((m, n), dtype)
    assert cn.ops.matmul(a, b, out=out) is out


@pytest.mark.parametrize("activation", ["softmax", "sigmoid", "tanh", "linear"])
@pytest.mark.parametrize("m, n, k", [(0, 4, 5), (3, 0, 5), (0, 0, 5), (3, 0, 0)])
def test_empty_result_with_activation(m, n, k, activation):
    """An empty product stays empty through any activation (softmax over 0 columns included)."""
    a, b = np.ones((m, k)), np.ones((k, n))
    got = cn.ops.matmul(a, b, bias=np.zeros(n), activation=activation)
    assert got.shape == (m, n) and got.dtype == np.float64


# --------------------------------------------------------------------------- memory

def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc/self/statm (Linux)")
def test_no_memory_growth_over_many_calls():
    rng = np.random.default_rng(13)
    a = rng.standard_normal((7, 9)).astype(np.float32)
    b = rng.standard_normal((5, 9)).astype(np.float32)
    bias = rng.standard_normal(5).astype(np.float32)
    a64 = rng.standard_normal((9, 300))

    def calls(count):
        for _ in range(count):
            cn.ops.matmul(a, b, trans_b=True, bias=bias, activation="relu")
            cn.ops.matmul(a64, a64, trans_b=True)  # K > KC: two packing passes

    calls(300)  # warm up caches, allocator pools
    before = _rss_bytes()
    calls(10_000)
    grown = _rss_bytes() - before
    assert grown < 4 * 2**20, f"RSS grew by {grown / 2**20:.1f} MiB over 10,000 calls"
