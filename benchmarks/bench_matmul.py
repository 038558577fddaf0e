"""cyneuron.ops.matmul vs numpy matmul (OpenBLAS) on the cases of issue 3's targets: one group
per case with both libraries; GFLOP/s and % of the measured FMA peak in extra_info.

The cases are those of `python -m cyneuron bench matmul` (cyneuron.bench.matmul.matmul_cases):
float32 squares n = 64 ... 2048 (64 and 128 without out=, call overhead included), float64
squares 512 ... 2048, the 48 products of Dense layers (forward X @ W, dX = dY @ W^T,
dW = X^T @ dY; cyneuron with the transpose flags, numpy on the transposed views) and float32
squares with both libraries on 1 thread (the `one_thread` fixture, restored afterwards).
Everything else writes into a preallocated C-contiguous `out`. Each benchmark starts after a
short pause: the worker threads of the library that ran just before still spin for ~0.1 s.
"""
import numpy as np
import pytest

import cyneuron as cn
from cyneuron.bench.harness import both_on_threads, measure_fma_peak, settle_threads
from cyneuron.bench.matmul import case_callables, gemm_flops, matmul_cases, matmul_error

ALL_CASES = matmul_cases()
CASES = [c for c in ALL_CASES if not c.threads]
ONE_THREAD_CASES = [c for c in ALL_CASES if c.threads == 1]
IMPLEMENTATIONS = ["cyneuron", "numpy"]

_peaks = {}  # {threads: measured float32 FMA peak, GFLOP/s}


def _fma_peak(threads):
    """The float32 FMA peak on `threads` threads, measured once per session (None if unknown)."""
    if threads not in _peaks:
        _peaks[threads] = measure_fma_peak(threads)
    return _peaks[threads]


@pytest.fixture
def one_thread():
    """cyneuron's kernels and numpy's BLAS on 1 thread for the test; both restored afterwards."""
    with both_on_threads(1) as limited:
        if not limited:
            pytest.skip("threadpoolctl is not installed: numpy's BLAS threads cannot be limited")
        yield 1


def _record(benchmark, case, threads):
    stats = getattr(benchmark, "stats", None)  # None under --benchmark-disable
    if stats is None:
        return
    s = stats.stats
    flops = gemm_flops(case.m, case.k, case.n)
    benchmark.extra_info["gflops"] = round(flops / s.min * 1e-9, 2)
    benchmark.extra_info["gflops_median"] = round(flops / s.median * 1e-9, 2)
    peak = _fma_peak(threads)
    if peak:
        peak *= 4 / np.dtype(case.dtype).itemsize  # float64: half
        benchmark.extra_info["peak_gflops"] = round(peak, 1)
        benchmark.extra_info["pct_peak"] = round(100 * flops / s.min * 1e-9 / peak, 1)


def _run(benchmark, case, impl, threads):
    fns = case_callables(case)
    # correctness once (never a time): both implementations agree
    err, ok = matmul_error(fns["cyneuron"](), fns["numpy"]())
    assert ok, f"{case.label}: cyneuron differs from numpy by {err:.1e} (relative to max |numpy|)"

    benchmark.group = (f"matmul {case.section}: {case.label} "
                       f"({case.m}x{case.k}x{case.n} {case.dtype}, {threads} threads)")
    benchmark.extra_info.update(shape=[case.m, case.k, case.n], dtype=case.dtype,
                                trans_a=case.trans_a, trans_b=case.trans_b, out=case.out,
                                threads=threads, isa=cn.get_isa())
    settle_threads()  # let the other library's spinning threads park (see cyneuron.bench.harness)
    benchmark(fns[impl])
    _record(benchmark, case, threads)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("case", CASES, ids=[c.ident for c in CASES])
def test_matmul(benchmark, case, impl):
    _run(benchmark, case, impl, cn.get_num_threads())


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("case", ONE_THREAD_CASES, ids=[c.ident for c in ONE_THREAD_CASES])
def test_matmul_one_thread(benchmark, one_thread, case, impl):
    _run(benchmark, case, impl, one_thread)
