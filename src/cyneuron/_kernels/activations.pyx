"""Activation kernels: forward y = f(x) and backward dx = dy * f'(x).

Backward passes take the forward *output* y (every derivative here is a closed
form of y), so layers keep one buffer per activation. Element-wise kernels work
on flat contiguous arrays and may run in place (out is x, or dx is dy).
"""
from cython cimport floating
from cython.parallel cimport prange

from cyneuron._kernels._math cimport fexp, ftanh, sigmoid
from cyneuron._kernels._openmp cimport threads_for


cdef _check_len(Py_ssize_t n, Py_ssize_t other, str name):
    if other != n:
        raise ValueError(f"{name} must have {n} elements; got {other}")


cdef _check_rows(tuple shape, tuple other, str name):
    if other != shape:
        raise ValueError(f"{name} must have shape {shape}; got {other}")

# Rough cost, in scalar operations, of one element: decides the thread count.
cdef enum:
    COST_CHEAP = 1
    COST_TRANSCENDENTAL = 16


def sigmoid_forward(const floating[::1] x, floating[::1] out):
    cdef Py_ssize_t i, n = x.shape[0]
    _check_len(n, out.shape[0], "out")
    cdef int nt = threads_for(n * COST_TRANSCENDENTAL)
    for i in prange(n, nogil=True, num_threads=nt, schedule="static"):
        out[i] = sigmoid(x[i])


def sigmoid_backward(const floating[::1] y, const floating[::1] dy, floating[::1] dx):
    cdef Py_ssize_t i, n = y.shape[0]
    _check_len(n, dy.shape[0], "dy")
    _check_len(n, dx.shape[0], "dx")
    cdef int nt = threads_for(n * COST_CHEAP)
    for i in prange(n, nogil=True, num_threads=nt, schedule="static"):
        dx[i] = dy[i] * y[i] * (1 - y[i])


def tanh_forward(const floating[::1] x, floating[::1] out):
    cdef Py_ssize_t i, n = x.shape[0]
    _check_len(n, out.shape[0], "out")
    cdef int nt = threads_for(n * COST_TRANSCENDENTAL)
    for i in prange(n, nogil=True, num_threads=nt, schedule="static"):
        out[i] = ftanh(x[i])


def tanh_backward(const floating[::1] y, const floating[::1] dy, floating[::1] dx):
    cdef Py_ssize_t i, n = y.shape[0]
    _check_len(n, dy.shape[0], "dy")
    _check_len(n, dx.shape[0], "dx")
    cdef int nt = threads_for(n * COST_CHEAP)
    for i in prange(n, nogil=True, num_threads=nt, schedule="static"):
        dx[i] = dy[i] * (1 - y[i] * y[i])


def relu_forward(const floating[::1] x, floating[::1] out):
    cdef Py_ssize_t i, n = x.shape[0]
    _check_len(n, out.shape[0], "out")
    cdef int nt = threads_for(n * COST_CHEAP)
    for i in prange(n, nogil=True, num_threads=nt, schedule="static"):
        out[i] = x[i] if x[i] > 0 else 0


def relu_backward(const floating[::1] y, const floating[::1] dy, floating[::1] dx):
    """dx = dy where y > 0. The derivative at 0 is taken as 0, as in Keras/PyTorch."""
    cdef Py_ssize_t i, n = y.shape[0]
    _check_len(n, dy.shape[0], "dy")
    _check_len(n, dx.shape[0], "dx")
    cdef int nt = threads_for(n * COST_CHEAP)
    for i in prange(n, nogil=True, num_threads=nt, schedule="static"):
        dx[i] = dy[i] if y[i] > 0 else 0


def softmax_forward(const floating[:, ::1] x, floating[:, ::1] out):
    """Row-wise softmax, shifted by the row max so exp never overflows."""
    cdef Py_ssize_t i, j, n = x.shape[0], c = x.shape[1]
    _check_rows((n, c), (out.shape[0], out.shape[1]), "out")
    if c == 0:
        return
    cdef floating m, s
    cdef int nt = threads_for(n * c * COST_TRANSCENDENTAL)
    for i in prange(n, nogil=True, num_threads=nt, schedule="static"):
        m = x[i, 0]
        for j in range(1, c):
            if x[i, j] > m:
                m = x[i, j]
        s = 0
        for j in range(c):
            out[i, j] = fexp(x[i, j] - m)
            s = s + out[i, j]
        for j in range(c):
            out[i, j] = out[i, j] / s


def softmax_backward(const floating[:, ::1] y, const floating[:, ::1] dy, floating[:, ::1] dx):
    """dx = y * (dy - sum(dy * y)) per row (the softmax Jacobian-vector product)."""
    cdef Py_ssize_t i, j, n = y.shape[0], c = y.shape[1]
    _check_rows((n, c), (dy.shape[0], dy.shape[1]), "dy")
    _check_rows((n, c), (dx.shape[0], dx.shape[1]), "dx")
    cdef floating s
    cdef int nt = threads_for(n * c * COST_CHEAP)
    for i in prange(n, nogil=True, num_threads=nt, schedule="static"):
        s = 0
        for j in range(c):
            s = s + dy[i, j] * y[i, j]
        for j in range(c):
            dx[i, j] = y[i, j] * (dy[i, j] - s)
