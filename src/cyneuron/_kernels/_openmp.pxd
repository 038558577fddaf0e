cdef extern from "cn_omp.h" nogil:
    int cn_omp_enabled()
    int cn_omp_max_threads()
    void cn_omp_set_num_threads(int n)
    int cn_omp_thread_num()
    int cn_omp_num_threads()
    void cn_omp_barrier()
    double cn_omp_wtime()

# Work below this many scalar operations runs on one thread: waking the pool
# costs microseconds, more than the work itself.
cdef enum:
    PARALLEL_MIN_WORK = 32768

cdef inline int threads_for(double work) noexcept nogil:
    """Threads to use for a loop of about `work` scalar operations."""
    if work < PARALLEL_MIN_WORK:
        return 1
    return cn_omp_max_threads()
