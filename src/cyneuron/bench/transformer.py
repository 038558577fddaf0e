"""`python -m cyneuron bench transformer`: the fused attention op and a Transformer encoder
classifier, cyneuron next to PyTorch CPU in the same run.

(a) The attention op, float32, batch 8, 8 heads, head_dim 64, T = 128, 512, 2048:
    cn.ops.scaled_dot_product_attention (forward) and forward + backward
    (scaled_dot_product_attention_grad) against torch.nn.functional.
    scaled_dot_product_attention (forward under no_grad; forward + backward with
    requires_grad inputs). GFLOP/s count 4·B·H·T²·d per forward (two products) and 3.5x
    that for forward + backward (7 products: 2 forward, 5 backward, FlashAttention-2's
    count with its recomputation of Q·Kᵀ), for both sides alike.
    Peak memory at T = 512, 1024, 2048: the peak resident set size of a fresh process
    running the op once (Linux: the peak is reset after the inputs are allocated), minus
    its size just before, for cyneuron, PyTorch's default CPU kernel (itself a flash
    kernel, O(T)) and PyTorch's math path (torch.nn.attention.sdpa_kernel(
    SDPBackend.MATH): softmax(Q·Kᵀ)·V with the T × T matrix materialised, the O(T²)
    reference the fused kernel is meant to avoid); the table gives each one's growth
    from T = 1024 to 2048 (2x for O(T), 4x for O(T²)).
(b) A 2-layer encoder classifier: TransformerEncoder(4 heads, ff 512, relu, post-norm,
    dropout 0) x 2 on d_model 128, T 64, mean over time, Dense 10; batch 32, Adam 1e-3,
    sparse categorical cross-entropy. PyTorch: nn.TransformerEncoder of two
    nn.TransformerEncoderLayer(128, 4, 512, dropout=0, batch_first=True) + mean +
    nn.Linear, torch.optim.Adam. Training steps and inference on 256 sequences.
"""
import json
import os
import subprocess
import sys

import numpy as np

from .harness import _pick, _print_table, measure_fma_peak, spread_cell, spread_note, time_blocks

ATT_BATCH, ATT_HEADS, ATT_DIM = 8, 8, 64
MEMORY_LENGTHS = (512, 1024, 2048)
MEMORY_IMPLEMENTATIONS = ("cyneuron", "torch", "torch-math")
ATT_LENGTHS = (128, 512, 2048)
MEMORY_LENGTH = 2048
ENC_D, ENC_HEADS, ENC_FF, ENC_T, ENC_LAYERS = 128, 4, 512, 64, 2
ENC_BATCH, ENC_CLASSES, ENC_PREDICT = 32, 10, 256
IMPLEMENTATIONS = ("cyneuron", "torch")


def attention_data(T, seed=0, batch=ATT_BATCH, heads=ATT_HEADS, dim=ATT_DIM):
    rng = np.random.default_rng(seed)
    q, k, v, g = (rng.standard_normal((batch, heads, T, dim), dtype=np.float32)
                  for _ in range(4))
    return q, k, v, g


def attention_flops(T, backward=False, batch=ATT_BATCH, heads=ATT_HEADS, dim=ATT_DIM):
    fwd = 4.0 * batch * heads * T * T * dim
    return fwd * 3.5 if backward else fwd


def attention_callables(T, backward, threads, math_path=False):
    """({'cyneuron': fn, 'torch': fn}, {name: why missing}); with math_path, 'torch-math'
    too: PyTorch's math (materialising) backend, for the memory table."""
    import cyneuron as cn

    q, k, v, g = attention_data(T)
    sdpa, grad = cn.ops.scaled_dot_product_attention, cn.ops.scaled_dot_product_attention_grad
    fns, missing = {}, {}
    if backward:
        def run_cyneuron():
            out, lse = sdpa(q, k, v, return_lse=True)
            return grad(g, q, k, v, out, lse)
    else:
        def run_cyneuron():
            return sdpa(q, k, v)
    fns["cyneuron"] = run_cyneuron
    try:
        import torch
    except ImportError:
        missing["torch"] = "not installed"
        return fns, missing
    torch.set_num_threads(threads)
    F = torch.nn.functional
    if backward:
        tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
        tg = torch.from_numpy(g)

        def run_torch():
            tq.grad = tk.grad = tv.grad = None
            F.scaled_dot_product_attention(tq, tk, tv).backward(tg)
    else:
        tq, tk, tv = (torch.from_numpy(a) for a in (q, k, v))

        def run_torch():
            with torch.no_grad():
                return F.scaled_dot_product_attention(tq, tk, tv)
    fns["torch"] = run_torch
    if math_path:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        def run_torch_math():
            with sdpa_kernel(SDPBackend.MATH):
                return run_torch()
        fns["torch-math"] = run_torch_math
    return fns, missing


