# The three plans (column, direct, packed) and the parallel region that runs them
# (included by gemm.pyx; the plan is chosen in _choose there).

cdef inline void _gemv(int64_t k, int64_t n, const floating *x, int64_t incx,
                       const floating *b, int64_t b_rs, floating *y, int beta) noexcept nogil:
    if floating is float:
        _table.sgemv(k, n, x, incx, b, b_rs, y, beta)
    else:
        _table.dgemv(k, n, x, incx, b, b_rs, y, beta)


cdef inline void _dots(int64_t k, const floating *a, int64_t a_rs, const floating *b,
                       floating *c, int64_t ldc, int64_t m, int beta) noexcept nogil:
    if floating is float:
        _table.sdots(k, a, a_rs, b, c, ldc, m, beta)
    else:
        _table.ddots(k, a, a_rs, b, c, ldc, m, beta)


cdef inline void _one_column(int64_t M, int64_t K, const floating *A, int64_t rsa,
                             int64_t csa, const floating *B, int64_t rsb, floating *C,
                             int64_t ldc, int beta, floating *scratch) noexcept nogil:
    """C[0:M, 0] (+)= A @ B[:, 0]: dot products along A's contiguous rows (B copied to
    scratch when its column is strided), or, when A's columns are contiguous, B's values
    streamed down them (the one-row kernel on C^T = B^T A^T; C contiguous, ldc 1)."""
    cdef int64_t p
    cdef const floating *b = B
    if csa == 1:
        if rsb != 1:
            for p in range(K):
                scratch[p] = B[p * rsb]
            b = scratch
        _dots(K, A, rsa, b, C, ldc, M, beta)
    else:
        _gemv(K, M, B, rsb, A, csa, C, beta)


cdef void _run_column(const Call *g, floating dummy, int t, int nt) noexcept nogil:
    """Thread t of nt: the one-column plan (N = 1), rows of C split in blocks of 16."""
    cdef int64_t r0, r1
    _share(_cdiv(g.M, 16), t, nt, &r0, &r1)
    r0 *= 16
    r1 = _min(g.M, r1 * 16)
    if r1 <= r0:
        return
    _one_column(r1 - r0, g.K, <const floating *>g.A + r0 * g.rsa, g.rsa, g.csa,
                <const floating *>g.B, g.rsb, <floating *>g.C + r0 * g.ldc, g.ldc,
                g.accumulate, <floating *>g.edge[t] if g.edge != NULL else NULL)
    _finish(g, dummy, r0, r1 - r0, 0, 1)


cdef inline void _pack_a(int64_t m, int64_t k, const floating *src, int64_t rs, int64_t cs,
                         floating *dst) noexcept nogil:
    if floating is float:
        _table.s_pack_a(m, k, src, rs, cs, dst)
    else:
        _table.d_pack_a(m, k, src, rs, cs, dst)


cdef inline void _pack_b(int64_t n, int64_t k, const floating *src, int64_t rs, int64_t cs,
                         floating *dst) noexcept nogil:
    if floating is float:
        _table.s_pack_b(n, k, src, rs, cs, dst)
    else:
        _table.d_pack_b(n, k, src, rs, cs, dst)


cdef enum:
    PACK_ROWS = 8   # rows of B copied per sweep across the block's slivers


cdef void _pack_b_block(const Call *g, const floating *B, int64_t kc, int64_t nc, floating *bp,
                        int t, int nt) noexcept nogil:
    """Thread t's share of packing the kc x nc block of B into NR-column slivers (sliver s
    at bp + s * NR * g.kc: a fixed place whatever this block's kc, so threads working on
    different k blocks of their own slivers never overlap).

    Row-contiguous B is swept a few full rows at a time (streaming reads) and the
    threads split the rows; otherwise each thread packs whole slivers."""
    cdef int nr = g.nr
    cdef int64_t n_sl = _cdiv(nc, nr), s, q, p, p0, p1, rows
    if g.csb == 1:
        _share(_cdiv(kc, PACK_ROWS), t, nt, &p0, &p1)
        for q in range(p0, p1):
            p = q * PACK_ROWS
            rows = _min(PACK_ROWS, kc - p)
            for s in range(n_sl):
                _pack_b(_min(nr, nc - s * nr), rows, B + p * g.rsb + s * nr, g.rsb, 1,
                        bp + s * nr * g.kc + p * nr)
    else:
        s = t
        while s < n_sl:
            _pack_b(_min(nr, nc - s * nr), kc, B + s * nr * g.csb, g.rsb, g.csb, bp + s * nr * g.kc)
            s += nt


