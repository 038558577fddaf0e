"""The OpenMP pool: its size is the single source of truth for every kernel.

Kernels ask omp_get_max_threads() at each call, so `cn.set_num_threads`,
OMP_NUM_THREADS and threadpoolctl's `threadpool_limits` all take effect.
"""


def openmp_enabled():
    """True when the extension was compiled with OpenMP."""
    return bool(cn_omp_enabled())


def get_max_threads():
    return cn_omp_max_threads()


def set_num_threads(int n):
    cn_omp_set_num_threads(n)
