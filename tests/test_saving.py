"""model.save / cn.load_model / save_weights / load_weights: round trips for every layer
type, the file format (zip + JSON + raw little-endian arrays, no pickle), atomic writes,
and clear ValueErrors for truncated, corrupted, foreign and newer files."""
import json
import os
import pickle
import stat
import zipfile

import numpy as np
import pytest

import cyneuron as cn
from cyneuron import layers, saving
from cyneuron.layers import base as layer_base


def _adapted_normalization():
    layer = layers.Normalization()
    layer.adapt(np.random.default_rng(5).normal(2.0, 3.0, size=(40, 6)))
    return layer


# class name -> (factory of a whole layer stack using that layer, per-sample input shape).
# A new layer type adds its case here (for N-D outputs, end the stack with a layer that
# gives (batch, outputs), e.g. Flatten + Dense): the round trip runs on every case.
LAYER_CASES = {
    "Dense": (lambda: [layers.Dense(5, activation="tanh", use_bias=False),
                       layers.Dense(4, activation=cn.activations.LeakyReLU(0.1)),
                       layers.Dense(2)], (6,)),
    "Activation": (lambda: [layers.Dense(5), layers.Activation(cn.activations.ELU(0.7)),
                            layers.Dense(2)], (6,)),
    "LeakyReLU": (lambda: [layers.Dense(5), layers.LeakyReLU(0.25), layers.Dense(2)], (6,)),
    "ELU": (lambda: [layers.Dense(5), layers.ELU(0.5), layers.Dense(2)], (6,)),
    "PReLU": (lambda: [layers.Dense(5), layers.PReLU(alpha_initializer="ones"),
                       layers.Dense(2)], (6,)),
    "Maxout": (lambda: [layers.Maxout(4, 3, use_bias=False), layers.Dense(2)], (6,)),
    "Dropout": (lambda: [layers.Dense(5), layers.Dropout(0.3, noise_shape=(None, 5), seed=3),
                         layers.Dense(2)], (6,)),
    "BatchNormalization": (lambda: [layers.Dense(5),
                                    layers.BatchNormalization(momentum=0.5, center=False),
                                    layers.Dense(2)], (6,)),
    "LayerNormalization": (lambda: [layers.Dense(5), layers.LayerNormalization(epsilon=1e-4),
                                    layers.Dense(2)], (6,)),
    "Normalization": (lambda: [_adapted_normalization(), layers.Dense(5, activation="relu"),
                               layers.Dense(2)], (6,)),
    # spatial layers on (4, 5, 2) images or (7, 2) sequences
    "Reshape": (lambda: [layers.Reshape((5, 4, 2)), layers.Flatten(), layers.Dense(2)], (4, 5, 2)),
    "Flatten": (lambda: [layers.Flatten(), layers.Dense(2)], (4, 5, 2)),
    "ZeroPadding2D": (lambda: [layers.ZeroPadding2D((1, 2)), layers.Flatten(), layers.Dense(2)],
                      (4, 5, 2)),
    "Conv2D": (lambda: [layers.Conv2D(4, (2, 3), padding="same", activation="relu"),
                        layers.Conv2D(3, 1, strides=2, use_bias=False), layers.Flatten(),
                        layers.Dense(2)], (4, 5, 2)),
    "Conv1D": (lambda: [layers.Conv1D(3, 3, strides=2, activation="tanh"), layers.Flatten(),
                        layers.Dense(2)], (7, 2)),
    "MaxPooling2D": (lambda: [layers.MaxPooling2D(2, padding="same"), layers.Flatten(),
                              layers.Dense(2)], (4, 5, 2)),
    "AveragePooling2D": (lambda: [layers.AveragePooling2D((1, 2), strides=1), layers.Flatten(),
                                  layers.Dense(2)], (4, 5, 2)),
    "MaxPooling1D": (lambda: [layers.MaxPooling1D(2), layers.Flatten(), layers.Dense(2)], (7, 2)),
    "AveragePooling1D": (lambda: [layers.AveragePooling1D(3, strides=1), layers.Flatten(),
                                  layers.Dense(2)], (7, 2)),
    "GlobalMaxPooling2D": (lambda: [layers.Conv2D(4, 2), layers.GlobalMaxPooling2D(),
                                    layers.Dense(2)], (4, 5, 2)),
    "GlobalAveragePooling2D": (lambda: [layers.Conv2D(4, 2), layers.GlobalAveragePooling2D(),
                                        layers.Dense(2)], (4, 5, 2)),
    "GlobalMaxPooling1D": (lambda: [layers.Conv1D(4, 2), layers.GlobalMaxPooling1D(),
                                    layers.Dense(2)], (7, 2)),
    "GlobalAveragePooling1D": (lambda: [layers.Conv1D(4, 2), layers.GlobalAveragePooling1D(),
                                        layers.Dense(2)], (7, 2)),
    # recurrent layers on (3, 2) sequences
    "SimpleRNN": (lambda: [layers.SimpleRNN(4, go_backwards=True), layers.Dense(2)], (3, 2)),
    "LSTM": (lambda: [layers.LSTM(4, return_sequences=True), layers.Flatten(), layers.Dense(2)],
             (3, 2)),
    "GRU": (lambda: [layers.GRU(3, activation="relu"), layers.Dense(2)], (3, 2)),
    "Bidirectional": (lambda: [layers.Bidirectional(layers.GRU(3), merge_mode="sum"),
                               layers.Dense(2)], (3, 2)),
    "TimeDistributed": (lambda: [layers.TimeDistributed(layers.Dense(4, activation="tanh")),
                                 layers.Flatten(), layers.Dense(2)], (3, 2)),
    # N-D and up-sampling layers
    "Conv2DTranspose": (lambda: [layers.Conv2DTranspose(3, 3, strides=2, padding="same",
                                                        output_padding=1, activation="relu"),
                                 layers.Conv2DTranspose(2, (2, 3), use_bias=False,
                                                        activation="hard_swish"),
                                 layers.Flatten(), layers.Dense(2)], (4, 5, 2)),
    "UpSampling2D": (lambda: [layers.UpSampling2D((2, 1), interpolation="bilinear"),
                              layers.UpSampling2D(2), layers.Flatten(), layers.Dense(2)],
                     (4, 5, 2)),
    "UpSampling1D": (lambda: [layers.UpSampling1D(3), layers.Flatten(), layers.Dense(2)], (7, 2)),
    "Cropping2D": (lambda: [layers.Cropping2D(((1, 0), (2, 1))), layers.Flatten(),
                            layers.Dense(2)], (4, 5, 2)),
    "Cropping1D": (lambda: [layers.Cropping1D((2, 1)), layers.Flatten(), layers.Dense(2)], (7, 2)),
    "Permute": (lambda: [layers.Permute((2, 1, 3)), layers.Dense(3, activation="relu6"),
                         layers.Flatten(), layers.Dense(2)], (4, 5, 2)),
    "RepeatVector": (lambda: [layers.Dense(3), layers.RepeatVector(4), layers.Flatten(),
                              layers.Dense(2)], (6,)),
    "RBF": (lambda: [layers.RBF(5, gamma=0.3, kernel="inverse_multiquadric"),
                     layers.RBF(4, trainable_gamma=False), layers.Dense(2)], (6,)),
}
LAYER_CASES.update({
    "TransformerEncoder": (lambda: [layers.TransformerEncoder(2, 8, activation="gelu",
                                                              norm_first=True),
                                    layers.TransformerEncoder(2, 8), layers.Flatten(),
                                    layers.Dense(2)], (5, 6)),
    "PositionalEncoding": (lambda: [layers.PositionalEncoding(), layers.Flatten(),
                                    layers.Dense(2)], (5, 4)),
})

