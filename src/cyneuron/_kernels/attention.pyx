"""Fused scaled dot-product attention: softmax(Q·Kᵀ · scale + mask) · V, never forming
the T_q × T_k matrix (FlashAttention-2's scheme, on the CPU).

Data: q (B, H, T_q, d_k), k (B, H, T_k, d_k), v (B, H, T_k, d_v), out (B, H, T_q, d_v),
any strides on the first three axes and a contiguous last axis, so a layer can hand in
(B, T, H, d) projections as transposed views without copying. A boolean mask is a
uint8 array of shape (B, H, T_q, T_k) with any strides (0 on broadcast axes): nonzero
means "may attend" (Keras's and PyTorch's convention). `causal` keeps key j for query
i only when j <= i (top-left aligned, as both of them). A query row that may attend to
no key gets a zero output and passes no gradient.

Forward, per tile of `bq` query rows of one (batch, head): for each tile of `bk` keys,
S = Q·Kᵀ through the project GEMM's serial entry, masked, then the online softmax
(running row max m and running sum l; the output rows are rescaled by e^(m_old - m_new)
when the max grows) and O += P·V. At the end O /= l and lse = m + log l is kept for the
backward pass. Memory: the (bq × bk) score tile per thread, nothing of size T_q × T_k.
OpenMP runs over (batch × heads × query tiles), dynamically scheduled (causal tiles
differ in cost); each tile's result does not depend on which thread computed it.

Backward, per (batch, head) and range of key tiles: D_i = dO_i · O_i, then for each key
tile (outer) and query tile (inner) the tiles are recomputed: S, P = e^(S·scale - lse),
dP = dO·Vᵀ, dS = P ∘ (dP - D) · scale; dV += Pᵀ·dO, dK += dSᵀ·Q, dQ += dS·K. When there
are fewer than 8 (batch, head) pairs, the key tiles of a pair are split
into chunks whose dQ partials go to separate slices of a caller-provided buffer and are
added in a fixed order afterwards, so the result is the same on any number of threads.

Dropout (rate p) multiplies P by z_ij = keep / (1 - p) after the softmax sums (the
normalizer is that of the undropped row). z is a counter-based draw: element
((b·H + h)·T_q + i)·T_k + j of SplitMix64 stream `key`, the same stream as
normalization.dropout_mask, so it depends on neither the tiles nor the threads, and the
backward pass recomputes it.

float32 tiles use a branch-free polynomial e^x (Cephes's, a few ulp) compiled three
times (baseline, AVX2 + FMA, AVX-512F) and chosen with the GEMM's instruction set;
float64 uses libm.
"""
import numpy as np

cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport parallel, prange
from libc.math cimport INFINITY, exp, log
from libc.stdint cimport int64_t, uint8_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memset

from cyneuron._kernels._openmp cimport cn_omp_max_threads
from cyneuron._kernels.gemm cimport current_isa, dgemm_serial, sgemm_serial

cnp.import_array()

# The backward pass splits the key tiles of each (batch, head) when there are fewer
# pairs than this (see backward's `chunks`).
cdef enum:
    SPLIT_ITEMS = 8


