"""Winograd F(4x4, 3x3) kernels for 3x3, stride-1 convolutions on channels-last data.

Lavin and Gray (2016), "Fast Algorithms for Convolutional Neural Networks": a 4x4
block of outputs of a 3x3 cross-correlation is computed from the 6x6 input patch d
around it as

    Y = A^T [ (G g G^T) (.) (B^T d B) ] A

with 36 products per channel pair instead of 144. Over a batch, the products are 36
matrix products, one per point xi of the 6x6 transform domain:

    M[xi] (T, F) = V[xi] (T, C) @ U[xi] (C, F),   V = B^T d B per tile, U = G g G^T

where T counts the 4x4 output tiles of all images. This module holds the transforms;
the layer runs the 36 products through the project GEMM. The gradients use the same
pieces: dx is the same correlation of dy with the kernel turned by 180 degrees and its
channel axes swapped (`flip`), and the kernel gradient is

    dg = G^T [ sum over tiles of V[xi]^T (A dY A^T)[xi] ] G.

Tiles cover the output from (0, 0) in steps of 4; the patch of tile (ty, tx) starts at
input row 4*ty - pad_top and column 4*tx - pad_left; positions outside the input read
as zeros and outputs past the edge are dropped, so any padding works. Every kernel
loops over tiles (or channels) in parallel and vectorizes over a block of channels,
held in local arrays the compiler knows nothing else points into.
"""
from cython cimport floating
from cython.parallel cimport prange

from cyneuron._kernels._math cimport ftanh, sigmoid
from cyneuron._kernels._openmp cimport threads_for

cdef extern from *:
    """
    #if defined(__GNUC__)
    #define CN_PREFETCH(p) __builtin_prefetch((p), 0, 3)
    #else
    #define CN_PREFETCH(p) ((void)0)
    #endif
    """
    void CN_PREFETCH(const void *p) noexcept nogil

cdef enum:
    # tiles ahead whose 36 product rows are prefetched: 36 strided streams are more
    # than the hardware prefetchers follow
    PREFETCH_TILES = 2
    # channels per sweep: the patch and its half-transformed copy stay in L1
    CB = 32
    # activation codes, the numbers of cyneuron._kernels.gemm.EPILOGUES
    ACT_LINEAR = 0
    ACT_RELU = 1
    ACT_SIGMOID = 2
    ACT_TANH = 3


def tiles(Py_ssize_t size):
    """Number of 4-wide tiles covering `size` outputs."""
    return (size + 3) // 4


# ---------------------------------------------------------------------------------------
# The 1-D transforms, applied to n channels at once. s[k*ss + c] is element k of
# channel c in; o[k*os + c] the same out.
# ---------------------------------------------------------------------------------------
cdef inline void _bt(const floating *s, Py_ssize_t ss, floating *o, Py_ssize_t os,
                     int n) noexcept nogil:
    """6 -> 6: B^T d (input patches)."""
    cdef int c
    cdef floating d0, d1, d2, d3, d4, d5
    cdef floating two = 2, four = 4, five = 5   # typed: a bare 4 would be a C double
    for c in range(n):
        d0 = s[c]
        d1 = s[ss + c]
        d2 = s[2 * ss + c]
        d3 = s[3 * ss + c]
        d4 = s[4 * ss + c]
        d5 = s[5 * ss + c]
        o[c] = four * d0 - five * d2 + d4
        o[os + c] = d3 + d4 - four * (d1 + d2)
        o[2 * os + c] = d4 - d3 + four * (d1 - d2)
        o[3 * os + c] = d4 - d2 + two * (d3 - d1)
        o[4 * os + c] = d4 - d2 + two * (d1 - d3)
        o[5 * os + c] = four * d1 - five * d3 + d5


cdef inline void _at(const floating *s, Py_ssize_t ss, floating *o, Py_ssize_t os,
                     int n) noexcept nogil:
    """6 -> 4: A^T m (products back to outputs)."""
    cdef int c
    cdef floating m0, m1, m2, m3, m4, m5, a, b, p, q
    cdef floating two = 2, four = 4, eight = 8
    for c in range(n):
        m0 = s[c]
        m1 = s[ss + c]
        m2 = s[2 * ss + c]
        m3 = s[3 * ss + c]
        m4 = s[4 * ss + c]
        m5 = s[5 * ss + c]
        a = m1 + m2
        b = m3 + m4
        p = m1 - m2
        q = m3 - m4
        o[c] = m0 + a + b
        o[os + c] = p + two * q
        o[2 * os + c] = a + four * b
        o[3 * os + c] = p + eight * q + m5


