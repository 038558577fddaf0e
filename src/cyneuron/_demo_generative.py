"""`python -m cyneuron demo autoencoder` and `demo gan`: train on the 8x8 digits and write
a PNG grid of real digits next to reconstructed (autoencoder) or generated (conditional
GAN) ones."""
import time

import numpy as np


def _grid(rows, titles, output):
    """Rows of 8x8 images (each row an array (k, 64)) as one PNG, a title per row.
    Returns the path written, or None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no picture (pip install matplotlib)")
        return None
    k = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), k, figsize=(k * 0.8, len(rows) * 0.95))
    for i, (row, title) in enumerate(zip(rows, titles)):
        for j in range(k):
            ax = axes[i, j]
            ax.axis("off")
            if j < len(row):
                ax.imshow(row[j].reshape(8, 8), cmap="gray_r", vmin=0, vmax=1)
        axes[i, 0].set_title(title, fontsize=8, loc="left")
    fig.tight_layout()
    fig.savefig(output, dpi=80)
    plt.close(fig)
    return output


def demo_autoencoder(output="autoencoder_digits.png", epochs=30, seed=0):
    """A dense autoencoder (64-128-16-128-64) on the digits, against PCA(16)."""
    import cyneuron as cn
    from cyneuron import layers

    (x_train, _), (x_test, _) = cn.datasets.load_digits()
    cn.set_seed(seed)
    inputs = cn.Input((64,))
    encoder = cn.Model(inputs, layers.Dense(16)(layers.Dense(128, activation="relu")(inputs)),
                       name="encoder")
    codes = cn.Input((16,))
    decoder = cn.Model(codes, layers.Dense(64, activation="sigmoid")(
        layers.Dense(128, activation="relu")(codes)), name="decoder")
    x = cn.Input((64,))
    autoencoder = cn.Model(x, decoder(encoder(x)), name="autoencoder")
    autoencoder.compile(optimizer=cn.optimizers.Adam(2e-3), loss="mse")
    print(f"cyneuron {cn.__version__} ({cn.get_isa()}, {cn.get_num_threads()} threads): dense "
          f"autoencoder 64-128-16-128-64 on the digits, {len(x_train)} train / {len(x_test)} "
          f"test")
    start = time.perf_counter()
    autoencoder.fit(x_train, x_train, epochs=epochs, batch_size=32, verbose=2)
    seconds = time.perf_counter() - start
    recon = decoder.predict(encoder.predict(x_test))
    mse = float(np.mean((recon - x_test) ** 2))
    line = f"trained in {seconds:.1f} s; test reconstruction MSE {mse:.5f}"
    try:
        from sklearn.decomposition import PCA

        pca = PCA(16, random_state=0).fit(x_train)
        pca_mse = float(np.mean((pca.inverse_transform(pca.transform(x_test)) - x_test) ** 2))
        line += f" (PCA with 16 components: {pca_mse:.5f})"
    except ImportError:
        pass
    print(line)
    path = _grid([x_test[:12], recon[:12]], ["test digits", "reconstructed from 16 numbers"],
                 output)
    if path:
        print(f"real and reconstructed digits written to {path}")
    return mse


def demo_gan(output="gan_digits.png", epochs=60, seed=0):
    """A conditional GAN on the digits: one generated row per class, real digits above."""
    import cyneuron as cn
    from cyneuron import layers

    (x_train, y_train), _ = cn.datasets.load_digits()
    cn.set_seed(seed)
    latent = 16

    def mlp(sizes, out, activation):
        ins = [cn.Input((d,)) for d in sizes]
        h = layers.Concatenate()(ins)
        for _ in range(2):
            h = layers.Dense(128, activation="leaky_relu")(h)
        return cn.Model(ins, layers.Dense(out, activation=activation)(h))

    generator = mlp([latent, 10], 64, "sigmoid")
    discriminator = mlp([64, 10], 1, None)
    gan = cn.models.ConditionalGAN(generator, discriminator, latent_dim=latent, num_classes=10)
    gan.compile(cn.optimizers.Adam(1e-3, beta_1=0.5), cn.optimizers.Adam(1e-3, beta_1=0.5),
                label_smoothing=0.1)
    print(f"cyneuron {cn.__version__} ({cn.get_isa()}, {cn.get_num_threads()} threads): "
          f"conditional GAN (MLP generator and discriminator) on {len(x_train)} digits")
    start = time.perf_counter()
    gan.fit(x_train, y_train, epochs=epochs, batch_size=64, verbose=2)
    seconds = time.perf_counter() - start
    wanted = np.repeat(np.arange(10), 10)
    samples = gan.generate(wanted)
    line = f"trained in {seconds:.1f} s"
    try:
        from sklearn.neighbors import KNeighborsClassifier

        clf = KNeighborsClassifier(5).fit(x_train, y_train)
        agree = float(np.mean(clf.predict(gan.generate(np.repeat(np.arange(10), 100)))
                              == np.repeat(np.arange(10), 100)))
        line += (f"; a 5-nearest-neighbour classifier of the real digits labels {agree:.1%} "
                 f"of the generated ones as the class asked for")
    except ImportError:
        pass
    print(line)
    real = [x_train[y_train == c][0] for c in range(10)]
    rows = [np.array(real)] + [samples[wanted == c] for c in range(10)]
    path = _grid(rows, ["real"] + [f"generated {c}" for c in range(10)], output)
    if path:
        print(f"real digits (top row) and generated ones, a row per class, written to {path}")
    return gan
