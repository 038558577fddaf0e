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


cdef void _max2x2_row(const floating *x, floating *y, const Geometry *g,
                      Py_ssize_t r) noexcept nogil:
    """Output row r = (n, oy) of a 2x2 window at stride 2 wholly inside the input, no
    indices (inference): the four input pixels' channel runs are contiguous, so one
    flat loop over the channels takes their maxima in _max_row's order and with its
    comparisons (a NaN never wins), and vectorizes."""
    cdef Py_ssize_t n = r // g.OH, oy = r % g.OH, C = g.C, ox, c
    cdef const floating *p0
    cdef const floating *p1
    cdef floating *out
    cdef floating m
    for ox in range(g.OW):
        p0 = x + ((n * g.H + 2 * oy) * g.W + 2 * ox) * C
        p1 = p0 + g.W * C
        out = y + (r * g.OW + ox) * C
        for c in range(C):
            m = -INFINITY
            m = p0[c] if p0[c] > m else m
            m = p0[C + c] if p0[C + c] > m else m
            m = p1[c] if p1[c] > m else m
            m = p1[C + c] if p1[C + c] > m else m
            out[c] = m


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
    cdef bint two = (arg == NULL and g.PH == 2 and g.PW == 2 and g.SH == 2 and g.SW == 2
                     and g.PT == 0 and g.PL == 0 and 2 * g.OH <= g.H and 2 * g.OW <= g.W)
    if two:      # the common 2x2 pool of inference: its own loop
        for r in prange(g.N * g.OH, nogil=True, num_threads=nt, schedule="static"):
            _max2x2_row(&x[0, 0, 0, 0], &y[0, 0, 0, 0], &g, r)
        return
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


# ---------------------------------------------------------------------------------------
# Up-sampling: the reverse direction. Nearest copies each input pixel onto an SH x SW
# block (its backward sums the block); bilinear reads four input pixels per output
# pixel with per-row and per-column weights computed by the layer. Forward passes run
# in parallel over output rows (n, oy); the backward passes gather over input rows
# (n, iy) (bilinear: with the taps transposed), so no two threads write one dx element.
# ---------------------------------------------------------------------------------------
cdef int _check_upsample(tuple x_shape, tuple y_shape, Py_ssize_t sh, Py_ssize_t sw,
                         str y_name) except -1:
    if sh < 1 or sw < 1:
        raise ValueError(f"size must be positive; got ({sh}, {sw})")
    expected = (x_shape[0], x_shape[1] * sh, x_shape[2] * sw, x_shape[3])
    if tuple(y_shape) != expected:
        raise ValueError(f"{y_name} must have shape {expected}; got {tuple(y_shape)}")
    return 0


