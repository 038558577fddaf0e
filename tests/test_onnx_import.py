"""cn.onnx.load: models exported by cyneuron come back exactly; MLP / CNN / LSTM graphs
exported by PyTorch (torch.onnx.export with dynamo=False: the TorchScript exporter,
which needs no onnxscript and works offline) load as cyneuron models with the same
outputs; bad files and unsupported operators give clear errors."""
import warnings

import numpy as np
import pytest

import cyneuron as cn
from cyneuron import layers as L

onnx = pytest.importorskip("onnx")

rng = np.random.default_rng(7)


def x_of(*shape):
    return rng.normal(size=shape).astype(np.float32)


def _randomize(model, seed=0):
    r = np.random.default_rng(seed)
    for layer in model._all_layers():
        for w, name in zip(layer._weights, layer._weight_names):
            v = r.normal(0, 0.5, size=w.shape)
            if name.split("/")[-1] in ("moving_variance", "variance", "gamma"):
                v = np.abs(v) + 0.5
            w[...] = v


def _outputs(model, xs):
    out = model.predict(xs if len(xs) > 1 else xs[0])
    if isinstance(out, dict):
        return [out[k] for k in model.output_names]
    return out if isinstance(out, list) else [out]


@pytest.mark.parametrize("opset", [17, 21])
def test_roundtrip_cyneuron_models(opset, tmp_path):
    """Architecture and weights come back; predictions are identical."""
    models = []
    models.append((cn.Sequential([cn.Input((10, 10, 2)), L.Conv2D(4, 3, padding="same"),
                                  L.BatchNormalization(), L.MaxPooling2D(), L.Flatten(),
                                  L.Dropout(0.2), L.Dense(3, activation="softmax")]),
                   [x_of(4, 10, 10, 2)]))
    ids_in = cn.Input((6,))
    e = L.Embedding(12, 8, mask_zero=True)(ids_in)
    h = L.Bidirectional(L.GRU(4, return_sequences=True))(e)
    h = L.TransformerEncoder(2, 16)(L.Dense(8)(h))
    models.append((cn.Model(ids_in, [L.GlobalAveragePooling1D()(h), L.LSTM(3)(e)]),
                   [rng.integers(1, 12, size=(4, 6)).astype(np.float32)]))
    for model, xs in models:
        _randomize(model)
        path = tmp_path / "m.onnx"
        cn.onnx.export(model, path, opset=opset)
        net = cn.onnx.load(path)
        assert [type(layer).__name__ for layer in net.layers] == \
            [type(layer).__name__ for layer in model.layers]
        for a, b in zip(net.get_weights(), model.get_weights()):
            np.testing.assert_array_equal(a, b)
        for a, b in zip(_outputs(net, xs), _outputs(model, xs)):
            np.testing.assert_array_equal(a, b)


# -- PyTorch ----------------------------------------------------------------------------------
def _torch_export(module, x, path, opset=17):
    torch = pytest.importorskip("torch")
    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, x, str(path), input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
                          opset_version=opset, dynamo=False)


def _torch_modules():
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class Recurrent(nn.Module):
        def __init__(self, cls, last_state):
            super().__init__()
            self.rnn = cls(5, 8, batch_first=True)
            self.fc = nn.Linear(8, 3)
            self.last_state = last_state

        def forward(self, x):
            y, h = self.rnn(x)
            if self.last_state:
                h = h[0] if isinstance(h, tuple) else h
                return self.fc(h[-1])
            return self.fc(y[:, -1, :])

    return {
        "mlp": (nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 16), nn.Tanh(),
                              nn.Linear(16, 10), nn.Softmax(dim=-1)), (6, 12)),
        "mlp_bn": (nn.Sequential(nn.Linear(12, 16), nn.BatchNorm1d(16), nn.GELU(),
                                 nn.LayerNorm(16), nn.Linear(16, 4), nn.LogSoftmax(-1)),
                   (6, 12)),
        "lenet": (nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                                nn.Conv2d(6, 16, 5), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
                                nn.Linear(16 * 5 * 5, 32), nn.ReLU(), nn.Linear(32, 10)),
                  (4, 1, 28, 28)),
        "cnn_bn_gap": (nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1),
                                     nn.BatchNorm2d(4), nn.LeakyReLU(0.1),
                                     nn.Conv2d(4, 6, 3, dilation=2), nn.Hardswish(),
                                     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 2)),
                       (4, 3, 15, 13)),
        "cnn1d": (nn.Sequential(nn.Conv1d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool1d(2),
                                nn.Flatten(), nn.Linear(4 * 5, 2)), (4, 3, 10)),
        "lstm": (Recurrent(nn.LSTM, False), (4, 7, 5)),
        "lstm_hn": (Recurrent(nn.LSTM, True), (4, 7, 5)),
        "gru": (Recurrent(nn.GRU, False), (4, 7, 5)),
        "rnn": (Recurrent(nn.RNN, True), (4, 7, 5)),
    }


