"""The shared parts of `python -m cyneuron bench`: the environment (OpenBLAS's
handicap variables, CPU, BLAS threads), the clocks and interleaved timing rounds, their
spread, the float32 FMA peak, and the tables every group prints."""
from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
from typing import NamedTuple

import numpy as np



OPENBLAS_HANDICAP_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
_REEXEC_MARKER = "CYNEURON_BENCH_REEXECUTED"


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
                "import sys; from cyneuron.bench import main; sys.exit(main(sys.argv[1:]))", *argv]
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

# The pool's cache-line round trip (ns) measured before each timed round of this run. A
# VM's vCPUs can move between cores that share an L3 (~100 ns) and cores that do not
# (3-4x that) while it runs, and 2-thread speed on small work follows, in every library
# (csrc/cn_round_trip.h): rows timed above FAR_ROUND_TRIP_NS are marked.
round_trips = []
FAR_ROUND_TRIP_NS = 250


def probe_round_trip():
    """Measure and record the pool's cache-line round trip now (None on one thread); the
    library's one-thread threshold follows it, as it does at each training epoch."""
    from .. import _config

    ns = _config.probe_thread_distance()   # also sets the GEMM's one-thread threshold
    if ns is not None:
        round_trips.append(ns)
    return ns


def worst_round_trip(since):
    """The longest round trip recorded since index `since` of round_trips (None if none)."""
    return max(round_trips[since:], default=None)


def round_trip_cell(ns):
    """' [CPUs far apart: 400 ns round trip (!)]' for a row timed while they were, else ''."""
    if ns is None or ns <= FAR_ROUND_TRIP_NS:
        return ""
    return f" [CPUs far apart: {ns:.0f} ns cache-line round trip (!)]"


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
        probe_round_trip()
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


def round_trip_note(out):
    """The range of the pool's cache-line round trip over the run, and a warning when the
    CPUs were far apart for some rounds."""
    if not round_trips:
        return
    low, high = min(round_trips), max(round_trips)
    out(f"  CPU-to-CPU cache-line round trip during the run: {low:.0f}-{high:.0f} ns")
    if high > FAR_ROUND_TRIP_NS:
        out(f"  (!) some rounds ran while the CPUs were far apart (> {FAR_ROUND_TRIP_NS} ns: "
            "not sharing an L3): 2-thread figures of small work drop for every library then; "
            "rows marked so are not comparable with the others")


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
        from .._kernels import gemm as _gemm

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
    from .. import _config

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
    from .. import _config

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
    if threads > 1:
        ns = probe_round_trip()
        out(f"  round trip: {'?' if ns is None else f'{ns:.0f} ns'} (one cache line between the "
            f"pool's first two threads; > {FAR_ROUND_TRIP_NS} ns: the CPUs share no L3)")
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


def capped_repeats(args, cap):
    """Rounds for a group whose calls are long: at least 3, at most `cap` and MIN_ROUNDS."""
    return max(3, min(args.repeats, cap, MIN_ROUNDS))
