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
    """Run the test with the kernels on 1 and on 2 threads (on 2, every GEMM goes to the
    pool, however small: the splits are what the test is for, not the speed)."""
    cn.set_num_threads(request.param)
    if request.param > 1:
        _gemm._set_parallel_min_macs_for_tests(0)
    yield request.param
    _gemm._set_parallel_min_macs_for_tests(-1)


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


# -- hypothesis profiles (property-based tests, tests/test_properties_*.py) --------------
# "ci" (the default, 100 examples a test) keeps the whole property suite well under two
# minutes on two cores (about 17 s); HYPOTHESIS_PROFILE=long runs 2,000 a test, for
# release checks (about 5 minutes); "dev" runs 10:
#     HYPOTHESIS_PROFILE=long python -m pytest tests -k properties
try:
    import os as _os

    from hypothesis import HealthCheck, settings
except ImportError:      # hypothesis is a test extra; the property tests skip without it
    pass
else:
    _relaxed = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
    settings.register_profile("ci", max_examples=100, deadline=None, print_blob=True,
                              suppress_health_check=_relaxed)
    settings.register_profile("long", max_examples=2000, deadline=None, print_blob=True,
                              suppress_health_check=_relaxed)
    settings.register_profile("dev", max_examples=10, deadline=None, print_blob=True,
                              suppress_health_check=_relaxed)
    settings.load_profile(_os.environ.get("HYPOTHESIS_PROFILE", "ci"))
