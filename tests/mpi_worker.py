"""Programs that tests/test_distributed.py runs under `mpirun -n 2`; not a test module.

    mpirun -n 2 python tests/mpi_worker.py <scenario> <output folder>

Each rank writes what the test checks to <output folder>/<scenario>-rank<r>.npz.
"""
import os
import sys
import time

import numpy as np

import cyneuron as cn
from cyneuron import distributed as dist
from cyneuron import layers

B = 8            # per-rank batch in the equality runs (the single process uses 2 * B)
FEATURES, CLASSES = 6, 3


def data(n, seed=7):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, FEATURES))
    y = rng.integers(0, CLASSES, n)
    return x, y


def mlp(seed, hidden=10):
    cn.set_seed(seed)
    model = cn.Sequential([layers.Dense(hidden, activation="tanh"),
                           layers.Dense(CLASSES, activation="softmax")], dtype="float64")
    model.build((FEATURES,))
    return model


def optimizer(name):
    return cn.optimizers.SGD(0.1, momentum=0.9) if name == "sgd" else cn.optimizers.Adam(0.01)


def save(out, scenario, **arrays):
    np.savez(os.path.join(out, f"{scenario}-rank{dist.rank()}.npz"), **arrays)


def flat(model):
    return np.concatenate([w.ravel() for w in model.get_weights()])


def run_fit(out):
    """fit(distributed=True) on strided shards: 20 steps (SGD, Adam) on 2 * B * 20
    samples; then 37 and 33 samples (the last shard smaller, then a rank without a
    sample in the last step). Saves each rank's start and end weights and history."""
    r = dist.rank()
    results = {}
    for name, n in (("sgd", 2 * B * 20), ("adam", 2 * B * 20), ("uneven", 37),
                    ("empty", 33)):
        x, y = data(n)
        xs, ys = dist.shard(x, y)
        model = mlp(seed=100 + r)        # differently seeded: fit broadcasts rank 0's
        model.compile(optimizer=optimizer("adam" if name == "adam" else "sgd"),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        results[f"{name}_start"] = flat(model)
        epochs = 1 if name in ("sgd", "adam") else 3
        # each rank validates on its own samples: MetricAverage makes the logs agree
        val = dist.shard(*data(40, seed=8)) if name == "sgd" else None
        history = model.fit(xs, ys, batch_size=B if name in ("sgd", "adam") else 4,
                            epochs=epochs, shuffle=False, verbose=2 if name == "sgd" else 0,
                            validation_data=val, distributed=True)
        if val is not None:
            results["sgd_val_local"] = np.array(model.evaluate(*val)["loss"])
            results["sgd_val_logged"] = np.array(history.history["val_loss"])
        results[f"{name}_end"] = flat(model)
        results[f"{name}_loss"] = np.array(history.history["loss"])
        results[f"{name}_steps"] = np.array(model.optimizer.iterations)
        results[f"{name}_optimizer_is_plain"] = np.array(
            not isinstance(model.optimizer, dist.DistributedOptimizer))
    save(out, "fit", **results)


def run_train_on_batch(out):
    """The custom-loop pieces: broadcast_weights, then 20 train_on_batch steps on
    half of each batch of 2 * B, with a DistributedOptimizer(Adam) compiled in."""
    x, y = data(2 * B * 20)
    model = mlp(seed=200 + dist.rank())
    before = flat(model)
    dist.broadcast_weights(model)
    model.compile(optimizer=dist.DistributedOptimizer(cn.optimizers.Adam(0.01)),
                  loss="sparse_categorical_crossentropy")
    start = flat(model)
    for step in range(20):
        lo = step * 2 * B + dist.rank() * B
        model.train_on_batch(x[lo:lo + B], y[lo:lo + B])
    save(out, "tob", before=before, start=start, end=flat(model))


def run_broadcast(out):
    """Differently seeded ranks, a model with BatchNormalization (non-trainable moving
    statistics): identical after broadcast_weights."""
    cn.set_seed(300 + dist.rank())
    model = cn.Sequential([layers.Dense(5), layers.BatchNormalization(),
                           layers.Dense(2)], dtype="float32")
    model.build((4,))
    bn = model.layers[1]
    # every array differs between the ranks (biases, gamma, beta, moving statistics too)
    model.set_weights([w + (dist.rank() + 1) * (i + 1) * 0.01
                       for i, w in enumerate(model.get_weights())])
    before = model.get_weights()
    dist.broadcast_weights(model, root=1)
    save(out, "broadcast", **{f"before{i}": w for i, w in enumerate(before)},
         **{f"after{i}": w for i, w in enumerate(model.get_weights())},
         n=np.array(len(before)), bn_mean=bn.get_weights()[2])


def run_raise(out):
    """Rank 1 raises in a callback at its fourth step; rank 0 waits in the all-reduce."""
    x, y = data(256)
    xs, ys = dist.shard(x, y)
    model = mlp(seed=1)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")

    class Boom(cn.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if dist.rank() == 1 and batch == 3:
                raise ValueError("boom from rank 1")

    model.fit(xs, ys, batch_size=8, epochs=2, verbose=0, callbacks=[Boom()],
              distributed=True)


def run_timeout(out):
    """Rank 1 never joins the all-reduce; rank 0 gives up after 2 s."""
    dist.init(timeout=2)
    if dist.rank() == 1:
        time.sleep(60)
        return
    dist.allreduce_(np.ones(4), "the test's all-reduce")


def run_mismatch(out):
    """The ranks build different models: a clear error before any step."""
    x, y = data(64)
    model = mlp(seed=1, hidden=10 + dist.rank())
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    model.fit(*dist.shard(x, y), batch_size=8, verbose=0, distributed=True)


def run_sklearn(out):
    """MLPClassifier(distributed=True): each rank gets the whole data set; a step's
    global batch is split between the ranks."""
    from cyneuron.sklearn import MLPClassifier

    x, y = data(300)
    clf = MLPClassifier((12,), max_iter=4, batch_size=32, random_state=0, dtype="float64",
                        alpha=1e-3, distributed=True)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf.fit(x, y)
    save(out, "sklearn", **{f"coef{i}": c for i, c in enumerate(clf.coefs_)},
         **{f"bias{i}": b for i, b in enumerate(clf.intercepts_)},
         loss_curve=np.array(clf.loss_curve_), t=np.array(clf.t_))


def run_nompi(out):
    """fit(distributed=True) without mpirun."""
    x, y = data(32)
    model = mlp(seed=1)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=8, verbose=0, distributed=True)


def run_nompi_sklearn(out):
    """MLPClassifier(distributed=True) without mpirun."""
    from cyneuron.sklearn import MLPClassifier

    MLPClassifier((4,), max_iter=1, distributed=True).fit(*data(32))


if __name__ == "__main__":
    scenario, folder = sys.argv[1], sys.argv[2]
    if not scenario.startswith("nompi"):
        dist.init()
    globals()["run_" + scenario](folder)
