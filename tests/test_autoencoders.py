"""Autoencoders and variational autoencoders: the noise and sampling layers (float64
gradient checks, seeding), model.add_loss, and learning tests on scikit-learn's digits
against references no one here tuned (PCA with as many components as the code has
units; a logistic regression trained on the real digits)."""
import numpy as np
import pytest

import cyneuron as cn
from cyneuron import layers

from test_gradients import numeric_grad


def _fresh(layer):
    """Restart a seeded layer's random stream (the same noise on every call)."""
    layer._rng = np.random.default_rng(layer.seed)


def _layer_grad_check(layer, xs, rtol=1e-6):
    """Input gradients of a layer (one input or a list) through a random projection."""
    rng = np.random.default_rng(0)
    many = isinstance(xs, list)

    def run():
        _fresh(layer)
        return layer._forward(xs if many else xs[0], True)

    xs = xs if many else [xs]
    out = run().copy()
    r = rng.standard_normal(out.shape)
    grads = layer._backward(r, True)
    grads = grads if many else [grads]
    for x, g in zip(xs, grads):
        num = numeric_grad(lambda: float(np.sum(run() * r)), x)
        np.testing.assert_allclose(g, num, rtol=rtol, atol=1e-8)


# -- noise layers ------------------------------------------------------------------------
@pytest.mark.parametrize("make", [lambda: layers.GaussianNoise(0.5, seed=3),
                                  lambda: layers.GaussianDropout(0.3, seed=3)],
                         ids=["noise", "dropout"])
def test_noise_layers_gradient_float64_and_identity_at_inference(make):
    layer = make()
    x = np.random.default_rng(1).standard_normal((5, 4))
    layer.dtype = np.dtype(np.float64)
    layer.build((4,))
    _layer_grad_check(layer, x)
    assert layer.forward(x) is not None and np.array_equal(layer.forward(x), x)


def test_noise_statistics_and_seeds():
    x = np.ones((400, 50), np.float32)
    noisy = layers.GaussianNoise(0.3, seed=0).forward(x, training=True) - 1
    assert abs(noisy.mean()) < 0.01 and abs(noisy.std() - 0.3) < 0.01
    rate = 0.4
    mult = layers.GaussianDropout(rate, seed=0).forward(x, training=True)
    assert abs(mult.mean() - 1) < 0.01
    assert abs(mult.std() - np.sqrt(rate / (1 - rate))) < 0.01
    a = layers.GaussianNoise(1.0, seed=5).forward(x, training=True).copy()
    b = layers.GaussianNoise(1.0, seed=5).forward(x, training=True)
    np.testing.assert_array_equal(a, b)
    cn.set_seed(9)
    c = layers.GaussianNoise(1.0).forward(x, training=True).copy()
    cn.set_seed(9)
    np.testing.assert_array_equal(c, layers.GaussianNoise(1.0).forward(x, training=True))


def test_noise_layer_arguments_are_checked():
    with pytest.raises(ValueError, match="stddev"):
        layers.GaussianNoise(-1)
    with pytest.raises(ValueError, match="rate"):
        layers.GaussianDropout(1.0)
    with pytest.raises(ValueError, match="seed"):
        layers.Sampling(seed=-2)


