"""Array passes of the training loop: the finite-values check on input data, the
gather of a shuffled mini-batch and the element-wise sums of a Transformer block. They
run over data that can be large (a whole training set, a batch of sequences), so they
are parallel and allocate nothing (numpy's isfinite(x).all() builds a boolean array as
large as x; its add runs on one core)."""
from cython cimport floating
from cython.parallel cimport prange
from libc.stdint cimport int64_t, uint32_t, uint64_t
from libc.string cimport memcpy

cimport numpy as cnp

from cyneuron._kernels._openmp cimport threads_for
from cyneuron._kernels.gemm cimport current_isa

cnp.import_array()

cdef enum:
    BLOCK = 4096                 # elements per parallel block of the finite check
    # Below this a batch gather runs on one thread. A shuffled batch's rows come from
    # memory (a data set larger than the caches), one row's latency after another on one
    # core; two cores wait on twice as many. 784 float32 columns from a 63 MB array, 2
    # threads, Zen 5: 16 rows 3.75 -> 3.0 us, 32 rows 7.2 -> 4.7, 64 rows 13.7 -> 8.3;
    # 8 rows (25 KB) even.
    GATHER_MIN_BYTES = 1 << 15


cdef extern from *:
    """
    #include <stdint.h>
    #include "cn_isa_copies.h"   /* CN_BASELINE_AND_AVX2, CN_PICK_AVX2 */
    /* Nonzero when one of the n words has all the exponent bits of its float set (NaN or
       inf), from each word's exponent field e = x & EXP kept in independent lanes, which
       compilers vectorize (a running count needs widening adds and ran at a third of the
       speed). KEEP(acc, e) is a lane's rule, FOUND(acc) tests a lane at the end: OR-ed
       flags (compare + or), or the largest field seen (and + max, two operations a vector
       instead of three: float32 256 x 784 values from L2 in 3.8 us instead of 5.5 on Zen 5
       AVX2; SSE2 has no 32-bit max, and AVX2 none for 64 bits, so those OR). An AVX2 copy
       for the AVX2 / AVX-512 paths (this file is built for SSE2). */
    #define CN_FLAG_KEEP(acc, e, EXP) ((acc) | ((e) == EXP))
    #define CN_FLAG_FOUND(acc, EXP) ((acc) != 0)
    #define CN_MAX_KEEP(acc, e, EXP) ((acc) > (e) ? (acc) : (e))
    #define CN_MAX_FOUND(acc, EXP) ((acc) == EXP)
    #define CN_NONFINITE_FN(name, attr, T, EXP, LANES, KEEP, FOUND)                      \
    attr static uint32_t name(const T *x, int64_t n) {                                  \
        T acc[LANES] = {0}, any = 0;                                                    \
        int64_t i = 0;                                                                  \
        for (; i + LANES <= n; i += LANES)                                              \
            for (int j = 0; j < LANES; j++)                                             \
                acc[j] = KEEP(acc[j], x[i + j] & EXP, EXP);                             \
        for (; i < n; i++)                                                              \
            any |= (x[i] & EXP) == EXP;                                                 \
        for (int j = 0; j < LANES; j++)                                                 \
            any |= FOUND(acc[j], EXP);                                                  \
        return any != 0;                                                                \
    }
    #define CN_NONFINITE_FNS(sfx, attr)                                                  \
    CN_NONFINITE_FN(cn_f64_nonfinite_##sfx, attr, uint64_t, 0x7FF0000000000000u, 16,    \
                    CN_FLAG_KEEP, CN_FLAG_FOUND)
    CN_BASELINE_AND_AVX2(CN_NONFINITE_FNS)
    CN_NONFINITE_FN(cn_f32_nonfinite_generic, , uint32_t, 0x7F800000u, 32, CN_FLAG_KEEP,
                    CN_FLAG_FOUND)
    CN_NONFINITE_FN(cn_f32_nonfinite_avx2, CN_TARGET_AVX2, uint32_t, 0x7F800000u, 32,
                    CN_MAX_KEEP, CN_MAX_FOUND)
    static uint32_t cn_f32_nonfinite(int avx2, const uint32_t *x, int64_t n) {
        return CN_PICK_AVX2(cn_f32_nonfinite, avx2)(x, n);
    }
    static uint32_t cn_f64_nonfinite(int avx2, const uint64_t *x, int64_t n) {
        return CN_PICK_AVX2(cn_f64_nonfinite, avx2)(x, n);
    }
    """
    uint32_t cn_f32_nonfinite(int avx2, const uint32_t *x, int64_t n) noexcept nogil
    uint32_t cn_f64_nonfinite(int avx2, const uint64_t *x, int64_t n) noexcept nogil