# layers whose round trip needs other inputs than LAYER_CASES' floats: own tests below
OTHER_ROUND_TRIPS = {"Embedding": "test_round_trip_embedding",
                     **{name: "test_functional.py::test_save_load_round_trip_functional"
                        for name in ("InputLayer", "Add", "Subtract", "Multiply", "Average",
                                     "Maximum", "Minimum", "Concatenate", "Dot")},
                     "MultiHeadAttention":
                         "test_attention_layer.py::test_cross_attention_graph_trains_and_saves",
                     **{name: "test_transformer.py::test_padding_mask_flows_through_encoder_graph"
                        for name in ("TokenAndPositionEmbedding", "TransformerDecoder")},
                     **{name: "test_tree.py::test_tree_model_trains_saves_and_masks_padding"
                        for name in ("TreeRNN", "TreeLSTM")}}


def _data(n=32, shape=(6,), outputs=2, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n,) + tuple(shape)).astype(dtype),
            rng.standard_normal((n, outputs)).astype(dtype))


def _trained_model(case, dtype="float32", optimizer=None):
    cn.set_seed(1)
    stack, shape = LAYER_CASES[case]
    model = cn.Sequential(stack(), dtype=dtype)
    model.compile(optimizer=optimizer or cn.optimizers.Adam(0.01), loss="mse", metrics=["mae"])
    model.build(shape)
    x, y = _data(shape=shape, outputs=model.output_shape[-1], dtype=dtype)
    model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    return model