@pytest.mark.parametrize("name", ["mlp", "mlp_bn", "lenet", "cnn_bn_gap", "cnn1d", "lstm",
                                  "lstm_hn", "gru", "rnn"])
def test_load_pytorch_export(name, tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    module, shape = _torch_modules()[name]
    for p in module.parameters():
        torch.nn.init.normal_(p, 0, 0.3)
    for m in module.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    x = torch.randn(*shape)
    path = tmp_path / f"{name}.onnx"
    _torch_export(module, x, path)
    net = cn.onnx.load(path)
    with torch.no_grad():
        ref = module(x).numpy()
    np.testing.assert_allclose(net.predict(x.numpy()), ref, rtol=1e-4, atol=2e-5)
    np.testing.assert_allclose(net.predict(x.numpy()[:1]), ref[:1], rtol=1e-4, atol=2e-5)


def test_pytorch_lenet_is_channels_last_inside(tmp_path):
    """The NCHW graph becomes NHWC convolutions with one Permute in and one before Flatten."""
    pytest.importorskip("torch")
    module, shape = _torch_modules()["lenet"]
    import torch
    _torch_export(module, torch.randn(*shape), tmp_path / "lenet.onnx")
    net = cn.onnx.load(tmp_path / "lenet.onnx")
    kinds = [type(layer).__name__ for layer in net.layers]
    assert kinds.count("Permute") == 2
    assert kinds.count("Conv2D") == 2


# -- bad input ----------------------------------------------------------------------------------
def test_not_an_onnx_file(tmp_path):
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"this is not a protobuf \x00\xff\x13" * 7)
    with pytest.raises(ValueError, match="not an ONNX model"):
        cn.onnx.load(path)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="not an ONNX model"):
        cn.onnx.load(empty)
    with pytest.raises(FileNotFoundError):
        cn.onnx.load(tmp_path / "missing.onnx")


def _tiny_graph(op_types, opset=17):
    h = onnx.helper
    nodes, prev = [], "x"
    for i, op in enumerate(op_types):
        nodes.append(h.make_node(op, [prev], [f"v{i}"]))
        prev = f"v{i}"
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT,
                                                               ["n", 4])],
                         [h.make_tensor_value_info(prev, onnx.TensorProto.FLOAT, ["n", 4])])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", opset)])


def test_unsupported_operators_are_listed(tmp_path):
    path = tmp_path / "odd.onnx"
    onnx.save(_tiny_graph(["Relu", "Cos", "Sin", "Relu", "Cos"]), str(path))
    with pytest.raises(ValueError, match=r"cannot load: Cos, Sin \(supported"):
        cn.onnx.load(path)


def test_opset_outside_range(tmp_path):
    path = tmp_path / "old.onnx"
    onnx.save(_tiny_graph(["Relu"], opset=9), str(path))
    with pytest.raises(ValueError, match="opset 9 is not supported"):
        cn.onnx.load(path)


def test_small_generic_graph_loads(tmp_path):
    path = tmp_path / "relu.onnx"
    onnx.save(_tiny_graph(["Relu", "Sigmoid"]), str(path))
    net = cn.onnx.load(path)
    x = x_of(3, 4)
    np.testing.assert_allclose(net.predict(x), 1 / (1 + np.exp(-np.maximum(x, 0))), rtol=1e-6)


def test_damaged_cyneuron_weights(tmp_path):
    model = cn.Sequential([cn.Input((4,)), L.Dense(3)])
    path = tmp_path / "m.onnx"
    cn.onnx.export(model, path)
    proto = onnx.load(str(path))
    for t in proto.graph.initializer:
        if t.name.endswith("kernel"):
            t.CopyFrom(onnx.numpy_helper.from_array(np.zeros((5, 3), np.float32), t.name))
    onnx.save(proto, str(path))
    with pytest.raises(ValueError, match="shape"):
        cn.onnx.load(path)
