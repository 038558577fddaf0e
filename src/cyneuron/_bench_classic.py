"""`python -m cyneuron bench rbm` and `bench som`: the classic networks against their
references (scikit-learn's BernoulliRBM, MiniSom), same settings, same run, interleaved
rounds (see _bench.time_blocks), median and spread. Shared with benchmarks/bench_rbm.py
and benchmarks/bench_som.py.

rbm: BernoulliRBM.fit with the same parameters on
     - the binarised digits (1797 x 64, pixel > 7), scikit-learn's defaults
       (n_components=256, learning_rate=0.1, batch_size=10) and n_iter=20;
     - 6000 random binary vectors of 784 features (density 0.2), n_components=256,
       batch_size=100, n_iter=2 (an MNIST-sized layer, where two threads pay).
     Rate: samples / s (n_iter * n_samples per fit); the pseudo-likelihood of each fitted
     model (score_samples(X).mean()) is printed beside it.
som: online training of a 30 x 30 map on 50,000 samples of 20 features (Gaussian blobs),
     sigma=3, learning_rate=0.5, 50,000 iterations in random order, against MiniSom's
     train(..., random_order=True) with the same seed and initial weights; and one
     iteration of batch training (MiniSom's train_batch_offline). Quantisation and
     topographic errors of each map are printed.
"""
import warnings

import numpy as np

RBM_DIGITS = dict(n_components=256, learning_rate=0.1, batch_size=10, n_iter=20)
RBM_WIDE = dict(n_components=256, learning_rate=0.1, batch_size=100, n_iter=2)
SOM_SHAPE = (30, 30)
SOM_SAMPLES, SOM_FEATURES = 50_000, 20
SOM_PARAMS = dict(sigma=3.0, learning_rate=0.5)
SOM_BATCH_ITERATIONS = 1


def rbm_digits_data():
    from sklearn.datasets import load_digits

    x, _ = load_digits(return_X_y=True)
    return (x > 7).astype(np.float64)


def rbm_wide_data(n=6000, d=784, seed=0):
    return (np.random.default_rng(seed).random((n, d)) < 0.2).astype(np.float64)


def rbm_fit_callables(x, params, seed=0):
    """{'cyneuron': fit, 'scikit-learn': fit} (each returns the fitted model) and
    {name: reason} for missing ones."""
    from cyneuron.rbm import BernoulliRBM

    fns, missing = {"cyneuron": lambda: BernoulliRBM(random_state=seed, **params).fit(x)}, {}
    try:
        from sklearn.neural_network import BernoulliRBM as SkRBM
    except ImportError:
        missing["scikit-learn"] = "not installed"
    else:
        fns["scikit-learn"] = lambda: SkRBM(random_state=seed, **params).fit(x)
    return fns, missing


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


def _repeats(args, cap):
    from ._bench import MIN_ROUNDS

    return max(3, min(args.repeats, cap, MIN_ROUNDS))


def bench_rbm(args, out):
    from ._bench import _rate_table

    results = {}
    cases = (("binarised digits 1797 x 64", rbm_digits_data(), RBM_DIGITS),
             ("random binary 6000 x 784", rbm_wide_data(), RBM_WIDE))
    saved = args.repeats
    args.repeats = _repeats(args, 5)
    try:
        for label, x, params in cases:
            fns, missing = rbm_fit_callables(x, params)
            title = (f"BernoulliRBM.fit, {label}, " + ", ".join(f"{k}={v}" for k, v in params.items())
                     + " (samples/s = n_iter * n_samples / fit time)")
            rate = _rate_table(title, fns, missing, params["n_iter"] * len(x), args, out,
                               unit="samples/s", names=("cyneuron", "scikit-learn"))
            scores = {name: fn().score_samples(x).mean() for name, fn in fns.items()}
            out("  pseudo-likelihood (score_samples mean, random_state=0): "
                + ", ".join(f"{k} {v:.2f}" for k, v in scores.items()))
            results[label] = (rate, scores)
    finally:
        args.repeats = saved
    return results


def bench_som(args, out):
    from ._bench import _rate_table

    x = som_data()
    results = {}
    saved = args.repeats
    try:
        for mode in ("online", "batch"):
            args.repeats = _repeats(args, 5 if mode == "online" else 3)
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
