"""`python -m cyneuron bench [matmul|mlp|conv|all]`: cyneuron next to its references, same run.

matmul: cyneuron.ops.matmul against numpy's `@` (OpenBLAS), GFLOP/s per shape, the ratio
        (cyneuron speed / numpy speed) and cyneuron's share of an estimated peak.
mlp:    one training step (forward + backward + SGD with momentum) of a 784-256-128-10
        ReLU/softmax MLP on a batch of 128, in samples/s, against PyTorch CPU and
        scikit-learn where they are installed; and inference on 1024 samples.
conv:   one training step (forward + backward + Adam) of a LeNet-style CNN on 28x28x1
        images, batch 64, float32, in samples/s, against the same network in PyTorch CPU,
        in its default NCHW layout ("torch") and in channels_last ("torch-channels-last",
        NHWC like cyneuron; PyTorch's faster CPU layout for this network); and inference
        (softmax probabilities) on the same batch. Adam comes from
        cn.optimizers.get("adam"); where this build has no Adam yet, all sides use SGD
        with momentum 0.9 instead, and the table says so.

The machine's environment may set OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE, which force numpy's
OpenBLAS onto a slower kernel. OpenBLAS reads them when numpy is first imported, and
cyneuron has imported numpy by the time this runs, so main() re-executes the interpreter
without them before it times anything (--keep-openblas-env keeps them, to measure the
handicapped reference on purpose).

Only numpy and cyneuron are imported here; torch, scikit-learn and threadpoolctl are
imported lazily and are optional. The helpers that build the models are shared with the
pytest-benchmark suite in benchmarks/.
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np

OPENBLAS_HANDICAP_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
_REEXEC_MARKER = "CYNEURON_BENCH_REEXECUTED"

# (label, M, K, N, dtype, trans_a, trans_b)
MATMUL_CASES = [
    ("n=64", 64, 64, 64, "float32", False, False),
    ("n=128", 128, 128, 128, "float32", False, False),
    ("n=256", 256, 256, 256, "float32", False, False),
    ("n=512", 512, 512, 512, "float32", False, False),
    ("n=1024", 1024, 1024, 1024, "float32", False, False),
    ("128x784x256", 128, 784, 256, "float32", False, False),
    ("128x784x256 trans_a", 128, 784, 256, "float32", True, False),
    ("128x784x256 trans_b", 128, 784, 256, "float32", False, True),
    ("n=512 f64", 512, 512, 512, "float64", False, False),
]

MLP_SIZES = (784, 256, 128, 10)
MLP_BATCH = 128
MLP_PREDICT_SAMPLES = 1024
MLP_LR = 0.01
MLP_MOMENTUM = 0.9

# LeNet-style CNN: Conv2D 32 3x3 same + ReLU, MaxPooling 2, Conv2D 64 3x3 same + ReLU,
# MaxPooling 2, Flatten, Dense 128 ReLU, Dense 10 softmax, on 28x28x1 images.
CONV_INPUT = (28, 28, 1)
CONV_CLASSES = 10
CONV_BATCH = 64
CONV_SGD_LR = 0.01      # the SGD fallback (Adam: its default learning rate, both sides)
CONV_MOMENTUM = 0.9


# -- the environment -------------------------------------------------------------------------
def openblas_handicap():
    """{name: value} of the OPENBLAS_* variables set now that slow numpy's reference down."""
    return {k: os.environ[k] for k in OPENBLAS_HANDICAP_VARS if k in os.environ}


def _reexec_without_handicap(argv):
    """Replace this process by the same bench run without OPENBLAS_CORETYPE / _L2_SIZE."""
    import importlib.util

    env = {k: v for k, v in os.environ.items() if k not in OPENBLAS_HANDICAP_VARS}
    env[_REEXEC_MARKER] = ",".join(f"{k}={v}" for k, v in openblas_handicap().items())
    try:
        has_main = importlib.util.find_spec("cyneuron.__main__") is not None
    except (ImportError, ValueError):
        has_main = False
    if has_main:
        args = [sys.executable, "-m", "cyneuron", "bench", *argv]
    else:  # `python -m cyneuron` not wired yet: call this module directly
        args = [sys.executable, "-c",
                "import sys; from cyneuron._bench import main; sys.exit(main(sys.argv[1:]))", *argv]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, args, env)


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def _cpu_mhz():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("cpu MHz"):
                    return float(line.split(":", 1)[1])
    except (OSError, ValueError):
        pass
    return None


