"""Model files: architecture, compile settings and weights in one zip file, no pickle.

A model file is a zip archive (stored, not compressed) holding

    cyneuron.json      {"format": "cyneuron", "format_version": 1, "cyneuron_version",
                        "kind": "model" | "weights", "model": Sequential.get_config(),
                        "compile": {"optimizer", "loss", "metrics"} or null,
                        "weights": [{"layer", "name", "path", "dtype", "shape"}, ...],
                        "optimizer_state": {"iterations", "slots": [...]} or null}
    weights/00000.bin  each array as raw little-endian bytes, in get_weights() order
    optimizer/*.bin    the optimizer's flat state arrays (optional)

Loading parses JSON and reads arrays with np.frombuffer from a short list of allowed
dtypes; layers are rebuilt by class name from cyneuron's layer registry (or the
`custom_objects` you pass) with keyword arguments from the JSON. Nothing in a file can
make the loader run code. The zip's CRC-32 of every member is checked on read, so a
truncated or corrupted file, a file of another format, or one written by a newer
format version raises ValueError.

Writes are atomic: the archive goes to a temporary file in the target's folder, which
is renamed over the target only once complete; on any error it is removed.
"""
import json
import lzma
import math
import os
import tempfile
import zipfile
import zlib

import numpy as np

from . import losses as _losses
from . import metrics as _metrics
from .layers import base as _layer_base
from . import optimizers as _optimizers

FORMAT = "cyneuron"
FORMAT_VERSION = 1
CONFIG_NAME = "cyneuron.json"
MAX_CONFIG_BYTES = 64 << 20
# dtypes a file may declare, and the native dtype each is loaded as
_DTYPES = {"<f4": np.float32, "<f8": np.float64}
# What zipfile may raise on a damaged archive or member (besides BadZipFile): a
# corrupted deflate / lzma stream, an encrypted member, an unsupported method.
# Deflate cannot expand data more than ~1032 times (bzip2 and lzma more on contrived
# input: those members are then held to the same bound, which real weights never reach).
_MAX_INFLATION = 1100
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, NotImplementedError,
               RuntimeError, zlib.error, lzma.LZMAError, ValueError, OverflowError)


# -- writing -------------------------------------------------------------------------------
def save_model(model, filepath, include_optimizer=True):
    """Write `model` (a cn.Sequential or cn.Model) to `filepath`; see the module docstring."""
    _save(model, filepath, kind="model", include_optimizer=include_optimizer)


def save_weights(model, filepath):
    """Write only `model`'s weights (and its architecture, for checking on load)."""
    if not model.built:
        raise ValueError("the model has no weights yet: build it (or fit / predict) first")
    _save(model, filepath, kind="weights", include_optimizer=False)


def _array_entry(arrays, folder, array):
    """Queue `array` for writing; return its JSON description."""
    array = np.asarray(array)
    if array.dtype not in (np.float32, np.float64):
        raise TypeError(f"cannot save an array of dtype {array.dtype.name}")
    path = f"{folder}/{len(arrays):05d}.bin"
    little = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    arrays.append((path, little))
    return {"path": path, "dtype": little.dtype.str, "shape": list(array.shape)}


def _save(model, filepath, kind, include_optimizer):
    from . import __version__

    arrays = []
    weights = []
    if model.built:
        for layer in model.layers:
            for name, w in zip(layer._weight_names, layer._weights):
                weights.append({"layer": layer.name, "name": name,
                                **_array_entry(arrays, "weights", w)})
    compile_config, optimizer_state = None, None
    if kind == "model" and model.loss is not None and model.optimizer is not None:
        compile_config = {"optimizer": model.optimizer.get_config(),
                          "loss": model.loss.get_config(),
                          "metrics": [m.get_config() for m in model.metrics]} \
            if len(model.outputs) <= 1 else {
                "optimizer": model.optimizer.get_config(),
                "loss": [None if loss is None else loss.get_config() for loss in model._losses],
                "loss_weights": list(model._loss_weights),
                "metrics": [[m.get_config() for m in ms] for ms in model._out_metrics]}
        slots = getattr(model.optimizer, "slots", {})
        if include_optimizer and model.built:
            optimizer_state = {"iterations": int(model.optimizer.iterations),
                               "slots": [{"name": name, **_array_entry(arrays, "optimizer", value)}
                                         for name, value in slots.items()]}
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, "cyneuron_version": __version__,
              "kind": kind, "model": model.get_config(), "compile": compile_config,
              "weights": weights, "optimizer_state": optimizer_state}
    try:
        text = json.dumps(header, indent=1, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"the model's configuration cannot be written as JSON: {exc}") from None
    _atomic_write(filepath, lambda f: _write_zip(f, text, arrays))


