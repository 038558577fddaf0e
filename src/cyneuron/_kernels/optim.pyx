"""Optimizer updates: one fused loop over a model's flat parameter buffer."""
from cython cimport floating
from cython.parallel cimport prange

from cyneuron._kernels._openmp cimport threads_for


def sgd_update(floating[::1] params, const floating[::1] grads, floating[::1] velocity,
               double learning_rate, double momentum, bint nesterov):
    """Keras SGD: v = momentum v - lr g; w += v (Nesterov: w += momentum v - lr g).

    With momentum == 0 `velocity` is not touched (it may be empty).
    """
    cdef Py_ssize_t i, n = params.shape[0]
    if grads.shape[0] != n:
        raise ValueError(f"grads must have {n} elements; got {grads.shape[0]}")
    if momentum != 0 and velocity.shape[0] != n:
        raise ValueError(f"velocity must have {n} elements; got {velocity.shape[0]}")
    cdef floating lr = learning_rate, mu = momentum, v
    cdef int nt = threads_for(n)
    if momentum == 0:
        for i in prange(n, nogil=True, num_threads=nt, schedule="static"):
            params[i] = params[i] - lr * grads[i]
        return
    for i in prange(n, nogil=True, num_threads=nt, schedule="static"):
        v = mu * velocity[i] - lr * grads[i]
        velocity[i] = v
        if nesterov:
            params[i] = params[i] + mu * v - lr * grads[i]
        else:
            params[i] = params[i] + v
