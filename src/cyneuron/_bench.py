"""`python -m cyneuron bench [matmul|mlp|conv|resnet|rnn|transformer|sklearn|rbm|som|all]`:
cyneuron next to its references, same run.

matmul: cyneuron.ops.matmul against numpy's matmul (OpenBLAS) on the cases of issue 3's
        targets (squares n = 64 ... 2048, float64 squares, the 48 products of Dense layers,
        squares on 1 thread): GFLOP/s, the ratio (cyneuron speed / numpy speed), the share of
        the float32 FMA peak measured at the start, and a table of the targets, met or not.
        --quick: squares 64/128/512/1024 and the dense products, 4 repeats.
mlp:    training epochs (Adam) of the 784-256-128-10 and 784-512-512-10 ReLU/softmax MLPs
        at batch 32, 128 and 512, in samples/s, against PyTorch CPU and scikit-learn where
        they are installed; one-sample predict latency and batched predict (see _bench_mlp).
sklearn: cyneuron.sklearn.MLPClassifier against scikit-learn's MLPClassifier fitting the
        digits (same architecture, solver, batch size, epochs and random_state): seconds
        per fit, test accuracy and the speed-up.
conv:   one training step (forward + backward + Adam) of a LeNet-style CNN on 28x28x1
        images, batch 64, float32, in samples/s, against the same network in PyTorch CPU,
        in its default NCHW layout ("torch") and in channels_last ("torch-channels-last",
        NHWC like cyneuron; PyTorch's faster CPU layout for this network); and inference
        (softmax probabilities) on the same batch. Adam comes from
        cn.optimizers.get("adam"); where this build has no Adam yet, all sides use SGD
        with momentum 0.9 instead, and the table says so.
rnn:    one training step of LSTM(128) -> Dense(10, softmax) on the last step (T = 50,
        32 features, batch 32, Adam, float32) and the same with GRU(128), in sequences/s,
        against PyTorch CPU (nn.LSTM / nn.GRU + nn.Linear, torch.optim.Adam); and inference
        on 256 sequences. Runs on 2 threads unless --threads says otherwise.
transformer: the fused attention op (batch 8, 8 heads, head_dim 64, T = 128 / 512 / 2048,
        forward and forward + backward, and its peak memory at T = 2048) against
        torch.nn.functional.scaled_dot_product_attention, and a 2-layer Transformer
        encoder classifier (training and inference) against nn.TransformerEncoder
        (see _bench_transformer).
inference: predict of the MLP, LeNet CNN and LSTM classifier at batch 1 and 256 against
        onnxruntime running the same models exported by cn.onnx.export (see _bench_onnx).
rbm, som: BernoulliRBM.fit against scikit-learn's, SOM training against MiniSom's
        (see _bench_classic).

The machine's environment may set OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE, which force numpy's
OpenBLAS onto a slower kernel. OpenBLAS reads them when numpy is first imported, and
cyneuron has imported numpy by the time this runs, so main() re-executes the interpreter
without them before it times anything (--keep-openblas-env keeps them, to measure the
handicapped reference on purpose).

Only numpy and cyneuron are imported here; torch, scikit-learn and threadpoolctl are
imported lazily and are optional. The helpers that build the models are shared with the
pytest-benchmark suite in benchmarks/.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import sys
import time
from typing import NamedTuple

import numpy as np

OPENBLAS_HANDICAP_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
_REEXEC_MARKER = "CYNEURON_BENCH_REEXECUTED"


# LeNet-style CNN: Conv2D 32 3x3 same + ReLU, MaxPooling 2, Conv2D 64 3x3 same + ReLU,
# MaxPooling 2, Flatten, Dense 128 ReLU, Dense 10 softmax, on 28x28x1 images.
CONV_INPUT = (28, 28, 1)
CONV_CLASSES = 10
CONV_BATCH = 64
CONV_SGD_LR = 0.01      # the SGD fallback (Adam: its default learning rate, both sides)
CONV_MOMENTUM = 0.9


# -- the environment -------------------------------------------------------------------------
def openblas_handicap():
    """{name: value} of the OPENBLAS_* variables set now that slow numpy's reference down."""
    return {k: os.environ[k] for k in OPENBLAS_HANDICAP_VARS if k in os.environ}


def _reexec_without_handicap(argv):
    """Replace this process by the same bench run without OPENBLAS_CORETYPE / _L2_SIZE."""
    import importlib.util

    env = {k: v for k, v in os.environ.items() if k not in OPENBLAS_HANDICAP_VARS}
    env[_REEXEC_MARKER] = ",".join(f"{k}={v}" for k, v in openblas_handicap().items())
    try:
        has_main = importlib.util.find_spec("cyneuron.__main__") is not None
    except (ImportError, ValueError):
        has_main = False
    if has_main:
        args = [sys.executable, "-m", "cyneuron", "bench", *argv]
    else:  # `python -m cyneuron` not wired yet: call this module directly
        args = [sys.executable, "-c",
                "import sys; from cyneuron._bench import main; sys.exit(main(sys.argv[1:]))", *argv]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, args, env)


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def _cpu_mhz():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("cpu MHz"):
                    return float(line.split(":", 1)[1])
    except (OSError, ValueError):
        pass
    return None


def estimated_peak_gflops(dtype, isa, threads, mhz=None):
    """threads x clock x FLOP/cycle (two FMA pipes of the ISA's vector width).

    The clock is /proc/cpuinfo's 'cpu MHz' (often the nominal clock: turbo makes the real
    peak higher). None when the clock is unknown.
    """
    mhz = _cpu_mhz() if mhz is None else mhz
    if not mhz:
        return None
    bits = {"avx512": 512, "avx2": 256}.get(isa, 128)
    lanes = bits // (8 * np.dtype(dtype).itemsize)
    return threads * mhz * 1e-3 * 2 * 2 * lanes