def _write_zip(fileobj, text, arrays):
    with zipfile.ZipFile(fileobj, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        zf.writestr(CONFIG_NAME, text)
        for path, array in arrays:
            with zf.open(path, "w", force_zip64=array.nbytes >= (1 << 31)) as out:
                if array.size:
                    out.write(memoryview(array.reshape(-1)).cast("B"))


def _atomic_write(filepath, write):
    """Call write(file) on a temporary file beside `filepath`, then rename it into place."""
    filepath = os.fspath(filepath)
    folder = os.path.dirname(os.path.abspath(filepath))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(filepath) + ".",
                               suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)   # mkstemp makes it 0600; give it a normal file's mode
        os.replace(tmp, filepath)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise


# -- reading -------------------------------------------------------------------------------
class _Archive:
    """The open zip and its parsed header; every problem becomes a ValueError naming the file."""

    def __init__(self, filepath):
        self.filepath = os.fspath(filepath)
        if os.path.isdir(self.filepath):
            raise IsADirectoryError(f"{self.filepath!r} is a directory, not a cyneuron model file")
        if not os.path.exists(self.filepath):
            raise FileNotFoundError(f"no such model file: {self.filepath!r}")
        try:
            self.zf = zipfile.ZipFile(self.filepath, "r")
        except (FileNotFoundError, PermissionError):
            raise
        except _ZIP_ERRORS as exc:
            raise ValueError(f"{self.filepath!r} is not a cyneuron model file (not a zip "
                             f"archive, or truncated: {type(exc).__name__}: {exc})") from None
        try:
            self.header = self._read_header()
        except BaseException:
            self.zf.close()
            raise

    def _fail(self, message):
        raise ValueError(f"{self.filepath!r}: {message}")

    def _member_info(self, name, expected_size=None):
        """The zip entry of member `name`, checked: present, of the expected size (or at
        most MAX_CONFIG_BYTES), not encrypted, and not claiming more bytes than its stored
        data can inflate to."""
        try:
            info = self.zf.getinfo(name)
        except KeyError:
            self._fail(f"the file is incomplete: member {name!r} is missing")
        limit = MAX_CONFIG_BYTES if expected_size is None else expected_size
        if info.file_size > limit or (expected_size is not None and info.file_size != expected_size):
            self._fail(f"member {name!r} holds {info.file_size} bytes; expected "
                       f"{'at most ' if expected_size is None else ''}{limit}")
        if info.flag_bits & 0x1:
            self._fail(f"member {name!r} is encrypted; cyneuron files never are")
        ratio = 1 if info.compress_type == zipfile.ZIP_STORED else _MAX_INFLATION
        if info.file_size > info.compress_size * ratio:
            self._fail(f"member {name!r} claims {info.file_size} bytes from "
                       f"{info.compress_size} stored bytes")
        return info

    def _member(self, name, expected_size=None):
        info = self._member_info(name, expected_size)
        try:
            return self.zf.read(info)
        except _ZIP_ERRORS as exc:
            self._fail(f"the file is corrupted or truncated ({type(exc).__name__}: {exc})")

    def _read_header(self):
        if CONFIG_NAME not in self.zf.namelist():
            self._fail(f"not a cyneuron model file (no {CONFIG_NAME} inside)")
        raw = self._member(CONFIG_NAME)
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            self._fail(f"the configuration is not valid JSON ({exc})")
        except RecursionError:
            self._fail("the configuration is nested too deeply to be a cyneuron header")
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            self._fail("not a cyneuron model file (wrong format tag)")
        version = header.get("format_version")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            self._fail(f"invalid format_version {version!r}")
        if version > FORMAT_VERSION:
            self._fail(f"written in format version {version} by cyneuron "
                       f"{header.get('cyneuron_version', '?')}; this cyneuron reads versions up "
                       f"to {FORMAT_VERSION}: upgrade cyneuron to load it")
        if header.get("kind") not in ("model", "weights") or not isinstance(header.get("model"), dict) \
                or not isinstance(header.get("weights"), list):
            self._fail("the header lacks its kind, model or weights entries")
        return header

    def _entry(self, entry):
        """(dtype, shape, path) of an array entry {"path", "dtype", "shape"}, validated."""
        if not isinstance(entry, dict):
            self._fail(f"an array entry must be a dict, got {entry!r}")
        dtype, shape, path = entry.get("dtype"), entry.get("shape"), entry.get("path")
        if not isinstance(dtype, str) or dtype not in _DTYPES:
            self._fail(f"array {path!r} has dtype {dtype!r}; allowed: {sorted(_DTYPES)}")
        if not isinstance(shape, list) or not all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            self._fail(f"array {path!r} has an invalid shape {shape!r}")
        if not isinstance(path, str):
            self._fail(f"an array entry has no path: {entry!r}")
        return dtype, shape, path

    def array(self, entry):
        """The array an entry {"path", "dtype", "shape"} describes, as a new native array."""
        dtype, shape, path = self._entry(entry)
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        data = self._member(path, expected_size=nbytes)
        return np.frombuffer(data, dtype=np.dtype(dtype)).astype(_DTYPES[dtype]).reshape(shape)

    def weights(self):
        return [self.array(entry) for entry in self.header["weights"]]

    def declared_elements(self):
        """Weight elements the header declares, each entry checked against its member
        first (present, of the declared size, within what its stored bytes can inflate
        to): the most a model rebuilt from this file may allocate, so a forged header
        cannot buy a huge allocation with a small file."""
        total = 0
        for entry in self.header["weights"]:
            dtype, shape, path = self._entry(entry)
            self._member_info(path, math.prod(shape) * np.dtype(dtype).itemsize)
            total += math.prod(shape)
        return total

    def close(self):
        self.zf.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _from_registry(module, config, custom_objects, kind):
    """An instance of a loss / metric / optimizer from its get_config() dict."""
    if not isinstance(config, dict) or not isinstance(config.get("name"), str):
        raise ValueError(f"a {kind} config must be a dict with a 'name'; got {config!r}")
    name = config["name"]
    cls = (custom_objects or {}).get(name)
    if cls is None:
        try:
            cls = type(module.get(name))
        except ValueError as exc:
            raise ValueError(f"{exc} (pass your own {kind} through custom_objects)") from None
    kwargs = {k: v for k, v in config.items() if k != "name"}
    try:
        if hasattr(cls, "from_config"):
            return cls.from_config(config)
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"invalid {kind} config {config!r}: {exc}") from None


