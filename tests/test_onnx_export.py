"""ONNX export: every layer, whole Sequential and functional models, checked by
onnx.checker and run in onnxruntime against model.predict (float32 tolerance)."""
import numpy as np
import pytest

import cyneuron as cn
from cyneuron import layers as L

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

RTOL, ATOL = 1e-4, 2e-5


def _randomize(model, seed=0):
    """Weights away from their initial values (variances stay positive)."""
    rng = np.random.default_rng(seed)
    for layer in model._all_layers():
        for w, name in zip(layer._weights, layer._weight_names):
            v = rng.normal(0, 0.5, size=w.shape)
            if name.split("/")[-1] in ("moving_variance", "variance", "gamma"):
                v = np.abs(v) + 0.5
            w[...] = v


def run_onnx(path_or_bytes, xs):
    sess = ort.InferenceSession(path_or_bytes, providers=["CPUExecutionProvider"])
    feeds = {i.name: np.asarray(x, np.float32) for i, x in zip(sess.get_inputs(), xs)}
    return sess.run(None, feeds)


def check_export(model, xs, tmp_path, opset=None, randomize=True, atol=ATOL, rtol=RTOL):
    """Export (opsets 17 and 21 unless one is given), check and run; outputs equal
    predict's at two batch sizes."""
    xs = xs if isinstance(xs, list) else [xs]
    if randomize:
        _randomize(model)
    for version in (17, 21) if opset is None else (opset,):
        path = tmp_path / f"model{version}.onnx"
        cn.onnx.export(model, path, opset=version)
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto, full_check=True)
        assert proto.opset_import[0].version == version
        for n in (len(xs[0]), 1):
            part = [x[:n] for x in xs]
            ref = model.predict(part if len(part) > 1 else part[0])
            refs = [ref[k] for k in model.output_names] if isinstance(ref, dict) else \
                ref if isinstance(ref, list) else [ref]
            got = run_onnx(str(path), part)
            assert len(got) == len(refs)
            for r, o in zip(refs, got):
                assert o.shape == r.shape
                np.testing.assert_allclose(o, r, rtol=rtol, atol=atol)
    return proto


def seq(shape, *layers):
    return cn.Sequential([cn.Input(shape)] + list(layers))


rng = np.random.default_rng(42)


def x_of(*shape):
    return rng.normal(size=shape).astype(np.float32)


ACTIVATIONS = ["linear", "binary_step", "sigmoid", "hard_sigmoid", "tanh", "relu",
               {"name": "leaky_relu", "negative_slope": 0.1}, {"name": "elu", "alpha": 0.7},
               "selu", "gelu", "gelu_tanh", "swish", "mish", "softplus", "softsign", "relu6",
               "hard_tanh", "exponential", "hard_swish", "softmax", "log_softmax"]


@pytest.mark.parametrize("opset", [17, 20])
@pytest.mark.parametrize("act", ACTIVATIONS, ids=lambda a: a if isinstance(a, str) else a["name"])
def test_activation(act, opset, tmp_path):
    x = x_of(6, 3, 5) * 2
    if act == "binary_step":
        x[np.abs(x) < 1e-3] = 0.5          # away from the threshold
    check_export(seq((3, 5), L.Activation(act)), x, tmp_path, opset=opset)


def test_activation_layers(tmp_path):
    model = seq((4, 5), L.LeakyReLU(0.2), L.ELU(0.5), L.PReLU(shared_axes=[1]),
                L.Flatten(), L.Maxout(3, 4))
    check_export(model, x_of(7, 4, 5), tmp_path)


@pytest.mark.parametrize("opset", [17, 18, 19, 20, 21])
def test_dense_nd_every_opset(opset, tmp_path):
    model = seq((3, 4, 5), L.Dense(6, activation="tanh"), L.Dense(2, use_bias=False))
    check_export(model, x_of(5, 3, 4, 5), tmp_path, opset=opset)


@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("strides,dilation", [(1, 1), (2, 1), (1, 2), ((2, 1), 1)])
def test_conv2d(padding, strides, dilation, tmp_path):
    model = seq((9, 8, 3), L.Conv2D(4, (3, 2), strides=strides, dilation_rate=dilation,
                                    padding=padding, activation="relu"))
    check_export(model, x_of(3, 9, 8, 3), tmp_path)


