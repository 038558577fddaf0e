"""Pooling kernels on channels-last data (N, H, W, C): max and average pooling.

Output pixel (oy, ox) of sample n pools the window of rows oy*SH - PT + i and
columns ox*SW - PL + j (0 <= i < PH, 0 <= j < PW) of the input; positions in the
padding are skipped, as TensorFlow does: max pooling never picks them and
average pooling divides by the number of positions inside the input. The output
size comes from the output array; every input access is bounds-checked, so any
geometry is memory-safe. 1-D pooling is the same with H = PH = 1, and global
pooling is a single window covering the whole input.

Max pooling records, per output value, the flat index (iy*W + ix)*C + c of the
input value it took, within its sample, for the backward pass (-1 when the
window held no input position). Forward passes run in parallel over output rows
(n, oy); backward passes scatter into dx in parallel over samples, so no two
threads add into the same element even when windows overlap.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport INFINITY
from libc.stdint cimport int32_t
from libc.string cimport memset

from cyneuron._kernels._openmp cimport threads_for


cdef inline tuple _shape4(Py_ssize_t *shape):
    return (shape[0], shape[1], shape[2], shape[3])


cdef struct Geometry:
    Py_ssize_t N, H, W, C, OH, OW
    Py_ssize_t PH, PW, SH, SW, PT, PL


cdef Geometry _geometry(tuple x_shape, tuple y_shape, tuple window, tuple strides,
                        tuple padding) except *:
    cdef Geometry g
    g.N, g.H, g.W, g.C = x_shape
    if y_shape[0] != g.N or y_shape[3] != g.C:
        raise ValueError(f"the output must have {g.N} samples and {g.C} channels, as the "
                         f"input; got shape {y_shape}")
    g.OH, g.OW = y_shape[1], y_shape[2]
    g.PH, g.PW = window
    g.SH, g.SW = strides
    g.PT, g.PL = padding
    if g.PH < 1 or g.PW < 1:
        raise ValueError(f"pool size must be positive; got {window}")
    if g.SH < 1 or g.SW < 1:
        raise ValueError(f"strides must be positive; got {strides}")
    if g.PT < 0 or g.PL < 0:
        raise ValueError(f"padding must be non-negative; got {padding}")
    if g.H * g.W * g.C >= 2 ** 31:
        raise ValueError(f"one sample has {g.H * g.W * g.C} values; max pooling indexes "
                         f"them with 32-bit integers (at most 2**31 - 1)")
    return g


cdef inline void _window(const Geometry *g, Py_ssize_t oy, Py_ssize_t ox, Py_ssize_t *i0,
                         Py_ssize_t *i1, Py_ssize_t *j0, Py_ssize_t *j1) noexcept nogil:
    """Input rows [i0, i1) and columns [j0, j1) of the window of output (oy, ox)."""
    cdef Py_ssize_t y0 = oy * g.SH - g.PT, x0 = ox * g.SW - g.PL
    i0[0] = y0 if y0 > 0 else 0
    i1[0] = y0 + g.PH if y0 + g.PH < g.H else g.H
    j0[0] = x0 if x0 > 0 else 0
    j1[0] = x0 + g.PW if x0 + g.PW < g.W else g.W


# ---------------------------------------------------------------------------------------
# Max pooling
# ---------------------------------------------------------------------------------------
cdef enum:
    # Channels handled per sweep of a window: the running maxima and their indices live
    # in local arrays, which the compiler knows no input pointer aliases, so it vectorizes.
    CHANNEL_BLOCK = 32


cdef void _max_row(const floating *x, floating *y, int32_t *arg, const Geometry *g,
                   Py_ssize_t r) noexcept nogil:
    """Output row r = (n, oy): OW x C maxima, and their input indices when arg != NULL."""
    cdef Py_ssize_t n = r // g.OH, oy = r % g.OH, C = g.C
    cdef Py_ssize_t ox, iy, ix, c, b, c0, cb, i0, i1, j0, j1, base
    cdef const floating *src = x + n * g.H * g.W * C
    cdef const floating *p
    cdef floating *out
    cdef int32_t *idx
    cdef floating v, m
    cdef int32_t mask, pos
    cdef int k
    cdef bint empty
    cdef floating best[CHANNEL_BLOCK]
    cdef int32_t where[CHANNEL_BLOCK]
    for ox in range(g.OW):
        _window(g, oy, ox, &i0, &i1, &j0, &j1)
        empty = i0 >= i1 or j0 >= j1  # a window wholly in the padding gives 0
        for b in range((C + CHANNEL_BLOCK - 1) // CHANNEL_BLOCK):
            c0 = b * CHANNEL_BLOCK
            cb = C - c0 if C - c0 < CHANNEL_BLOCK else CHANNEL_BLOCK
            for c in range(cb):
                best[c] = -INFINITY
            if arg != NULL:
                for c in range(cb):
                    where[c] = -1
            for iy in range(i0, i1):
                for ix in range(j0, j1):
                    base = (iy * g.W + ix) * C + c0
                    p = src + base
                    if arg == NULL:
                        for c in range(cb):
                            best[c] = p[c] if p[c] > best[c] else best[c]
                    else:
                        pos = <int32_t>base
                        for k in range(<int>cb):
                            # a select through a bit mask: GCC vectorizes this, not an if
                            v = p[k]
                            m = best[k]
                            mask = -<int32_t>(v > m)
                            best[k] = v if v > m else m
                            where[k] = (where[k] & ~mask) | ((pos + k) & mask)
            out = y + (r * g.OW + ox) * C + c0
            for c in range(cb):
                out[c] = 0 if empty else best[c]
            if arg != NULL:
                idx = arg + (r * g.OW + ox) * C + c0
                for c in range(cb):
                    idx[c] = where[c]


def max_pool_forward(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] y,
                     int32_t[:, :, :, ::1] argmax, tuple window, tuple strides, tuple padding):
    """y (N, OH, OW, C) = window maxima of x (N, H, W, C); argmax (y's shape, or None at
    inference) gets the flat in-sample index of each maximum. window (PH, PW), strides
    (SH, SW), padding (top, left)."""
    cdef Geometry g = _geometry(_shape4(x.shape), _shape4(y.shape), window, strides,
                                padding)
    if argmax is not None and _shape4(argmax.shape) != _shape4(y.shape):
        raise ValueError(f"argmax must have the output's shape {_shape4(y.shape)}; "
                         f"got {_shape4(argmax.shape)}")
    if y.size == 0:
        return
    cdef int32_t *arg = &argmax[0, 0, 0, 0] if argmax is not None else NULL
    cdef Py_ssize_t r
    cdef int nt = threads_for(<double> x.size)
    for r in prange(g.N * g.OH, nogil=True, num_threads=nt, schedule="static"):
        _max_row(&x[0, 0, 0, 0], &y[0, 0, 0, 0], arg, &g, r)


cdef void _max_back_tiled_row(const floating *dy, const int32_t *arg, floating *dx,
                              const Geometry *g, Py_ssize_t r) noexcept nogil:
    """Output row r = (n, oy) of windows that tile the input: every input position of
    these windows gets its gradient (or 0) in one pass, with no scatter."""
    cdef Py_ssize_t n = r // g.OH, oy = r % g.OH, C = g.C, ox, i, j
    cdef const floating *gy
    cdef const int32_t *a
    cdef floating *d
    cdef floating v
    cdef int32_t pos
    cdef int c
    for ox in range(g.OW):
        gy = dy + (r * g.OW + ox) * C
        a = arg + (r * g.OW + ox) * C
        for i in range(g.PH):
            for j in range(g.PW):
                pos = <int32_t>(((oy * g.PH + i) * g.W + ox * g.PW + j) * C)
                d = dx + n * g.H * g.W * C + pos
                for c in range(<int>C):
                    v = gy[c]
                    d[c] = v if a[c] == pos + c else 0


def max_pool_backward(const floating[:, :, :, ::1] dy, const int32_t[:, :, :, ::1] argmax,
                      floating[:, :, :, ::1] dx, tuple tile=None):
    """dx (N, H, W, C) = dy scattered onto the positions of the maxima (argmax from
    max_pool_forward); dx is overwritten. Out-of-range indices raise.

    tile (PH, PW): the windows tile dx exactly (strides equal to the pool size, no
    padding, H = OH * PH and W = OW * PW); dx is then written in a single gathering
    pass instead of being zeroed and scattered into.
    """
    cdef Py_ssize_t N = dx.shape[0], sample = dx.shape[1] * dx.shape[2] * dx.shape[3]
    cdef Py_ssize_t per = dy.shape[1] * dy.shape[2] * dy.shape[3], n, k, r
    cdef Py_ssize_t bad = 0
    cdef int32_t a
    cdef Geometry geo
    if _shape4(argmax.shape) != _shape4(dy.shape):
        raise ValueError(f"argmax must have dy's shape {_shape4(dy.shape)}; "
                         f"got {_shape4(argmax.shape)}")
    if dy.shape[0] != N or dy.shape[3] != dx.shape[3]:
        raise ValueError(f"dy must have {N} samples and {dx.shape[3]} channels, as dx; "
                         f"got shape {_shape4(dy.shape)}")
    if dx.size == 0:
        return
    cdef const floating *g = &dy[0, 0, 0, 0]
    cdef const int32_t *arg = &argmax[0, 0, 0, 0]
    cdef floating *d = &dx[0, 0, 0, 0]
    cdef int nt = threads_for(<double> N * (sample + per))
    if tile is not None:
        geo = _geometry(_shape4(dx.shape), _shape4(dy.shape), tile, tile, (0, 0))
        if geo.OH * geo.PH != geo.H or geo.OW * geo.PW != geo.W:
            raise ValueError(f"tile {tile}: {geo.OH}x{geo.OW} windows of that size do not "
                             f"cover dx's {geo.H}x{geo.W} positions exactly")
        for r in prange(N * geo.OH, nogil=True, num_threads=nt, schedule="static"):
            _max_back_tiled_row(g, arg, d, &geo, r)
        return
    for n in prange(N, nogil=True, num_threads=nt, schedule="static"):
        memset(d + n * sample, 0, sample * sizeof(floating))
        for k in range(n * per, (n + 1) * per):
            a = arg[k]
            if 0 <= a < sample:
                d[n * sample + a] += g[k]
            elif a != -1:
                bad += 1
    if bad:
        raise ValueError(f"argmax holds {bad} indices outside the {sample} values of a "
                         f"sample")


# ---------------------------------------------------------------------------------------
# Average pooling
# ---------------------------------------------------------------------------------------
cdef void _avg_row(const floating *x, floating *y, const Geometry *g,
                   Py_ssize_t r) noexcept nogil:
    cdef Py_ssize_t n = r // g.OH, oy = r % g.OH, C = g.C
    cdef Py_ssize_t ox, iy, ix, c, i0, i1, j0, j1, count
    cdef const floating *src = x + n * g.H * g.W * C
    cdef const floating *p
    cdef floating *out
    cdef floating scale
    for ox in range(g.OW):
        out = y + (r * g.OW + ox) * C
        _window(g, oy, ox, &i0, &i1, &j0, &j1)
        for c in range(C):
            out[c] = 0
        for iy in range(i0, i1):
            for ix in range(j0, j1):
                p = src + (iy * g.W + ix) * C
                for c in range(C):
                    out[c] += p[c]
        count = (i1 - i0) * (j1 - j0) if i1 > i0 and j1 > j0 else 0
        if count > 1:
            scale = 1 / <floating>count
            for c in range(C):
                out[c] *= scale


def avg_pool_forward(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] y,
                     tuple window, tuple strides, tuple padding):
    """y (N, OH, OW, C) = window means of x (N, H, W, C), over the positions inside the
    input (0 for a window wholly in the padding)."""
    cdef Geometry g = _geometry(_shape4(x.shape), _shape4(y.shape), window, strides,
                                padding)
    if y.size == 0:
        return
    cdef Py_ssize_t r
    cdef int nt = threads_for(<double> x.size)
    for r in prange(g.N * g.OH, nogil=True, num_threads=nt, schedule="static"):
        _avg_row(&x[0, 0, 0, 0], &y[0, 0, 0, 0], &g, r)


cdef void _avg_back_sample(const floating *dy, floating *dx, const Geometry *g,
                           Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t C = g.C, oy, ox, iy, ix, c, i0, i1, j0, j1
    cdef floating *dst = dx + n * g.H * g.W * C
    cdef floating *p
    cdef const floating *src
    cdef floating scale
    memset(dst, 0, g.H * g.W * C * sizeof(floating))
    for oy in range(g.OH):
        for ox in range(g.OW):
            _window(g, oy, ox, &i0, &i1, &j0, &j1)
            if i0 >= i1 or j0 >= j1:
                continue
            src = dy + ((n * g.OH + oy) * g.OW + ox) * C
            scale = 1 / <floating>((i1 - i0) * (j1 - j0))
            for iy in range(i0, i1):
                for ix in range(j0, j1):
                    p = dst + (iy * g.W + ix) * C
                    for c in range(C):
                        p[c] += src[c] * scale


def avg_pool_backward(const floating[:, :, :, ::1] dy, floating[:, :, :, ::1] dx,
                      tuple window, tuple strides, tuple padding):
    """dx (N, H, W, C) = the gradient of avg_pool_forward for the output gradient dy;
    dx is overwritten."""
    cdef Geometry g = _geometry(_shape4(dx.shape), _shape4(dy.shape), window, strides,
                                padding)
    if dx.size == 0:
        return
    cdef Py_ssize_t n
    cdef int nt = threads_for(<double> dx.size + dy.size)
    for n in prange(g.N, nogil=True, num_threads=nt, schedule="static"):
        _avg_back_sample(&dy[0, 0, 0, 0], &dx[0, 0, 0, 0], &g, n)
