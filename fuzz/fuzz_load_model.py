"""Coverage-guided fuzzing of the model file reader (cn.load_model, model.load_weights).

    pip install atheris                      # optional; never a cyneuron dependency
    python fuzz/make_corpus.py               # seeds (already committed in fuzz/corpus/)
    mkdir -p /tmp/fuzz-corpus && cp fuzz/corpus/*.cyn /tmp/fuzz-corpus/
    python fuzz/fuzz_load_model.py /tmp/fuzz-corpus fuzz/corpus -max_total_time=600 \
        -rss_limit_mb=2048 -timeout=20 -artifact_prefix=/tmp/fuzz-crash-

(The first directory receives the new inputs libFuzzer keeps; the committed corpus
stays as it is.) `python fuzz/fuzz_load_model.py --selftest` runs every seed once
without atheris.

The inputs are whole files. A custom mutator keeps them mostly valid so the fuzzer gets
past the zip CRC check and the JSON parser: it unpacks the zip, mutates one member (the
JSON header structurally, by swapping values, types, keys and numbers, or any member
byte-wise with libFuzzer's own mutator), may add, drop or rename members, and writes
a zip with correct CRCs again; sometimes it mutates the raw zip bytes instead.

The contract under test: reading any file either succeeds (and the model then runs
predict) or raises ValueError (the documented error; its subclasses included).
Anything else, a crash, a hang or a huge allocation is a finding.
"""
import io
import json
import math
import os
import random
import sys
import tempfile
import warnings
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
ALLOWED = (ValueError,)

try:
    import atheris
except ImportError:          # --selftest works without it
    atheris = None

if atheris is not None and "--selftest" not in sys.argv:
    with atheris.instrument_imports(include=["cyneuron", "zipfile", "json"]):
        import numpy as np
        import cyneuron as cn
        import cyneuron.saving  # noqa: F401
else:
    import numpy as np
    import cyneuron as cn

