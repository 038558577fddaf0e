"""A ResNet-style CNN through the graph engine: one training step (and inference), cyneuron
next to the same network in PyTorch CPU, in the same run.

The network, on 28x28x1 images, batch 64, float32: Conv2D 32 3x3 same + ReLU, then three
residual blocks  x -> relu(x + conv(relu(conv(x))))  (Conv2D 32 3x3 same each, the skip
an Add), GlobalAveragePooling2D, Dense 10 softmax; sparse categorical cross-entropy on
the logits, Adam (lr 1e-3) on both sides. cyneuron runs it as `cn.Model(inputs, outputs)`
(`train_on_batch`); PyTorch as an nn.Module with the same forward, in NCHW (its default)
and in channels_last.
Target (issue 15): cyneuron >= 1.5x PyTorch's training samples/s.
"""
import numpy as np

from .harness import _rate_table

RESNET_INPUT = (28, 28, 1)
RESNET_CHANNELS = 32
RESNET_BLOCKS = 3
RESNET_CLASSES = 10
RESNET_BATCH = 64
RESNET_LR = 1e-3
TORCH_VARIANTS = {"torch": False, "torch-channels-last": True}
IMPLEMENTATIONS = ("cyneuron",) + tuple(TORCH_VARIANTS)


def resnet_data(n=RESNET_BATCH, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n,) + RESNET_INPUT, dtype=np.float32)
    y = rng.integers(0, RESNET_CLASSES, n).astype(np.int64)
    return x, y


def make_cyneuron_resnet(seed=0):
    """The ResNet-style CNN as a functional cn.Model, compiled (Adam, sparse CE)."""
    import cyneuron as cn
    from cyneuron import layers

    cn.set_seed(seed)
    inputs = cn.Input(RESNET_INPUT)
    x = layers.Conv2D(RESNET_CHANNELS, 3, padding="same", activation="relu")(inputs)
    for _ in range(RESNET_BLOCKS):
        y = layers.Conv2D(RESNET_CHANNELS, 3, padding="same", activation="relu")(x)
        y = layers.Conv2D(RESNET_CHANNELS, 3, padding="same")(y)
        x = layers.Activation("relu")(layers.Add()([x, y]))
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(RESNET_CLASSES, activation="softmax")(x)
    model = cn.Model(inputs, outputs, name="resnet")
    model.compile(optimizer=cn.optimizers.Adam(RESNET_LR), loss="sparse_categorical_crossentropy")
    return model


def make_torch_resnet(threads, seed=0, channels_last=False):
    """(torch, net, optimizer, loss_fn): the same network in PyTorch (logits out)."""
    import torch
    from torch import nn

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    c = RESNET_CHANNELS

    class ResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(RESNET_INPUT[2], c, 3, padding=1)
            self.blocks = nn.ModuleList(
                nn.ModuleList([nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)])
                for _ in range(RESNET_BLOCKS))
            self.head = nn.Linear(c, RESNET_CLASSES)

        def forward(self, x):
            x = torch.relu(self.stem(x))
            for conv1, conv2 in self.blocks:
                x = torch.relu(x + conv2(torch.relu(conv1(x))))
            return self.head(x.mean(dim=(2, 3)))

    net = ResNet()
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), lr=RESNET_LR)
    return torch, net, opt, nn.CrossEntropyLoss()


def _torch_images(torch, x, channels_last):
    nchw = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.empty(nchw.shape, dtype=nchw.dtype, memory_format=fmt)
    out.copy_(nchw)
    return out


def train_callables(threads, x, y):
    """({name: one training step on (x, y)}, {name: why missing})."""
    model = make_cyneuron_resnet()
    fns, missing = {"cyneuron": lambda: model.train_on_batch(x, y)}, {}
    for name, channels_last in TORCH_VARIANTS.items():
        try:
            torch, net, opt, loss_fn = make_torch_resnet(threads, channels_last=channels_last)
        except ImportError:
            missing[name] = "not installed"
            continue
        xt, yt = _torch_images(torch, x, channels_last), torch.from_numpy(y)

        def step(net=net, opt=opt, loss_fn=loss_fn, xt=xt, yt=yt):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(xt), yt)
            loss.backward()
            opt.step()
            return loss.item()

        fns[name] = step
    return fns, missing


def predict_callables(threads, x):
    """({name: softmax probabilities of x}, {name: why missing})."""
    model = make_cyneuron_resnet()
    fns, missing = {"cyneuron": lambda: model.predict(x, batch_size=len(x))}, {}
    for name, channels_last in TORCH_VARIANTS.items():
        try:
            torch, net, _, _ = make_torch_resnet(threads, channels_last=channels_last)
        except ImportError:
            missing[name] = "not installed"
            continue
        xt = _torch_images(torch, x, channels_last)
        net.eval()

        def predict(torch=torch, net=net, xt=xt):
            with torch.no_grad():
                return torch.softmax(net(xt), dim=1).numpy()

        fns[name] = predict
    return fns, missing


def bench_resnet(args, out):
    """`python -m cyneuron bench resnet`: training step and inference tables."""
    import cyneuron as cn

    threads = cn.get_num_threads()
    x, y = resnet_data()
    net = (f"Conv{RESNET_CHANNELS} + {RESNET_BLOCKS} residual blocks (2 x Conv{RESNET_CHANNELS} "
           f"3x3 + Add) + GAP + Dense{RESNET_CLASSES}")
    fns, missing = train_callables(threads, x, y)
    train = _rate_table(f"ResNet-style CNN {net}, train step (forward + backward + Adam), "
                        f"batch {RESNET_BATCH}, 28x28x1, float32, {threads} threads", fns,
                        missing, RESNET_BATCH, args, out, "samples/s", IMPLEMENTATIONS)
    fns, missing = predict_callables(threads, x)
    infer = _rate_table(f"ResNet-style CNN inference (softmax probabilities), batch "
                        f"{RESNET_BATCH}, float32, {threads} threads", fns, missing,
                        RESNET_BATCH, args, out, "samples/s", IMPLEMENTATIONS)
    return train, infer


run = bench_resnet