cdef extern from *:
    """
    #include <math.h>
    #include <stdint.h>
    #include <string.h>

    #if defined(__GNUC__) && !defined(__clang__)
    #pragma GCC push_options
    #pragma GCC optimize("no-trapping-math")
    #endif

    /* cn_expf_flush: e^x, float32, exactly 0 below -87 (masked scores weigh nothing) */
    #include "cn_expf.h"

    /* The row loops of a score tile, float32; one copy per instruction set. */
    #define CN_ATTN_LOOPS(sfx, attr)                                                   \\
    /* s[j] = e^(s[j] * scale - shift); returns the sum */                             \\
    attr static float cn_attn_expsum_##sfx(float *s, Py_ssize_t n, float scale,        \\
                                           float shift) {                              \\
        float acc[16];                                                                 \\
        float t = 0.0f;                                                                \\
        Py_ssize_t j = 0;                                                              \\
        for (int u = 0; u < 16; u++) acc[u] = 0.0f;                                    \\
        for (; j + 16 <= n; j += 16)                                                   \\
            for (int u = 0; u < 16; u++) {                                             \\
                float e = cn_expf_flush(s[j + u] * scale - shift);                      \\
                s[j + u] = e;                                                          \\
                acc[u] += e;                                                           \\
            }                                                                          \\
        for (; j < n; j++) { float e = cn_expf_flush(s[j] * scale - shift); s[j] = e; t += e; }\\
        for (int u = 0; u < 16; u++) t += acc[u];                                      \\
        return t;                                                                      \\
    }                                                                                  \\
    /* backward: s[j] = P = e^(s[j] * scale - lse) */                                  \\
    attr static void cn_attn_exprow_##sfx(float *s, Py_ssize_t n, float scale,         \\
                                          float lse) {                                 \\
        for (Py_ssize_t j = 0; j < n; j++) s[j] = cn_expf_flush(s[j] * scale - lse);    \\
    }                                                                                  \\
    /* backward: dp[j] = P (dP - D) * scale */                                         \\
    attr static void cn_attn_dsrow_##sfx(const float *p, float *dp, Py_ssize_t n,      \\
                                         float D, float scale) {                       \\
        for (Py_ssize_t j = 0; j < n; j++) dp[j] = p[j] * (dp[j] - D) * scale;         \\
    }                                                                                  \\
    attr static void cn_attn_scale_##sfx(float *x, Py_ssize_t n, float a) {            \\
        for (Py_ssize_t j = 0; j < n; j++) x[j] *= a;                                  \\
    }                                                                                  \\
    attr static float cn_attn_dot_##sfx(const float *x, const float *y, Py_ssize_t n) {\\
        float acc[16];                                                                 \\
        float t = 0.0f;                                                                \\
        Py_ssize_t j = 0;                                                              \\
        for (int u = 0; u < 16; u++) acc[u] = 0.0f;                                    \\
        for (; j + 16 <= n; j += 16)                                                   \\
            for (int u = 0; u < 16; u++) acc[u] += x[j + u] * y[j + u];                \\
        for (; j < n; j++) t += x[j] * y[j];                                           \\
        for (int u = 0; u < 16; u++) t += acc[u];                                      \\
        return t;                                                                      \\
    }

    /* The largest score of a row (a NaN score is passed over: s > m is false). GCC
       leaves this loop scalar, even written over 16 lanes (its comparison-select is not
       a max to it): the SIMD copies use the max instruction, which selects the same way
       (max(s, m) is s > m ? s : m). A 128 x 256 tile took as long as its exponentials. */
    static float cn_attn_rowmax_generic(const float *s, Py_ssize_t n) {
        float m = -INFINITY;
        for (Py_ssize_t j = 0; j < n; j++) m = s[j] > m ? s[j] : m;
        return m;
    }
    /* the SIMD copies' end: the largest of their nl lanes and of the row's last values */
    static float cn_attn_rowmax_end(const float *lanes, int nl, const float *rest,
                                    Py_ssize_t n) {
        float m = cn_attn_rowmax_generic(lanes, nl), r = cn_attn_rowmax_generic(rest, n);
        return r > m ? r : m;
    }

    CN_ATTN_LOOPS(generic, )
    #if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) \\
        && defined(CN_HAVE_X86_KERNELS)
    #define CN_ATTN_HAVE_SIMD 1
    #include <immintrin.h>
    CN_ATTN_LOOPS(avx2, __attribute__((target("avx2,fma"))))
    CN_ATTN_LOOPS(avx512, __attribute__((target("avx512f"))))
    __attribute__((target("avx2"))) static float cn_attn_rowmax_avx2(const float *s,
                                                                      Py_ssize_t n) {
        __m256 a0 = _mm256_set1_ps(-INFINITY), a1 = a0;
        Py_ssize_t j = 0;
        for (; j + 16 <= n; j += 16) {
            a0 = _mm256_max_ps(_mm256_loadu_ps(s + j), a0);
            a1 = _mm256_max_ps(_mm256_loadu_ps(s + j + 8), a1);
        }
        float lanes[8];
        _mm256_storeu_ps(lanes, _mm256_max_ps(a0, a1));
        return cn_attn_rowmax_end(lanes, 8, s + j, n - j);
    }
    __attribute__((target("avx512f"))) static float cn_attn_rowmax_avx512(const float *s,
                                                                         Py_ssize_t n) {
        __m512 a0 = _mm512_set1_ps(-INFINITY), a1 = a0;
        Py_ssize_t j = 0;
        for (; j + 32 <= n; j += 32) {
            a0 = _mm512_max_ps(_mm512_loadu_ps(s + j), a0);
            a1 = _mm512_max_ps(_mm512_loadu_ps(s + j + 16), a1);
        }
        if (j + 16 <= n) {
            a0 = _mm512_max_ps(_mm512_loadu_ps(s + j), a0);
            j += 16;
        }
        float lanes[16];
        _mm512_storeu_ps(lanes, _mm512_max_ps(a0, a1));
        return cn_attn_rowmax_end(lanes, 16, s + j, n - j);
    }
    #else
    #define CN_ATTN_HAVE_SIMD 0
    #endif

    #if defined(__GNUC__) && !defined(__clang__)
    #pragma GCC pop_options
    #endif

    /* Dispatch on the GEMM's instruction set (0 generic, 1 AVX2, 2 AVX-512), which the
       GEMM already checked against the CPU. */
    #if CN_ATTN_HAVE_SIMD
    #define CN_ATTN_CALL(isa, fn, ...) ((isa) == 2 ? fn##_avx512(__VA_ARGS__) : \\
        (isa) == 1 ? fn##_avx2(__VA_ARGS__) : fn##_generic(__VA_ARGS__))
    #else
    #define CN_ATTN_CALL(isa, fn, ...) fn##_generic(__VA_ARGS__)
    #endif
    static inline float cn_attn_rowmax(int isa, const float *s, Py_ssize_t n) {
        return CN_ATTN_CALL(isa, cn_attn_rowmax, s, n); }
    static inline float cn_attn_expsum(int isa, float *s, Py_ssize_t n, float sc, float sh) {
        return CN_ATTN_CALL(isa, cn_attn_expsum, s, n, sc, sh); }
    static inline void cn_attn_exprow(int isa, float *s, Py_ssize_t n, float sc, float l) {
        CN_ATTN_CALL(isa, cn_attn_exprow, s, n, sc, l); }
    static inline void cn_attn_dsrow(int isa, const float *p, float *dp, Py_ssize_t n,
                                     float D, float sc) {
        CN_ATTN_CALL(isa, cn_attn_dsrow, p, dp, n, D, sc); }
    static inline void cn_attn_scale(int isa, float *x, Py_ssize_t n, float a) {
        CN_ATTN_CALL(isa, cn_attn_scale, x, n, a); }
    static inline float cn_attn_dot(int isa, const float *x, const float *y, Py_ssize_t n) {
        return CN_ATTN_CALL(isa, cn_attn_dot, x, y, n); }
    static int cn_attn_have_simd(void) { return CN_ATTN_HAVE_SIMD; }
    """
    int cn_attn_have_simd() noexcept nogil
    float cn_expf_flush(float x) noexcept nogil
    float cn_attn_rowmax(int isa, const float *s, Py_ssize_t n) noexcept nogil
    float cn_attn_expsum(int isa, float *s, Py_ssize_t n, float sc, float sh) noexcept nogil
    void cn_attn_exprow(int isa, float *s, Py_ssize_t n, float sc, float l) noexcept nogil
    void cn_attn_dsrow(int isa, const float *p, float *dp, Py_ssize_t n, float D,
                       float sc) noexcept nogil
    void cn_attn_scale(int isa, float *x, Py_ssize_t n, float a) noexcept nogil
    float cn_attn_dot(int isa, const float *x, const float *y, Py_ssize_t n) noexcept nogil


