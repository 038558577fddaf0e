"""Save and load the classic estimators (RBMs, DBN, SOM, RBF networks) without pickle.

A file is a numpy ``.npz`` archive (``np.savez``): one entry ``__cyneuron__`` holding a
JSON text ``{"format": "cyneuron-estimator", "format_version": 1, "class": name,
"params": {...}, "attributes": {...}}`` (the constructor's parameters and the fitted
scalar attributes) and one entry per fitted array attribute. Loading uses
``np.load(..., allow_pickle=False)`` and rebuilds the class by name from a fixed list,
so nothing in a file can make the loader run code. Writes are atomic (a temporary file
renamed into place).
"""
import io
import json

import numpy as np

from .saving import _atomic_write

FORMAT = "cyneuron-estimator"
FORMAT_VERSION = 1
_META = "__cyneuron__"


# The classes a file may name, and their modules (nothing else is ever instantiated).
_CLASSES = {"BernoulliRBM": "rbm", "GaussianBernoulliRBM": "rbm", "DBN": "rbm",
            "DBNClassifier": "rbm", "SOM": "som", "RBFClassifier": "rbf",
            "RBFRegressor": "rbf"}


def _class(name):
    import importlib

    module = _CLASSES.get(name)
    if module is None:
        return None
    return getattr(importlib.import_module("cyneuron." + module), name)


def _jsonable(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot save a parameter of type {type(value).__name__} ({value!r}); "
                    "only numbers, strings, None and lists of them are saved")


def save_estimator(estimator, filepath, params, scalars, arrays):
    """Write `params` (constructor arguments), `scalars` (fitted non-array attributes) and
    `arrays` ({name: ndarray}) of `estimator` to `filepath` (.npz, atomic)."""
    for name in arrays:
        if name == _META:
            raise ValueError(f"reserved array name {name!r}")
    meta = json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION,
                       "class": type(estimator).__name__, "params": _jsonable(params),
                       "attributes": _jsonable(scalars)})

    def write(f):
        buf = io.BytesIO()
        np.savez(buf, **{_META: np.array(meta)},
                 **{k: np.ascontiguousarray(v) for k, v in arrays.items()})
        f.write(buf.getvalue())

    _atomic_write(filepath, write)


def load_estimator(filepath, expected=None):
    """Read a file written by `save_estimator`: returns (class, params, scalars, arrays).
    `expected`: a class the file's class must be (or derive from)."""
    try:
        with np.load(filepath, allow_pickle=False) as data:
            if _META not in data.files:
                raise ValueError(f"{filepath!r} is not a cyneuron estimator file")
            meta = json.loads(str(data[_META]))
            arrays = {k: data[k] for k in data.files if k != _META}
    except (OSError, EOFError) as e:
        raise ValueError(f"cannot read {filepath!r}: {e}") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{filepath!r} is not a cyneuron estimator file")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{filepath!r} was written by a newer cyneuron (format version "
                         f"{meta['format_version']})")
    cls = _class(meta.get("class"))
    if cls is None:
        raise ValueError(f"{filepath!r}: unknown estimator class {meta.get('class')!r}")
    if expected is not None and not issubclass(cls, expected):
        raise ValueError(f"{filepath!r} holds a {cls.__name__}, not a {expected.__name__}")
    return cls, meta["params"], meta["attributes"], arrays


def load(filepath):
    """Load any estimator saved with its `save(path)` method."""
    cls, _, _, _ = load_estimator(filepath)
    return cls.load(filepath)
