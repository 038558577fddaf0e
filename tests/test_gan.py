"""cn.models.GAN and ConditionalGAN: construction checks, the step as a user's own loop
would write it, NaN handling, a user-written variant, and learning tests (a ring of 8
Gaussians; class-conditional digits judged by a classifier trained on the real ones)."""
import warnings

import numpy as np
import pytest

import cyneuron as cn
from cyneuron import layers


def _mlp(inputs, widths, out, activation="leaky_relu", out_activation=None, name=None):
    ins = [cn.Input((d,)) for d in inputs]
    h = ins[0] if len(ins) == 1 else layers.Concatenate()(ins)
    for w in widths:
        h = layers.Dense(w, activation=activation)(h)
    return cn.Model(ins[0] if len(ins) == 1 else ins,
                    layers.Dense(out, activation=out_activation)(h), name=name)


def test_construction_errors_are_clear():
    g = _mlp([4], [8], 3)
    d = _mlp([3], [8], 1)
    with pytest.raises(ValueError, match=r"latent_dim=5 needs \[\(None, 5\)\]"):
        cn.models.GAN(g, d, latent_dim=5)
    with pytest.raises(ValueError, match=r"generator's output shape \(None, 3\) does not match"):
        cn.models.GAN(g, _mlp([2], [8], 1), latent_dim=4)
    with pytest.raises(ValueError, match="one value per sample"):
        cn.models.GAN(g, _mlp([3], [8], 2), latent_dim=4)
    with pytest.raises(ValueError, match="latent_dim must be a positive int"):
        cn.models.GAN(g, d, latent_dim=0)
    with pytest.raises(TypeError, match="generator must be a cyneuron model"):
        cn.models.GAN(layers.Dense(3), d, latent_dim=4)
    gan = cn.models.GAN(g, d, latent_dim=4)
    opt = cn.optimizers.Adam()
    with pytest.raises(ValueError, match="two optimizer instances"):
        gan.compile(opt, opt)
    with pytest.raises(ValueError, match="label_smoothing"):
        gan.compile(label_smoothing=1.0)
    with pytest.raises(RuntimeError, match="compile the GAN first"):
        gan.fit(np.zeros((4, 3), np.float32))
    gan.compile()
    with pytest.raises(ValueError, match=r"per-sample shape \(2,\)"):
        gan.fit(np.zeros((4, 2), np.float32))
    with pytest.raises(ValueError, match="takes no labels"):
        gan.fit(np.zeros((4, 3), np.float32), np.zeros(4))
    cg = _mlp([4, 3], [8], 5)
    with pytest.raises(ValueError, match="discriminator's inputs"):
        cn.models.ConditionalGAN(cg, _mlp([5, 2], [8], 1), latent_dim=4, num_classes=3)
    cgan = cn.models.ConditionalGAN(cg, _mlp([5, 3], [8], 1), latent_dim=4, num_classes=3)
    cgan.compile()
    with pytest.raises(ValueError, match="labels must be in 0..2"):
        cgan.fit(np.zeros((4, 5), np.float32), np.array([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="needs the class labels"):
        cgan.fit(np.zeros((4, 5), np.float32))


def test_sequential_models_are_built_from_latent_dim():
    g = cn.Sequential([layers.Dense(8, activation="relu"), layers.Dense(3)])
    d = cn.Sequential([layers.Dense(8, activation="relu"), layers.Dense(1)])
    gan = cn.models.GAN(g, d, latent_dim=6)
    assert g.input_shape == (6,) and d.input_shape == (3,)
    gan.compile()
    assert gan.generate(5).shape == (5, 3)


def _manual_step(g, d, d_opt, g_opt, real, z1, z2, smoothing):
    """The step written by hand on the custom-loop API, with the same noise."""
    n = len(real)
    bce = cn.losses.BinaryCrossentropy(from_logits=True)
    fake = g(z1, training=True)
    out = d(np.concatenate([real, fake]), training=True)
    t = np.zeros((2 * n, 1), np.float32)
    t[:n] = 1 - smoothing
    _, grad = bce.value_and_grad(bce.prepare_targets(t, out.shape, np.float32), out)
    d.backward(np.array(grad))
    d_opt.apply_gradients(d)
    out = d(g(z2, training=True), training=True)
    _, grad = bce.value_and_grad(np.ones((n, 1), np.float32), out)
    g.backward(d.backward(np.array(grad)))
    g_opt.apply_gradients(g)


def test_train_step_is_the_custom_loop_and_optimizers_are_separate():
    cn.set_seed(1)
    g, d = _mlp([4], [8], 3, name="g"), _mlp([3], [8], 1, name="d")
    g2, d2 = _mlp([4], [8], 3), _mlp([3], [8], 1)
    g2.set_weights(g.get_weights())
    d2.set_weights(d.get_weights())
    gan = cn.models.GAN(g, d, latent_dim=4)
    gan.compile(cn.optimizers.Adam(1e-2), cn.optimizers.SGD(0.1), label_smoothing=0.2)
    d_opt, g_opt = cn.optimizers.Adam(1e-2), cn.optimizers.SGD(0.1)
    real = np.random.default_rng(1).standard_normal((6, 3)).astype(np.float32)
    for _ in range(3):
        cn.set_seed(7)
        z1, z2 = gan.sample_latent(6), gan.sample_latent(6)
        cn.set_seed(7)
        gan.train_step(real)
        _manual_step(g2, d2, d_opt, g_opt, real, z1, z2, 0.2)
    for a, b in zip(g.get_weights() + d.get_weights(), g2.get_weights() + d2.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert gan.d_optimizer.iterations == gan.g_optimizer.iterations == 3


def test_fit_history_and_a_user_written_variant():
    """A subclass overriding train_step (here: two generator updates per step) is what
    fit runs; logs are averaged per epoch."""
    calls = []

    class TwoGeneratorSteps(cn.models.GAN):
        def train_step(self, real):
            logs = super().train_step(real)
            z = self.sample_latent(len(real))
            loss, grad = self.bce(1.0, self.discriminator(self.generator(z, training=True),
                                                          training=True))
            self.generator.backward(self.discriminator.backward(grad))
            self.g_optimizer.apply_gradients(self.generator)
            calls.append(len(real))
            return {**logs, "g_loss_2": loss}

    cn.set_seed(2)
    gan = TwoGeneratorSteps(_mlp([4], [8], 3), _mlp([3], [8], 1), latent_dim=4)
    gan.compile()
    history = gan.fit(np.random.default_rng(2).standard_normal((50, 3)), epochs=2,
                      batch_size=16, verbose=0)
    assert calls == [16, 16, 16, 2] * 2
    assert set(history.history) == {"d_loss", "g_loss", "g_loss_2"}
    assert len(history.history["d_loss"]) == 2
    assert gan.g_optimizer.iterations == 16 and gan.d_optimizer.iterations == 8


def test_nan_stops_training_with_a_clear_warning():
    cn.set_seed(3)
    gan = cn.models.GAN(_mlp([4], [8], 3), _mlp([3], [8], 1), latent_dim=4)
    gan.compile()
    gan.generator.weights[0][...] = np.nan          # diverged weights
    x = np.random.default_rng(3).standard_normal((64, 3)).astype(np.float32)
    with pytest.warns(RuntimeWarning, match=r"generator's weights are not finite at epoch 1, "
                                            r"step 1; training stopped \(TerminateOnNaN\)"):
        gan.fit(x, epochs=3, batch_size=16, verbose=0)
    assert gan.stop_training and gan.d_optimizer.iterations == 0
    # a NaN loss from finite weights (an overflowing discriminator) stops it too
    gan = cn.models.GAN(_mlp([4], [8], 3), _mlp([3], [8], 1, activation="linear"), latent_dim=4)
    gan.compile()
    gan.discriminator.weights[0][...] = 1e30
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = gan.fit(x, epochs=3, batch_size=16, verbose=0)
    assert any("training stopped (TerminateOnNaN)" in str(w.message) for w in caught)
    assert len(history.history["d_loss"]) == 1


@pytest.fixture
def one_thread(restore_threads):
    """Learning tests run their small products on one thread: on a busy 2-core machine
    two OpenMP threads per tiny GEMM cost tens of times more (the thread counts are
    checked against each other by the kernel tests)."""
    cn.set_num_threads(1)


def test_gan_covers_the_modes_of_a_ring_of_gaussians(one_thread):
    """8 Gaussians (sd 0.05) on the unit circle: the samples reach >= 7 modes and >= 70%
    of them lie within 3 sd of a mode. Trained in 10-epoch rounds until both hold (at
    most 150 epochs); it takes about 50 epochs here."""
    cn.set_seed(0)
    rng = np.random.default_rng(0)
    sigma = 0.05
    angles = np.arange(8) * 2 * np.pi / 8
    centers = np.stack([np.cos(angles), np.sin(angles)], 1)
    x = (centers[rng.integers(0, 8, 4096)] + sigma * rng.standard_normal((4096, 2)))
    generator = _mlp([8], [64, 64], 2, activation="relu")
    discriminator = _mlp([2], [64, 64], 1)
    gan = cn.models.GAN(generator, discriminator, latent_dim=8)
    gan.compile(cn.optimizers.Adam(1e-3, beta_1=0.5), cn.optimizers.Adam(1e-3, beta_1=0.5))
    for _ in range(15):
        gan.fit(x.astype(np.float32), epochs=10, batch_size=128, verbose=0)
        samples = gan.generate(2000)
        dist = np.linalg.norm(samples[:, None, :] - centers[None], axis=2)
        near = dist.min(1) < 3 * sigma
        modes = int((np.bincount(dist.argmin(1)[near], minlength=8) > 0).sum())
        quality = float(near.mean())
        if modes >= 7 and quality >= 0.7:
            break
    assert modes >= 7 and quality >= 0.7, (modes, quality)


def test_conditional_gan_draws_the_requested_digit(one_thread):
    """Samples asked for class c are labelled c by a 5-nearest-neighbour classifier of the
    real digits (98% accurate on held-out digits) >= 80% of the time. 5-epoch rounds
    until it holds, at most 80 epochs (about 20 here)."""
    datasets = pytest.importorskip("sklearn.datasets")
    from sklearn.neighbors import KNeighborsClassifier

    digits = datasets.load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    classifier = KNeighborsClassifier(5).fit(x, digits.target)
    cn.set_seed(0)
    generator = _mlp([16, 10], [128, 128], 64, out_activation="sigmoid")
    discriminator = _mlp([64, 10], [128, 128], 1)
    gan = cn.models.ConditionalGAN(generator, discriminator, latent_dim=16, num_classes=10)
    gan.compile(cn.optimizers.Adam(2e-3, beta_1=0.5), cn.optimizers.Adam(2e-3, beta_1=0.5),
                label_smoothing=0.1)
    wanted = np.repeat(np.arange(10), 50)
    for _ in range(16):
        gan.fit(x, digits.target, epochs=5, batch_size=64, verbose=0)
        agreement = float(np.mean(classifier.predict(gan.generate(wanted)) == wanted))
        if agreement >= 0.8:
            break
    assert agreement >= 0.8, agreement


# -- bench and demos -------------------------------------------------------------------------
def test_gan_bench_pairs_are_the_same_networks(restore_threads):
    """`bench gan`: cyneuron's DCGAN pair and PyTorch's have the same shapes and parameter
    counts, and every step callable runs and returns finite losses."""
    from cyneuron.bench import gan as bench

    torch = pytest.importorskip("torch")
    cn.set_num_threads(1)
    gan = bench.make_cyneuron_gan()
    assert gan.generator.output_shape == (28, 28, 1)
    real = np.random.default_rng(0).random((4, 28, 28, 1), dtype=np.float32)
    fns, _ = bench.step_callables(1, real)
    assert set(fns) == set(bench.IMPLEMENTATIONS)
    for fn in fns.values():
        out = fn()
        losses = list(out.values()) if isinstance(out, dict) else list(out)
        assert all(np.isfinite(v) for v in losses)
    torch.manual_seed(0)
    counts = [sum(p.numel() for p in m.parameters()) for m in (
        torch.nn.Sequential(torch.nn.Linear(bench.LATENT, 7 * 7 * 64),
                            torch.nn.ConvTranspose2d(64, 32, 4), torch.nn.ConvTranspose2d(32, 1, 4)),
        torch.nn.Sequential(torch.nn.Conv2d(1, 32, 4), torch.nn.Conv2d(32, 64, 4),
                            torch.nn.Linear(7 * 7 * 64, 1)))]
    assert counts == [gan.generator.count_params(), gan.discriminator.count_params()]


def test_generative_demos_write_their_pictures(tmp_path, restore_threads, capsys):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    from cyneuron import _demo_generative as demos

    cn.set_num_threads(1)
    mse = demos.demo_autoencoder(output=str(tmp_path / "ae.png"), epochs=2)
    assert 0 < mse < 0.1
    demos.demo_gan(output=str(tmp_path / "gan.png"), epochs=1)
    assert (tmp_path / "ae.png").stat().st_size > 1000
    assert (tmp_path / "gan.png").stat().st_size > 1000
    text = capsys.readouterr().out
    assert "written to" in text and "PCA with 16 components" in text


def test_the_readme_variant_runs_and_its_critic_learns():
    """The README's user-written variant (a Wasserstein-style critic) as printed there:
    fit runs it, and the critic learns to score real samples above generated ones."""
    class MyGAN(cn.models.GAN):
        def train_step(self, real):
            g, d, n = self.generator, self.discriminator, len(real)
            scores = d(np.concatenate([real, g(self.sample_latent(n), training=True)]),
                       training=True)
            d.backward(np.concatenate([-np.ones((n, 1)), np.ones((n, 1))]) / n)
            self.d_optimizer.apply_gradients(d)
            fake_scores = d(g(self.sample_latent(n), training=True), training=True)
            g.backward(d.backward(-np.ones((n, 1)) / n))
            self.g_optimizer.apply_gradients(g)
            return {"critic": float(scores[n:].mean() - scores[:n].mean()),
                    "g_loss": float(-fake_scores.mean())}

    cn.set_seed(5)
    gan = MyGAN(_mlp([4], [16], 2), _mlp([2], [16], 1), latent_dim=4)
    gan.compile(cn.optimizers.RMSprop(5e-3), cn.optimizers.RMSprop(5e-3))
    real = (np.random.default_rng(5).standard_normal((256, 2)) * 0.1 + 3).astype(np.float32)
    history = gan.fit(real, epochs=3, batch_size=64, verbose=0)
    assert history.history["critic"][-1] < 0 < history.history["critic"][0]
