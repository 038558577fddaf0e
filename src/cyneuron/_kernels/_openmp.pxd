cdef extern from "cn_omp.h" nogil:
    int cn_omp_enabled()
    int cn_omp_max_threads()
    void cn_omp_set_num_threads(int n)
    int cn_omp_thread_num()
    int cn_omp_num_threads()
    void cn_omp_barrier()
    double cn_omp_wtime()
    # the CPU this thread runs on (-1 where unknown); move this thread off `cpu` if it
    # is on it (see csrc/cn_omp.h: workers stacked on the master's CPU in a VM)
    int cn_current_cpu()
    void cn_leave_cpu(int cpu)

# How far apart the pool's threads are, in percent of the near case (cores sharing an
# L3, where the thresholds were measured): set_distance in _openmp.pyx.
cdef int distance_percent() noexcept nogil

# Work below this many scalar operations runs on one thread: waking the pool
# costs microseconds, more than the work itself (and 3-4x more when the threads are far).
cdef enum:
    PARALLEL_MIN_WORK = 32768

cdef inline int threads_for(double work) noexcept nogil:
    """Threads to use for a loop of about `work` scalar operations."""
    if work * 100 < <double>PARALLEL_MIN_WORK * distance_percent():
        return 1
    return cn_omp_max_threads()