def _blas_info():
    """numpy's BLAS as threadpoolctl sees it (name, kernel, threads), or a placeholder."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "unknown (threadpoolctl not installed)"
    for info in threadpool_info():
        if info.get("user_api") == "blas":
            return (f"{info.get('internal_api')} {info.get('version')}, kernel "
                    f"{info.get('architecture')}, {info.get('num_threads')} threads")
    return "unknown"


def _limit_blas_threads(n):
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    return threadpool_limits(limits=n, user_api="blas")


# -- timing ----------------------------------------------------------------------------------
SETTLE_S = 0.2


def settle_threads(seconds=SETTLE_S):
    """Sleep until the worker threads of the library that ran last have parked.

    OpenBLAS's threads busy-wait for about 2**28 cycles (~0.1 s) after each call, libgomp's
    for a while too; meanwhile they hold the cores that the next library's threads need.
    Measured here (2 cores): cyneuron's 256^3 matmul right after numpy's ran at 1-75 GFLOP/s,
    0.2 s later at ~145; numpy right after cyneuron at ~95, 0.2 s later at ~150.
    """
    time.sleep(seconds)


CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}
_clock = CLOCKS["wall"]


def set_clock(name):
    """Time with the wall clock ('wall', the default) or this thread's CPU time ('cpu').

    CPU time leaves out the moments the thread waits for a core another process holds,
    so one-thread figures stay steady on a busy machine; it is only meaningful when every
    contender computes in the calling thread (one thread everywhere)."""
    global _clock
    if name not in CLOCKS:
        raise ValueError(f"clock must be one of {sorted(CLOCKS)}, got {name!r}")
    _clock = CLOCKS[name]


def _calibrate(fn, target_s):
    """Calls per repeat so that one repeat lasts about target_s (after a warm-up call)."""
    fn()
    t0 = _clock()
    fn()
    once = max(_clock() - t0, 1e-7)
    return max(1, int(target_s / once))


MIN_ROUNDS = 5
SPREAD_WARN = 0.15   # (max - min) / median of the rounds above this: the machine was busy


def time_blocks(fns, repeats=8, target_s=0.04, settle_s=SETTLE_S):
    """Seconds per call of each function in `fns` (a dict): one sample per round each.

    The contenders are interleaved: each of the `repeats` rounds times every function
    once (about target_s of calls), the order rotating from round to round (A B C, B C A,
    C A B ...), so that a drift in the machine's speed (another process, the clock) hits
    them all alike. Before a function runs after another one, a pause lets the previous
    library's spinning threads park (see settle_threads) and a warm-up call is made.
    """
    names = list(fns)
    loops = {}
    samples = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            fn = fns[name]
            if len(names) > 1 or r == 0:
                settle_threads(settle_s)
            if name not in loops:
                loops[name] = _calibrate(fn, target_s)
            else:
                fn()
            n, done = loops[name], 0
            t0 = _clock()
            deadline = t0 + 4 * target_s  # the calibration call may have been lucky
            while done < n:
                fn()
                done += 1
                if _clock() > deadline:
                    break
            samples[name].append((_clock() - t0) / done)
    return samples


def _pick(samples, stat):
    return min(samples) if stat == "best" else statistics.median(samples)


def spread(samples):
    """(max - min) / median of one contender's rounds: how steady the machine was."""
    return (max(samples) - min(samples)) / statistics.median(samples)


def spread_cell(samples):
    """The spread as a table cell, marked (!) above SPREAD_WARN."""
    value = spread(samples)
    return f"{100 * value:.0f}%" + (" (!)" if value > SPREAD_WARN else "")


def spread_note(all_samples, out):
    """Say so when any contender's rounds spread more than SPREAD_WARN."""
    worst = max((spread(s) for s in all_samples), default=0.0)
    if worst > SPREAD_WARN:
        out(f"  (!) rounds spread up to {100 * worst:.0f}% (> {100 * SPREAD_WARN:.0f}%): "
            "another process was probably using a core; rerun on an idle machine")


# -- matmul ----------------------------------------------------------------------------------
# The cases of issue 3's targets. Float32 unless said; "threads 0" means the thread count in
# use (the issue states its targets for 2 threads), 1 means both libraries on one thread.
SQUARE_SIZES = (64, 128, 256, 512, 1024, 2048)
QUICK_SQUARE_SIZES = (64, 128, 512, 1024)
OVERHEAD_SIZES = (64, 128)           # timed without out=: "call overhead included"
FLOAT64_SIZES = (512, 1024, 2048)
ONE_THREAD_SIZES = (512, 1024, 2048)
DENSE_BATCHES = (32, 64, 128, 256)   # M, the batch rows
DENSE_LAYERS = ((784, 256), (256, 128), (1024, 1024), (128, 64))  # (K inputs, N outputs)
DENSE_PRODUCTS = ("forward", "dX", "dW")

# The thresholds (cyneuron speed / numpy speed, or a share of the AVX-512 peak).
TARGET_SQUARE_SIZES = (512, 1024, 2048)
SQUARE_MIN_RATIO = 1.05
SQUARE_MIN_PEAK = 0.88
DENSE_MIN_GEOMEAN = 1.3
OVERHEAD_MIN_RATIO = 1.5
FLOAT64_MIN_RATIO = 1.1

SQUARE, FLOAT64, DENSE, ONE_THREAD = ("float32 squares", "float64 squares",
                                      "dense layer products, float32", "float32 squares, 1 thread")


class MatmulCase(NamedTuple):
    """One timed product op(a) (m x k) @ op(b) (k x n) of cyneuron next to numpy."""
    section: str
    label: str
    m: int
    k: int
    n: int
    dtype: str = "float32"
    trans_a: bool = False
    trans_b: bool = False
    out: bool = True      # False: no out=, each call allocates its result (call overhead included)
    threads: int = 0      # 0: the thread count in use; n: both libraries on n threads
    product: str = ""     # dense cases: "forward", "dX" or "dW"

    @property
    def ident(self):
        """A short id for pytest and file names."""
        if self.section == DENSE:  # label "M=32 784x256 forward: X @ W"
            batch, layer = self.label.split()[:2]
            return f"dense-{batch.replace('=', '')}-{layer}-{self.product}"
        name = f"{'f32' if self.dtype == 'float32' else 'f64'}-n{self.m}"
        if not self.out:
            name += "-noout"
        return name + (f"-{self.threads}thread" if self.threads else "")


def square_cases(sizes, dtype="float32", threads=0):
    """n x n x n products; those in OVERHEAD_SIZES (float32, threads in use) without out=."""
    section = {(0, "float32"): SQUARE, (0, "float64"): FLOAT64}.get((threads, dtype))
    if section is None:
        section = f"{dtype} squares, {threads} thread{'s' if threads > 1 else ''}"
    cases = []
    for n in sizes:
        no_out = dtype == "float32" and not threads and n in OVERHEAD_SIZES
        cases.append(MatmulCase(section, f"n={n}" + (" (no out=)" if no_out else ""), n, n, n,
                                dtype, out=not no_out, threads=threads))
    return cases


def dense_case(batch, k_in, n_out, product):
    """One of the three products of a Dense layer (batch M, K inputs, N outputs) as a GEMM:
    forward Y = X(M,K) @ W(K,N); dX = dY(M,N) @ W(K,N)^T; dW = X(M,K)^T @ dY(M,N).
    The operands are stored as the layer stores them; the transposes go by flag."""
    m, k, n, ta, tb, text = {
        "forward": (batch, k_in, n_out, False, False, "X @ W"),
        "dX": (batch, n_out, k_in, False, True, "dY @ W^T"),
        "dW": (k_in, batch, n_out, True, False, "X^T @ dY"),
    }[product]
    return MatmulCase(DENSE, f"M={batch} {k_in}x{n_out} {product}: {text}", m, k, n,
                      trans_a=ta, trans_b=tb, product=product)