def _assert_same_model(a, b, config=True):
    if config:
        assert a.get_config() == b.get_config()
    wa, wb = a.get_weights(), b.get_weights()
    assert len(wa) == len(wb)
    for u, v in zip(wa, wb):
        assert u.dtype == v.dtype and u.shape == v.shape
        np.testing.assert_array_equal(u, v)


def test_every_layer_type_has_a_round_trip_case():
    missing = sorted(set(layer_base._LAYER_CLASSES) - set(LAYER_CASES) - set(OTHER_ROUND_TRIPS))
    assert not missing, (f"layer classes without a save/load round-trip case in "
                         f"tests/test_saving.py: {missing}")


def test_round_trip_embedding(tmp_path):
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 7, (32, 5))
    y = rng.standard_normal((32, 2)).astype(np.float32)
    cn.set_seed(1)
    model = cn.Sequential([layers.Embedding(7, 3, mask_zero=True), layers.LSTM(4),
                           layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    model.fit(ids, y, epochs=2, batch_size=8, verbose=0)
    model.save(tmp_path / "embedding.cyn")
    loaded = cn.load_model(tmp_path / "embedding.cyn")
    _assert_same_model(model, loaded)
    np.testing.assert_array_equal(model.predict(ids), loaded.predict(ids))


@pytest.mark.parametrize("case", sorted(LAYER_CASES))
def test_round_trip_every_layer(case, tmp_path):
    model = _trained_model(case)
    path = tmp_path / "model.cyn"
    model.save(path)
    loaded = cn.load_model(path)
    _assert_same_model(model, loaded)
    x, y = _data(shape=LAYER_CASES[case][1], outputs=model.output_shape[-1], seed=2)
    np.testing.assert_array_equal(model.predict(x), loaded.predict(x))
    assert loaded.evaluate(x, y) == model.evaluate(x, y)
    # optimizer state came along: the next steps match exactly (dropout seeds included)
    assert loaded.optimizer.iterations == model.optimizer.iterations
    for name, value in model.optimizer.slots.items():
        np.testing.assert_array_equal(loaded.optimizer.slots[name], value)
    for layer in loaded.layers:   # dropout draws from its own seeded stream
        if isinstance(layer, layers.Dropout):
            layer._rng = np.random.default_rng(99)
    for layer in model.layers:
        if isinstance(layer, layers.Dropout):
            layer._rng = np.random.default_rng(99)
    for _ in range(2):
        assert loaded.train_on_batch(x, y) == model.train_on_batch(x, y)
    _assert_same_model(model, loaded)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dtype_survives(dtype, tmp_path):
    model = _trained_model("Dense", dtype=dtype)
    model.save(tmp_path / "m.cyn")
    loaded = cn.load_model(tmp_path / "m.cyn")
    assert loaded.dtype == np.dtype(dtype)
    assert all(w.dtype == np.dtype(dtype) for w in loaded.get_weights())
    _assert_same_model(model, loaded)


def test_compile_settings_survive(tmp_path):
    schedule = cn.schedules.ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5)
    model = _trained_model("Dense", optimizer=cn.optimizers.SGD(schedule, momentum=0.9,
                                                                nesterov=True, clipnorm=2.0))
    model.compile(optimizer=model.optimizer, loss=cn.losses.Huber(delta=0.5),
                  metrics=["mae", cn.metrics.MeanSquaredError()])
    model.save(tmp_path / "m.cyn")
    loaded = cn.load_model(tmp_path / "m.cyn")
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    assert loaded.loss.get_config() == model.loss.get_config()
    assert [m.get_config() for m in loaded.metrics] == [m.get_config() for m in model.metrics]
    assert loaded.optimizer.learning_rate == model.optimizer.learning_rate


def test_compile_false_and_without_optimizer_state(tmp_path):
    model = _trained_model("Dense")
    model.save(tmp_path / "a.cyn", include_optimizer=False)
    loaded = cn.load_model(tmp_path / "a.cyn")
    assert loaded.optimizer.iterations == 0 and loaded.optimizer.slots == {}
    bare = cn.load_model(tmp_path / "a.cyn", compile=False)
    assert bare.optimizer is None and bare.loss is None
    x, _ = _data()
    np.testing.assert_array_equal(bare.predict(x), model.predict(x))


def test_unbuilt_and_uncompiled_models(tmp_path):
    model = cn.Sequential([layers.Dense(3, activation="relu"), layers.Dense(1)], name="tiny")
    model.save(tmp_path / "u.cyn")
    loaded = cn.load_model(tmp_path / "u.cyn")
    assert not loaded.built and loaded.optimizer is None
    assert loaded.get_config() == model.get_config() and loaded.name == "tiny"
    model.build((4,))
    model.save(tmp_path / "b.cyn")
    loaded = cn.load_model(tmp_path / "b.cyn")
    assert loaded.built and loaded.input_shape == (4,)
    _assert_same_model(model, loaded)


def test_weights_only(tmp_path):
    model = _trained_model("BatchNormalization")
    path = tmp_path / "w.cyn"
    model.save_weights(path)
    same = cn.Sequential(LAYER_CASES["BatchNormalization"][0]())
    same.load_weights(path)          # unbuilt: built from the file's input shape
    x, _ = _data()
    np.testing.assert_array_equal(same.predict(x), model.predict(x))
    with pytest.raises(ValueError, match="only weights"):
        cn.load_model(path)
    other = cn.Sequential([layers.Dense(7), layers.Dense(2)])
    with pytest.raises(ValueError, match="do not fit the model"):
        other.load_weights(path)
    with pytest.raises(ValueError, match="build it"):
        cn.Sequential([layers.Dense(2)]).save_weights(tmp_path / "x.cyn")
    # a full model file also works as a weights source
    model.save(tmp_path / "full.cyn")
    again = cn.Sequential(LAYER_CASES["BatchNormalization"][0]())
    again.load_weights(tmp_path / "full.cyn")
    _assert_same_model(model, again, config=False)


def test_file_layout_is_zip_json_and_raw_little_endian(tmp_path):
    model = _trained_model("Dense", dtype="float64")
    path = tmp_path / "m.cyn"
    model.save(path)
    with zipfile.ZipFile(path) as zf:
        header = json.loads(zf.read("cyneuron.json"))
        assert header["format"] == "cyneuron"
        assert header["format_version"] == saving.FORMAT_VERSION
        assert header["cyneuron_version"] == cn.__version__
        assert header["model"] == model.get_config()
        first = header["weights"][0]
        assert (first["layer"], first["name"], first["dtype"]) == (model.layers[0].name,
                                                                   "kernel", "<f8")
        raw = np.frombuffer(zf.read(first["path"]), dtype="<f8").reshape(first["shape"])
        np.testing.assert_array_equal(raw, model.layers[0].kernel)
        assert all(info.compress_type == zipfile.ZIP_STORED for info in zf.infolist())


def test_loader_never_unpickles():
    source = open(saving.__file__).read()
    assert "import pickle" not in source and "allow_pickle" not in source
    assert "np.load(" not in source


# -- bad files ------------------------------------------------------------------------------
def _rewrite(path, edit_header=None, edit_members=None):
    """Rewrite the archive at `path` with its header and members changed."""
    with zipfile.ZipFile(path) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    header = json.loads(members.pop("cyneuron.json"))
    if edit_header:
        edit_header(header)
    if edit_members:
        edit_members(members, header)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("cyneuron.json", json.dumps(header))
        for name, data in members.items():
            zf.writestr(name, data)


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "m.cyn"
    _trained_model("BatchNormalization").save(path)
    return path


def test_truncated_files(saved):
    data = saved.read_bytes()
    for size in (0, 10, len(data) // 3, len(data) // 2, len(data) - 30, len(data) - 1):
        saved.write_bytes(data[:size])
        with pytest.raises(ValueError, match="not a cyneuron model file|truncated|corrupted"):
            cn.load_model(saved)


def test_corrupted_bytes_fail_the_checksum(saved):
    data = bytearray(saved.read_bytes())
    with zipfile.ZipFile(saved) as zf:
        info = zf.getinfo("weights/00000.bin")
    offset = info.header_offset + 30 + len(info.filename) + len(info.extra) + 3
    data[offset] ^= 0xFF
    saved.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupted"):
        cn.load_model(saved)


@pytest.mark.parametrize("content", [b"", b"hello world", b"PK\x03\x04garbage", os.urandom(300)])
def test_not_a_model_file(tmp_path, content):
    path = tmp_path / "junk.cyn"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="not a cyneuron model file"):
        cn.load_model(path)


def test_zip_of_something_else(tmp_path):
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.txt", "hi")
    with pytest.raises(ValueError, match="no cyneuron.json"):
        cn.load_model(path)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("cyneuron.json", json.dumps({"format": "keras", "format_version": 1}))
    with pytest.raises(ValueError, match="wrong format tag"):
        cn.load_model(path)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("cyneuron.json", "{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        cn.load_model(path)


def test_newer_format_version(saved):
    _rewrite(saved, lambda h: h.update(format_version=saving.FORMAT_VERSION + 1))
    with pytest.raises(ValueError, match="upgrade cyneuron"):
        cn.load_model(saved)


@pytest.mark.parametrize("edit, message", [
    (lambda h: h["weights"][0].update(dtype="|O"), "allowed"),
    (lambda h: h["weights"][0].update(dtype="<i8"), "allowed"),
    (lambda h: h["weights"][0].update(shape=[2, -1]), "invalid shape"),
    (lambda h: h["weights"][0].update(shape=[1000, 1000]), "bytes; expected"),
    (lambda h: h["weights"][0].update(path="weights/nope.bin"), "missing"),
    (lambda h: h["weights"].pop(), "do not fit the model"),
    (lambda h: h["model"]["layers"][0].update(class_name="os.system"), "unknown layer class"),
    (lambda h: h["model"]["layers"][0]["config"].update(units=-3), "invalid config"),
    (lambda h: h["model"]["layers"][0]["config"].update(evil="x"), "invalid config"),
    (lambda h: h["compile"]["loss"].update(name="nope"), "compile settings"),
    (lambda h: h["optimizer_state"]["slots"].pop(), "optimizer state"),
    (lambda h: h.update(kind="pickle"), "kind"),
])
def test_malformed_headers(saved, edit, message):
    _rewrite(saved, edit)
    with pytest.raises(ValueError, match=message):
        cn.load_model(saved)


def test_a_pickle_payload_is_never_executed(saved, tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    def plant(members, header):
        members[header["weights"][0]["path"]] = pickle.dumps(Exploit())
        header["weights"][0]["dtype"] = "|O"
    _rewrite(saved, edit_members=plant)
    with pytest.raises(ValueError):
        cn.load_model(saved)
    assert not marker.exists()


# -- atomic writes ----------------------------------------------------------------------------
def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "m.cyn"
    model = _trained_model("Dense")
    model.save(path)
    before = path.read_bytes()

    def broken(fileobj, text, arrays):
        fileobj.write(b"PK half a file")
        raise OSError("disk full")

    monkeypatch.setattr(saving, "_write_zip", broken)
    with pytest.raises(OSError, match="disk full"):
        model.save(path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["m.cyn"]
    with pytest.raises(OSError, match="disk full"):
        model.save(tmp_path / "new.cyn")
    assert sorted(os.listdir(tmp_path)) == ["m.cyn"]


def test_unserializable_config_is_refused_before_writing(tmp_path):
    class Odd(layers.Dense):
        def get_config(self):
            return {**super().get_config(), "extra": object()}

    model = cn.Sequential([Odd(2)])
    model.build((3,))
    with pytest.raises(ValueError, match="JSON"):
        model.save(tmp_path / "m.cyn")
    assert os.listdir(tmp_path) == []


def test_saved_file_has_a_normal_mode(tmp_path):
    umask = os.umask(0o022)
    try:
        _trained_model("Dense").save(tmp_path / "m.cyn")
    finally:
        os.umask(umask)
    assert stat.S_IMODE(os.stat(tmp_path / "m.cyn").st_mode) == 0o644


def test_directory_and_missing_paths(tmp_path):
    with pytest.raises(IsADirectoryError):
        cn.load_model(tmp_path)
    with pytest.raises(FileNotFoundError):
        cn.load_model(tmp_path / "absent.cyn")


# -- custom layers, configs, pickling ----------------------------------------------------------
class Scale(layers.Layer):
    """A user layer: y = factor * x."""

    def __init__(self, factor=2.0, name=None, dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.factor = float(factor)

    def _forward(self, x, training):
        self._last_output_shape = x.shape
        return x * self.factor

    def _backward(self, grad_output, need_input_grad):
        return grad_output * self.factor

    def get_config(self):
        return {"name": self.name, "factor": self.factor}


def test_custom_layer_needs_custom_objects(tmp_path):
    model = cn.Sequential([layers.Dense(3), Scale(3.0), layers.Dense(1)])
    model.build((2,))
    model.save(tmp_path / "c.cyn")
    with pytest.raises(ValueError, match="unknown layer class 'Scale'"):
        cn.load_model(tmp_path / "c.cyn")
    loaded = cn.load_model(tmp_path / "c.cyn", custom_objects={"Scale": Scale})
    assert loaded.layers[1].factor == 3.0
    x = np.ones((4, 2), np.float32)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


def test_config_round_trip_without_files():
    model = cn.Sequential([layers.Dense(4, activation="gelu"), layers.Dropout(0.5),
                           layers.Dense(2, activation="softmax")], dtype="float64")
    model.build((3,))
    clone = cn.Sequential.from_config(json.loads(json.dumps(model.get_config())))
    assert clone.get_config() == model.get_config()
    assert clone.dtype == np.float64 and clone.built
    spec = layers.serialize(model.layers[0])
    assert spec["class_name"] == "Dense"
    assert layers.deserialize(spec).get_config() == model.layers[0].get_config()
    with pytest.raises(ValueError):
        layers.deserialize({"class_name": "Dense"} | {"config": "units=3"})


def test_pickled_model_keeps_training_consistently():
    model = _trained_model("BatchNormalization")
    clone = pickle.loads(pickle.dumps(model))
    _assert_same_model(model, clone)
    # the clone's layers are views of its flat buffer again: a step changes what predict sees
    first = clone.layers[0]
    assert np.shares_memory(first.kernel, clone._params)
    x, y = _data(seed=3)
    assert clone.train_on_batch(x, y) == model.train_on_batch(x, y)
    np.testing.assert_array_equal(clone.predict(x), model.predict(x))