def simd_path():
    """The instruction set of the float32 row loops in use: the GEMM's (CYNEURON_ISA and
    set_isa included), "generic" where the vector copies are not built."""
    if not cn_attn_have_simd():
        return "generic"
    return ("generic", "avx2", "avx512")[current_isa()]


# ---------------------------------------------------------------------------------------
# Row helpers, float32 through the C copies above, float64 in plain loops (libm exp)
# ---------------------------------------------------------------------------------------
cdef inline floating _rowmax(int isa, const floating *s, Py_ssize_t n) noexcept nogil:
    cdef floating m = -INFINITY
    cdef Py_ssize_t j
    if floating is float:
        return cn_attn_rowmax(isa, s, n)
    for j in range(n):
        if s[j] > m:
            m = s[j]
    return m


cdef inline floating _expsum(int isa, floating *s, Py_ssize_t n, floating scale,
                             floating shift) noexcept nogil:
    cdef double t = 0
    cdef Py_ssize_t j
    if floating is float:
        return cn_attn_expsum(isa, s, n, scale, shift)
    for j in range(n):
        s[j] = exp(s[j] * scale - shift)
        t += s[j]
    return t


cdef inline void _exprow(int isa, floating *s, Py_ssize_t n, floating scale,
                         floating lse) noexcept nogil:
    cdef Py_ssize_t j
    if floating is float:
        cn_attn_exprow(isa, s, n, scale, lse)
        return
    for j in range(n):
        s[j] = exp(s[j] * scale - lse)


cdef inline void _dsrow(int isa, const floating *p, floating *dp, Py_ssize_t n, floating D,
                        floating scale) noexcept nogil:
    cdef Py_ssize_t j
    if floating is float:
        cn_attn_dsrow(isa, p, dp, n, D, scale)
        return
    for j in range(n):
        dp[j] = p[j] * (dp[j] - D) * scale


cdef inline void _scale(int isa, floating *x, Py_ssize_t n, floating a) noexcept nogil:
    cdef Py_ssize_t j
    if floating is float:
        cn_attn_scale(isa, x, n, a)
        return
    for j in range(n):
        x[j] *= a


cdef inline floating _dot(int isa, const floating *x, const floating *y,
                          Py_ssize_t n) noexcept nogil:
    cdef double t = 0
    cdef Py_ssize_t j
    if floating is float:
        return cn_attn_dot(isa, x, y, n)
    for j in range(n):
        t += x[j] * y[j]
    return t


cdef inline void _mm(int64_t M, int64_t N, int64_t K, const floating *A, int64_t rsa,
                     int64_t csa, const floating *B, int64_t rsb, int64_t csb, floating *C,
                     int64_t ldc, bint accumulate) noexcept nogil:
    if floating is float:
        sgemm_serial(M, N, K, A, rsa, csa, B, rsb, csb, C, ldc, accumulate)
    else:
        dgemm_serial(M, N, K, A, rsa, csa, B, rsb, csb, C, ldc, accumulate)


