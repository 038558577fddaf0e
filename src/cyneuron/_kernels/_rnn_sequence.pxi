# The shared sequence loops of the recurrent kernels: one OpenMP region over all time
# steps, per thread a block of units, the step's GEMM and the cell math of _rnn_cells.pxi,
# one barrier per step; forward and backward (BPTT). Included by recurrent.pyx.

# -- the sequence drivers -------------------------------------------------------------------
# One OpenMP parallel region runs the whole loop over time. Each thread owns a fixed block
# of units [j0, j1) (a multiple of the micro-kernel's MR rows where it can): per step it
# computes its rows of every gate block with the single-thread GEMM (gemm.pxd), applies
# the gate math to its units and writes its rows of the next step's GEMM operand; then
# one barrier, since every thread needs the whole new state.
#
# The forward GEMM of a step is the whole pre-activation at once:
#   weights (G, Kt) = [recurrent_kernel^T | b_rec | kernel^T | b_in], Kt = H + F + 2,
#   operand (Kt, N) = [h_{t-1}; 1; x_t; 1],
# so no separate input projection is stored. (GRU: the h block's recurrent and input
# parts are two products over the first H + 1 and the last F + 1 rows.) The operand is
# kept packed in slivers of `W` columns (the micro-kernel's NR), (N / W, Kt, W), two
# slots in turn, so the micro-kernel reads it in place from contiguous rows whatever N
# is (a state row of the (H, T+1, N) buffer lies T+1 rows of N apart: for large N that
# stride maps every row to a few cache sets). Backward packs each step's gate gradients
# the same way for d(loss)/d(h_{t-1}) = recurrent_kernel (H, G) @ dgates_t (G, N), whose
# rows are again split by units; the weight gradients stay GEMMs over all steps (layer).
#
# Rings (inference): gates (Tg, G, N), c (Tc, H, N), act_c / rh (Ta, H, N) and
# h (H, S, N) may hold only 1 (gates, act_c, rh) or 2 (c, h) steps: step t uses index
# t % T_, so the full buffers (T, T+1) are the same code. Threads only ever read and
# write their own units' rows of these; the packed operands are the only shared data.
# GRU with rings (inference, T > 1) takes a loop of its own (_gru_ring_thread): per sliver
# of W samples, the thread's four products go to a small scratch and the gate math
# follows at once, reading h_{t-1} from the packed operand and writing h_t into the next
# one; gates and rh are then left untouched.

cdef enum:
    # Per-step multiply-adds below which one thread runs the loop (a barrier per step
    # costs more than splitting saves).
    SEQ_PARALLEL_MIN_MACS = 1 << 16