cdef void _pack_b_own(const Call *g, const floating *B, int64_t kc, int64_t nc, floating *bp,
                     int64_t s0, int64_t s1) noexcept nogil:
    """Pack slivers [s0, s1) of the kc x nc block of B, by one thread for itself (threads
    that split C by columns use only their own slivers: no sharing, no barrier)."""
    cdef int nr = g.nr
    cdef int64_t s, q, p, rows
    if g.csb == 1:
        for q in range(_cdiv(kc, PACK_ROWS)):
            p = q * PACK_ROWS
            rows = _min(PACK_ROWS, kc - p)
            for s in range(s0, s1):
                _pack_b(_min(nr, nc - s * nr), rows, B + p * g.rsb + s * nr, g.rsb, 1,
                        bp + s * nr * g.kc + p * nr)
    else:
        for s in range(s0, s1):
            _pack_b(_min(nr, nc - s * nr), kc, B + s * nr * g.csb, g.rsb, g.csb, bp + s * nr * g.kc)


cdef inline int64_t _packed_block(const Call *g) noexcept nogil:
    """Elements of one (NC, KC) block of a B packed beforehand (_gemm_prepacked.pxi):
    its slivers at the places the packed plan's workspace gives them."""
    return _cdiv(_min(g.N, g.nc), g.nr) * g.nr * g.kc


cdef void _run_packed(const Call *g, floating dummy, int t, int nt) noexcept nogil:
    """Thread t of nt: the packed plan (all threads call this together)."""
    cdef const floating *A = <const floating *>g.A
    cdef const floating *B = <const floating *>g.B
    cdef floating *bp = <floating *>g.b_pack
    cdef floating *ap = <floating *>g.a_pack[t]
    cdef const floating *a_s
    cdef int64_t a_rs, a_cs
    cdef int mr = g.mr, nr = g.nr, beta, last
    cdef int64_t jb, pb, jc, pc, ic, nc, kc, mcb, n_sl, m_sl, s, i, s0, s1, r0, r1, e0
    for jb in range(_cdiv(g.N, g.nc)):
        jc = jb * g.nc
        nc = _min(g.nc, g.N - jc)
        n_sl = _cdiv(nc, nr)
        if g.split_rows:
            _share(_cdiv(g.M, mr), t, nt, &r0, &r1)
            r0 *= mr
            r1 = _min(g.M, r1 * mr)
            s0 = 0
            s1 = n_sl
        else:
            r0 = 0
            r1 = g.M
            _share(n_sl, t, nt, &s0, &s1)
            if jb > 0 and g.b_ready == NULL:   # the last block's shares differ: wait
                cn_omp_barrier()                # until every sliver is used
        for pb in range(_cdiv(g.K, g.kc)):
            pc = pb * g.kc
            kc = _min(g.kc, g.K - pc)
            beta = pc > 0 or g.accumulate
            last = pc + kc == g.K
            if g.b_ready != NULL:   # packed beforehand: block (jb, pb), nothing to share
                bp = <floating *>g.b_ready + (jb * _cdiv(g.K, g.kc) + pb) * _packed_block(g)
            elif g.split_rows:   # every thread reads every sliver: pack them together
                _pack_b_block(g, B + pc * g.rsb + jc * g.csb, kc, nc, bp, t, nt)
                cn_omp_barrier()
            else:
                _pack_b_own(g, B + pc * g.rsb + jc * g.csb, kc, nc, bp, s0, s1)
            ic = r0
            while ic < r1:
                mcb = _min(g.mc, r1 - ic)
                m_sl = _cdiv(mcb, mr)
                if g.pack_a:
                    for i in range(m_sl):
                        _pack_a(_min(mr, mcb - i * mr), kc, A + (ic + i * mr) * g.rsa + pc * g.csa,
                                g.rsa, g.csa, ap + i * mr * kc)
                for s in range(s0, s1):
                    for i in range(m_sl):
                        if g.pack_a:
                            a_s = ap + i * mr * kc
                            a_rs = 1
                            a_cs = mr
                        else:
                            a_s = A + (ic + i * mr) * g.rsa + pc * g.csa
                            a_rs = g.rsa
                            a_cs = g.csa
                        _ukr(g, kc, a_s, a_rs, a_cs, bp + s * nr * g.kc, nr,
                             ic + i * mr, jc + s * nr,
                             <int>_min(mr, mcb - i * mr), <int>_min(nr, nc - s * nr), beta,
                             last)
                    if last and ((s - s0) % EPILOGUE_SLIVERS == EPILOGUE_SLIVERS - 1 or s == s1 - 1):
                        e0 = s - (s - s0) % EPILOGUE_SLIVERS
                        _finish(g, dummy, ic, mcb, jc + e0 * nr, _min(nc, (s + 1) * nr) - e0 * nr)
                ic += g.mc
            if g.split_rows and g.b_ready == NULL:   # the shared block is repacked next:
                cn_omp_barrier()                      # wait for every reader