def all_finite(cnp.ndarray x not None):
    """True when no element of the float32/float64 array x is NaN or infinite.

    An element is not finite exactly when its exponent bits are all ones: integer work
    that vectorizes (the C above; AVX2 on the AVX2 and AVX-512 paths) and splits over
    threads in blocks.
    Non-contiguous or other dtypes go to numpy."""
    cdef int t = cnp.PyArray_TYPE(x)
    if not cnp.PyArray_IS_C_CONTIGUOUS(x) or (t != cnp.NPY_FLOAT and t != cnp.NPY_DOUBLE):
        import numpy as np
        return bool(np.isfinite(x).all())
    cdef Py_ssize_t n = cnp.PyArray_SIZE(x), blocks = (n + BLOCK - 1) // BLOCK, b
    cdef const uint32_t *f32 = <const uint32_t *>cnp.PyArray_DATA(x)
    cdef const uint64_t *f64 = <const uint64_t *>cnp.PyArray_DATA(x)
    cdef Py_ssize_t bad = 0
    cdef int nt = threads_for(n), avx2 = current_isa() != 0
    if nt == 1:     # no parallel region: its start (~0.5 us) is a batch-1 input's check
        if t == cnp.NPY_FLOAT:
            return cn_f32_nonfinite(avx2, f32, n) == 0
        return cn_f64_nonfinite(avx2, f64, n) == 0
    if t == cnp.NPY_FLOAT:
        for b in prange(blocks, nogil=True, num_threads=nt, schedule="static"):
            bad += cn_f32_nonfinite(avx2, f32 + b * BLOCK, min(BLOCK, n - b * BLOCK))
    else:
        for b in prange(blocks, nogil=True, num_threads=nt, schedule="static"):
            bad += cn_f64_nonfinite(avx2, f64 + b * BLOCK, min(BLOCK, n - b * BLOCK))
    return bad == 0


def gather_rows(cnp.ndarray src not None, cnp.ndarray idx not None, cnp.ndarray out not None):
    """out[j] = src[idx[j]] for C-contiguous src (n, ...) and out (len(idx), ...) of one
    dtype; idx int64. Rows are copied whole, on all threads for large batches."""
    if not cnp.PyArray_IS_C_CONTIGUOUS(src) or not cnp.PyArray_IS_C_CONTIGUOUS(out) \
            or not cnp.PyArray_ISWRITEABLE(out):
        raise ValueError("gather_rows: src and out must be C-contiguous and out writeable")
    if cnp.PyArray_NDIM(src) < 1 or cnp.PyArray_NDIM(out) != cnp.PyArray_NDIM(src) \
            or cnp.PyArray_TYPE(out) != cnp.PyArray_TYPE(src) \
            or (<object>out).shape[1:] != (<object>src).shape[1:]:
        raise ValueError(f"gather_rows: out {(<object>out).shape} {out.dtype} does not hold rows "
                         f"of src {(<object>src).shape} {src.dtype}")
    if cnp.PyArray_NDIM(idx) != 1 or cnp.PyArray_TYPE(idx) != cnp.NPY_INT64 \
            or not cnp.PyArray_IS_C_CONTIGUOUS(idx) \
            or cnp.PyArray_DIM(idx, 0) != cnp.PyArray_DIM(out, 0):
        raise ValueError("gather_rows: idx must be a contiguous int64 array, one per row of out")
    cdef Py_ssize_t rows = cnp.PyArray_DIM(src, 0), count = cnp.PyArray_DIM(idx, 0), j
    cdef Py_ssize_t row_bytes = cnp.PyArray_NBYTES(src) // rows if rows else 0
    cdef const int64_t *ix = <const int64_t *>cnp.PyArray_DATA(idx)
    for j in range(count):
        if ix[j] < 0 or ix[j] >= rows:
            raise IndexError(f"gather_rows: index {ix[j]} is out of range for {rows} rows")
    cdef const char *s = <const char *>cnp.PyArray_DATA(src)
    cdef char *o = <char *>cnp.PyArray_DATA(out)
    if count * row_bytes < GATHER_MIN_BYTES:     # one thread, no parallel region
        for j in range(count):
            memcpy(o + j * row_bytes, s + ix[j] * row_bytes, row_bytes)
        return
    for j in prange(count, nogil=True, num_threads=threads_for(1 << 30), schedule="static"):
        memcpy(o + j * row_bytes, s + ix[j] * row_bytes, row_bytes)


