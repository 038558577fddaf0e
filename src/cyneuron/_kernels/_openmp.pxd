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
# L3, where the thresholds were measured): set_distance in _openmp.pyx. Only the GEMM's
# thread count follows it (a product's bits do not depend on its threads).
cdef int distance_percent() noexcept nogil

# Work below this many scalar operations runs on one thread: waking the pool
# costs microseconds, more than the work itself.
cdef enum:
    PARALLEL_MIN_WORK = 32768

cdef inline int threads_for(double work) noexcept nogil:
    """Threads to use for a loop of about `work` scalar operations. A function of the work
    and the thread count only, never of a timing: kernels that sum per thread (losses,
    batch statistics, bias and conv gradients, clipnorm) round by their split, and runs
    at a fixed thread count must repeat bit for bit."""
    if work < PARALLEL_MIN_WORK:
        return 1
    return cn_omp_max_threads()
