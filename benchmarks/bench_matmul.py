"""cyneuron.ops.matmul vs numpy matmul (OpenBLAS), one group per shape, GFLOP/s in extra_info.

Both write into a preallocated C-contiguous `out`. trans_a / trans_b: cyneuron gets the
operand stored transposed and the flag; numpy multiplies the transposed view (which its
BLAS call also reads without a copy). Each benchmark starts after a short pause: the
worker threads of the library that ran just before still spin on the cores for ~0.1 s.
"""
import numpy as np
import pytest

from cyneuron._bench import MATMUL_CASES, gemm_flops, matmul_callables, settle_threads


def _record_rate(benchmark, work, key, unit_scale=1.0):
    stats = getattr(benchmark, "stats", None)  # None under --benchmark-disable
    if stats is None:
        return
    s = stats.stats
    benchmark.extra_info[key] = round(work / s.min * unit_scale, 2)
    benchmark.extra_info[key + "_median"] = round(work / s.median * unit_scale, 2)


@pytest.mark.parametrize("impl", ["cyneuron", "numpy"])
@pytest.mark.parametrize("case", MATMUL_CASES, ids=[c[0].replace(" ", "-") for c in MATMUL_CASES])
def test_matmul(benchmark, case, impl):
    label, m, k, n, dtype, trans_a, trans_b = case
    fns = matmul_callables(m, k, n, dtype, trans_a, trans_b)
    # correctness once (never a time): both implementations agree
    got, want = fns["cyneuron"](), fns["numpy"]()
    rtol = 1e-3 if dtype == "float32" else 1e-10
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * float(np.abs(want).max()))

    benchmark.group = f"matmul {label} ({m}x{k}x{n} {dtype})"
    benchmark.extra_info.update(shape=[m, k, n], dtype=dtype, trans_a=trans_a, trans_b=trans_b)
    settle_threads()  # let the other library's spinning threads park (see _bench)
    benchmark(fns[impl])
    _record_rate(benchmark, gemm_flops(m, k, n), "gflops", 1e-9)
