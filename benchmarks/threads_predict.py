"""Concurrent inference: the speed-up of 2 Python threads over 1 calling `predict` on one
model (the kernels release the GIL, so the threads' GEMMs overlap).

    python benchmarks/threads_predict.py [--rounds 7] [--calls 64]

A 784-512-512-10 MLP (ReLU, ReLU, softmax; float32), batches of 256 rows. The same
work (`--calls` predict calls) is done by one thread, then split between two, with
cn.set_num_threads(1) (each Python thread on one core), and for reference by one thread
with cn.set_num_threads(2) (OpenMP splitting each GEMM). The configurations alternate
over the rounds; the median and best wall time of each are printed. On a shared machine
the figures move with the other processes' load.
"""
import argparse
import statistics
import threading
import time

import numpy as np

import cyneuron as cn
from cyneuron import layers


def _model():
    cn.set_seed(0)
    model = cn.Sequential([layers.Dense(512, activation="relu"),
                           layers.Dense(512, activation="relu"),
                           layers.Dense(10, activation="softmax")])
    model.build((784,))
    return model


def _timed(model, x, calls, n_threads, omp_threads):
    cn.set_num_threads(omp_threads)
    per = [calls // n_threads + (i < calls % n_threads) for i in range(n_threads)]
    barrier = threading.Barrier(n_threads + 1)

    def work(k):
        barrier.wait()
        for _ in range(k):
            model.predict(x, batch_size=len(x))

    threads = [threading.Thread(target=work, args=(k,)) for k in per]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=64)
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    model = _model()
    x = np.random.default_rng(0).standard_normal((args.batch, 784)).astype(np.float32)
    configs = {"1 thread, 1 OpenMP thread": (1, 1), "2 threads, 1 OpenMP thread each": (2, 1),
               "1 thread, 2 OpenMP threads": (1, 2)}
    for n, omp in configs.values():          # warm up: buffers, replicas, OpenMP teams
        _timed(model, x, 2 * n, n, omp)
    times = {name: [] for name in configs}
    names = list(configs)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name].append(_timed(model, x, args.calls, *configs[name]))
    samples = args.calls * args.batch
    base = statistics.median(times[names[0]])
    print(f"{args.calls} predict calls of {args.batch} rows, 784-512-512-10 float32, "
          f"{args.rounds} rounds (median / best wall time)")
    for name in names:
        med, best = statistics.median(times[name]), min(times[name])
        print(f"  {name:34s} {med * 1e3:8.1f} / {best * 1e3:8.1f} ms  "
              f"{samples / med:9.0f} samples/s  speed-up {base / med:4.2f}x "
              f"(best {min(times[names[0]]) / best:4.2f}x)")


if __name__ == "__main__":
    main()