def estimated_peak_gflops(dtype, isa, threads, mhz=None):
    """threads x clock x FLOP/cycle (two FMA pipes of the ISA's vector width).

    The clock is /proc/cpuinfo's 'cpu MHz' (often the nominal clock: turbo makes the real
    peak higher). None when the clock is unknown.
    """
    mhz = _cpu_mhz() if mhz is None else mhz
    if not mhz:
        return None
    bits = {"avx512": 512, "avx2": 256}.get(isa, 128)
    lanes = bits // (8 * np.dtype(dtype).itemsize)
    return threads * mhz * 1e-3 * 2 * 2 * lanes


def _blas_info():
    """numpy's BLAS as threadpoolctl sees it (name, kernel, threads), or a placeholder."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "unknown (threadpoolctl not installed)"
    for info in threadpool_info():
        if info.get("user_api") == "blas":
            return (f"{info.get('internal_api')} {info.get('version')}, kernel "
                    f"{info.get('architecture')}, {info.get('num_threads')} threads")
    return "unknown"


def _limit_blas_threads(n):
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    return threadpool_limits(limits=n, user_api="blas")


# -- timing ----------------------------------------------------------------------------------
SETTLE_S = 0.2


def settle_threads(seconds=SETTLE_S):
    """Sleep until the worker threads of the library that ran last have parked.

    OpenBLAS's threads busy-wait for about 2**28 cycles (~0.1 s) after each call, libgomp's
    for a while too; meanwhile they hold the cores that the next library's threads need.
    Measured here (2 cores): cyneuron's 256^3 matmul right after numpy's ran at 1-75 GFLOP/s,
    0.2 s later at ~145; numpy right after cyneuron at ~95, 0.2 s later at ~150.
    """
    time.sleep(seconds)


def _calibrate(fn, target_s):
    """Calls per repeat so that one repeat lasts about target_s (after a warm-up call)."""
    fn()
    t0 = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t0, 1e-7)
    return max(1, int(target_s / once))


def time_blocks(fns, repeats=8, target_s=0.04, passes=2, settle_s=SETTLE_S):
    """Seconds per call of each function in `fns` (a dict): a list of samples each.

    Each function runs in `passes` blocks of timed repeats (`repeats` in all), each block
    after a pause that lets the previous library's spinning threads park (see
    settle_threads) and a warm-up call.
    The passes alternate the order (A B, then B A) so that a drift in the machine's speed
    (another process, the clock) hits them all alike.
    """
    names = list(fns)
    loops = {}
    samples = {name: [] for name in names}
    passes = max(1, min(passes, repeats))
    for p in range(passes):
        per_block = repeats // passes + (1 if p < repeats % passes else 0)
        for name in (names if p % 2 == 0 else names[::-1]):
            fn = fns[name]
            settle_threads(settle_s)
            if name not in loops:
                loops[name] = _calibrate(fn, target_s)
            else:
                fn()
            for _ in range(per_block):
                n, done = loops[name], 0
                t0 = time.perf_counter()
                deadline = t0 + 4 * target_s  # the calibration call may have been lucky
                while done < n:
                    fn()
                    done += 1
                    if time.perf_counter() > deadline:
                        break
                samples[name].append((time.perf_counter() - t0) / done)
    return samples


def _pick(samples, stat):
    return min(samples) if stat == "best" else statistics.median(samples)


# -- matmul ----------------------------------------------------------------------------------
def matmul_operands(m, k, n, dtype, trans_a=False, trans_b=False, seed=0):
    """(a, b, out_cyneuron, out_numpy, a_np, b_np): stored operands for cyneuron (transposed
    in storage when trans_*), the views numpy multiplies, and preallocated outputs."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
    a_np = a.T if trans_a else a
    b_np = b.T if trans_b else b
    return a, b, np.empty((m, n), dtype), np.empty((m, n), dtype), a_np, b_np


def matmul_callables(m, k, n, dtype, trans_a=False, trans_b=False):
    """{'cyneuron': fn, 'numpy': fn}, both writing into a preallocated C-contiguous out."""
    from . import ops

    a, b, out_cn, out_np, a_np, b_np = matmul_operands(m, k, n, dtype, trans_a, trans_b)

    def run_cyneuron():
        return ops.matmul(a, b, trans_a=trans_a, trans_b=trans_b, out=out_cn)

    def run_numpy():
        return np.matmul(a_np, b_np, out=out_np)

    return {"cyneuron": run_cyneuron, "numpy": run_numpy}