cdef void _run_gemv_halves(const Call *g, floating dummy, int t, int nt) noexcept nogil:
    """Thread t of nt: a single row (the GEMV kernel) summed over each half of K apart,
    the first into C, the second into edge[0], then added (see _choose). Threads split
    the halves (t % 2), then each half's columns; one thread runs both."""
    cdef const floating *x = <const floating *>g.A
    cdef const floating *B = <const floating *>g.B
    cdef floating *y = <floating *>g.C
    cdef floating *second = <floating *>g.edge[0]
    cdef int64_t k0 = _cdiv(g.K, 2), n_sl = _cdiv(g.N, g.nr), s0, s1, j
    cdef int half
    for half in range(2):
        if nt == 1:
            s0, s1 = 0, n_sl
        elif t % 2 == half:
            _share(n_sl, t // 2, (nt - half + 1) // 2, &s0, &s1)
        else:
            continue
        if s1 > s0 and half == 0:
            _gemv(k0, _min(g.N, s1 * g.nr) - s0 * g.nr, x, g.csa, B + s0 * g.nr, g.rsb,
                  y + s0 * g.nr, g.accumulate)
        elif s1 > s0:
            _gemv(g.K - k0, _min(g.N, s1 * g.nr) - s0 * g.nr, x + k0 * g.csa, g.csa,
                  B + k0 * g.rsb + s0 * g.nr, g.rsb, second + s0 * g.nr, 0)
    if nt > 1:
        cn_omp_barrier()
    _share(n_sl, t, nt, &s0, &s1)
    for j in range(s0 * g.nr, _min(g.N, s1 * g.nr)):
        y[j] += second[j]
    if s1 > s0:
        _finish(g, dummy, 0, 1, s0 * g.nr, _min(g.N, s1 * g.nr) - s0 * g.nr)


cdef void _run_direct(const Call *g, floating dummy, int t, int nt) noexcept nogil:
    """Thread t of nt: the direct plan, A and B read in place (B rows contiguous)."""
    cdef const floating *A = <const floating *>g.A
    cdef const floating *B = <const floating *>g.B
    cdef floating *edge = <floating *>g.edge[t]
    cdef const floating *bs
    cdef int mr = g.mr, nr = g.nr, n, beta, last
    cdef int64_t pb, pc, kc, s, i, s0, s1, i0, i1, b_rs, e0, ib, ib1
    cdef int64_t n_sl = _cdiv(g.N, nr), m_sl = _cdiv(g.M, mr), mc_sl = g.mc // mr
    if g.split_rows:
        _share(m_sl, t, nt, &i0, &i1)
        s0 = 0
        s1 = n_sl
    else:
        i0 = 0
        i1 = m_sl
        _share(n_sl, t, nt, &s0, &s1)
    if g.k_halves:
        _run_gemv_halves(g, dummy, t, nt)
        return
    if g.M == 1:   # a single row: stream B's rows (the GEMV kernel), all of K at once
        if i1 > i0 and s1 > s0:
            _gemv(g.K, _min(g.N, s1 * nr) - s0 * nr, A, g.csa, B + s0 * nr, g.rsb,
                  <floating *>g.C + s0 * nr, g.accumulate)
            _finish(g, dummy, 0, 1, s0 * nr, _min(g.N, s1 * nr) - s0 * nr)
        return
    for pb in range(_cdiv(g.K, g.kc)):
        pc = pb * g.kc
        kc = _min(g.kc, g.K - pc)
        beta = pc > 0 or g.accumulate
        last = pc + kc == g.K
        ib = i0
        while ib < i1:
            ib1 = _min(i1, ib + mc_sl)
            for s in range(s0, s1):
                n = <int>_min(nr, g.N - s * nr)
                if n == nr:
                    bs = B + pc * g.rsb + s * nr
                    b_rs = g.rsb
                else:  # ragged last sliver: the kernel reads NR columns, so copy it padded
                    _pack_b(n, kc, B + pc * g.rsb + s * nr, g.rsb, 1, edge)
                    bs = edge
                    b_rs = nr
                for i in range(ib, ib1):
                    _ukr(g, kc, A + i * mr * g.rsa + pc * g.csa, g.rsa, g.csa, bs, b_rs,
                         i * mr, s * nr, <int>_min(mr, g.M - i * mr), n, beta, last)
                if last and ((s - s0) % EPILOGUE_SLIVERS == EPILOGUE_SLIVERS - 1
                             or s == s1 - 1):
                    e0 = s - (s - s0) % EPILOGUE_SLIVERS
                    _finish(g, dummy, ib * mr, _min(g.M, ib1 * mr) - ib * mr, e0 * nr,
                            _min(g.N, (s + 1) * nr) - e0 * nr)
            ib = ib1


cdef void _column_sums(const Call *g, floating dummy, int t, int nt) noexcept nogil:
    """Thread t's share of b_sums[j] = sum over k of B[k, j] (B is hot from the product)."""
    cdef const floating *B = <const floating *>g.B
    cdef floating *out = <floating *>g.b_sums
    cdef const floating *row
    cdef int64_t j0, j1, j, k
    _share(_cdiv(g.N, g.nr), t, nt, &j0, &j1)
    j0 *= g.nr
    j1 = _min(g.N, j1 * g.nr)
    if g.csb == 1 and j1 > j0:   # rows contiguous: the C loop with the AVX2 copy
        if floating is float:
            cn_column_sums_f32(_table.isa != CN_ISA_GENERIC, B + j0, g.rsb, g.K, j1 - j0,
                               out + j0)
        else:
            cn_column_sums_f64(_table.isa != CN_ISA_GENERIC, B + j0, g.rsb, g.K, j1 - j0,
                               out + j0)
        return
    for j in range(j0, j1):
        out[j] = 0
    for k in range(g.K):
        row = B + k * g.rsb
        for j in range(j0, j1):
            out[j] += row[j * g.csb]


cdef void _run_part(Call *g, floating dummy, int t, int nt) noexcept nogil:
    if g.column:
        _run_column(g, dummy, t, nt)
    elif g.direct:
        _run_direct(g, dummy, t, nt)
    else:
        _run_packed(g, dummy, t, nt)
    if g.b_sums != NULL:
        _column_sums(g, dummy, t, nt)
    if g.outer != NULL:
        _swap_back(g, dummy, t, nt)


cdef void _run(Call *g, floating dummy, int nthreads) noexcept nogil:
    cdef int t, master_cpu
    if nthreads == 1:
        _run_part(g, dummy, 0, 1)
        return
    master_cpu = cn_current_cpu()
    with parallel(num_threads=nthreads):
        t = cn_omp_thread_num()
        if t > 0:      # a worker woken onto the master's CPU moves off it (cn_omp.h)
            cn_leave_cpu(master_cpu)
        _run_part(g, dummy, t, cn_omp_num_threads())
