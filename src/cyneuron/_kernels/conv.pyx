"""Convolution kernels on channels-last data: im2col and col2im.

A 2-D convolution of x (N, H, W, C) with a kernel (KH, KW, C, F) is one GEMM,
cols @ kernel.reshape(KH*KW*C, F), where row r = (n, oy, ox) of the patch matrix
cols (N*OH*OW, KH*KW*C) holds the receptive field of output pixel (oy, ox) of
sample n in the kernel's (kh, kw, c) order:

    cols[r, (i*KW + j)*C + c] = x[n, oy*SH - PT + i*DH, ox*SW - PL + j*DW, c]

and zero where that position falls in the padding (PT / PL: padding before the
first row / column; the padding after follows from OH and OW). col2im is the
adjoint: it scatter-adds a patch-matrix gradient back onto dx. 1-D convolutions
are the same with H = KH = 1.

Every read and write is bounds-checked against the array shapes (a position
outside the input is padding), so any geometry is memory-safe; the layers
compute the TensorFlow output sizes. im2col runs in parallel over output rows
(n, oy); col2im over samples, so no two threads add into the same dx element.

im2col_gemm, im2col_gemm_tn and col2im_gemm do a GEMM with the patch matrix a few
images at a time, in cache, without the whole matrix (see their section below).
"""
from cython cimport floating
from cython.parallel cimport parallel, prange, threadid
from libc.stdlib cimport free, malloc
from libc.stdint cimport int64_t
from libc.string cimport memcmp, memcpy, memset

cimport numpy as cnp

from cyneuron._kernels._openmp cimport (cn_omp_barrier, cn_omp_max_threads, cn_omp_num_threads,
                                        cn_omp_thread_num, distance_percent, threads_for)
from cyneuron._kernels.gemm cimport (current_isa, dgemm_rows_serial, dgemm_serial,
                                     sgemm_rows_serial, sgemm_serial)

cnp.import_array()


cdef inline tuple _shape4(Py_ssize_t *shape):
    return (shape[0], shape[1], shape[2], shape[3])


cdef struct Geometry:
    Py_ssize_t N, H, W, C        # input
    Py_ssize_t OH, OW            # output
    Py_ssize_t KH, KW            # kernel
    Py_ssize_t SH, SW, DH, DW    # strides and dilation
    Py_ssize_t PT, PL            # padding before the first row / column


cdef Geometry _geometry(tuple x_shape, tuple window, tuple strides, tuple dilation,
                        tuple padding, Py_ssize_t oh, Py_ssize_t ow) except *:
    cdef Geometry g
    g.N, g.H, g.W, g.C = x_shape
    g.KH, g.KW = window
    g.SH, g.SW = strides
    g.DH, g.DW = dilation
    g.PT, g.PL = padding
    g.OH, g.OW = oh, ow
    for name, values in (("kernel size", window), ("strides", strides),
                         ("dilation", dilation)):
        if values[0] < 1 or values[1] < 1:
            raise ValueError(f"{name} must be positive; got {values}")
    if g.PT < 0 or g.PL < 0:
        raise ValueError(f"padding must be non-negative; got {padding}")
    if oh < 1 or ow < 1:
        raise ValueError(f"output size must be positive; got ({oh}, {ow})")
    return g


cdef inline void _copy(floating *dst, const floating *src, Py_ssize_t n) noexcept nogil:
    """dst[:n] = src[:n]: a plain loop for the few values of a thin channel axis."""
    cdef Py_ssize_t c
    if n >= 16:
        memcpy(dst, src, n * sizeof(floating))
    else:
        for c in range(n):
            dst[c] = src[c]


cdef void _im2col_row(const floating *x, floating *cols, const Geometry *g,
                      Py_ssize_t r) noexcept nogil:
    """Row block r = (n, oy) of the patch matrix: OW rows of KH*KW*C values."""
    cdef Py_ssize_t n = r // g.OH, oy = r % g.OH
    cdef Py_ssize_t C = g.C, ox, i, j, iy, ix, ix0, span
    cdef const floating *src = x + n * g.H * g.W * C
    cdef const floating *p
    cdef floating *dst = cols + r * g.OW * g.KH * g.KW * C
    for ox in range(g.OW):
        ix0 = ox * g.SW - g.PL
        for i in range(g.KH):
            iy = oy * g.SH - g.PT + i * g.DH
            if iy < 0 or iy >= g.H:
                memset(dst, 0, g.KW * C * sizeof(floating))
                dst += g.KW * C
                continue
            p = src + iy * g.W * C
            if g.DW == 1 and ix0 >= 0 and ix0 + g.KW <= g.W:
                # the whole kernel row is inside: one contiguous run of KW*C values
                span = g.KW * C
                _copy(dst, p + ix0 * C, span)
                dst += span
                continue
            for j in range(g.KW):
                ix = ix0 + j * g.DW
                if ix < 0 or ix >= g.W:
                    memset(dst, 0, C * sizeof(floating))
                else:
                    _copy(dst, p + ix * C, C)
                dst += C


def im2col(const floating[:, :, :, ::1] x, floating[:, ::1] cols, tuple window,
           tuple strides, tuple dilation, tuple padding, tuple output_size):
    """Fill the patch matrix cols (N*OH*OW, KH*KW*C) from x (N, H, W, C).

    window (KH, KW), strides (SH, SW), dilation (DH, DW), padding (top, left),
    output_size (OH, OW).
    """
    cdef Geometry g = _geometry(_shape4(x.shape), window, strides, dilation, padding,
                                output_size[0], output_size[1])
    _check_cols(&g, cols.shape[0], cols.shape[1])
    if g.N == 0:
        return
    cdef Py_ssize_t r
    cdef int nt = threads_for(<double> cols.shape[0] * cols.shape[1])
    for r in prange(g.N * g.OH, nogil=True, num_threads=nt, schedule="static"):
        _im2col_row(&x[0, 0, 0, 0], &cols[0, 0], &g, r)


cdef void _col2im_sample(const floating *cols, floating *dx, const Geometry *g,
                         Py_ssize_t n) noexcept nogil:
    """dx[n] = sum over the patch rows of sample n of their values, scattered back."""
    _col2im_image(cols + n * g.OH * g.OW * g.KH * g.KW * g.C, dx + n * g.H * g.W * g.C, g)


cdef void _col2im_image(const floating *src, floating *dst, const Geometry *g) noexcept nogil:
    """One image dst (H, W, C) = the OH*OW patch rows at src, scattered back."""
    cdef Py_ssize_t C = g.C, oy, ox, i, j, c, iy, ix, ix0
    cdef floating *p
    memset(dst, 0, g.H * g.W * C * sizeof(floating))
    for oy in range(g.OH):
        for ox in range(g.OW):
            ix0 = ox * g.SW - g.PL
            for i in range(g.KH):
                iy = oy * g.SH - g.PT + i * g.DH
                if iy < 0 or iy >= g.H:
                    src += g.KW * C
                    continue
                p = dst + iy * g.W * C
                for j in range(g.KW):
                    ix = ix0 + j * g.DW
                    if 0 <= ix < g.W:
                        for c in range(C):
                            p[ix * C + c] += src[c]
                    src += C


def col2im(const floating[:, ::1] cols, floating[:, :, :, ::1] dx, tuple window,
           tuple strides, tuple dilation, tuple padding, tuple output_size):
    """dx (N, H, W, C) = the adjoint of im2col applied to cols (N*OH*OW, KH*KW*C):
    every patch value is added back onto the input position it was copied from
    (padding positions are dropped). dx is overwritten."""
    cdef Geometry g = _geometry(_shape4(dx.shape), window, strides, dilation, padding,
                                output_size[0], output_size[1])
    _check_cols(&g, cols.shape[0], cols.shape[1])
    if g.N == 0:
        return
    cdef Py_ssize_t n
    cdef int nt = threads_for(<double> cols.shape[0] * cols.shape[1])
    for n in prange(g.N, nogil=True, num_threads=nt, schedule="static"):
        _col2im_sample(&cols[0, 0], &dx[0, 0, 0, 0], &g, n)


cdef int _check_cols(const Geometry *g, Py_ssize_t rows, Py_ssize_t width) except -1:
    if rows != g.N * g.OH * g.OW or width != g.KH * g.KW * g.C:
        raise ValueError(f"cols must have shape ({g.N * g.OH * g.OW}, {g.KH * g.KW * g.C}) "
                         f"for {g.N} samples of {g.OH}x{g.OW} outputs and a "
                         f"{g.KH}x{g.KW}x{g.C} window; got ({rows}, {width})")
    return 0


