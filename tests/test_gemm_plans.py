"""The GEMM driver's plans (direct / packed, threads splitting rows or columns), its
fused epilogue, accumulate mode, workspace reuse and the kernel entry's own checks.

The shapes are picked from the driver's thresholds (plan_limits, block_sizes) so that
every plan and every split runs on every SIMD path this CPU has, on 1 and 2 threads.
The plan rule itself is checked with each compiled ISA's blocking as its input
(`plan(..., isa=)`), whatever the host runs: no test depends on this machine's tuning.
"""
import threading

import numpy as np
import pytest

import cyneuron as cn
from cyneuron import activations
from cyneuron._kernels import gemm as _gemm
from cyneuron._memory import empty_aligned

from test_gemm import assert_matmul_close

DTYPES = [np.float32, np.float64]
DTYPE_IDS = ["float32", "float64"]


def _plan_shapes(dtype, isa=None):
    """(label, M, K, N, transposed: see _case) reaching each plan of the driver with the
    blocking of `isa` (default: the path in use)."""
    mr, nr, mc, kc, nc = _gemm.block_sizes(np.dtype(dtype).name, isa)
    limits = _gemm.plan_limits()
    direct_m, swap_m = limits["direct_max_m"], limits["swap_max_m"]
    big_k = kc + 3
    # B transposed and this wide (bytes >= swap_min_b_bytes at K = big_k): C^T = B^T A^T
    swap_n = limits["swap_min_b_bytes"] // (big_k * np.dtype(dtype).itemsize) + nr + 1
    return [
        ("column-tiny", 1, 1, 1, False),                              # N = 1: dot products
        ("column-rows", 4 * mr + 3, big_k, 1, False),
        ("column-b-transposed", 2 * mr + 1, 2 * kc + 7, 1, True),
        ("direct-gemv-ragged", 1, 4 * 3 + 3, 3 * nr + 5, False),      # M = 1: the GEMV kernel
        ("direct-gemv-wide", 1, kc + 5, 4096 // np.dtype(dtype).itemsize + 3, False),
        ("direct-gemv-k-halves", 1, 2 * kc + 5, _k_halves_columns(2 * kc + 5, dtype) + nr + 3,
         False),                                                      # M = 1, a large B
        ("direct-edges", mr + 1, big_k, 2 * nr + 3, False),
        ("direct-max-m", direct_m, 37, 5 * nr - 1, False),
        ("direct-split-rows", direct_m, 64, nr - 1, False),
        ("packed-big-m", direct_m + 1, big_k, 3 * nr + 5, False),    # a ragged sliver
        # Past direct_m, B's rows on cache lines (_case places B on one): several row
        # blocks of MC, the last one ragged
        ("direct-big-m", direct_m + 2 * mc + 3, big_k, _whole_lines(nr, dtype), False),
        ("packed-mc-edges", 2 * mc + mr + 1, 29, nr + 1, False),
        ("packed-b-transposed", 17, big_k, 2 * nr + 1, True),
        # More rows than one micro-tile, B's rows a power of two apart that puts its
        # rows in too few of this host's L2 sets to stay cached (4 KiB on Zen 5's L2)
        ("packed-aliasing-stride", mr + 1, kc + 1, _aliasing_columns(kc + 1, dtype), False),
        ("packed-nc-edge", swap_m + 2, 19, nc + nr + 3, True),
        ("swapped-few-rows", 2 * mr + 3, big_k, swap_n, True),     # dX = dY W^T, batch 19
        ("swapped-max-m", swap_m, 37,
         limits["swap_min_b_bytes"] // (37 * np.dtype(dtype).itemsize) + 5, True),
        # A^T times a B of at most NR / 2 columns (a classifier head's weight gradient)
        ("swapped-narrow", 2 * nr + 5, big_k, max(2, nr // 2), "a"),
    ]


def _k_halves_columns(k, dtype):
    """The fewest columns of a (k, N) B that make a single row sum K's halves apart."""
    return -(-_gemm.plan_limits()["gemv_halves_min_b_bytes"] // (k * np.dtype(dtype).itemsize))


def _aliasing_columns(k, dtype):
    """Columns of a contiguous B (k, N) whose row stride maps its rows onto too few sets
    of the host's L2 (`l2_cache()`) for the K block's rows to stay there: the power-of-two
    stride that leaves the most sets that still cannot hold them (two lines a row)."""
    sets, ways = _gemm.l2_cache()
    kc_block = _gemm.block_sizes(np.dtype(dtype).name)[3]
    k_block = -(-k // -(-k // kc_block))            # the plan's equal K blocks
    used = sets
    while used > 1 and used * ways >= 2 * k_block:
        used //= 2
    return (sets // used) * 64 // np.dtype(dtype).itemsize


def _whole_lines(nr, dtype):
    """The fewest columns that are whole slivers and whole 64-byte lines."""
    per_line = 64 // np.dtype(dtype).itemsize
    return nr * per_line // np.gcd(nr, per_line)


def _case(rng, dtype, m, k, n, transposed):
    """a (m, k) and b (k, n), b (or the b.T it is a view of) starting on a cache line;
    transposed: True for b a view of b.T's rows, "a" for a a view of a.T's rows (X^T in a
    weight gradient), False for neither."""
    a = rng.standard_normal((k, m) if transposed == "a" else (m, k)).astype(dtype)
    b = empty_aligned((n, k) if transposed is True else (k, n), dtype)
    b[...] = rng.standard_normal(b.shape)
    return (a.T if transposed == "a" else a), (b.T if transposed is True else b)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_every_plan_on_every_path_and_thread_count(isa, kernel_threads, dtype):
    rng = np.random.default_rng(0)
    for label, m, k, n, bt in _plan_shapes(dtype):
        a, b = _case(rng, dtype, m, k, n, bt)
        assert _gemm.plan(a, b)["plan"] == label.split("-")[0], label
        c = np.empty((m, n), dtype)
        _gemm.gemm(a, b, c)
        assert_matmul_close(c, a, b, what=f"{label} {isa} threads={kernel_threads}")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_every_plan_gives_the_same_bits_on_one_and_two_threads(isa, dtype, restore_threads):
    """The thread count only says who computes which tiles of C, never how an element is
    summed: this is what lets the one-thread threshold follow a timing (the threads'
    measured distance) without runs at one thread count differing. With the column
    sums, the epilogue and accumulate too."""
    rng = np.random.default_rng(4)
    for label, m, k, n, bt in _plan_shapes(dtype):
        a, b = _case(rng, dtype, m, k, n, bt)
        bias = rng.standard_normal(n).astype(dtype)
        start = rng.standard_normal((m, n)).astype(dtype)
        results = []
        for threads in (1, 2):
            cn.set_num_threads(threads)
            _gemm._set_parallel_min_macs_for_tests(0 if threads > 1 else -1)
            try:
                plain, fused, summed = np.empty((m, n), dtype), np.empty((m, n), dtype), start.copy()
                sums = np.empty(n, dtype)
                _gemm.gemm(a, b, plain)
                _gemm.gemm(a, b, fused, bias=bias, activation=_gemm.Epilogue.EPI_RELU)
                _gemm.gemm(a, b, summed, accumulate=True, b_sums=sums)
            finally:
                _gemm._set_parallel_min_macs_for_tests(-1)
            results.append((plain, fused, summed, sums))
        for one, two in zip(*results):
            np.testing.assert_array_equal(one, two, err_msg=f"{label} {isa}")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("activation", ["linear", "relu", "tanh", "elu"])
def test_swapped_plan_with_bias_activation_and_any_c(isa, kernel_threads, dtype, activation):
    """Few rows times a large transposed B (dY @ W^T) is computed as (W @ dY^T)^T: the
    same result with the bias and activation epilogue, into a C that starts off a cache
    line, from an A with strided rows."""
    rng = np.random.default_rng(11)
    code = _gemm.EPILOGUES[activation]
    tol = 1e-4 if dtype == np.float32 else 1e-11
    for label, m, k, n, bt in _plan_shapes(dtype):
        if not label.startswith("swapped") or bt is not True:
            continue
        _, b = _case(rng, dtype, m, k, n, bt)
        a = rng.standard_normal((m, 2 * k)).astype(dtype)[:, ::2]     # strided along K
        bias = rng.standard_normal(n).astype(dtype)
        raw = np.empty(m * n + 1, dtype)
        c = raw[1:].reshape(m, n)                       # 4 or 8 bytes off the allocation
        assert _gemm.plan(a, b, c=c)["plan"] == "swapped", label
        _gemm.gemm(a, b, c, bias, code, 1.0)
        z = a.astype(np.float64) @ b.astype(np.float64) + bias
        want = {"linear": z, "relu": np.maximum(z, 0), "tanh": np.tanh(z),
                "elu": np.where(z > 0, z, np.expm1(np.minimum(z, 0)))}[activation]
        np.testing.assert_allclose(c, want, rtol=tol, atol=tol * np.abs(z).max(),
                                   err_msg=f"{label} {activation}")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_swapped_plan_accumulates_takes_act_out_and_checks_finite(isa, kernel_threads, dtype):
    """Each thread hands its own part of C^T over to C: accumulate adds it, act_out (a
    Dense layer's input gradient through relu) multiplies it by act'(y), and check_finite
    sees a NaN or inf of a @ b even with no bias and no activation."""
    rng = np.random.default_rng(12)
    tol = 1e-4 if dtype == np.float32 else 1e-11
    for label, m, k, n, bt in _plan_shapes(dtype):
        if not label.startswith("swapped"):
            continue
        a, b = _case(rng, dtype, m, k, n, bt)
        assert _gemm.plan(a, b)["plan"] == "swapped", label
        z = a.astype(np.float64) @ b.astype(np.float64)
        atol = tol * np.abs(z).max()
        start = rng.standard_normal((m, n)).astype(dtype)
        c = start.copy()
        _gemm.gemm(a, b, c, accumulate=True)
        np.testing.assert_allclose(c, start + z, rtol=tol, atol=atol, err_msg=label)
        y = np.maximum(start, 0)
        _gemm.gemm(a, b, c, activation=_gemm.EPILOGUES["relu"], act_out=y)
        np.testing.assert_allclose(c, z * (y > 0), rtol=tol, atol=atol, err_msg=label)
        assert _gemm.gemm(a, b, c, check_finite=True) is True
        np.testing.assert_allclose(c, z, rtol=tol, atol=atol, err_msg=label)
        for i, p in ((0, 0), (m - 1, k // 2), (m // 2, k - 1)):
            for bad in (np.nan, np.inf):
                x = a.copy()
                x[i, p] = bad
                with np.errstate(invalid="ignore"):
                    assert _gemm.gemm(x, b, c, check_finite=True) is False, (label, i, p, bad)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_single_row_gemv_with_strided_x_and_epilogue(isa, kernel_threads, dtype):
    """M = 1 (one sample) runs the GEMV kernel: x read through a stride, K not a multiple
    of its 4-row unroll, ragged N, the bias + activation epilogue, and accumulate."""
    rng = np.random.default_rng(6)
    tol = 1e-4 if dtype == np.float32 else 1e-11
    for k, n in ((1, 1), (3, 7), (17, 33), (70, 300)):
        x = rng.standard_normal((k, 3)).astype(dtype).T[1:2]      # stride 3 along K
        b = rng.standard_normal((k, n)).astype(dtype)
        bias = rng.standard_normal(n).astype(dtype)
        assert _gemm.plan(x, b)["plan"] == ("column" if n == 1 else "direct")
        c = np.empty((1, n), dtype)
        _gemm.gemm(x, b, c, bias, _gemm.EPILOGUES["relu"])
        expected = np.maximum(x.astype(np.float64) @ b + bias, 0)
        np.testing.assert_allclose(c, expected, rtol=tol, atol=tol * np.sqrt(k))
        c0 = rng.standard_normal((1, n)).astype(dtype)
        c = c0.copy()
        _gemm.gemm(x, b, c, accumulate=True)
        np.testing.assert_allclose(c, c0 + x.astype(np.float64) @ b, rtol=tol,
                                   atol=tol * np.sqrt(k))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_single_row_gives_the_rows_bits_where_k_is_one_block(isa, dtype):
    """The GEMV kernel sums each y[j] over k in order with FMAs, the columns past the
    last whole vector too (one masked vector where the ISA has masked loads), so a row
    alone has the bits it has among others (the micro-kernel) while K is one block (not
    with accumulate: the micro-kernel adds its sum to C, the GEMV sums onto y)."""
    rng = np.random.default_rng(16)
    kc = _gemm.block_sizes(np.dtype(dtype).name)[3]
    for k, n in ((1, 1), (5, 3), (64, 10), (kc, 17), (33, 47), (100, 200), (7, 129)):
        a = rng.standard_normal((3, k)).astype(dtype)
        b = rng.standard_normal((k, n)).astype(dtype)
        row, rows = np.empty((1, n), dtype), np.empty((3, n), dtype)
        _gemm.gemm(a[:1], b, row)
        _gemm.gemm(a, b, rows)
        np.testing.assert_array_equal(row[0], rows[0], err_msg=f"{k}x{n} {isa}")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_single_row_k_halves_same_bits_on_any_thread_count(isa, dtype, restore_threads):
    """A single row times a large B sums K's two halves apart (threads split the halves,
    then each half's columns, then add): the same bits on 1 to 4 threads, with the
    epilogue, accumulate, the column sums and the finiteness check; a NaN in either half
    of x is reported."""
    rng = np.random.default_rng(17)
    nr, kc = (_gemm.block_sizes(np.dtype(dtype).name)[i] for i in (1, 3))
    tol = 1e-4 if dtype == np.float32 else 1e-11
    k = 2 * kc + 5
    n = _k_halves_columns(k, dtype) + nr + 3
    x, b = _case(rng, dtype, 1, k, n, False)
    bias = rng.standard_normal(n).astype(dtype)
    start = rng.standard_normal((1, n)).astype(dtype)
    assert _gemm.plan(x, b, threads=2) == {"plan": "direct", "split": "k", "pack_a": False}
    expected = x.astype(np.float64) @ b
    results = []
    for threads in (1, 2, 3, 4):
        cn.set_num_threads(threads)
        _gemm._set_parallel_min_macs_for_tests(0 if threads > 1 else -1)
        try:
            fused, summed, sums = np.empty((1, n), dtype), start.copy(), np.empty(n, dtype)
            finite = _gemm.gemm(x, b, fused, bias, _gemm.Epilogue.EPI_RELU, check_finite=True)
            _gemm.gemm(x, b, summed, accumulate=True, b_sums=sums)
            nonfinite = []
            for at in (0, k - 1):
                bad = x.copy()
                bad[0, at] = np.nan
                nonfinite.append(_gemm.gemm(bad, b, np.empty((1, n), dtype), check_finite=True))
        finally:
            _gemm._set_parallel_min_macs_for_tests(-1)
        assert finite is True and nonfinite == [False, False], threads
        np.testing.assert_allclose(fused, np.maximum(expected + bias, 0), rtol=tol,
                                   atol=tol * np.sqrt(k))
        np.testing.assert_allclose(summed, start + expected, rtol=tol, atol=tol * np.sqrt(k))
        np.testing.assert_allclose(sums, b.sum(axis=0, dtype=np.float64), rtol=tol,
                                   atol=tol * np.sqrt(k))
        results.append((fused, summed, sums))
    for threads, got in zip((2, 3, 4), results[1:]):
        for one, other in zip(results[0], got):
            np.testing.assert_array_equal(one, other, err_msg=f"{threads} threads {isa}")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_one_column_products(isa, kernel_threads, dtype):
    """N = 1 (Dense(1), a step on one sample): A's rows dotted with B, or B streamed down
    A's columns when A is column-major (dW of Dense(1)); B's column strided; the bias +
    activation epilogue; accumulate; the serial entry."""
    rng = np.random.default_rng(9)
    tol = 1e-4 if dtype == np.float32 else 1e-11
    for m, k in ((1, 1), (3, 5), (17, 33), (70, 300), (513, 1031)):
        a_rows = rng.standard_normal((m, k)).astype(dtype)
        a_cols = np.asfortranarray(a_rows)
        b_col = rng.standard_normal((k, 1)).astype(dtype)
        b_strided = np.repeat(b_col, 3, axis=1)[:, 1:2]          # stride 3 along K
        bias = rng.standard_normal(1).astype(dtype)
        expected = a_rows.astype(np.float64) @ b_col
        for a in (a_rows, a_cols):
            for b in (b_col, b_strided):
                assert _gemm.plan(a, b)["plan"] == "column"
                c = np.full((m, 1), np.nan, dtype)
                _gemm.gemm(a, b, c)
                np.testing.assert_allclose(c, expected, rtol=tol, atol=tol * np.sqrt(k))
                _gemm.gemm(a, b, c, bias, _gemm.EPILOGUES["tanh"])
                np.testing.assert_allclose(c, np.tanh(expected + bias), rtol=tol, atol=tol)
                c0 = rng.standard_normal((m, 1)).astype(dtype)
                c = c0.copy()
                _gemm.gemm(a, b, c, accumulate=True)
                np.testing.assert_allclose(c, c0 + expected, rtol=tol, atol=tol * np.sqrt(k))
                c = np.full((m, 1), np.nan, dtype)
                _gemm._serial_for_tests(a, b, c)
                np.testing.assert_allclose(c, expected, rtol=tol, atol=tol * np.sqrt(k))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_accumulate_adds_to_c(isa, kernel_threads, dtype):
    rng = np.random.default_rng(1)
    for label, m, k, n, bt in _plan_shapes(dtype):
        a, b = _case(rng, dtype, m, k, n, bt)
        c0 = rng.standard_normal((m, n)).astype(dtype)
        c = c0.copy()
        _gemm.gemm(a, b, c, accumulate=True)
        expected = c0.astype(np.float64) + a.astype(np.float64) @ b.astype(np.float64)
        tol = 1e-4 if dtype == np.float32 else 1e-11
        np.testing.assert_allclose(c, expected, rtol=tol, atol=tol * np.sqrt(k), err_msg=label)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_column_sums_of_b_come_with_the_product(isa, kernel_threads, dtype):
    """b_sums = b.sum(axis=0) (a Dense layer's bias gradient) on every plan and split,
    for row-contiguous, transposed and reversed B, each column summed in row order (the
    same bits on every ISA path and thread count)."""
    rng = np.random.default_rng(4)
    tol = 1e-4 if dtype == np.float32 else 1e-11
    for label, m, k, n, bt in _plan_shapes(dtype):
        a, b = _case(rng, dtype, m, k, n, bt)
        for b_view in (b, b[::-1, ::-1]):
            c = np.empty((m, n), dtype)
            sums = np.full(n, np.nan, dtype)
            _gemm.gemm(a, b_view, c, b_sums=sums)
            assert_matmul_close(c, a, b_view, what=f"{label} with b_sums")
            np.testing.assert_allclose(sums, b_view.astype(np.float64).sum(axis=0), rtol=tol,
                                       atol=tol * np.sqrt(k), err_msg=label)
            in_order = np.zeros(n, dtype)     # each column summed down the rows, in order
            for row in b_view:
                in_order = in_order + row
            np.testing.assert_array_equal(sums, in_order, err_msg=label)
    empty = np.empty((0, 3), dtype)
    sums = np.full(5, np.nan, dtype)
    b = rng.standard_normal((3, 5)).astype(dtype)
    _gemm.gemm(empty, b, np.empty((0, 5), dtype), b_sums=sums)
    np.testing.assert_allclose(sums, b.sum(axis=0), rtol=tol)


def _grad_epilogue_names():
    return sorted(name for name, code in _gemm.EPILOGUES.items()
                  if code in _gemm.GRAD_EPILOGUES and name != "linear")


@pytest.mark.parametrize("name", _grad_epilogue_names())
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_derivative_epilogue_matches_the_activation_backward(isa, kernel_threads, dtype, name):
    """act_out=y: c = (a @ b) * act'(y), as the activation's own backward kernel gives it,
    on every plan and split."""
    rng = np.random.default_rng(5)
    act = activations.get(name)
    code, alpha = cn.ops.epilogue_of(act)
    for label, m, k, n, bt in _plan_shapes(dtype):
        a, b = _case(rng, dtype, m, k, n, bt)
        y = act.forward(rng.standard_normal((m, n)).astype(dtype))
        c = np.empty((m, n), dtype)
        _gemm.gemm(a, b, c, None, code, alpha, act_out=y)
        expected = act.backward(y, (a.astype(np.float64) @ b.astype(np.float64)).astype(dtype))
        tol = 2e-4 if dtype == np.float32 else 1e-11
        np.testing.assert_allclose(c, expected, rtol=tol, atol=tol * np.sqrt(k), err_msg=label)


def test_derivative_epilogue_refuses_bad_arguments():
    a = np.ones((4, 3))
    b = np.ones((3, 5))
    c = np.empty((4, 5))
    relu = _gemm.EPILOGUES["relu"]
    for bad in (np.ones((5, 4)), np.ones((4, 5), np.float32), np.ones((4, 10))[:, ::2]):
        with pytest.raises(ValueError, match="act_out"):
            _gemm.gemm(a, b, c, None, relu, act_out=bad)
    with pytest.raises(ValueError, match="derivative"):
        _gemm.gemm(a, b, c, None, _gemm.EPILOGUES["gelu"], act_out=np.ones((4, 5)))
    with pytest.raises(ValueError, match="no bias"):
        _gemm.gemm(a, b, c, np.zeros(5), relu, act_out=np.ones((4, 5)))
    with pytest.raises(ValueError, match="must not share memory"):
        _gemm.gemm(a, b, c, None, relu, act_out=c)


def test_column_sums_refuse_bad_outputs():
    a = np.ones((4, 3), np.float32)
    b = np.ones((3, 5), np.float32)
    c = np.empty((4, 5), np.float32)
    for bad in (np.empty(4, np.float32), np.empty(5, np.float64), np.empty((5, 1), np.float32),
                np.empty(10, np.float32)[::2]):
        with pytest.raises(ValueError, match="b_sums"):
            _gemm.gemm(a, b, c, b_sums=bad)
    with pytest.raises(ValueError, match="b_sums must not share memory"):
        _gemm.gemm(a, b, c, b_sums=c[0])


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_serial_entry_for_other_kernels(isa, dtype):
    """sgemm_serial / dgemm_serial (cimported by other kernels) over the same shapes,
    B row-contiguous, transposed and reversed, overwrite and accumulate."""
    rng = np.random.default_rng(2)
    for label, m, k, n, bt in _plan_shapes(dtype):
        a, b = _case(rng, dtype, m, k, n, bt)
        for a_view, b_view in ((a, b), (a[:, ::-1], b[::-1])):
            c = np.full((m, n), np.nan, dtype)
            _gemm._serial_for_tests(a_view, b_view, c)
            assert_matmul_close(c, a_view, b_view, what=f"serial {label} {isa}")
        c0 = rng.standard_normal((m, n)).astype(dtype)
        c = c0.copy()
        _gemm._serial_for_tests(a, b, c, accumulate=True)
        tol = 1e-4 if dtype == np.float32 else 1e-11
        np.testing.assert_allclose(c, c0 + a.astype(np.float64) @ b.astype(np.float64),
                                   rtol=tol, atol=tol * np.sqrt(k), err_msg=label)


def _reference_activation(name, z):
    """Forward pass of cyneuron's own activation, in float64, as the reference."""
    return activations.get(name).forward(np.ascontiguousarray(z, dtype=np.float64))


@pytest.mark.parametrize("isa_name", _gemm.compiled_isas())
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_plan_rule_for_every_compiled_blocking(isa_name, dtype):
    """The plan rule with each ISA's MR/NR/MC/KC/NC as input (runnable here or not):
    each labelled shape reaches its plan."""
    rng = np.random.default_rng(10)
    for label, m, k, n, bt in _plan_shapes(dtype, isa_name):
        a, b = _case(rng, dtype, m, k, n, bt)
        assert _gemm.plan(a, b, isa=isa_name)["plan"] == label.split("-")[0], (isa_name, label)


@pytest.mark.parametrize("isa_name", _gemm.compiled_isas())
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_plans_split_and_pack_as_documented(isa_name, dtype):
    """Two threads split whichever way leaves fewer micro-tiles on the busier thread
    (on the packed plan, counting a sliver packed by the other thread as a tile);
    a view whose column stride aliases the cache sets has A packed, and so has A^T
    from a number of columns on."""
    mr, nr = _gemm.block_sizes(np.dtype(dtype).name, isa_name)[:2]
    rng = np.random.default_rng(9)
    # One column sliver, many row tiles (past the direct plan's rows): split the rows.
    a, b = _case(rng, dtype, 40 * mr, 50, nr - 1, False)
    assert _gemm.plan(a, b, threads=2, isa=isa_name) == \
        {"plan": "packed", "split": "rows", "pack_a": False}
    # One row tile, ten column slivers: split the columns (direct: a few rows).
    a, b = _case(rng, dtype, min(4, mr), 50, 10 * nr, False)
    assert _gemm.plan(a, b, threads=2, isa=isa_name) == \
        {"plan": "direct", "split": "columns", "pack_a": False}
    # A tie, one sliver per thread (two row tiles, two column slivers): columns into a C
    # that starts on a cache line, rows into one that does not (false sharing).
    a, b = _case(rng, dtype, 2 * mr, 50, 2 * nr, False)
    raw = np.empty(2 * mr * 2 * nr + 64, dtype)
    first = (-raw.ctypes.data % 64) // raw.itemsize
    on_line = raw[first:first + 2 * mr * 2 * nr].reshape(2 * mr, 2 * nr)
    off_line = raw[first + 1:first + 1 + 2 * mr * 2 * nr].reshape(2 * mr, 2 * nr)
    assert _gemm.plan(a, b, threads=2, isa=isa_name, c=on_line)["split"] == "columns"
    assert _gemm.plan(a, b, threads=2, isa=isa_name, c=off_line)["split"] == "rows"
    for c in (on_line, off_line):
        _gemm.gemm(a, b, c)
        assert_matmul_close(c, a, b, what=f"tie split {isa_name}")
    # Packed B, four row tiles, 25 slivers: by tiles alone rows win (2 x 25 = 50 against
    # 4 x 13 = 52), but a row split moves the 12 slivers the other thread packed: columns.
    a, b = _case(rng, dtype, 4 * mr, 64, 25 * nr, True)
    assert _gemm.plan(a, b, threads=2, isa=isa_name) == \
        {"plan": "packed", "split": "columns", "pack_a": False}
    # ... while with many row tiles the rows still win (32 x 25 + 12 < 64 x 13).
    a, b = _case(rng, dtype, 64 * mr, 64, 25 * nr, True)
    assert _gemm.plan(a, b, threads=2, isa=isa_name)["split"] == "rows"
    # Past 4 row tiles (up to direct_max_m rows), B read in place needs its sliver rows
    # spread over a quarter of the L1 sets or more: rows l1_sets / 4 lines apart fall in
    # 4 sets (B packed), one sliver further apart in many more (B in place).
    n = _gemm.l1_sets() // 4 * 64 // np.dtype(dtype).itemsize
    for m, cols, want in ((4 * mr, n, "direct"), (5 * mr, n, "packed"), (5 * mr, n + nr, "direct")):
        a, b = _case(rng, dtype, m, 50, cols, False)
        assert _gemm.plan(a, b, isa=isa_name)["plan"] == want, (m, cols)
    limits = _gemm.plan_limits()
    rows = limits["direct_max_m"]
    # Past direct_max_m rows an eighth of the L1 sets will do: rows l1_sets / 8 lines
    # apart fall in 8 sets (B in place), l1_sets / 2 lines apart in 2 (B packed).
    m = rows + mr
    for lines, want in ((_gemm.l1_sets() // 8, "direct"), (_gemm.l1_sets() // 2, "packed")):
        a, b = _case(rng, dtype, m, 50, lines * 64 // np.dtype(dtype).itemsize, False)
        assert _gemm.plan(a, b, isa=isa_name)["plan"] == want, lines
    # A^T (columns contiguous, as X^T in a weight gradient) of more than direct_max_m
    # rows is packed from pack_a_t_min_n columns of C and pack_a_t_min_k of A; below
    # any of the three it is read in place, unless a shorter K's lines all fall in one
    # L1 set (A^T's columns l1_sets lines apart) and outnumber its ways.
    min_n, min_k = limits["pack_a_t_min_n"], limits["pack_a_t_min_k"]
    one_set = _gemm.l1_sets() * 64 // np.dtype(dtype).itemsize
    for m, k, n, packs in ((rows + 2 * mr + 1, min_k, min_n, True),
                           (rows + 2 * mr + 1, min_k, min_n - nr, False),
                           (rows + 2 * mr + 1, min_k - 1, min_n, False),
                           (rows - 1, min_k, min_n, False),
                           (one_set, _gemm.l1_ways() + 1, min_n, True),
                           (one_set + 1, _gemm.l1_ways() + 1, min_n, False)):
        b = _case(rng, dtype, 1, k, n, False)[1]
        x = rng.standard_normal((k, m)).astype(dtype)
        chosen = _gemm.plan(x.T, b, threads=2, isa=isa_name)
        assert chosen["pack_a"] is packs, (m, k, n)
        assert chosen["plan"] == "packed" or not packs, (m, k, n)
        c = np.empty((m, n), dtype)
        _gemm.gemm(x.T, b, c)
        assert_matmul_close(c, x.T, b, what=f"A^T {m}x{k}x{n} {isa_name}")
    # A^T packed (a weight gradient X^T dY): split by columns, every thread packs all of
    # A's row panels, each counted as a tile. 98 row tiles, 2s slivers (s even, as wide
    # as pack_a_t_min_n or 8): by tiles alone columns win (98 s against 49 x 2s + s), with
    # the 49 panels the other thread would have packed, rows.
    s = max(4, -(-min_n // nr) // 2)
    m, n = 98 * mr, 2 * s * nr
    x = rng.standard_normal((min_k, m)).astype(dtype)
    b = _case(rng, dtype, 1, min_k, n, False)[1]
    assert _gemm.plan(x.T, b, threads=2, isa=isa_name) == \
        {"plan": "packed", "split": "rows", "pack_a": True}
    # A product that mostly writes C (K = 10, C of 512 KB or more): rows while each
    # thread's piece of a C row would be 512 bytes or less, columns for wider pieces
    # (fewer rows than columns: a tie would go to the rows otherwise, see below).
    for m, n, split in ((1024, 128, "rows"), (512, 1024, "columns")):
        a, b = _case(rng, dtype, m, 10, n, False)
        assert _gemm.plan(a, b, threads=2, isa=isa_name)["split"] == split, n
        c = np.empty((m, n), dtype)
        _gemm.gemm(a, b, c)
        assert_matmul_close(c, a, b, what=f"K=10 N={n} {isa_name}")
    # A tie (an even number of row tiles and of slivers, several slivers a thread, B read
    # in place) splits the longer side of C: each thread then reads half of the larger
    # operand and all of the smaller one, not all of the larger one.
    n = _whole_lines(nr, dtype)
    m = 2 * mr * (_gemm.plan_limits()["direct_max_m"] // (2 * mr) + 1)
    for cols, split in ((4 * n, "rows"), (2 * n * (m // n + 1), "columns")):
        a, b = _case(rng, dtype, m, 64, cols, False)
        assert _gemm.plan(a, b, threads=2, isa=isa_name) == \
            {"plan": "direct", "split": split, "pack_a": False}, (m, cols)
        c = np.empty((m, cols), dtype)
        _gemm.gemm(a, b, c)
        assert_matmul_close(c, a, b, what=f"tie {m}x{cols} {isa_name}")
    # Many rows: B read in place when its sliver rows are whole cache lines, else packed
    # (B off a line, rows not whole lines apart, a ragged sliver).
    m, n = _gemm.plan_limits()["direct_max_m"] + 1, _whole_lines(nr, dtype)
    a, b = _case(rng, dtype, m, 50, 2 * n, False)
    assert _gemm.plan(a, b, isa=isa_name)["plan"] == "direct"
    assert _gemm.plan(a, b[:, 1:n + 1], isa=isa_name)["plan"] == "packed"
    assert _gemm.plan(a, b[:, :n - 1], isa=isa_name)["plan"] == "packed"
    a, b = _case(rng, dtype, 300, 50, 40, False)
    strided = np.repeat(a, 2, axis=1)[:, ::2]
    assert _gemm.plan(strided[::2], b, threads=2, isa=isa_name)["pack_a"] is True
    # A single row sums K's two halves apart from gemv_halves_min_b_bytes of B and
    # gemv_halves_min_k rows of it on (on any thread count); below either, one sum split
    # by columns. Not for two rows.
    min_k = limits["gemv_halves_min_k"]
    for m, k, n, split in ((1, min_k, _k_halves_columns(min_k, dtype), "k"),
                           (1, min_k, _k_halves_columns(min_k, dtype) - 1, "columns"),
                           (1, min_k - 1, _k_halves_columns(min_k - 1, dtype), "columns"),
                           (2, min_k, _k_halves_columns(min_k, dtype), "columns")):
        a, b = _case(rng, dtype, m, k, n, False)
        for threads in (1, 2):
            chosen = _gemm.plan(a, b, threads=threads, isa=isa_name)
            assert (chosen["plan"], chosen["split"]) == ("direct", split), (m, k, n, threads)


def test_plan_and_block_sizes_refuse_unknown_isas():
    a = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match="isa"):
        _gemm.plan(a, a.T, isa="sse9")
    with pytest.raises(ValueError, match="isa"):
        _gemm.block_sizes("float32", "neon")


def _epilogue_activations():
    return sorted(_gemm.EPILOGUES)


@pytest.mark.parametrize("name", _epilogue_activations())
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_epilogue_matches_separate_passes(isa, kernel_threads, dtype, name):
    rng = np.random.default_rng(2)
    act = activations.get(name)
    code, alpha = cn.ops.epilogue_of(act)
    for label, m, k, n, bt in _plan_shapes(dtype)[1:6]:
        a, b = _case(rng, dtype, m, k, n, bt)
        bias = rng.standard_normal(n).astype(dtype)
        c = np.empty((m, n), dtype)
        _gemm.gemm(a, b, c, bias, code, alpha)
        z = a.astype(np.float64) @ b.astype(np.float64) + bias
        expected = _reference_activation(name, z)
        tol = 2e-4 if dtype == np.float32 else 1e-10
        np.testing.assert_allclose(c, expected, rtol=tol, atol=tol * np.sqrt(k),
                                   err_msg=f"{name} {label}")


@pytest.mark.parametrize("name", ["leaky_relu", "elu"])
def test_epilogue_parameters_reach_the_kernel(name):
    rng = np.random.default_rng(3)
    a = rng.standard_normal((9, 5))
    b = rng.standard_normal((5, 7))
    act = activations.LeakyReLU(0.05) if name == "leaky_relu" else activations.ELU(0.4)
    got = cn.ops.matmul(a, b, activation=act)
    np.testing.assert_allclose(got, act.forward(a @ b), rtol=1e-12, atol=1e-12)


def test_matmul_every_epilogue_name_by_string():
    rng = np.random.default_rng(4)
    a = rng.standard_normal((13, 40)).astype(np.float32)
    b = rng.standard_normal((40, 21)).astype(np.float32)
    bias = rng.standard_normal(21).astype(np.float32)
    for name in _epilogue_activations():
        got = cn.ops.matmul(a, b, bias=bias, activation=name)
        expected = _reference_activation(name, a.astype(np.float64) @ b + bias)
        np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-4, err_msg=name)


@pytest.mark.parametrize("make", [
    lambda x: x[::-1],                      # negative row stride
    lambda x: x[:, ::-1],                   # negative column stride
    lambda x: np.asfortranarray(x),         # column-major
    lambda x: x[::2, ::3],                  # neither stride is 1: packed copy of A
    lambda x: x.T.copy().T,                 # transposed view of a copy
], ids=["rows-reversed", "cols-reversed", "fortran", "every-2nd-3rd", "transposed-view"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_strided_views_are_read_not_misread(kernel_threads, dtype, make):
    rng = np.random.default_rng(5)
    for m, k, n in [(7, 11, 19), (150, 400, 33)]:
        base_a = rng.standard_normal((2 * m, 3 * k)).astype(dtype)
        base_b = rng.standard_normal((2 * k, 3 * n)).astype(dtype)
        a = make(base_a)[:m, :k]
        b = make(base_b)[:k, :n]
        c = np.empty((m, n), dtype)
        _gemm.gemm(a, b, c)
        assert_matmul_close(c, a, b, what="view")


def test_kernel_entry_refuses_bad_arguments():
    a = np.ones((3, 4), np.float32)
    b = np.ones((4, 5), np.float32)
    c = np.empty((3, 5), np.float32)
    with pytest.raises(ValueError, match="shapes do not agree"):
        _gemm.gemm(a, b[:3], c)
    with pytest.raises(TypeError, match="dtype"):
        _gemm.gemm(a, b.astype(np.float64), c)
    with pytest.raises(TypeError, match="float32 or float64"):
        _gemm.gemm(a, b, c.astype(np.int32))
    with pytest.raises(ValueError, match="C-contiguous"):
        _gemm.gemm(a, b, np.empty((5, 3), np.float32).T)
    with pytest.raises(ValueError, match="2-D"):
        _gemm.gemm(a[0], b, c)
    with pytest.raises(ValueError, match="bias"):
        _gemm.gemm(a, b, c, np.ones(4, np.float32))
    with pytest.raises(ValueError, match="epilogue"):
        _gemm.gemm(a, b, c, None, 99)
    with pytest.raises(ValueError, match="accumulate"):
        _gemm.gemm(a, b, c, np.ones(5, np.float32), accumulate=True)
    square = np.ones((4, 4), np.float32)
    with pytest.raises(ValueError, match="share memory"):
        _gemm.gemm(square, square[:, :4], square)
    with pytest.raises(TypeError):
        _gemm.gemm(a.tolist(), b, c)


def test_fused_epilogue_not_applied_for_softmax():
    """Softmax is not element-wise: ops.matmul applies it after the GEMM."""
    rng = np.random.default_rng(6)
    a = rng.standard_normal((5, 8))
    b = rng.standard_normal((8, 6))
    got = cn.ops.matmul(a, b, activation="softmax")
    z = a @ b
    e = np.exp(z - z.max(axis=1, keepdims=True))
    np.testing.assert_allclose(got, e / e.sum(axis=1, keepdims=True), rtol=1e-12)
    assert cn.ops.epilogue_of(activations.get("softmax")) is None


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/statm"), reason="needs /proc")
def test_no_memory_growth_over_10000_calls(restore_threads):
    cn.set_num_threads(2)
    rng = np.random.default_rng(7)
    shapes = [(3, 5, 7), (64, 64, 64), (200, 300, 50), (16, 400, 100), (130, 20, 2000)]
    ops = []
    for m, k, n in shapes:
        a = rng.standard_normal((m, k)).astype(np.float32)
        b = rng.standard_normal((k, n)).astype(np.float32)
        ops.append((a, b, np.empty((m, n), np.float32), np.ones(n, np.float32)))
    for a, b, c, bias in ops:       # warm up: workspaces reach their final size
        _gemm.gemm(a, b, c, bias, 1)
        _gemm.gemm(a, b.T.copy().T, c)
    before = _rss_bytes()
    for i in range(10_000):
        a, b, c, bias = ops[i % len(ops)]
        if i % 2:
            _gemm.gemm(a, b, c, bias, 1)
        else:
            cn.ops.matmul(a, b, out=c)
    growth = _rss_bytes() - before
    assert growth < 4 << 20, f"resident memory grew by {growth / 2**20:.1f} MiB over 10,000 calls"


def test_concurrent_callers_get_their_own_workspaces(restore_threads):
    """Python threads calling the GEMM at once (the GIL is released inside) never share
    a packing buffer."""
    cn.set_num_threads(1)
    rng = np.random.default_rng(8)
    cases = []
    for t in range(4):
        m, k, n = 150 + t, 300 + 7 * t, 40 + t
        a = rng.standard_normal((m, k)).astype(np.float32)
        b = rng.standard_normal((n, k)).astype(np.float32).T   # packed plan
        cases.append((a, b, a.astype(np.float64) @ b.astype(np.float64)))
    errors = []

    def work(a, b, expected):
        c = np.empty(expected.shape, np.float32)
        for _ in range(30):
            _gemm.gemm(a, b, c)
            if not np.allclose(c, expected, rtol=1e-3, atol=1e-3):
                errors.append("wrong result")
                return

    threads = [threading.Thread(target=work, args=case) for case in cases]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors


def test_fma_peak_is_measured():
    one = _gemm.fma_peak_gflops(threads=1, seconds=0.02)
    assert np.isfinite(one) and one > 0.1


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_batch_of_products_gives_gemm_s_bits(isa, kernel_threads, dtype):
    """gemm_batch: c[g] (+)= a[g] @ b[g], each product on one thread, the same bits as
    gemm on each slice (its plans never split a sum), for transposed and strided views, a
    batch shorter or longer than the thread count, and accumulate."""
    rng = np.random.default_rng(13)
    mr, nr = _gemm.block_sizes(np.dtype(dtype).name)[:2]
    for g, m, k, n in ((1, 5, 3, 2), (3, 2 * mr + 1, 40, nr + 3), (36, 4 * mr, 32, 2 * nr),
                       (5, 17, _gemm.block_sizes(np.dtype(dtype).name)[3] + 5, 7)):
        a = rng.standard_normal((g, m + 1, k)).astype(dtype)[:, 1:]        # rows strided
        bt = rng.standard_normal((g, n, k)).astype(dtype)                  # b transposed
        c = np.full((g, m + 2, n), np.nan, dtype)[:, :m]
        _gemm.gemm_batch(a, bt.transpose(0, 2, 1), c)
        for i in range(g):
            want = np.empty((m, n), dtype)
            _gemm.gemm(a[i], bt[i].T, want)
            np.testing.assert_array_equal(c[i], want, err_msg=f"{g}x{m}x{k}x{n} {isa}")
            assert_matmul_close(c[i], a[i], bt[i].T, what=f"batch {g}x{m}x{k}x{n} {isa}")
        start = c.copy()
        _gemm.gemm_batch(a.transpose(0, 2, 1).transpose(0, 2, 1), bt.transpose(0, 2, 1), c,
                         accumulate=True)
        tol = 1e-4 if dtype == np.float32 else 1e-11
        np.testing.assert_allclose(c, start + a.astype(np.float64) @ bt.transpose(0, 2, 1),
                                   rtol=tol, atol=tol * np.sqrt(k))


def test_batch_of_products_refuses_bad_arguments():
    a, b, c = np.ones((2, 3, 4)), np.ones((2, 4, 5)), np.empty((2, 3, 5))
    with pytest.raises(ValueError, match="3-D"):
        _gemm.gemm_batch(a[0], b, c)
    with pytest.raises(TypeError, match="one float dtype"):
        _gemm.gemm_batch(a.astype(np.float32), b, c)
    with pytest.raises(ValueError, match="shapes do not agree"):
        _gemm.gemm_batch(a, np.ones((2, 3, 5)), c)
    with pytest.raises(ValueError, match="shapes do not agree"):
        _gemm.gemm_batch(np.ones((3, 3, 4)), b, c)
    with pytest.raises(ValueError, match="contiguous rows"):
        _gemm.gemm_batch(a, b, np.empty((2, 5, 3)).transpose(0, 2, 1))
    overlapping = np.lib.stride_tricks.as_strided(np.empty(40), (2, 3, 5), (8 * 15, 8 * 4, 8))
    with pytest.raises(ValueError, match="none overlapping"):
        _gemm.gemm_batch(a, b, overlapping)          # rows 4 values apart, 5 wide
    slices_overlap = np.lib.stride_tricks.as_strided(np.empty(40), (2, 3, 5), (8 * 5, 8 * 5, 8))
    with pytest.raises(ValueError, match="none overlapping"):
        _gemm.gemm_batch(a, b, slices_overlap)       # the second slice starts at row 1
    shared = np.zeros((2, 4, 5))
    with pytest.raises(ValueError, match="share memory"):
        _gemm.gemm_batch(shared[:, :3, :4], shared[:, :, :], shared[:, :3, :])
    with pytest.raises(ValueError, match="at least 1"):
        _gemm.gemm_batch(np.ones((2, 3, 0)), np.ones((2, 0, 5)), c)
    with pytest.raises(TypeError, match="float32 or float64"):
        _gemm.gemm_batch(a, b, np.empty((2, 3, 5), np.int64))