cdef inline uint64_t _splitmix64(uint64_t z) noexcept nogil:
    z = (z ^ (z >> 30)) * <uint64_t> 0xBF58476D1CE4E5B9ULL
    z = (z ^ (z >> 27)) * <uint64_t> 0x94D049BB133111EBULL
    return z ^ (z >> 31)


ctypedef struct _Drop:
    bint on                     # rate > 0
    uint64_t key                # the SplitMix64 stream
    uint64_t threshold          # a draw (53 random bits) below it drops: probability rate
    double keep                 # 1 / (1 - rate): the factor of a kept element


cdef _Drop _dropout_of(double rate, uint64_t key) noexcept:
    cdef _Drop dr
    dr.on = rate > 0
    dr.key = key
    dr.threshold = <uint64_t> (rate * 9007199254740992.0)
    dr.keep = 1.0 / (1.0 - rate)
    return dr


cdef inline void _dropout_row(floating *p, Py_ssize_t n, _Drop dr,
                              uint64_t index0) noexcept nogil:
    """p[j] *= z_j, z_j the draw at index0 + j."""
    cdef Py_ssize_t j
    cdef uint64_t gamma = <uint64_t> 0x9E3779B97F4A7C15ULL
    cdef floating keep = <floating> dr.keep
    for j in range(n):
        if (_splitmix64(dr.key + (index0 + <uint64_t> j + 1) * gamma) >> 11) >= dr.threshold:
            p[j] = p[j] * keep
        else:
            p[j] = 0


cdef inline void _mask_row(floating *s, Py_ssize_t n, Py_ssize_t i, Py_ssize_t j0,
                           bint causal, const uint8_t *mbase, int64_t moff,
                           int64_t msk) noexcept nogil:
    """Scores of key j0 + c that query i may not see become -inf (its mask row, if any,
    at mbase + moff)."""
    cdef Py_ssize_t c, c0
    cdef const uint8_t *mrow
    if mbase != NULL:
        mrow = mbase + moff
        for c in range(n):
            if mrow[(j0 + c) * msk] == 0:
                s[c] = -INFINITY
    if causal and j0 + n - 1 > i:
        c0 = i - j0 + 1
        if c0 < 0:
            c0 = 0
        for c in range(c0, n):
            s[c] = -INFINITY


# ---------------------------------------------------------------------------------------
# Forward: one tile of query rows of one (batch, head)
# ---------------------------------------------------------------------------------------
cdef void _fwd_tile(int isa, Py_ssize_t nq, Py_ssize_t i0, Py_ssize_t Tk, Py_ssize_t dk,
                    Py_ssize_t dv, const floating *Q, int64_t ldq, const floating *K,
                    int64_t ldk, const floating *V, int64_t ldv, floating *O, int64_t ldo,
                    floating *lse, const uint8_t *mbase, int64_t msq, int64_t msk,
                    bint causal, floating scale, Py_ssize_t bk, _Drop dr,
                    uint64_t drop0, Py_ssize_t Tq, floating *S, floating *m,
                    floating *l) noexcept nogil:
    cdef Py_ssize_t r, j0, nk, jend, i
    cdef floating mt, mnew, alpha, rs
    cdef floating *srow
    for r in range(nq):
        m[r] = -INFINITY
        l[r] = 0
        memset(O + r * ldo, 0, dv * sizeof(floating))
    jend = Tk
    if causal and i0 + nq < Tk:
        jend = i0 + nq          # keys beyond the tile's last query row are all masked
    j0 = 0
    while j0 < jend:
        nk = min(bk, jend - j0)
        # S = Q_tile · K_tileᵀ (K's rows are the columns of the product)
        _mm(nq, nk, dk, Q, ldq, 1, K + j0 * ldk, 1, ldk, S, bk, False)
        for r in range(nq):
            i = i0 + r
            srow = S + r * bk
            _mask_row(srow, nk, i, j0, causal, mbase, r * msq, msk)
            mt = _rowmax(isa, srow, nk)
            if mt == -INFINITY:
                memset(srow, 0, nk * sizeof(floating))   # nothing to see in this tile
                continue
            mt = mt * scale
            mnew = mt if mt > m[r] else m[r]
            rs = _expsum(isa, srow, nk, scale, mnew)
            if m[r] != -INFINITY and mnew != m[r]:
                if floating is float:
                    alpha = cn_expf_flush(m[r] - mnew)
                else:
                    alpha = exp(m[r] - mnew)
                l[r] = l[r] * alpha + rs
                _scale(isa, O + r * ldo, dv, alpha)
            else:
                l[r] = l[r] + rs
            m[r] = mnew
            if dr.on:
                _dropout_row(srow, nk, dr, drop0 + <uint64_t> (i * Tk + j0))
        # O += P · V_tile
        _mm(nq, dv, nk, S, bk, 1, V + j0 * ldv, ldv, 1, O, ldo, True)
        j0 += nk
    for r in range(nq):
        if l[r] > 0:
            _scale(isa, O + r * ldo, dv, 1 / l[r])
            if floating is float:
                lse[r] = m[r] + <float> log(l[r])
            else:
                lse[r] = m[r] + log(l[r])
        else:
            lse[r] = INFINITY


