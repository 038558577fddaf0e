"""The OpenMP pool: its size is the single source of truth for every kernel.

Kernels ask omp_get_max_threads() at each call, so `cn.set_num_threads`,
OMP_NUM_THREADS and threadpoolctl's `threadpool_limits` all take effect.

Fork safety (csrc/cn_fork.h): a child made by os.fork() from a process with more than
one thread (e.g. one whose OpenMP pool has run) runs every kernel on one thread, since
libgomp's pool does not survive fork; `forked_single_thread()` tells whether this
process is such a child.
"""

import os

cdef extern from "cn_fork.h" nogil:
    int cn_fork_register()
    int cn_fork_is_single()
    int cn_fork_threads_at_fork()

cdef extern from "cn_round_trip.h" nogil:
    double cn_round_trip_ns(long trips)

if cn_fork_register() != 0:
    raise ImportError("cyneuron: pthread_atfork failed; cannot make forked children safe")


def openmp_enabled():
    """True when the extension was compiled with OpenMP."""
    return bool(cn_omp_enabled())


def get_max_threads():
    return cn_omp_max_threads()


def set_num_threads(int n):
    """Set the pool size; in a forked child of a multi-threaded parent it stays 1."""
    if cn_fork_is_single():
        n = 1
    cn_omp_set_num_threads(n)


def forked_single_thread():
    """True in a child of os.fork() whose parent had more than one thread: the kernels
    run on one thread there (libgomp's pool cannot be used after such a fork)."""
    return bool(cn_fork_is_single())


def threads_at_last_fork():
    """Threads the parent had at the last fork() (read in the parent), -1 if unknown."""
    return cn_fork_threads_at_fork()


def _leave_current_cpu_for_tests():
    """(cpu before, cpu after) of this thread around cn_leave_cpu(its own CPU): the move
    a worker makes when it finds itself on the master's CPU (tests only)."""
    cdef int before = cn_current_cpu()
    cn_leave_cpu(before)
    return before, cn_current_cpu()


# How far apart the pool's threads are, as a multiple (in percent) of the ~110 ns
# cache-line round trip of cores that share an L3, where the GEMM's one-thread thresholds
# were measured: parallel regions cost that much more. Only the GEMM reads it: a product's
# bits do not depend on how many threads computed it, while threads_for's kernels sum per
# thread, and a timing in their split would make runs at one thread count differ.
cdef int _distance_percent = 100
cdef enum:
    NEAR_ROUND_TRIP_NS = 110
    MAX_DISTANCE_PERCENT = 400


cdef int distance_percent() noexcept nogil:
    return _distance_percent


def set_distance(round_trip_ns):
    """Scale the one-thread thresholds by a measured round trip (ns; None: unchanged), to
    between 1x and 4x; returns the scale in percent."""
    global _distance_percent
    if round_trip_ns is not None:
        if not round_trip_ns > 0:
            raise ValueError(f"round_trip_ns must be a positive number of nanoseconds or None, "
                             f"got {round_trip_ns!r}")
        _distance_percent = <int>min(MAX_DISTANCE_PERCENT,
                                     max(100, 100 * round_trip_ns / NEAR_ROUND_TRIP_NS))
    return _distance_percent


def _usable_cpus():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cache_line_round_trip_ns(long trips=2000, int tries=3):
    """Nanoseconds for one cache line to go from the pool's thread 0 to thread 1 and back
    (the best of `tries`), or None when the pool cannot run two threads on two CPUs.

    ~100 ns between cores that share an L3, 3-4x that across L3 domains; every parallel
    region pays it a few times, so 2-thread speed on small work follows it (a VM's vCPUs
    can move between the two cases while it runs: see csrc/cn_round_trip.h)."""
    if trips < 1 or tries < 1:
        raise ValueError(f"trips and tries must be >= 1, got {trips} and {tries}")
    cdef double best = -1, ns
    cdef int i
    if cn_fork_is_single() or cn_omp_max_threads() < 2 or _usable_cpus() < 2:
        return None
    for i in range(tries):
        with nogil:
            ns = cn_round_trip_ns(trips)
        if ns > 0 and (best < 0 or ns < best):
            best = ns
    return best if best > 0 else None