def dense_cases(batches=DENSE_BATCHES, layers=DENSE_LAYERS, products=DENSE_PRODUCTS):
    return [dense_case(b, k, n, p) for b in batches for k, n in layers for p in products]


def matmul_cases(quick=False):
    """All cases of `bench matmul` in the order they run (quick: a subset for a smoke run)."""
    if quick:
        return square_cases(QUICK_SQUARE_SIZES) + dense_cases()
    return (square_cases(SQUARE_SIZES) + square_cases(FLOAT64_SIZES, "float64") + dense_cases()
            + square_cases(ONE_THREAD_SIZES, threads=1))


def matmul_operands(m, k, n, dtype, trans_a=False, trans_b=False, seed=0):
    """(a, b, out_cyneuron, out_numpy, a_np, b_np): stored operands for cyneuron (transposed
    in storage when trans_*), the views numpy multiplies, and preallocated outputs."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
    a_np = a.T if trans_a else a
    b_np = b.T if trans_b else b
    return a, b, np.empty((m, n), dtype), np.empty((m, n), dtype), a_np, b_np


def matmul_callables(m, k, n, dtype, trans_a=False, trans_b=False, out=True):
    """{'cyneuron': fn, 'numpy': fn}: cn.ops.matmul with the transpose flags and np.matmul on
    the transposed views, both into a preallocated C-contiguous out (out=False: without out=,
    a fresh result per call)."""
    from . import ops

    a, b, out_cn, out_np, a_np, b_np = matmul_operands(m, k, n, dtype, trans_a, trans_b)
    if out:
        def run_cyneuron():
            return ops.matmul(a, b, trans_a=trans_a, trans_b=trans_b, out=out_cn)

        def run_numpy():
            return np.matmul(a_np, b_np, out=out_np)
    else:
        def run_cyneuron():
            return ops.matmul(a, b, trans_a=trans_a, trans_b=trans_b)

        def run_numpy():
            return np.matmul(a_np, b_np)

    return {"cyneuron": run_cyneuron, "numpy": run_numpy}


def case_callables(case):
    return matmul_callables(case.m, case.k, case.n, case.dtype, case.trans_a, case.trans_b,
                            case.out)


def gemm_flops(m, k, n):
    return 2.0 * m * k * n


def matmul_error(got, want):
    """max |got - want| relative to max(1, max |want|), and whether it is within the dtype's
    tolerance."""
    err = float(np.max(np.abs(got - want)) / max(1.0, float(np.max(np.abs(want)))))
    return err, err <= (1e-3 if want.dtype == np.float32 else 1e-10)


@contextlib.contextmanager
def both_on_threads(n):
    """cyneuron's kernels and numpy's BLAS (threadpoolctl) on n threads; both are restored
    afterwards. Yields False, changing nothing, when threadpoolctl is not installed."""
    import cyneuron as cn

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield False
        return
    before = cn.get_num_threads()
    cn.set_num_threads(n)
    try:
        with threadpool_limits(limits=n, user_api="blas"):
            yield True
    finally:
        cn.set_num_threads(before)


# -- the FMA peak --
class Peak(NamedTuple):
    """float32 multiply-add peaks of this machine, GFLOP/s (float64: half)."""
    isa: str                # the SIMD path in use, whose peak these are
    threads: int            # the thread count in use
    per_thread: float | None
    total: float | None  # on `threads` threads
    source: str             # "measured", "--peak", "clock estimate" or "unknown"
    avx512: float | None  # the AVX-512 peak on `threads` threads: the reference

    def gflops(self, dtype="float32", threads=0):
        """The peak for dtype on `threads` threads (0: the thread count in use), or None."""
        threads = threads or self.threads
        if threads == self.threads:
            p = self.total
        else:
            p = None if self.per_thread is None else self.per_thread * threads
        return None if p is None else p * 4 / np.dtype(dtype).itemsize


def measure_fma_peak(threads, seconds=0.2, tries=3, isa=None, settle_s=SETTLE_S):
    """Best of `tries` measurements of the float32 multiply-add peak, GFLOP/s, on `threads`
    threads with the SIMD path `isa` (default: the one in use); None if it cannot be measured.
    Best of several, like the timings: other processes only ever slow it down."""
    try:
        from ._kernels import gemm as _gemm

        measure = _gemm.fma_peak_gflops
    except (ImportError, AttributeError):
        return None
    before = _gemm.get_isa()

    def once():
        if _clock is not CLOCKS["cpu"] or threads != 1:
            return measure(threads=threads, seconds=seconds)
        # --clock cpu: the kernel times itself by the wall clock; rescale to CPU time
        wall, cpu = time.perf_counter(), time.thread_time()
        gflops = measure(threads=1, seconds=seconds)
        wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
        return gflops * wall / cpu if cpu > 0 else gflops

    try:
        if isa is not None and isa != before:
            _gemm.set_isa(isa)
        settle_threads(settle_s)
        best = max(once() for _ in range(max(1, tries)))
        return best if best > 0 else None
    except (ValueError, RuntimeError, OSError):
        return None
    finally:
        if _gemm.get_isa() != before:
            _gemm.set_isa(before)


def matmul_peak(threads, given=None, seconds=0.2, tries=3):
    """The Peak for `threads` threads: `given` (the --peak figure, for `threads` threads) or
    measured, with the clock-based estimate as the fallback when measuring fails."""
    from . import _config

    isa = _config.get_isa()
    if given:
        per, total, source = given / threads, given, "--peak"
    else:
        per = measure_fma_peak(1, seconds, tries)
        total = per if threads == 1 or per is None else measure_fma_peak(threads, seconds, tries)
        source = "measured"
        if per is None or total is None:
            est = estimated_peak_gflops("float32", isa, threads)
            per, total, source = (est / threads, est, "clock estimate") if est else \
                (None, None, "unknown")
    if isa == "avx512":
        avx512 = total
    elif "avx512" in _config.supported_isas() and source == "measured":
        avx512 = measure_fma_peak(threads, seconds, tries, isa="avx512")
    else:
        avx512 = None
    return Peak(isa, threads, per, total, source, avx512)


def print_peak(peak, out):
    from . import _config

    def fmt(g):
        return "?" if g is None else f"{g:.1f} GFLOP/s"

    out(f"\nfloat32 FMA peak ({peak.source}, {peak.isa} path): 1 thread {fmt(peak.per_thread)}, "
        f"{peak.threads} thread{'s' if peak.threads > 1 else ''} {fmt(peak.total)} "
        "(float64: half); '% peak' below is against it")
    if peak.per_thread and peak.isa in ("avx2", "avx512"):
        # A sanity figure: the clock at which two FMA pipes would give the per-thread peak.
        per_cycle = 2 * 2 * {"avx512": 16, "avx2": 8}[peak.isa]
        out(f"  per thread: {peak.per_thread:.1f} GFLOP/s = {per_cycle} FLOP/cycle (2 FMA pipes x "
            f"{per_cycle // 4} lanes x 2) at {peak.per_thread / per_cycle:.2f} GHz")
    if peak.isa == "avx512":
        out("  avx512: this is the AVX-512 peak of the issue's targets")
    elif "avx512" not in _config.supported_isas():
        out(f"  {peak.isa}: this CPU has no AVX-512, so the AVX-512 peak of the issue cannot be "
            "measured here")
    else:
        out(f"  the CPU has AVX-512 but the {peak.isa} path is in use; AVX-512 peak on "
            f"{peak.threads} threads (the issue's reference for the targets): {fmt(peak.avx512)}")


# -- timing the cases --
def measure_matmul_case(case, peak, repeats=8, target_s=0.04, stat="median", settle_s=SETTLE_S):
    """Check the case once, time it, and return a result dict (GFLOP/s of both, ratio,
    % of the peak for its dtype and threads, check)."""
    fns = case_callables(case)
    err, ok = matmul_error(fns["cyneuron"](), fns["numpy"]())
    samples = time_blocks(fns, repeats=repeats, target_s=target_s, settle_s=settle_s)
    flops = gemm_flops(case.m, case.k, case.n)
    g_cn = flops / _pick(samples["cyneuron"], stat) / 1e9
    g_np = flops / _pick(samples["numpy"], stat) / 1e9
    p = peak.gflops(case.dtype, case.threads)
    return {"case": case, "cyneuron_gflops": g_cn, "numpy_gflops": g_np, "ratio": g_cn / g_np,
            "pct_peak": 100 * g_cn / p if p else None, "error": err, "ok": ok,
            "samples": samples}


def run_matmul_cases(cases, peak, repeats=8, target_s=0.04, stat="median", settle_s=SETTLE_S,
                     progress=None):
    """(results, skipped): measure each case, those with a thread count inside
    both_on_threads; skipped lists (case, reason) for those that could not run."""
    results, skipped = [], []
    for case in cases:
        if case.threads:
            with both_on_threads(case.threads) as limited:
                if not limited:
                    skipped.append((case, ("threadpoolctl is not installed: numpy's BLAS "
                                           "threads cannot be limited")))
                    continue
                r = measure_matmul_case(case, peak, repeats, target_s, stat, settle_s)
        else:
            r = measure_matmul_case(case, peak, repeats, target_s, stat, settle_s)
        results.append(r)
        if progress:
            progress(r)
    return results, skipped


def geomean(values):
    values = list(values)
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def dense_geomeans(results):
    """{product: (geometric mean of the ratios, number of cases)} for each product and 'all'."""
    dense = [r for r in results if r["case"].section == DENSE]
    groups = {p: [r for r in dense if r["case"].product == p] for p in DENSE_PRODUCTS}
    groups["all"] = dense
    return {p: (geomean(r["ratio"] for r in rs), len(rs)) for p, rs in groups.items() if rs}


class Target(NamedTuple):
    target: str
    value: float | None  # the measured ratio or share of the peak (None: not measured)
    measured: str
    status: str             # "met", "NOT met ...", "not measured" or "n/a: ..."

    @property
    def met(self):
        return self.status == "met"


def _find_square(results, section, n):
    for r in results:
        c = r["case"]
        if c.section == section and c.m == c.k == c.n == n:
            return r
    return None


def _ratio_target(text, r, threshold):
    if r is None:
        return Target(text, None, "-", "not measured")
    shown = f"{r['ratio']:.3f}x"
    if not r["ok"]:
        return Target(text, r["ratio"], shown, f"NOT met (wrong result, error {r['error']:.1e})")
    return Target(text, r["ratio"], shown, "met" if r["ratio"] >= threshold else "NOT met")


def matmul_targets(results, peak):
    """The issue's targets, each with the value measured here and whether it is met."""
    from . import _config

    t = peak.threads
    on_t = f"{t} thread{'s' if t > 1 else ''}"
    targets = []
    for n in TARGET_SQUARE_SIZES:
        r = _find_square(results, SQUARE, n)
        targets.append(_ratio_target(f"float32 n={n}, {on_t}: >= {SQUARE_MIN_RATIO:.2f}x numpy",
                                     r, SQUARE_MIN_RATIO))
        text = f"float32 n={n}, {on_t}: >= {100 * SQUARE_MIN_PEAK:.0f}% of the AVX-512 peak"
        if r is None:
            targets.append(Target(text, None, "-", "not measured"))
        elif peak.avx512 is None:
            shown = "-" if r["pct_peak"] is None else f"{r['pct_peak']:.1f}% of the {peak.isa} peak"
            why = "this CPU has no AVX-512" if "avx512" not in _config.supported_isas() else \
                "the AVX-512 peak is unknown"
            targets.append(Target(text, None, shown, f"n/a: {why}"))
        else:
            share = r["cyneuron_gflops"] / peak.avx512
            shown = f"{100 * share:.1f}% ({r['cyneuron_gflops']:.0f} of {peak.avx512:.0f} GFLOP/s)"
            status = "met" if share >= SQUARE_MIN_PEAK else "NOT met"
            if not r["ok"]:
                status = "NOT met (wrong result)"
            targets.append(Target(text, share, shown, status))
    for n in TARGET_SQUARE_SIZES:
        targets.append(_ratio_target(f"float32 n={n}, 1 thread: >= {SQUARE_MIN_RATIO:.2f}x numpy",
                                     _find_square(results, ONE_THREAD, n), SQUARE_MIN_RATIO))
    expected = len(DENSE_BATCHES) * len(DENSE_LAYERS) * len(DENSE_PRODUCTS)
    text = (f"dense layer products ({expected} cases), {on_t}: geometric mean "
            f">= {DENSE_MIN_GEOMEAN:.2f}x numpy")
    g = dense_geomeans(results).get("all")
    dense = [r for r in results if r["case"].section == DENSE]
    if g is None:
        targets.append(Target(text, None, "-", "not measured"))
    else:
        shown = f"{g[0]:.3f}x" + ("" if g[1] == expected else f" over {g[1]} cases")
        wrong = sum(not r["ok"] for r in dense)
        if wrong:
            status = f"NOT met (wrong result in {wrong} cases)"
        elif g[1] != expected:
            status = f"not measured (only {g[1]} of {expected} cases)"
        else:
            status = "met" if g[0] >= DENSE_MIN_GEOMEAN else "NOT met"
        targets.append(Target(text, g[0], shown, status))
    for n in OVERHEAD_SIZES:
        r = _find_square(results, SQUARE, n)
        if r is not None and r["case"].out:
            r = None  # timed with out=: not the "call overhead included" case
        targets.append(_ratio_target(
            f"float32 n={n}, {on_t}, call overhead included: >= {OVERHEAD_MIN_RATIO:.2f}x numpy",
            r, OVERHEAD_MIN_RATIO))
    for n in FLOAT64_SIZES:
        targets.append(_ratio_target(f"float64 n={n}, {on_t}: >= {FLOAT64_MIN_RATIO:.2f}x numpy",
                                     _find_square(results, FLOAT64, n), FLOAT64_MIN_RATIO))
    return targets