cdef inline Py_ssize_t _cdiv(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return (a + b - 1) // b


cdef inline void _split(Py_ssize_t count, Py_ssize_t unit, int tid, int nt, Py_ssize_t *begin,
                        Py_ssize_t *end) noexcept nogil:
    """Thread tid's part [begin, end) of `count` items, cut in whole blocks of `unit`."""
    cdef Py_ssize_t blocks = _cdiv(count, unit)
    cdef Py_ssize_t q = blocks // nt, r = blocks % nt
    cdef Py_ssize_t b0 = tid * q + (tid if tid < r else r)
    cdef Py_ssize_t b1 = b0 + q + (1 if tid < r else 0)
    begin[0] = min(count, b0 * unit)
    end[0] = min(count, b1 * unit)


cdef inline void _mm(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const floating *A,
                     Py_ssize_t lda, const floating *B, Py_ssize_t ldb, floating *C,
                     Py_ssize_t ldc, bint accumulate) noexcept nogil:
    if floating is float:
        sgemm_serial(M, N, K, A, lda, 1, B, ldb, 1, C, ldc, accumulate)
    else:
        dgemm_serial(M, N, K, A, lda, 1, B, ldb, 1, C, ldc, accumulate)


cdef void _packed_product(Py_ssize_t M, const floating *A, Py_ssize_t lda, const floating *P,
                          Py_ssize_t Kt, Py_ssize_t row0, Py_ssize_t K, Py_ssize_t W,
                          Py_ssize_t N, floating *C, Py_ssize_t ldc,
                          bint accumulate) noexcept nogil:
    """C (M, N) (+)= A (M, K) @ rows [row0, row0 + K) of the packed operand P (N / W
    slivers of Kt rows of W values)."""
    cdef Py_ssize_t v
    for v in range(_cdiv(N, W)):
        _mm(M, min(W, N - v * W), K, A, lda, P + (v * Kt + row0) * W, W, C + v * W, ldc,
            accumulate)


cdef void _pack_rows(const floating *src, Py_ssize_t lds, Py_ssize_t r0, Py_ssize_t r1,
                     floating *P, Py_ssize_t Kt, Py_ssize_t W, Py_ssize_t N,
                     Py_ssize_t row0) noexcept nogil:
    """Rows [r0, r1) of src (row r at src + r lds, N values) into rows row0 + r of P."""
    cdef Py_ssize_t r, v, n
    for r in range(r0, r1):
        for v in range(_cdiv(N, W)):
            n = min(W, N - v * W)
            memcpy(P + (v * Kt + row0 + r) * W, src + r * lds + v * W, n * sizeof(floating))


cdef inline void _barrier(int nt) noexcept nogil:
    if nt > 1:
        cn_omp_barrier()


cdef void _fwd_thread(int cell, Py_ssize_t T, Py_ssize_t N, Py_ssize_t H, Py_ssize_t F,
                      const floating *xf, const floating *A, floating *gates, Py_ssize_t Tg,
                      floating *h, Py_ssize_t S, floating *c, Py_ssize_t Tc, floating *aux,
                      Py_ssize_t Ta, floating *xh, floating *P, Py_ssize_t W,
                      const floating *zero, const unsigned char *mask, int act, int ract,
                      Py_ssize_t mr) noexcept nogil:
    """One thread's share of a forward run (inside the parallel region). cell: 0 SimpleRNN,
    1 LSTM, 2 GRU. aux: act_c (LSTM) or rh (GRU). xh (GRU): (3H, N), the h block's input
    part in its last H rows (the first 2H stay zero)."""
    cdef int tid = cn_omp_thread_num(), nt = cn_omp_num_threads()
    cdef Py_ssize_t gc = 4 if cell == 1 else (3 if cell == 2 else 1)
    cdef Py_ssize_t G = gc * H, Kt = H + F + 2, slot = _cdiv(N, W) * Kt * W
    cdef Py_ssize_t ldh = S * N, hn = H * N, ldx = T * N
    cdef Py_ssize_t j0, j1, f0, f1, t, q, m
    cdef floating *g
    cdef floating *B
    cdef floating *Bn
    cdef const floating *hp
    cdef floating *hc
    cdef const unsigned char *keep
    _split(H, mr, tid, nt, &j0, &j1)
    _split(F, 1, tid, nt, &f0, &f1)
    m = j1 - j0
    _pack_rows(h, ldh, j0, j1, P, Kt, W, N, 0)             # h_0
    _pack_rows(xf, ldx, f0, f1, P, Kt, W, N, H + 1)        # x_0
    _barrier(nt)
    for t in range(T):
        g = gates + (t % Tg) * G * N
        B = P + (t % 2) * slot
        Bn = P + ((t + 1) % 2) * slot
        hp = h + (t % S) * N
        hc = h + ((t + 1) % S) * N
        keep = mask + t * N if mask != NULL else NULL
        if m > 0:
            if cell == 2:
                for q in range(2):
                    _packed_product(m, A + (q * H + j0) * Kt, Kt, B, Kt, 0, Kt, W, N,
                                    g + (q * H + j0) * N, N, False)
                _packed_product(m, A + (2 * H + j0) * Kt, Kt, B, Kt, 0, H + 1, W, N,
                                g + (2 * H + j0) * N, N, False)
                _packed_product(m, A + (2 * H + j0) * Kt + H + 1, Kt, B, Kt, H + 1, F + 1, W,
                                N, xh + (2 * H + j0) * N, N, False)
                _gru_fwd_chunk(g, xh, N, <const floating *>NULL, <const floating *>NULL,
                               aux + (t % Ta) * hn, hp, hc, ldh, keep, j0, j1, H, N, act, ract)
            else:
                for q in range(gc):
                    _packed_product(m, A + (q * H + j0) * Kt, Kt, B, Kt, 0, Kt, W, N,
                                    g + (q * H + j0) * N, N, False)
                if cell == 1:
                    _lstm_fwd_chunk(g, zero, 0, <const floating *>NULL, c + (t % Tc) * hn,
                                    c + ((t + 1) % Tc) * hn, aux + (t % Ta) * hn, hp, hc, ldh,
                                    keep, j0, j1, H, N, act, ract)
                else:
                    _rnn_fwd_chunk(g, zero, 0, <const floating *>NULL, hp, hc, ldh, keep, j0,
                                   j1, N, act)
            if t + 1 < T:
                _pack_rows(hc, ldh, j0, j1, Bn, Kt, W, N, 0)
        if t + 1 < T:
            _pack_rows(xf + (t + 1) * N, ldx, f0, f1, Bn, Kt, W, N, H + 1)
            _barrier(nt)


cdef void _bwd_thread(int cell, Py_ssize_t T, Py_ssize_t N, Py_ssize_t H,
                      const floating *gates, const floating *c, const floating *aux,
                      const floating *h, const floating *wrec, const floating *dy,
                      floating *dh, floating *dc, floating *dgx, floating *dgr, floating *s,
                      floating *P, Py_ssize_t W, const unsigned char *mask, int act, int ract,
                      bint state_grad, Py_ssize_t mr) noexcept nogil:
    """One thread's share of BPTT. gates (T, G, N); c (T+1, H, N) (LSTM); aux: act_c (LSTM)
    or rh (GRU), (T, H, N); h (H, T+1, N) (GRU); wrec (H, G) as stored; dy (H, T, N) or
    NULL; dgx, dgr (G, T*N) (the same array but for GRU); s: scratch."""
    cdef int tid = cn_omp_thread_num(), nt = cn_omp_num_threads()
    cdef Py_ssize_t gc = 4 if cell == 1 else (3 if cell == 2 else 1)
    cdef Py_ssize_t G = gc * H, slot = _cdiv(N, W) * G * W, ld = T * N, hn = H * N
    cdef Py_ssize_t j0, j1, t, q, m
    cdef bint has_mask = mask != NULL
    cdef const floating *pdy
    cdef const unsigned char *keep
    cdef floating *B
    _split(H, mr, tid, nt, &j0, &j1)
    m = j1 - j0
    for t in range(T - 1, -1, -1):
        B = P + (t % 2) * slot
        pdy = dy + t * N if dy != NULL else NULL
        keep = mask + t * N if has_mask else NULL
        if m > 0:
            if cell == 1:
                _lstm_bwd_chunk(gates + t * G * N, c + t * hn, aux + t * hn, pdy, ld, dh, dc,
                                dgx + t * N, ld, s, keep, j0, j1, H, N, act, ract, has_mask)
            elif cell == 2:
                _gru_bwd_chunk(gates + t * G * N, aux + t * hn, h + t * N, (T + 1) * N, pdy, ld,
                               dh, dgx + t * N, dgr + t * N, ld, s, keep, j0, j1, H, N, act,
                               ract)
            else:
                _rnn_bwd_chunk(gates + t * G * N, pdy, ld, dh, dgx + t * N, ld, s, keep, j0,
                               j1, N, act, has_mask)
            if t > 0 or state_grad:
                for q in range(gc):
                    _pack_rows(dgr + q * H * ld + t * N, ld, j0, j1, B, G, W, N, q * H)
        if t > 0 or state_grad:
            _barrier(nt)
            if m > 0:
                # LSTM and SimpleRNN leave dh untouched without a mask (the product is all
                # of d(loss)/d(h_{t-1})); GRU and masked runs leave the direct part in it.
                _packed_product(m, wrec + j0 * G, G, B, G, 0, G, W, N, dh + j0 * N, N,
                                has_mask or cell == 2)


cdef int _seq_threads(Py_ssize_t macs, Py_ssize_t H, Py_ssize_t mr):
    if macs < SEQ_PARALLEL_MIN_MACS:
        return 1
    return max(1, min(cn_omp_max_threads(), <int>_cdiv(H, mr)))


cdef tuple _micro_tile(object dtype):
    """(MR, NR) of the GEMM micro-kernel in use for this dtype."""
    sizes = _gemm_block_sizes("float32" if dtype == np.float32 else "float64")
    return sizes[0], sizes[1]


cdef _check_ring(Py_ssize_t got, Py_ssize_t full, Py_ssize_t ring, str name, str what):
    if got != full and got != ring:
        raise ValueError(f"{name} must hold {full} {what} (or {ring} when not kept for "
                         f"backward); got {got}")


cdef _forward(int cell, const floating[:, ::1] xf, const floating[:, ::1] weights,
              floating[:, :, ::1] gates, floating[:, :, ::1] h, floating[:, :, ::1] c,
              floating[:, :, ::1] aux, const unsigned char[:, ::1] mask, int act, int ract):
    cdef Py_ssize_t H = h.shape[0], N = h.shape[2], F = xf.shape[0], T, gc, G, Kt
    gc = 4 if cell == 1 else (3 if cell == 2 else 1)
    G, Kt = gc * H, H + F + 2
    _check_code(act, "activation")
    _check_code(ract, "recurrent_activation")
    if N == 0 or xf.shape[1] % N != 0:
        raise ValueError(f"xf must have shape (features, T * {N}); "
                         f"got {(xf.shape[0], xf.shape[1])}")
    T = xf.shape[1] // N
    _check_shape((weights.shape[0], weights.shape[1]), (G, Kt), "weights")
    _check_shape((gates.shape[1], gates.shape[2]), (G, N), "gates")
    _check_ring(gates.shape[0], T, 1, "gates", "steps")
    _check_ring(h.shape[1], T + 1, 2, "h", "states")
    if cell != 0:
        _check_shape((aux.shape[1], aux.shape[2]), (H, N), "act_c" if cell == 1 else "rh")
        _check_ring(aux.shape[0], T, 1, "act_c" if cell == 1 else "rh", "steps")
    if cell == 1:
        _check_shape((c.shape[1], c.shape[2]), (H, N), "c")
        _check_ring(c.shape[0], T + 1, 2, "c", "states")
    _check_mask(mask, T, N)
    if T == 0 or H == 0:
        return
    _sync_isa()
    mr, W = _micro_tile(np.asarray(weights).dtype)
    dtype = np.asarray(weights).dtype
    packed = np.zeros((2, _cdiv(N, W), Kt, W), dtype)
    packed[:, :, H, :] = 1
    packed[:, :, Kt - 1, :] = 1
    zero = np.zeros(N, dtype)
    cdef bint fused = cell == 2 and gates.shape[0] == 1 and T > 1   # GRU inference
    xh = np.zeros((3 * H, N), dtype) if cell == 2 and not fused else zero
    cdef floating[:, :, :, ::1] P = packed
    cdef floating[::1] z = zero
    cdef floating[:, ::1] xhv = xh.reshape(-1, N)
    cdef const unsigned char *pk = &mask[0, 0] if mask is not None else NULL
    cdef floating *pc = &c[0, 0, 0] if cell == 1 else NULL
    cdef floating *pa = &aux[0, 0, 0] if cell != 0 else NULL
    cdef Py_ssize_t Tg = gates.shape[0], S = h.shape[1]
    cdef Py_ssize_t Tc = c.shape[0] if cell == 1 else 1, Ta = aux.shape[0] if cell != 0 else 1
    cdef Py_ssize_t w = W, r = mr
    cdef int nt = _seq_threads(G * Kt * N, H, r)
    cdef Py_ssize_t mmax = _cdiv(_cdiv(H, r), nt) * r
    cdef floating[::1] sc
    if fused:   # inference: no gates kept, the gate math fused per sliver
        scratch = np.empty(nt * 4 * mmax * W, dtype)
        sc = scratch
        with nogil, parallel(num_threads=nt):
            _gru_ring_thread(T, N, H, F, &xf[0, 0], &weights[0, 0], &h[0, 0, 0], S,
                             &P[0, 0, 0, 0], w, &sc[0], mmax, pk, act, ract, r)
        return
    with nogil, parallel(num_threads=nt):
        _fwd_thread(cell, T, N, H, F, &xf[0, 0], &weights[0, 0], &gates[0, 0, 0], Tg,
                    &h[0, 0, 0], S, pc, Tc, pa, Ta, &xhv[0, 0], &P[0, 0, 0, 0], w, &z[0], pk,
                    act, ract, r)


cdef _backward(int cell, const floating[:, :, ::1] gates, const floating[:, :, ::1] c,
               const floating[:, :, ::1] aux, const floating[:, :, ::1] h,
               const floating[:, ::1] kernel_rec, floating[:, ::1] dh, floating[:, ::1] dc,
               floating[:, ::1] dgx, floating[:, ::1] dgr, floating[:, ::1] scratch,
               const floating[:, :, ::1] dy, const unsigned char[:, ::1] mask, int act,
               int ract, bint state_grad):
    cdef Py_ssize_t T = gates.shape[0], N = gates.shape[2], H = dh.shape[0], gc, G
    gc = 4 if cell == 1 else (3 if cell == 2 else 1)
    G = gc * H
    _check_shape((gates.shape[0], gates.shape[1], gates.shape[2]), (T, G, N), "gates")
    if cell == 1:
        _check_shape((c.shape[0], c.shape[1], c.shape[2]), (T + 1, H, N), "c")
        _check_shape((aux.shape[0], aux.shape[1], aux.shape[2]), (T, H, N), "act_c")
        _check_shape((dc.shape[0], dc.shape[1]), (H, N), "dc")
    if cell == 2:
        _check_shape((aux.shape[0], aux.shape[1], aux.shape[2]), (T, H, N), "rh")
        _check_shape((h.shape[0], h.shape[1], h.shape[2]), (H, T + 1, N), "h")
    _check_shape((kernel_rec.shape[0], kernel_rec.shape[1]), (H, G), "kernel_rec")
    _check_shape((dh.shape[0], dh.shape[1]), (H, N), "dh")
    _check_shape((dgx.shape[0], dgx.shape[1]), (G, T * N), "dgx" if cell == 2 else "dgates")
    _check_shape((dgr.shape[0], dgr.shape[1]), (G, T * N), "dgr" if cell == 2 else "dgates")
    _check_shape((scratch.shape[0], scratch.shape[1]),
                 ((5 if cell == 1 else gc) * H, N), "scratch")
    if dy is not None:
        _check_shape((dy.shape[0], dy.shape[1], dy.shape[2]), (H, T, N), "dy")
    _check_mask(mask, T, N)
    _check_code(act, "activation")
    _check_code(ract, "recurrent_activation")
    if T == 0 or N == 0 or H == 0:
        return
    mr, W = _micro_tile(np.asarray(kernel_rec).dtype)
    packed = np.empty((2, _cdiv(N, W), G, W), np.asarray(kernel_rec).dtype)
    cdef floating[:, :, :, ::1] P = packed
    cdef const unsigned char *pk = &mask[0, 0] if mask is not None else NULL
    cdef const floating *pdy = &dy[0, 0, 0] if dy is not None else NULL
    cdef const floating *pc = &c[0, 0, 0] if cell == 1 else NULL
    cdef const floating *pa = &aux[0, 0, 0] if cell != 0 else NULL
    cdef const floating *ph = &h[0, 0, 0] if cell == 2 else NULL
    cdef floating *pdc = &dc[0, 0] if cell == 1 else NULL
    cdef Py_ssize_t w = W, r = mr
    cdef int nt = _seq_threads(G * H * N, H, r)
    with nogil, parallel(num_threads=nt):
        _bwd_thread(cell, T, N, H, &gates[0, 0, 0], pc, pa, ph, &kernel_rec[0, 0], pdy,
                    &dh[0, 0], pdc, &dgx[0, 0], &dgr[0, 0], &scratch[0, 0], &P[0, 0, 0, 0], w,
                    pk, act, ract, state_grad, r)