# ---------------------------------------------------------------------------------------
# The backward pass through the epilogue: activation derivative and bias gradient
# ---------------------------------------------------------------------------------------
# Activation codes, the same numbers as cyneuron._kernels.gemm.EPILOGUES.
cdef enum:
    ACT_LINEAR = 0
    ACT_RELU = 1
    ACT_SIGMOID = 2
    ACT_TANH = 3
    ACT_LEAKY_RELU = 8
    ACT_ELU = 9
    # Column sums run over this many row chunks whatever the thread count, and the
    # chunk partials (float64) are added in order: the same result on any thread count.
    MAX_CHUNKS = 64


cdef void _act_grad_rows(const floating *y, const floating *dy, floating *dz, double *part,
                         Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t F, int act,
                         floating alpha) noexcept nogil:
    """Rows [r0, r1): dz = dy * act'(y) (written when dz != NULL) and part[f] = the sum
    of those rows of dz (when part != NULL). alpha: leaky_relu's slope or elu's alpha."""
    cdef Py_ssize_t r, f
    cdef floating g, s
    cdef const floating *yr
    cdef const floating *gr
    cdef floating *zr
    if part != NULL:
        for f in range(F):
            part[f] = 0
    for r in range(r0, r1):
        yr = y + r * F
        gr = dy + r * F
        zr = dz + r * F
        if act == ACT_LINEAR:
            if part != NULL:
                for f in range(F):
                    part[f] += gr[f]
            continue
        if act == ACT_RELU:
            for f in range(F):
                g = gr[f]  # loaded unconditionally: the select below then vectorizes
                zr[f] = g if yr[f] > 0 else 0
        elif act == ACT_LEAKY_RELU:     # act'(z) = 1 for y > 0, else the slope
            for f in range(F):
                s = 1 if yr[f] > 0 else alpha
                zr[f] = gr[f] * s
        elif act == ACT_ELU:            # act'(z) = 1 for y > 0, else alpha e^z = y + alpha
            for f in range(F):
                g = yr[f] + alpha     # computed unconditionally: the select vectorizes
                s = 1 if yr[f] > 0 else g
                zr[f] = gr[f] * s
        elif act == ACT_SIGMOID:
            for f in range(F):
                zr[f] = gr[f] * yr[f] * (1 - yr[f])
        else:
            for f in range(F):
                zr[f] = gr[f] * (1 - yr[f] * yr[f])
        if part != NULL:
            for f in range(F):
                part[f] += zr[f]