# -- the report --
MATMUL_HEADER = ("case", "GEMM MxKxN", "dtype", "cyneuron GFLOP/s", "numpy GFLOP/s", "ratio",
                 "cn % peak", "spread cn / np", "check")


def _matmul_row(r):
    c = r["case"]
    return (c.label, f"{c.m}x{c.k}x{c.n}", c.dtype, f"{r['cyneuron_gflops']:.1f}",
            f"{r['numpy_gflops']:.1f}", f"{r['ratio']:.2f}x",
            "?" if r["pct_peak"] is None else f"{r['pct_peak']:.0f}%",
            " / ".join(spread_cell(r["samples"][k]) for k in ("cyneuron", "numpy")),
            "ok" if r["ok"] else f"ERR {r['error']:.1e}")


def print_matmul_report(results, skipped, targets, peak, args, out):
    sections = []
    for r in results:
        if not sections or sections[-1][0] != r["case"].section:
            sections.append((r["case"].section, []))
        sections[-1][1].append(r)
    for section, rs in sections:
        threads = rs[0]["case"].threads or peak.threads
        out(f"\nmatmul, {section}: {threads} thread{'s' if threads > 1 else ''}, "
            f"{args.stat} of {args.repeats} interleaved rounds; ratio = cyneuron speed / "
            f"numpy speed")
        _print_table([MATMUL_HEADER] + [_matmul_row(r) for r in rs], out)
        spread_note([v for r in rs for v in r["samples"].values()], out)
        if section == DENSE:
            out("  forward X(M,K) @ W(K,N); dX = dY(M,N) @ W(K,N)^T; dW = X(M,K)^T @ dY(M,N): "
                "cn.ops.matmul(trans_a/trans_b, out=) vs np.matmul on the transposed views")
            table = [("product", "cases", "geometric mean ratio")]
            for p, (g, count) in dense_geomeans(rs).items():
                table.append((p, str(count), f"{g:.3f}x"))
            out("")
            _print_table(table, out)
    for case, reason in skipped:
        out(f"  skipped {case.section} {case.label}: {reason}")
    used = f"; this run used {peak.threads}: --threads 2 to compare" if peak.threads != 2 else ""
    out(f"\nmatmul targets (issue 3; float32 unless said; the issue states them for 2 threads"
        f"{used})")
    _print_table([("target", "measured", "status")]
                 + [(t.target, t.measured, t.status) for t in targets], out, left=3)
    met = sum(t.met for t in targets)
    out(f"  {met} of {len(targets)} targets met")