cdef inline void _a(const floating *s, Py_ssize_t ss, floating *o, Py_ssize_t os,
                    int n) noexcept nogil:
    """4 -> 6: A y (output gradients into the transform domain)."""
    cdef int c
    cdef floating y0, y1, y2, y3
    cdef floating two = 2, four = 4, eight = 8
    for c in range(n):
        y0 = s[c]
        y1 = s[ss + c]
        y2 = s[2 * ss + c]
        y3 = s[3 * ss + c]
        o[c] = y0
        o[os + c] = y0 + y1 + y2 + y3
        o[2 * os + c] = y0 - y1 + y2 - y3
        o[3 * os + c] = y0 + two * y1 + four * y2 + eight * y3
        o[4 * os + c] = y0 - two * y1 + four * y2 - eight * y3
        o[5 * os + c] = y3


cdef inline void _g(const floating *s, Py_ssize_t ss, floating *o, Py_ssize_t os,
                    int n) noexcept nogil:
    """3 -> 6: G g (kernel taps)."""
    cdef int c
    cdef floating g0, g1, g2
    cdef floating quarter = 0.25, sixth = 1.0 / 6, twelfth = 1.0 / 12, d24 = 1.0 / 24
    for c in range(n):
        g0 = s[c]
        g1 = s[ss + c]
        g2 = s[2 * ss + c]
        o[c] = quarter * g0
        o[os + c] = -sixth * (g0 + g1 + g2)
        o[2 * os + c] = -sixth * (g0 - g1 + g2)
        o[3 * os + c] = d24 * g0 + twelfth * g1 + sixth * g2
        o[4 * os + c] = d24 * g0 - twelfth * g1 + sixth * g2
        o[5 * os + c] = g2


cdef inline void _gt(const floating *s, Py_ssize_t ss, floating *o, Py_ssize_t os,
                     int n) noexcept nogil:
    """6 -> 3: G^T u (kernel gradients back to taps)."""
    cdef int c
    cdef floating u0, u1, u2, u3, u4, u5
    cdef floating quarter = 0.25, sixth = 1.0 / 6, twelfth = 1.0 / 12, d24 = 1.0 / 24
    for c in range(n):
        u0 = s[c]
        u1 = s[ss + c]
        u2 = s[2 * ss + c]
        u3 = s[3 * ss + c]
        u4 = s[4 * ss + c]
        u5 = s[5 * ss + c]
        o[c] = quarter * u0 - sixth * (u1 + u2) + d24 * (u3 + u4)
        o[os + c] = sixth * (u2 - u1) + twelfth * (u3 - u4)
        o[2 * os + c] = sixth * (u3 + u4 - u1 - u2) + u5


cdef inline void _store(const floating *s, floating *o, Py_ssize_t os, int rows,
                        int n) noexcept nogil:
    """o[k*os + c] = s[k*CB + c]: a transformed block from local memory to its strided
    home. The transforms themselves only write local arrays: a transform writing six
    strided rows of unknown spacing does not vectorize (they might overlap)."""
    cdef int k, c
    cdef floating *dst
    cdef const floating *src
    for k in range(rows):
        dst = o + k * os
        src = s + k * CB
        for c in range(n):   # a short plain loop: cheaper than a memcpy call
            dst[c] = src[c]


# ---------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------
cdef int _check3(str name, tuple got, tuple want) except -1:
    if got != want:
        raise ValueError(f"{name} must have shape {want}; got {got}")
    return 0


cdef int _check_slices(str name, tuple got, Py_ssize_t rows, Py_ssize_t width) except -1:
    """A (36, rows', width) buffer with rows' >= rows: the 36 transform-domain slices."""
    if got[0] != 36 or got[1] < rows or got[2] != width:
        raise ValueError(f"{name} must have shape (36, {rows}, {width}) (or more than {rows} "
                         f"rows per slice); got {got}")
    return 0


cdef tuple _shape(Py_ssize_t *shape, int ndim):
    return tuple(shape[i] for i in range(ndim))