def activation_bias_backward(const floating[:, ::1] y, const floating[:, ::1] dy,
                             floating[:, ::1] dz, floating[::1] db, int activation,
                             double alpha=0.0):
    """The backward pass of act(z + bias) for outputs y (M, F) and their gradient dy:
    dz = dy * act'(y) (not written for 'linear', where dz is dy; pass dz=None) and
    db = the column sums of dz (db=None: skipped). activation: EPILOGUES code of
    linear, relu, sigmoid, tanh, leaky_relu (alpha: its slope, >= 0) or elu (alpha: its
    alpha); both take the derivative from y as the GEMM epilogue's act_out does."""
    cdef Py_ssize_t M = y.shape[0], F = y.shape[1], t, f, k
    if dy.shape[0] != M or dy.shape[1] != F:
        raise ValueError(f"dy must have shape ({M}, {F}); got ({dy.shape[0]}, {dy.shape[1]})")
    if not (ACT_LINEAR <= activation <= ACT_TANH or activation == ACT_LEAKY_RELU
            or activation == ACT_ELU):
        raise ValueError(f"activation code must be linear, relu, sigmoid, tanh, leaky_relu "
                         f"or elu (0-3, 8, 9); got {activation}")
    if activation == ACT_LEAKY_RELU and alpha < 0:
        raise ValueError(f"alpha (leaky_relu's slope) must be >= 0; got {alpha}")
    if activation != ACT_LINEAR:
        if dz is None or dz.shape[0] != M or dz.shape[1] != F:
            raise ValueError(f"dz must be an array of shape ({M}, {F})")
    if db is not None and db.shape[0] != F:
        raise ValueError(f"db must have {F} values; got {db.shape[0]}")
    if M == 0 or (db is None and activation == ACT_LINEAR):
        if db is not None:
            db[:] = 0
        return
    k = M if M < MAX_CHUNKS else MAX_CHUNKS
    cdef double *part = NULL
    cdef double s
    if db is not None:
        part = <double *>malloc(k * F * sizeof(double))
        if part == NULL:
            raise MemoryError()
    cdef floating *zp = &dz[0, 0] if dz is not None else NULL
    cdef int nt = threads_for(<double> M * F * 2)
    try:
        for t in prange(k, nogil=True, num_threads=nt, schedule="static"):
            _act_grad_rows(&y[0, 0], &dy[0, 0], zp, part + t * F if part != NULL else NULL,
                           t * M // k, (t + 1) * M // k, F, activation, <floating>alpha)
        if db is not None:
            for f in range(F):
                s = 0
                for t in range(k):
                    s = s + part[t * F + f]
                db[f] = <floating>s
    finally:
        free(part)


# ---------------------------------------------------------------------------------------
# GEMM and patch matrix in one pass, a few images at a time
# ---------------------------------------------------------------------------------------
# The patch matrix of a whole batch is megabytes (64 x 14x14x32 images, 4x4 window:
# 6 MiB): written by one pass and read back by the next, it goes through memory. These
# kernels make it a few images at a time in a per-thread scratch block of about
# CHUNK_ROWS patch rows that stays in cache between the GEMM (the serial entry of
# cyneuron._kernels.gemm, on this thread) and the im2col / col2im beside it.
cdef enum:
    CHUNK_ROWS = 256
    # kernel gradients sum their chunks in this many groups whatever the thread count,
    # added in order at the end: the same bits on any thread count
    GRAD_GROUPS = 2


cdef inline int _gemm_serial(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const floating *A,
                             Py_ssize_t rsa, Py_ssize_t csa, const floating *B,
                             Py_ssize_t rsb, floating *C, Py_ssize_t ldc,
                             bint accumulate) noexcept nogil:
    if floating is float:
        return sgemm_serial(M, N, K, A, rsa, csa, B, rsb, 1, C, ldc, accumulate)
    else:
        return dgemm_serial(M, N, K, A, rsa, csa, B, rsb, 1, C, ldc, accumulate)


cdef Py_ssize_t _chunk_images(const Geometry *g, int threads) noexcept nogil:
    """Images per chunk: about CHUNK_ROWS patch rows, and at least `threads` chunks
    when there are that many images. (Where the chunks are summed together, in the
    kernel gradient, the caller passes threads=1: the chunks, and so the bits, must not
    depend on the thread count.)"""
    cdef Py_ssize_t per = g.OH * g.OW
    cdef Py_ssize_t step = max(1, min(g.N, CHUNK_ROWS // per if per < CHUNK_ROWS else 1))
    return max(1, min(step, (g.N + threads - 1) // threads))


cdef struct Chunks:
    Py_ssize_t step      # images per chunk
    Py_ssize_t count     # chunks
    Py_ssize_t rows      # patch rows per image (OH * OW)
    Py_ssize_t block     # scratch elements per thread: one chunk's patch matrix
    int threads          # no more threads than chunks
    void *scratch        # threads * block elements (malloc: the caller frees it)


cdef Chunks _chunks(const Geometry *g, int threads, Py_ssize_t depth, size_t itemsize) except *:
    """How the chunked kernels (col2im_gemm, im2col_gemm) cut the batch, and their
    scratch: one block per thread (thread t's at scratch + t * block)."""
    cdef Chunks c
    c.step = _chunk_images(g, threads)
    c.count = (g.N + c.step - 1) // c.step
    c.rows = g.OH * g.OW
    c.block = c.step * c.rows * depth
    c.threads = <int>min(<Py_ssize_t>threads, c.count)
    c.scratch = malloc(c.threads * c.block * itemsize)
    if c.scratch == NULL:
        raise MemoryError()
    return c


cdef inline void _im2col_images(const floating *x, floating *buf, const Geometry *g,
                                Py_ssize_t n0, Py_ssize_t n1) noexcept nogil:
    """The patch rows of images n0..n1-1 into buf (that chunk's patch matrix)."""
    cdef Py_ssize_t r
    for r in range(n0 * g.OH, n1 * g.OH):
        _im2col_row(x, buf - n0 * g.OH * g.OW * g.KH * g.KW * g.C, g, r)


def col2im_gemm(const floating[:, ::1] a, const floating[:, ::1] b, floating[:, :, :, ::1] dx,
                tuple window, tuple strides, tuple dilation, tuple padding,
                tuple output_size):
    """dx (N, H, W, C) = col2im(a @ b) without the whole patch matrix: a (N*OH*OW, K)
    (a convolution's output gradient, or a transposed convolution's input), b
    (K, KH*KW*C) (the kernel, transposed and contiguous). Conv2D's input gradient and
    Conv2DTranspose's forward pass. dx is overwritten; parallel over chunks of images,
    each image written by one thread (the same bits on any thread count)."""
    cdef Geometry g = _geometry(_shape4(dx.shape), window, strides, dilation, padding,
                                output_size[0], output_size[1])
    cdef Py_ssize_t depth = g.KH * g.KW * g.C, K = a.shape[1], M = g.N * g.OH * g.OW
    if a.shape[0] != M or b.shape[0] != K or b.shape[1] != depth:
        raise ValueError(f"a must have shape ({g.N * g.OH * g.OW}, K) and b (K, {depth}) for "
                         f"{g.N} samples of {g.OH}x{g.OW} patches of {g.KH}x{g.KW}x{g.C}; "
                         f"got a ({a.shape[0]}, {a.shape[1]}), b ({b.shape[0]}, {b.shape[1]})")
    if g.N == 0:
        return
    if K < 1:
        raise ValueError("a and b must have an inner dimension of at least 1")
    cdef Chunks ch = _chunks(&g, threads_for(<double> M * depth * K), depth, sizeof(floating))
    cdef Py_ssize_t step = ch.step, rows_per = ch.rows, block = ch.block, t, n, n0, n1
    cdef floating *scratch = <floating *>ch.scratch
    cdef floating *buf
    try:
        for t in prange(ch.count, nogil=True, num_threads=ch.threads, schedule="static"):
            buf = scratch + threadid() * block
            n0 = t * step
            n1 = min(g.N, n0 + step)
            _gemm_serial((n1 - n0) * rows_per, depth, K, &a[n0 * rows_per, 0], K, 1,
                         &b[0, 0], depth, buf, depth, False)
            for n in range(n0, n1):
                _col2im_image(buf + (n - n0) * rows_per * depth,
                              &dx[0, 0, 0, 0] + n * g.H * g.W * g.C, &g)
    finally:
        free(scratch)


def im2col_gemm_tn(const floating[:, :, :, ::1] x, const floating[:, ::1] a,
                   floating[:, ::1] out, tuple window, tuple strides, tuple dilation,
                   tuple padding, tuple output_size):
    """out (K, KH*KW*C) = a^T @ im2col(x) without the whole patch matrix: x (N, H, W, C),
    a (N*OH*OW, K) (the output gradient: out is then the kernel gradient, transposed).
    The patches are made again a few images at a time, in cache, instead of read back
    from memory, and each chunk of a is transposed there too (the GEMM reads a
    contiguous A fastest). The chunks go to GRAD_GROUPS partial sums added in order at
    the end: the same bits on any thread count."""
    cdef Geometry g = _geometry(_shape4(x.shape), window, strides, dilation, padding,
                                output_size[0], output_size[1])
    cdef Py_ssize_t depth = g.KH * g.KW * g.C, K = a.shape[1], M = g.N * g.OH * g.OW
    if a.shape[0] != M or out.shape[0] != K or out.shape[1] != depth:
        raise ValueError(f"a must have shape ({M}, K) and out (K, {depth}) for {g.N} "
                         f"samples of {g.OH}x{g.OW} patches of {g.KH}x{g.KW}x{g.C}; got "
                         f"a ({a.shape[0]}, {a.shape[1]}), "
                         f"out ({out.shape[0]}, {out.shape[1]})")
    if g.N == 0 or K == 0:
        out[:, :] = 0
        return
    cdef Py_ssize_t step = _chunk_images(&g, 1), chunks = (g.N + step - 1) // step
    cdef Py_ssize_t rows_per = g.OH * g.OW, block = step * rows_per * (depth + K)
    cdef Py_ssize_t groups = min(<Py_ssize_t>GRAD_GROUPS, chunks), size = K * depth
    cdef Py_ssize_t grp, c, c0, c1, n0, n1, i, rows
    cdef int nt = threads_for(<double> M * depth * K)
    nt = <int>min(<Py_ssize_t>nt, groups)
    cdef floating *scratch = <floating *>malloc(nt * block * sizeof(floating))
    cdef floating *part = <floating *>malloc(groups * size * sizeof(floating))
    cdef floating *buf
    cdef floating *at
    cdef floating *dst
    cdef floating *res
    if scratch == NULL or part == NULL:
        free(scratch)
        free(part)
        raise MemoryError()
    try:
        for grp in prange(groups, nogil=True, num_threads=nt, schedule="static"):
            buf = scratch + threadid() * block
            at = buf + step * rows_per * depth
            dst = part + grp * size
            c0 = grp * chunks // groups
            c1 = (grp + 1) * chunks // groups
            for c in range(c0, c1):
                n0 = c * step
                n1 = min(g.N, n0 + step)
                rows = (n1 - n0) * rows_per
                _im2col_images(&x[0, 0, 0, 0], buf, &g, n0, n1)
                _transpose(&a[n0 * rows_per, 0], at, rows, K)
                _gemm_serial(K, depth, rows, at, rows, 1, buf, depth, dst, depth, c > c0)
        res = &out[0, 0]
        for i in range(size):
            res[i] = part[i]
        for grp in range(1, groups):
            for i in range(size):
                res[i] = res[i] + part[grp * size + i]
    finally:
        free(scratch)
        free(part)


cdef void _transpose(const floating *src, floating *dst, Py_ssize_t rows,
                     Py_ssize_t cols) noexcept nogil:
    """dst (cols, rows) = src (rows, cols)^T, in 8 x 8 blocks."""
    cdef Py_ssize_t r0, c0, r, c, r1, c1
    for r0 in range(0, rows, 8):
        r1 = min(rows, r0 + 8)
        for c0 in range(0, cols, 8):
            c1 = min(cols, c0 + 8)
            for r in range(r0, r1):
                for c in range(c0, c1):
                    dst[c * rows + r] = src[r * cols + c]


cdef int _check_row_activation(int activation, double alpha) except -1:
    """The activations applied to rows after the GEMM here (_bias_act_rows); all
    non-decreasing (a max pooling may run before them)."""
    if activation != ACT_LINEAR and activation != ACT_RELU and activation != ACT_LEAKY_RELU:
        raise ValueError(f"activation code must be linear, relu or leaky_relu (0, 1, 8); "
                         f"got {activation}")
    if activation == ACT_LEAKY_RELU and not alpha >= 0:
        raise ValueError(f"alpha (leaky_relu's slope) must be >= 0; got {alpha}")
    return 0


cdef int _check_pooling(Py_ssize_t QH, Py_ssize_t QW, Py_ssize_t OH, Py_ssize_t OW,
                        tuple window, tuple strides) except -1:
    """Pooling windows (PH, PW) at strides (SH, SW), no padding, give QH x QW from OH x OW."""
    cdef Py_ssize_t PH, PW, SH, SW
    PH, PW = window
    SH, SW = strides
    if min(PH, PW, SH, SW, QH, QW) < 1 or (QH - 1) * SH + PH > OH or (QW - 1) * SW + PW > OW:
        raise ValueError(f"pooling windows {window} with strides {strides} do not give "
                         f"y's {QH}x{QW} from the {OH}x{OW} convolution")
    return 0


def im2col_gemm(const floating[:, :, :, ::1] x, const floating[:, ::1] b,
                floating[:, ::1] out, tuple window, tuple strides, tuple dilation,
                tuple padding, tuple output_size, const floating[::1] bias=None,
                int activation=ACT_LINEAR, double alpha=0.0):
    """out (N*OH*OW, F) = act(im2col(x) @ b + bias) without the whole patch matrix:
    x (N, H, W, C), b (KH*KW*C, F) contiguous; activation: EPILOGUES code of linear,
    relu or leaky_relu (alpha: its slope), applied to each chunk's rows while they are
    in cache. A convolution's forward pass, and Conv2DTranspose's input gradient.
    Parallel over chunks of images, each row of out written by one thread (the same
    bits on any thread count)."""
    cdef Geometry g = _geometry(_shape4(x.shape), window, strides, dilation, padding,
                                output_size[0], output_size[1])
    cdef Py_ssize_t depth = g.KH * g.KW * g.C, F = b.shape[1], M = g.N * g.OH * g.OW
    if b.shape[0] != depth or out.shape[0] != M or out.shape[1] != F:
        raise ValueError(f"b must have shape ({depth}, F) and out ({M}, F) for {g.N} "
                         f"samples of {g.OH}x{g.OW} patches of {g.KH}x{g.KW}x{g.C}; got "
                         f"b ({b.shape[0]}, {b.shape[1]}), "
                         f"out ({out.shape[0]}, {out.shape[1]})")
    if bias is not None and bias.shape[0] != F:
        raise ValueError(f"bias must have {F} values; got {bias.shape[0]}")
    _check_row_activation(activation, alpha)
    if M == 0 or F == 0:
        return
    cdef const floating *bp = &bias[0] if bias is not None else NULL
    cdef Chunks ch = _chunks(&g, threads_for(<double> M * depth * F), depth, sizeof(floating))
    cdef Py_ssize_t step = ch.step, rows_per = ch.rows, block = ch.block, t, n0, n1
    cdef floating *scratch = <floating *>ch.scratch
    cdef floating *buf
    try:
        for t in prange(ch.count, nogil=True, num_threads=ch.threads, schedule="static"):
            buf = scratch + threadid() * block
            n0 = t * step
            n1 = min(g.N, n0 + step)
            _im2col_images(&x[0, 0, 0, 0], buf, &g, n0, n1)
            _gemm_serial((n1 - n0) * rows_per, F, depth, buf, depth, 1, &b[0, 0], F,
                         &out[n0 * rows_per, 0], F, False)
            if bp != NULL or activation != ACT_LINEAR:
                _bias_act_rows(&out[n0 * rows_per, 0], F, bp, (n1 - n0) * rows_per, F,
                               activation, <floating>alpha)
    finally:
        free(scratch)


cdef extern from "gemm_epilogue.h":
    # c (m x n, row stride ldc) = act(c + bias) for linear / relu / leaky_relu: the GEMM
    # epilogue's C loops (an AVX2 copy; this file is built for the baseline)
    void cn_bias_act_f32(int avx2, float *c, int64_t ldc, int m, int n, const float *bias,
                         int act, float alpha) noexcept nogil
    void cn_bias_act_f64(int avx2, double *c, int64_t ldc, int m, int n, const double *bias,
                         int act, double alpha) noexcept nogil


cdef enum:
    BIAS_ACT_ROWS = 1 << 20      # rows per call of the epilogue's loops


cdef void _bias_act_rows(floating *y, Py_ssize_t ldy, const floating *bias, Py_ssize_t rows,
                         Py_ssize_t F, int act, floating alpha) noexcept nogil:
    """y = act(y + bias) on rows x F values, rows ldy apart (linear, relu, leaky_relu): the GEMM
    epilogue's loops, so the same bits as a fused epilogue (leaky_relu as max(v, slope v),
    min for a slope > 1, the plain form for a zero slope: v > 0 ? v : slope v)."""
    cdef int avx2 = current_isa() != 0
    cdef Py_ssize_t r0 = 0, m
    while r0 < rows:      # the C loops count rows in an int
        m = min(<Py_ssize_t>BIAS_ACT_ROWS, rows - r0)
        if floating is float:
            cn_bias_act_f32(avx2, y + r0 * ldy, ldy, <int>m, <int>F, bias, act, alpha)
        else:
            cn_bias_act_f64(avx2, y + r0 * ldy, ldy, <int>m, <int>F, bias, act, alpha)
        r0 += m


# -- convolution with its pooling (inference) -----------------------------------------------
# Bytes of patches plus conv rows in one band of im2col_gemm_pool: an L2-sized block.
cdef enum:
    POOL_BAND_BYTES = 384 * 1024
    # filters per part when threads split them: a multiple of every micro-kernel's NR,
    # so a part's slivers are the unsplit product's (the same bits)
    FILTER_PART = 32
    # the shortest kernel row (KW*C values) read as a segment of an implicit patch; below
    # it the patches are copied (im2col)
    IMPLICIT_MIN_SEGMENT = 16


cdef void _pool_rows(const floating *conv, floating *y, Py_ssize_t q0, Py_ssize_t q1,
                     Py_ssize_t oy0, Py_ssize_t OW, Py_ssize_t QW, Py_ssize_t F,
                     Py_ssize_t nf, Py_ssize_t PH, Py_ssize_t PW, Py_ssize_t SH,
                     Py_ssize_t SW, bint max_pool) noexcept nogil:
    """Pooled rows q0..q1-1 of one sample (y: its (QH, QW, F) output) from its conv rows
    oy0.. in conv (rows x OW x F), the first nf channels (conv and y may point at a later
    channel)."""
    cdef Py_ssize_t qy, qx, i, j, f
    cdef const floating *v
    cdef floating *out
    cdef floating scale = <floating>1 / <floating>(PH * PW)
    for qy in range(q0, q1):
        for qx in range(QW):
            out = y + (qy * QW + qx) * F
            v = conv + ((qy * SH - oy0) * OW + qx * SW) * F
            for f in range(nf):
                out[f] = v[f]
            for i in range(PH):
                for j in range(PW):
                    if i == 0 and j == 0:
                        continue
                    v = conv + ((qy * SH + i - oy0) * OW + qx * SW + j) * F
                    if max_pool:
                        for f in range(nf):
                            out[f] = v[f] if v[f] > out[f] else out[f]
                    else:
                        for f in range(nf):
                            out[f] = out[f] + v[f]
            if not max_pool:
                for f in range(nf):
                    out[f] = out[f] * scale


cdef int _float_array(object a, str name, int ndim, int type_num, bint writeable,
                      void **data) except -1:
    """data = a's buffer, checked in C: an aligned C-contiguous ndarray of `ndim`
    dimensions and dtype type_num (writeable if asked). The inference kernels below take
    ndarrays, not typed memoryviews, which cost ~0.3 us each to acquire (a tenth of a
    thin convolution at batch 1)."""
    if not isinstance(a, cnp.ndarray) or cnp.PyArray_NDIM(<cnp.ndarray>a) != ndim:
        raise ValueError(f"{name} must be a {ndim}-D ndarray; got "
                         f"{getattr(a, 'shape', type(a).__name__)}")
    cdef cnp.ndarray arr = <cnp.ndarray>a
    if cnp.PyArray_TYPE(arr) != type_num:
        raise TypeError(f"{name} must have y's dtype "
                        f"{'float32' if type_num == cnp.NPY_FLOAT else 'float64'}; got "
                        f"{arr.dtype}")
    if not cnp.PyArray_IS_C_CONTIGUOUS(arr) or not cnp.PyArray_ISALIGNED(arr) \
            or (writeable and not cnp.PyArray_ISWRITEABLE(arr)):
        raise ValueError(f"{name} must be an aligned C-contiguous"
                         f"{' writeable' if writeable else ''} array")
    data[0] = cnp.PyArray_DATA(arr)
    return 0


cdef int _conv_operands(object x, object w, str w_name, int w_ndim, object bias, object y,
                        void **p) except -1:
    """p = the data of x (4-D), the kernel w (w_ndim-D), bias (1-D, or NULL for None) and
    y (4-D, writeable), all of y's float dtype, which is returned."""
    cdef int t = _output_type(y)
    _float_array(x, "x", 4, t, False, &p[0])
    _float_array(w, w_name, w_ndim, t, False, &p[1])
    p[2] = NULL
    if bias is not None:
        _float_array(bias, "bias", 1, t, False, &p[2])
    _float_array(y, "y", 4, t, True, &p[3])
    if _overlaps(y, x) or _overlaps(y, w) or (bias is not None and _overlaps(y, bias)):
        raise ValueError(f"y must not share memory with x, {w_name} or bias")
    return t


cdef bint _overlaps(object a, object b):
    """Whether two C-contiguous ndarrays share bytes (their extents are their buffers)."""
    cdef char *a0 = <char *>cnp.PyArray_DATA(<cnp.ndarray>a)
    cdef char *b0 = <char *>cnp.PyArray_DATA(<cnp.ndarray>b)
    cdef Py_ssize_t na = cnp.PyArray_NBYTES(<cnp.ndarray>a), nb = cnp.PyArray_NBYTES(<cnp.ndarray>b)
    return na > 0 and nb > 0 and a0 < b0 + nb and b0 < a0 + na


cdef int _output_type(object y) except -1:
    """NPY_FLOAT or NPY_DOUBLE: the dtype of the output array y."""
    cdef int t = cnp.PyArray_TYPE(<cnp.ndarray>y) if isinstance(y, cnp.ndarray) else -1
    if t != cnp.NPY_FLOAT and t != cnp.NPY_DOUBLE:
        raise TypeError(f"y must be a float32 or float64 ndarray; got {type(y).__name__}"
                        f"{'' if t == -1 else ' of ' + str(y.dtype)}")
    return t


cdef struct Bands:
    Py_ssize_t QH, QW, F, PH, PW, SH, SW    # pooled output, pooling window and strides
    bint max_pool
    int act
    double alpha
    # implicit patches (dilation 1 along the width): a band's input rows, zero-padded to
    # WP columns, are copied (not their patches); conv row r's patch then starts at
    # offsets[r] in that copy, its KH kernel rows KW*C values each, DH*WP*C apart
    bint implicit
    Py_ssize_t WP
    const int64_t *offsets
    # the tasks (_bands): sample, band of `band` pooled rows, part of the filters
    Py_ssize_t band, per_sample, parts, max_rows


def im2col_gemm_pool(x, b, bias, y, tuple window, tuple strides, tuple dilation,
                     tuple padding, tuple conv_size, bint max_pool, tuple pool_window,
                     tuple pool_strides, int activation=ACT_LINEAR, double alpha=0.0):
    """y (N, QH, QW, F) = pool(act(im2col(x) @ b + bias)): a convolution (x (N, H, W, C),
    b the kernel as (KH*KW*C, F), conv_size (OH, OW)) and the max (max_pool) or average
    pooling after it (window (PH, PW), strides (SH, SW), no padding), band by band of
    pooled rows: a band's patches and conv rows (about POOL_BAND_BYTES) are made, bias
    and activation applied (linear, relu or leaky_relu with slope alpha) and pooled
    while in cache; the conv output is never written whole. Bands run in parallel, each
    on one thread (the same bits on any thread count). float32 or float64 C-contiguous
    ndarrays of one dtype; bias (F,) or None."""
    cdef void *p[4]
    cdef int t = _conv_operands(x, b, "b", 2, bias, y, p)
    cdef Geometry g = _geometry(x.shape, window, strides, dilation, padding, conv_size[0],
                                conv_size[1])
    cdef Py_ssize_t depth = g.KH * g.KW * g.C, F = b.shape[1]
    cdef Py_ssize_t QH = y.shape[1], QW = y.shape[2]
    if b.shape[0] != depth or y.shape[0] != g.N or y.shape[3] != F:
        raise ValueError(f"b must have shape ({depth}, F) and y ({g.N}, QH, QW, F); got "
                         f"b {b.shape}, y {y.shape}")
    if bias is not None and bias.shape[0] != F:
        raise ValueError(f"bias must have {F} values; got {bias.shape[0]}")
    _check_pooling(QH, QW, g.OH, g.OW, pool_window, pool_strides)
    _check_row_activation(activation, alpha)
    if g.N == 0 or F == 0:
        return
    cdef Bands bands
    bands.QH, bands.QW, bands.F = QH, QW, F
    bands.PH, bands.PW = pool_window
    bands.SH, bands.SW = pool_strides
    bands.max_pool, bands.act, bands.alpha = max_pool, activation, alpha
    bands.implicit = g.DW == 1 and g.KW * g.C >= IMPLICIT_MIN_SEGMENT
    bands.WP, bands.offsets = 0, NULL
    if t == cnp.NPY_FLOAT:
        _bands(&g, &bands, <const float *>p[0], <const float *>p[1], <const float *>p[2],
               <float *>p[3])
    else:
        _bands(&g, &bands, <const double *>p[0], <const double *>p[1], <const double *>p[2],
               <double *>p[3])


cdef int _bands(const Geometry *g, const Bands *p, const floating *x, const floating *b,
                const floating *bias, floating *y) except -1:
    """im2col_gemm_pool's work, its arguments checked."""
    cdef Py_ssize_t depth = g.KH * g.KW * g.C, F = p.F, QH = p.QH, SH = p.SH, PH = p.PH
    # pooled rows per band: an L2-sized block, and with fewer than two samples a thread,
    # each sample cut into enough bands for two a thread (balance: 3 samples on 2
    # threads, LeNet's second layer: 3 whole-sample bands 75 us, 6 half-sample bands 60 us)
    cdef Py_ssize_t per_q = PH * g.OW * (depth + F) * sizeof(floating)
    cdef Py_ssize_t band = max(1, min(QH, POOL_BAND_BYTES // per_q)), cuts, parts = 1
    cdef int nt = threads_for(<double> g.N * g.OH * g.OW * depth * F)
    if nt > 1 and g.N < nt and F >= 2 * FILTER_PART:
        # fewer samples than threads: the threads split the filters instead, each on all
        # the rows (LeNet's second layer, one sample, 2 threads near: 7 pooled rows in
        # bands give one thread 4 of them, 20.3 us; two halves of the 64 filters 18.8 us)
        parts = min(<Py_ssize_t>nt, (F + FILTER_PART - 1) // FILTER_PART)
    elif nt > 1 and g.N < 2 * nt:
        cuts = (2 * nt + g.N - 1) // g.N
        band = min(band, max(1, (QH + cuts - 1) // cuts))
    cdef Py_ssize_t per_sample = (QH + band - 1) // band, tasks = g.N * per_sample * parts
    nt = <int>min(<Py_ssize_t>nt, tasks)
    cdef Py_ssize_t max_rows = (band - 1) * SH + PH        # conv rows of a band
    cdef Py_ssize_t block = max_rows * g.OW * (depth + F)
    cdef Bands q = p[0]
    q.band, q.per_sample, q.parts, q.max_rows = band, per_sample, parts, max_rows
    cdef int64_t *offsets = NULL
    cdef Py_ssize_t r
    if q.implicit:
        q.WP = (g.OW - 1) * g.SW + g.KW
        block = _rows_in(g, max_rows) * q.WP * g.C + max_rows * g.OW * F
        offsets = <int64_t *>malloc(max_rows * g.OW * sizeof(int64_t))
        if offsets == NULL:
            raise MemoryError("im2col_gemm_pool: no memory for the bands")
        for r in range(max_rows * g.OW):    # conv pixel (r // OW, r % OW) of a band
            offsets[r] = ((r // g.OW) * g.SH * q.WP + (r % g.OW) * g.SW) * g.C
        q.offsets = offsets
    p = &q
    cdef floating *scratch = <floating *>malloc(nt * block * sizeof(floating))
    if scratch == NULL:
        free(offsets)
        raise MemoryError("im2col_gemm_pool: no memory for the bands")
    cdef Py_ssize_t task
    try:
        if nt == 1:     # no parallel region (its start costs ~0.8 us)
            for task in range(tasks):
                _band(g, p, x, b, bias, y, task, scratch)
        else:
            for task in prange(tasks, nogil=True, num_threads=nt, schedule="static"):
                _band(g, p, x, b, bias, y, task, scratch + threadid() * block)
    finally:
        free(scratch)
        free(offsets)
    return 0


cdef inline Py_ssize_t _rows_in(const Geometry *g, Py_ssize_t rows) noexcept nogil:
    """Input rows that `rows` consecutive conv rows read."""
    return (rows - 1) * g.SH + (g.KH - 1) * g.DH + 1


cdef void _padded_rows(const floating *x, floating *dst, const Geometry *g, Py_ssize_t n,
                       Py_ssize_t oy0, Py_ssize_t count, Py_ssize_t WP) noexcept nogil:
    """dst (count, WP, C) = sample n's input rows from oy0 * SH - PT on, columns from -PL
    on, zero outside the image."""
    cdef Py_ssize_t C = g.C, r, iy, ix0 = -g.PL, lo, hi
    cdef const floating *src
    cdef floating *row
    lo = max(0, -ix0)                       # first column of dst inside the image
    hi = max(lo, min(WP, g.W - ix0))        # one past the last
    for r in range(count):
        row = dst + r * WP * C
        iy = oy0 * g.SH - g.PT + r
        if iy < 0 or iy >= g.H:
            memset(row, 0, WP * C * sizeof(floating))
            continue
        src = x + ((n * g.H + iy) * g.W + ix0) * C
        if lo > 0:
            memset(row, 0, lo * C * sizeof(floating))
        memcpy(row + lo * C, src + lo * C, (hi - lo) * C * sizeof(floating))
        if hi < WP:
            memset(row + hi * C, 0, (WP - hi) * C * sizeof(floating))


cdef void _band(const Geometry *g, const Bands *p, const floating *x, const floating *b,
                const floating *bias, floating *y, Py_ssize_t task,
                floating *cols) noexcept nogil:
    """Task `task` of _bands: pooled rows q0.. (at most p.band) of sample n, filters
    [f0, f1) (whole parts of FILTER_PART): their conv rows' patches into cols, the GEMM
    into the conv rows after them, bias and activation, pooling into y."""
    cdef Py_ssize_t F = p.F, k = task % p.parts, rest = task // p.parts
    cdef Py_ssize_t units = (F + FILTER_PART - 1) // FILTER_PART
    cdef Py_ssize_t f0 = min(F, units * k // p.parts * FILTER_PART)
    cdef Py_ssize_t nf = min(F, units * (k + 1) // p.parts * FILTER_PART) - f0
    cdef Py_ssize_t n = rest // p.per_sample, q0 = (rest % p.per_sample) * p.band
    cdef Py_ssize_t depth = g.KH * g.KW * g.C, max_rows = p.max_rows, r
    if nf <= 0:
        return
    cdef Py_ssize_t q1 = min(p.QH, q0 + p.band), oy0 = q0 * p.SH
    cdef Py_ssize_t rows = (q1 - 1) * p.SH + p.PH - oy0
    cdef floating *conv
    if p.implicit:
        conv = cols + _rows_in(g, max_rows) * p.WP * g.C
        _padded_rows(x, cols, g, n, oy0, _rows_in(g, rows), p.WP)
        if floating is float:
            sgemm_rows_serial(rows * g.OW, nf, g.KW * g.C, g.KH, g.DH * p.WP * g.C, cols,
                              p.offsets, b + f0, F, conv + f0, F)
        else:
            dgemm_rows_serial(rows * g.OW, nf, g.KW * g.C, g.KH, g.DH * p.WP * g.C, cols,
                              p.offsets, b + f0, F, conv + f0, F)
    else:
        conv = cols + max_rows * g.OW * depth
        for r in range(rows):
            _im2col_row(x, cols - (n * g.OH + oy0) * g.OW * depth, g, n * g.OH + oy0 + r)
        _gemm_serial(rows * g.OW, nf, depth, cols, depth, 1, b + f0, F, conv + f0, F, False)
    cdef floating *out = y + n * p.QH * p.QW * F + f0
    cdef const floating *bf = bias + f0 if bias != NULL else NULL
    cdef bint act = bias != NULL or p.act != ACT_LINEAR
    if act and not p.max_pool:
        _bias_act_rows(conv + f0, F, bf, rows * g.OW, nf, p.act, <floating>p.alpha)
    _pool_rows(conv + f0, out, q0, q1, oy0, g.OW, p.QW, F, nf, p.PH, p.PW, p.SH, p.SW,
               p.max_pool)
    if act and p.max_pool:
        # after the max: adding the bias and these activations are non-decreasing, and
        # so is rounding, so the max of act(v + bias) is act(max(v) + bias), bit for bit,
        # on a quarter of the values (2x2 pooling)
        _bias_act_rows(out + q0 * p.QW * F, F, bf, (q1 - q0) * p.QW, nf, p.act,
                       <floating>p.alpha)

# -- thin convolution with its pooling (inference) ------------------------------------------
cdef extern from "conv_thin.h" nogil:
    ctypedef struct cn_thin_geometry:
        int64_t H, W, C, F, KH, KW, PT, PL, OH, OW, PH, PW, SH, SW, QH, QW
        int act, max_pool
        double alpha
    int CN_THIN_MAX_PATCH, CN_THIN_LINEAR, CN_THIN_RELU, CN_THIN_LEAKY_RELU
    int64_t cn_thin_scratch(const cn_thin_geometry *g)
    void cn_thin_conv_pool_f32(int isa, const cn_thin_geometry *g, const float *x,
                               const float *w, const float *bias, float *y, float *scratch,
                               int64_t q0, int64_t q1)
    void cn_thin_conv_pool_f64(int isa, const cn_thin_geometry *g, const double *x,
                               const double *w, const double *bias, double *y,
                               double *scratch, int64_t q0, int64_t q1)

if (CN_THIN_LINEAR, CN_THIN_RELU, CN_THIN_LEAKY_RELU) != (ACT_LINEAR, ACT_RELU, ACT_LEAKY_RELU):
    raise ImportError("conv: conv_thin.h's activation codes differ from the Epilogue enum")

THIN_MAX_PATCH = CN_THIN_MAX_PATCH


def thin_conv_pool(x, kernel, bias, y, tuple padding, tuple conv_size, bint max_pool,
                   tuple window, tuple strides, int activation=ACT_LINEAR, double alpha=0.0):
    """y (N, QH, QW, F) = pool(act(conv(x) + bias)) for a thin convolution, stride and
    dilation 1: x (N, H, W, C), kernel (KH, KW, C, F) with KH*KW*C <= THIN_MAX_PATCH,
    padding (top, left) and conv_size (OH, OW) of the convolution's output, then max
    (max_pool) or average pooling of window (PH, PW) and strides (SH, SW) without
    padding. activation: EPILOGUES code of linear, relu or leaky_relu (alpha: its
    slope). Each sample's conv rows are made and pooled in a small buffer (csrc/
    conv_thin.h): the convolution's output is never written whole. Parallel over
    samples, or over a sample's pooled rows when there are fewer samples than threads
    (the same bits on any thread count; LeNet's first layer, one sample, 2 threads near:
    4.7 -> 3.9 us). float32 or float64 C-contiguous ndarrays of one dtype; bias (F,) or
    None."""
    cdef void *p[4]
    cdef int t = _conv_operands(x, kernel, "kernel", 4, bias, y, p)
    cdef cn_thin_geometry g
    cdef Py_ssize_t N = x.shape[0]
    g.H, g.W, g.C = x.shape[1], x.shape[2], x.shape[3]
    g.KH, g.KW, g.F = kernel.shape[0], kernel.shape[1], kernel.shape[3]
    g.PT, g.PL = padding
    g.OH, g.OW = conv_size
    g.PH, g.PW = window
    g.SH, g.SW = strides
    g.QH, g.QW = y.shape[1], y.shape[2]
    g.act, g.alpha, g.max_pool = activation, alpha, max_pool
    if min(g.H, g.W, g.C, g.KH, g.KW) < 1 or kernel.shape[2] != g.C \
            or g.KH * g.KW * g.C > CN_THIN_MAX_PATCH:
        raise ValueError(f"x must have a non-empty image and kernel the shape (KH, KW, "
                         f"{g.C}, F) with KH*KW*C <= {CN_THIN_MAX_PATCH}; got {kernel.shape}")
    if y.shape[0] != N or y.shape[3] != g.F:
        raise ValueError(f"y must have shape ({N}, QH, QW, {g.F}); got {y.shape}")
    if bias is not None and bias.shape[0] != g.F:
        raise ValueError(f"bias must have {g.F} values; got {bias.shape[0]}")
    if g.PT < 0 or g.PL < 0 or g.OH < 1 or g.OW < 1:
        raise ValueError(f"padding must be non-negative and conv_size positive; got "
                         f"{padding} and {conv_size}")
    _check_pooling(g.QH, g.QW, g.OH, g.OW, window, strides)
    _check_row_activation(activation, alpha)
    if N == 0 or g.F == 0:
        return
    if t == cnp.NPY_FLOAT:
        _thin_samples(&g, N, <const float *>p[0], <const float *>p[1], <const float *>p[2],
                      <float *>p[3])
    else:
        _thin_samples(&g, N, <const double *>p[0], <const double *>p[1],
                      <const double *>p[2], <double *>p[3])


cdef inline void _thin_sample(int isa, const cn_thin_geometry *g, const floating *x,
                              const floating *w, const floating *bias, floating *y,
                              floating *scratch, int64_t q0, int64_t q1) noexcept nogil:
    if floating is float:
        cn_thin_conv_pool_f32(isa, g, x, w, bias, y, scratch, q0, q1)
    else:
        cn_thin_conv_pool_f64(isa, g, x, w, bias, y, scratch, q0, q1)


cdef int _thin_samples(const cn_thin_geometry *g, Py_ssize_t N, const floating *x,
                       const floating *w, const floating *bias, floating *y) except -1:
    """thin_conv_pool's work, its arguments checked: the samples shared among threads, or
    with fewer samples than threads, each sample's pooled rows in parts (every row is
    made the same way wherever it runs: the same bits on any thread count)."""
    cdef int nt = threads_for(<double> N * g.OH * g.OW * g.KH * g.KW * g.C * g.F)
    cdef Py_ssize_t parts = 1
    if N < nt:
        parts = min(<Py_ssize_t>nt, g.QH)
    nt = <int>min(<Py_ssize_t>nt, N * parts)
    cdef int64_t per = cn_thin_scratch(g)
    cdef floating *scratch = <floating *>malloc(nt * per * sizeof(floating))
    if scratch == NULL:
        raise MemoryError("thin_conv_pool: no memory for the scratch rows")
    cdef int isa = current_isa()
    cdef Py_ssize_t n, task, k, xs = g.H * g.W * g.C, ys = g.QH * g.QW * g.F
    try:
        if nt == 1:     # no parallel region: its start costs as much as a small image
            for n in range(N):
                _thin_sample(isa, g, x + n * xs, w, bias, y + n * ys, scratch, 0, g.QH)
        else:
            for task in prange(N * parts, nogil=True, num_threads=nt, schedule="static"):
                n = task // parts
                k = task % parts
                _thin_sample(isa, g, x + n * xs, w, bias, y + n * ys,
                             scratch + threadid() * per, g.QH * k // parts,
                             g.QH * (k + 1) // parts)
    finally:
        free(scratch)
    return 0


# -- Winograd convolution with its pooling, a few samples (inference) -----------------------
cdef extern from "winograd_fused.h" nogil:
    ctypedef struct cn_wino_geometry:
        int64_t N, H, W, C, F, PT, PL, OH, OW, TH, TW, PH, PW, QH, QW, VS, US, MS
        int act, max_pool
        double alpha
    void cn_wino_input_f32(int isa, const cn_wino_geometry *g, const float *x, float *V,
                           int64_t t0, int64_t t1, int64_t base)
    void cn_wino_input_f64(int isa, const cn_wino_geometry *g, const double *x, double *V,
                           int64_t t0, int64_t t1, int64_t base)
    void cn_wino_kernel_f32(int isa, const cn_wino_geometry *g, const float *w, float *U,
                            int64_t c0, int64_t c1)
    void cn_wino_kernel_f64(int isa, const cn_wino_geometry *g, const double *w, double *U,
                            int64_t c0, int64_t c1)
    void cn_wino_output_f32(int isa, const cn_wino_geometry *g, const float *M,
                            const float *bias, float *y, int64_t f0, int64_t f1, int64_t t0,
                            int64_t t1)
    void cn_wino_output_f64(int isa, const cn_wino_geometry *g, const double *M,
                            const double *bias, double *y, int64_t f0, int64_t f1, int64_t t0,
                            int64_t t1)


cdef enum:
    # multiply-adds of the 36 transform-domain products a thread must have to take
    # chunks of its own, and from which the threads share one chunk (meeting at three
    # barriers), near threads; both scaled by the threads' distance
    WINO_PARALLEL_MIN_MACS = 262144
    WINO_SHARED_MIN_MACS = 524288
    # tiles a thread takes at least when the threads take chunks of their own
    WINO_MIN_THREAD_TILES = 32
    # the alignment of the transform-domain buffers, in bytes
    WINO_ALIGN = 64
    # tiles transformed, multiplied and transformed back at a time: the transform
    # domain's size (LeNet's 14x14x32 -> 64 at batch 256, whole predict on one thread:
    # chunks of 16 / 64 / 256 tiles 7.2 / 6.7 / 6.4 ms)
    WINO_CHUNK_TILES = 256


cdef int64_t _wino_min_macs_for_tests = -1


def _set_winograd_parallel_min_macs_for_tests(int64_t macs=-1):
    """Tests only: threads split any winograd_conv_pool call of at least `macs`
    multiply-adds (0: every call; chunks of their own from 2 * WINO_MIN_THREAD_TILES
    tiles, else the one chunk shared); -1 restores the thresholds."""
    global _wino_min_macs_for_tests
    _wino_min_macs_for_tests = macs


cdef class WinogradKernel:
    """A kernel's transform U (36, C, F) kept between winograd_conv_pool calls, with a
    copy of the kernel's bytes it was made from: a call whose kernel has the same bytes
    skips the transform (LeNet's 3x3x32x64 kernel: the transform 4.7 us, the comparison
    under 1 us, one Zen 5 core). Compared in full because user code may write weights
    in place. Serves one call at a time (an inference op's, per model replica)."""
    cdef char *copy
    cdef char *block
    cdef char *u
    cdef Py_ssize_t C, F, us
    cdef int item, isa
    cdef bint filled

    def __dealloc__(self):
        free(self.copy)
        free(self.block)

    def __reduce__(self):
        """A copy (pickle, deepcopy) starts empty: its first call makes the transform."""
        return (WinogradKernel, ())

    cdef bint holds(self, const void *kernel, Py_ssize_t C, Py_ssize_t F, Py_ssize_t us,
                    int item, int isa) except -1:
        """Whether U is this kernel's transform (by the copy for isa); if not, U is
        sized for it (to be made, then `made` called)."""
        if self.filled and (C, F, us, item, isa) == (self.C, self.F, self.us, self.item,
                                                     self.isa):
            if memcmp(kernel, self.copy, 9 * C * F * item) == 0:
                return True
        if self.block == NULL or (C, F, us, item) != (self.C, self.F, self.us, self.item):
            self.filled = False
            free(self.copy)
            free(self.block)
            self.copy = <char *>malloc(9 * C * F * item)
            self.block = <char *>malloc(36 * us * item + WINO_ALIGN)
            if self.copy == NULL or self.block == NULL:
                free(self.copy)
                free(self.block)
                self.copy = self.block = NULL
                raise MemoryError("winograd_conv_pool: no memory for the kernel transform")
            self.u = self.block + WINO_ALIGN - <size_t>self.block % WINO_ALIGN
            self.C, self.F, self.us, self.item = C, F, us, item
        self.filled = False
        self.isa = isa
        return False

    cdef void made(self, const void *kernel) noexcept:
        """U now holds the transform of this kernel (its bytes kept)."""
        memcpy(self.copy, kernel, 9 * self.C * self.F * self.item)
        self.filled = True


cdef int _wino_tiles(cn_wino_geometry *g, object x, tuple padding,
                     tuple conv_size) except -1:
    """g's input (N, H, W, C of x), padding, convolution output and tiles, checked."""
    g.N, g.H, g.W, g.C = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
    g.PT, g.PL = padding
    g.OH, g.OW = conv_size
    if not (0 <= g.PT <= 2 and 0 <= g.PL <= 2 and 1 <= g.OH <= g.H + g.PT
            and 1 <= g.OW <= g.W + g.PL):
        raise ValueError(f"padding must be 0-2 before each axis and conv_size at least 1 and "
                         f"at most the padded input less the kernel; got {padding}, {conv_size} "
                         f"for a {g.H}x{g.W} input")
    g.TH, g.TW = (g.OH + 3) // 4, (g.OW + 3) // 4
    return 0


def winograd_conv_pool(x, kernel, bias, y, tuple padding, tuple conv_size,
                       tuple pool_window, bint max_pool, int activation=ACT_LINEAR,
                       double alpha=0.0, WinogradKernel cache=None):
    """y (N, QH, QW, F) = pool(act(conv(x) + bias)) for a 3x3, stride-1 convolution of
    x (N, H, W, C) with kernel (3, 3, C, F) by Winograd F(4x4, 3x3) in one call
    (csrc/winograd_fused.h): kernel and input transforms, the 36 products by the serial
    GEMM, the output transform with bias, activation (linear, relu or leaky_relu with
    slope alpha >= 0) and the pooling. padding (top, left), each 0-2; conv_size (OH, OW)
    of the convolution's output; pool_window (PH, PW) = its strides, each 1, 2 or 4
    (1x1: y is the convolution's output), max (max_pool) or average, no padding:
    QH = OH // PH, QW = OW // PW. Tiles go WINO_CHUNK_TILES at a time through a transform
    domain allocated per call. Threads share each chunk's transforms, its products by
    (slice, part of FILTER_PART filters) and its output by filters: the same bits on any
    thread count. float32 or float64
    C-contiguous ndarrays of one dtype; bias (F,) or None; cache: a WinogradKernel that
    keeps the kernel's transform for the next call, or None."""
    cdef void *p[4]
    cdef int t = _conv_operands(x, kernel, "kernel", 4, bias, y, p)
    cdef cn_wino_geometry g
    g.F = kernel.shape[3]
    if kernel.shape[0] != 3 or kernel.shape[1] != 3 or kernel.shape[2] != x.shape[3] \
            or min(x.shape[1], x.shape[2], x.shape[3]) < 1:
        raise ValueError(f"x must have a non-empty image and kernel the shape (3, 3, "
                         f"{x.shape[3]}, F); got x {x.shape}, kernel {kernel.shape}")
    _wino_tiles(&g, x, padding, conv_size)
    g.PH, g.PW = pool_window
    if g.PH not in (1, 2, 4) or g.PW not in (1, 2, 4):
        raise ValueError(f"pool_window must be 1, 2 or 4 along each axis; got {pool_window}")
    g.QH, g.QW = g.OH // g.PH, g.OW // g.PW
    if y.shape != (g.N, g.QH, g.QW, g.F):
        raise ValueError(f"y must have shape {(g.N, g.QH, g.QW, g.F)}; got {y.shape}")
    if bias is not None and bias.shape[0] != g.F:
        raise ValueError(f"bias must have {g.F} values; got {bias.shape[0]}")
    _check_row_activation(activation, alpha)
    g.act, g.alpha, g.max_pool = activation, alpha, max_pool
    if g.N == 0 or g.F == 0 or g.QH == 0 or g.QW == 0:
        return
    if t == cnp.NPY_FLOAT:
        _winograd(&g, <const float *>p[0], <const float *>p[1], <const float *>p[2],
                  <float *>p[3], cache)
    else:
        _winograd(&g, <const double *>p[0], <const double *>p[1], <const double *>p[2],
                  <double *>p[3], cache)


def winograd_input(x, V, tuple padding, tuple conv_size):
    """V[xi, t, :] = (B^T d B)[xi] for every 4x4 output tile t of a 3x3, stride-1
    convolution of x (N, H, W, C) (d: the tile's 6x6 input patch, zeros outside the
    image): winograd_conv_pool's input transform (channels in registers, FMAs) for the
    layer's weight gradient, on all threads. V (36, rows, C) C-contiguous, rows at least
    the T = N * ceil(OH / 4) * ceil(OW / 4) tiles; padding (top, left) each 0-2 and
    conv_size (OH, OW) as winograd_conv_pool takes them."""
    cdef int t = _output_type(V)
    cdef void *px
    cdef void *pv
    _float_array(x, "x", 4, t, False, &px)
    _float_array(V, "V", 3, t, True, &pv)
    if min(x.shape[1], x.shape[2], x.shape[3]) < 1:
        raise ValueError(f"x must have a non-empty image; got {x.shape}")
    cdef cn_wino_geometry g
    _wino_tiles(&g, x, padding, conv_size)
    cdef Py_ssize_t T = g.N * g.TH * g.TW
    if V.shape[0] != 36 or V.shape[1] < T or V.shape[2] != g.C:
        raise ValueError(f"V must have shape (36, {T} or more, {g.C}); got {V.shape}")
    if _overlaps(V, x):
        raise ValueError("V must not share memory with x")
    g.F, g.PH, g.PW, g.QH, g.QW = 0, 1, 1, g.OH, g.OW
    g.VS, g.US, g.MS = V.shape[1] * g.C, 0, 0
    g.act, g.max_pool, g.alpha = ACT_LINEAR, 0, 0.0
    cdef int isa = current_isa(), nt = threads_for(<double> T * 36 * g.C * 6), k
    with nogil:
        for k in prange(nt, num_threads=nt, schedule="static"):
            if t == cnp.NPY_FLOAT:
                cn_wino_input_f32(isa, &g, <const float *>px, <float *>pv, T * k // nt,
                                  T * (k + 1) // nt, 0)
            else:
                cn_wino_input_f64(isa, &g, <const double *>px, <double *>pv, T * k // nt,
                                  T * (k + 1) // nt, 0)


cdef inline Py_ssize_t _aligned(Py_ssize_t values, Py_ssize_t item) noexcept nogil:
    """values rounded up to whole WINO_ALIGN-byte blocks."""
    cdef Py_ssize_t per = WINO_ALIGN // item
    return (values + per - 1) // per * per


cdef int _winograd(cn_wino_geometry *g, const floating *x, const floating *w,
                   const floating *bias, floating *y, WinogradKernel cache) except -1:
    """winograd_conv_pool's work, its arguments checked. The kernel's transform U
    (36, C, F) (or the cache's), then the tiles in chunks, each through V (36, chunk, C)
    and M (36, chunk, F), each slice a row longer than it needs (slices a multiple of
    4 KiB apart would put a transform's 36 streams in a few cache sets). Threads take
    whole chunks of their own when there are tiles for it (no data shared but U); a few
    tiles (one small image) are shared by the threads inside the one chunk, which meet
    at barriers, when the threads are near enough for that to pay (LeNet's 14x14x32 ->
    64, one sample: 16 -> 11 us near; threads apart, 16 -> 30 us, so one thread)."""
    cdef Py_ssize_t T = g.N * g.TH * g.TW, item = sizeof(floating), C = g.C, F = g.F
    cdef double macs = 36.0 * T * C * F            # of the products
    cdef double scale = 0.01 * distance_percent()
    cdef double own_min = WINO_PARALLEL_MIN_MACS * scale, shared_min = WINO_SHARED_MIN_MACS * scale
    if _wino_min_macs_for_tests >= 0:
        own_min = shared_min = _wino_min_macs_for_tests
    cdef int nt = cn_omp_max_threads()
    cdef Py_ssize_t chunk = min(T, <Py_ssize_t>WINO_CHUNK_TILES)
    cdef bint own = False           # threads on chunks of their own
    if nt > 1 and T >= 2 * WINO_MIN_THREAD_TILES and macs >= nt * own_min:
        nt = <int>min(<Py_ssize_t>nt, T // WINO_MIN_THREAD_TILES)
        chunk = min(chunk, (T + nt - 1) // nt)
        own = True
    elif macs < shared_min:
        nt = 1
    cdef Py_ssize_t chunks = (T + chunk - 1) // chunk
    g.VS = _aligned((chunk + 1) * C, item)
    g.US = _aligned((C + 1) * F, item)
    g.MS = _aligned((chunk + 1) * F, item)
    cdef Py_ssize_t per_thread = 36 * (g.VS + g.MS)
    cdef int isa = current_isa()
    cdef bint transform = cache is None or not cache.holds(w, C, F, g.US, item, isa)
    cdef Py_ssize_t own_u = 36 * g.US if cache is None else 0
    cdef Py_ssize_t copies = nt if own else 1
    cdef char *block = <char *>malloc((copies * per_thread + own_u) * item + WINO_ALIGN)
    if block == NULL:
        raise MemoryError("winograd_conv_pool: no memory for the transform domain")
    cdef floating *V = <floating *>(block + WINO_ALIGN - <size_t>block % WINO_ALIGN)
    cdef floating *U = V + copies * per_thread if cache is None else <floating *>cache.u
    cdef Py_ssize_t k
    try:
        if nt == 1 or own:
            with nogil:
                if transform:
                    _kernel_rows(g, isa, w, U, 0, C)
                if nt == 1:
                    for k in range(chunks):
                        _winograd_chunk(g, isa, x, bias, y, V, U, V + 36 * g.VS, k * chunk,
                                        min(chunk, T - k * chunk), 0, 1)
                else:
                    for k in prange(chunks, num_threads=nt, schedule="static"):
                        _winograd_chunk(g, isa, x, bias, y, V + threadid() * per_thread, U,
                                        V + threadid() * per_thread + 36 * g.VS, k * chunk,
                                        min(chunk, T - k * chunk), 0, 1)
        else:
            with nogil, parallel(num_threads=nt):
                _winograd_shared(g, isa, x, w, bias, y, V, U, V + 36 * g.VS, transform,
                                 cn_omp_thread_num(), cn_omp_num_threads())
    finally:
        free(block)
    if cache is not None and transform:
        cache.made(w)
    return 0


cdef inline void _kernel_rows(const cn_wino_geometry *g, int isa, const floating *w,
                              floating *U, Py_ssize_t c0, Py_ssize_t c1) noexcept nogil:
    if floating is float:
        cn_wino_kernel_f32(isa, g, w, U, c0, c1)
    else:
        cn_wino_kernel_f64(isa, g, w, U, c0, c1)


cdef void _winograd_shared(const cn_wino_geometry *g, int isa, const floating *x,
                           const floating *w, const floating *bias, floating *y, floating *V,
                           floating *U, floating *M, bint transform, int tid,
                           int nth) noexcept nogil:
    """Thread tid of nth's share of the one chunk of _winograd's few tiles: (transform)
    its rows of U, then its part of the chunk, after the others' rows."""
    if transform:
        _kernel_rows(g, isa, w, U, g.C * tid // nth, g.C * (tid + 1) // nth)
    _winograd_chunk(g, isa, x, bias, y, V, U, M, 0, g.N * g.TH * g.TW, tid, nth)


cdef void _winograd_chunk(const cn_wino_geometry *g, int isa, const floating *x,
                          const floating *bias, floating *y, floating *V, const floating *U,
                          floating *M, Py_ssize_t t0, Py_ssize_t n, int tid,
                          int nth) noexcept nogil:
    """Tiles [t0, t0 + n) through V and M: thread tid of nth's tiles of V, then its
    products (slice, part of FILTER_PART filters; one thread takes all F at once), then
    its filters of y (whole parts: whole vectors of every copy), the threads meeting
    between these steps (and before them: U whole)."""
    cdef Py_ssize_t C = g.C, F = g.F
    cdef Py_ssize_t parts = 1 if nth == 1 else (F + FILTER_PART - 1) // FILTER_PART
    cdef Py_ssize_t width = F if nth == 1 else FILTER_PART, tasks = 36 * parts
    cdef Py_ssize_t units = (F + FILTER_PART - 1) // FILTER_PART
    cdef Py_ssize_t a = min(F, units * tid // nth * FILTER_PART)
    cdef Py_ssize_t b = min(F, units * (tid + 1) // nth * FILTER_PART)
    cdef Py_ssize_t task, xi, f0
    if floating is float:
        cn_wino_input_f32(isa, g, x, V, t0 + n * tid // nth, t0 + n * (tid + 1) // nth, t0)
    else:
        cn_wino_input_f64(isa, g, x, V, t0 + n * tid // nth, t0 + n * (tid + 1) // nth, t0)
    if nth > 1:
        cn_omp_barrier()    # V and U whole
    for task in range(tasks * tid // nth, tasks * (tid + 1) // nth):
        xi = task // parts
        f0 = (task % parts) * width
        _gemm_serial(n, min(width, F - f0), C, V + xi * g.VS, C, 1, U + xi * g.US + f0, F,
                     M + xi * g.MS + f0, F, False)
    if nth > 1:
        cn_omp_barrier()    # M whole
    if a < b:
        if floating is float:
            cn_wino_output_f32(isa, g, M, bias, y, a, b, t0, t0 + n)
        else:
            cn_wino_output_f64(isa, g, M, bias, y, a, b, t0, t0 + n)