cdef inline int64_t _st(cnp.ndarray a, int axis):
    return a.strides[axis] // a.itemsize


cdef tuple _shp(object a):
    return tuple(a.shape)


ctypedef struct _Mask:
    const uint8_t *p            # NULL: no mask
    int64_t sb, sh, sq, sk      # byte strides (0 on broadcast axes)


cdef _Mask _mask_of(object mask, tuple shape) except *:
    cdef _Mask mk
    mk.p = NULL
    mk.sb = mk.sh = mk.sq = mk.sk = 0
    cdef cnp.ndarray m
    if mask is not None:
        m = mask
        if m.ndim != 4 or m.dtype != np.uint8 or _shp(m) != shape:
            raise ValueError(f"mask must be uint8 of shape {shape}")
        mk.p = <const uint8_t *> cnp.PyArray_DATA(m)
        mk.sb, mk.sh, mk.sq, mk.sk = m.strides[0], m.strides[1], m.strides[2], m.strides[3]
    return mk


def _float_dtype(cnp.ndarray q):
    if q.dtype != np.float32 and q.dtype != np.float64:
        raise TypeError(f"q must be float32 or float64; got {q.dtype}")
    return q.dtype


cdef inline int _threads_for(double work, Py_ssize_t nitems) noexcept:
    """All threads for enough work (flops), one below; never more than the items."""
    cdef int nt = cn_omp_max_threads() if work >= 200000 else 1
    return <int> nitems if nt > nitems else nt


def _check(cnp.ndarray a, str name, int ndim, dtype):
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D; got {a.ndim}-D")
    if a.dtype != dtype:
        raise TypeError(f"{name} must be {dtype}; got {a.dtype}")
    if a.shape[ndim - 1] > 1 and a.strides[ndim - 1] != a.itemsize:
        raise ValueError(f"{name}: the last axis must be contiguous")
    for ax in range(ndim):
        if a.strides[ax] % a.itemsize:
            raise ValueError(f"{name}: strides must be multiples of the item size")


def forward(cnp.ndarray q, cnp.ndarray k, cnp.ndarray v, cnp.ndarray out, cnp.ndarray lse,
            mask, bint causal, double scale, double rate=0.0, uint64_t key=0,
            Py_ssize_t bq=128, Py_ssize_t bk=256):
    """out = softmax(q·kᵀ·scale, masked) · v (with dropout `rate`); lse[b, h, i] the
    log-sum-exp of query row i's scaled scores (+inf for a row that sees no key).

    q (B, H, Tq, dk), k (B, H, Tk, dk), v (B, H, Tk, dv), out (B, H, Tq, dv): float32 or
    float64, any strides, contiguous last axis; lse (B, H, Tq) C-contiguous; mask None
    or uint8 (B, H, Tq, Tk), any strides. bq, bk: the tile sizes.
    """
    dtype = _float_dtype(q)
    for a, name in ((q, "q"), (k, "k"), (v, "v"), (out, "out")):
        _check(a, name, 4, dtype)
    _check(lse, "lse", 3, dtype)
    cdef Py_ssize_t B = q.shape[0], H = q.shape[1], Tq = q.shape[2], dk = q.shape[3]
    cdef Py_ssize_t Tk = k.shape[2], dv = v.shape[3]
    if _shp(k) != (B, H, Tk, dk) or _shp(v) != (B, H, Tk, dv) \
            or _shp(out) != (B, H, Tq, dv) or _shp(lse) != (B, H, Tq):
        raise ValueError("forward: q, k, v, out and lse shapes do not agree")
    if not lse.flags.c_contiguous:
        raise ValueError("lse must be C-contiguous")
    if bq < 1 or bk < 1 or not 0 <= rate < 1:
        raise ValueError("forward: bq, bk must be positive and rate in [0, 1)")
    if B == 0 or H == 0 or Tq == 0:
        return
    if Tk == 0 or dk == 0:
        raise ValueError("forward: k must have at least one key and dk >= 1")
    cdef _Mask mk = _mask_of(mask, (B, H, Tq, Tk))
    if dtype == np.float32:
        _forward[float](q, k, v, out, lse, mk, causal, scale, rate, key, bq, bk)
    else:
        _forward[double](q, k, v, out, lse, mk, causal, scale, rate, key, bq, bk)