cdef void _add_part(const floating *a, const floating *b, const floating *c, floating *out,
                    Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    cdef Py_ssize_t i
    if c == NULL:
        for i in range(lo, hi):
            out[i] = a[i] + b[i]
    else:
        for i in range(lo, hi):
            out[i] = (a[i] + b[i]) + c[i]


cdef bint _addable(object out, tuple ins):
    """Whether add's kernel takes these: ndarrays, out writeable, all C-contiguous of one
    float dtype and shape, each input out itself or apart from it."""
    if not isinstance(out, cnp.ndarray):
        return False
    cdef cnp.ndarray o = out, x
    cdef int t = cnp.PyArray_TYPE(o)
    if (t != cnp.NPY_FLOAT and t != cnp.NPY_DOUBLE) or not cnp.PyArray_IS_C_CONTIGUOUS(o) \
            or not cnp.PyArray_ISWRITEABLE(o):
        return False
    cdef char *po = <char *>cnp.PyArray_DATA(o)
    cdef char *px
    cdef Py_ssize_t nbytes = cnp.PyArray_NBYTES(o)
    for v in ins:
        if not isinstance(v, cnp.ndarray):
            return False
        x = v
        if cnp.PyArray_TYPE(x) != t or not cnp.PyArray_IS_C_CONTIGUOUS(x) \
                or (<object>x).shape != (<object>o).shape:
            return False
        px = <char *>cnp.PyArray_DATA(x)
        if px != po and px < po + nbytes and po < px + nbytes:
            return False
    return True


def add(a, b, out, c=None):
    """out = a + b, or (a + b) + c with c: element-wise, for C-contiguous float32 or
    float64 arrays of one shape and dtype, split between the threads from 32k elements (a
    Transformer block's residual sums and gradient fan-in, 2048 x 128 values each, where
    numpy's add runs on one core). out may be one of the inputs. Other layouts, dtypes
    or overlaps go to numpy. The same bits as numpy's a + b, then + c."""
    if not _addable(out, (a, b) if c is None else (a, b, c)):
        import numpy as np
        if c is None:
            np.add(a, b, out=out)
        else:
            np.add(np.add(a, b), c, out=out)
        return
    cdef Py_ssize_t n = cnp.PyArray_SIZE(<cnp.ndarray>out)
    cdef int t = cnp.PyArray_TYPE(<cnp.ndarray>out)
    cdef char *o = <char *>cnp.PyArray_DATA(<cnp.ndarray>out)
    cdef int nt = threads_for(<double>n), part
    cdef Py_ssize_t lo, hi
    cdef void *pa = cnp.PyArray_DATA(<cnp.ndarray>a)
    cdef void *pb = cnp.PyArray_DATA(<cnp.ndarray>b)
    cdef void *pc = cnp.PyArray_DATA(<cnp.ndarray>c) if c is not None else NULL
    if t == cnp.NPY_FLOAT:
        for part in prange(nt, nogil=True, num_threads=nt, schedule="static"):
            lo = n * part // nt
            hi = n * (part + 1) // nt
            _add_part(<const float *>pa, <const float *>pb, <const float *>pc, <float *>o, lo, hi)
    else:
        for part in prange(nt, nogil=True, num_threads=nt, schedule="static"):
            lo = n * part // nt
            hi = n * (part + 1) // nt
            _add_part(<const double *>pa, <const double *>pb, <const double *>pc, <double *>o,
                      lo, hi)