def _compile_from_config(model, config, custom_objects):
    if not isinstance(config, dict):
        raise ValueError(f"invalid compile settings {config!r}")
    optimizer = _from_registry(_optimizers, config.get("optimizer"), custom_objects, "optimizer")
    metrics = config.get("metrics") or []
    if not isinstance(metrics, list):
        raise ValueError(f"invalid metrics list {metrics!r}")
    if isinstance(config.get("loss"), list):          # a model with several outputs
        losses = [None if c is None else _from_registry(_losses, c, custom_objects, "loss")
                  for c in config["loss"]]
        if not all(isinstance(ms, list) for ms in metrics):
            raise ValueError(f"invalid per-output metrics {metrics!r}")
        model.compile(optimizer=optimizer, loss=losses, loss_weights=config.get("loss_weights"),
                      metrics=[[_from_registry(_metrics, m, custom_objects, "metric") for m in ms]
                               for ms in metrics])
        return
    loss = _from_registry(_losses, config.get("loss"), custom_objects, "loss")
    model.compile(optimizer=optimizer, loss=loss,
                  metrics=[_from_registry(_metrics, m, custom_objects, "metric") for m in metrics])


def _restore_optimizer(archive, model, state):
    if not isinstance(state, dict) or not isinstance(state.get("slots"), list):
        archive._fail(f"invalid optimizer state {state!r}")
    iterations = state.get("iterations")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        archive._fail(f"invalid optimizer iterations {iterations!r}")
    slots = {}
    for entry in state["slots"]:
        value = archive.array(entry)
        if value.shape != model._params.shape:
            archive._fail(f"optimizer state {entry.get('name')!r} has shape {value.shape}; the "
                          f"model has {model._params.size} parameters")
        slots[str(entry.get("name"))] = value.astype(model.dtype)
    optimizer = model.optimizer
    optimizer.iterations = iterations
    if not slots:   # saved before its first step: state is made on the first step
        return
    if set(slots) != set(optimizer._slot_names):
        archive._fail(f"optimizer state holds {sorted(slots)}; {type(optimizer).__name__} "
                      f"needs {sorted(optimizer._slot_names)}")
    optimizer.slots = slots


