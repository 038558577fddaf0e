"""Run-time configuration: instruction set, threads, and a report of both."""
import os
import warnings

from ._kernels import _openmp
from ._kernels import gemm as _gemm

ISA_ENV = "CYNEURON_ISA"


def _apply_isa_override():
    """Honour CYNEURON_ISA=generic|avx2|avx512, falling back (with a warning) when unusable."""
    name = os.environ.get(ISA_ENV, "").strip().lower()
    if not name:
        return
    try:
        _gemm.set_isa(name)
    except ValueError as exc:
        warnings.warn(f"{ISA_ENV}={name!r} ignored: {exc}; using {_gemm.get_isa()!r}",
                      RuntimeWarning, stacklevel=3)


_fusion = True


def set_fusion(enabled):
    """Turn the fused kernels (GEMM epilogues, output activation + loss) on or off.

    Off runs the plain path: separate bias, activation and loss passes. The results agree
    to rounding; tests use it to check the fused path against the plain one."""
    global _fusion
    _fusion = bool(enabled)


def fusion_enabled():
    return _fusion


def get_isa():
    """Name of the SIMD path in use: 'generic', 'avx2' or 'avx512'."""
    return _gemm.get_isa()


def supported_isas():
    """SIMD paths this CPU can run."""
    return _gemm.supported_isas()


def set_num_threads(n):
    """Use `n` threads in every kernel (the OpenMP pool size; OMP_NUM_THREADS sets the default).

    In a child made by os.fork() from a multi-threaded parent the kernels stay on one
    thread (libgomp's pool does not survive fork); asking for more warns. Children made
    with multiprocessing's "spawn" or "forkserver" start methods have no such limit."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"set_num_threads: n must be a positive integer, got {n!r}")
    if n > 1 and _openmp.forked_single_thread():
        warnings.warn(f"set_num_threads({n}) ignored: this process was forked from a "
                      f"multi-threaded parent, where the OpenMP pool cannot be used; kernels "
                      f"run on one thread (use the 'spawn' or 'forkserver' start method for "
                      f"multi-threaded workers)", RuntimeWarning, stacklevel=2)
    _openmp.set_num_threads(n)


def get_num_threads():
    """Threads the kernels will use for large work."""
    return _openmp.get_max_threads()


def openmp_runtime():
    """Path of the OpenMP runtime library loaded in this process (Linux), or None."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split()[-1]
                name = os.path.basename(path)
                if name.startswith(("libgomp", "libomp", "libiomp")):
                    return path
    except OSError:
        pass
    return None


def config():
    """The build and run-time configuration, as a dict."""
    from . import __version__

    return {
        "version": __version__,
        "isa": get_isa(),
        "supported_isas": supported_isas(),
        "openmp": _openmp.openmp_enabled(),
        "openmp_runtime": openmp_runtime(),
        "num_threads": get_num_threads(),
        "forked_single_thread": _openmp.forked_single_thread(),
        "cpu_count": os.cpu_count(),
        "gemm_blocks_float32": dict(zip(("MR", "NR", "MC", "KC", "NC"), _gemm.block_sizes("float32"))),
        "gemm_blocks_float64": dict(zip(("MR", "NR", "MC", "KC", "NC"), _gemm.block_sizes("float64"))),
    }


def show_config():
    """Print version, SIMD path in use, OpenMP runtime and threads."""
    for key, value in config().items():
        print(f"{key:>20}: {value}")
