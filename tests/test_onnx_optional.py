"""The ONNX and interop modules import without their optional dependencies and say which
extra to install when a function needs one."""
import sys

import pytest

import cyneuron as cn
from cyneuron import layers as L


def test_export_without_onnx_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnx", None)
    model = cn.Sequential([cn.Input((3,)), L.Dense(2)])
    with pytest.raises(ImportError, match=r'pip install "cyneuron\[onnx\]"'):
        cn.onnx.export(model, tmp_path / "m.onnx")
    with pytest.raises(ImportError, match=r'cyneuron\[onnx\]'):
        cn.onnx.load(tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_keras_file_without_h5py_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(ImportError, match="h5py"):
        cn.interop.from_keras(tmp_path / "m.keras")


def test_modules_import_without_optional_packages(monkeypatch):
    for name in ("onnx", "onnxruntime", "torch", "keras", "h5py"):
        monkeypatch.setitem(sys.modules, name, None)
    import importlib

    for mod in ("cyneuron.onnx", "cyneuron.onnx._export", "cyneuron.onnx._import",
                "cyneuron.interop", "cyneuron._bench_onnx"):
        importlib.reload(importlib.import_module(mod))