def gemm_flops(m, k, n):
    return 2.0 * m * k * n


def bench_matmul(args, out):
    import cyneuron as cn

    threads = cn.get_num_threads()
    isa = cn.get_isa()
    rows = []
    for label, m, k, n, dtype, ta, tb in MATMUL_CASES:
        fns = matmul_callables(m, k, n, dtype, ta, tb)
        got, want = fns["cyneuron"](), fns["numpy"]()
        tol = 1e-3 if dtype == "float32" else 1e-10
        err = float(np.max(np.abs(got - want)) / max(1.0, float(np.max(np.abs(want)))))
        samples = time_blocks(fns, repeats=args.repeats, target_s=args.target)
        flops = gemm_flops(m, k, n)
        g_cn = flops / _pick(samples["cyneuron"], args.stat) / 1e9
        g_np = flops / _pick(samples["numpy"], args.stat) / 1e9
        peak = args.peak * (1 if dtype == "float32" else 0.5) if args.peak else \
            estimated_peak_gflops(dtype, isa, threads)
        rows.append((label, dtype, g_cn, g_np, g_cn / g_np,
                     f"{100 * g_cn / peak:.0f}%" if peak else "?",
                     "ok" if err <= tol else f"ERR {err:.1e}"))
    header = ("shape (MxKxN)", "dtype", "cyneuron GFLOP/s", "numpy GFLOP/s", "ratio",
              "cn % peak", "check")
    table = [header] + [(r[0], r[1], f"{r[2]:.1f}", f"{r[3]:.1f}", f"{r[4]:.2f}x", r[5], r[6])
                        for r in rows]
    out(f"\nmatmul: cyneuron.ops.matmul vs numpy matmul (out= preallocated), "
        f"{args.stat} of {args.repeats} repeats; ratio = cyneuron speed / numpy speed")
    _print_table(table, out)
    return rows


# -- the MLP ---------------------------------------------------------------------------------
def mlp_data(n=MLP_BATCH, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, MLP_SIZES[0])).astype(np.float32)
    y = rng.integers(0, MLP_SIZES[-1], size=n).astype(np.int64)
    return x, y


def make_cyneuron_mlp(seed=0):
    """The 784-256-128-10 ReLU/softmax MLP, compiled (SGD 0.01, momentum 0.9, sparse CE), built."""
    import cyneuron as cn
    from cyneuron import layers

    cn.set_seed(seed)
    model = cn.Sequential([layers.Dense(MLP_SIZES[1], activation="relu"),
                           layers.Dense(MLP_SIZES[2], activation="relu"),
                           layers.Dense(MLP_SIZES[3], activation="softmax")])
    model.compile(optimizer=cn.optimizers.SGD(MLP_LR, momentum=MLP_MOMENTUM),
                  loss="sparse_categorical_crossentropy")
    model.build((MLP_SIZES[0],))
    return model


def make_torch_mlp(threads, seed=0):
    """(torch, net, optimizer, loss_fn) for the same MLP (logits out; CrossEntropyLoss)."""
    import torch
    from torch import nn

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(MLP_SIZES[0], MLP_SIZES[1]), nn.ReLU(),
                        nn.Linear(MLP_SIZES[1], MLP_SIZES[2]), nn.ReLU(),
                        nn.Linear(MLP_SIZES[2], MLP_SIZES[3]))
    opt = torch.optim.SGD(net.parameters(), lr=MLP_LR, momentum=MLP_MOMENTUM)
    return torch, net, opt, nn.CrossEntropyLoss()