def bench_matmul(args, out, cases=None, peak=None, settle_s=SETTLE_S):
    """Measure the matmul cases (default: matmul_cases(args.quick)), print the tables and
    the targets; returns {'peak', 'results', 'skipped', 'dense_geomeans', 'targets'}."""
    import cyneuron as cn

    if peak is None:
        peak = matmul_peak(cn.get_num_threads(), given=args.peak)
    print_peak(peak, out)
    if cases is None:
        cases = matmul_cases(getattr(args, "quick", False))
    results, skipped = run_matmul_cases(cases, peak, args.repeats, args.target, args.stat,
                                        settle_s)
    targets = matmul_targets(results, peak)
    print_matmul_report(results, skipped, targets, peak, args, out)
    return {"peak": peak, "results": results, "skipped": skipped,
            "dense_geomeans": dense_geomeans(results), "targets": targets}


# -- the MLP ---------------------------------------------------------------------------------
def bench_mlp(args, out, peak=None):
    """Issue 8's end-to-end comparison (cyneuron._bench_mlp): training epochs with Adam for
    two MLPs and three batch sizes, one-sample latency and batched predict."""
    import cyneuron as cn

    from . import _bench_mlp

    threads = cn.get_num_threads()
    if peak is None:
        peak = matmul_peak(threads, args.peak)
    out(f"\nMLP training: one epoch over {_bench_mlp.N_SAMPLES:,} samples, Adam, float32, "
        f"{threads} threads, {args.stat} of {_mlp_repeats(args)} epochs; GFLOP/s against the "
        f"{peak.total or 0:.0f} GFLOP/s fp32 peak")
    archs = list(_bench_mlp.ARCHITECTURES)[:1] if getattr(args, "quick", False) else None
    results = _bench_mlp.bench(out, threads, peak.gflops("float32"), repeats=_mlp_repeats(args),
                               stat=args.stat, architectures=archs)
    worst = max((v for r in results for v in r["spreads"].values()), default=0.0)
    if worst > SPREAD_WARN:
        out(f"  (!) rounds spread up to {100 * worst:.0f}% (> {100 * SPREAD_WARN:.0f}%): "
            "another process was probably using a core; rerun on an idle machine")
    return results


def _mlp_repeats(args):
    """Whole epochs are long: MIN_ROUNDS interleaved rounds unless --repeats asks for more."""
    return max(MIN_ROUNDS, min(args.repeats, 8))


# -- scikit-learn estimators -----------------------------------------------------------------
SKLEARN_HIDDEN = (100,)
SKLEARN_EPOCHS = 30