# ---------------------------------------------------------------------------------------
# Kernel transforms
# ---------------------------------------------------------------------------------------
cdef void _kernel_row(const floating *g, floating *U, Py_ssize_t c, Py_ssize_t C,
                      Py_ssize_t F, bint flip) noexcept nogil:
    """U[:, c, :] = G g[:, :, c, :] G^T (or of the kernel turned by 180 degrees)."""
    cdef Py_ssize_t fb, f0, i, j, a, src
    cdef int n, k
    cdef floating taps[9 * CB]
    cdef floating half[18 * CB]
    cdef floating out[6 * CB]
    for fb in range((F + CB - 1) // CB):
        f0 = fb * CB
        n = <int>(F - f0 if F - f0 < CB else CB)
        for i in range(3):
            for j in range(3):
                src = (((2 - i) * 3 + 2 - j) if flip else (i * 3 + j)) * C * F + c * F + f0
                for k in range(n):
                    taps[(i * 3 + j) * CB + k] = g[src + k]
        for j in range(3):   # G down each column of taps: half[a*3 + j]
            _g(&taps[j * CB], 3 * CB, &half[j * CB], 3 * CB, n)
        for a in range(6):   # then along each row, into U[a*6 + b, c, f0:]
            _g(&half[a * 3 * CB], CB, out, CB, n)
            _store(out, U + (a * 6 * C + c) * F + f0, C * F, 6, n)


def kernel_transform(const floating[:, :, :, ::1] g, floating[:, :, ::1] U, bint flip=False):
    """U (36, C, F) = G g G^T for the kernel g (3, 3, C, F); flip=True transforms the
    kernel turned by 180 degrees (g[2 - i, 2 - j]), which the input gradient uses."""
    cdef Py_ssize_t C = g.shape[2], F = g.shape[3], c
    if g.shape[0] != 3 or g.shape[1] != 3:
        raise ValueError(f"the kernel must be 3x3; got {g.shape[0]}x{g.shape[1]}")
    _check3("U", _shape(U.shape, 3), (36, C, F))
    if C == 0 or F == 0:
        return
    cdef int nt = threads_for(<double> 36 * C * F * 4)
    for c in prange(C, nogil=True, num_threads=nt, schedule="static"):
        _kernel_row(&g[0, 0, 0, 0], &U[0, 0, 0], c, C, F, flip)


cdef void _kernel_grad_row(const floating *dU, floating *dg, Py_ssize_t c, Py_ssize_t C,
                           Py_ssize_t F) noexcept nogil:
    """dg[:, :, c, :] = G^T dU[:, c, :] G."""
    cdef Py_ssize_t fb, f0, i, b
    cdef int n
    cdef floating half[18 * CB]
    cdef floating out[3 * CB]
    for fb in range((F + CB - 1) // CB):
        f0 = fb * CB
        n = <int>(F - f0 if F - f0 < CB else CB)
        for b in range(6):   # G^T down each column b: half[i*6 + b]
            _gt(dU + (b * C + c) * F + f0, 6 * C * F, &half[b * CB], 6 * CB, n)
        for i in range(3):   # then along each row, into dg[i, 0:3, c, f0:]
            _gt(&half[i * 6 * CB], CB, out, CB, n)
            _store(out, dg + (i * 3 * C + c) * F + f0, C * F, 3, n)


def kernel_grad_transform(const floating[:, :, ::1] dU, floating[:, :, :, ::1] dg):
    """dg (3, 3, C, F) = G^T dU G: the kernel gradient from its transform-domain gradient
    dU (36, C, F)."""
    cdef Py_ssize_t C = dU.shape[1], F = dU.shape[2], c
    _check3("dU", (dU.shape[0],), (36,))
    _check3("dg", _shape(dg.shape, 4), (3, 3, C, F))
    if C == 0 or F == 0:
        return
    cdef int nt = threads_for(<double> 36 * C * F * 4)
    for c in prange(C, nogil=True, num_threads=nt, schedule="static"):
        _kernel_grad_row(&dU[0, 0, 0], &dg[0, 0, 0, 0], c, C, F)


# ---------------------------------------------------------------------------------------
# Data transforms
# ---------------------------------------------------------------------------------------
cdef void _input_tile(const floating *x, floating *V, Py_ssize_t t, Py_ssize_t TS,
                      Py_ssize_t H, Py_ssize_t W, Py_ssize_t C, Py_ssize_t TH, Py_ssize_t TW,
                      Py_ssize_t pad_top, Py_ssize_t pad_left) noexcept nogil:
    cdef Py_ssize_t n = t // (TH * TW), r = t % (TH * TW)
    cdef Py_ssize_t y0 = (r // TW) * 4 - pad_top, x0 = (r % TW) * 4 - pad_left
    cdef Py_ssize_t cb, c0, i, j, a, iy, ix
    cdef int m, k
    cdef const floating *src
    cdef floating patch[36 * CB]
    cdef floating half[36 * CB]
    cdef floating out[6 * CB]
    for cb in range((C + CB - 1) // CB):
        c0 = cb * CB
        m = <int>(C - c0 if C - c0 < CB else CB)
        for i in range(6):
            iy = y0 + i
            for j in range(6):
                ix = x0 + j
                if 0 <= iy < H and 0 <= ix < W:
                    src = x + ((n * H + iy) * W + ix) * C + c0
                    for k in range(m):
                        patch[(i * 6 + j) * CB + k] = src[k]
                else:
                    for k in range(m):
                        patch[(i * 6 + j) * CB + k] = 0
        for j in range(6):       # B^T down each column of the patch
            _bt(&patch[j * CB], 6 * CB, &half[j * CB], 6 * CB, m)
        for a in range(6):       # then along each row, into V[a*6 + b, t, c0:]
            _bt(&half[a * 6 * CB], CB, out, CB, m)
            _store(out, V + (a * 6 * TS + t) * C + c0, TS * C, 6, m)


def input_transform(const floating[:, :, :, ::1] x, floating[:, :, ::1] V,
                    Py_ssize_t pad_top, Py_ssize_t pad_left, Py_ssize_t tiles_h,
                    Py_ssize_t tiles_w):
    """V[:, :T] (36, T, C) = B^T d B for the 6x6 patch d of each of the T =
    N*tiles_h*tiles_w tiles of x (N, H, W, C); tile (ty, tx) reads from row
    4*ty - pad_top, column 4*tx - pad_left. V may hold more than T rows per slice
    (see the note on slice strides in the layer)."""
    cdef Py_ssize_t N = x.shape[0], H = x.shape[1], W = x.shape[2], C = x.shape[3], t
    cdef Py_ssize_t T = N * tiles_h * tiles_w
    if tiles_h < 1 or tiles_w < 1:
        raise ValueError(f"tiles must be positive; got ({tiles_h}, {tiles_w})")
    _check_slices("V", _shape(V.shape, 3), T, C)
    if T == 0 or C == 0:
        return
    cdef int nt = threads_for(<double> T * C * 36 * 4)
    for t in prange(T, nogil=True, num_threads=nt, schedule="static"):
        _input_tile(&x[0, 0, 0, 0], &V[0, 0, 0], t, V.shape[1], H, W, C, tiles_h, tiles_w,
                    pad_top, pad_left)


cdef inline floating _act(floating v, int act) noexcept nogil:
    if act == ACT_RELU:
        return v if v > 0 else 0
    if act == ACT_SIGMOID:
        return sigmoid(v)
    if act == ACT_TANH:
        return ftanh(v)
    return v


cdef void _output_tile(const floating *M, floating *y, const floating *bias, int act,
                       Py_ssize_t t, Py_ssize_t TS, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t F,
                       Py_ssize_t TH, Py_ssize_t TW) noexcept nogil:
    cdef Py_ssize_t n = t // (TH * TW), r = t % (TH * TW)
    cdef Py_ssize_t oy0 = (r // TW) * 4, ox0 = (r % TW) * 4
    cdef Py_ssize_t fb, f0, b, p, q
    cdef int m, k
    cdef floating *dst
    cdef floating half[24 * CB]
    cdef floating out[16 * CB]
    cdef Py_ssize_t xi, line
    if t + PREFETCH_TILES < TS:
        for xi in range(36):
            for line in range((F * sizeof(floating) + 63) // 64):
                CN_PREFETCH(<const char *>(M + (xi * TS + t + PREFETCH_TILES) * F) + line * 64)
    for fb in range((F + CB - 1) // CB):
        f0 = fb * CB
        m = <int>(F - f0 if F - f0 < CB else CB)
        for b in range(6):       # A^T down each column b: half[p*6 + b]
            _at(M + (b * TS + t) * F + f0, 6 * TS * F, &half[b * CB], 6 * CB, m)
        for p in range(4):       # then along each row: out[p*4 + q]
            _at(&half[p * 6 * CB], CB, &out[p * 4 * CB], CB, m)
        for p in range(4):
            if oy0 + p >= OH:
                break
            for q in range(4):
                if ox0 + q >= OW:
                    break
                dst = y + ((n * OH + oy0 + p) * OW + ox0 + q) * F + f0
                if bias != NULL:
                    for k in range(m):
                        out[(p * 4 + q) * CB + k] += bias[f0 + k]
                if act == ACT_LINEAR:
                    for k in range(m):
                        dst[k] = out[(p * 4 + q) * CB + k]
                elif act == ACT_RELU:
                    for k in range(m):
                        dst[k] = out[(p * 4 + q) * CB + k] if out[(p * 4 + q) * CB + k] > 0 else 0
                else:
                    for k in range(m):
                        dst[k] = _act(out[(p * 4 + q) * CB + k], act)


def output_transform(const floating[:, :, ::1] M, floating[:, :, :, ::1] y,
                     const floating[::1] bias=None, int activation=ACT_LINEAR):
    """y (N, OH, OW, F) = act(A^T m A + bias) for every tile's 6x6 products m, held in
    M[:, :T] (36, T, F), T = N*ceil(OH/4)*ceil(OW/4). activation: EPILOGUES code of
    linear, relu, sigmoid or tanh."""
    cdef Py_ssize_t N = y.shape[0], OH = y.shape[1], OW = y.shape[2], F = y.shape[3], t
    cdef Py_ssize_t TH = (OH + 3) // 4, TW = (OW + 3) // 4, T = N * TH * TW
    _check_slices("M", _shape(M.shape, 3), T, F)
    if bias is not None and bias.shape[0] != F:
        raise ValueError(f"bias must have {F} values; got {bias.shape[0]}")
    if not ACT_LINEAR <= activation <= ACT_TANH:
        raise ValueError(f"activation code must be linear, relu, sigmoid or tanh (0-3); "
                         f"got {activation}")
    if T == 0 or F == 0:
        return
    cdef const floating *bp = &bias[0] if bias is not None else NULL
    cdef int nt = threads_for(<double> T * F * 36 * 4)
    for t in prange(T, nogil=True, num_threads=nt, schedule="static"):
        _output_tile(&M[0, 0, 0], &y[0, 0, 0, 0], bp, activation, t, M.shape[1], OH, OW, F,
                     TH, TW)


cdef void _grad_tile(const floating *dy, floating *Q, Py_ssize_t t, Py_ssize_t TS,
                     Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t F, Py_ssize_t TH,
                     Py_ssize_t TW) noexcept nogil:
    cdef Py_ssize_t n = t // (TH * TW), r = t % (TH * TW)
    cdef Py_ssize_t oy0 = (r // TW) * 4, ox0 = (r % TW) * 4
    cdef Py_ssize_t fb, f0, a, p, q
    cdef int m, k
    cdef const floating *src
    cdef floating tile[16 * CB]
    cdef floating half[24 * CB]
    cdef floating out[6 * CB]
    for fb in range((F + CB - 1) // CB):
        f0 = fb * CB
        m = <int>(F - f0 if F - f0 < CB else CB)
        for p in range(4):
            for q in range(4):
                if oy0 + p < OH and ox0 + q < OW:
                    src = dy + ((n * OH + oy0 + p) * OW + ox0 + q) * F + f0
                    for k in range(m):
                        tile[(p * 4 + q) * CB + k] = src[k]
                else:
                    for k in range(m):
                        tile[(p * 4 + q) * CB + k] = 0
        for q in range(4):       # A down each column q: half[a*4 + q]
            _a(&tile[q * CB], 4 * CB, &half[q * CB], 4 * CB, m)
        for a in range(6):       # then along each row, into Q[a*6 + b, t, f0:]
            _a(&half[a * 4 * CB], CB, out, CB, m)
            _store(out, Q + (a * 6 * TS + t) * F + f0, TS * F, 6, m)


def output_grad_transform(const floating[:, :, :, ::1] dy, floating[:, :, ::1] Q):
    """Q[:, :T] (36, T, F) = A dY A^T for every 4x4 tile dY of the output gradient dy
    (N, OH, OW, F) (zeros past the edge): the gradient of the products M."""
    cdef Py_ssize_t N = dy.shape[0], OH = dy.shape[1], OW = dy.shape[2], F = dy.shape[3], t
    cdef Py_ssize_t TH = (OH + 3) // 4, TW = (OW + 3) // 4, T = N * TH * TW
    _check_slices("Q", _shape(Q.shape, 3), T, F)
    if T == 0 or F == 0:
        return
    cdef int nt = threads_for(<double> T * F * 36 * 4)
    for t in prange(T, nogil=True, num_threads=nt, schedule="static"):
        _grad_tile(&dy[0, 0, 0, 0], &Q[0, 0, 0], t, Q.shape[1], OH, OW, F, TH, TW)