def make_sklearn_mlp(x, y, seed=0):
    """A scikit-learn MLPClassifier (SGD, momentum 0.9, batch 128) after one partial_fit."""
    import warnings

    from sklearn.neural_network import MLPClassifier

    clf = MLPClassifier(hidden_layer_sizes=MLP_SIZES[1:3], activation="relu", solver="sgd",
                        learning_rate_init=MLP_LR, momentum=MLP_MOMENTUM, nesterovs_momentum=False,
                        batch_size=MLP_BATCH, max_iter=1, alpha=0.0, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf.partial_fit(x, y, classes=np.arange(MLP_SIZES[-1]))
    return clf


def mlp_train_callables(threads, x, y):
    """{'cyneuron': step, 'torch': step, 'scikit-learn': step}, for those installed, and
    {name: reason} for those not."""
    fns, missing = {}, {}
    model = make_cyneuron_mlp()
    fns["cyneuron"] = lambda: model.train_on_batch(x, y)
    try:
        torch, net, opt, loss_fn = make_torch_mlp(threads)
    except ImportError:
        missing["torch"] = "not installed"
    else:
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)

        def torch_step():
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(xt), yt)
            loss.backward()
            opt.step()
            return loss

        fns["torch"] = torch_step
    try:
        clf = make_sklearn_mlp(x, y)
    except ImportError:
        missing["scikit-learn"] = "not installed"
    else:
        fns["scikit-learn"] = lambda: clf.partial_fit(x, y)
    return fns, missing


def mlp_predict_callables(threads, x):
    fns, missing = {}, {}
    model = make_cyneuron_mlp()
    fns["cyneuron"] = lambda: model.predict(x)
    try:
        torch, net, _, _ = make_torch_mlp(threads)
    except ImportError:
        missing["torch"] = "not installed"
    else:
        xt = torch.from_numpy(x)
        net.eval()

        def torch_predict():
            with torch.no_grad():
                return torch.softmax(net(xt), dim=1).numpy()

        fns["torch"] = torch_predict
    try:
        clf = make_sklearn_mlp(*mlp_data())
    except ImportError:
        missing["scikit-learn"] = "not installed"
    else:
        fns["scikit-learn"] = lambda: clf.predict_proba(x)
    return fns, missing


def _mlp_table(title, fns, missing, samples_per_call, args, out,
               names=("cyneuron", "torch", "scikit-learn")):
    samples = time_blocks(fns, repeats=args.repeats, target_s=args.target)
    rate = {name: samples_per_call / _pick(s, args.stat) for name, s in samples.items()}
    table = [("implementation", "samples/s", "ms/call", "cyneuron / it")]
    for name in names:
        if name in rate:
            table.append((name, f"{rate[name]:,.0f}", f"{1e3 * samples_per_call / rate[name]:.3f}",
                          "-" if name == "cyneuron" else f"{rate['cyneuron'] / rate[name]:.2f}x"))
        elif name in missing:
            table.append((name, missing[name], "", ""))
    out(f"\n{title}; {args.stat} of {args.repeats} repeats")
    _print_table(table, out)
    return rate