@pytest.mark.parametrize("padding", ["valid", "same", "causal"])
@pytest.mark.parametrize("strides,dilation", [(1, 1), (2, 1), (1, 3)])
def test_conv1d(padding, strides, dilation, tmp_path):
    model = seq((11, 3), L.Conv1D(5, 3, strides=strides, dilation_rate=dilation,
                                  padding=padding, use_bias=False))
    check_export(model, x_of(3, 11, 3), tmp_path)


@pytest.mark.parametrize("padding,output_padding,strides,dilation",
                         [("valid", None, 2, 1), ("same", None, 2, 1), ("same", 1, 2, 1),
                          ("valid", 1, 3, 1), ("same", None, 1, 2), ("valid", None, 1, 1)])
def test_conv2d_transpose(padding, output_padding, strides, dilation, tmp_path):
    model = seq((5, 4, 3), L.Conv2DTranspose(4, 3, strides=strides, padding=padding,
                                             output_padding=output_padding,
                                             dilation_rate=dilation, activation="sigmoid"))
    check_export(model, x_of(2, 5, 4, 3), tmp_path)


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_pooling(padding, tmp_path):
    model = seq((9, 7, 3), L.MaxPooling2D(3, strides=2, padding=padding),
                L.AveragePooling2D(2, padding=padding))
    check_export(model, x_of(3, 9, 7, 3), tmp_path)
    model = seq((11, 3), L.MaxPooling1D(3, strides=2, padding=padding),
                L.AveragePooling1D(2, padding=padding))
    check_export(model, x_of(3, 11, 3), tmp_path)


@pytest.mark.parametrize("opset", [17, 18])
def test_global_pooling(opset, tmp_path):
    inp = cn.Input((6, 5, 3))
    outs = [L.GlobalMaxPooling2D()(inp), L.GlobalAveragePooling2D(keepdims=True)(inp)]
    check_export(cn.Model(inp, outs), x_of(3, 6, 5, 3), tmp_path, opset=opset)
    inp = cn.Input((6, 3))
    outs = [L.GlobalMaxPooling1D(keepdims=True)(inp), L.GlobalAveragePooling1D()(inp)]
    check_export(cn.Model(inp, outs), x_of(3, 6, 3), tmp_path, opset=opset)


def test_normalization_layers(tmp_path):
    norm = L.Normalization(axis=-1)
    data = x_of(50, 4, 5) * 3 + 1
    norm.adapt(data)
    model = seq((4, 5), norm, L.BatchNormalization(), L.BatchNormalization(axis=1),
                L.LayerNormalization(), L.LayerNormalization(axis=[1, 2], center=False),
                L.Normalization(axis=1, mean=np.arange(4.0), variance=np.arange(1, 5.0),
                                invert=True))
    x = data[:6]
    _randomize(model)
    model.layers[0].adapt(data)
    check_export(model, x, tmp_path, randomize=False)


def test_reshaping_layers(tmp_path):
    model = seq((6, 4, 2), L.ZeroPadding2D(((1, 2), (0, 1))), L.Cropping2D(((1, 0), (2, 1))),
                L.UpSampling2D((2, 3)), L.UpSampling2D(2, interpolation="bilinear"),
                L.Permute((2, 1, 3)), L.Reshape((-1, 2)), L.Cropping1D((3, 2)),
                L.UpSampling1D(3), L.Flatten(), L.RepeatVector(3), L.Dropout(0.5))
    check_export(model, x_of(3, 6, 4, 2), tmp_path)


def test_rbf(tmp_path):
    for kernel in ("gaussian", "multiquadric", "inverse_multiquadric"):
        model = seq((4,), L.RBF(5, gamma=0.3, kernel=kernel))
        check_export(model, x_of(6, 4), tmp_path, randomize=False)


@pytest.mark.parametrize("cls", [L.SimpleRNN, L.LSTM, L.GRU])
@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("return_sequences", [False, True])
def test_recurrent(cls, go_backwards, return_sequences, tmp_path):
    model = seq((7, 3), cls(4, go_backwards=go_backwards, return_sequences=return_sequences))
    check_export(model, x_of(5, 7, 3), tmp_path)