cdef void _forward(cnp.ndarray q, cnp.ndarray k, cnp.ndarray v, cnp.ndarray out,
                   cnp.ndarray lse, _Mask mk, bint causal, floating scale_, double rate,
                   uint64_t key, Py_ssize_t bq, Py_ssize_t bk):
    cdef Py_ssize_t B = q.shape[0], H = q.shape[1], Tq = q.shape[2], dk = q.shape[3]
    cdef Py_ssize_t Tk = k.shape[2], dv = v.shape[3]
    cdef const floating *qp = <const floating *> cnp.PyArray_DATA(q)
    cdef const floating *kp = <const floating *> cnp.PyArray_DATA(k)
    cdef const floating *vp = <const floating *> cnp.PyArray_DATA(v)
    cdef floating *op = <floating *> cnp.PyArray_DATA(out)
    cdef floating *lp = <floating *> cnp.PyArray_DATA(lse)
    cdef int64_t qsb = _st(q, 0), qsh = _st(q, 1), qst = _st(q, 2)
    cdef int64_t ksb = _st(k, 0), ksh = _st(k, 1), kst = _st(k, 2)
    cdef int64_t vsb = _st(v, 0), vsh = _st(v, 1), vst = _st(v, 2)
    cdef int64_t osb = _st(out, 0), osh = _st(out, 1), ost = _st(out, 2)
    cdef Py_ssize_t ntiles = (Tq + bq - 1) // bq, nitems = B * H * ntiles
    cdef Py_ssize_t it, bh, b, h, i0, nq
    cdef floating *S
    cdef floating *m
    cdef floating *l
    cdef const uint8_t *mb
    cdef int isa = current_isa()
    cdef _Drop dr = _dropout_of(rate, key)
    cdef floating scale = scale_
    cdef int nt = _threads_for(<double> B * H * Tq * Tk * (dk + dv) * 2, nitems)
    with nogil, parallel(num_threads=nt):
        S = <floating *> malloc(bq * bk * sizeof(floating))
        m = <floating *> malloc(bq * sizeof(floating))
        l = <floating *> malloc(bq * sizeof(floating))
        for it in prange(nitems, schedule="dynamic"):
            bh = it // ntiles
            i0 = (it % ntiles) * bq
            b = bh // H
            h = bh % H
            nq = min(bq, Tq - i0)
            mb = NULL
            if mk.p != NULL:
                mb = mk.p + b * mk.sb + h * mk.sh + i0 * mk.sq
            _fwd_tile(isa, nq, i0, Tk, dk, dv, qp + b * qsb + h * qsh + i0 * qst, qst,
                      kp + b * ksb + h * ksh, kst, vp + b * vsb + h * vsh, vst,
                      op + b * osb + h * osh + i0 * ost, ost, lp + bh * Tq + i0,
                      mb, mk.sq, mk.sk, causal, scale, bk, dr, <uint64_t> bh * Tq * Tk, Tq,
                      S, m, l)
        free(S)
        free(m)
        free(l)


