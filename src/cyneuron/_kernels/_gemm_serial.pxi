# The serial entry for kernels that run their own parallel region (included by gemm.pyx).

cdef enum:
    # K in equal blocks of at most this many (the parallel plans' KC_BLOCK: 288 = one
    # block, not 256 + 32, whose short block re-reads and rewrites every C tile for 32
    # multiply-adds); one KC x NR sliver lives on the stack (48 KiB at most)
    SERIAL_KC = KC_BLOCK
    SERIAL_MAX_NR = 32    # the widest NR of any micro-kernel (AVX-512 float32)


cdef int _gemm_serial(int64_t M, int64_t N, int64_t K, const floating *A, int64_t rsa,
                      int64_t csa, const floating *B, int64_t rsb, int64_t csb, floating *C,
                      int64_t ldc, bint accumulate) noexcept nogil:
    """C (+)= A @ B on the calling thread: the direct plan, B's slivers read in place
    when its rows are contiguous, else copied one at a time into a stack buffer.
    Meant for callers that already run inside their own parallel region, each on its
    own block of C (e.g. a recurrent step split by columns). Returns -1 for K < 1."""
    cdef floating sliver[SERIAL_KC * SERIAL_MAX_NR]
    cdef const floating *bs
    cdef int mr, nr, n, beta
    cdef int64_t pb, pc, kc, sb, s, ib, i, b_rs
    if floating is float:
        mr, nr = _table.s_mr, _table.s_nr
    else:
        mr, nr = _table.d_mr, _table.d_nr
    if K < 1 or nr > SERIAL_MAX_NR:
        return -1
    if N == 1 and (csa == 1 and (rsb == 1 or K <= SERIAL_KC * SERIAL_MAX_NR)
                   or rsa == 1 and ldc == 1):     # one column: see _choose
        _one_column(M, K, A, rsa, csa, B, rsb, C, ldc, accumulate, sliver)
        return 0
    cdef int64_t kb = _cdiv(K, _cdiv(K, SERIAL_KC))
    for pb in range(_cdiv(K, kb)):
        pc = pb * kb
        kc = _min(kb, K - pc)
        beta = pc > 0 or accumulate
        for sb in range(_cdiv(N, nr)):
            s = sb * nr
            n = <int>_min(nr, N - s)
            if n == nr and csb == 1:
                bs = B + pc * rsb + s
                b_rs = rsb
            else:
                _pack_b(n, kc, B + pc * rsb + s * csb, rsb, csb, sliver)
                bs = sliver
                b_rs = nr
            for ib in range(_cdiv(M, mr)):
                i = ib * mr
                if floating is float:
                    _table.sgemm_ukr(kc, A + i * rsa + pc * csa, rsa, csa, bs, b_rs,
                                     C + i * ldc + s, ldc, <int>_min(mr, M - i), n, beta)
                else:
                    _table.dgemm_ukr(kc, A + i * rsa + pc * csa, rsa, csa, bs, b_rs,
                                     C + i * ldc + s, ldc, <int>_min(mr, M - i), n, beta)
    return 0


cdef enum:
    ROWS_MAX_MR = 8       # the most rows of any micro-kernel


cdef int _gemm_rows_serial(int64_t M, int64_t N, int64_t seg_len, int64_t nseg,
                           int64_t seg_stride, const floating *base,
                           const int64_t *row_offsets, const floating *B, int64_t rsb,
                           floating *C, int64_t ldc) noexcept nogil:
    """C = A @ B on the calling thread, row r of A gathered at base + row_offsets[r]:
    nseg segments of seg_len contiguous values, seg_stride apart (an implicit im2col: a
    convolution's output pixel and its kernel rows). B (nseg * seg_len, N) has contiguous
    rows rsb apart. K runs in blocks of whole segments (equal, at most SERIAL_KC values),
    or of equal parts of one segment longer than that; B's slivers are read in place,
    a ragged last one copied padded. Returns -1 for an empty K."""
    cdef floating sliver[SERIAL_KC * SERIAL_MAX_NR]
    cdef const floating *rows[ROWS_MAX_MR]
    cdef const floating *bs
    cdef int mr, nr, n, m, j, beta
    cdef int64_t per, part, s0, c0, ns, kc, sb, s, ib, i, b_rs, a_off, b_row
    if floating is float:
        mr, nr = _table.s_mr, _table.s_nr
    else:
        mr, nr = _table.d_mr, _table.d_nr
    if seg_len < 1 or nseg < 1 or nr > SERIAL_MAX_NR or mr > ROWS_MAX_MR:
        return -1
    if seg_len <= SERIAL_KC:
        per = SERIAL_KC // seg_len
        per = _cdiv(nseg, _cdiv(nseg, per))
        part = seg_len
    else:
        per = 1
        part = _cdiv(seg_len, _cdiv(seg_len, SERIAL_KC))
    cdef int64_t blk, sub
    for blk in range(_cdiv(nseg, per)):
        s0 = blk * per
        ns = _min(per, nseg - s0)
        for sub in range(_cdiv(seg_len, part)):
            c0 = sub * part
            kc = _min(part, seg_len - c0)
            beta = s0 > 0 or c0 > 0
            a_off = s0 * seg_stride + c0
            b_row = s0 * seg_len + c0
            for sb in range(_cdiv(N, nr)):
                s = sb * nr
                n = <int>_min(nr, N - s)
                if n == nr:
                    bs = B + b_row * rsb + s
                    b_rs = rsb
                else:
                    _pack_b(n, ns * kc, B + b_row * rsb + s, rsb, 1, sliver)
                    bs = sliver
                    b_rs = nr
                for ib in range(_cdiv(M, mr)):
                    i = ib * mr
                    m = <int>_min(mr, M - i)
                    for j in range(m):
                        rows[j] = base + row_offsets[i + j] + a_off
                    if floating is float:
                        _table.sgemm_rows_ukr(kc, ns, seg_stride, rows, bs, b_rs,
                                              C + i * ldc + s, ldc, m, n, beta)
                    else:
                        _table.dgemm_rows_ukr(kc, ns, seg_stride, rows, bs, b_rs,
                                              C + i * ldc + s, ldc, m, n, beta)
    return 0


