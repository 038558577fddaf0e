"""End-to-end MLP training and inference: cyneuron next to PyTorch CPU and scikit-learn.

Training: one epoch over N_SAMPLES samples of a ReLU/softmax MLP with Adam (lr 1e-3),
float32, shuffled mini-batches, for each architecture and batch size:
  cyneuron      model.fit(x, y, epochs=1, batch_size=b, shuffle=True, verbose=0)
  PyTorch CPU   the same network, torch.optim.Adam, CrossEntropyLoss on the logits, a loop
                over a random permutation in batches of b (torch.set_num_threads = ours)
  scikit-learn  MLPClassifier(hidden_layer_sizes, solver="adam", batch_size=b, max_iter=1,
                warm_start=True, alpha=0, tol=0).fit(x, y): one epoch per call
Figures are samples/s (best or median of the repeats) and GFLOP/s of the training
arithmetic (forward, weight gradients, input gradients but the first layer's) as a share
of the measured FMA peak.

Inference: softmax probabilities, one sample at a time (latency; PyTorch under
torch.no_grad()) and for PREDICT_SAMPLES samples at once (throughput).
"""
import warnings

import numpy as np

from .harness import (MIN_ROUNDS, SPREAD_WARN, _pick, matmul_peak, round_trip_cell, round_trips,
                      spread, time_blocks, worst_round_trip)

ARCHITECTURES = {"784-256-128-10": (784, 256, 128, 10), "784-512-512-10": (784, 512, 512, 10)}
BATCH_SIZES = (32, 128, 512)
N_SAMPLES = 20_000
PREDICT_SAMPLES = 10_000
LEARNING_RATE = 1e-3
IMPLEMENTATIONS = ("cyneuron", "cyneuron-functional", "torch", "scikit-learn")
# cyneuron-functional: the same network as cn.Model(inputs, outputs) rather than
# cn.Sequential, timed interleaved with it: the graph engine must cost nothing extra.


def train_flops_per_sample(sizes):
    """Multiply-adds x 2 of one training sample: forward, weight gradients, and input
    gradients of every layer but the first."""
    macs = [a * b for a, b in zip(sizes[:-1], sizes[1:])]
    return 2.0 * (2 * sum(macs) + sum(macs[1:]))


def data(n=N_SAMPLES, features=784, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, features)).astype(np.float32)
    y = rng.integers(0, classes, n).astype(np.int64)
    return x, y


def make_cyneuron(sizes, seed=0):
    import cyneuron as cn
    from cyneuron import layers

    cn.set_seed(seed)
    model = cn.Sequential([layers.Dense(units, activation="relu") for units in sizes[1:-1]]
                          + [layers.Dense(sizes[-1], activation="softmax")])
    model.compile(optimizer=cn.optimizers.Adam(LEARNING_RATE),
                  loss="sparse_categorical_crossentropy")
    model.build((sizes[0],))
    return model


def make_cyneuron_functional(sizes, seed=0):
    """make_cyneuron's network built with the functional API (cn.Input, cn.Model)."""
    import cyneuron as cn
    from cyneuron import layers

    cn.set_seed(seed)
    inputs = cn.Input((sizes[0],))
    h = inputs
    for units in sizes[1:-1]:
        h = layers.Dense(units, activation="relu")(h)
    model = cn.Model(inputs, layers.Dense(sizes[-1], activation="softmax")(h))
    model.compile(optimizer=cn.optimizers.Adam(LEARNING_RATE),
                  loss="sparse_categorical_crossentropy")
    return model


def _is_cyneuron(name):
    return name.startswith("cyneuron")


def make_torch(sizes, threads, seed=0):
    """(torch, net, optimizer, loss_fn); net outputs logits."""
    import torch
    from torch import nn

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    mods = []
    for a, b in zip(sizes[:-2], sizes[1:-1]):
        mods += [nn.Linear(a, b), nn.ReLU()]
    net = nn.Sequential(*mods, nn.Linear(sizes[-2], sizes[-1]))
    return torch, net, torch.optim.Adam(net.parameters(), lr=LEARNING_RATE), nn.CrossEntropyLoss()


