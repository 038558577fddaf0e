# The LSTM inference loop for ONE sample (N = 1). First the input products of all T steps
# at once, xw (T, 4H) = bias + x @ kernel, one GEMM; then per step only the recurrent
# product, a vector-matrix product on the Keras recurrent kernel as it is, g (4H) =
# xw[t] + h_{t-1} @ kernel_rec: its rows are contiguous, so the one-row kernel streams
# them with vector FMAs along the 4H gate values (the batched loop's 4H dot products of
# H + F + 2 values each reduce every sum across lanes), and then the gate math runs once
# over all H units (vectors across units, where the batched loop vectorizes across
# samples and one sample leaves it scalar). No step_weights copy, no packed operand. One
# thread: a step is ~65K multiply-adds, less than a barrier per step would save.
# Included by recurrent.pyx.

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
                         const unsigned char *mask, int act, int ract) noexcept nogil:
    """T steps of one sample. hv (2, H): h_{t-1} and h_t as contiguous vectors in turn
    (hv[0] holds h_0); xw (T, 4H) scratch for the input products; h (H, S) receives
    every kept state, c (Tc, H) as in lstm_forward."""
    cdef Py_ssize_t G = 4 * H, t, j
    for t in range(T):
        if b != NULL:
            memcpy(xw + t * G, b, G * sizeof(floating))
        else:
            memset(xw + t * G, 0, G * sizeof(floating))
    if F > 0:    # xw += x (T, F) @ kernel (F, 4H); x_t is column t of xf (F, T)
        if floating is float:
            sgemm_serial(T, G, F, xf, x_ts, x_fs, W, w_rs, w_cs, xw, G, True)
        else:
            dgemm_serial(T, G, F, xf, x_ts, x_fs, W, w_rs, w_cs, xw, G, True)
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
        memcpy(g, xw + t * G, G * sizeof(floating))
        _rowvec(H, G, hp, 1, R, r_rs, r_cs, g)
        if floating is float:
            if act == ACT_TANH and ract == ACT_SIGMOID:
                cn_lstm_fwd_row(H, g, g + H, g + 2 * H, g + 3 * H, zero, zero, zero, zero,
                                0, 0, 0, 0, cp, cn, ac + (t % Ta) * H, hn)
                _keep_lstm_state(keep, cp, cn, hp, hn, 1, 0, H, 1)
            else:
                _lstm_fwd_chunk(g, zero, 0, <const floating *>NULL, cp, cn, ac + (t % Ta) * H,
                                hp, hn, 1, keep, 0, H, H, 1, act, ract)
        else:
            _lstm_fwd_chunk(g, zero, 0, <const floating *>NULL, cp, cn, ac + (t % Ta) * H,
                            hp, hn, 1, keep, 0, H, H, 1, act, ract)
        for j in range(H):
            h[j * S + (t + 1) % S] = hn[j]


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
    with nogil:
        for j in range(H):
            work[j] = ph[j * S]         # h_0
        _lstm_one_loop(T, H, F, &xf[0, 0] if F > 0 else <const floating *>NULL,
                       xf.strides[0] // item, xf.strides[1] // item,
                       pw, kernel.strides[0] // item, kernel.strides[1] // item,
                       &kernel_rec[0, 0], kernel_rec.strides[0] // item,
                       kernel_rec.strides[1] // item, pb, &gates[0, 0, 0], gates.shape[0],
                       ph, S, &c[0, 0, 0], c.shape[0], &act_c[0, 0, 0],
                       act_c.shape[0], work, work + 3 * H, work + 2 * H, pk, activation,
                       recurrent_activation)
        free(work)
