"""Command line: python -m cyneuron demo [mlp|cnn] | bench [matmul|mlp|conv|resnet|rnn|sklearn|all] | info"""
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


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="python -m cyneuron", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser("demo", help="train an MLP (or a CNN) on the digits data set")
    p_demo.add_argument("model", nargs="?", choices=("mlp", "cnn"), default="mlp")
    p_demo.add_argument("--epochs", type=int, default=None,
                        help="default: 30 for the MLP, 10 for the CNN")
    p_demo.add_argument("--batch-size", type=int, default=32)
    sub.add_parser("bench", help="benchmarks against numpy / PyTorch / scikit-learn", add_help=False)
    sub.add_parser("info", help="version, SIMD path, OpenMP, threads")
    if argv and argv[0] == "bench":
        from cyneuron import _bench

        return _bench.main(argv[1:])
    args = parser.parse_args(argv)
    if args.command == "demo" and args.model == "cnn":
        demo_cnn(epochs=args.epochs or 10, batch_size=args.batch_size)
    elif args.command == "demo":
        demo(epochs=args.epochs or 30, batch_size=args.batch_size)
    elif args.command == "info":
        import cyneuron as cn

        cn.show_config()
    return 0


if __name__ == "__main__":
    sys.exit(main())