def sklearn_digits_data(seed=0):
    """((X_train, y_train), (X_test, y_test)): the digits scaled to [0, 1], a 75/25 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x / 16.0, y, test_size=0.25,
                                                        random_state=seed)
    return (x_train, y_train), (x_test, y_test)


def sklearn_estimator_params(epochs=SKLEARN_EPOCHS, seed=0):
    """scikit-learn's MLPClassifier defaults (adam, batch 200, relu) for exactly `epochs`
    epochs: the loss-based stopping rule is switched off (n_iter_no_change = epochs)."""
    return dict(hidden_layer_sizes=SKLEARN_HIDDEN, max_iter=epochs, n_iter_no_change=epochs,
                random_state=seed)


def sklearn_fit_callables(x, y, epochs=SKLEARN_EPOCHS):
    """{'cyneuron': fit, 'cyneuron float32': fit, 'scikit-learn': fit}: each call fits a new
    classifier on (x, y) and returns it; and {name: reason} for the unavailable ones."""
    import warnings

    fns, missing = {}, {}
    params = sklearn_estimator_params(epochs)

    def fitter(cls, **extra):
        def fit():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")   # ConvergenceWarning: max_iter reached
                return cls(**params, **extra).fit(x, y)
        return fit

    try:
        from sklearn.neural_network import MLPClassifier as SkMLP
    except ImportError:
        missing = {name: "scikit-learn not installed"
                   for name in ("cyneuron", "cyneuron float32", "scikit-learn")}
        return fns, missing
    from cyneuron.sklearn import MLPClassifier

    fns["cyneuron"] = fitter(MLPClassifier)
    fns["cyneuron float32"] = fitter(MLPClassifier, dtype="float32")
    fns["scikit-learn"] = fitter(SkMLP)
    return fns, missing


def bench_sklearn(args, out):
    fns, missing = sklearn_fit_callables(*sklearn_digits_data()[0])
    if missing:
        out("\nscikit-learn MLPClassifier: skipped (scikit-learn is not installed)")
        return {}
    (x_train, _), (x_test, y_test) = sklearn_digits_data()
    repeats = max(MIN_ROUNDS, min(args.repeats, 6))
    samples = time_blocks(fns, repeats=repeats, target_s=args.target)
    seconds = {name: _pick(s, args.stat) for name, s in samples.items()}
    accuracy = {name: fn().score(x_test, y_test) for name, fn in fns.items()}
    table = [("implementation", "s / fit", "samples/s", "test accuracy", "speed-up vs scikit-learn",
              "spread")]
    for name in fns:
        rate = SKLEARN_EPOCHS * len(x_train) / seconds[name]
        table.append((name, f"{seconds[name]:.3f}", f"{rate:,.0f}", f"{accuracy[name]:.4f}",
                      f"{seconds['scikit-learn'] / seconds[name]:.2f}x",
                      spread_cell(samples[name])))
    out(f"\nMLPClassifier{SKLEARN_HIDDEN} fit on digits ({len(x_train)} samples, "
        f"{SKLEARN_EPOCHS} epochs, adam, batch 200); {args.stat} of {repeats} interleaved fits; "
        f"cyneuron float64 unless noted (scikit-learn computes in float64)")
    _print_table(table, out)
    spread_note(samples.values(), out)
    return seconds


# -- the CNN ---------------------------------------------------------------------------------
def conv_data(n=CONV_BATCH, seed=0):
    """x (n, 28, 28, 1) float32 in NHWC, and integer labels."""
    rng = np.random.default_rng(seed)
    x = rng.random((n,) + CONV_INPUT, dtype=np.float32)
    y = rng.integers(0, CONV_CLASSES, size=n).astype(np.int64)
    return x, y


def conv_optimizer_name():
    """'adam' when this build has Adam, else 'sgd' (momentum 0.9): both sides use it."""
    from . import optimizers

    return "adam" if "adam" in optimizers.names() else "sgd"


def _cyneuron_conv_optimizer():
    import cyneuron as cn

    if conv_optimizer_name() == "adam":
        return cn.optimizers.get("adam")   # Keras defaults; torch gets the same rate
    return cn.optimizers.SGD(CONV_SGD_LR, momentum=CONV_MOMENTUM)


def make_cyneuron_cnn(seed=0):
    """The LeNet-style CNN, compiled (Adam 1e-3, or the SGD fallback; sparse CE), built."""
    import cyneuron as cn
    from cyneuron import layers

    cn.set_seed(seed)
    model = cn.Sequential([
        layers.Conv2D(32, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(2),
        layers.Conv2D(64, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(2),
        layers.Flatten(),
        layers.Dense(128, activation="relu"),
        layers.Dense(CONV_CLASSES, activation="softmax"),
    ])
    model.compile(optimizer=_cyneuron_conv_optimizer(), loss="sparse_categorical_crossentropy")
    model.build(CONV_INPUT)
    return model


CONV_TORCH_VARIANTS = {"torch": False, "torch-channels-last": True}


def make_torch_cnn(threads, seed=0, channels_last=False):
    """(torch, net, optimizer, loss_fn): the same CNN in PyTorch (logits out,
    CrossEntropyLoss) with the same optimizer; its weights in NCHW (the default) or in
    channels_last memory format."""
    import torch
    from torch import nn

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    h, w, c = CONV_INPUT
    net = nn.Sequential(
        nn.Conv2d(c, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * (h // 4) * (w // 4), 128), nn.ReLU(),
        nn.Linear(128, CONV_CLASSES))
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    if conv_optimizer_name() == "adam":
        opt = torch.optim.Adam(net.parameters(), lr=_cyneuron_conv_optimizer().learning_rate)
    else:
        opt = torch.optim.SGD(net.parameters(), lr=CONV_SGD_LR, momentum=CONV_MOMENTUM)
    return torch, net, opt, nn.CrossEntropyLoss()


def _torch_images(torch, x, channels_last=False):
    """NHWC numpy -> an NCHW tensor in the default (or channels_last) memory format,
    converted once, outside the timed calls. (torch.from_numpy of the transposed array
    is not enough: with one channel its strides also pass for channels_last.)"""
    nchw = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.empty(nchw.shape, dtype=nchw.dtype, memory_format=fmt)
    out.copy_(nchw)
    return out


def _torch_train_step(threads, x, y, channels_last):
    torch, net, opt, loss_fn = make_torch_cnn(threads, channels_last=channels_last)
    xt, yt = _torch_images(torch, x, channels_last), torch.from_numpy(y)

    def torch_step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(xt), yt)
        loss.backward()
        opt.step()
        return loss

    return torch_step


def _torch_predict(threads, x, channels_last):
    torch, net, _, _ = make_torch_cnn(threads, channels_last=channels_last)
    xt = _torch_images(torch, x, channels_last)
    net.eval()

    def torch_predict():
        with torch.no_grad():
            return torch.softmax(net(xt), dim=1).numpy()

    return torch_predict


def _conv_callables(cyneuron_fn, torch_factory):
    fns, missing = {"cyneuron": cyneuron_fn}, {}
    for name, channels_last in CONV_TORCH_VARIANTS.items():
        try:
            fns[name] = torch_factory(channels_last)
        except ImportError:
            missing[name] = "not installed"
    return fns, missing


def conv_train_callables(threads, x, y):
    """{'cyneuron': step, 'torch': step, 'torch-channels-last': step} (torch when installed)
    and {name: reason} for those missing."""
    model = make_cyneuron_cnn()
    return _conv_callables(lambda: model.train_on_batch(x, y),
                           lambda cl: _torch_train_step(threads, x, y, cl))


def conv_predict_callables(threads, x):
    """Softmax probabilities for the batch x, the same three implementations."""
    model = make_cyneuron_cnn()
    return _conv_callables(lambda: model.predict(x, batch_size=len(x)),
                           lambda cl: _torch_predict(threads, x, cl))


def bench_conv(args, out):
    import cyneuron as cn

    threads = cn.get_num_threads()
    x, y = conv_data()
    opt = conv_optimizer_name()
    opt_label = f"Adam lr {_cyneuron_conv_optimizer().learning_rate:g}" if opt == "adam" else \
        f"SGD lr {CONV_SGD_LR} momentum {CONV_MOMENTUM} (FALLBACK: this build has no Adam)"
    fns, missing = conv_train_callables(threads, x, y)
    net = "Conv32-Pool-Conv64-Pool-Dense128-Dense10"
    names = ("cyneuron",) + tuple(CONV_TORCH_VARIANTS)
    train = _rate_table(f"CNN {net} train step (forward + backward + {opt_label}), batch "
                        f"{CONV_BATCH}, 28x28x1, float32", fns, missing, CONV_BATCH, args, out,
                        "samples/s", names)
    fns, missing = conv_predict_callables(threads, x)
    infer = _rate_table(f"CNN inference (softmax probabilities), batch {CONV_BATCH}, float32",
                        fns, missing, CONV_BATCH, args, out, "samples/s", names)
    return train, infer


# -- recurrent networks -----------------------------------------------------------------------
RNN_TIMESTEPS = 50
RNN_FEATURES = 32
RNN_UNITS = 128
RNN_CLASSES = 10
RNN_BATCH = 32
RNN_PREDICT_SAMPLES = 256
RNN_THREADS = 2
RNN_LR = 1e-3            # Adam's default
RNN_SGD_LR = 0.01        # the fallback where this build has no Adam
RNN_SGD_MOMENTUM = 0.9
RNN_CELLS = ("lstm", "gru")


def rnn_data(n=RNN_BATCH, seed=0):
    """(x, y): n random sequences (n, T, features) float32 and class labels."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, RNN_TIMESTEPS, RNN_FEATURES)).astype(np.float32)
    y = rng.integers(0, RNN_CLASSES, size=n).astype(np.int64)
    return x, y


