"""cn.interop: Keras 3 models (live, jax backend, and .keras files read with zipfile +
h5py) and PyTorch modules / state dicts, with parity against the source framework."""
import os
import zipfile

import numpy as np
import pytest

import cyneuron as cn
from cyneuron import layers as L

rng = np.random.default_rng(3)


def x_of(*shape):
    return rng.normal(size=shape).astype(np.float32)


@pytest.fixture(scope="module")
def keras():
    os.environ.setdefault("KERAS_BACKEND", "jax")
    return pytest.importorskip("keras")


def _randomize_keras(model, seed=0):
    r = np.random.default_rng(seed)
    for w in model.weights:
        shape = tuple(w.shape)
        if "variance" in w.path:
            w.assign(r.uniform(0.5, 1.5, size=shape).astype("float32"))
        else:
            w.assign(r.normal(0, 0.5, size=shape).astype("float32"))


def _keras_models(keras):
    K = keras.layers
    models = {}
    models["mlp"] = (keras.Sequential([keras.Input((12,)), K.Dense(16, activation="relu"),
                                       K.Dropout(0.3), K.Dense(8, activation="gelu"),
                                       K.BatchNormalization(),
                                       K.Dense(3, activation="softmax")]), [x_of(5, 12)])
    models["cnn"] = (keras.Sequential([
        keras.Input((12, 12, 2)), K.Conv2D(4, 3, padding="same", activation="relu"),
        K.MaxPooling2D(), K.Conv2D(6, 3, strides=2, dilation_rate=1), K.LeakyReLU(0.2),
        K.ZeroPadding2D(1), K.AveragePooling2D(2, padding="same"),
        K.Conv2DTranspose(3, 3, strides=2, padding="same"), K.UpSampling2D(),
        K.GlobalAveragePooling2D(), K.Dense(2)]), [x_of(3, 12, 12, 2)])
    inp = keras.Input((6, 4))
    h = K.Bidirectional(K.LSTM(3, return_sequences=True))(inp)
    h = K.GRU(3, return_sequences=True, go_backwards=True)(h)
    a = K.MultiHeadAttention(2, 3)(h, h)
    h = K.LayerNormalization()(K.Add()([h, a]))
    h = K.TimeDistributed(K.Dense(2, activation="tanh"))(h)
    h = K.Conv1D(3, 3, padding="causal")(h)
    c = K.Concatenate()([K.SimpleRNN(4)(h), K.GlobalMaxPooling1D()(h)])
    models["sequence"] = (keras.Model(inp, [c, h]), [x_of(5, 6, 4)])
    ids = keras.Input((7,))
    e = K.Embedding(11, 5, mask_zero=True)(ids)
    models["masked"] = (keras.Model(ids, K.LSTM(4)(e)), None)
    return models


@pytest.mark.parametrize("name", ["mlp", "cnn", "sequence", "masked"])
@pytest.mark.parametrize("source", ["live", "file"])
def test_from_keras_parity(keras, name, source, tmp_path):
    model, xs = _keras_models(keras)[name]
    _randomize_keras(model)
    if xs is None:
        ids = rng.integers(1, 11, size=(6, 7)).astype(np.float32)
        ids[1, 4:] = 0
        ids[3, 1:] = 0
        xs = [ids]
    if source == "file":
        path = tmp_path / "model.keras"
        model.save(path)
        net = cn.interop.from_keras(str(path))
    else:
        net = cn.interop.from_keras(model)
    ref = model.predict(xs[0], verbose=0)
    refs = ref if isinstance(ref, list) else [ref]
    got = net.predict(xs[0])
    got = got if isinstance(got, list) else [got]
    for r, g in zip(refs, got):
        np.testing.assert_allclose(g, np.asarray(r), rtol=1e-4, atol=1e-5)


def test_keras_file_needs_no_keras(keras, tmp_path, monkeypatch):
    """The .keras reader uses zipfile + h5py only: with keras unimportable it still works."""
    model, xs = _keras_models(keras)["mlp"]
    path = tmp_path / "model.keras"
    model.save(path)
    ref = model.predict(xs[0], verbose=0)
    import sys
    monkeypatch.setitem(sys.modules, "keras", None)
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    net = cn.interop.from_keras(path)
    np.testing.assert_allclose(net.predict(xs[0]), ref, rtol=1e-4, atol=1e-5)


def test_from_keras_errors(keras, tmp_path):
    K = keras.layers
    odd = keras.Sequential([keras.Input((4, 4, 3)), K.Conv2D(2, 3, groups=1), K.Flatten(),
                            K.Dense(2), K.GaussianNoise(0.1)])
    with pytest.raises(ValueError, match="GaussianNoise"):
        cn.interop.from_keras(odd)
    grouped = keras.Sequential([keras.Input((4, 4, 4)), K.Conv2D(2, 3, groups=2)])
    with pytest.raises(ValueError, match="groups=2"):
        cn.interop.from_keras(grouped)
    gru = keras.Sequential([keras.Input((3, 2)), K.GRU(2, reset_after=False)])
    with pytest.raises(ValueError, match="reset_after"):
        cn.interop.from_keras(gru)
    bad = tmp_path / "bad.keras"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("hello.txt", "not a model")
    with pytest.raises(ValueError, match="not a Keras 3 .keras file"):
        cn.interop.from_keras(bad)
    notzip = tmp_path / "notzip.keras"
    notzip.write_bytes(b"plain bytes")
    with pytest.raises(ValueError, match="not a Keras 3 .keras file"):
        cn.interop.from_keras(notzip)
    with pytest.raises(TypeError, match="Keras model"):
        cn.interop.from_keras(42)