def make_sklearn(sizes, batch_size, seed=0):
    from sklearn.neural_network import MLPClassifier

    return MLPClassifier(hidden_layer_sizes=sizes[1:-1], activation="relu", solver="adam",
                         learning_rate_init=LEARNING_RATE, batch_size=batch_size, max_iter=1,
                         warm_start=True, alpha=0.0, tol=0.0, shuffle=True, random_state=seed)


def train_epoch_callables(sizes, batch_size, threads, x, y):
    """({name: one epoch over (x, y)}, {name: why it is missing})."""
    fns, missing = {}, {}
    model = make_cyneuron(sizes)
    fns["cyneuron"] = lambda: model.fit(x, y, epochs=1, batch_size=batch_size, shuffle=True,
                                        verbose=0)
    graph = make_cyneuron_functional(sizes)
    fns["cyneuron-functional"] = lambda: graph.fit(x, y, epochs=1, batch_size=batch_size,
                                                   shuffle=True, verbose=0)
    try:
        torch, net, opt, loss_fn = make_torch(sizes, threads)
    except ImportError:
        missing["torch"] = "not installed"
    else:
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)

        def torch_epoch():
            order = torch.randperm(len(xt))
            for start in range(0, len(xt), batch_size):
                idx = order[start:start + batch_size]
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(net(xt[idx]), yt[idx])
                loss.backward()
                opt.step()

        fns["torch"] = torch_epoch
    try:
        clf = make_sklearn(sizes, batch_size)
    except ImportError:
        missing["scikit-learn"] = "not installed"
    else:
        def sklearn_epoch():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")   # ConvergenceWarning after each epoch
                clf.fit(x, y)

        fns["scikit-learn"] = sklearn_epoch
    return fns, missing


def predict_callables(sizes, threads, x):
    """({name: softmax probabilities of x}, {name: why missing})."""
    fns, missing = {}, {}
    model = make_cyneuron(sizes)
    fns["cyneuron"] = lambda: model.predict(x)
    graph = make_cyneuron_functional(sizes)
    fns["cyneuron-functional"] = lambda: graph.predict(x)
    try:
        torch, net, _, _ = make_torch(sizes, threads)
    except ImportError:
        missing["torch"] = "not installed"
    else:
        xt = torch.from_numpy(x)
        net.eval()

        def torch_predict():
            with torch.no_grad():
                return torch.softmax(net(xt), dim=1)

        fns["torch"] = torch_predict
    try:
        clf = make_sklearn(sizes, 128)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clf.fit(*data(256))
    except ImportError:
        missing["scikit-learn"] = "not installed"
    else:
        fns["scikit-learn"] = lambda: clf.predict_proba(x)
    return fns, missing


def summarize(samples, per_call, stat):
    """{name: items per second} from seconds-per-call samples (best or median)."""
    return {name: per_call / _pick(times, stat) for name, times in samples.items()}


def _spreads(samples):
    return {name: spread(times) for name, times in samples.items()}


def bench(out, threads, peak32, repeats=5, stat="median", architectures=None, batch_sizes=None,
          n_samples=N_SAMPLES, print_table=None):
    """Run the training and inference comparisons; returns a list of result dicts."""
    results = []
    x, y = data(n_samples)
    for arch in architectures or ARCHITECTURES:
        sizes = ARCHITECTURES[arch]
        flops = train_flops_per_sample(sizes)
        for b in batch_sizes or BATCH_SIZES:
            fns, missing = train_epoch_callables(sizes, b, threads, x, y)
            mark = len(round_trips)
            samples = time_blocks(fns, repeats=repeats, target_s=0.0)
            rate = summarize(samples, len(x), stat)
            best_peer = max((v for k, v in rate.items() if not _is_cyneuron(k)), default=None)
            row = {"kind": "train", "arch": arch, "batch": b, "rates": rate, "missing": missing,
                   "spreads": _spreads(samples), "round_trip_ns": worst_round_trip(mark),
                   "gflops": rate["cyneuron"] * flops / 1e9,
                   "vs_best_peer": rate["cyneuron"] / best_peer if best_peer else None}
            row["pct_peak"] = 100 * row["gflops"] / peak32 if peak32 else None
            results.append(row)
            out(_train_line(row))
        x1 = x[:1]
        fns, missing = predict_callables(sizes, threads, x1)
        samples = time_blocks(fns, repeats=max(5, repeats), target_s=0.05, settle_s=0.05)
        row = {"kind": "latency", "arch": arch, "rates": summarize(samples, 1, stat),
               "missing": missing, "spreads": _spreads(samples)}
        results.append(row)
        out(_latency_line(row))
        xp = x[:PREDICT_SAMPLES]
        fns, missing = predict_callables(sizes, threads, xp)
        samples = time_blocks(fns, repeats=repeats, target_s=0.05)
        row = {"kind": "predict", "arch": arch, "rates": summarize(samples, len(xp), stat),
               "missing": missing, "spreads": _spreads(samples)}
        results.append(row)
        out(_predict_line(row))
    return results