def test_noise_layers_export_to_onnx_as_the_identity(tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    cn.set_seed(6)
    model = cn.Sequential([cn.Input((6,)), layers.GaussianNoise(0.3), layers.Dense(4),
                           layers.GaussianDropout(0.2), layers.Dense(6, activation="sigmoid")])
    x = np.random.default_rng(6).standard_normal((5, 6)).astype(np.float32)
    path = tmp_path / "denoiser.onnx"
    cn.onnx.export(model, str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(got, model.predict(x), rtol=1e-5, atol=1e-6)


# -- VAE layers and add_loss -------------------------------------------------------------
def test_sampling_and_kl_gradients_float64():
    rng = np.random.default_rng(2)
    mean, log_var = rng.standard_normal((4, 3)), rng.standard_normal((4, 3)) * 0.5
    sampling = layers.Sampling(seed=4, dtype="float64")
    sampling.build([(3,), (3,)])
    _layer_grad_check(sampling, [mean, log_var])
    kl = layers.GaussianKL(dtype="float64")
    kl.build([(3,), (3,)])
    kl.seed = None
    out = kl._forward([mean, log_var], True)
    expected = -0.5 * np.sum(1 + log_var - mean ** 2 - np.exp(log_var), axis=1, keepdims=True)
    np.testing.assert_allclose(out, expected, rtol=1e-12)
    _layer_grad_check(kl, [mean, log_var])


def test_sampling_draws_from_the_right_gaussian():
    n = 20000
    mean = np.full((n, 2), [1.0, -2.0], np.float32)
    log_var = np.full((n, 2), [0.0, np.log(0.25)], np.float32)
    z = layers.Sampling(seed=1)([mean, log_var])
    np.testing.assert_allclose(z.mean(0), [1.0, -2.0], atol=0.02)
    np.testing.assert_allclose(z.std(0), [1.0, 0.5], atol=0.02)


def _small_vae(dtype="float32", latent=2):
    inp = cn.Input((6,), dtype=dtype)
    h = layers.Dense(5, activation="tanh")(inp)
    z_mean, z_log_var = layers.Dense(latent)(h), layers.Dense(latent)(h)
    sampling = layers.Sampling(seed=11)
    z = sampling([z_mean, z_log_var])
    out = layers.Dense(6, activation="sigmoid")(layers.Dense(4, activation="tanh")(z))
    vae = cn.Model(inp, out)
    vae.add_loss(layers.GaussianKL()([z_mean, z_log_var]))
    return vae, sampling


def test_vae_with_add_loss_gradient_float64():
    cn.set_seed(3)
    vae, sampling = _small_vae("float64")
    vae.compile(optimizer="adam", loss="binary_crossentropy", loss_weights=6.0)
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 1, (5, 6))

    def loss():
        _fresh(sampling)
        return vae.compute_gradients(x, x)[0]

    _fresh(sampling)
    value, grads = vae.compute_gradients(x, x)
    for w, g in zip(vae.trainable_weights, grads):
        np.testing.assert_allclose(g, numeric_grad(loss, w), rtol=1e-5, atol=1e-7)
    # the loss is the reconstruction term plus the batch mean of the KL term
    assert len(vae.losses) == 1 and vae.losses[0] > 0
    _fresh(sampling)
    recon = cn.losses.BinaryCrossentropy()(x, vae(x, training=True)) * 6
    assert value == pytest.approx(recon + vae.losses[0], rel=1e-9)


def test_add_loss_checks_and_round_trip(tmp_path):
    cn.set_seed(4)
    vae, _ = _small_vae()
    vae.compile(optimizer="adam", loss="binary_crossentropy")
    with pytest.raises(TypeError, match="symbolic tensor"):
        vae.add_loss(1.0)
    other = layers.Dense(1)(cn.Input((3,)))
    with pytest.raises(ValueError, match="not computed from the inputs"):
        vae.add_loss(other)
    x = np.random.default_rng(4).uniform(0, 1, (8, 6)).astype(np.float32)
    vae.fit(x, x, epochs=1, verbose=0)
    vae.save(tmp_path / "vae.cyn")
    again = cn.load_model(tmp_path / "vae.cyn")
    assert len(again._loss_tensors) == 1
    for a, b in zip(again.get_weights(), vae.get_weights()):
        np.testing.assert_array_equal(a, b)
    samplers = [[layer for layer in m.layers if isinstance(layer, layers.Sampling)][0]
                for m in (vae, again)]
    assert samplers[1].seed == 11
    for s in samplers:
        _fresh(s)
    np.testing.assert_array_equal(again.predict(x), vae.predict(x))
    for s in samplers:
        _fresh(s)
    assert again.evaluate(x, x)["loss"] == pytest.approx(vae.evaluate(x, x)["loss"], rel=1e-6)
    with pytest.raises(ValueError, match="functional model"):
        cn.Sequential([layers.Dense(1)]).add_loss(other)


# -- learning on the digits ------------------------------------------------------------------
@pytest.fixture
def one_thread(restore_threads):
    """Learning tests run their small products on one thread: on a busy 2-core machine
    two OpenMP threads per tiny GEMM cost tens of times more (the thread counts are
    checked against each other by the kernel tests)."""
    cn.set_num_threads(1)


@pytest.fixture(scope="module")
def digits():
    datasets = pytest.importorskip("sklearn.datasets")
    from sklearn.decomposition import PCA
    from sklearn.model_selection import train_test_split

    data = load = datasets.load_digits()
    x = (load.data / 16.0).astype(np.float32)
    xtr, xte, ytr, yte = train_test_split(x, data.target, test_size=0.25, random_state=0)
    pca = PCA(16, random_state=0).fit(xtr)
    pca_mse = float(np.mean((pca.inverse_transform(pca.transform(xte)) - xte) ** 2))
    return xtr, xte, ytr, yte, pca_mse


def _dense_autoencoder(code=16, noise=None, activity=None):
    inp = cn.Input((64,))
    h = inp if noise is None else noise(inp)
    h = layers.Dense(128, activation="relu")(h)
    encoder = cn.Model(inp, layers.Dense(code, activity_regularizer=activity)(h),
                       name="encoder")
    code_in = cn.Input((code,))
    out = layers.Dense(64, activation="sigmoid")(
        layers.Dense(128, activation="relu")(code_in))
    decoder = cn.Model(code_in, out, name="decoder")
    x = cn.Input((64,))
    autoencoder = cn.Model(x, decoder(encoder(x)))
    autoencoder.compile(optimizer=cn.optimizers.Adam(2e-3), loss="mse")
    return autoencoder, encoder, decoder


def test_dense_autoencoder_beats_pca16_and_splits_into_encoder_decoder(one_thread, digits):
    xtr, xte, _, _, pca_mse = digits
    cn.set_seed(0)
    autoencoder, encoder, decoder = _dense_autoencoder()
    autoencoder.fit(xtr, xtr, epochs=30, batch_size=32, verbose=0)
    codes = encoder.predict(xte)
    assert codes.shape == (len(xte), 16)
    recon = decoder.predict(codes)            # the trained weights, shared
    np.testing.assert_allclose(recon, autoencoder.predict(xte), rtol=1e-5, atol=1e-6)
    mse = float(np.mean((recon - xte) ** 2))
    assert mse < pca_mse, (mse, pca_mse)


def test_convolutional_autoencoder_beats_pca16(one_thread, digits):
    xtr, xte, _, _, pca_mse = digits
    xtr, xte = xtr.reshape(-1, 8, 8, 1), xte.reshape(-1, 8, 8, 1)
    cn.set_seed(0)
    inp = cn.Input((8, 8, 1))
    h = layers.Conv2D(16, 3, padding="same", activation="relu")(inp)
    h = layers.Conv2D(32, 3, strides=2, padding="same", activation="relu")(h)     # 4x4
    encoder = cn.Model(inp, layers.Dense(16)(layers.Flatten()(h)))
    code_in = cn.Input((16,))
    h = layers.Reshape((4, 4, 32))(layers.Dense(4 * 4 * 32, activation="relu")(code_in))
    h = layers.Conv2DTranspose(16, 3, strides=2, padding="same", activation="relu")(h)  # 8x8
    decoder = cn.Model(code_in, layers.Conv2D(1, 3, padding="same", activation="sigmoid")(h))
    x = cn.Input((8, 8, 1))
    autoencoder = cn.Model(x, decoder(encoder(x)))
    autoencoder.compile(optimizer=cn.optimizers.Adam(2e-3), loss="mse")
    autoencoder.fit(xtr, xtr, epochs=10, batch_size=32, verbose=0)
    mse = float(np.mean((decoder.predict(encoder.predict(xte)) - xte) ** 2))
    assert mse < pca_mse, (mse, pca_mse)


def test_upsampling_autoencoder_learns(one_thread, digits):
    """Conv2D down, UpSampling2D up: reconstructs far better than the mean image."""
    xtr, xte, _, _, _ = digits
    xtr, xte = xtr.reshape(-1, 8, 8, 1), xte.reshape(-1, 8, 8, 1)
    cn.set_seed(1)
    model = cn.Sequential([
        cn.Input((8, 8, 1)),
        layers.Conv2D(16, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(2),
        layers.Conv2D(8, 3, padding="same", activation="relu"),
        layers.UpSampling2D(2),
        layers.Conv2D(1, 3, padding="same", activation="sigmoid")])
    model.compile(optimizer=cn.optimizers.Adam(3e-3), loss="mse")
    model.fit(xtr, xtr, epochs=4, batch_size=32, verbose=0)
    mse = float(np.mean((model.predict(xte) - xte) ** 2))
    baseline = float(np.mean((xtr.mean(0) - xte) ** 2))
    assert mse < 0.3 * baseline, (mse, baseline)


def _additive(x, rng):
    return x + 0.3 * rng.standard_normal(x.shape)


def _multiplicative(x, rng):
    return x * (1 + np.sqrt(0.3 / 0.7) * rng.standard_normal(x.shape))


@pytest.mark.parametrize("noise, corrupt", [
    (lambda: layers.GaussianNoise(0.3, seed=2), _additive),
    (lambda: layers.GaussianDropout(0.3, seed=2), _multiplicative)],
    ids=["gaussian_noise", "gaussian_dropout"])
def test_denoising_autoencoder_removes_noise(one_thread, digits, noise, corrupt):
    """Trained on inputs corrupted by the noise layer, it restores test digits corrupted
    by the same kind of noise."""
    xtr, xte, _, _, _ = digits
    cn.set_seed(2)
    autoencoder, _, _ = _dense_autoencoder(noise=noise())
    autoencoder.fit(xtr, xtr, epochs=15, batch_size=32, verbose=0)
    corrupted = corrupt(xte, np.random.default_rng(2)).astype(np.float32)
    noisy_mse = float(np.mean((corrupted - xte) ** 2))
    denoised_mse = float(np.mean((autoencoder.predict(corrupted) - xte) ** 2))
    assert denoised_mse < 0.5 * noisy_mse, (denoised_mse, noisy_mse)


def test_sparse_autoencoder_activity_regularizer(one_thread, digits):
    xtr, xte, _, _, _ = digits
    activity, mse = [], []
    for reg in (None, cn.regularizers.L1(1e-3)):
        cn.set_seed(3)
        autoencoder, encoder, _ = _dense_autoencoder(code=32, activity=reg)
        autoencoder.fit(xtr, xtr, epochs=10, batch_size=32, verbose=0)
        activity.append(float(np.abs(encoder.predict(xte)).mean()))
        mse.append(float(np.mean((autoencoder.predict(xte) - xte) ** 2)))
    assert activity[1] < 0.5 * activity[0], activity
    assert mse[1] < 0.03, mse            # still reconstructs (the mean image: ~0.1)


def test_vae_elbo_improves_and_samples_cover_every_digit(one_thread, digits):
    from sklearn.neighbors import KNeighborsClassifier

    xtr, xte, ytr, _, _ = digits
    classifier = KNeighborsClassifier(5).fit(xtr, ytr)
    cn.set_seed(0)
    latent = 8
    inp = cn.Input((64,))
    h = layers.Dense(128, activation="relu")(inp)
    z_mean, z_log_var = layers.Dense(latent)(h), layers.Dense(latent)(h)
    z = layers.Sampling(seed=1)([z_mean, z_log_var])
    encoder = cn.Model(inp, [z_mean, z_log_var, z], name="encoder")
    code_in = cn.Input((latent,))
    decoder = cn.Model(code_in, layers.Dense(64, activation="sigmoid")(
        layers.Dense(128, activation="relu")(code_in)), name="decoder")
    x = cn.Input((64,))
    m, lv, zz = encoder(x)
    vae = cn.Model(x, decoder(zz))
    vae.add_loss(layers.GaussianKL()([m, lv]))
    # 64 x the per-pixel mean cross-entropy = the sum over pixels: the negative ELBO
    vae.compile(optimizer=cn.optimizers.Adam(2e-3), loss="binary_crossentropy",
                loss_weights=64.0)

    def elbo(data):
        """Mean single-sample ELBO (nats) from the encoder and decoder models."""
        mu, log_var, zs = encoder.predict(data)
        p = np.clip(decoder.predict(zs), 1e-7, 1 - 1e-7)
        log_lik = np.sum(data * np.log(p) + (1 - data) * np.log(1 - p), axis=1)
        kl = -0.5 * np.sum(1 + log_var - mu ** 2 - np.exp(log_var), axis=1)
        return float(np.mean(log_lik - kl))

    before = elbo(xte)
    vae.fit(xtr, xtr, epochs=30, batch_size=32, verbose=0)
    after = elbo(xte)
    assert after > before + 15.0, (before, after)          # about -46 -> -25 nats
    samples = decoder.predict(np.random.default_rng(0).standard_normal(
        (500, latent)).astype(np.float32))
    counts = np.bincount(classifier.predict(samples), minlength=10)
    assert (counts > 0).all(), counts
