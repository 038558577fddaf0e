"""The decoder layers of issue 15: Conv2DTranspose and UpSampling2D, forward and
forward + backward, cyneuron (NHWC) next to PyTorch CPU in channels_last (its NHWC
layout) in the same group and run, float32, at cn.get_num_threads() threads on both.

Shapes: a batch of 64 feature maps 14x14x32 decoded to 28x28: Conv2DTranspose(16, 3,
strides=2, padding="same") (PyTorch: ConvTranspose2d(32, 16, 3, stride=2, padding=1,
output_padding=1), the same output size and alignment), and UpSampling2D(2) nearest and
bilinear (PyTorch: F.interpolate, align_corners=False).

    python -m pytest benchmarks/bench_upsampling.py --benchmark-only
"""
import numpy as np
import pytest

import cyneuron as cn
from cyneuron import layers
from cyneuron.bench.harness import settle_threads

SHAPE = (64, 14, 14, 32)
CASES = ["conv_transpose", "upsampling_nearest", "upsampling_bilinear"]


def _input():
    return np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)


def _cyneuron(case, backward):
    layer = (layers.Conv2DTranspose(16, 3, strides=2, padding="same")
             if case == "conv_transpose" else
             layers.UpSampling2D(2, interpolation=case.split("_")[1]))
    x = _input()
    g = np.ones_like(layer.forward(x))

    def run():
        y = layer.forward(x, training=backward)
        if backward:
            layer.backward(g)
        return y
    return run


def _torch(case, backward):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(cn.get_num_threads())
    x = torch.tensor(_input()).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(backward)
    if case == "conv_transpose":
        module = torch.nn.ConvTranspose2d(32, 16, 3, stride=2, padding=1, output_padding=1)
        module = module.to(memory_format=torch.channels_last)

        def forward():
            return module(x)
    else:
        mode = case.split("_")[1]
        extra = {} if mode == "nearest" else {"align_corners": False}

        def forward():
            return torch.nn.functional.interpolate(x, scale_factor=2, mode=mode, **extra)
    g = torch.ones_like(forward())

    def run():
        if not backward:
            with torch.no_grad():
                return forward()
        y = forward()
        y.backward(g)
        return y
    return run


@pytest.mark.parametrize("backward", [False, True], ids=["forward", "forward+backward"])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name", ["cyneuron", "torch-channels-last"])
def test_decoder_layer(benchmark, name, case, backward):
    run = _cyneuron(case, backward) if name == "cyneuron" else _torch(case, backward)
    out = run()
    assert tuple(out.shape) in ((64, 28, 28, 16), (64, 16, 28, 28), (64, 28, 28, 32),
                                (64, 32, 28, 28))
    benchmark.group = f"{case} {'forward+backward' if backward else 'forward'} {SHAPE}"
    settle_threads()
    benchmark(run)
