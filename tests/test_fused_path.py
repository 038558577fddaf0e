"""The fused fast path (GEMM epilogues, output activation fused with the loss) trains to
the same weights as the plain path (separate bias, activation and loss passes): float64,
10 optimizer steps, every fused pair."""
import numpy as np
import pytest

import cyneuron as cn
from cyneuron import _config, layers
from cyneuron._kernels.gemm import EPILOGUES

HIDDEN_FUSED = sorted(name for name in EPILOGUES
                      if name != "linear" and not cn.activations.get(name).needs_input)
OUTPUT_FUSED = [("softmax", "sparse_categorical_crossentropy"),
                ("softmax", "categorical_crossentropy"),
                ("sigmoid", "binary_crossentropy")]


@pytest.fixture
def fusion_restored():
    before = _config.fusion_enabled()
    yield
    _config.set_fusion(before)


def _data(loss, n=64, features=12, classes=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, features))
    if loss == "binary_crossentropy":
        return x, rng.integers(0, 2, (n, 1)).astype(np.float64), 1
    labels = rng.integers(0, classes, n)
    if loss == "categorical_crossentropy":
        return x, np.eye(classes)[labels], classes
    return x, labels, classes


def _train(fused, hidden, out_act, loss, optimizer):
    _config.set_fusion(fused)
    x, y, units = _data(loss)
    cn.set_seed(7)
    model = cn.Sequential([layers.Dense(16, activation=hidden), layers.Dense(9, activation=hidden),
                           layers.Dense(units, activation=out_act)], dtype="float64")
    model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])
    for step in range(10):
        batch = slice(16 * (step % 4), 16 * (step % 4 + 1))
        model.train_on_batch(x[batch], y[batch])
    return model.get_weights(), model.predict(x)


@pytest.mark.parametrize("out_act, loss", OUTPUT_FUSED)
@pytest.mark.parametrize("hidden", HIDDEN_FUSED)
def test_fused_path_gives_the_plain_path_weights(fusion_restored, hidden, out_act, loss):
    weights_fused, pred_fused = _train(True, hidden, out_act, loss, "adam")
    weights_plain, pred_plain = _train(False, hidden, out_act, loss, "adam")
    for wf, wp in zip(weights_fused, weights_plain):
        np.testing.assert_allclose(wf, wp, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(pred_fused, pred_plain, rtol=1e-10, atol=1e-12)


def test_plain_path_really_is_unfused(fusion_restored, monkeypatch):
    """With fusion off, the GEMM is never asked for an epilogue and the loss never sees logits."""
    from cyneuron.layers import dense

    calls = []
    real = dense.gemm

    def spy(*args, **kwargs):
        calls.append(len(args) > 3 or bool(kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(dense, "gemm", spy)
    _train(False, "relu", "softmax", "sparse_categorical_crossentropy", "sgd")
    assert calls and not any(calls)
    calls.clear()
    _train(True, "relu", "softmax", "sparse_categorical_crossentropy", "sgd")
    assert any(calls)


@pytest.mark.parametrize("hidden", HIDDEN_FUSED)
def test_hidden_derivative_rides_the_input_gradient_gemm(fusion_restored, monkeypatch, hidden):
    """Dense after Dense: the later layer's dx GEMM applies the earlier layer's activation
    derivative (act_out), and the earlier layer then skips its own backward pass."""
    from cyneuron.layers import dense

    fused_calls = []
    real = dense.gemm

    def spy(*args, **kwargs):
        if kwargs.get("act_out") is not None:
            fused_calls.append(args[4] if len(args) > 4 else kwargs.get("activation"))
        return real(*args, **kwargs)

    monkeypatch.setattr(dense, "gemm", spy)
    backward_calls = []
    activation = cn.activations.get(hidden)
    monkeypatch.setattr(type(activation), "backward",
                        lambda self, *a, **k: backward_calls.append(1) or
                        cn.activations._Elementwise.backward(self, *a, **k))
    _train(True, hidden, "softmax", "sparse_categorical_crossentropy", "sgd")
    code = EPILOGUES[hidden]
    assert fused_calls and set(fused_calls) == {code}
    assert not backward_calls            # both hidden derivatives were fused


def _train_encoder(fused, activation):
    _config.set_fusion(fused)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((12, 5, 8))
    y = rng.integers(0, 3, 12)
    cn.set_seed(11)
    model = cn.Sequential([layers.Input((5, 8)),
                           layers.TransformerEncoder(2, 16, activation=activation),
                           layers.GlobalAveragePooling1D(),
                           layers.Dense(3, activation="softmax")], dtype="float64")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    for step in range(4):
        batch = slice(6 * (step % 2), 6 * (step % 2 + 1))
        model.train_on_batch(x[batch], y[batch])
    return model.get_weights()


@pytest.mark.parametrize("activation", ["relu", "tanh", "gelu"])
def test_encoder_feed_forward_fuses_its_activation_derivative(fusion_restored, monkeypatch,
                                                              activation):
    """TransformerEncoder's feed-forward: the second Dense's input-gradient GEMM applies
    the first one's activation derivative where the epilogue has it (not gelu), and
    trains to the weights of the plain path."""
    from cyneuron.layers import dense

    fused_calls = []
    real = dense.gemm

    def spy(*args, **kwargs):
        if kwargs.get("act_out") is not None:
            fused_calls.append(args[4])
        return real(*args, **kwargs)

    monkeypatch.setattr(dense, "gemm", spy)
    fused = _train_encoder(True, activation)
    assert set(fused_calls) == (set() if activation == "gelu" else {EPILOGUES[activation]})
    for wf, wp in zip(fused, _train_encoder(False, activation)):
        np.testing.assert_allclose(wf, wp, rtol=1e-10, atol=1e-12)