# -- PyTorch -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def test_from_torch_sequence_model(torch):
    nn = torch.nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 6)
            self.lstm = nn.LSTM(6, 5, num_layers=2, batch_first=True)
            self.gru = nn.GRU(5, 4, batch_first=True, bidirectional=True)
            self.rnn = nn.RNN(8, 8, batch_first=True, nonlinearity="relu")
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
            self.ln = nn.LayerNorm(8)
            self.fc = nn.Linear(8, 3)

        def forward(self, ids):
            h, _ = self.lstm(self.emb(ids))
            h, _ = self.gru(h)
            h, _ = self.rnn(h)
            a, _ = self.attn(h, h, h, need_weights=False)
            return self.fc(self.ln(h + a))

    torch.manual_seed(0)
    tm = Net().eval()
    inp = cn.Input((7,))
    h = L.Embedding(10, 6)(inp)
    h = L.LSTM(5, return_sequences=True)(h)
    h = L.LSTM(5, return_sequences=True)(h)
    h = L.Bidirectional(L.GRU(4, return_sequences=True))(h)
    h = L.SimpleRNN(8, activation="relu", return_sequences=True)(h)
    a = L.MultiHeadAttention(2, 4)(h, h)
    out = L.Dense(3)(L.LayerNormalization(epsilon=1e-5)(L.Add()([h, a])))
    like = cn.Model(inp, out)
    before = like.get_weights()
    ids = torch.randint(0, 10, (5, 7))
    for source in (tm, tm.state_dict()):
        net = cn.interop.from_torch(source, like=like)
        with torch.no_grad():
            ref = tm(ids).numpy()
        np.testing.assert_allclose(net.predict(ids.numpy().astype(np.float32)), ref,
                                   rtol=1e-4, atol=1e-5)
    for a, b in zip(like.get_weights(), before):       # `like` is left as it was
        np.testing.assert_array_equal(a, b)


def test_from_torch_cnn(torch):
    nn = torch.nn
    torch.manual_seed(1)
    tm = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                       nn.ConvTranspose2d(4, 3, 2, stride=2), nn.Conv2d(3, 2, 3, stride=2),
                       nn.Flatten(), nn.Linear(2 * 6 * 6, 3)).eval()
    bn = tm[1]
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.5, 1.5)
    like = cn.Sequential([cn.Input((7, 7, 2)), L.Conv2D(4, 3, padding="same"),
                          L.BatchNormalization(epsilon=1e-5), L.Activation("relu"),
                          L.Conv2DTranspose(3, 2, strides=2), L.Conv2D(2, 3, strides=2),
                          L.Permute((3, 1, 2)), L.Flatten(), L.Dense(3)])
    net = cn.interop.from_torch(tm, like=like)
    x = torch.randn(4, 2, 7, 7)
    with torch.no_grad():
        ref = tm(x).numpy()
    got = net.predict(x.numpy().transpose(0, 2, 3, 1))
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


def test_from_torch_conv1d(torch):
    nn = torch.nn
    tm = nn.Sequential(nn.Conv1d(3, 5, 3, dilation=2), nn.Tanh()).eval()
    like = cn.Sequential([cn.Input((12, 3)), L.Conv1D(5, 3, dilation_rate=2,
                                                      activation="tanh")])
    net = cn.interop.from_torch(tm.state_dict(), like=like)
    x = torch.randn(2, 3, 12)
    with torch.no_grad():
        ref = tm(x).numpy().transpose(0, 2, 1)
    np.testing.assert_allclose(net.predict(x.numpy().transpose(0, 2, 1)), ref, rtol=1e-4,
                               atol=1e-5)


def test_from_torch_mismatch_errors(torch):
    nn = torch.nn
    like = cn.Sequential([cn.Input((4,)), L.Dense(3), L.Dense(2)])
    before = like.get_weights()
    with pytest.raises(ValueError, match="2 weighted layers"):
        cn.interop.from_torch(nn.Sequential(nn.Linear(4, 3)), like=like)
    with pytest.raises(ValueError, match="shape"):
        cn.interop.from_torch(nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 5)), like=like)
    with pytest.raises(ValueError, match="no \\['weight'\\]"):
        cn.interop.from_torch({"0.kernel": torch.zeros(3, 4), "1.weight": torch.zeros(2, 3),
                               "1.bias": torch.zeros(2)}, like=like)
    with pytest.raises(TypeError, match="built cyneuron"):
        cn.interop.from_torch(nn.Linear(4, 3), like=cn.Sequential([L.Dense(3)]))
    with pytest.raises(TypeError, match="state dict"):
        cn.interop.from_torch([1, 2], like=like)
    for a, b in zip(like.get_weights(), before):
        np.testing.assert_array_equal(a, b)