# ---------------------------------------------------------------------------------------
# Backward: one (batch, head) and a range of key tiles
# ---------------------------------------------------------------------------------------
cdef void _bwd_item(int isa, Py_ssize_t Tq, Py_ssize_t Tk, Py_ssize_t dk, Py_ssize_t dv,
                    Py_ssize_t kt0, Py_ssize_t kt1,
                    const floating *Q, int64_t ldq, const floating *K, int64_t ldk,
                    const floating *V, int64_t ldv, const floating *O, int64_t ldo,
                    const floating *dO, int64_t lddo, const floating *lse,
                    floating *dQ, int64_t lddq, floating *dK, int64_t lddk,
                    floating *dV, int64_t lddv,
                    const uint8_t *mbase, int64_t msq, int64_t msk, bint causal,
                    floating scale, Py_ssize_t bq, Py_ssize_t bk, _Drop dr,
                    uint64_t drop0, floating *S, floating *dP, floating *D) noexcept nogil:
    cdef Py_ssize_t i, j0, j1, nk, i0, nq, r, qstart
    cdef floating *srow
    cdef floating *dprow
    for i in range(Tq):
        D[i] = _dot(isa, dO + i * lddo, O + i * ldo, dv)
        memset(dQ + i * lddq, 0, dk * sizeof(floating))
    j1 = min(Tk, kt1 * bk)
    for i in range(kt0 * bk, j1):
        memset(dK + i * lddk, 0, dk * sizeof(floating))
        memset(dV + i * lddv, 0, dv * sizeof(floating))
    j0 = kt0 * bk
    while j0 < j1:
        nk = min(bk, j1 - j0)
        qstart = 0
        if causal:
            qstart = (j0 // bq) * bq    # query tiles wholly above this key tile see none of it
        i0 = qstart
        while i0 < Tq:
            nq = min(bq, Tq - i0)
            _mm(nq, nk, dk, Q + i0 * ldq, ldq, 1, K + j0 * ldk, 1, ldk, S, bk, False)
            _mm(nq, nk, dv, dO + i0 * lddo, lddo, 1, V + j0 * ldv, 1, ldv, dP, bk, False)
            for r in range(nq):
                i = i0 + r
                srow = S + r * bk
                dprow = dP + r * bk
                if lse[i] == INFINITY:
                    memset(srow, 0, nk * sizeof(floating))
                    memset(dprow, 0, nk * sizeof(floating))
                    continue
                _mask_row(srow, nk, i, j0, causal, mbase, i * msq, msk)
                _exprow(isa, srow, nk, scale, lse[i])
                if dr.on:
                    # dV takes the dropped P; dS the undropped P times the dropped dP
                    _dropout_row(dprow, nk, dr, drop0 + <uint64_t> (i * Tk + j0))
                _dsrow(isa, srow, dprow, nk, D[i], scale)
                if dr.on:
                    _dropout_row(srow, nk, dr, drop0 + <uint64_t> (i * Tk + j0))
            # dV_j += Pᵀ · dO_i ; dK_j += dSᵀ · Q_i ; dQ_i += dS · K_j
            _mm(nk, dv, nq, S, 1, bk, dO + i0 * lddo, lddo, 1, dV + j0 * lddv, lddv, True)
            _mm(nk, dk, nq, dP, 1, bk, Q + i0 * ldq, ldq, 1, dK + j0 * lddk, lddk, True)
            _mm(nq, dk, nk, dP, bk, 1, K + j0 * ldk, ldk, 1, dQ + i0 * lddq, lddq, True)
            i0 += nq
        j0 += nk


def backward(cnp.ndarray dout, cnp.ndarray q, cnp.ndarray k, cnp.ndarray v, cnp.ndarray out,
             cnp.ndarray lse, cnp.ndarray dq, cnp.ndarray dk, cnp.ndarray dv, mask,
             bint causal, double scale, double rate=0.0, uint64_t key=0, Py_ssize_t bq=128,
             Py_ssize_t bk=256, Py_ssize_t chunks=0):
    """dq, dk, dv of forward's output given its gradient dout (same layouts as forward;
    dq, dk, dv any strides with a contiguous last axis, fully overwritten). chunks: key
    tile ranges per (batch, head) (0: chosen from the thread count and sizes; the result
    is the same for any value up to rounding)."""
    dtype = _float_dtype(q)
    for a, name in ((q, "q"), (k, "k"), (v, "v"), (out, "out"), (dout, "dout"), (dq, "dq"),
                    (dk, "dk"), (dv, "dv")):
        _check(a, name, 4, dtype)
    _check(lse, "lse", 3, dtype)
    cdef Py_ssize_t B = q.shape[0], H = q.shape[1], Tq = q.shape[2], d_k = q.shape[3]
    cdef Py_ssize_t Tk = k.shape[2], d_v = v.shape[3]
    if _shp(k) != (B, H, Tk, d_k) or _shp(v) != (B, H, Tk, d_v) \
            or _shp(out) != (B, H, Tq, d_v) or _shp(dout) != (B, H, Tq, d_v) \
            or _shp(lse) != (B, H, Tq) or _shp(dq) != _shp(q) \
            or _shp(dk) != _shp(k) or _shp(dv) != _shp(v):
        raise ValueError("backward: shapes do not agree")
    if not lse.flags.c_contiguous:
        raise ValueError("lse must be C-contiguous")
    if bq < 1 or bk < 1 or not 0 <= rate < 1 or chunks < 0:
        raise ValueError("backward: bq, bk must be positive, rate in [0, 1), chunks >= 0")
    if B == 0 or H == 0 or Tq == 0 or Tk == 0:
        dk[...] = 0
        dv[...] = 0
        dq[...] = 0
        return
    cdef _Mask mk = _mask_of(mask, (B, H, Tq, Tk))
    cdef Py_ssize_t ktiles = (Tk + bk - 1) // bk
    if chunks == 0:
        # Few (batch, head) pairs: split their key tiles so that there are about
        # SPLIT_ITEMS tasks. Chosen from the sizes only, never the thread count, so the
        # result is the same on any number of threads.
        chunks = 1
        if B * H < SPLIT_ITEMS and <double> Tq * Tk * (d_k + d_v) * 4 > 1e6:
            chunks = min(ktiles, (SPLIT_ITEMS + B * H - 1) // (B * H))
    chunks = min(chunks, ktiles)
    part = None
    if chunks > 1:
        part = np.empty((B * H, chunks, Tq, d_k), dtype=dtype)
    if dtype == np.float32:
        _backward[float](dout, q, k, v, out, lse, dq, dk, dv, part, mk, causal, scale, rate,
                         key, bq, bk, chunks)
    else:
        _backward[double](dout, q, k, v, out, lse, dq, dk, dv, part, mk, causal, scale, rate,
                          key, bq, bk, chunks)


cdef void _backward(cnp.ndarray dout, cnp.ndarray q, cnp.ndarray k, cnp.ndarray v,
                    cnp.ndarray out, cnp.ndarray lse, cnp.ndarray dq, cnp.ndarray dk,
                    cnp.ndarray dv, object part, _Mask mk, bint causal, floating scale_,
                    double rate, uint64_t key, Py_ssize_t bq, Py_ssize_t bk,
                    Py_ssize_t chunks):
    cdef Py_ssize_t B = q.shape[0], H = q.shape[1], Tq = q.shape[2], d_k = q.shape[3]
    cdef Py_ssize_t Tk = k.shape[2], d_v = v.shape[3]
    cdef const floating *qp = <const floating *> cnp.PyArray_DATA(q)
    cdef const floating *kp = <const floating *> cnp.PyArray_DATA(k)
    cdef const floating *vp = <const floating *> cnp.PyArray_DATA(v)
    cdef const floating *op = <const floating *> cnp.PyArray_DATA(out)
    cdef const floating *gp = <const floating *> cnp.PyArray_DATA(dout)
    cdef const floating *lp = <const floating *> cnp.PyArray_DATA(lse)
    cdef floating *dqp = <floating *> cnp.PyArray_DATA(dq)
    cdef floating *dkp = <floating *> cnp.PyArray_DATA(dk)
    cdef floating *dvp = <floating *> cnp.PyArray_DATA(dv)
    cdef floating *pp = NULL
    if part is not None:
        pp = <floating *> cnp.PyArray_DATA(part)
    cdef int64_t qsb = _st(q, 0), qsh = _st(q, 1), qst = _st(q, 2)
    cdef int64_t ksb = _st(k, 0), ksh = _st(k, 1), kst = _st(k, 2)
    cdef int64_t vsb = _st(v, 0), vsh = _st(v, 1), vst = _st(v, 2)
    cdef int64_t osb = _st(out, 0), osh = _st(out, 1), ost = _st(out, 2)
    cdef int64_t gsb = _st(dout, 0), gsh = _st(dout, 1), gst = _st(dout, 2)
    cdef int64_t dqsb = _st(dq, 0), dqsh = _st(dq, 1), dqst = _st(dq, 2)
    cdef int64_t dksb = _st(dk, 0), dksh = _st(dk, 1), dkst = _st(dk, 2)
    cdef int64_t dvsb = _st(dv, 0), dvsh = _st(dv, 1), dvst = _st(dv, 2)
    cdef Py_ssize_t ktiles = (Tk + bk - 1) // bk
    cdef Py_ssize_t per = (ktiles + chunks - 1) // chunks
    cdef Py_ssize_t nitems = B * H * chunks
    cdef Py_ssize_t it, bh, b, h, c, kt0, kt1, i, t
    cdef floating *S
    cdef floating *dP
    cdef floating *D
    cdef floating *dqt
    cdef floating *dst
    cdef const floating *src
    cdef int64_t lddq
    cdef const uint8_t *mb
    cdef int isa = current_isa()
    cdef _Drop dr = _dropout_of(rate, key)
    cdef floating scale = scale_
    cdef int nt = _threads_for(<double> B * H * Tq * Tk * (d_k + d_v) * 4, nitems)
    with nogil, parallel(num_threads=nt):
        S = <floating *> malloc(bq * bk * sizeof(floating))
        dP = <floating *> malloc(bq * bk * sizeof(floating))
        D = <floating *> malloc(Tq * sizeof(floating))
        for it in prange(nitems, schedule="dynamic"):
            bh = it // chunks
            c = it % chunks
            b = bh // H
            h = bh % H
            kt0 = c * per
            kt1 = min(ktiles, kt0 + per)
            if chunks > 1:
                dqt = pp + (bh * chunks + c) * Tq * d_k
                lddq = d_k
            else:
                dqt = dqp + b * dqsb + h * dqsh
                lddq = dqst
            mb = NULL
            if mk.p != NULL:
                mb = mk.p + b * mk.sb + h * mk.sh
            if kt0 >= kt1:
                for i in range(Tq):
                    memset(dqt + i * lddq, 0, d_k * sizeof(floating))
                continue
            _bwd_item(isa, Tq, Tk, d_k, d_v, kt0, kt1,
                      qp + b * qsb + h * qsh, qst, kp + b * ksb + h * ksh, kst,
                      vp + b * vsb + h * vsh, vst, op + b * osb + h * osh, ost,
                      gp + b * gsb + h * gsh, gst, lp + bh * Tq,
                      dqt, lddq, dkp + b * dksb + h * dksh, dkst,
                      dvp + b * dvsb + h * dvsh, dvst, mb, mk.sq, mk.sk, causal, scale, bq, bk,
                      dr, <uint64_t> bh * Tq * Tk, S, dP, D)
        free(S)
        free(dP)
        free(D)
    if chunks > 1:
        # dQ = the chunks' partials, added in chunk order (the same on any thread count)
        with nogil:
            for it in prange(B * H * Tq, num_threads=nt, schedule="static"):
                bh = it // Tq
                i = it % Tq
                b = bh // H
                h = bh % H
                dst = dqp + b * dqsb + h * dqsh + i * dqst
                src = pp + (bh * chunks) * Tq * d_k + i * d_k
                for t in range(d_k):
                    dst[t] = src[t]
                for c in range(1, chunks):
                    src = pp + (bh * chunks + c) * Tq * d_k + i * d_k
                    for t in range(d_k):
                        dst[t] = dst[t] + src[t]
