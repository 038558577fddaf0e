# B packed once, used by many calls (included by gemm.pyx): weights the caller knows are
# fixed (a deployed model's), where packing them again on every call costs ~4% of a
# batch-256 MLP layer (784x256: 15 of 410 us on one Zen 5 core). The caller owns the
# question of whether B changed since it was packed: a PackedB is a copy, and writes to B
# afterwards are not seen. predict does not use it (user code may write weights in place).


cdef class PackedB:
    """B (K, N) in the packed plan's sliver layout for the micro-kernel in use when it was
    made, every (NC, KC) block one after another; `b` is B itself, read by the plans
    that do not pack (few rows, one column) and when the instruction set changed."""
    cdef readonly object b
    cdef readonly object data
    cdef readonly int isa
    cdef int type_num, nr
    cdef int64_t K, N, kc, nc

    @property
    def shape(self):
        return (self.K, self.N)


def pack_b(cnp.ndarray b not None):
    """PackedB of the float32 or float64 matrix b (K, N), K >= 1, any strides; for
    gemm_prepacked. A copy: later changes to b are not seen by the packed plan."""
    cdef int type_num = cnp.PyArray_TYPE(b)
    if type_num != cnp.NPY_FLOAT and type_num != cnp.NPY_DOUBLE:
        raise TypeError(f"pack_b: b must be float32 or float64; got {b.dtype.name}")
    _check_operand(b, "b", type_num)
    if cnp.PyArray_DIM(b, 0) < 1:
        raise ValueError("pack_b: b must have at least one row (K >= 1)")
    cdef PackedB p = PackedB.__new__(PackedB)
    cdef Call g
    cdef size_t item = cnp.PyArray_ITEMSIZE(b)
    g.K, g.N = cnp.PyArray_DIM(b, 0), cnp.PyArray_DIM(b, 1)
    g.rsb, g.csb = cnp.PyArray_STRIDE(b, 0) // item, cnp.PyArray_STRIDE(b, 1) // item
    g.nr = _table.s_nr if type_num == cnp.NPY_FLOAT else _table.d_nr
    g.nc = (NC_TARGET // g.nr) * g.nr
    g.kc = _cdiv(g.K, _cdiv(g.K, KC_BLOCK))
    cdef int64_t blocks = _cdiv(g.N, g.nc) * _cdiv(g.K, g.kc) if g.N > 0 else 0
    cdef int64_t size = blocks * _packed_block(&g)
    p.b, p.isa, p.type_num, p.nr = b, _table.isa, type_num, g.nr
    p.K, p.N, p.kc, p.nc = g.K, g.N, g.kc, g.nc
    p.data = _aligned_empty(size, b.dtype)
    cdef char *dst = <char *>cnp.PyArray_DATA(p.data)
    cdef const char *src = <const char *>cnp.PyArray_DATA(b)
    cdef int64_t jb, pb, jc, pc, nc, kc, at = 0
    with nogil:
        for jb in range(_cdiv(g.N, g.nc)):
            jc = jb * g.nc
            nc = _min(g.nc, g.N - jc)
            for pb in range(_cdiv(g.K, g.kc)):
                pc = pb * g.kc
                kc = _min(g.kc, g.K - pc)
                if type_num == cnp.NPY_FLOAT:
                    _pack_b_own(&g, <const float *>src + pc * g.rsb + jc * g.csb, kc, nc,
                                <float *>dst + at, 0, _cdiv(nc, g.nr))
                else:
                    _pack_b_own(&g, <const double *>src + pc * g.rsb + jc * g.csb, kc, nc,
                                <double *>dst + at, 0, _cdiv(nc, g.nr))
                at += _packed_block(&g)
    return p


cdef object _aligned_empty(int64_t size, dtype):
    """A 1-D array of `size` elements starting on a cache line (the micro-kernel's
    aligned sliver loads)."""
    raw = np.empty(size * dtype.itemsize + CACHE_LINE, np.uint8)
    cdef size_t off = (-<size_t>cnp.PyArray_DATA(raw)) % CACHE_LINE
    return raw[off:off + size * dtype.itemsize].view(dtype)


def gemm_prepacked(cnp.ndarray a not None, PackedB packed not None, cnp.ndarray c not None,
                   cnp.ndarray bias=None, int activation=EPI_LINEAR, double alpha=0.0):
    """c = act(a @ B + bias), B the matrix `packed` was made from: as gemm(a, packed.b, c,
    bias, activation, alpha), the same plan and the same sums, except that the packed
    plan reads packed's slivers instead of packing B again (the direct and one-column
    plans read packed.b, as does every plan after set_isa changed the micro-kernel)."""
    cdef PackedB p = packed
    if p.isa != _table.isa:
        gemm(a, p.b, c, bias, activation, alpha)
        return
    cdef int type_num = cnp.PyArray_TYPE(c)
    if type_num != p.type_num:
        raise TypeError(f"gemm_prepacked: a, the packed b and c must share one float dtype; "
                        f"c is {c.dtype.name}, b {p.b.dtype.name}")
    _check_operand(a, "a", type_num)
    _check_operand(c, "c", type_num)
    if not cnp.PyArray_IS_C_CONTIGUOUS(c) or not cnp.PyArray_ISWRITEABLE(c):
        raise ValueError("gemm_prepacked: c must be a writeable C-contiguous array")
    cdef Call g
    g.M, g.K, g.N = cnp.PyArray_DIM(a, 0), cnp.PyArray_DIM(a, 1), p.N
    if p.K != g.K or cnp.PyArray_DIM(c, 0) != g.M or cnp.PyArray_DIM(c, 1) != g.N:
        raise ValueError(f"gemm_prepacked: shapes do not agree: a {(<object>a).shape}, "
                         f"b {p.shape}, c {(<object>c).shape}")
    if bias is not None and (cnp.PyArray_NDIM(bias) != 1 or cnp.PyArray_DIM(bias, 0) != g.N
                             or cnp.PyArray_TYPE(bias) != type_num
                             or not cnp.PyArray_IS_C_CONTIGUOUS(bias)
                             or not cnp.PyArray_ISALIGNED(bias)):
        raise ValueError(f"gemm_prepacked: bias must be a contiguous ({g.N},) array of dtype "
                         f"{c.dtype.name}; got {(<object>bias).shape} {bias.dtype.name}")
    if not EPI_LINEAR <= activation <= EPI_ELU:
        raise ValueError(f"gemm_prepacked: unknown epilogue activation code {activation}")
    if g.M == 0 or g.N == 0:
        return
    if _overlap(c, a) or _overlap(c, <cnp.ndarray>p.b) or _overlap(c, <cnp.ndarray>p.data):
        raise ValueError("gemm_prepacked: c must not share memory with a or b")
    cdef size_t item = cnp.PyArray_ITEMSIZE(c)
    cdef cnp.ndarray b = p.b
    g.rsa, g.csa = cnp.PyArray_STRIDE(a, 0) // item, cnp.PyArray_STRIDE(a, 1) // item
    g.rsb, g.csb = cnp.PyArray_STRIDE(b, 0) // item, cnp.PyArray_STRIDE(b, 1) // item
    g.A, g.B, g.C = cnp.PyArray_DATA(a), cnp.PyArray_DATA(b), cnp.PyArray_DATA(c)
    g.ldc = g.N
    g.bias = cnp.PyArray_DATA(bias) if bias is not None else NULL
    g.act, g.alpha, g.accumulate = activation, alpha, 0
    g.b_sums = NULL
    g.act_out = NULL
    g.b_ready = NULL
    g.nonfinite = NULL
    g.outer = NULL
    if type_num == cnp.NPY_FLOAT:
        g.mr, g.nr = _table.s_mr, _table.s_nr
    else:
        g.mr, g.nr = _table.d_mr, _table.d_nr
    cdef int nthreads = 1
    if g.M * g.N * g.K >= _parallel_min_macs() or g.K * g.N * item >= PARALLEL_MIN_B_BYTES:
        nthreads = min(cn_omp_max_threads(), MAX_THREADS)
    _choose(&g, nthreads, item)
    if not g.direct and not g.column:
        if g.nr != p.nr or g.kc != p.kc or g.nc != p.nc:   # cannot happen on one isa
            raise RuntimeError("gemm_prepacked: the packed layout does not match the plan")
        g.b_ready = cnp.PyArray_DATA(p.data)
    cdef _Workspace ws = _free_workspaces.pop() if _free_workspaces else _Workspace()
    try:
        _plan(&g, ws, nthreads, item)
        with nogil:
            if type_num == cnp.NPY_FLOAT:
                _run(&g, <float>0, nthreads)
            else:
                _run(&g, <double>0, nthreads)
    finally:
        _free_workspaces.append(ws)
