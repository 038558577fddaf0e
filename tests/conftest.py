"""Shared fixtures: kernel thread count and SIMD path, each restored after the test."""
import pytest

import cyneuron as cn
from cyneuron import _config
from cyneuron._kernels import gemm as _gemm

# Every SIMD path the library knows; the CPU decides which ones can run.
ALL_ISAS = ("generic", "avx2", "avx512")


@pytest.fixture
def restore_threads():
    """Put the OpenMP pool size back to what it was before the test."""
    before = cn.get_num_threads()
    yield before
    cn.set_num_threads(before)


@pytest.fixture(params=[1, 2], ids=lambda n: f"threads{n}")
def kernel_threads(request, restore_threads):
    """Run the test with the kernels on 1 and on 2 threads."""
    cn.set_num_threads(request.param)
    return request.param


@pytest.fixture(params=ALL_ISAS)
def isa(request):
    """Run the test on each SIMD path this CPU supports (set in-process, restored afterwards)."""
    name = request.param
    supported = _config.supported_isas()
    if name not in supported:
        pytest.skip(f"the {name!r} SIMD path is not supported by this CPU "
                    f"(supported: {', '.join(supported)})")
    before = _gemm.get_isa()
    _gemm.set_isa(name)
    try:
        yield name
    finally:
        _gemm.set_isa(before)