cdef inline void _copy_run(floating *dst, const floating *src, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t c
    for c in range(n):
        dst[c] = src[c]


def upsample_nearest(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] y,
                     Py_ssize_t sh, Py_ssize_t sw):
    """y (N, H*sh, W*sw, C): y[n, oy, ox] = x[n, oy // sh, ox // sw]."""
    cdef Py_ssize_t N = x.shape[0], H = x.shape[1], W = x.shape[2], C = x.shape[3]
    _check_upsample(_shape4(x.shape), _shape4(y.shape), sh, sw, "y")
    cdef Py_ssize_t OH = H * sh, OW = W * sw, r, n, oy, ox
    if N * OH * OW * C == 0:
        return
    cdef int nt = threads_for(<double> N * OH * OW * C)
    for r in prange(N * OH, nogil=True, num_threads=nt, schedule="static"):
        n = r // OH
        oy = r % OH
        for ox in range(OW):
            _copy_run(&y[n, oy, ox, 0], &x[n, oy // sh, ox // sw, 0], C)


def upsample_nearest_backward(const floating[:, :, :, ::1] dy, floating[:, :, :, ::1] dx,
                              Py_ssize_t sh, Py_ssize_t sw):
    """dx (N, H, W, C) = the sums of dy over each pixel's sh x sw block (overwritten)."""
    cdef Py_ssize_t N = dx.shape[0], H = dx.shape[1], W = dx.shape[2], C = dx.shape[3]
    _check_upsample(_shape4(dx.shape), _shape4(dy.shape), sh, sw, "dy")
    cdef Py_ssize_t r, n, iy, ix, a, b, c
    cdef floating *dst
    cdef const floating *src
    if N * H * W * C == 0:
        return
    cdef int nt = threads_for(<double> N * H * W * C * sh * sw)
    for r in prange(N * H, nogil=True, num_threads=nt, schedule="static"):
        n = r // H
        iy = r % H
        for ix in range(W):
            dst = &dx[n, iy, ix, 0]
            for c in range(C):
                dst[c] = 0
            for a in range(sh):
                for b in range(sw):
                    src = &dy[n, iy * sh + a, ix * sw + b, 0]
                    for c in range(C):
                        dst[c] += src[c]


cdef int _check_taps(Py_ssize_t out, Py_ssize_t size, const Py_ssize_t[::1] lo,
                     const Py_ssize_t[::1] hi, const double[::1] frac, str axis) except -1:
    cdef Py_ssize_t o
    if lo.shape[0] != out or hi.shape[0] != out or frac.shape[0] != out:
        raise ValueError(f"the {axis} taps must have {out} entries each")
    for o in range(out):
        if not (0 <= lo[o] < size and 0 <= hi[o] < size):
            raise ValueError(f"{axis} tap indices must be in [0, {size}); got {lo[o]}, {hi[o]}")
    return 0


def upsample_bilinear(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] y,
                      const Py_ssize_t[::1] lo_h, const Py_ssize_t[::1] hi_h,
                      const double[::1] f_h, const Py_ssize_t[::1] lo_w,
                      const Py_ssize_t[::1] hi_w, const double[::1] f_w):
    """y[n, oy, ox] = the bilinear blend of x at rows lo_h[oy], hi_h[oy] (weight of the
    second f_h[oy]) and columns lo_w[ox], hi_w[ox] (weight f_w[ox])."""
    cdef Py_ssize_t N = x.shape[0], H = x.shape[1], W = x.shape[2], C = x.shape[3]
    cdef Py_ssize_t OH = y.shape[1], OW = y.shape[2], r, n, oy, ox, c
    if y.shape[0] != N or y.shape[3] != C:
        raise ValueError(f"y must have {N} samples and {C} channels")
    _check_taps(OH, H, lo_h, hi_h, f_h, "row")
    _check_taps(OW, W, lo_w, hi_w, f_w, "column")
    cdef floating fy, fx, a, b
    cdef const floating *p00
    cdef const floating *p01
    cdef const floating *p10
    cdef const floating *p11
    cdef floating *dst
    if N * OH * OW * C == 0:
        return
    cdef int nt = threads_for(<double> N * OH * OW * C * 4)
    for r in prange(N * OH, nogil=True, num_threads=nt, schedule="static"):
        n = r // OH
        oy = r % OH
        fy = <floating>f_h[oy]
        for ox in range(OW):
            fx = <floating>f_w[ox]
            p00 = &x[n, lo_h[oy], lo_w[ox], 0]
            p01 = &x[n, lo_h[oy], hi_w[ox], 0]
            p10 = &x[n, hi_h[oy], lo_w[ox], 0]
            p11 = &x[n, hi_h[oy], hi_w[ox], 0]
            dst = &y[n, oy, ox, 0]
            for c in range(C):
                a = p00[c] + fx * (p01[c] - p00[c])
                b = p10[c] + fx * (p11[c] - p10[c])
                dst[c] = a + fy * (b - a)


cdef int _check_csr(Py_ssize_t rows, Py_ssize_t cols, const Py_ssize_t[::1] ptr,
                    const Py_ssize_t[::1] idx, const double[::1] w, str axis) except -1:
    cdef Py_ssize_t i
    if ptr.shape[0] != rows + 1 or ptr[0] != 0 or idx.shape[0] != w.shape[0] \
            or ptr[rows] != idx.shape[0]:
        raise ValueError(f"the {axis} adjoint taps must hold {rows} rows (pointer array of "
                         f"{rows + 1} entries ending at the number of taps)")
    for i in range(rows):
        if ptr[i] > ptr[i + 1]:
            raise ValueError(f"the {axis} adjoint tap pointers must not decrease")
    for i in range(idx.shape[0]):
        if not 0 <= idx[i] < cols:
            raise ValueError(f"{axis} adjoint tap indices must be in [0, {cols}); got {idx[i]}")
    return 0


def upsample_bilinear_backward(const floating[:, :, :, ::1] dy, floating[:, :, :, ::1] dx,
                               const Py_ssize_t[::1] ptr_h, const Py_ssize_t[::1] src_h,
                               const double[::1] w_h, const Py_ssize_t[::1] ptr_w,
                               const Py_ssize_t[::1] src_w, const double[::1] w_w):
    """dx (overwritten) = the adjoint of upsample_bilinear applied to dy, gathered: input
    row iy sums w_h[k] * (output row src_h[k]) for k in [ptr_h[iy], ptr_h[iy + 1]), and
    within it column ix sums w_w[j] * (output column src_w[j]) likewise (the forward
    taps, transposed: CSR by input index). Parallel over input rows (n, iy)."""
    cdef Py_ssize_t N = dx.shape[0], H = dx.shape[1], W = dx.shape[2], C = dx.shape[3]
    cdef Py_ssize_t OH = dy.shape[1], OW = dy.shape[2], r, n, iy, ix, k, j, c
    if dy.shape[0] != N or dy.shape[3] != C:
        raise ValueError(f"dy must have {N} samples and {C} channels")
    _check_csr(H, OH, ptr_h, src_h, w_h, "row")
    _check_csr(W, OW, ptr_w, src_w, w_w, "column")
    cdef floating wy, wt
    cdef floating *dst
    cdef const floating *src
    if N * H * W * C == 0:
        return
    cdef int nt = threads_for(<double> N * OH * OW * C * 4)
    for r in prange(N * H, nogil=True, num_threads=nt, schedule="static"):
        n = r // H
        iy = r % H
        dst = &dx[n, iy, 0, 0]
        for c in range(W * C):
            dst[c] = 0
        for k in range(ptr_h[iy], ptr_h[iy + 1]):
            wy = <floating>w_h[k]
            for ix in range(W):
                dst = &dx[n, iy, ix, 0]
                for j in range(ptr_w[ix], ptr_w[ix + 1]):
                    wt = wy * <floating>w_w[j]
                    src = &dy[n, src_h[k], src_w[j], 0]
                    for c in range(C):
                        dst[c] += wt * src[c]