_TMP = tempfile.mkdtemp(prefix="cyneuron-fuzz-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
_PATH = os.path.join(_TMP, "input.cyn")


# -- the target ---------------------------------------------------------------------------
def _weights_target(data):
    """A built model to load weights into: the architecture the file names, if any and
    if small (the user's own model stands for a trusted one: the harness builds it
    within a budget of a million weights, or skips it)."""
    from cyneuron.layers.base import WeightBudget

    try:
        header = json.loads(zipfile.ZipFile(io.BytesIO(data)).read("cyneuron.json"))
        with WeightBudget(10 ** 6):
            try:
                from cyneuron.models import model_from_config   # graphs as well
            except ImportError:
                model_from_config = cn.Sequential.from_config
            return model_from_config(header["model"])
    except Exception:
        return None


def check(data):
    """Read `data` as a model file; raise only for a finding."""
    with open(_PATH, "wb") as f:
        f.write(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            model = cn.load_model(_PATH)
        except ALLOWED:
            model = None
        if model is not None and model.built and math.prod(model.input_shape) <= 100000:
            x = np.zeros((2,) + tuple(model.input_shape), model.dtype)
            model.predict(x)
        target = _weights_target(data)
        if target is not None and target.built:
            try:
                target.load_weights(_PATH)
            except ALLOWED:
                pass


def TestOneInput(data):
    check(bytes(data))


# -- the mutator --------------------------------------------------------------------------
_INTERESTING = [0, 1, -1, 2, 3, 7, 255, 256, 65535, 2 ** 31 - 1, 2 ** 31, -2 ** 31, 2 ** 32,
                2 ** 63 - 1, 2 ** 63, 2 ** 64, 10 ** 9, 10 ** 30, 0.5, -0.0, 1e308, 1e-320,
                None, True, False, "", "x", "<f4", "<f8", "|u1", "<i8", ">f4", "float16",
                "../../etc/passwd", "weights/00000.bin", "Dense", "Conv2D", "LSTM", "relu",
                [], {}, [0], [1, 1], [-1], [2 ** 40, 2 ** 40]]


def _paths(obj, prefix=()):
    """Every (path, value) of a JSON document."""
    yield prefix, obj
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


def _set(doc, path, value):
    if not path:
        return value
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    return doc


def _mutate_json(doc, rnd):
    paths = list(_paths(doc))
    path, value = rnd.choice(paths)
    op = rnd.randrange(7)
    if op == 0:
        new = rnd.choice(_INTERESTING)
    elif op == 1 and isinstance(value, (int, float)) and not isinstance(value, bool):
        new = rnd.choice([value + 1, value - 1, -value, value * 2, value * 1000, 0])
    elif op == 2 and isinstance(value, list) and value:
        new = list(value)
        del new[rnd.randrange(len(new))]
    elif op == 3 and isinstance(value, list):
        new = list(value) + [rnd.choice(value) if value else rnd.choice(_INTERESTING)]
    elif op == 4 and isinstance(value, dict) and value:
        new = dict(value)
        del new[rnd.choice(list(new))]
    elif op == 5 and isinstance(value, dict):
        new = dict(value)
        new[rnd.choice(["units", "activation", "dtype", "shape", "path", "name", "extra",
                        "filters", "kernel_size", "strides", "rate", "input_shape"])] = \
            rnd.choice(_INTERESTING)
    else:
        other = rnd.choice(paths)[1]        # copy another part of the document here
        new = json.loads(json.dumps(other))
    return _set(doc, path, new)


def _zip(members):
    out = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")       # duplicate names are a mutation we want
        with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as zf:
            for name, data in members:
                zf.writestr(name, data)
    return out.getvalue()


def mutate(data, max_size, seed, byte_mutate):
    """One structure-aware mutation of a model file (see the module docstring)."""
    rnd = random.Random(seed)
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            members = [(info.filename, zf.read(info)) for info in zf.infolist()]
    except Exception:
        members = None
    if not members or rnd.random() < 0.1:
        return byte_mutate(data, max_size)
    i = rnd.randrange(len(members))
    name, content = members[i]
    op = rnd.random()
    if name == "cyneuron.json" and op < 0.6:
        try:
            doc = json.loads(content)
            for _ in range(1 + rnd.randrange(3)):
                doc = _mutate_json(doc, rnd)
            content = json.dumps(doc).encode()
        except Exception:
            content = byte_mutate(content, max(64, 2 * len(content)))
        members[i] = (name, content)
    elif op < 0.8:
        members[i] = (name, byte_mutate(content, max(64, 2 * len(content))))
    elif op < 0.87:
        del members[i]
    elif op < 0.94:
        members.append((rnd.choice(["weights/99999.bin", name, "optimizer/00000.bin", "x"]),
                        content[: rnd.randrange(len(content) + 1)]))
    else:
        members[i] = (rnd.choice(["weights/00000.bin", "cyneuron.json", name + "/", "a/../b"]),
                      content)
    out = _zip(members)
    return out if len(out) <= max_size else byte_mutate(data, max_size)


def _corpus_files():
    folder = os.path.join(HERE, "corpus")
    return [os.path.join(folder, n) for n in sorted(os.listdir(folder)) if n.endswith(".cyn")]


def selftest(rounds=200):
    """Every seed loads; then `rounds` mutations of them (Python's random standing in for
    libFuzzer's byte mutator) raise nothing but the allowed errors."""
    rnd = random.Random(0)

    def byte_mutate(b, max_size):
        b = bytearray(b)
        for _ in range(1 + rnd.randrange(4)):
            if b and rnd.random() < 0.7:
                b[rnd.randrange(len(b))] = rnd.randrange(256)
            elif b:
                del b[rnd.randrange(len(b)):][: rnd.randrange(8) + 1]
        return bytes(b[:max_size])

    seeds = [open(p, "rb").read() for p in _corpus_files()]
    for path, data in zip(_corpus_files(), seeds):
        if "weights" not in os.path.basename(path):
            cn.load_model(path)          # every seed is a valid file
        check(data)
    findings = {}
    for r in range(rounds):
        data = rnd.choice(seeds)
        for _ in range(1 + rnd.randrange(3)):
            data = mutate(data, 1 << 20, rnd.randrange(2 ** 32), byte_mutate)
        try:
            check(data)
        except Exception as exc:           # a finding: keep the first file of each kind
            tb = exc.__traceback__
            while tb.tb_next is not None:
                tb = tb.tb_next
            key = (type(exc).__name__, tb.tb_frame.f_code.co_filename, tb.tb_lineno)
            if key not in findings:
                findings[key] = (repr(exc)[:300], data)
    for (name, filename, line), (text, data) in findings.items():
        out = os.path.join(tempfile.gettempdir(), f"fuzz-finding-{name}-{line}.cyn")
        with open(out, "wb") as f:
            f.write(data)
        print(f"FINDING {name} at {filename}:{line}: {text}\n  input: {out}")
    print(f"selftest: {len(seeds)} seeds and {rounds} mutated files, {len(findings)} finding(s)")
    if findings:
        sys.exit(1)


def main():
    if "--selftest" in sys.argv:
        rounds = int(os.environ.get("FUZZ_SELFTEST_ROUNDS", "200"))
        selftest(rounds)
        return
    if atheris is None:
        sys.exit("atheris is not installed: pip install atheris (or use --selftest)")

    def custom_mutator(data, max_size, seed):
        return mutate(bytes(data), max_size, seed, atheris.Mutate)

    atheris.Setup(sys.argv, TestOneInput, custom_mutator=custom_mutator)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