_MEMORY_CHILD = r"""
import json, sys
impl, T, backward, threads = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", int(sys.argv[4])
from cyneuron.bench.transformer import attention_callables
fns, missing = attention_callables(T, backward, threads, math_path=True)
if impl not in fns:
    print(json.dumps(None)); sys.exit(0)
def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
with open("/proc/self/clear_refs", "w") as f:   # reset the peak (VmHWM) to the current RSS
    f.write("5")
before = status("VmRSS")
fns[impl]()
print(json.dumps({"before_kib": before, "peak_kib": status("VmHWM")}))
"""


def attention_peak_memory(impl, T=MEMORY_LENGTH, backward=False, threads=1):
    """MiB that one call of the op adds to the peak resident set of a fresh process: the
    inputs are allocated, the peak is reset (/proc/self/clear_refs), the op runs once and
    the new peak (VmHWM) minus the size before is reported. None where unavailable."""
    if not sys.platform.startswith("linux"):
        return None
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(threads)
    try:
        res = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, impl, str(T),
                              "1" if backward else "0", str(threads)], capture_output=True,
                             text=True, env=env, timeout=600, check=True)
        data = json.loads(res.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError, OSError):
        return None
    if data is None:
        return None
    return max(0, data["peak_kib"] - data["before_kib"]) / 1024.0


def memory_table(threads, lengths=MEMORY_LENGTHS):
    """Rows of the attention op's peak memory (MiB) at each T, forward and forward +
    backward, per implementation, with the growth from the second-longest T to the
    longest (about 2x for O(T) memory, 4x for O(T²))."""
    head = ["implementation"]
    for backward in (False, True):
        head += [f"{'fwd+bwd' if backward else 'fwd'} T={T}" for T in lengths]
        head.append(f"{'fwd+bwd' if backward else 'fwd'} growth")
    rows = [tuple(head)]
    for name in MEMORY_IMPLEMENTATIONS:
        row = [name]
        for backward in (False, True):
            mib = [attention_peak_memory(name, T, backward, threads) for T in lengths]
            row += ["-" if m is None else f"{m:.1f}" for m in mib]
            row.append(f"{mib[-1] / mib[-2]:.1f}x" if None not in mib[-2:] and mib[-2] > 0
                       else "-")
        rows.append(tuple(row))
    return rows


# -- the encoder classifier ------------------------------------------------------------------
def encoder_data(n=ENC_BATCH, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, ENC_T, ENC_D), dtype=np.float32)
    y = rng.integers(0, ENC_CLASSES, n).astype(np.int64)
    return x, y


def encoder_flops(n, train):
    """Multiply-add flops of the encoder stack (x2 per multiply-add); training ~3x."""
    per_token = 2 * (4 * ENC_D * ENC_D + 2 * ENC_D * ENC_FF + 2 * ENC_T * ENC_D)
    f = n * ENC_T * per_token * ENC_LAYERS + 2 * n * ENC_D * ENC_CLASSES
    return 3 * f if train else f


def make_cyneuron_encoder(seed=0):
    import cyneuron as cn
    from cyneuron import layers

    cn.set_seed(seed)
    inputs = cn.Input((ENC_T, ENC_D))
    h = inputs
    for _ in range(ENC_LAYERS):
        h = layers.TransformerEncoder(ENC_HEADS, ENC_FF, dropout=0.0, activation="relu")(h)
    out = layers.Dense(ENC_CLASSES)(layers.GlobalAveragePooling1D()(h))
    model = cn.Model(inputs, out)
    model.compile(optimizer=cn.optimizers.Adam(1e-3),
                  loss=cn.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def make_torch_encoder(threads, seed=0):
    import torch

    torch.manual_seed(seed)
    torch.set_num_threads(threads)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            layer = torch.nn.TransformerEncoderLayer(ENC_D, ENC_HEADS, ENC_FF, dropout=0.0,
                                                     batch_first=True)
            self.encoder = torch.nn.TransformerEncoder(layer, ENC_LAYERS,
                                                       enable_nested_tensor=False)
            self.head = torch.nn.Linear(ENC_D, ENC_CLASSES)

        def forward(self, x):
            return self.head(self.encoder(x).mean(dim=1))

    net = Net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    return torch, net, opt


def encoder_train_callables(threads, x, y):
    fns, missing = {}, {}
    model = make_cyneuron_encoder()
    model.train_on_batch(x, y)
    fns["cyneuron"] = lambda: model.train_on_batch(x, y)
    try:
        torch, net, opt = make_torch_encoder(threads)
    except ImportError:
        missing["torch"] = "not installed"
        return fns, missing
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    loss_fn = torch.nn.CrossEntropyLoss()

    def torch_step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(xt), yt)
        loss.backward()
        opt.step()
        return loss

    fns["torch"] = torch_step
    return fns, missing


