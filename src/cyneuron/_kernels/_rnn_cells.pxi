# Cell math of the recurrent kernels, per cell type (LSTM, GRU, SimpleRNN): one step's
# forward and backward for a thread's range of units. Included by recurrent.pyx (read that
# first: activation codes, the C gate rows of csrc/rnn_gates.h); the sequence loops that call
# these are in _rnn_sequence.pxi.

# -- the C gradient rows under one name for both precisions ---------------------------------
cdef inline void _lstm_bwd_row(Py_ssize_t n, const floating *gi, const floating *gf,
                               const floating *gc, const floating *go, const floating *s,
                               Py_ssize_t hn, const floating *cp, const floating *ac,
                               const floating *dh, floating *dc, floating *di, floating *df,
                               floating *dcc, floating *do_) noexcept nogil:
    """s: the five derivative rows, hn apart (gates i, f, c, o, then act(c))."""
    if floating is float:
        cn_lstm_bwd_row_f(n, gi, gf, gc, go, s, s + hn, s + 2 * hn, s + 3 * hn, s + 4 * hn,
                          cp, ac, dh, dc, di, df, dcc, do_)
    else:
        cn_lstm_bwd_row_d(n, gi, gf, gc, go, s, s + hn, s + 2 * hn, s + 3 * hn, s + 4 * hn,
                          cp, ac, dh, dc, di, df, dcc, do_)


cdef inline void _lstm_bwd_default(Py_ssize_t n, const floating *gi, const floating *gf,
                                   const floating *gc, const floating *go, const floating *cp,
                                   const floating *ac, const floating *dy, floating *dh,
                                   floating *dc, floating *di, floating *df, floating *dcc,
                                   floating *do_) noexcept nogil:
    if floating is float:
        cn_lstm_bwd_default_f(n, gi, gf, gc, go, cp, ac, dy, dh, dc, di, df, dcc, do_)
    else:
        cn_lstm_bwd_default_d(n, gi, gf, gc, go, cp, ac, dy, dh, dc, di, df, dcc, do_)


cdef inline void _gru_bwd_row(Py_ssize_t n, const floating *z, const floating *r,
                              const floating *hh, const floating *s, Py_ssize_t hn,
                              const floating *rh, const floating *hp, floating *dh,
                              floating *dxz, floating *dxr, floating *dxh, floating *drz,
                              floating *drr, floating *drh) noexcept nogil:
    """s: the three derivative rows, hn apart (z, r, the candidate)."""
    if floating is float:
        cn_gru_bwd_row_f(n, z, r, hh, s, s + hn, s + 2 * hn, rh, hp, dh, dxz, dxr, dxh, drz,
                         drr, drh)
    else:
        cn_gru_bwd_row_d(n, z, r, hh, s, s + hn, s + 2 * hn, rh, hp, dh, dxz, dxr, dxh, drz,
                         drr, drh)


cdef inline void _gru_bwd_default(Py_ssize_t n, const floating *z, const floating *r,
                                  const floating *hh, const floating *rh, const floating *hp,
                                  const floating *dy, floating *dh, floating *dxz,
                                  floating *dxr, floating *dxh, floating *drz, floating *drr,
                                  floating *drh) noexcept nogil:
    if floating is float:
        cn_gru_bwd_default_f(n, z, r, hh, rh, hp, dy, dh, dxz, dxr, dxh, drz, drr, drh)
    else:
        cn_gru_bwd_default_d(n, z, r, hh, rh, hp, dy, dh, dxz, dxr, dxh, drz, drr, drh)



cdef inline void _zero_gate_grads(floating *dg, Py_ssize_t ldg, int blocks, Py_ssize_t H,
                                  Py_ssize_t j, Py_ssize_t n) noexcept nogil:
    """A masked sample's gate gradients (unit j, sample n, each of the gate blocks): 0."""
    cdef int q
    for q in range(blocks):
        dg[(q * H + j) * ldg + n] = 0


