"""`python -m cyneuron bench rbm`: BernoulliRBM.fit against scikit-learn's, same
parameters, same run, interleaved rounds, median and spread; shared with
benchmarks/bench_rbm.py. The cases:
  - the binarised digits (1797 x 64, pixel > 7), scikit-learn's defaults
    (n_components=256, learning_rate=0.1, batch_size=10) and n_iter=20;
  - 6000 random binary vectors of 784 features (density 0.2), n_components=256,
    batch_size=100, n_iter=2 (an MNIST-sized layer, where two threads pay).
Rate: samples / s (n_iter * n_samples per fit); the pseudo-likelihood of each fitted
model (score_samples(X).mean()) is printed beside it.
"""
import numpy as np

from .harness import _rate_table, capped_repeats

RBM_DIGITS = dict(n_components=256, learning_rate=0.1, batch_size=10, n_iter=20)
RBM_WIDE = dict(n_components=256, learning_rate=0.1, batch_size=100, n_iter=2)


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


def bench_rbm(args, out):
    results = {}
    cases = (("binarised digits 1797 x 64", rbm_digits_data(), RBM_DIGITS),
             ("random binary 6000 x 784", rbm_wide_data(), RBM_WIDE))
    saved = args.repeats
    args.repeats = capped_repeats(args, 5)
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


run = bench_rbm
