"""`python -m cyneuron bench som`: online training of a 30 x 30 map on 50,000 samples of
20 features (Gaussian blobs), sigma=3, learning_rate=0.5, 50,000 iterations in random order,
against MiniSom's train(..., random_order=True) with the same seed and initial weights; and
one iteration of batch training (MiniSom's train_batch_offline). Quantisation and
topographic errors of each map are printed. Shared with benchmarks/bench_som.py.
"""
import warnings

import numpy as np

from .harness import _rate_table, capped_repeats

SOM_SHAPE = (30, 30)
SOM_SAMPLES, SOM_FEATURES = 50_000, 20
SOM_PARAMS = dict(sigma=3.0, learning_rate=0.5)
SOM_BATCH_ITERATIONS = 1


def som_data(n=SOM_SAMPLES, d=SOM_FEATURES, seed=0):
    """n samples of d features: 10 Gaussian blobs, standardised."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((10, d)) * 3
    x = centres[rng.integers(0, 10, n)] + rng.standard_normal((n, d))
    return (x - x.mean(0)) / x.std(0)


def som_callables(x, mode="online", seed=0):
    """{'cyneuron': train, 'MiniSom': train}: each call builds a map with the same seed,
    initialises it from the data (random_weights_init) and trains it; returns the map."""
    import cyneuron as cn

    m, n = SOM_SHAPE
    iterations = len(x) if mode == "online" else SOM_BATCH_ITERATIONS

    def ours():
        som = cn.SOM(m, n, x.shape[1], random_state=seed, **SOM_PARAMS)
        som.random_weights_init(x)
        if mode == "online":
            return som.train(x, iterations, random_order=True)
        return som.train_batch(x, iterations)

    fns, missing = {"cyneuron": ours}, {}
    try:
        from minisom import MiniSom
    except ImportError:
        missing["MiniSom"] = "not installed (pip install minisom)"
        return fns, missing

    def theirs():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            som = MiniSom(m, n, x.shape[1], random_seed=seed, **SOM_PARAMS)
        som.random_weights_init(x)
        if mode == "online":
            som.train(x, iterations, random_order=True)
        else:
            som.train_batch_offline(x, iterations)
        return som

    fns["MiniSom"] = theirs
    return fns, missing


def bench_som(args, out):
    x = som_data()
    results = {}
    saved = args.repeats
    try:
        for mode in ("online", "batch"):
            args.repeats = capped_repeats(args, 5 if mode == "online" else 3)
            fns, missing = som_callables(x, mode)
            work = len(x) if mode == "online" else SOM_BATCH_ITERATIONS * len(x)
            what = (f"{len(x):,} iterations, random order" if mode == "online"
                    else f"{SOM_BATCH_ITERATIONS} batch iteration(s) (MiniSom: train_batch_offline)")
            title = (f"SOM {SOM_SHAPE[0]}x{SOM_SHAPE[1]} {mode} training on {len(x):,} x "
                     f"{x.shape[1]}, sigma={SOM_PARAMS['sigma']}, learning_rate="
                     f"{SOM_PARAMS['learning_rate']}, {what} (samples/s)")
            rate = _rate_table(title, fns, missing, work, args, out, unit="samples/s",
                               names=("cyneuron", "MiniSom"))
            errors = {}
            for name, fn in fns.items():
                som = fn()
                errors[name] = (som.quantization_error(x), som.topographic_error(x))
            out("  quantisation / topographic error: " + ", ".join(
                f"{k} {q:.4f} / {t:.4f}" for k, (q, t) in errors.items()))
            results[mode] = (rate, errors)
    finally:
        args.repeats = saved
    return results


run = bench_som