cdef int sgemm_rows_serial(int64_t M, int64_t N, int64_t seg_len, int64_t nseg,
                           int64_t seg_stride, const float *base, const int64_t *row_offsets,
                           const float *B, int64_t rsb, float *C, int64_t ldc) noexcept nogil:
    """float32 C[M, N] = A @ B, A's rows gathered (see _gemm_rows_serial)."""
    return _gemm_rows_serial(M, N, seg_len, nseg, seg_stride, base, row_offsets, B, rsb, C, ldc)


cdef int dgemm_rows_serial(int64_t M, int64_t N, int64_t seg_len, int64_t nseg,
                           int64_t seg_stride, const double *base, const int64_t *row_offsets,
                           const double *B, int64_t rsb, double *C, int64_t ldc) noexcept nogil:
    """float64 C[M, N] = A @ B, A's rows gathered (see _gemm_rows_serial)."""
    return _gemm_rows_serial(M, N, seg_len, nseg, seg_stride, base, row_offsets, B, rsb, C, ldc)


cdef int sgemm_serial(int64_t M, int64_t N, int64_t K, const float *A, int64_t rsa, int64_t csa,
                      const float *B, int64_t rsb, int64_t csb, float *C, int64_t ldc,
                      bint accumulate) noexcept nogil:
    """float32 C[M, N] (+)= A[M, K] @ B[K, N] on this thread; strides in elements."""
    return _gemm_serial(M, N, K, A, rsa, csa, B, rsb, csb, C, ldc, accumulate)


cdef int dgemm_serial(int64_t M, int64_t N, int64_t K, const double *A, int64_t rsa, int64_t csa,
                      const double *B, int64_t rsb, int64_t csb, double *C, int64_t ldc,
                      bint accumulate) noexcept nogil:
    """float64 C[M, N] (+)= A[M, K] @ B[K, N] on this thread; strides in elements."""
    return _gemm_serial(M, N, K, A, rsa, csa, B, rsb, csb, C, ldc, accumulate)


def _serial_for_tests(cnp.ndarray a, cnp.ndarray b, cnp.ndarray c, bint accumulate=False):
    """c (+)= a @ b through the serial entry (tests only; no checks beyond shapes)."""
    if a.shape[1] != b.shape[0] or c.shape[0] != a.shape[0] or c.shape[1] != b.shape[1] \
            or not c.flags.c_contiguous or not a.dtype == b.dtype == c.dtype:
        raise ValueError("_serial_for_tests: shapes/dtypes do not agree")
    cdef size_t item = c.itemsize
    cdef int rc
    if item == 4:
        rc = sgemm_serial(a.shape[0], b.shape[1], a.shape[1], <float *>cnp.PyArray_DATA(a),
                          a.strides[0] // 4, a.strides[1] // 4, <float *>cnp.PyArray_DATA(b),
                          b.strides[0] // 4, b.strides[1] // 4, <float *>cnp.PyArray_DATA(c),
                          c.shape[1], accumulate)
    else:
        rc = dgemm_serial(a.shape[0], b.shape[1], a.shape[1], <double *>cnp.PyArray_DATA(a),
                          a.strides[0] // 8, a.strides[1] // 8, <double *>cnp.PyArray_DATA(b),
                          b.strides[0] // 8, b.strides[1] // 8, <double *>cnp.PyArray_DATA(c),
                          c.shape[1], accumulate)
    if rc != 0:
        raise ValueError("_serial_for_tests: K must be at least 1")