# Layouts (unit-major: a step's values for one unit are the N samples side by side):
#   xf (F, T*N)     the inputs, feature-major; step t is columns [t*N, (t+1)*N).
#   gates (T, G, N) per step, the step GEMM's output (contiguous), then replaced by the
#                   gate values.
#   h (H, T+1, N)   the states; h[:, t] feeds step t, which writes h[:, t+1]. As a matrix
#                   h[:, :T] is (H, T*N), the operand of the recurrent kernel's gradient.
#   c, act_c (T+1 | T, H, N)   LSTM cell states and activation(c).
#   dgates (G, T*N) the gate gradients, laid out like xf's columns (the weight-gradient
#                   GEMMs take it whole).
# A thread's units [j0, j1) are rows j0..j1 of each gate block (the chunk functions below
# take such a range).

cdef inline void _add_rows(floating *dh, const floating *dy, Py_ssize_t ldy, Py_ssize_t j0,
                           Py_ssize_t j1, Py_ssize_t N) noexcept nogil:
    """Rows [j0, j1) of dh (rows of N values) += dy's rows (row j at dy + j ldy)."""
    cdef Py_ssize_t j, n
    for j in range(j0, j1):
        for n in range(N):
            dh[j * N + n] = dh[j * N + n] + dy[j * ldy + n]


cdef inline void _add_input(floating *g, const floating *p, Py_ssize_t ldp, const floating *b,
                            Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t N) noexcept nogil:
    """Rows [r0, r1) of g (rows of N values) += the step's input projection and bias."""
    cdef Py_ssize_t r, n
    cdef floating bias
    for r in range(r0, r1):
        bias = b[r] if b != NULL else 0
        for n in range(N):
            g[r * N + n] = g[r * N + n] + p[r * ldp + n] + bias


cdef void _lstm_fwd_chunk(floating *g, const floating *p, Py_ssize_t ldp, const floating *b,
                          const floating *c_prev, floating *c, floating *ac,
                          const floating *h_prev, floating *h, Py_ssize_t ldh,
                          const unsigned char *keep, Py_ssize_t j0, Py_ssize_t j1,
                          Py_ssize_t H, Py_ssize_t N, int act, int ract) noexcept nogil:
    """Units [j0, j1) of one LSTM step. g (4H, N): h_{t-1} products in, gate values out
    (blocks i, f, c, o); c = f c_prev + i g; ac = act(c); h = o ac. keep (N) or NULL."""
    cdef Py_ssize_t q, j, n, e, e0 = j0 * N, m = (j1 - j0) * N, hn = H * N
    if floating is float:
        if act == ACT_TANH and ract == ACT_SIGMOID:  # the defaults: one fused pass per row
            for j in range(j0, j1):
                e = j * N
                cn_lstm_fwd_row(N, g + e, g + hn + e, g + 2 * hn + e, g + 3 * hn + e,
                                p + j * ldp, p + (H + j) * ldp, p + (2 * H + j) * ldp,
                                p + (3 * H + j) * ldp, b[j] if b != NULL else 0,
                                b[H + j] if b != NULL else 0, b[2 * H + j] if b != NULL else 0,
                                b[3 * H + j] if b != NULL else 0, c_prev + e, c + e, ac + e,
                                h + j * ldh)
            _keep_lstm_state(keep, c_prev, c, h_prev, h, ldh, j0, j1, N)
            return
    for q in range(4):
        _add_input(g, p, ldp, b, q * H + j0, q * H + j1, N)
    _act_inplace(ract, g + e0, m)
    _act_inplace(ract, g + hn + e0, m)
    _act_inplace(act, g + 2 * hn + e0, m)
    _act_inplace(ract, g + 3 * hn + e0, m)
    for e in range(e0, e0 + m):
        c[e] = g[hn + e] * c_prev[e] + g[e] * g[2 * hn + e]
    memcpy(ac + e0, c + e0, m * sizeof(floating))
    _act_inplace(act, ac + e0, m)
    for j in range(j0, j1):
        for n in range(N):
            h[j * ldh + n] = g[3 * hn + j * N + n] * ac[j * N + n]
    _keep_lstm_state(keep, c_prev, c, h_prev, h, ldh, j0, j1, N)


cdef inline void _keep_lstm_state(const unsigned char *keep, const floating *c_prev, floating *c,
                                  const floating *h_prev, floating *h, Py_ssize_t ldh,
                                  Py_ssize_t j0, Py_ssize_t j1, Py_ssize_t N) noexcept nogil:
    """Masked samples (keep[n] == 0) carry their state over; nothing to do without a mask."""
    cdef Py_ssize_t j, n
    if keep != NULL:
        for j in range(j0, j1):
            for n in range(N):
                if keep[n] == 0:
                    c[j * N + n] = c_prev[j * N + n]
                    h[j * ldh + n] = h_prev[j * ldh + n]