@pytest.mark.parametrize("cls,kwargs", [
    (L.SimpleRNN, {"activation": "relu"}), (L.LSTM, {"recurrent_activation": "hard_sigmoid"}),
    (L.GRU, {"activation": "linear", "use_bias": False}), (L.LSTM, {"use_bias": False})])
def test_recurrent_options(cls, kwargs, tmp_path):
    model = seq((6, 3), cls(4, return_sequences=True, **kwargs))
    check_export(model, x_of(5, 6, 3) * 0.5, tmp_path)


@pytest.mark.parametrize("merge_mode", ["concat", "sum", "ave", "mul"])
@pytest.mark.parametrize("return_sequences", [False, True])
def test_bidirectional(merge_mode, return_sequences, tmp_path):
    model = seq((6, 3), L.Bidirectional(L.LSTM(4, return_sequences=return_sequences),
                                        merge_mode=merge_mode))
    check_export(model, x_of(4, 6, 3), tmp_path)


@pytest.mark.parametrize("cls", [L.SimpleRNN, L.LSTM, L.GRU])
def test_masked_recurrent(cls, tmp_path):
    """Post-padded id sequences (ids 0 at the end) through Embedding(mask_zero=True)."""
    ids = rng.integers(1, 9, size=(6, 7)).astype(np.float32)
    for i, n in enumerate([7, 5, 1, 3, 6, 2]):
        ids[i, n:] = 0
    inp = cn.Input((7,))
    e = L.Embedding(9, 4, mask_zero=True)(inp)
    outs = [cls(3, return_sequences=True)(e), cls(3)(e), cls(3, go_backwards=True)(e),
            cls(3, go_backwards=True, return_sequences=True)(e),
            L.Bidirectional(cls(3, return_sequences=True))(e), L.Bidirectional(cls(2))(e)]
    check_export(cn.Model(inp, outs), ids, tmp_path)


def test_embeddings_and_time_distributed(tmp_path):
    inp = cn.Input((5,))
    a = L.Embedding(10, 4)(inp)
    b = L.TokenAndPositionEmbedding(10, 8, 4)(inp)
    h = L.TimeDistributed(L.Dense(3, activation="relu"))(L.Add()([a, b]))
    c = L.PositionalEncoding()(h)
    ids = rng.integers(0, 10, size=(4, 5)).astype(np.float32)
    check_export(cn.Model(inp, [h, c]), ids, tmp_path)


def test_merge_layers(tmp_path):
    a, b = cn.Input((3, 4)), cn.Input((3, 4))
    outs = [L.Add()([a, b]), L.Subtract()([a, b]), L.Multiply()([a, b, a]),
            L.Average()([a, b]), L.Maximum()([a, b]), L.Minimum()([a, b]),
            L.Concatenate(axis=1)([a, b]), L.Concatenate()([a, b]), L.Dot(axes=2)([a, b]),
            L.Dot(axes=(1, 1), normalize=True)([a, b])]
    check_export(cn.Model([a, b], outs), [x_of(5, 3, 4), x_of(5, 3, 4)], tmp_path)
    a, b = cn.Input((6,)), cn.Input((6,))
    check_export(cn.Model([a, b], L.Dot(axes=1)([a, b])), [x_of(5, 6), x_of(5, 6)], tmp_path)


def test_multi_head_attention(tmp_path):
    q, v, k = cn.Input((5, 6)), cn.Input((4, 3)), cn.Input((4, 2))
    out1 = L.MultiHeadAttention(2, 3)(q, v)
    out2 = L.MultiHeadAttention(3, 2, value_dim=4, output_shape=5)(q, v, key=k)
    out3 = L.MultiHeadAttention(2, 3, use_bias=False)(q, q, use_causal_mask=True)
    model = cn.Model([q, v, k], [out1, out2, out3])
    check_export(model, [x_of(3, 5, 6), x_of(3, 4, 3), x_of(3, 4, 2)], tmp_path)


