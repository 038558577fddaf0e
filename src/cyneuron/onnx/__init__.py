"""ONNX export and import (`pip install "cyneuron[onnx]"` for the `onnx` package).

    cn.onnx.export(model, "net.onnx")            # opset 17..21, dynamic batch axis
    net = cn.onnx.load("net.onnx")               # a cyneuron Model with the same outputs

Export writes standard ONNX operators only (checked by onnx.checker), float32, with the
weights stored as initializers in cyneuron's (Keras) layouts: the layout changes ONNX
wants (Conv's OIHW kernels, LSTM gate order, ...) are small nodes on constants that a
runtime folds when it loads the model. The model's architecture rides along as metadata,
so `load` rebuilds a model exported by cyneuron exactly; other files (an MLP, CNN or
LSTM exported from PyTorch) are mapped operator by operator onto cyneuron layers.
"""
OPSETS = (17, 18, 19, 20, 21)


def _require(module):
    """Import an optional dependency, or an ImportError naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"cyneuron.onnx needs the '{module}' package: "
                          f"pip install \"cyneuron[onnx]\" ({exc})") from None


def export(model, path, opset=17, dynamic_batch=True):
    """Write `model` (a built Sequential or functional Model) to the ONNX file `path`.

    opset: the ONNX opset, 17 to 21. dynamic_batch: the batch axis of the inputs and
    outputs is symbolic ("batch"); False fixes it at 1. Dropout is the identity. Padding
    masks (Embedding(mask_zero=True)) are exported for recurrent layers as sequence
    lengths: the padded steps must come after the real ones (post-padding). The file is
    written to a temporary file beside `path` and renamed into place. Returns `path`."""
    from ._export import export_model

    return export_model(model, path, opset=opset, dynamic_batch=dynamic_batch)


def load(path):
    """A cyneuron Model from the ONNX file `path`: one exported by cyneuron (rebuilt from
    its metadata), or a graph of the operators cyneuron's layers cover (Gemm/MatMul,
    Conv, pooling, BatchNormalization, LayerNormalization, activations, Flatten/Reshape,
    LSTM/GRU/RNN, ...), such as an MLP, CNN or LSTM exported by torch.onnx.export.
    Unsupported operators raise a ValueError listing them."""
    from ._import import load_model

    return load_model(path)


__all__ = ["export", "load", "OPSETS"]
