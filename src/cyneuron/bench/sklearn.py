"""`python -m cyneuron bench sklearn`: cyneuron.sklearn.MLPClassifier against
scikit-learn's MLPClassifier fitting the digits (same architecture, solver, batch size,
epochs and random_state): seconds per fit, test accuracy and the speed-up."""
from __future__ import annotations

from .harness import (MIN_ROUNDS, _pick, _print_table, spread, spread_cell, spread_note,
                      time_blocks)


SKLEARN_HIDDEN = (100,)
SKLEARN_EPOCHS = 30


def sklearn_digits_data(seed=0):
    """((X_train, y_train), (X_test, y_test)): the digits scaled to [0, 1], a 75/25 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x / 16.0, y, test_size=0.25,
                                                        random_state=seed)
    return (x_train, y_train), (x_test, y_test)


def sklearn_estimator_params(epochs=SKLEARN_EPOCHS, seed=0):
    """scikit-learn's MLPClassifier defaults (adam, batch 200, relu) for exactly `epochs`
    epochs: the loss-based stopping rule is switched off (n_iter_no_change = epochs)."""
    return dict(hidden_layer_sizes=SKLEARN_HIDDEN, max_iter=epochs, n_iter_no_change=epochs,
                random_state=seed)


def sklearn_fit_callables(x, y, epochs=SKLEARN_EPOCHS):
    """{'cyneuron': fit, 'cyneuron float32': fit, 'scikit-learn': fit}: each call fits a new
    classifier on (x, y) and returns it; and {name: reason} for the unavailable ones."""
    import warnings

    fns, missing = {}, {}
    params = sklearn_estimator_params(epochs)

    def fitter(cls, **extra):
        def fit():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")   # ConvergenceWarning: max_iter reached
                return cls(**params, **extra).fit(x, y)
        return fit

    try:
        from sklearn.neural_network import MLPClassifier as SkMLP
    except ImportError:
        missing = {name: "scikit-learn not installed"
                   for name in ("cyneuron", "cyneuron float32", "scikit-learn")}
        return fns, missing
    from cyneuron.sklearn import MLPClassifier

    fns["cyneuron"] = fitter(MLPClassifier)
    fns["cyneuron float32"] = fitter(MLPClassifier, dtype="float32")
    fns["scikit-learn"] = fitter(SkMLP)
    return fns, missing


def bench_sklearn(args, out):
    fns, missing = sklearn_fit_callables(*sklearn_digits_data()[0])
    if missing:
        out("\nscikit-learn MLPClassifier: skipped (scikit-learn is not installed)")
        return {}
    (x_train, _), (x_test, y_test) = sklearn_digits_data()
    repeats = max(MIN_ROUNDS, min(args.repeats, 6))
    samples = time_blocks(fns, repeats=repeats, target_s=args.target)
    seconds = {name: _pick(s, args.stat) for name, s in samples.items()}
    accuracy = {name: fn().score(x_test, y_test) for name, fn in fns.items()}
    table = [("implementation", "s / fit", "samples/s", "test accuracy", "speed-up vs scikit-learn",
              "spread")]
    for name in fns:
        rate = SKLEARN_EPOCHS * len(x_train) / seconds[name]
        table.append((name, f"{seconds[name]:.3f}", f"{rate:,.0f}", f"{accuracy[name]:.4f}",
                      f"{seconds['scikit-learn'] / seconds[name]:.2f}x",
                      spread_cell(samples[name])))
    out(f"\nMLPClassifier{SKLEARN_HIDDEN} fit on digits ({len(x_train)} samples, "
        f"{SKLEARN_EPOCHS} epochs, adam, batch 200); {args.stat} of {repeats} interleaved fits; "
        f"cyneuron float64 unless noted (scikit-learn computes in float64)")
    _print_table(table, out)
    spread_note(samples.values(), out)
    return seconds


run = bench_sklearn