cdef void _lstm_bwd_chunk(const floating *g, const floating *c_prev, const floating *ac,
                          const floating *dy, Py_ssize_t ldy, floating *dh, floating *dc,
                          floating *dg, Py_ssize_t ldg, floating *s, const unsigned char *keep,
                          Py_ssize_t j0, Py_ssize_t j1, Py_ssize_t H, Py_ssize_t N, int act,
                          int ract, bint direct) noexcept nogil:
    """Units [j0, j1) of one step of BPTT. dh (H, N): d(loss)/d(h_t) from later steps (dy,
    row j at dy + j ldy, adds the output's own); with `direct` it leaves holding the part of
    d(loss)/d(h_{t-1}) that skips the recurrent kernel (0, all of it on a masked sample).
    dc: d(loss)/d(c_t) in, d(loss)/d(c_{t-1}) out. dg: the 4H gate rows, row r at
    dg + r ldg. s: (5H, N) scratch for the derivatives."""
    cdef Py_ssize_t j, n, e, e0 = j0 * N, m = (j1 - j0) * N, hn = H * N
    cdef floating dht, dcj
    if keep == NULL and not direct and act == ACT_TANH and ract == ACT_SIGMOID:
        for j in range(j0, j1):  # the defaults: one pass per row, derivatives inline
            e = j * N
            _lstm_bwd_default(N, g + e, g + hn + e, g + 2 * hn + e, g + 3 * hn + e,
                              c_prev + e, ac + e, dy + j * ldy if dy != NULL else NULL,
                              dh + e, dc + e, dg + j * ldg, dg + (H + j) * ldg,
                              dg + (2 * H + j) * ldg, dg + (3 * H + j) * ldg)
        return
    _dact(ract, g + e0, s + e0, m)
    _dact(ract, g + hn + e0, s + hn + e0, m)
    _dact(act, g + 2 * hn + e0, s + 2 * hn + e0, m)
    _dact(ract, g + 3 * hn + e0, s + 3 * hn + e0, m)
    _dact(act, ac + e0, s + 4 * hn + e0, m)
    if keep == NULL and not direct:  # the common case: one vectorized loop per row
        if dy != NULL:
            _add_rows(dh, dy, ldy, j0, j1, N)
        for j in range(j0, j1):
            e = j * N
            _lstm_bwd_row(N, g + e, g + hn + e, g + 2 * hn + e, g + 3 * hn + e, s + e, hn,
                          c_prev + e, ac + e, dh + e, dc + e, dg + j * ldg, dg + (H + j) * ldg,
                          dg + (2 * H + j) * ldg, dg + (3 * H + j) * ldg)
        return
    for j in range(j0, j1):
        for n in range(N):
            e = j * N + n
            dht = dh[e] + dy[j * ldy + n] if dy != NULL else dh[e]
            if keep != NULL and keep[n] == 0:
                _zero_gate_grads(dg, ldg, 4, H, j, n)
                dh[e] = dht
                continue
            dcj = dc[e] + dht * g[3 * hn + e] * s[4 * hn + e]
            dg[j * ldg + n] = dcj * g[2 * hn + e] * s[e]
            dg[(H + j) * ldg + n] = dcj * c_prev[e] * s[hn + e]
            dg[(2 * H + j) * ldg + n] = dcj * g[e] * s[2 * hn + e]
            dg[(3 * H + j) * ldg + n] = dht * ac[e] * s[3 * hn + e]
            dc[e] = dcj * g[hn + e]
            if direct:
                dh[e] = 0