def test_masked_attention_and_transformer_blocks(tmp_path):
    ids = rng.integers(1, 12, size=(4, 6)).astype(np.float32)
    ids[1, 4:] = 0
    ids[2, 2:] = 0
    inp, dec_in = cn.Input((6,)), cn.Input((5,))
    e = L.TokenAndPositionEmbedding(12, 6, 8, mask_zero=True)(inp)
    enc = L.TransformerEncoder(2, 16)(e)
    enc2 = L.TransformerEncoder(2, 12, norm_first=True, activation="gelu")(enc)
    d = L.Embedding(12, 8, mask_zero=True)(dec_in)
    dec = L.TransformerDecoder(2, 16)([d, enc2])
    dec2 = L.TransformerDecoder(2, 16, norm_first=True)([dec, enc2])
    att = L.MultiHeadAttention(2, 4)(d, e)
    model = cn.Model([inp, dec_in], [enc2, dec2, att])
    dec_ids = rng.integers(1, 12, size=(4, 5)).astype(np.float32)
    dec_ids[0, 3:] = 0
    check_export(model, [ids, dec_ids], tmp_path, atol=1e-4)


def test_whole_sequential_cnn(tmp_path):
    model = cn.Sequential([
        cn.Input((12, 12, 1)), L.Conv2D(6, 5, padding="same", activation="relu"),
        L.BatchNormalization(), L.MaxPooling2D(), L.Conv2D(8, 3, activation="relu"),
        L.AveragePooling2D(), L.Flatten(), L.Dropout(0.3), L.Dense(16, activation="relu"),
        L.Dense(10, activation="softmax")])
    for opset in (17, 21):
        check_export(model, x_of(8, 12, 12, 1), tmp_path, opset=opset)


def test_whole_functional_model_with_nested_model(tmp_path):
    inner_in = cn.Input((8,))
    inner = cn.Model(inner_in, L.Dense(4, activation="tanh")(L.Dense(8)(inner_in)))
    inp = cn.Input((6, 8))
    h = L.LSTM(8, return_sequences=True)(inp)
    h = L.LayerNormalization()(L.Add()([h, inp]))
    pooled = L.GlobalAveragePooling1D()(h)
    branch = inner(pooled)
    out = L.Dense(2, activation="softmax")(L.Concatenate()([branch, L.Dense(3)(pooled)]))
    model = cn.Model(inp, {"probs": out, "features": branch})
    check_export(model, x_of(5, 6, 8), tmp_path)


def test_dynamic_batch_false_and_metadata(tmp_path):
    model = seq((4,), L.Dense(3))
    path = tmp_path / "fixed.onnx"
    cn.onnx.export(model, path, dynamic_batch=False)
    proto = onnx.load(str(path))
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 4]
    props = {p.key for p in proto.metadata_props}
    assert "cyneuron.architecture" in props
    x = x_of(1, 4)
    np.testing.assert_allclose(run_onnx(str(path), [x])[0], model.predict(x), rtol=RTOL,
                               atol=ATOL)


def test_float64_model_exports_float32(tmp_path):
    model = cn.Sequential([cn.Input((4,)), L.Dense(3, activation="relu")], dtype="float64")
    x = x_of(5, 4).astype(np.float64)
    check_export(model, x, tmp_path)


def test_bad_input(tmp_path):
    model = seq((4,), L.Dense(3))
    for opset in (16, 22, "17", True):
        with pytest.raises(ValueError, match="opset must be one of"):
            cn.onnx.export(model, tmp_path / "a.onnx", opset=opset)
    assert not (tmp_path / "a.onnx").exists()
    with pytest.raises(ValueError, match="not built"):
        cn.onnx.export(cn.Sequential([L.Dense(3)]), tmp_path / "b.onnx")
    with pytest.raises(TypeError, match="Sequential or Model"):
        cn.onnx.export(L.Dense(3), tmp_path / "c.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_existing_file_untouched_on_failure(tmp_path, monkeypatch):
    """The file is written to a temporary file and renamed: a failure leaves the old one."""
    path = tmp_path / "keep.onnx"
    path.write_bytes(b"old")
    model = seq((4,), L.Dense(3))
    from cyneuron.onnx import _export

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(_export.Graph, "weight", boom)
    with pytest.raises(OSError):
        cn.onnx.export(model, path)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.onnx"]