# How load_model rebuilds a model from its config: cyneuron.models registers its
# model_from_config when imported, so that the dependency runs one way (models -> saving)
# and saving never imports models.
_model_builder = None


def register_model_builder(build):
    """Set the function that load_model rebuilds models with: build(config, custom_objects)."""
    global _model_builder
    _model_builder = build


def load_model(filepath, custom_objects=None, compile=True):
    """The model saved by `model.save(filepath)`: same architecture and weights, compiled
    with the same optimizer (and its state), loss and metrics unless compile=False.

    custom_objects: {name: class} for your own layers (by class name) and losses,
    metrics or optimizers (by their `name`). A file that is truncated, corrupted, of
    another format or of a newer format version raises ValueError.
    """
    if _model_builder is None:
        raise RuntimeError("no model builder registered: import cyneuron (cyneuron.models "
                           "registers it)")
    with _Archive(filepath) as archive:
        header = archive.header
        if header["kind"] != "model":
            archive._fail("this file holds only weights (save_weights): build the model and "
                          "call model.load_weights(path)")
        try:
            with _layer_base.WeightBudget(archive.declared_elements()):
                model = _model_builder(header["model"], custom_objects=custom_objects)
        except ValueError as exc:
            archive._fail(f"cannot rebuild the model: {exc}")
        except (MemoryError, OverflowError) as exc:
            archive._fail(f"cannot rebuild the model: its architecture does not fit in memory "
                          f"({type(exc).__name__}: {exc})")
        if model.built:
            _set_weights(archive, model, archive.weights())
        elif header["weights"]:
            archive._fail("the file has weights but no input shape to build the model with")
        if compile and header.get("compile") is not None:
            try:
                _compile_from_config(model, header["compile"], custom_objects)
            except ValueError as exc:
                archive._fail(f"cannot restore the compile settings: {exc} (load_model(..., "
                              f"compile=False) skips them)")
            if header.get("optimizer_state") is not None and model.built:
                _restore_optimizer(archive, model, header["optimizer_state"])
    return model


def _set_weights(archive, model, weights):
    try:
        model.set_weights(weights)
    except (TypeError, ValueError) as exc:
        archive._fail(f"the weights do not fit the model: {exc}")


def load_weights(model, filepath):
    """Read weights from a file of save_weights or save into `model` (same architecture;
    an unbuilt model is built with the file's input shape)."""
    with _Archive(filepath) as archive:
        if not model.built:
            input_shape = archive.header["model"].get("input_shape")
            if input_shape is None:
                archive._fail("the file has no weights")
            if not isinstance(input_shape, list) or not all(
                    isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in input_shape):
                archive._fail(f"invalid input shape {input_shape!r}")
            try:
                with _layer_base.WeightBudget(archive.declared_elements()):
                    model.build(tuple(input_shape))
            except (MemoryError, OverflowError) as exc:
                archive._fail(f"cannot build the model for input shape {input_shape}: "
                              f"{type(exc).__name__}: {exc}")
        _set_weights(archive, model, archive.weights())
