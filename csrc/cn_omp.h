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

/* Unstacking a worker from the main thread's CPU (Linux).
 *
 * On a VM, a halted vCPU reports as "preempted", and the scheduler will not wake a
 * thread onto it: an OpenMP worker woken from its sleep (after a pause longer than
 * libgomp's spin) lands on the CPU of the thread that woke it, while the other vCPU
 * idles. Both then share one CPU until a load balance: each parallel region waits for
 * the master's spin (~0.45 ms) before the worker runs (seen with perf sched on a
 * 2-vCPU Zen 5 VM: worker scheduling delays of 2-4 ms right after a pause, and 48 Dense
 * products at 0.65x numpy instead of 1.3x). A worker that finds itself on the master's
 * CPU moves off it (its affinity narrowed to the other CPUs, which migrates it at once,
 * then restored, so the scheduler stays free to place it later). Costs one sched_getcpu
 * per region; respects a binding (a worker bound to one CPU is never moved). */
#if defined(__linux__) && defined(_GNU_SOURCE)
#include <sched.h>
static inline int cn_current_cpu(void) { return sched_getcpu(); }
static inline void cn_leave_cpu(int cpu)
{
    cpu_set_t all, others;
    if (cpu < 0 || cpu >= CPU_SETSIZE || sched_getcpu() != cpu)
        return;
    if (sched_getaffinity(0, sizeof all, &all) != 0)
        return;
    others = all;
    CPU_CLR(cpu, &others);
    if (CPU_COUNT(&others) == 0)
        return;
    if (sched_setaffinity(0, sizeof others, &others) == 0)
        sched_setaffinity(0, sizeof all, &all);
}
#else
static inline int cn_current_cpu(void) { return -1; }
static inline void cn_leave_cpu(int cpu) { (void)cpu; }
#endif
#endif
