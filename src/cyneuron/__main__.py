"""Command line: python -m cyneuron demo | bench [matmul|mlp|sklearn|all] | info"""
import argparse
import sys
import time


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


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="python -m cyneuron", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser("demo", help="train an MLP on the digits data set")
    p_demo.add_argument("--epochs", type=int, default=30)
    p_demo.add_argument("--batch-size", type=int, default=32)
    sub.add_parser("bench", help="benchmarks against numpy / PyTorch / scikit-learn", add_help=False)
    sub.add_parser("info", help="version, SIMD path, OpenMP, threads")
    if argv and argv[0] == "bench":
        from cyneuron import _bench

        return _bench.main(argv[1:])
    args = parser.parse_args(argv)
    if args.command == "demo":
        demo(epochs=args.epochs, batch_size=args.batch_size)
    elif args.command == "info":
        import cyneuron as cn

        cn.show_config()
    return 0


if __name__ == "__main__":
    sys.exit(main())
