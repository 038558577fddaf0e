"""Normalization and dropout kernels: batch norm, layer norm, per-channel affine, dropout.

Batch-norm kernels see the data as a 3-D view (outer, C, inner): the statistics of
channel c are taken over `outer` and `inner`. Channels-last data (N, ..., C) is
(N*..., C, 1); channels-first (N, C, H, W) is (N, C, H*W). Column reductions (batch
statistics, dgamma, dbeta) run over a fixed number of row chunks that depends only
on the shape, and the chunk partial sums (float64) are added in order, so the result
is the same for every thread count. Means and variances are two-pass (mean first,
then the mean of squared deviations) with float64 sums.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport sqrt
from libc.stdint cimport uint64_t
from libc.stdlib cimport free, malloc

from cyneuron._kernels._openmp cimport threads_for
from cyneuron._kernels.gemm cimport current_isa


cdef extern from "layernorm_rows.h" nogil:
    # one row of layer normalization, forward and backward (csrc/layernorm_rows.h); avx2:
    # run the AVX2 copy (the same bits as the baseline's)
    void cn_ln_forward_row_f32(int avx2, const float *x, Py_ssize_t D, const float *gamma,
                               const float *beta, double eps, float *out, float *mean,
                               float *inv_std)
    void cn_ln_forward_row_f64(int avx2, const double *x, Py_ssize_t D, const double *gamma,
                               const double *beta, double eps, double *out, double *mean,
                               double *inv_std)
    void cn_ln_backward_row_f32(int avx2, const float *x, const float *dy, Py_ssize_t D,
                                const float *gamma, double m, double istd,
                                double *dgamma_part, double *dbeta_part, float *dx)
    void cn_ln_backward_row_f64(int avx2, const double *x, const double *dy, Py_ssize_t D,
                                const double *gamma, double m, double istd,
                                double *dgamma_part, double *dbeta_part, double *dx)

# Column reductions use at most this many row chunks: enough for every core, and
# independent of the thread count so results are reproducible across thread counts.
cdef enum:
    MAX_CHUNKS = 64


cdef _check_len(Py_ssize_t n, Py_ssize_t other, str name):
    if other != n:
        raise ValueError(f"{name} must have {n} elements; got {other}")


cdef _check_shape(tuple shape, tuple other, str name):
    if other != shape:
        raise ValueError(f"{name} must have shape {shape}; got {other}")


cdef inline Py_ssize_t _n_chunks(Py_ssize_t rows) noexcept nogil:
    return rows if rows < MAX_CHUNKS else MAX_CHUNKS


cdef double* _alloc(Py_ssize_t n) except NULL:
    cdef double* p = <double*> malloc((n if n > 0 else 1) * sizeof(double))
    if p == NULL:
        raise MemoryError()
    return p


# ---------------------------------------------------------------------------------------
# Batch normalization
# ---------------------------------------------------------------------------------------
cdef void _channel_sums(const floating[:, :, ::1] x, const floating[::1] center, bint squared,
                        double* part, Py_ssize_t k) noexcept nogil:
    """part[t*C + c] = sum over the rows of chunk t of (x - center[c]) (or its square)."""
    cdef Py_ssize_t t, o, c, i, o0, o1
    cdef Py_ssize_t outer = x.shape[0], C = x.shape[1], inner = x.shape[2]
    cdef double s, d
    cdef int nt = threads_for(<double> outer * C * inner)
    for t in prange(k, nogil=True, num_threads=nt, schedule="static"):
        o0 = t * outer // k
        o1 = (t + 1) * outer // k
        for c in range(C):
            part[t * C + c] = 0
        for o in range(o0, o1):
            for c in range(C):
                s = 0
                for i in range(inner):
                    d = <double> x[o, c, i] - center[c]
                    if squared:
                        s = s + d * d
                    else:
                        s = s + d
                part[t * C + c] = part[t * C + c] + s


def simd_path():
    """The instruction set of layer normalization's row loops now: their AVX2 copy on the
    AVX2 and AVX-512 paths (csrc/layernorm_rows.h; the same bits as the baseline's)."""
    return "generic" if current_isa() == 0 else "avx2"


def batchnorm_stats(const floating[:, :, ::1] x, floating[::1] mean, floating[::1] var):
    """Per-channel mean and (biased) variance of x (outer, C, inner) over outer and inner."""
    cdef Py_ssize_t t, c, outer = x.shape[0], C = x.shape[1], inner = x.shape[2]
    _check_len(C, mean.shape[0], "mean")
    _check_len(C, var.shape[0], "var")
    if outer * inner == 0:
        raise ValueError("x has no samples to take statistics over")
    cdef Py_ssize_t k = _n_chunks(outer)
    cdef double count = <double> outer * inner, s
    cdef double* part = _alloc(k * C)
    try:
        with nogil:
            for c in range(C):
                mean[c] = 0
            _channel_sums(x, mean, False, part, k)
            for c in range(C):
                s = 0
                for t in range(k):
                    s = s + part[t * C + c]
                mean[c] = <floating> (s / count)
            _channel_sums(x, mean, True, part, k)
            for c in range(C):
                s = 0
                for t in range(k):
                    s = s + part[t * C + c]
                var[c] = <floating> (s / count)
    finally:
        free(part)


def channel_affine(const floating[:, :, ::1] x, const floating[::1] scale,
                   const floating[::1] shift, floating[:, :, ::1] out):
    """out[o, c, i] = x[o, c, i] * scale[c] + shift[c]: batch norm (with its statistics
    folded into scale and shift) and input normalization. out may be x."""
    cdef Py_ssize_t o, c, i, j, outer = x.shape[0], C = x.shape[1], inner = x.shape[2]
    _check_len(C, scale.shape[0], "scale")
    _check_len(C, shift.shape[0], "shift")
    _check_shape((outer, C, inner), (out.shape[0], out.shape[1], out.shape[2]), "out")
    cdef int nt = threads_for(<double> outer * C * inner)
    if inner == 1:
        for o in prange(outer, nogil=True, num_threads=nt, schedule="static"):
            for c in range(C):
                out[o, c, 0] = x[o, c, 0] * scale[c] + shift[c]
        return
    for j in prange(outer * C, nogil=True, num_threads=nt, schedule="static"):
        o = j // C
        c = j % C
        for i in range(inner):
            out[o, c, i] = x[o, c, i] * scale[c] + shift[c]


def batchnorm_backward(const floating[:, :, ::1] x, const floating[:, :, ::1] dy,
                       const floating[::1] mean, const floating[::1] var,
                       const floating[::1] gamma, double epsilon,
                       floating[::1] dgamma, floating[::1] dbeta, floating[:, :, ::1] dx=None):
    """Gradients of y = gamma * (x - mean) / sqrt(var + eps) + beta with the batch
    statistics (training mode), in closed form (xh the normalized x, M = outer * inner):

        dbeta = sum(dy),  dgamma = sum(dy * xh),
        dx = gamma / sqrt(var + eps) * (dy - dbeta / M - xh * dgamma / M).

    dx=None skips the input gradient.
    """
    cdef Py_ssize_t t, o, c, i, j, outer = x.shape[0], C = x.shape[1], inner = x.shape[2]
    _check_shape((outer, C, inner), (dy.shape[0], dy.shape[1], dy.shape[2]), "dy")
    for name, arr_len in (("mean", mean.shape[0]), ("var", var.shape[0]),
                          ("gamma", gamma.shape[0]), ("dgamma", dgamma.shape[0]),
                          ("dbeta", dbeta.shape[0])):
        _check_len(C, arr_len, name)
    if dx is not None:
        _check_shape((outer, C, inner), (dx.shape[0], dx.shape[1], dx.shape[2]), "dx")
    if outer * inner == 0:
        raise ValueError("x has no samples")
    cdef Py_ssize_t k = _n_chunks(outer), o0, o1
    cdef double count = <double> outer * inner, s1, s2, d
    cdef int nt = threads_for(<double> outer * C * inner * 2)
    # part: chunk partials [k, 2C] (sum dy, sum dy * (x - mean)); coef: [3C] for dx.
    cdef double* part = _alloc(k * 2 * C)
    cdef double* coef = _alloc(3 * C)
    cdef double istd
    try:
        for t in prange(k, nogil=True, num_threads=nt, schedule="static"):
            o0 = t * outer // k
            o1 = (t + 1) * outer // k
            for c in range(2 * C):
                part[t * 2 * C + c] = 0
            for o in range(o0, o1):
                for c in range(C):
                    s1 = 0
                    s2 = 0
                    for i in range(inner):
                        s1 = s1 + dy[o, c, i]
                        s2 = s2 + <double> dy[o, c, i] * (<double> x[o, c, i] - mean[c])
                    part[t * 2 * C + c] = part[t * 2 * C + c] + s1
                    part[t * 2 * C + C + c] = part[t * 2 * C + C + c] + s2
        for c in range(C):
            s1 = 0
            s2 = 0
            for t in range(k):
                s1 = s1 + part[t * 2 * C + c]
                s2 = s2 + part[t * 2 * C + C + c]
            istd = 1 / sqrt(<double> var[c] + epsilon)
            dbeta[c] = <floating> s1
            dgamma[c] = <floating> (s2 * istd)
            # dx = a * dy + b * (x - mean) + e
            coef[c] = gamma[c] * istd
            coef[C + c] = -gamma[c] * istd * istd * istd * s2 / count
            coef[2 * C + c] = -gamma[c] * istd * s1 / count
        if dx is None:
            return
        nt = threads_for(<double> outer * C * inner)
        if inner == 1:
            for o in prange(outer, nogil=True, num_threads=nt, schedule="static"):
                for c in range(C):
                    dx[o, c, 0] = <floating> (coef[c] * dy[o, c, 0]
                                              + coef[C + c] * (<double> x[o, c, 0] - mean[c])
                                              + coef[2 * C + c])
        else:
            for j in prange(outer * C, nogil=True, num_threads=nt, schedule="static"):
                o = j // C
                c = j % C
                for i in range(inner):
                    dx[o, c, i] = <floating> (coef[c] * dy[o, c, i]
                                              + coef[C + c] * (<double> x[o, c, i] - mean[c])
                                              + coef[2 * C + c])
    finally:
        free(part)
        free(coef)


# ---------------------------------------------------------------------------------------
# Layer normalization (over the last axis of a (rows, D) view)
# ---------------------------------------------------------------------------------------
def layernorm_forward(const floating[:, ::1] x, const floating[::1] gamma,
                      const floating[::1] beta, double epsilon, floating[:, ::1] out,
                      floating[::1] mean, floating[::1] inv_std):
    """Per row: out = gamma * (x - mean) / sqrt(var + eps) + beta; keeps mean and
    1 / sqrt(var + eps) per row for the backward pass."""
    cdef Py_ssize_t r, n = x.shape[0], D = x.shape[1]
    _check_len(D, gamma.shape[0], "gamma")
    _check_len(D, beta.shape[0], "beta")
    _check_shape((n, D), (out.shape[0], out.shape[1]), "out")
    _check_len(n, mean.shape[0], "mean")
    _check_len(n, inv_std.shape[0], "inv_std")
    if D == 0:
        raise ValueError("x must have at least one feature to normalize over")
    cdef int nt = threads_for(<double> n * D * 3), avx2 = current_isa() != 0
    for r in prange(n, nogil=True, num_threads=nt, schedule="static"):
        if floating is float:
            cn_ln_forward_row_f32(avx2, &x[r, 0], D, &gamma[0], &beta[0], epsilon, &out[r, 0],
                                  &mean[r], &inv_std[r])
        else:
            cn_ln_forward_row_f64(avx2, &x[r, 0], D, &gamma[0], &beta[0], epsilon, &out[r, 0],
                                  &mean[r], &inv_std[r])


def layernorm_backward(const floating[:, ::1] x, const floating[:, ::1] dy,
                       const floating[::1] gamma, const floating[::1] mean,
                       const floating[::1] inv_std, floating[::1] dgamma, floating[::1] dbeta,
                       floating[:, ::1] dx=None):
    """Per row, with xh = (x - mean) * inv_std and g = dy * gamma:
    dx = inv_std * (g - mean_j(g) - xh * mean_j(g * xh)); over rows, dgamma = sum(dy * xh),
    dbeta = sum(dy). dx=None skips the input gradient."""
    cdef Py_ssize_t t, r, j, n = x.shape[0], D = x.shape[1], r0, r1
    _check_shape((n, D), (dy.shape[0], dy.shape[1]), "dy")
    for name, arr_len in (("gamma", gamma.shape[0]), ("dgamma", dgamma.shape[0]),
                          ("dbeta", dbeta.shape[0])):
        _check_len(D, arr_len, name)
    _check_len(n, mean.shape[0], "mean")
    _check_len(n, inv_std.shape[0], "inv_std")
    if dx is not None:
        _check_shape((n, D), (dx.shape[0], dx.shape[1]), "dx")
    if n == 0 or D == 0:
        raise ValueError("x is empty")
    cdef bint need_dx = dx is not None
    cdef Py_ssize_t k = _n_chunks(n)
    cdef double s1, s2
    cdef int nt = threads_for(<double> n * D * 4), avx2 = current_isa() != 0
    cdef double* part = _alloc(k * 2 * D)      # chunk partials of dgamma, dbeta
    try:
        for t in prange(k, nogil=True, num_threads=nt, schedule="static"):
            r0 = t * n // k
            r1 = (t + 1) * n // k
            for j in range(2 * D):
                part[t * 2 * D + j] = 0
            for r in range(r0, r1):
                if floating is float:
                    cn_ln_backward_row_f32(avx2, &x[r, 0], &dy[r, 0], D, &gamma[0], mean[r],
                                           inv_std[r], part + t * 2 * D, part + t * 2 * D + D,
                                           &dx[r, 0] if need_dx else NULL)
                else:
                    cn_ln_backward_row_f64(avx2, &x[r, 0], &dy[r, 0], D, &gamma[0], mean[r],
                                           inv_std[r], part + t * 2 * D, part + t * 2 * D + D,
                                           &dx[r, 0] if need_dx else NULL)
        for j in range(D):
            s1 = 0
            s2 = 0
            for t in range(k):
                s1 = s1 + part[t * 2 * D + j]
                s2 = s2 + part[t * 2 * D + D + j]
            dgamma[j] = <floating> s1
            dbeta[j] = <floating> s2
    finally:
        free(part)


# ---------------------------------------------------------------------------------------
# Dropout: a counter-based generator, so each element's draw depends only on (key, index)
# ---------------------------------------------------------------------------------------
cdef inline uint64_t _splitmix64(uint64_t z) noexcept nogil:
    """The SplitMix64 output function (Steele, Lea & Flood 2014): a strong 64-bit mix."""
    z = (z ^ (z >> 30)) * <uint64_t> 0xBF58476D1CE4E5B9ULL
    z = (z ^ (z >> 27)) * <uint64_t> 0x94D049BB133111EBULL
    return z ^ (z >> 31)


def dropout_mask(floating[::1] mask, double rate, uint64_t key):
    """mask[i] = 1 / (1 - rate) with probability 1 - rate, else 0 (inverted dropout).

    Element i's uniform draw is the top 53 bits of SplitMix64 at position i of the
    stream `key`: the mask depends only on (key, rate, size), never on the threads.
    """
    if not 0 <= rate < 1:
        raise ValueError(f"rate must be in [0, 1); got {rate!r}")
    cdef Py_ssize_t i, n = mask.shape[0]
    # keep when the 53-bit draw u satisfies u >= rate * 2^53, i.e. u / 2^53 >= rate
    cdef uint64_t threshold = <uint64_t> (rate * 9007199254740992.0)
    cdef floating keep = <floating> (1.0 / (1.0 - rate))
    cdef uint64_t gamma = <uint64_t> 0x9E3779B97F4A7C15ULL
    cdef int nt = threads_for(n * 4)
    for i in prange(n, nogil=True, num_threads=nt, schedule="static"):
        if (_splitmix64(key + (<uint64_t> i + 1) * gamma) >> 11) >= threshold:
            mask[i] = keep
        else:
            mask[i] = 0


def multiply(const floating[::1] x, const floating[::1] mask, floating[::1] out):
    """out = x * mask element-wise (dropout forward, and backward on dy). out may be x."""
    cdef Py_ssize_t i, n = x.shape[0]
    _check_len(n, mask.shape[0], "mask")
    _check_len(n, out.shape[0], "out")
    cdef int nt = threads_for(n)
    for i in prange(n, nogil=True, num_threads=nt, schedule="static"):
        out[i] = x[i] * mask[i]