def _spread_text(row):
    """' [spread 3% / 5% / 21% (!)]' in the order of the rates."""
    cells = [f"{100 * v:.0f}%" + (" (!)" if v > SPREAD_WARN else "")
             for v in row["spreads"].values()]
    return f" [spread {' / '.join(cells)}]"


def _others(rates, unit, fmt):
    return ", ".join(f"{k} {fmt(v)}{unit} ({rates['cyneuron'] / v:.2f}x)"
                     for k, v in rates.items() if k != "cyneuron")


def _train_line(row):
    r = row["rates"]
    peak = f", {row['pct_peak']:.0f}% of peak" if row["pct_peak"] else ""
    return (f"  train {row['arch']} batch {row['batch']:>3}: cyneuron {r['cyneuron']:,.0f} "
            f"samples/s ({row['gflops']:.0f} GFLOP/s{peak}); "
            + _others(r, " samples/s", lambda v: f"{v:,.0f}") + _spread_text(row)
            + round_trip_cell(row["round_trip_ns"]))


def _latency_line(row):
    r = {k: 1e6 / v for k, v in row["rates"].items()}   # microseconds per sample
    others = ", ".join(f"{k} {v:.1f} us (cyneuron takes {r['cyneuron'] / v:.2f} of it)"
                       for k, v in r.items() if k != "cyneuron")
    return (f"  predict 1 sample {row['arch']}: cyneuron {r['cyneuron']:.1f} us; {others}"
            + _spread_text(row))


def _predict_line(row):
    r = row["rates"]
    return (f"  predict {PREDICT_SAMPLES} samples {row['arch']}: cyneuron {r['cyneuron']:,.0f} "
            f"samples/s; " + _others(r, " samples/s", lambda v: f"{v:,.0f}") + _spread_text(row))


# -- the CLI group ----------------------------------------------------------------------------
def bench_mlp(args, out, peak=None):
    """Issue 8's end-to-end comparison, as `python -m cyneuron bench mlp` prints it:
    training epochs with Adam for two MLPs and three batch sizes, one-sample latency and
    batched predict."""
    import cyneuron as cn

    threads = cn.get_num_threads()
    if peak is None:
        peak = matmul_peak(threads, args.peak)
    out(f"\nMLP training: one epoch over {N_SAMPLES:,} samples, Adam, float32, "
        f"{threads} threads, {args.stat} of {_mlp_repeats(args)} epochs; GFLOP/s against the "
        f"{peak.total or 0:.0f} GFLOP/s fp32 peak")
    archs = list(ARCHITECTURES)[:1] if getattr(args, "quick", False) else None
    results = bench(out, threads, peak.gflops("float32"), repeats=_mlp_repeats(args),
                               stat=args.stat, architectures=archs)
    worst = max((v for r in results for v in r["spreads"].values()), default=0.0)
    if worst > SPREAD_WARN:
        out(f"  (!) rounds spread up to {100 * worst:.0f}% (> {100 * SPREAD_WARN:.0f}%): "
            "another process was probably using a core; rerun on an idle machine")
    return results


def _mlp_repeats(args):
    """Whole epochs are long: MIN_ROUNDS interleaved rounds unless --repeats asks for more."""
    return max(MIN_ROUNDS, min(args.repeats, 8))


run = bench_mlp
