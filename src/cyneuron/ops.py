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


def _result_dtype(*arrays):
    """float32 when every input is float32 (or float16), float64 otherwise."""
    if all(a.dtype in (np.float32, np.float16) for a in arrays):
        return np.dtype(np.float32)
    return np.dtype(np.float64)


def _as_operand(x, name, dtype):
    """x as a 2-D array of `dtype` whose strides the GEMM can read (copied only if not)."""
    x = check_numeric(x, name)
    if x.ndim != 2:
        raise ValueError(f"matmul: {name} must be 2-D; got an array of shape {x.shape}")
    x = x.astype(dtype, copy=False)
    if any(s % x.itemsize for s in x.strides):
        x = np.ascontiguousarray(x)
    return x


def matmul(a, b, trans_a=False, trans_b=False, bias=None, activation=None, out=None):
    """op(a) @ op(b) (+ bias) (then activation), where op transposes when asked.

    The transposes cost nothing: the GEMM packs either layout. Strided, sliced and
    Fortran-ordered inputs are read through their strides. The result is float32
    when both inputs are float32, float64 otherwise (integers are converted).

    bias: shape (N,), added to every row. activation: a name from
    cyneuron.activations. out: a C-contiguous (M, N) array of the result dtype.
    """
    a = check_numeric(a, "a")
    b = check_numeric(b, "b")
    dtype = _result_dtype(a, b)
    a = _as_operand(a, "a", dtype)
    b = _as_operand(b, "b", dtype)
    if trans_a:
        a = a.T
    if trans_b:
        b = b.T
    (m, k), (k2, n) = a.shape, b.shape
    if k != k2:
        raise ValueError(
            f"matmul: inner dimensions differ: op(a) has shape {a.shape} and op(b) {b.shape} "
            f"(trans_a={trans_a}, trans_b={trans_b})")
    act = None if activation is None else _activations.get(activation)
    if bias is not None:
        bias = check_numeric(bias, "bias")
        if bias.shape != (n,):
            raise ValueError(f"matmul: bias must have shape ({n},); got {bias.shape}")
        bias = bias.astype(dtype, copy=False)

    result = _check_out(out, (m, n), dtype)
    # The kernel writes C while reading A and B: never let them overlap.
    target = result
    if out is not None and (np.shares_memory(out, a) or np.shares_memory(out, b)):
        target = np.empty((m, n), dtype)
    if k == 0:
        target.fill(0)
    else:
        _gemm.gemm(a, b, target)
    if bias is not None:
        target += bias
    if act is not None:
        act.forward(target, out=target)
    if target is not result:
        np.copyto(result, target)
    return result


def _check_out(out, shape, dtype):
    if out is None:
        return np.empty(shape, dtype)
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
