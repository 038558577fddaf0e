# The LSTM inference loop for ONE sample (N = 1). First the input products of all T steps
# at once, xw (T, 4H) = bias + x @ kernel, one GEMM; then per step only the recurrent
# product, a vector-matrix product on the Keras recurrent kernel as it is, g (4H) =
# xw[t] + h_{t-1} @ kernel_rec: its rows are contiguous, so the one-row kernel streams
# them with vector FMAs along the 4H gate values (the batched loop's 4H dot products of
# H + F + 2 values each reduce every sum across lanes), and then the gate math runs once
# over all H units (vectors across units, where the batched loop vectorizes across
# samples and one sample leaves it scalar). No step_weights copy, no packed operand.
# Threads split the units in blocks of ONE_UNIT_BLOCK: each makes its units' columns of
# the four gate blocks (the input products, each step's recurrent product and the gate
# math) and the threads meet at a barrier after each step, when h_t is whole. Every value
# is computed as on one thread (a product's column sums in the same order; the gate math
# at the same offsets from a call's start, the blocks a multiple of any vector loop), so
# the bits do not depend on the thread count. A step must be large enough for the
# barrier: ONE_PARALLEL_MIN_MACS, scaled by the threads' distance like the GEMM's
# threshold. Included by recurrent.pyx.

cdef enum:
    # multiply-adds of one recurrent step (H x 4H) from which the threads split the
    # units, near threads. LSTM(128), T = 50, one sample, Zen 5, 2 threads near (round
    # trip ~70-130 ns), predict interleaved: 0.126 ms on one thread, 0.091 on two
    ONE_PARALLEL_MIN_MACS = 32768
    ONE_UNIT_BLOCK = 64


cdef int64_t _one_min_macs_for_tests = -1


def _set_one_parallel_min_macs_for_tests(int64_t macs=-1):
    """Tests only: split the units of any recurrent step of at least `macs`
    multiply-adds (0: all that have two unit blocks); -1 restores the threshold."""
    global _one_min_macs_for_tests
    _one_min_macs_for_tests = macs