# -- GRU (reset_after=True) ---------------------------------------------------------------
cdef void _gru_fwd_chunk(floating *g, const floating *p, Py_ssize_t ldp, const floating *b_in,
                         const floating *b_rec, floating *rh, const floating *h_prev,
                         floating *h, Py_ssize_t ldh, const unsigned char *keep,
                         Py_ssize_t j0, Py_ssize_t j1, Py_ssize_t H, Py_ssize_t N, int act,
                         int ract) noexcept nogil:
    """Units [j0, j1) of one GRU step. g (3H, N): h_{t-1} products in (blocks z, r, h), z, r
    and the candidate hh out. rh (H, N) keeps the h block's product + recurrent bias.
    z, r = ract(x W + b_in + h W_rec + b_rec); hh = act(x W_h + b_in_h + r rh);
    h = z h_prev + (1 - z) hh."""
    cdef Py_ssize_t j, n, e, e0 = j0 * N, m = (j1 - j0) * N, hn = H * N
    cdef floating bi, br
    if floating is float:
        if act == ACT_TANH and ract == ACT_SIGMOID:  # the defaults: one fused pass per row
            for j in range(j0, j1):
                e = j * N
                cn_gru_fwd_row(N, g + e, g + hn + e, g + 2 * hn + e, p + j * ldp,
                               p + (H + j) * ldp, p + (2 * H + j) * ldp,
                               b_in[j] if b_in != NULL else 0,
                               b_in[H + j] if b_in != NULL else 0,
                               b_in[2 * H + j] if b_in != NULL else 0,
                               b_rec[j] if b_rec != NULL else 0,
                               b_rec[H + j] if b_rec != NULL else 0,
                               b_rec[2 * H + j] if b_rec != NULL else 0,
                               h_prev + j * ldh, rh + e, h + j * ldh)
            _keep_gru_state(keep, h_prev, h, ldh, j0, j1, N)
            return
    for j in range(j0, j1):
        br = b_rec[2 * H + j] if b_rec != NULL else 0
        for n in range(N):
            rh[j * N + n] = g[2 * hn + j * N + n] + br
    _add_input(g, p, ldp, b_in, j0, j1, N)
    _add_input(g, p, ldp, b_in, H + j0, H + j1, N)
    if b_rec != NULL:
        for j in range(j0, j1):
            br = b_rec[j]
            bi = b_rec[H + j]
            for n in range(N):
                g[j * N + n] = g[j * N + n] + br
                g[hn + j * N + n] = g[hn + j * N + n] + bi
    _act_inplace(ract, g + e0, m)
    _act_inplace(ract, g + hn + e0, m)
    for j in range(j0, j1):
        bi = b_in[2 * H + j] if b_in != NULL else 0
        for n in range(N):
            e = j * N + n
            g[2 * hn + e] = p[(2 * H + j) * ldp + n] + bi + g[hn + e] * rh[e]
    _act_inplace(act, g + 2 * hn + e0, m)
    for j in range(j0, j1):
        for n in range(N):
            e = j * N + n
            h[j * ldh + n] = g[2 * hn + e] + g[e] * (h_prev[j * ldh + n] - g[2 * hn + e])
    _keep_gru_state(keep, h_prev, h, ldh, j0, j1, N)


cdef inline void _keep_gru_state(const unsigned char *keep, const floating *h_prev, floating *h,
                                 Py_ssize_t ldh, Py_ssize_t j0, Py_ssize_t j1,
                                 Py_ssize_t N) noexcept nogil:
    cdef Py_ssize_t j, n
    if keep != NULL:
        for j in range(j0, j1):
            for n in range(N):
                if keep[n] == 0:
                    h[j * ldh + n] = h_prev[j * ldh + n]


