"""Data-parallel training on one machine: 1 process x 2 threads against 2 MPI ranks x 1
thread (cyneuron.distributed), for the 784-512-512-10 MLP and the LeNet-style CNN.

    python benchmarks/bench_distributed.py [--rounds 3] [--steps 40] [--models mlp lenet]

Both configurations train on the same global batch per step (MLP 256, LeNet 64; each
rank takes half) with Adam, float32, through train_on_batch. Printed per configuration:
samples/s (global batch / wall time of a step: the median step of all rounds, and the
10th percentile, the quietest steps, as the machine's other load moves) and, for 2
ranks, the share of each step spent in the gradient all-reduce (the time inside
DistributedOptimizer.reduce_gradients, which includes waiting for the slower rank;
the ranks are lined up by a barrier before each step) and the bare all-reduce of the
same buffer after a barrier. The
configurations alternate over the rounds; on a shared machine the figures move with
the other processes' load. Needs mpi4py and mpirun (pip install 'cyneuron[mpi]').
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np

GLOBAL_BATCH = {"mlp": 256, "lenet": 64}


def _model(name):
    import cyneuron as cn
    from cyneuron import _bench, layers

    if name == "lenet":
        model = _bench.make_cyneuron_cnn(seed=0)
        model.compile(optimizer=cn.optimizers.Adam(1e-3),
                      loss="sparse_categorical_crossentropy")
        return model, _bench.CONV_INPUT
    cn.set_seed(0)
    model = cn.Sequential([layers.Dense(512, activation="relu"),
                           layers.Dense(512, activation="relu"),
                           layers.Dense(10, activation="softmax")])
    model.build((784,))
    model.compile(optimizer=cn.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    return model, (784,)


def worker(name, steps, warmup, distributed):
    """One configuration; rank 0 prints a JSON line of its timings."""
    import cyneuron as cn

    model, shape = _model(name)
    size, rank, comm_time = 1, 0, [0.0]
    if distributed:
        from cyneuron import distributed as dist

        rank, size = dist.init()

        class Timed(dist.DistributedOptimizer):
            def reduce_gradients(self, grads):
                t = time.perf_counter()
                out = super().reduce_gradients(grads)
                comm_time[0] += time.perf_counter() - t
                return out

        model.optimizer = Timed(model.optimizer)
        dist.broadcast_weights(model)
    batch = GLOBAL_BATCH[name] // size
    rng = np.random.default_rng(rank)
    x = rng.normal(size=(batch,) + shape).astype(np.float32)
    y = rng.integers(0, 10, batch)
    for _ in range(warmup):
        model.train_on_batch(x, y)
    steps_s, comm_s = [], []
    for _ in range(steps):
        if distributed:          # line the ranks up: a step's time is its own
            dist._comm().Barrier()
        comm_time[0] = 0.0
        start = time.perf_counter()
        model.train_on_batch(x, y)
        steps_s.append(time.perf_counter() - start)
        comm_s.append(comm_time[0])
    result = {"step_s": steps_s, "comm_s": comm_s,
              "params": int(model._params.size), "threads": cn.get_num_threads()}
    if distributed:        # the bare all-reduce of the buffer, ranks lined up first
        buf = model._grads.copy()
        times = []
        for _ in range(20):
            dist._comm().Barrier()
            t = time.perf_counter()
            dist.allreduce_(buf)
            times.append(time.perf_counter() - t)
        result["bare_allreduce_s"] = statistics.median(times)
    if rank == 0:
        print("RESULT " + json.dumps(result), flush=True)


def _run(cmd, env):
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    line = [s for s in proc.stdout.splitlines() if s.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--models", nargs="+", default=["mlp", "lenet"],
                        choices=sorted(GLOBAL_BATCH))
    parser.add_argument("--worker", choices=sorted(GLOBAL_BATCH))
    parser.add_argument("--distributed", action="store_true")
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.steps, args.warmup, args.distributed)

    beside = os.path.join(os.path.dirname(sys.executable), "mpirun")
    mpirun = beside if os.access(beside, os.X_OK) else shutil.which("mpirun")
    if mpirun is None:
        sys.exit("bench_distributed needs mpirun (pip install 'cyneuron[mpi]')")
    me = [sys.executable, os.path.abspath(__file__)]
    base = {k: v for k, v in os.environ.items()
            if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    for name in args.models:
        common = ["--worker", name, "--steps", str(args.steps), "--warmup", str(args.warmup)]
        configs = {
            "1 rank x 2 threads": (me + common, {**base, "OMP_NUM_THREADS": "2"}),
            "2 ranks x 1 thread": ([mpirun, "-n", "2"] + me + common + ["--distributed"],
                                   {**base, "OMP_NUM_THREADS": "1"}),
        }
        runs = {label: [] for label in configs}
        for _ in range(args.rounds):
            for label, (cmd, env) in configs.items():
                runs[label].append(_run(cmd, env))
        batch = GLOBAL_BATCH[name]
        params = runs["1 rank x 2 threads"][0]["params"]
        print(f"\n{name}: {params:,} parameters ({4 * params / 1e6:.2f} MB of float32 "
              f"gradients per all-reduce), global batch {batch}, {args.steps} steps x "
              f"{args.rounds} rounds")
        for label, results in runs.items():
            steps = np.concatenate([r["step_s"] for r in results])
            median, quiet = np.median(steps), np.percentile(steps, 10)
            line = (f"  {label}: {batch / median:8.0f} samples/s (quietest 10%: "
                    f"{batch / quiet:.0f}), step {1e3 * median:.2f} ms")
            if "bare_allreduce_s" in results[0]:
                comm = np.concatenate([r["comm_s"] for r in results])
                share = np.median(comm / steps)
                bare = statistics.median(r["bare_allreduce_s"] for r in results)
                line += (f"; all-reduce {1e3 * np.median(comm):.2f} ms a step ({100 * share:.1f}% "
                         f"of it), bare all-reduce {1e3 * bare:.2f} ms")
            print(line, flush=True)


if __name__ == "__main__":
    main()
