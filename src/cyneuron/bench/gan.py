"""A DCGAN-style pair stepped as a GAN: cyneuron's `cn.models.GAN.train_step` next to the
same two networks stepped the same way in PyTorch CPU, in the same run.

Generator: z (64) -> Dense 7*7*64 + ReLU -> Reshape (7, 7, 64) -> Conv2DTranspose 32 4x4
stride 2 same + ReLU (14x14) -> Conv2DTranspose 1 4x4 stride 2 same + sigmoid (28x28x1).
Discriminator: Conv2D 32 4x4 stride 2 same + LeakyReLU (14x14) -> Conv2D 64 4x4 stride 2
same + LeakyReLU (7x7) -> Flatten -> Dense 1 (a logit). Batch 64 real images, float32.
One full step: the discriminator on 64 real + 64 generated images (BCE on logits,
backward, Adam), then the generator through the discriminator (non-saturating loss,
backward into the generator, Adam). PyTorch runs NCHW (its default) and channels_last.
Target (issue 17): cyneuron >= 1.5x PyTorch's steps/s.
"""
import numpy as np

LATENT = 64
BATCH = 64
LR = 2e-4
TORCH_VARIANTS = {"torch": False, "torch-channels-last": True}
IMPLEMENTATIONS = ("cyneuron",) + tuple(TORCH_VARIANTS)


def make_cyneuron_gan(seed=0):
    import cyneuron as cn
    from cyneuron import layers

    cn.set_seed(seed)
    generator = cn.Sequential([
        cn.Input((LATENT,)),
        layers.Dense(7 * 7 * 64, activation="relu"),
        layers.Reshape((7, 7, 64)),
        layers.Conv2DTranspose(32, 4, strides=2, padding="same", activation="relu"),
        layers.Conv2DTranspose(1, 4, strides=2, padding="same", activation="sigmoid")],
        name="generator")
    discriminator = cn.Sequential([
        cn.Input((28, 28, 1)),
        layers.Conv2D(32, 4, strides=2, padding="same", activation="leaky_relu"),
        layers.Conv2D(64, 4, strides=2, padding="same", activation="leaky_relu"),
        layers.Flatten(),
        layers.Dense(1)], name="discriminator")
    gan = cn.models.GAN(generator, discriminator, latent_dim=LATENT)
    gan.compile(cn.optimizers.Adam(LR, beta_1=0.5), cn.optimizers.Adam(LR, beta_1=0.5))
    return gan


def make_torch_step(threads, real, seed=0, channels_last=False):
    """One GAN step of the same pair in PyTorch (a closure)."""
    import torch
    from torch import nn

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    generator = nn.Sequential(
        nn.Linear(LATENT, 7 * 7 * 64), nn.ReLU(), nn.Unflatten(1, (64, 7, 7)),
        nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1), nn.ReLU(),
        nn.ConvTranspose2d(32, 1, 4, stride=2, padding=1), nn.Sigmoid())
    discriminator = nn.Sequential(
        nn.Conv2d(1, 32, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
        nn.Conv2d(32, 64, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
        nn.Flatten(), nn.Linear(7 * 7 * 64, 1))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if channels_last:
        generator = generator.to(memory_format=fmt)
        discriminator = discriminator.to(memory_format=fmt)
    g_opt = torch.optim.Adam(generator.parameters(), lr=LR, betas=(0.5, 0.999))
    d_opt = torch.optim.Adam(discriminator.parameters(), lr=LR, betas=(0.5, 0.999))
    bce = nn.BCEWithLogitsLoss()
    nchw = torch.from_numpy(np.ascontiguousarray(real.transpose(0, 3, 1, 2)))
    x = torch.empty(nchw.shape, dtype=nchw.dtype, memory_format=fmt)
    x.copy_(nchw)
    n = len(real)
    targets = torch.cat([torch.ones(n, 1), torch.zeros(n, 1)])
    ones = torch.ones(n, 1)

    def step():
        fake = generator(torch.randn(n, LATENT))
        d_opt.zero_grad(set_to_none=True)
        d_loss = bce(discriminator(torch.cat([x, fake.detach()])), targets)
        d_loss.backward()
        d_opt.step()
        g_opt.zero_grad(set_to_none=True)
        g_loss = bce(discriminator(generator(torch.randn(n, LATENT))), ones)
        g_loss.backward()
        g_opt.step()
        return d_loss.item(), g_loss.item()

    return step


def step_callables(threads, real):
    gan = make_cyneuron_gan()
    fns, missing = {"cyneuron": lambda: gan.train_step(real)}, {}
    for name, channels_last in TORCH_VARIANTS.items():
        try:
            fns[name] = make_torch_step(threads, real, channels_last=channels_last)
        except ImportError:
            missing[name] = "not installed"
    return fns, missing


def bench_gan(args, out):
    """`python -m cyneuron bench gan`: one full GAN step, cyneuron vs PyTorch."""
    import cyneuron as cn

    from .harness import _rate_table

    threads = cn.get_num_threads()
    real = np.random.default_rng(0).random((BATCH, 28, 28, 1), dtype=np.float32)
    fns, missing = step_callables(threads, real)
    return _rate_table(f"DCGAN-style GAN step (D on {BATCH} real + {BATCH} generated, then G "
                       f"through D; Adam both), 28x28x1, float32, {threads} threads", fns,
                       missing, BATCH, args, out, "real samples/s", IMPLEMENTATIONS)


run = bench_gan
