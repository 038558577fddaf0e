"""Write the seed corpus for fuzz_load_model.py: small, valid cyneuron files.

    python fuzz/make_corpus.py            # (re)writes fuzz/corpus/*.cyn

Each file is a few kB: tiny models of several layer kinds, with and without the
optimizer state, a weights-only file and an unbuilt model (no weights at all).
"""
import os
import sys

import numpy as np

import cyneuron as cn
from cyneuron import layers

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")


def _fit(model, x, y, loss, optimizer="adam"):
    model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])
    model.fit(x, y, epochs=1, batch_size=4, verbose=0)
    return model


def models():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 3)).astype(np.float32)
    y = rng.integers(0, 2, 8)
    dense = _fit(cn.Sequential([layers.Dense(4, activation="relu"),
                                layers.Dense(2, activation="softmax")]),
                 x, y, "sparse_categorical_crossentropy")
    yield "dense_adam", dense, "model"
    yield "dense_weights", dense, "weights"
    yield "dense_no_optimizer", dense, "model_no_optimizer"

    dense64 = cn.Sequential([layers.Dense(3, activation="tanh"), layers.BatchNormalization(),
                             layers.Dropout(0.1), layers.Dense(1)], dtype="float64")
    yield "dense64_bn_sgd", _fit(dense64, x.astype(np.float64), rng.standard_normal((8, 1)),
                                 "mse", cn.optimizers.SGD(0.01, momentum=0.9)), "model"

    img = rng.standard_normal((4, 5, 5, 1)).astype(np.float32)
    conv = cn.Sequential([layers.Conv2D(2, 3, padding="same", activation="relu"),
                          layers.MaxPooling2D(2), layers.Flatten(), layers.Dense(2)])
    yield "conv2d", _fit(conv, img, rng.integers(0, 2, 4), "sparse_categorical_crossentropy",
                         "rmsprop"), "model"

    seq = rng.standard_normal((4, 3, 2)).astype(np.float32)
    for name, cell in (("lstm", layers.LSTM), ("gru", layers.GRU), ("simplernn", layers.SimpleRNN)):
        rnn = cn.Sequential([cell(3), layers.Dense(1, activation="sigmoid")])
        yield name, _fit(rnn, seq, rng.integers(0, 2, 4), "binary_crossentropy"), "model"

    yield "unbuilt", cn.Sequential([layers.Dense(2)]), "model"


def main():
    os.makedirs(CORPUS, exist_ok=True)
    cn.set_seed(0)
    for name, model, kind in models():
        path = os.path.join(CORPUS, name + ".cyn")
        if kind == "weights":
            model.save_weights(path)
        else:
            model.save(path, include_optimizer=kind == "model")
        print(f"{path}: {os.path.getsize(path)} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
