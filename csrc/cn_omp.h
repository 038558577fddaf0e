/* OpenMP helpers that also compile without OpenMP (then everything is serial). */
#ifndef CN_OMP_H
#define CN_OMP_H
#ifdef _OPENMP
#include <omp.h>
static inline int cn_omp_enabled(void) { return 1; }
static inline int cn_omp_max_threads(void) { return omp_get_max_threads(); }
static inline void cn_omp_set_num_threads(int n) { omp_set_num_threads(n); }
static inline int cn_omp_thread_num(void) { return omp_get_thread_num(); }
static inline int cn_omp_num_threads(void) { return omp_get_num_threads(); }
/* An orphaned barrier: binds to the innermost enclosing parallel region. */
static inline void cn_omp_barrier(void) { _Pragma("omp barrier") }
static inline double cn_omp_wtime(void) { return omp_get_wtime(); }
#else
static inline int cn_omp_enabled(void) { return 0; }
static inline int cn_omp_max_threads(void) { return 1; }
static inline void cn_omp_set_num_threads(int n) { (void)n; }
static inline int cn_omp_thread_num(void) { return 0; }
static inline int cn_omp_num_threads(void) { return 1; }
static inline void cn_omp_barrier(void) { }
#include <time.h>
static inline double cn_omp_wtime(void) {
    struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec;
}
#endif
#endif