cdef int _one_threads(Py_ssize_t H) noexcept nogil:
    """Threads for lstm_forward_one's loop over H units."""
    cdef int64_t min_macs = (_one_min_macs_for_tests if _one_min_macs_for_tests >= 0 else
                             <int64_t>ONE_PARALLEL_MIN_MACS * distance_percent() // 100)
    cdef Py_ssize_t blocks = (H + ONE_UNIT_BLOCK - 1) // ONE_UNIT_BLOCK
    if <int64_t>H * 4 * H < min_macs or blocks < 2:
        return 1
    return <int>min(<Py_ssize_t>cn_omp_max_threads(), blocks)

cdef inline void _rowvec(Py_ssize_t K, Py_ssize_t G, const floating *x, Py_ssize_t incx,
                         const floating *A, Py_ssize_t rsa, Py_ssize_t csa,
                         floating *y) noexcept nogil:
    """y (G) += x (K, stride incx) @ A (K, G), A[p, j] at A + p rsa + j csa."""
    if floating is float:
        sgemm_serial(G, 1, K, A, csa, rsa, x, incx, 1, y, 1, True)
    else:
        dgemm_serial(G, 1, K, A, csa, rsa, x, incx, 1, y, 1, True)


cdef void _lstm_one_loop(Py_ssize_t T, Py_ssize_t H, Py_ssize_t F, const floating *xf,
                         Py_ssize_t x_fs, Py_ssize_t x_ts, const floating *W, Py_ssize_t w_rs, Py_ssize_t w_cs,
                         const floating *R, Py_ssize_t r_rs, Py_ssize_t r_cs,
                         const floating *b, floating *gates, Py_ssize_t Tg, floating *h,
                         Py_ssize_t S, floating *c, Py_ssize_t Tc, floating *ac,
                         Py_ssize_t Ta, floating *hv, floating *xw, const floating *zero,
                         const unsigned char *mask, int act, int ract, Py_ssize_t u0,
                         Py_ssize_t u1, bint sync) noexcept nogil:
    """T steps of one sample for units [u0, u1) (sync: other threads have the other units;
    meet them after each step). hv (2, H): h_{t-1} and h_t as contiguous vectors in turn
    (hv[0] holds h_0); xw (T, 4H) scratch for the input products; h (H, S) receives
    every kept state, c (Tc, H) as in lstm_forward."""
    cdef Py_ssize_t G = 4 * H, n = u1 - u0, t, j, q, col
    if n <= 0:      # no units here (more threads than blocks): still meet the others
        if sync:
            for t in range(T):
                cn_omp_barrier()
        return
    for t in range(T):
        for q in range(4):
            col = t * G + q * H + u0
            if b != NULL:
                memcpy(xw + col, b + q * H + u0, n * sizeof(floating))
            else:
                memset(xw + col, 0, n * sizeof(floating))
    if F > 0:    # xw += x (T, F) @ kernel (F, 4H), these units' columns; x_t is column t of xf
        for q in range(4):
            col = q * H + u0
            if floating is float:
                sgemm_serial(T, n, F, xf, x_ts, x_fs, W + col * w_cs, w_rs, w_cs, xw + col, G,
                             True)
            else:
                dgemm_serial(T, n, F, xf, x_ts, x_fs, W + col * w_cs, w_rs, w_cs, xw + col, G,
                             True)
    cdef floating *g
    cdef floating *hp
    cdef floating *hn
    cdef floating *cp
    cdef floating *cn
    cdef const unsigned char *keep
    for t in range(T):
        g = gates + (t % Tg) * G
        hp = hv + (t % 2) * H
        hn = hv + ((t + 1) % 2) * H
        cp = c + (t % Tc) * H
        cn = c + ((t + 1) % Tc) * H
        keep = mask + t if mask != NULL else NULL
        for q in range(4):
            # odd steps run backwards (gates 3..0, kernel rows H-1..0): they start on the
            # rows the step before read last, still in L1
            if t % 2:
                q = 3 - q
            col = q * H + u0
            memcpy(g + col, xw + t * G + col, n * sizeof(floating))
            if t % 2:
                _rowvec(H, n, hp + H - 1, -1, R + col * r_cs + (H - 1) * r_rs, -r_rs, r_cs,
                        g + col)
            else:
                _rowvec(H, n, hp, 1, R + col * r_cs, r_rs, r_cs, g + col)
        if floating is float:
            if act == ACT_TANH and ract == ACT_SIGMOID:
                cn_lstm_fwd_row(n, g + u0, g + H + u0, g + 2 * H + u0, g + 3 * H + u0, zero,
                                zero, zero, zero, 0, 0, 0, 0, cp + u0, cn + u0,
                                ac + (t % Ta) * H + u0, hn + u0)
                _keep_lstm_state(keep, cp, cn, hp, hn, 1, u0, u1, 1)
            else:
                _lstm_fwd_chunk(g, zero, 0, <const floating *>NULL, cp, cn, ac + (t % Ta) * H,
                                hp, hn, 1, keep, u0, u1, H, 1, act, ract)
        else:
            _lstm_fwd_chunk(g, zero, 0, <const floating *>NULL, cp, cn, ac + (t % Ta) * H,
                            hp, hn, 1, keep, u0, u1, H, 1, act, ract)
        for j in range(u0, u1):
            h[j * S + (t + 1) % S] = hn[j]
        if sync:        # h_t whole before any thread reads it (or overwrites h_{t-1})
            cn_omp_barrier()


def lstm_forward_one(const floating[:, :] xf, const floating[:, :] kernel,
                     const floating[:, :] kernel_rec, const floating[::1] bias,
                     floating[:, :, ::1] gates, floating[:, :, ::1] h, floating[:, :, ::1] c,
                     floating[:, :, ::1] act_c, const unsigned char[:, ::1] mask=None,
                     int activation=ACT_TANH, int recurrent_activation=ACT_SIGMOID):
    """lstm_forward for one sample (N = 1) from the Keras weights, no step_weights:
    kernel (F, 4H), kernel_rec (H, 4H), bias (4H,) or None; xf (F, T) any strides (the
    sample x (T, F) as x.T, or x[::-1].T to run backwards); gates, h, c, act_c and mask
    as in lstm_forward (rings or full buffers), with N = 1."""
    cdef Py_ssize_t H = h.shape[0], F = xf.shape[0], T = xf.shape[1], G = 4 * h.shape[0]
    _check_code(activation, "activation")
    _check_code(recurrent_activation, "recurrent_activation")
    if h.shape[2] != 1:
        raise ValueError(f"lstm_forward_one runs one sample: h must have shape (H, S, 1); "
                         f"got {(h.shape[0], h.shape[1], h.shape[2])}")
    _check_shape((kernel.shape[0], kernel.shape[1]), (F, G), "kernel")
    _check_shape((kernel_rec.shape[0], kernel_rec.shape[1]), (H, G), "kernel_rec")
    if bias is not None:
        _check_shape((bias.shape[0],), (G,), "bias")
    _check_shape((gates.shape[1], gates.shape[2]), (G, 1), "gates")
    _check_ring(gates.shape[0], T, 1, "gates", "steps")
    _check_ring(h.shape[1], T + 1, 2, "h", "states")
    _check_shape((act_c.shape[1], act_c.shape[2]), (H, 1), "act_c")
    _check_ring(act_c.shape[0], T, 1, "act_c", "steps")
    _check_shape((c.shape[1], c.shape[2]), (H, 1), "c")
    _check_ring(c.shape[0], T + 1, 2, "c", "states")
    _check_mask(mask, T, 1)
    if T == 0 or H == 0:
        return
    _sync_isa()
    # scratch, one block: hv (2, H) | zero (H) | xw (T, 4H)
    cdef floating *work = <floating *>calloc(3 * H + T * G, sizeof(floating))
    if work == NULL:
        raise MemoryError("lstm_forward_one: no memory for its scratch")
    cdef Py_ssize_t item = sizeof(floating), j, S = h.shape[1]
    cdef const floating *pb = &bias[0] if bias is not None else NULL
    cdef const floating *pw = &kernel[0, 0] if F > 0 else <const floating *>NULL
    cdef const unsigned char *pk = &mask[0, 0] if mask is not None else NULL
    cdef floating *ph = &h[0, 0, 0]
    cdef const floating *px = &xf[0, 0] if F > 0 else <const floating *>NULL
    cdef Py_ssize_t x_fs = xf.strides[0] // item, x_ts = xf.strides[1] // item
    cdef Py_ssize_t w_rs = kernel.strides[0] // item, w_cs = kernel.strides[1] // item
    cdef Py_ssize_t r_rs = kernel_rec.strides[0] // item, r_cs = kernel_rec.strides[1] // item
    cdef const floating *pr = &kernel_rec[0, 0]
    cdef floating *pg = &gates[0, 0, 0]
    cdef floating *pc = &c[0, 0, 0]
    cdef floating *pa = &act_c[0, 0, 0]
    cdef Py_ssize_t Tg = gates.shape[0], Tc = c.shape[0], Ta = act_c.shape[0]
    cdef Py_ssize_t blocks = (H + ONE_UNIT_BLOCK - 1) // ONE_UNIT_BLOCK, b0, b1
    cdef int nt = _one_threads(H), tid, nth
    with nogil:
        for j in range(H):
            work[j] = ph[j * S]         # h_0
        if nt == 1:
            _lstm_one_loop(T, H, F, px, x_fs, x_ts, pw, w_rs, w_cs, pr, r_rs, r_cs, pb, pg,
                           Tg, ph, S, pc, Tc, pa, Ta, work, work + 3 * H, work + 2 * H, pk,
                           activation, recurrent_activation, 0, H, False)
        else:
            with parallel(num_threads=nt):
                tid = cn_omp_thread_num()
                nth = cn_omp_num_threads()
                b0 = blocks * tid // nth
                b1 = blocks * (tid + 1) // nth
                _lstm_one_loop(T, H, F, px, x_fs, x_ts, pw, w_rs, w_cs, pr, r_rs, r_cs, pb,
                               pg, Tg, ph, S, pc, Tc, pa, Ta, work, work + 3 * H,
                               work + 2 * H, pk, activation, recurrent_activation,
                               min(H, b0 * ONE_UNIT_BLOCK), min(H, b1 * ONE_UNIT_BLOCK),
                               nth > 1)
        free(work)