def encoder_predict_callables(threads, x):
    fns, missing = {}, {}
    model = make_cyneuron_encoder()
    fns["cyneuron"] = lambda: model.predict(x, batch_size=len(x))
    try:
        torch, net, _ = make_torch_encoder(threads)
    except ImportError:
        missing["torch"] = "not installed"
        return fns, missing
    xt = torch.from_numpy(x)
    net.eval()

    def torch_predict():
        with torch.no_grad():
            return net(xt).numpy()

    fns["torch"] = torch_predict
    return fns, missing


def _gflops_table(title, fns, missing, flops, args, out, peak):
    samples = time_blocks(fns, repeats=args.repeats, target_s=args.target)
    secs = {name: _pick(s, args.stat) for name, s in samples.items()}
    rows = [("implementation", "ms/call", "GFLOP/s", "% of peak", "cyneuron speed-up",
             "spread")]
    for name in IMPLEMENTATIONS:
        if name in secs:
            g = flops / secs[name] / 1e9
            rows.append((name, f"{1e3 * secs[name]:.2f}", f"{g:.1f}",
                         f"{100 * g / peak:.0f}%" if peak else "-",
                         "-" if name == "cyneuron" else f"{secs[name] / secs['cyneuron']:.2f}x",
                         spread_cell(samples[name])))
        elif name in missing:
            rows.append((name, missing[name], "", "", "", ""))
    out(f"\n{title}; {args.stat} of {args.repeats} interleaved rounds")
    _print_table(rows, out)
    spread_note(samples.values(), out)
    return secs


def bench_transformer(args, out):
    """Tables for the attention op, its peak memory, and the encoder classifier."""
    import cyneuron as cn

    threads = cn.get_num_threads()
    # best of three after the threads settle, as the other benches measure it: one short
    # measurement disturbed by another process once read 275 where 470 was the peak
    peak = args.peak or measure_fma_peak(threads)
    out(f"  float32 FMA peak on {threads} threads ({'--peak' if args.peak else 'measured'}): "
        + (f"{peak:.0f} GFLOP/s" if peak else "unknown"))
    results = {}
    for T in ATT_LENGTHS:
        for backward in (False, True):
            fns, missing = attention_callables(T, backward, threads)
            what = "forward + backward" if backward else "forward"
            results[(T, backward)] = _gflops_table(
                f"Attention op {what}, B={ATT_BATCH} H={ATT_HEADS} d={ATT_DIM} T={T}, float32, "
                f"{threads} threads (cyneuron: cn.ops.scaled_dot_product_attention; torch: "
                f"F.scaled_dot_product_attention)", fns, missing,
                attention_flops(T, backward), args, out, peak)
    out(f"\nAttention op peak memory, MiB (peak RSS of a fresh process minus its size with "
        f"the inputs allocated; the output alone is "
        f"{ATT_BATCH * ATT_HEADS * MEMORY_LENGTH * ATT_DIM * 4 / 2**20:.0f} MiB at "
        f"T={MEMORY_LENGTH}; torch-math: PyTorch's materialising math backend; growth: "
        f"T={MEMORY_LENGTHS[-2]} to {MEMORY_LENGTHS[-1]}, 2x for O(T), 4x for O(T^2))")
    _print_table(memory_table(threads), out)
    x, y = encoder_data()
    net = (f"{ENC_LAYERS} x TransformerEncoder(d_model {ENC_D}, {ENC_HEADS} heads, ff {ENC_FF}) "
           f"+ mean + Dense {ENC_CLASSES}, T={ENC_T}")
    fns, missing = encoder_train_callables(threads, x, y)
    results["train"] = _gflops_table(f"Encoder classifier train step ({net}), batch "
                                     f"{ENC_BATCH}, Adam, float32, {threads} threads", fns,
                                     missing, encoder_flops(ENC_BATCH, True), args, out, peak)
    xp, _ = encoder_data(ENC_PREDICT, seed=1)
    fns, missing = encoder_predict_callables(threads, xp)
    results["infer"] = _gflops_table(f"Encoder classifier inference on {ENC_PREDICT} "
                                     f"sequences ({net}), float32, {threads} threads", fns,
                                     missing, encoder_flops(ENC_PREDICT, False), args, out,
                                     peak)
    return results


run = bench_transformer