def rnn_optimizer():
    """('adam', cyneuron Adam(1e-3)) where this build has Adam, else ('sgd', SGD with
    momentum 0.9): the torch side uses the same kind, so the comparison stays fair."""
    import cyneuron as cn

    try:
        opt = cn.optimizers.get("adam")
    except ValueError:
        return "sgd", cn.optimizers.SGD(RNN_SGD_LR, momentum=RNN_SGD_MOMENTUM)
    if hasattr(opt, "learning_rate"):
        opt.learning_rate = RNN_LR
    return "adam", opt


def rnn_optimizer_label(kind):
    return ("Adam 1e-3" if kind == "adam" else
            f"SGD {RNN_SGD_LR} momentum {RNN_SGD_MOMENTUM} (this build has no Adam)")


def make_cyneuron_rnn(cell, seed=0):
    """(optimizer kind, model): `cell`(128) -> Dense(10, softmax), sparse CE, built."""
    import cyneuron as cn
    from cyneuron import layers

    cn.set_seed(seed)
    rnn = {"lstm": layers.LSTM, "gru": layers.GRU}[cell](RNN_UNITS)
    model = cn.Sequential([rnn, layers.Dense(RNN_CLASSES, activation="softmax")])
    kind, opt = rnn_optimizer()
    model.compile(optimizer=opt, loss="sparse_categorical_crossentropy")
    model.build((RNN_TIMESTEPS, RNN_FEATURES))
    return kind, model


def make_torch_rnn(cell, threads, optimizer_kind, seed=0):
    """(torch, net, optimizer, loss_fn): nn.LSTM / nn.GRU (batch_first) then nn.Linear on
    the last step's output (logits; CrossEntropyLoss)."""
    import torch
    from torch import nn

    torch.set_num_threads(threads)
    torch.manual_seed(seed)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[cell]
            self.rnn = rnn(RNN_FEATURES, RNN_UNITS, batch_first=True)
            self.fc = nn.Linear(RNN_UNITS, RNN_CLASSES)

        def forward(self, x):
            out, _ = self.rnn(x)
            return self.fc(out[:, -1])

    net = Net()
    if optimizer_kind == "adam":
        opt = torch.optim.Adam(net.parameters(), lr=RNN_LR)
    else:
        opt = torch.optim.SGD(net.parameters(), lr=RNN_SGD_LR, momentum=RNN_SGD_MOMENTUM)
    return torch, net, opt, nn.CrossEntropyLoss()


def rnn_train_callables(cell, threads, x, y):
    """({'cyneuron': step, 'torch': step}, {name: reason missing}, optimizer kind)."""
    fns, missing = {}, {}
    kind, model = make_cyneuron_rnn(cell)
    fns["cyneuron"] = lambda: model.train_on_batch(x, y)
    try:
        torch, net, opt, loss_fn = make_torch_rnn(cell, threads, kind)
    except ImportError:
        missing["torch"] = "not installed"
    else:
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)

        def torch_step():
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(xt), yt)
            loss.backward()
            opt.step()
            return loss

        fns["torch"] = torch_step
    return fns, missing, kind


def rnn_predict_callables(cell, threads, x):
    """{'cyneuron': fn, 'torch': fn}: softmax probabilities for all of x in one batch."""
    fns, missing = {}, {}
    kind, model = make_cyneuron_rnn(cell)
    fns["cyneuron"] = lambda: model.predict(x, batch_size=len(x))
    try:
        torch, net, _, _ = make_torch_rnn(cell, threads, kind)
    except ImportError:
        missing["torch"] = "not installed"
    else:
        xt = torch.from_numpy(x)
        net.eval()

        def torch_predict():
            with torch.no_grad():
                return torch.softmax(net(xt), dim=1).numpy()

        fns["torch"] = torch_predict
    return fns, missing


def bench_rnn(args, out):
    """Train step and inference of the LSTM and GRU classifiers; {cell: (train, infer)}."""
    import cyneuron as cn

    before = cn.get_num_threads()
    threads = args.threads or RNN_THREADS
    cn.set_num_threads(threads)
    limiter = _limit_blas_threads(threads)
    results = {}
    try:
        for cell in RNN_CELLS:
            x, y = rnn_data()
            fns, missing, kind = rnn_train_callables(cell, threads, x, y)
            shape = (f"T={RNN_TIMESTEPS}, {RNN_FEATURES} features, hidden {RNN_UNITS}, "
                     f"Dense {RNN_CLASSES} softmax on the last step, float32, {threads} threads")
            train = _rate_table(f"{cell.upper()} train step ({shape}), batch {RNN_BATCH}, "
                                f"{rnn_optimizer_label(kind)}", fns, missing, RNN_BATCH, args,
                                out, unit="sequences/s", names=("cyneuron", "torch"))
            xp, _ = rnn_data(RNN_PREDICT_SAMPLES, seed=1)
            fns, missing = rnn_predict_callables(cell, threads, xp)
            infer = _rate_table(f"{cell.upper()} inference (softmax probabilities) on "
                                f"{RNN_PREDICT_SAMPLES} sequences", fns, missing,
                                RNN_PREDICT_SAMPLES, args, out, unit="sequences/s",
                                names=("cyneuron", "torch"))
            results[cell] = (train, infer)
    finally:
        cn.set_num_threads(before)
        if limiter is not None:
            limiter.restore_original_limits()
    return results


