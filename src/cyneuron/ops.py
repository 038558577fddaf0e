"""Public kernels on numpy arrays: validated inputs in, new (or `out=`) arrays out.

These are thin wrappers: they check shapes and dtypes, pick the float32 or
float64 kernel, allocate the result and release the GIL inside the kernel.
"""
import numpy as np

from . import activations as _activations
from ._kernels import gemm as _gemm
from ._validation import check_numeric

__all__ = ["matmul", "linear", "sigmoid", "tanh", "relu", "softmax",
           "linear_grad", "sigmoid_grad", "tanh_grad", "relu_grad", "softmax_grad"]


_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _result_dtype(*arrays):
    """float32 when every input is float32 (or float16), float64 otherwise."""
    if all(a.dtype in (np.float32, np.float16) for a in arrays):
        return np.dtype(np.float32)
    return np.dtype(np.float64)


def _as_operand(x, name, dtype):
    """x as a 2-D array of `dtype` whose strides the GEMM can read (copied only if not)."""
    if x.ndim != 2:
        raise ValueError(f"matmul: {name} must be 2-D; got an array of shape {x.shape}")
    x = x.astype(dtype, copy=False)
    if any(s % x.itemsize for s in x.strides):
        x = np.ascontiguousarray(x)
    return x


def _operands(a, b):
    """(a, b) as 2-D float arrays of one dtype. Float arrays of one dtype pass straight
    through (the common case costs a few attribute reads)."""
    if (type(a) is np.ndarray and type(b) is np.ndarray and a.dtype is b.dtype
            and a.dtype in _FLOATS and a.ndim == 2 and b.ndim == 2
            and not (a.strides[0] | a.strides[1] | b.strides[0] | b.strides[1]) % a.itemsize):
        return a, b
    a = check_numeric(a, "a")
    b = check_numeric(b, "b")
    dtype = _result_dtype(a, b)
    return _as_operand(a, "a", dtype), _as_operand(b, "b", dtype)


def epilogue_of(activation):
    """(code, alpha) of the GEMM epilogue that applies `activation` (an Activation),
    or None when the activation is not element-wise or not fused."""
    code = _gemm.EPILOGUES.get(activation.name)
    if code is None:
        return None
    return code, float(getattr(activation, "alpha", 0.0))


def matmul(a, b, trans_a=False, trans_b=False, bias=None, activation=None, out=None):
    """op(a) @ op(b) (+ bias) (then activation), where op transposes when asked.

    The transposes cost nothing: the GEMM packs or reads either layout. Strided,
    sliced and Fortran-ordered inputs are read through their strides. The result
    is float32 when both inputs are float32, float64 otherwise (integers are
    converted). Bias and element-wise activations (relu, sigmoid, tanh, gelu, ...)
    are applied in the GEMM's epilogue, on each tile while it is in cache.

    bias: shape (N,), added to every row. activation: a name from
    cyneuron.activations. out: a C-contiguous (M, N) array of the result dtype.
    """
    if (bias is None and activation is None and type(a) is np.ndarray and type(b) is np.ndarray
            and a.ndim == 2 and b.ndim == 2):
        # Fast path: the kernel's own C checks suffice for float arrays of one dtype; on
        # anything else it raises before touching c, and the explaining path below runs.
        x, y = a.T if trans_a else a, b.T if trans_b else b
        c = np.empty((x.shape[0], y.shape[1]), a.dtype) if out is None else out
        try:
            _gemm.gemm(x, y, c)
            return c
        except (TypeError, ValueError):
            pass
    a, b = _operands(a, b)
    dtype = a.dtype
    if trans_a:
        a = a.T
    if trans_b:
        b = b.T
    (m, k), (k2, n) = a.shape, b.shape
    if k != k2:
        raise ValueError(
            f"matmul: inner dimensions differ: op(a) has shape {a.shape} and op(b) {b.shape} "
            f"(trans_a={trans_a}, trans_b={trans_b})")
    act, code, alpha = None, 0, 0.0
    if activation is not None:
        act = _activations.get(activation)
        fused = epilogue_of(act)
        if fused is not None:
            (code, alpha), act = fused, None
    if bias is not None:
        bias = check_numeric(bias, "bias")
        if bias.shape != (n,):
            raise ValueError(f"matmul: bias must have shape ({n},); got {bias.shape}")
        bias = np.ascontiguousarray(bias, dtype=dtype)

    result = _check_out(out, (m, n), dtype)
    # The kernel writes C while reading A and B: never let them overlap.
    target = result
    if out is not None and (_overlap(out, a) or _overlap(out, b)):
        target = np.empty((m, n), dtype)
    if k == 0:
        target.fill(0)
        if bias is not None:
            target += bias
        if code:
            act = _activations.get(activation)
    else:
        _gemm.gemm(a, b, target, bias, code, alpha)
    if act is not None:
        act.forward(target, out=target)
    if target is not result:
        np.copyto(result, target)
    return result


def _overlap(x, y):
    return np.may_share_memory(x, y) and np.shares_memory(x, y)


def _check_out(out, shape, dtype):
    if out is None:
        return np.empty(shape, dtype)
    if type(out) is np.ndarray and out.shape == shape and out.dtype is dtype \
            and out.flags.c_contiguous and out.flags.writeable:
        return out
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy array, got {type(out).__name__}")
    if out.shape != shape:
        raise ValueError(f"out must have shape {shape}; got {out.shape}")
    if out.dtype != dtype:
        raise TypeError(f"out must have dtype {dtype.name}; got {out.dtype.name}")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError("out must be a writeable C-contiguous array")
    return out


def _as_float(x, name):
    x = check_numeric(x, name)
    dtype = x.dtype if x.dtype in (np.float32, np.float64) else np.float64
    return np.asarray(x, dtype=dtype, order="C")  # keeps 0-d input 0-d


def _unary(name):
    act = _activations.get(name)

    def forward(x):
        x = _as_float(x, "x")
        return act.forward(x, out=np.empty_like(x))

    def grad(y, dy):
        y = _as_float(y, "y")
        dy = np.asarray(check_numeric(dy, "dy"), dtype=y.dtype, order="C")
        if dy.shape != y.shape:
            raise ValueError(f"dy must have the shape of y {y.shape}; got {dy.shape}")
        return act.backward(y, dy, out=np.empty_like(dy))

    forward.__name__, grad.__name__ = name, name + "_grad"
    forward.__doc__ = f"{name} of x (softmax over the last axis); a new array."
    grad.__doc__ = (f"Gradient through {name}: dy * {name}'(x), given its output y = {name}(x).")
    return forward, grad


linear, linear_grad = _unary("linear")
sigmoid, sigmoid_grad = _unary("sigmoid")
tanh, tanh_grad = _unary("tanh")
relu, relu_grad = _unary("relu")
softmax, softmax_grad = _unary("softmax")