def bench_mlp(args, out):
    import warnings

    import cyneuron as cn

    threads = cn.get_num_threads()
    x, y = mlp_data()
    fns, missing = mlp_train_callables(threads, x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn's ConvergenceWarning on every partial_fit
        train = _mlp_table(f"MLP {'-'.join(map(str, MLP_SIZES))} train step (forward + backward + "
                           f"SGD momentum {MLP_MOMENTUM}), batch {MLP_BATCH}, float32",
                           fns, missing, MLP_BATCH, args, out)
        xp, _ = mlp_data(MLP_PREDICT_SAMPLES, seed=1)
        fns, missing = mlp_predict_callables(threads, xp)
        infer = _mlp_table(f"MLP inference (softmax probabilities) on {MLP_PREDICT_SAMPLES} "
                           "samples, float32", fns, missing, MLP_PREDICT_SAMPLES, args, out)
    return train, infer


# -- the CNN ---------------------------------------------------------------------------------
def conv_data(n=CONV_BATCH, seed=0):
    """x (n, 28, 28, 1) float32 in NHWC, and integer labels."""
    rng = np.random.default_rng(seed)
    x = rng.random((n,) + CONV_INPUT, dtype=np.float32)
    y = rng.integers(0, CONV_CLASSES, size=n).astype(np.int64)
    return x, y


def conv_optimizer_name():
    """'adam' when this build has Adam, else 'sgd' (momentum 0.9): both sides use it."""
    from . import optimizers

    return "adam" if "adam" in optimizers.names() else "sgd"


def _cyneuron_conv_optimizer():
    import cyneuron as cn

    if conv_optimizer_name() == "adam":
        return cn.optimizers.get("adam")   # Keras defaults; torch gets the same rate
    return cn.optimizers.SGD(CONV_SGD_LR, momentum=CONV_MOMENTUM)


def make_cyneuron_cnn(seed=0):
    """The LeNet-style CNN, compiled (Adam 1e-3, or the SGD fallback; sparse CE), built."""
    import cyneuron as cn
    from cyneuron import layers

    cn.set_seed(seed)
    model = cn.Sequential([
        layers.Conv2D(32, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(2),
        layers.Conv2D(64, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(2),
        layers.Flatten(),
        layers.Dense(128, activation="relu"),
        layers.Dense(CONV_CLASSES, activation="softmax"),
    ])
    model.compile(optimizer=_cyneuron_conv_optimizer(), loss="sparse_categorical_crossentropy")
    model.build(CONV_INPUT)
    return model


CONV_TORCH_VARIANTS = {"torch": False, "torch-channels-last": True}


def make_torch_cnn(threads, seed=0, channels_last=False):
    """(torch, net, optimizer, loss_fn): the same CNN in PyTorch (logits out,
    CrossEntropyLoss) with the same optimizer; its weights in NCHW (the default) or in
    channels_last memory format."""
    import torch
    from torch import nn

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    h, w, c = CONV_INPUT
    net = nn.Sequential(
        nn.Conv2d(c, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * (h // 4) * (w // 4), 128), nn.ReLU(),
        nn.Linear(128, CONV_CLASSES))
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    if conv_optimizer_name() == "adam":
        opt = torch.optim.Adam(net.parameters(), lr=_cyneuron_conv_optimizer().learning_rate)
    else:
        opt = torch.optim.SGD(net.parameters(), lr=CONV_SGD_LR, momentum=CONV_MOMENTUM)
    return torch, net, opt, nn.CrossEntropyLoss()


def _torch_images(torch, x, channels_last=False):
    """NHWC numpy -> an NCHW tensor in the default (or channels_last) memory format,
    converted once, outside the timed calls. (torch.from_numpy of the transposed array
    is not enough: with one channel its strides also pass for channels_last.)"""
    nchw = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.empty(nchw.shape, dtype=nchw.dtype, memory_format=fmt)
    out.copy_(nchw)
    return out


def _torch_train_step(threads, x, y, channels_last):
    torch, net, opt, loss_fn = make_torch_cnn(threads, channels_last=channels_last)
    xt, yt = _torch_images(torch, x, channels_last), torch.from_numpy(y)

    def torch_step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(xt), yt)
        loss.backward()
        opt.step()
        return loss

    return torch_step


def _torch_predict(threads, x, channels_last):
    torch, net, _, _ = make_torch_cnn(threads, channels_last=channels_last)
    xt = _torch_images(torch, x, channels_last)
    net.eval()

    def torch_predict():
        with torch.no_grad():
            return torch.softmax(net(xt), dim=1).numpy()

    return torch_predict


def _conv_callables(cyneuron_fn, torch_factory):
    fns, missing = {"cyneuron": cyneuron_fn}, {}
    for name, channels_last in CONV_TORCH_VARIANTS.items():
        try:
            fns[name] = torch_factory(channels_last)
        except ImportError:
            missing[name] = "not installed"
    return fns, missing


def conv_train_callables(threads, x, y):
    """{'cyneuron': step, 'torch': step, 'torch-channels-last': step} (torch when installed)
    and {name: reason} for those missing."""
    model = make_cyneuron_cnn()
    return _conv_callables(lambda: model.train_on_batch(x, y),
                           lambda cl: _torch_train_step(threads, x, y, cl))


def conv_predict_callables(threads, x):
    """Softmax probabilities for the batch x, the same three implementations."""
    model = make_cyneuron_cnn()
    return _conv_callables(lambda: model.predict(x, batch_size=len(x)),
                           lambda cl: _torch_predict(threads, x, cl))


def bench_conv(args, out):
    import cyneuron as cn

    threads = cn.get_num_threads()
    x, y = conv_data()
    opt = conv_optimizer_name()
    opt_label = f"Adam lr {_cyneuron_conv_optimizer().learning_rate:g}" if opt == "adam" else \
        f"SGD lr {CONV_SGD_LR} momentum {CONV_MOMENTUM} (FALLBACK: this build has no Adam)"
    fns, missing = conv_train_callables(threads, x, y)
    net = "Conv32-Pool-Conv64-Pool-Dense128-Dense10"
    names = ("cyneuron",) + tuple(CONV_TORCH_VARIANTS)
    train = _mlp_table(f"CNN {net} train step (forward + backward + {opt_label}), batch "
                       f"{CONV_BATCH}, 28x28x1, float32", fns, missing, CONV_BATCH, args, out,
                       names)
    fns, missing = conv_predict_callables(threads, x)
    infer = _mlp_table(f"CNN inference (softmax probabilities), batch {CONV_BATCH}, float32",
                       fns, missing, CONV_BATCH, args, out, names)
    return train, infer


# -- output ----------------------------------------------------------------------------------
def _print_table(rows, out):
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for j, row in enumerate(rows):
        cells = [str(c).ljust(w) if i == 0 else str(c).rjust(w)
                 for i, (c, w) in enumerate(zip(row, widths))]
        out("  " + "  ".join(cells))
        if j == 0:
            out("  " + "  ".join("-" * w for w in widths))


def _header(args, out):
    import cyneuron as cn

    threads = cn.get_num_threads()
    isa = cn.get_isa()
    out(f"cyneuron {cn.__version__} bench")
    out(f"  CPU:        {_cpu_model()} ({os.cpu_count()} logical CPUs"
        + (f", {_cpu_mhz():.0f} MHz nominal)" if _cpu_mhz() else ")"))
    out(f"  SIMD path:  {isa}    threads: {threads}")
    out(f"  numpy:      {np.__version__}, BLAS {_blas_info()}")
    handicap = openblas_handicap()
    if handicap:
        out(f"  WARNING: {', '.join(f'{k}={v}' for k, v in handicap.items())} is set "
            "(--keep-openblas-env): numpy's reference runs a handicapped kernel")
    elif os.environ.get(_REEXEC_MARKER):
        out(f"  note:       re-executed without {os.environ[_REEXEC_MARKER]} so that numpy "
            "uses its best kernel")
    peak32 = args.peak or estimated_peak_gflops("float32", isa, threads)
    if args.peak:
        out(f"  fp32 peak:  {peak32:.0f} GFLOP/s (given by --peak; fp64: half)")
    elif peak32:
        out(f"  fp32 peak:  {peak32:.0f} GFLOP/s nominal = {threads} threads x {_cpu_mhz():.0f} MHz "
            f"x {peak32 / threads / _cpu_mhz() * 1e3:.0f} FLOP/cycle ({isa}, 2 FMA pipes); turbo "
            "clocks exceed it (>100%): --peak GFLOPS sets a known figure")


def main(argv=None):
    """Entry point of `python -m cyneuron bench`; argv is what follows 'bench'."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="python -m cyneuron bench",
        description="Time cyneuron against numpy, PyTorch CPU and scikit-learn, in one run.")
    parser.add_argument("what", nargs="?", default="all", choices=("matmul", "mlp", "conv", "all"))
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for cyneuron, torch and (with threadpoolctl) numpy's BLAS")
    parser.add_argument("--repeats", type=int, default=8,
                        help="timed repeats of each function (default 8, in two blocks)")
    parser.add_argument("--target", type=float, default=0.04,
                        help="seconds per repeat (default 0.04)")
    parser.add_argument("--stat", choices=("best", "median"), default="best",
                        help="summary of the repeats (default best)")
    parser.add_argument("--peak", type=float, default=None,
                        help="fp32 peak GFLOP/s of this machine, for the %% of peak column")
    parser.add_argument("--keep-openblas-env", action="store_true",
                        help="do not re-execute without OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.target <= 0:
        parser.error("--repeats must be >= 1 and --target > 0")

    if openblas_handicap() and not args.keep_openblas_env and not os.environ.get(_REEXEC_MARKER):
        _reexec_without_handicap(argv)  # does not return

    import cyneuron as cn

    limiter = None
    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be >= 1")
        cn.set_num_threads(args.threads)
        limiter = _limit_blas_threads(args.threads)

    def out(line=""):
        print(line, flush=True)

    t0 = time.perf_counter()
    _header(args, out)
    if args.threads is not None and limiter is None:
        out("  note:       threadpoolctl is not installed: numpy's BLAS threads are not limited")
    if args.what in ("matmul", "all"):
        bench_matmul(args, out)
    if args.what in ("mlp", "all"):
        bench_mlp(args, out)
    if args.what in ("conv", "all"):
        bench_conv(args, out)
    out(f"\n({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