def _rate_table(title, fns, missing, per_call, args, out, unit, names):
    """Time `fns` in interleaved rounds and print rate, time per call, ratio and spread."""
    samples = time_blocks(fns, repeats=args.repeats, target_s=args.target)
    rate = {name: per_call / _pick(s, args.stat) for name, s in samples.items()}
    table = [("implementation", unit, "ms/call", "cyneuron / it", "spread")]
    for name in names:
        if name in rate:
            table.append((name, f"{rate[name]:,.0f}", f"{1e3 * per_call / rate[name]:.3f}",
                          "-" if name == "cyneuron" else f"{rate['cyneuron'] / rate[name]:.2f}x",
                          spread_cell(samples[name])))
        elif name in missing:
            table.append((name, missing[name], "", "", ""))
    out(f"\n{title}; {args.stat} of {args.repeats} interleaved rounds")
    _print_table(table, out)
    spread_note(samples.values(), out)
    return rate


# -- output ----------------------------------------------------------------------------------
def _print_table(rows, out, left=1):
    """rows[0] is the header; the first `left` columns are left-aligned, the others right."""
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for j, row in enumerate(rows):
        cells = [str(c).ljust(w) if i < left else str(c).rjust(w)
                 for i, (c, w) in enumerate(zip(row, widths))]
        out("  " + "  ".join(cells))
        if j == 0:
            out("  " + "  ".join("-" * w for w in widths))


def _header(args, out):
    import cyneuron as cn

    threads = cn.get_num_threads()
    isa = cn.get_isa()
    out(f"cyneuron {cn.__version__} bench")
    out(f"  CPU:        {_cpu_model()} ({os.cpu_count()} logical CPUs"
        + (f", {_cpu_mhz():.0f} MHz nominal)" if _cpu_mhz() else ")"))
    out(f"  SIMD path:  {isa}    threads: {threads}")
    if _clock is CLOCKS["cpu"]:
        out("  clock:      this thread's CPU time (--clock cpu): waits for a busy core are "
            "left out")
    out(f"  numpy:      {np.__version__}, BLAS {_blas_info()}")
    handicap = openblas_handicap()
    if handicap:
        out(f"  WARNING: {', '.join(f'{k}={v}' for k, v in handicap.items())} is set "
            "(--keep-openblas-env): numpy's reference runs a handicapped kernel")
    elif os.environ.get(_REEXEC_MARKER):
        out(f"  note:       re-executed without {os.environ[_REEXEC_MARKER]} so that numpy "
            "uses its best kernel")


def main(argv=None):
    """Entry point of `python -m cyneuron bench`; argv is what follows 'bench'."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="python -m cyneuron bench",
        description="Time cyneuron against numpy, PyTorch CPU and scikit-learn, in one run.")
    parser.add_argument("what", nargs="?", default="all",
                        choices=("matmul", "mlp", "conv", "resnet", "rnn", "transformer",
                                 "sklearn", "rbm", "som", "inference", "tree", "all"))
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for cyneuron, torch and (with threadpoolctl) numpy's BLAS")
    parser.add_argument("--quick", action="store_true",
                        help="matmul: squares 64/128/512/1024 and the dense-layer products only; "
                             "mlp: the first network only; 5 rounds unless --repeats says otherwise")
    parser.add_argument("--repeats", type=int, default=None,
                        help="interleaved rounds, each timing every contender once "
                             "(default 8, --quick 5)")
    parser.add_argument("--target", type=float, default=0.04,
                        help="seconds per repeat (default 0.04)")
    parser.add_argument("--stat", choices=("best", "median"), default="median",
                        help="summary of the rounds (default median; the spread is printed "
                             "beside it)")
    parser.add_argument("--peak", type=float, default=None,
                        help="float32 peak GFLOP/s of this machine on the threads in use, for "
                             "the %% of peak column (default: measured at the start)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall clock (default) or the thread's CPU time, which a busy "
                             "machine disturbs far less; cpu needs --threads 1")
    parser.add_argument("--keep-openblas-env", action="store_true",
                        help="do not re-execute without OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE")
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = MIN_ROUNDS if args.quick else 8
    if args.repeats < 1 or args.target <= 0:
        parser.error("--repeats must be >= 1 and --target > 0")
    if args.peak is not None and not args.peak > 0:
        parser.error("--peak must be > 0 (GFLOP/s)")
    if args.clock == "cpu" and args.threads != 1:
        parser.error("--clock cpu needs --threads 1 (every contender computing in this thread)")
    set_clock(args.clock)

    if openblas_handicap() and not args.keep_openblas_env and not os.environ.get(_REEXEC_MARKER):
        _reexec_without_handicap(argv)  # does not return

    import cyneuron as cn

    limiter = None
    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be >= 1")
        cn.set_num_threads(args.threads)
        limiter = _limit_blas_threads(args.threads)

    def out(line=""):
        print(line, flush=True)

    t0 = time.perf_counter()
    _header(args, out)
    if args.threads is not None and limiter is None:
        out("  note:       threadpoolctl is not installed: numpy's BLAS threads are not limited")
    if args.what in ("matmul", "all"):
        bench_matmul(args, out)
    if args.what in ("mlp", "all"):
        bench_mlp(args, out)
    if args.what in ("conv", "all"):
        bench_conv(args, out)
    if args.what in ("resnet", "all"):
        from ._bench_graph import bench_resnet

        bench_resnet(args, out)
    if args.what in ("rnn", "all"):
        bench_rnn(args, out)
    if args.what in ("transformer", "all"):
        from ._bench_transformer import bench_transformer

        bench_transformer(args, out)
    if args.what in ("sklearn", "all"):
        bench_sklearn(args, out)
    if args.what in ("inference", "all"):
        from ._bench_onnx import bench_inference

        bench_inference(args, out)
    if args.what in ("rbm", "som", "all"):
        from . import _bench_classic

        if args.what in ("rbm", "all"):
            _bench_classic.bench_rbm(args, out)
        if args.what in ("som", "all"):
            _bench_classic.bench_som(args, out)
    if args.what in ("tree", "all"):
        from ._bench_tree import bench_tree

        bench_tree(args, out)
    out(f"\n({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