cdef void _gru_bwd_chunk(const floating *g, const floating *rh, const floating *h_prev,
                         Py_ssize_t ldh, const floating *dy, Py_ssize_t ldy, floating *dh,
                         floating *dgx, floating *dgr, Py_ssize_t ldg, floating *s,
                         const unsigned char *keep, Py_ssize_t j0, Py_ssize_t j1, Py_ssize_t H,
                         Py_ssize_t N, int act, int ract) noexcept nogil:
    """Units [j0, j1) of one step of BPTT. dgx, dgr: the gradients of the input and of the
    recurrent products (they differ in the h block, which r multiplies), row r at
    dg + r ldg. dh leaves holding the part of d(loss)/d(h_{t-1}) that skips the recurrent
    kernel. s: (3H, N) scratch."""
    cdef Py_ssize_t j, n, e, e0 = j0 * N, m = (j1 - j0) * N, hn = H * N
    cdef floating dht, dn, dz, dr
    if keep == NULL and act == ACT_TANH and ract == ACT_SIGMOID:
        for j in range(j0, j1):  # the defaults: one pass per row, derivatives inline
            e = j * N
            _gru_bwd_default(N, g + e, g + hn + e, g + 2 * hn + e, rh + e, h_prev + j * ldh,
                             dy + j * ldy if dy != NULL else NULL, dh + e, dgx + j * ldg,
                             dgx + (H + j) * ldg, dgx + (2 * H + j) * ldg, dgr + j * ldg,
                             dgr + (H + j) * ldg, dgr + (2 * H + j) * ldg)
        return
    _dact(ract, g + e0, s + e0, m)
    _dact(ract, g + hn + e0, s + hn + e0, m)
    _dact(act, g + 2 * hn + e0, s + 2 * hn + e0, m)
    if keep == NULL:  # the common case: one vectorized loop per row
        if dy != NULL:
            _add_rows(dh, dy, ldy, j0, j1, N)
        for j in range(j0, j1):
            e = j * N
            _gru_bwd_row(N, g + e, g + hn + e, g + 2 * hn + e, s + e, hn, rh + e,
                         h_prev + j * ldh, dh + e, dgx + j * ldg, dgx + (H + j) * ldg,
                         dgx + (2 * H + j) * ldg, dgr + j * ldg, dgr + (H + j) * ldg,
                         dgr + (2 * H + j) * ldg)
        return
    for j in range(j0, j1):
        for n in range(N):
            e = j * N + n
            dht = dh[e] + dy[j * ldy + n] if dy != NULL else dh[e]
            if keep != NULL and keep[n] == 0:
                _zero_gate_grads(dgx, ldg, 3, H, j, n)
                _zero_gate_grads(dgr, ldg, 3, H, j, n)
                dh[e] = dht
                continue
            dn = dht * (1 - g[e]) * s[2 * hn + e]
            dz = dht * (h_prev[j * ldh + n] - g[2 * hn + e]) * s[e]
            dr = dn * rh[e] * s[hn + e]
            dgx[j * ldg + n] = dz
            dgr[j * ldg + n] = dz
            dgx[(H + j) * ldg + n] = dr
            dgr[(H + j) * ldg + n] = dr
            dgx[(2 * H + j) * ldg + n] = dn
            dgr[(2 * H + j) * ldg + n] = dn * g[hn + e]
            dh[e] = dht * g[e]


# -- SimpleRNN ----------------------------------------------------------------------------
cdef void _rnn_fwd_chunk(floating *g, const floating *p, Py_ssize_t ldp, const floating *b,
                         const floating *h_prev, floating *h, Py_ssize_t ldh,
                         const unsigned char *keep, Py_ssize_t j0, Py_ssize_t j1, Py_ssize_t N,
                         int act) noexcept nogil:
    """Units [j0, j1): g = act(h_{t-1} products + x W + b), copied into h's rows."""
    cdef Py_ssize_t j, n
    _add_input(g, p, ldp, b, j0, j1, N)
    _act_inplace(act, g + j0 * N, (j1 - j0) * N)
    for j in range(j0, j1):
        for n in range(N):
            h[j * ldh + n] = g[j * N + n]
    if keep != NULL:
        for j in range(j0, j1):
            for n in range(N):
                if keep[n] == 0:
                    h[j * ldh + n] = h_prev[j * ldh + n]


cdef void _rnn_bwd_chunk(const floating *g, const floating *dy, Py_ssize_t ldy, floating *dh,
                         floating *dg, Py_ssize_t ldg, floating *s, const unsigned char *keep,
                         Py_ssize_t j0, Py_ssize_t j1, Py_ssize_t N, int act,
                         bint direct) noexcept nogil:
    """Units [j0, j1): dg = (dh + dy) act'(h); with `direct`, dh leaves holding the part of
    d(loss)/d(h_{t-1}) that skips the recurrent kernel. s: (H, N) scratch."""
    cdef Py_ssize_t j, n, e
    cdef floating dht
    _dact(act, g + j0 * N, s + j0 * N, (j1 - j0) * N)
    for j in range(j0, j1):
        for n in range(N):
            e = j * N + n
            dht = dh[e] + dy[j * ldy + n] if dy != NULL else dh[e]
            if keep != NULL and keep[n] == 0:
                dg[j * ldg + n] = 0
                dh[e] = dht
                continue
            dg[j * ldg + n] = dht * s[e]
            if direct:
                dh[e] = 0
