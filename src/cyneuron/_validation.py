"""Input checks shared by ops, layers and models: clear errors that name the argument."""
import numpy as np

from ._kernels.arrays import all_finite

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def as_dtype(dtype, name="dtype"):
    """Normalise a float dtype argument to np.float32 or np.float64."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{name} must be 'float32' or 'float64', got {dtype!r}") from None
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be 'float32' or 'float64', got {dt.name!r}")
    return dt


def check_numeric(x, name):
    """Return x as an ndarray with a real numeric dtype; refuse objects, strings, complex."""
    if not isinstance(x, np.ndarray):
        try:
            x = np.asarray(x)
        except (ValueError, TypeError) as exc:
            raise TypeError(f"{name} must be array-like of numbers: {exc}") from None
    if x.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers; got dtype {x.dtype.name!r}")
    return x


def check_array(x, name, dtype, ndim=None, allow_empty=False, allow_nonfinite=False):
    """A C-contiguous array of `dtype`, checked for rank, emptiness and NaN/inf.

    Integers and booleans are converted; non-contiguous or misaligned input is copied.
    """
    x = check_numeric(x, name)
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D; got an array of shape {x.shape}")
    if not allow_empty and x.size == 0:
        raise ValueError(f"{name} is empty (shape {x.shape}); at least one sample is needed")
    x = np.ascontiguousarray(x, dtype=dtype)
    if not x.flags.aligned:          # the C kernels read items through typed pointers
        x = x.copy()
    if not allow_nonfinite and x.dtype.kind == "f" and not all_finite(x):
        raise ValueError(f"{name} contains NaN or infinity")
    return x


def check_same_length(x, y, x_name="x", y_name="y"):
    if len(x) != len(y):
        raise ValueError(f"{x_name} and {y_name} must have the same number of samples; "
                         f"got {len(x)} and {len(y)}")


def check_positive(value, name, integer=False):
    kind = "integer" if integer else "number"
    ok = isinstance(value, (int, np.integer)) if integer else isinstance(value, (int, float, np.number))
    if isinstance(value, bool) or not ok or not value > 0:
        raise ValueError(f"{name} must be a positive {kind}, got {value!r}")
    return value
