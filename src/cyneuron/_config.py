"""Run-time configuration: instruction set, threads, and a report of both."""
import os
import threading
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


# OpenMP's thread count is a per-thread setting (omp_set_num_threads sets it for the
# calling thread only): set_num_threads records it here, and every Python thread applies
# the latest value before it runs a model (apply_num_threads), so it holds process-wide.
_threads = {"n": None, "generation": 0}
_applied = threading.local()


def set_num_threads(n):
    """Use `n` threads in every kernel (the OpenMP pool size; OMP_NUM_THREADS sets the
    default), in every Python thread: a thread applies it when it next runs a model.

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
    _threads["n"] = n
    _threads["generation"] += 1
    _applied.generation = _threads["generation"]
    probe_thread_distance()


def probe_thread_distance():
    """Measure how far apart the pool's threads are (a cache-line round trip, ns; None on
    one thread) and let the GEMM's one-thread threshold follow it. A VM's vCPUs can move
    between cores that share an L3 and cores that do not while it runs, so set_num_threads,
    each training epoch and each benchmark round measure again (~0.1-0.4 ms)."""
    ns = _openmp.cache_line_round_trip_ns(trips=300, tries=1)
    _gemm.set_thread_distance(ns)
    return ns


def apply_num_threads():
    """Bring this thread's OpenMP thread count to the last set_num_threads (once per
    thread and setting; a threadpoolctl limit set in the thread holds until then)."""
    generation = _threads["generation"]
    if generation and getattr(_applied, "generation", 0) != generation:
        _openmp.set_num_threads(_threads["n"])
        _applied.generation = generation


def get_num_threads():
    """Threads the kernels will use for large work (in this thread)."""
    apply_num_threads()
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


def _round(ns):
    return None if ns is None else round(ns)


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
        # ~100 ns: the pool's first two threads share an L3; 3-4x that: they do not
        "thread_round_trip_ns": _round(_openmp.cache_line_round_trip_ns()),
        "gemm_blocks_float32": dict(zip(("MR", "NR", "MC", "KC", "NC"), _gemm.block_sizes("float32"))),
        "gemm_blocks_float64": dict(zip(("MR", "NR", "MC", "KC", "NC"), _gemm.block_sizes("float64"))),
    }


def kernel_isas():
    """{kernel family: (instruction set it runs now, why)}: what `python -m cyneuron info`
    prints. Each family asks its own kernel module, so this follows CYNEURON_ISA and
    set_isa like the kernels do."""
    from ._kernels import attention as _attention
    from ._kernels import normalization as _normalization
    from ._kernels import optim as _optim
    from ._kernels import recurrent as _recurrent

    isa, widest = get_isa(), supported_isas()[-1]
    if isa == widest:
        why = "the widest instruction set this CPU supports"
    else:
        why = f"chosen by {ISA_ENV} or set_isa (this CPU supports up to {widest})"
    epilogue = _gemm.epilogue_isa()
    gates = _recurrent._sync_isa()
    vector = isa    # csrc/vmath.h has a copy for each of the GEMM's instruction sets
    layer_norm = _normalization.simd_path()
    return {
        "GEMM micro-kernels": (isa, why),
        "GEMM epilogue (bias, relu, leaky_relu, derivatives, column sums)": (
            epilogue, "the generic path is in use" if epilogue == "generic" else
            "AVX2 copy on the AVX2 and AVX-512 paths: an AVX-512 copy measured no gain "
            "(the pass is ~1% of the product); other activations: baseline loops"),
        "optimizers (Adam, AdamW, RMSprop, Adagrad)": (
            _optim.simd_path(), "a copy per instruction set, the GEMM's (no FMA: same bits)"),
        "optimizers (SGD), clipping, L2": (
            "baseline", "Cython loops built for baseline x86-64 (SSE2), auto-vectorized; "
            "bound by memory bandwidth"),
        "recurrent gate math (float32 sigmoid/tanh)": (
            gates + ("+fma" if gates == "avx2" else ""),
            "scalar C (the generic path is in use)" if gates == "generic" else
            "a vector copy per instruction set from one template, the GEMM's"),
        "attention row loops (float32 softmax exp, max, sums)": (
            _attention.simd_path(), "a copy per instruction set, the GEMM's; the tile "
            "products run on the GEMM's micro-kernels"),
        "activations (float32 sigmoid, tanh, gelu, gelu_tanh, swish, elu, exponential, "
        "softmax; also in the GEMM epilogue)": (
            vector, "libm loops (the generic path is in use)" if vector == "generic" else
            "a vector copy per instruction set from one template (csrc/vmath_template.h), "
            "the GEMM's; float64 keeps libm"),
        "layer normalization rows (forward, backward)": (
            layer_norm, "the generic path is in use" if layer_norm == "generic" else
            "AVX2 copy on the AVX2 and "
            "AVX-512 paths: eight double lanes in a fixed order, the baseline's bits"),
        "other activations and derivatives, losses, batch normalization, conv/pooling "
        "loops": (
            "baseline", "Cython loops built for baseline x86-64 (SSE2), auto-vectorized; "
            "the dense layers' activations run in the GEMM epilogue instead"),
    }


def show_config():
    """Print version, SIMD path in use, OpenMP runtime and threads, and which instruction
    set each kernel family runs."""
    for key, value in config().items():
        print(f"{key:>20}: {value}")
    print("kernel families (instruction set in use: why):")
    for family, (isa, why) in kernel_isas().items():
        print(f"  {family}: {isa}: {why}")
