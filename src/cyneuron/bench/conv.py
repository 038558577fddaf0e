"""`python -m cyneuron bench conv`: one training step and inference of a LeNet-style CNN
(28x28x1, batch 64, float32) against the same network in PyTorch CPU, NCHW and
channels_last. Shared with benchmarks/bench_conv.py."""
from __future__ import annotations

import numpy as np

from .harness import _rate_table


# LeNet-style CNN: Conv2D 32 3x3 same + ReLU, MaxPooling 2, Conv2D 64 3x3 same + ReLU,
# MaxPooling 2, Flatten, Dense 128 ReLU, Dense 10 softmax, on 28x28x1 images.
CONV_INPUT = (28, 28, 1)
CONV_CLASSES = 10
CONV_BATCH = 64
CONV_SGD_LR = 0.01      # the SGD fallback (Adam: its default learning rate, both sides)
CONV_MOMENTUM = 0.9


def conv_data(n=CONV_BATCH, seed=0):
    """x (n, 28, 28, 1) float32 in NHWC, and integer labels."""
    rng = np.random.default_rng(seed)
    x = rng.random((n,) + CONV_INPUT, dtype=np.float32)
    y = rng.integers(0, CONV_CLASSES, size=n).astype(np.int64)
    return x, y


def conv_optimizer_name():
    """'adam' when this build has Adam, else 'sgd' (momentum 0.9): both sides use it."""
    from .. import optimizers

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
    train = _rate_table(f"CNN {net} train step (forward + backward + {opt_label}), batch "
                        f"{CONV_BATCH}, 28x28x1, float32", fns, missing, CONV_BATCH, args, out,
                        "samples/s", names)
    fns, missing = conv_predict_callables(threads, x)
    infer = _rate_table(f"CNN inference (softmax probabilities), batch {CONV_BATCH}, float32",
                        fns, missing, CONV_BATCH, args, out, "samples/s", names)
    return train, infer


run = bench_conv
