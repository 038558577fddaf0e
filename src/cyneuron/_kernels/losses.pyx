"""Loss kernels: each returns the summed loss and writes d(loss)/d(input) * scale.

The caller passes scale = 1 / (number of samples) (or / elements for MSE), so the
gradient matches the mean loss. The softmax cross-entropies take *logits*: the
softmax is fused in, computed with log-sum-exp, and the gradient is p - t.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.stdint cimport int64_t

from cyneuron._kernels._math cimport fexp, flog
from cyneuron._kernels._openmp cimport threads_for


cdef _check_same_shape(tuple shape, tuple other, str name):
    if shape != other:
        raise ValueError(f"{name} must have shape {shape}; got {other}")


cdef inline floating _row_logsumexp(const floating[:, ::1] z, Py_ssize_t i) noexcept nogil:
    cdef Py_ssize_t j, c = z.shape[1]
    cdef floating m = z[i, 0], s = 0
    for j in range(1, c):
        if z[i, j] > m:
            m = z[i, j]
    for j in range(c):
        s = s + fexp(z[i, j] - m)
    return m + flog(s)


def softmax_cross_entropy_sparse(const floating[:, ::1] z, const int64_t[::1] labels,
                                 floating[:, ::1] grad, double scale):
    """Sum over rows of -log softmax(z)[label]; grad = (softmax(z) - onehot) * scale."""
    cdef Py_ssize_t i, j, n = z.shape[0], c = z.shape[1]
    _check_same_shape((n, c), (grad.shape[0], grad.shape[1]), "grad")
    _check_same_shape((n,), (labels.shape[0],), "labels")
    if c == 0:
        raise ValueError("z must have at least one class column")
    for i in range(n):
        if labels[i] < 0 or labels[i] >= c:
            raise ValueError(f"labels must be in [0, {c}); got {labels[i]} at row {i}")
    cdef floating lse
    cdef double total = 0
    cdef int nt = threads_for(n * c * 16)
    for i in prange(n, nogil=True, num_threads=nt, schedule="static"):
        lse = _row_logsumexp(z, i)
        total += lse - z[i, labels[i]]
        for j in range(c):
            grad[i, j] = fexp(z[i, j] - lse) * scale
        grad[i, labels[i]] -= scale
    return total


def softmax_cross_entropy_dense(const floating[:, ::1] z, const floating[:, ::1] t,
                                floating[:, ::1] grad, double scale):
    """Sum over rows of -sum_j t_j log softmax(z)_j; grad = (softmax(z) sum(t) - t) * scale."""
    cdef Py_ssize_t i, j, n = z.shape[0], c = z.shape[1]
    _check_same_shape((n, c), (grad.shape[0], grad.shape[1]), "grad")
    _check_same_shape((n, c), (t.shape[0], t.shape[1]), "t")
    if c == 0:
        raise ValueError("z must have at least one class column")
    cdef floating lse, tsum
    cdef double total = 0
    cdef int nt = threads_for(n * c * 16)
    for i in prange(n, nogil=True, num_threads=nt, schedule="static"):
        lse = _row_logsumexp(z, i)
        tsum = 0
        for j in range(c):
            tsum = tsum + t[i, j]
            total += t[i, j] * (lse - z[i, j])
        for j in range(c):
            grad[i, j] = (fexp(z[i, j] - lse) * tsum - t[i, j]) * scale
    return total


def cross_entropy_probs(const floating[:, ::1] p, const floating[:, ::1] t,
                        floating[:, ::1] grad, double scale, double eps):
    """Cross-entropy of probabilities p clipped to [eps, 1 - eps], as Keras does: where
    the clip is active the gradient is 0, as for any clip."""
    cdef Py_ssize_t i, j, n = p.shape[0], c = p.shape[1]
    _check_same_shape((n, c), (grad.shape[0], grad.shape[1]), "grad")
    _check_same_shape((n, c), (t.shape[0], t.shape[1]), "t")
    cdef floating q
    cdef double total = 0
    cdef int nt = threads_for(n * c * 16)
    for i in prange(n, nogil=True, num_threads=nt, schedule="static"):
        for j in range(c):
            q = p[i, j]
            if q < eps:
                total += -t[i, j] * flog(<floating>eps)
                grad[i, j] = 0
            elif q > 1 - eps:
                total += -t[i, j] * flog(<floating>(1 - eps))
                grad[i, j] = 0
            else:
                total += -t[i, j] * flog(q)
                grad[i, j] = -t[i, j] / q * scale
    return total


def squared_error(const floating[::1] y, const floating[::1] t, floating[::1] grad, double scale):
    """Sum of (y - t)^2; grad = 2 (y - t) * scale."""
    cdef Py_ssize_t i, n = y.shape[0]
    _check_same_shape((n,), (t.shape[0],), "t")
    _check_same_shape((n,), (grad.shape[0],), "grad")
    cdef floating d
    cdef double total = 0
    cdef int nt = threads_for(n)
    for i in prange(n, nogil=True, num_threads=nt, schedule="static"):
        d = y[i] - t[i]
        total += d * d
        grad[i] = 2 * d * scale
    return total
