"""Command line: python -m cyneuron demo [mlp|cnn|som|dbn|transformer|autoencoder|gan] |
bench [matmul|mlp|conv|resnet|rnn|transformer|sklearn|rbm|som|gan|all] | info"""
import argparse
import sys
import time

import numpy as np


def demo(epochs=30, batch_size=32, seed=0):
    """Train an MLP on the handwritten digits; print test accuracy and throughput."""
    import cyneuron as cn
    from cyneuron import datasets, layers

    (x_train, y_train), (x_test, y_test) = datasets.load_digits()
    cn.set_seed(seed)
    model = cn.Sequential([
        layers.Dense(128, activation="relu"),
        layers.Dense(64, activation="relu"),
        layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer=cn.optimizers.SGD(learning_rate=0.05, momentum=0.9),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    print(f"cyneuron {cn.__version__} ({cn.get_isa()}, {cn.get_num_threads()} threads): "
          f"MLP 64-128-64-10 on digits, {len(x_train)} train / {len(x_test)} test samples")
    model.summary()
    start = time.perf_counter()
    model.fit(x_train, y_train, epochs=epochs, batch_size=batch_size, verbose=2)
    seconds = time.perf_counter() - start
    result = model.evaluate(x_test, y_test)
    throughput = len(x_train) * epochs / seconds
    print(f"test accuracy {result['accuracy']:.4f}, test loss {result['loss']:.4f}, "
          f"training throughput {throughput:,.0f} samples/s")
    return result["accuracy"], throughput


def shift_augment(x):
    """x (N, H, W, C) and its four one-pixel shifts (up, down, left, right; zeros move in):
    five times the images, the cheapest augmentation for small digit images."""
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    h, w = x.shape[1:3]
    shifts = [(1, 1), (0, 1), (2, 1), (1, 0), (1, 2)]   # (row, column) offsets into padded
    return np.concatenate([padded[:, r:r + h, c:c + w] for r, c in shifts])


def demo_cnn(epochs=10, batch_size=32, seed=0):
    """Train a small CNN on the 8x8 digits (as 8x8x1 images, with one-pixel shift
    augmentation); print test accuracy and throughput."""
    import cyneuron as cn
    from cyneuron import datasets, layers

    (x_train, y_train), (x_test, y_test) = datasets.load_digits()
    x_train, x_test = x_train.reshape(-1, 8, 8, 1), x_test.reshape(-1, 8, 8, 1)
    x_aug, y_aug = shift_augment(x_train), np.tile(y_train, 5)
    cn.set_seed(seed)
    model = cn.Sequential([
        layers.Conv2D(32, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(2),
        layers.Conv2D(64, 3, padding="same", activation="relu"),
        layers.Flatten(),
        layers.Dropout(0.25),
        layers.Dense(128, activation="relu"),
        layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer=cn.optimizers.SGD(learning_rate=0.02, momentum=0.9),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    print(f"cyneuron {cn.__version__} ({cn.get_isa()}, {cn.get_num_threads()} threads): "
          f"CNN on 8x8x1 digits, {len(x_train)} train images (x5 with one-pixel shifts) / "
          f"{len(x_test)} test")
    model.build((8, 8, 1))
    model.summary()
    start = time.perf_counter()
    model.fit(x_aug, y_aug, epochs=epochs, batch_size=batch_size, verbose=2)
    seconds = time.perf_counter() - start
    result = model.evaluate(x_test, y_test)
    throughput = len(x_aug) * epochs / seconds
    print(f"test accuracy {result['accuracy']:.4f}, test loss {result['loss']:.4f}, "
          f"training throughput {throughput:,.0f} samples/s")
    return result["accuracy"], throughput


def package_text():
    """The package's own README: from the installed distribution's metadata (the wheel's
    long description), else the source tree's README.md, else the modules' docstrings."""
    import importlib.metadata
    import pathlib

    try:
        text = importlib.metadata.metadata("cyneuron").get_payload()
        if text and len(text) > 2000:
            return text
    except (importlib.metadata.PackageNotFoundError, AttributeError):
        pass
    readme = pathlib.Path(__file__).resolve().parents[2] / "README.md"
    if readme.is_file():
        return readme.read_text(encoding="utf-8")
    import cyneuron
    from cyneuron import layers, losses, models, ops, optimizers

    return "\n\n".join(m.__doc__ or "" for m in (cyneuron, layers, losses, models, ops,
                                                  optimizers))


def char_lm(vocab, steps, dim=64, heads=4, blocks=2, ff=128):
    """A causal character-level language model from the public layers: token + position
    embeddings, then per block x + MHA(LN(x), causal), x + FF(LN(x)), and a softmax head."""
    import cyneuron as cn
    from cyneuron import layers

    ids = cn.Input(shape=(steps,), dtype="int32")
    x = layers.TokenAndPositionEmbedding(vocab, steps, dim)(ids)
    for _ in range(blocks):
        h = layers.LayerNormalization()(x)
        h = layers.MultiHeadAttention(heads, dim // heads)(h, h, use_causal_mask=True)
        x = layers.Add()([x, h])
        h = layers.LayerNormalization()(x)
        h = layers.Dense(dim)(layers.Dense(ff, activation="relu")(h))
        x = layers.Add()([x, h])
    logits = layers.Dense(vocab)(layers.LayerNormalization()(x))
    return cn.Model(ids, logits)


def demo_transformer(epochs=30, batch_size=32, steps=64, seed=0, sample_length=300,
                     temperature=0.6):
    """Train a causal character-level Transformer on the package's README; print a sample."""
    import cyneuron as cn

    text = package_text()
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    data = np.array([index[c] for c in text], np.int64)
    rng = np.random.default_rng(seed)
    cn.set_seed(seed)
    starts = np.arange(0, len(data) - steps - 1, steps // 2)
    x = np.stack([data[s:s + steps] for s in starts])
    y = np.stack([data[s + 1:s + steps + 1] for s in starts])
    model = char_lm(len(chars), steps)
    model.compile(optimizer=cn.optimizers.Adam(3e-3),
                  loss=cn.losses.SparseCategoricalCrossentropy(from_logits=True))
    print(f"cyneuron {cn.__version__} ({cn.get_isa()}, {cn.get_num_threads()} threads): "
          f"causal character-level Transformer on the package's README ({len(text):,} "
          f"characters, {len(chars)} distinct), {len(x)} windows of {steps}")
    model.summary()
    start = time.perf_counter()
    model.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=2)
    seconds = time.perf_counter() - start
    window = list(data[:steps])
    out = []
    for _ in range(sample_length):
        logits = model.predict(np.array([window[-steps:]]))[0, -1].astype(np.float64)
        p = np.exp((logits - logits.max()) / temperature)
        nxt = int(rng.choice(len(chars), p=p / p.sum()))
        out.append(chars[nxt])
        window.append(nxt)
    prompt = "".join(chars[i] for i in data[:steps])
    print(f"trained {epochs} epochs in {seconds:.1f} s "
          f"({len(x) * epochs / seconds:,.0f} windows/s)")
    print(f"\n--- prompt ---\n{prompt}\n--- sample (temperature {temperature}) ---\n"
          f"{''.join(out)}")
    return model, "".join(out)


def demo_som(output="som_digits.png", seed=0):
    """A 20x20 SOM on the digits: errors, and the U-matrix with each digit at its winner."""
    import time

    import cyneuron as cn

    (x_train, y_train), (x_test, y_test) = cn.datasets.load_digits()
    x = np.concatenate([x_train, x_test]).astype(np.float64)
    y = np.concatenate([y_train, y_test])
    som = cn.SOM(20, 20, x.shape[1], sigma=3.0, learning_rate=0.5, random_state=seed)
    som.pca_weights_init(x)
    t0 = time.perf_counter()
    som.train(x, 20 * len(x), random_order=True)
    seconds = time.perf_counter() - t0
    print(f"SOM 20x20 on the digits ({len(x)} samples, {20 * len(x):,} online iterations): "
          f"{seconds:.2f} s; quantization error {som.quantization_error(x):.3f}, "
          f"topographic error {som.topographic_error(x):.3f}")
    # how well the map separates the classes: each node votes its majority label
    votes = som.labels_map(x, y)
    winners = som.winners(x)
    majority = {pos: counts.most_common(1)[0][0] for pos, counts in votes.items()}
    purity = np.mean([majority[(int(c) // som.n, int(c) % som.n)] == label
                      for c, label in zip(winners, y)])
    print(f"node-majority label purity {purity:.3f}")
    try:
        som.plot(x, y, filename=output)
    except ImportError:
        print("matplotlib is not installed: no U-matrix picture (pip install matplotlib)")
    else:
        print(f"U-matrix with the digits at their winning nodes written to {output}")
    return som


def demo_dbn(seed=0):
    """A DBN classifier on the digits: RBM pre-training, then fine-tuning."""
    import time

    import cyneuron as cn

    (x_train, y_train), (x_test, y_test) = cn.datasets.load_digits()
    t0 = time.perf_counter()
    clf = cn.DBNClassifier((256,), random_state=seed).fit(x_train, y_train)
    seconds = time.perf_counter() - t0
    rbm = clf.dbn_.rbms_[0]
    print(f"DBN 64-256-10 on the digits: pre-training (PCD-1, {rbm.n_iter} epochs) and "
          f"fine-tuning ({clf.epochs} epochs, Adam) in {seconds:.2f} s")
    print(f"pseudo-likelihood of the pre-trained RBM on the test digits: "
          f"{rbm.score_samples(x_test.astype(rbm.components_.dtype)).mean():.2f}")
    accuracy = clf.score(x_test, y_test)
    print(f"test accuracy {accuracy:.4f}")
    return accuracy


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="python -m cyneuron", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser("demo", help="train an MLP (or a CNN) on the digits data set, a "
                                         "SOM or DBN on them, or a character-level "
                                         "Transformer on the README")
    p_demo.add_argument("model", nargs="?", choices=("mlp", "cnn", "som", "dbn", "transformer",
                                                     "autoencoder", "gan"), default="mlp")
    p_demo.add_argument("--output", default=None,
                        help="demo som / autoencoder / gan: the PNG to write (default "
                             "som_digits.png, autoencoder_digits.png, gan_digits.png)")
    p_demo.add_argument("--epochs", type=int, default=None,
                        help="default: 30 for the MLP, 10 for the CNN, 30 for the Transformer")
    p_demo.add_argument("--batch-size", type=int, default=32)
    sub.add_parser("bench", help="benchmarks against numpy / PyTorch / scikit-learn", add_help=False)
    sub.add_parser("info", help="version, SIMD path, OpenMP, threads")
    if argv and argv[0] == "bench":
        from cyneuron.bench import main as bench_main

        return bench_main(argv[1:])
    args = parser.parse_args(argv)
    if args.command == "demo" and args.model == "transformer":
        demo_transformer(epochs=args.epochs or 30, batch_size=args.batch_size)
    elif args.command == "demo" and args.model == "som":
        demo_som(output=args.output or "som_digits.png")
    elif args.command == "demo" and args.model in ("autoencoder", "gan"):
        from . import _demo_generative as generative

        if args.model == "gan":
            generative.demo_gan(output=args.output or "gan_digits.png", epochs=args.epochs or 60)
        else:
            generative.demo_autoencoder(output=args.output or "autoencoder_digits.png",
                                        epochs=args.epochs or 30)
    elif args.command == "demo" and args.model == "dbn":
        demo_dbn()
    elif args.command == "demo" and args.model == "cnn":
        demo_cnn(epochs=args.epochs or 10, batch_size=args.batch_size)
    elif args.command == "demo":
        demo(epochs=args.epochs or 30, batch_size=args.batch_size)
    elif args.command == "info":
        import cyneuron as cn

        cn.show_config()
    return 0


if __name__ == "__main__":
    sys.exit(main())
