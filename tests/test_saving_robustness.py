"""The file reader under damaged and hostile input: only clean ValueErrors.

The shrunk findings of fuzz/fuzz_load_model.py (atheris, and its --selftest mutator)
are kept here as plain regression tests; the committed seed corpus must stay valid and
a short mutation run over it must find nothing.
"""
import importlib.util
import io
import json
import os
import sys
import zipfile

import numpy as np
import pytest

import cyneuron as cn
from cyneuron import layers

FUZZ_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fuzz")


def _members(path):
    with zipfile.ZipFile(path) as zf:
        return [(info.filename, zf.read(info)) for info in zf.infolist()]


def _write(path, members, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in members:
            zf.writestr(name, data)


@pytest.fixture
def saved(tmp_path):
    cn.set_seed(0)
    model = cn.Sequential([layers.Dense(4, activation="relu"), layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    model.fit(np.ones((4, 3)), np.zeros((4, 2)), epochs=1, verbose=0)
    path = tmp_path / "model.cyn"
    model.save(path)
    return path


def _edit_header(path, out, edit):
    members = _members(path)
    header = json.loads(dict(members)["cyneuron.json"])
    edit(header)
    _write(out, [(n, json.dumps(header).encode() if n == "cyneuron.json" else d)
                 for n, d in members])
    return out


def test_array_dtype_of_the_wrong_json_type(saved, tmp_path):
    # fuzz finding: a dict as "dtype" raised TypeError (unhashable) instead of ValueError
    bad = _edit_header(saved, tmp_path / "bad.cyn",
                       lambda h: h["weights"][0].__setitem__("dtype", {"a": 1}))
    with pytest.raises(ValueError, match="dtype"):
        cn.load_model(bad)


def test_encrypted_member(saved, tmp_path):
    # fuzz finding: the encryption flag bit made zipfile raise RuntimeError
    data = bytearray(saved.read_bytes())
    for sig in (b"PK\x03\x04", b"PK\x01\x02"):       # set bit 0 of every flag field
        start = 0
        while (i := data.find(sig, start)) >= 0:
            flag = i + (6 if sig == b"PK\x03\x04" else 8)
            data[flag] |= 1
            start = i + 4
    bad = tmp_path / "bad.cyn"
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="encrypted"):
        cn.load_model(bad)


def test_architecture_too_large_for_memory(saved, tmp_path):
    # fuzz finding: units=2**31-1 made the rebuild raise MemoryError from numpy
    def edit(h):
        h["model"]["layers"][0]["config"]["units"] = 2 ** 40
    bad = _edit_header(saved, tmp_path / "bad.cyn", edit)
    with pytest.raises(ValueError):
        cn.load_model(bad)


def test_deeply_nested_json(saved, tmp_path):
    members = [(n, (b"[" * 200000 + b"]" * 200000) if n == "cyneuron.json" else d)
               for n, d in _members(saved)]
    bad = tmp_path / "bad.cyn"
    _write(bad, members)
    with pytest.raises(ValueError):
        cn.load_model(bad)


def test_corrupted_deflate_member(saved, tmp_path):
    deflated = tmp_path / "deflated.cyn"
    _write(deflated, _members(saved), compression=zipfile.ZIP_DEFLATED)
    cn.load_model(deflated)             # a deflated archive is still readable
    data = bytearray(deflated.read_bytes())
    i = data.find(b"PK\x03\x04", data.find(b"weights/") - 40)
    name_len = int.from_bytes(data[i + 26:i + 28], "little")
    extra_len = int.from_bytes(data[i + 28:i + 30], "little")
    body = i + 30 + name_len + extra_len
    data[body:body + 4] = b"\xff\xff\xff\xff"          # breaks the deflate stream
    bad = tmp_path / "bad.cyn"
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError):
        cn.load_model(bad)


def test_load_weights_with_an_invalid_input_shape(saved, tmp_path):
    bad = _edit_header(saved, tmp_path / "bad.cyn",
                       lambda h: h["model"].__setitem__("input_shape", {"x": 1}))
    model = cn.Sequential([layers.Dense(4, activation="relu"), layers.Dense(2)])
    with pytest.raises(ValueError, match="input shape"):
        model.load_weights(bad)


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        cn.load_model(tmp_path / "nope.cyn")


def _fuzz_module():
    spec = importlib.util.spec_from_file_location("fuzz_load_model",
                                                  os.path.join(FUZZ_DIR, "fuzz_load_model.py"))
    module = importlib.util.module_from_spec(spec)
    argv = sys.argv
    sys.argv = [argv[0], "--selftest"]      # import without instrumenting (no atheris needed)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.argv = argv
    return module


def test_seed_corpus_is_valid_and_small():
    files = [os.path.join(FUZZ_DIR, "corpus", n) for n in os.listdir(os.path.join(FUZZ_DIR, "corpus"))]
    assert len(files) >= 5
    for path in files:
        assert os.path.getsize(path) < 16384, path
        if "weights" in os.path.basename(path):
            continue
        model = cn.load_model(path)
        if model.built:
            model.predict(np.zeros((2,) + model.input_shape, model.dtype))


def test_short_mutation_run_finds_nothing():
    """The fuzzer's structure-aware mutator, driven by Python's random, over the seeds."""
    module = _fuzz_module()
    module.selftest(rounds=150)          # exits (SystemExit) on a finding


def test_forged_input_shape_cannot_exhaust_memory(tmp_path):
    # atheris finding (out-of-memory): a conv model whose input_shape was mutated to
    # [5, 10**9, 1] made Flatten + Dense allocate a kernel of gigabytes while loading;
    # the rebuild may now allocate no more weight elements than the file declares
    cn.set_seed(0)
    model = cn.Sequential([layers.Conv2D(2, 3, padding="same"), layers.MaxPooling2D(2),
                           layers.Flatten(), layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    model.build((5, 5, 1))
    path = tmp_path / "conv.cyn"
    model.save(path)
    bad = _edit_header(path, tmp_path / "bad.cyn",
                       lambda h: h["model"].__setitem__("input_shape", [5, 10 ** 9, 1]))
    with pytest.raises(ValueError, match="more than the file declares"):
        cn.load_model(bad)
    target = cn.Sequential([layers.Conv2D(2, 3, padding="same"), layers.MaxPooling2D(2),
                            layers.Flatten(), layers.Dense(2)])
    with pytest.raises(ValueError, match="more than the file declares"):
        target.load_weights(bad)
    cn.load_model(path).predict(np.zeros((1, 5, 5, 1), np.float32))   # the real file loads


def test_forged_weight_shapes_cannot_buy_a_huge_allocation(saved, tmp_path):
    """CI fuzz finding: a header declaring a (2**32, 1) kernel with no member behind it
    let a Dense(10**9) be rebuilt (12 GB): only weights the archive really holds count
    toward what a rebuilt model may allocate."""
    def forge(h):
        h["model"]["layers"][1]["config"]["units"] = 10 ** 9
        h["weights"][2]["shape"] = [2 ** 32, 1]
        h["weights"][2]["path"] = "weights/not-there.bin"

    bad = _edit_header(saved, tmp_path / "bad.cyn", forge)
    with pytest.raises(ValueError, match="missing"):
        cn.load_model(bad)


def test_compressed_member_claiming_a_huge_size_is_not_believed(saved, tmp_path):
    """A member whose declared size is beyond what its stored bytes can inflate to is
    refused before anything is allocated for it."""
    from cyneuron import saving

    _write(tmp_path / "deflated.cyn", _members(saved), compression=zipfile.ZIP_DEFLATED)
    assert [w.shape for w in cn.load_model(tmp_path / "deflated.cyn").get_weights()] == \
        [w.shape for w in cn.load_model(saved).get_weights()]
    with saving._Archive(tmp_path / "deflated.cyn") as archive:
        entry = archive.header["weights"][0]
        info = archive.zf.getinfo(entry["path"])
        item = np.dtype(entry["dtype"]).itemsize
        info.file_size = item * (info.compress_size * (saving._MAX_INFLATION + 1) // item + 1)
        entry["shape"] = [info.file_size // item]
        with pytest.raises(ValueError, match="stored bytes"):
            archive.declared_elements()
