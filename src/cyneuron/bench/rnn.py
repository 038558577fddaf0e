"""`python -m cyneuron bench rnn`: training steps and inference of LSTM(128) and
GRU(128) -> Dense(10) (T = 50, 32 features, batch 32, float32) against PyTorch CPU.
Shared with benchmarks/bench_rnn.py."""
from __future__ import annotations

import numpy as np

from .harness import _limit_blas_threads, _rate_table


RNN_TIMESTEPS = 50
RNN_FEATURES = 32
RNN_UNITS = 128
RNN_CLASSES = 10
RNN_BATCH = 32
RNN_PREDICT_SAMPLES = 256
RNN_THREADS = 2
RNN_LR = 1e-3            # Adam's default
RNN_SGD_LR = 0.01        # the fallback where this build has no Adam
RNN_SGD_MOMENTUM = 0.9
RNN_CELLS = ("lstm", "gru")


def rnn_data(n=RNN_BATCH, seed=0):
    """(x, y): n random sequences (n, T, features) float32 and class labels."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, RNN_TIMESTEPS, RNN_FEATURES)).astype(np.float32)
    y = rng.integers(0, RNN_CLASSES, size=n).astype(np.int64)
    return x, y


def rnn_optimizer():
    """('adam', cyneuron Adam(1e-3)) where this build has Adam, else ('sgd', SGD with
    momentum 0.9): the torch side uses the same kind, so the comparison stays fair."""
    import cyneuron as cn

    try:
        opt = cn.optimizers.get("adam")
    except ValueError:
        return "sgd", cn.optimizers.SGD(RNN_SGD_LR, momentum=RNN_SGD_MOMENTUM)
    if hasattr(opt, "learning_rate"):
        opt.learning_rate = RNN_LR
    return "adam", opt


def rnn_optimizer_label(kind):
    return ("Adam 1e-3" if kind == "adam" else
            f"SGD {RNN_SGD_LR} momentum {RNN_SGD_MOMENTUM} (this build has no Adam)")


def make_cyneuron_rnn(cell, seed=0):
    """(optimizer kind, model): `cell`(128) -> Dense(10, softmax), sparse CE, built."""
    import cyneuron as cn
    from cyneuron import layers

    cn.set_seed(seed)
    rnn = {"lstm": layers.LSTM, "gru": layers.GRU}[cell](RNN_UNITS)
    model = cn.Sequential([rnn, layers.Dense(RNN_CLASSES, activation="softmax")])
    kind, opt = rnn_optimizer()
    model.compile(optimizer=opt, loss="sparse_categorical_crossentropy")
    model.build((RNN_TIMESTEPS, RNN_FEATURES))
    return kind, model


def make_torch_rnn(cell, threads, optimizer_kind, seed=0):
    """(torch, net, optimizer, loss_fn): nn.LSTM / nn.GRU (batch_first) then nn.Linear on
    the last step's output (logits; CrossEntropyLoss)."""
    import torch
    from torch import nn

    torch.set_num_threads(threads)
    torch.manual_seed(seed)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[cell]
            self.rnn = rnn(RNN_FEATURES, RNN_UNITS, batch_first=True)
            self.fc = nn.Linear(RNN_UNITS, RNN_CLASSES)

        def forward(self, x):
            out, _ = self.rnn(x)
            return self.fc(out[:, -1])

    net = Net()
    if optimizer_kind == "adam":
        opt = torch.optim.Adam(net.parameters(), lr=RNN_LR)
    else:
        opt = torch.optim.SGD(net.parameters(), lr=RNN_SGD_LR, momentum=RNN_SGD_MOMENTUM)
    return torch, net, opt, nn.CrossEntropyLoss()


def rnn_train_callables(cell, threads, x, y):
    """({'cyneuron': step, 'torch': step}, {name: reason missing}, optimizer kind)."""
    fns, missing = {}, {}
    kind, model = make_cyneuron_rnn(cell)
    fns["cyneuron"] = lambda: model.train_on_batch(x, y)
    try:
        torch, net, opt, loss_fn = make_torch_rnn(cell, threads, kind)
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
    return fns, missing, kind


def rnn_predict_callables(cell, threads, x):
    """{'cyneuron': fn, 'torch': fn}: softmax probabilities for all of x in one batch."""
    fns, missing = {}, {}
    kind, model = make_cyneuron_rnn(cell)
    fns["cyneuron"] = lambda: model.predict(x, batch_size=len(x))
    try:
        torch, net, _, _ = make_torch_rnn(cell, threads, kind)
    except ImportError:
        missing["torch"] = "not installed"
    else:
        xt = torch.from_numpy(x)
        net.eval()

        def torch_predict():
            with torch.no_grad():
                return torch.softmax(net(xt), dim=1).numpy()

        fns["torch"] = torch_predict
    return fns, missing


def bench_rnn(args, out):
    """Train step and inference of the LSTM and GRU classifiers; {cell: (train, infer)}."""
    import cyneuron as cn

    before = cn.get_num_threads()
    threads = args.threads or RNN_THREADS
    cn.set_num_threads(threads)
    limiter = _limit_blas_threads(threads)
    results = {}
    try:
        for cell in RNN_CELLS:
            x, y = rnn_data()
            fns, missing, kind = rnn_train_callables(cell, threads, x, y)
            shape = (f"T={RNN_TIMESTEPS}, {RNN_FEATURES} features, hidden {RNN_UNITS}, "
                     f"Dense {RNN_CLASSES} softmax on the last step, float32, {threads} threads")
            train = _rate_table(f"{cell.upper()} train step ({shape}), batch {RNN_BATCH}, "
                                f"{rnn_optimizer_label(kind)}", fns, missing, RNN_BATCH, args,
                                out, unit="sequences/s", names=("cyneuron", "torch"))
            xp, _ = rnn_data(RNN_PREDICT_SAMPLES, seed=1)
            fns, missing = rnn_predict_callables(cell, threads, xp)
            infer = _rate_table(f"{cell.upper()} inference (softmax probabilities) on "
                                f"{RNN_PREDICT_SAMPLES} sequences", fns, missing,
                                RNN_PREDICT_SAMPLES, args, out, unit="sequences/s",
                                names=("cyneuron", "torch"))
            results[cell] = (train, infer)
    finally:
        cn.set_num_threads(before)
        if limiter is not None:
            limiter.restore_original_limits()
    return results


run = bench_rnn
