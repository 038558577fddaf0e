/* How far apart the pool's first two threads are: the round trip of one cache line
 * bounced between them, in nanoseconds.
 *
 * Every parallel region hands cache lines from one core to another (the fork, the join,
 * the rows one thread writes and the other reads next). Between two cores that share an
 * L3 a round trip takes ~100 ns; between cores in different L3 domains (other CCDs, other
 * sockets) 3-4 times that. A VM's vCPUs can move between such places while it runs: on
 * the 2-vCPU Zen 5 VM this project is measured on, the round trip switched between ~110
 * and ~400 ns every few seconds to minutes, and with it the 2-thread speed of small work
 * in every library (a batch-32 MLP step: cyneuron 205k -> 115k samples/s, PyTorch 52k ->
 * 37k; one thread, 142k, did not change). The benchmarks report it so that such rows are
 * read for what they are. */
#ifndef CN_ROUND_TRIP_H
#define CN_ROUND_TRIP_H
#include "cn_omp.h"

#define CN_ROUND_TRIP_TIMEOUT_S 0.01   /* 2000 trips at 400 ns take 0.9 ms */

/* Mean round trip over `trips` (after `trips / 8` unmeasured ones), -1 when fewer than
 * two threads ran or it took longer than the timeout (the threads shared a CPU). */
static double cn_round_trip_ns(long trips)
{
#ifdef _OPENMP
    struct { _Alignas(64) long turn; char pad[56]; _Alignas(64) int abort; } line;
    long warm = trips / 8;
    double elapsed = -1.0;
    int master_cpu = cn_current_cpu();
    __atomic_store_n(&line.turn, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&line.abort, 0, __ATOMIC_RELAXED);
    #pragma omp parallel num_threads(2)
    {
        int t = omp_get_thread_num();
        if (omp_get_num_threads() == 2) {
            double start = 0.0, t0 = omp_get_wtime();
            if (t == 1)
                cn_leave_cpu(master_cpu);
            #pragma omp barrier
            for (long i = 0; i < warm + trips; i++) {
                long mine = 2 * i + t;   /* thread 0 waits for 2i, thread 1 for 2i + 1 */
                long spins = 0;
                if (i == warm)
                    start = omp_get_wtime();
                while (__atomic_load_n(&line.turn, __ATOMIC_ACQUIRE) != mine) {
                    if (++spins % 1024 == 0 &&
                        (__atomic_load_n(&line.abort, __ATOMIC_RELAXED) ||
                         omp_get_wtime() - t0 > CN_ROUND_TRIP_TIMEOUT_S)) {
                        __atomic_store_n(&line.abort, 1, __ATOMIC_RELAXED);
                        break;
                    }
                }
                if (__atomic_load_n(&line.abort, __ATOMIC_RELAXED))
                    break;
                __atomic_store_n(&line.turn, mine + 1, __ATOMIC_RELEASE);
            }
            if (t == 0 && !__atomic_load_n(&line.abort, __ATOMIC_RELAXED))
                elapsed = omp_get_wtime() - start;
        }
    }
    return elapsed < 0 ? -1.0 : elapsed * 1e9 / (double)trips;
#else
    (void)trips;
    return -1.0;
#endif
}
#endif