cdef void _batch_part(int t, int nt, int64_t G, int64_t M, int64_t N, int64_t K,
                      const floating *A, const int64_t *sa, const floating *B,
                      const int64_t *sb, floating *C, const int64_t *sc,
                      bint accumulate) noexcept nogil:
    """Thread t's share of gemm_batch's G products (strides in elements)."""
    cdef int64_t g, g0, g1
    _share(G, t, nt, &g0, &g1)
    for g in range(g0, g1):
        _gemm_serial(M, N, K, A + g * sa[0], sa[1], sa[2], B + g * sb[0], sb[1], sb[2],
                     C + g * sc[0], sc[1], accumulate)


def gemm_batch(cnp.ndarray a not None, cnp.ndarray b not None, cnp.ndarray c not None,
               bint accumulate=False):
    """c[g] (+)= a[g] @ b[g] for every g: G products of one shape in one call, each on one
    thread (the serial plan: the same bits as gemm's), the threads taking equal runs of
    them. For many small products (a Winograd convolution's 36 transform-domain products
    per chunk of tiles, (256, 32) @ (32, 32) each), where a gemm call apiece from Python,
    each with a parallel region of its own, costs more than the product.

    a (G, M, K), b (G, K, N): float32 or float64, any strides (a view such as
    v.transpose(0, 2, 1) costs nothing); c (G, M, N) of the same dtype, its rows
    contiguous (c.strides[2] == itemsize), rows and slices apart, writeable, not sharing
    memory with a or b."""
    cdef int type_num = cnp.PyArray_TYPE(c)
    if type_num != cnp.NPY_FLOAT and type_num != cnp.NPY_DOUBLE:
        raise TypeError(f"gemm_batch: c must be float32 or float64; got {c.dtype.name}")
    _check_operand(a, "a", type_num, 3, "gemm_batch")
    _check_operand(b, "b", type_num, 3, "gemm_batch")
    _check_operand(c, "c", type_num, 3, "gemm_batch")
    cdef int64_t G = c.shape[0], M = c.shape[1], N = c.shape[2], K = a.shape[2]
    if a.shape[0] != G or b.shape[0] != G or a.shape[1] != M or b.shape[1] != K \
            or b.shape[2] != N:
        raise ValueError(f"gemm_batch: shapes do not agree: a {(<object>a).shape}, "
                         f"b {(<object>b).shape}, c {(<object>c).shape}")
    if not cnp.PyArray_ISWRITEABLE(c) or (N > 1 and c.strides[2] != c.itemsize) \
            or (M > 1 and c.strides[1] < N * c.itemsize) \
            or (G > 1 and c.strides[0] < M * c.strides[1]):
        raise ValueError("gemm_batch: c must be writeable with contiguous rows, its rows and "
                         "its slices apart (positive strides, none overlapping)")
    if G == 0 or M == 0 or N == 0:
        return
    if K == 0:
        raise ValueError("gemm_batch: inner dimension must be at least 1")
    if _overlap(c, a) or _overlap(c, b):
        raise ValueError("gemm_batch: c must not share memory with a or b")
    cdef size_t item = cnp.PyArray_ITEMSIZE(c)
    cdef int64_t sa[3]
    cdef int64_t sb[3]
    cdef int64_t sc[3]
    cdef int d
    for d in range(3):
        sa[d] = a.strides[d] // <int64_t>item
        sb[d] = b.strides[d] // <int64_t>item
        sc[d] = c.strides[d] // <int64_t>item
    cdef int nt = 1, t
    if G > 1 and G * M * N * K >= _parallel_min_macs():
        nt = <int>min(cn_omp_max_threads(), MAX_THREADS, G)
    cdef void *pa = cnp.PyArray_DATA(a)
    cdef void *pb = cnp.PyArray_DATA(b)
    cdef void *pc = cnp.PyArray_DATA(c)
    with nogil:
        if nt == 1:
            if type_num == cnp.NPY_FLOAT:
                _batch_part(0, 1, G, M, N, K, <const float *>pa, sa, <const float *>pb, sb,
                            <float *>pc, sc, accumulate)
            else:
                _batch_part(0, 1, G, M, N, K, <const double *>pa, sa, <const double *>pb, sb,
                            <double *>pc, sc, accumulate)
        else:
            for t in prange(nt, num_threads=nt, schedule="static"):
                if type_num == cnp.NPY_FLOAT:
                    _batch_part(t, nt, G, M, N, K, <const float *>pa, sa, <const float *>pb,
                                sb, <float *>pc, sc, accumulate)
                else:
                    _batch_part(t, nt, G, M, N, K, <const double *>pa, sa, <const double *>pb,
                                sb, <double *>pc, sc, accumulate)
