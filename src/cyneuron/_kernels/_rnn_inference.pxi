# The inference loop of GRU over whole sequences with rings (T > 1, no gradients kept):
# per sliver of W samples the step's products go to a small scratch and the gate math
# follows at once. Included by recurrent.pyx; called from _forward (_rnn_sequence.pxi).

cdef void _gru_ring_rows(floating *s, Py_ssize_t m, Py_ssize_t w, Py_ssize_t W,
                         const floating *hp, floating *hn, floating *ho, Py_ssize_t ldo,
                         const unsigned char *keep, int act, int ract) noexcept nogil:
    """One sliver's GRU rows (inference): s holds 4 blocks of m rows W apart: z and r
    pre-activations, the candidate's recurrent product + bias and its input product +
    bias (overwritten). h_{t-1} from hp, h_t to hn (rows W apart) and ho (ldo apart)."""
    cdef Py_ssize_t i, k, e, mw = m * W
    cdef floating hh, v
    if floating is float:
        if act == ACT_TANH and ract == ACT_SIGMOID:
            cn_gru_ring_rows(m, w, W, s, s + mw, s + 2 * mw, s + 3 * mw, hp, hn, ho, ldo,
                             keep)
            return
    _act_inplace(ract, s, 2 * mw)
    for e in range(mw):
        s[3 * mw + e] = s[3 * mw + e] + s[mw + e] * s[2 * mw + e]
    _act_inplace(act, s + 3 * mw, mw)
    for i in range(m):
        for k in range(w):
            e = i * W + k
            hh = s[3 * mw + e]
            v = hh + s[e] * (hp[e] - hh)
            if keep != NULL and keep[k] == 0:
                v = hp[e]
            hn[e] = v
            ho[i * ldo + k] = v


cdef void _gru_ring_thread(Py_ssize_t T, Py_ssize_t N, Py_ssize_t H, Py_ssize_t F,
                           const floating *xf, const floating *A, floating *h, Py_ssize_t S,
                           floating *P, Py_ssize_t W, floating *scratch, Py_ssize_t mmax,
                           const unsigned char *mask, int act, int ract,
                           Py_ssize_t mr) noexcept nogil:
    """One thread's share of a GRU forward that keeps no gates (inference). Per step and
    per sliver of W samples, the thread's units' four products land in its scratch
    (4 mmax x W, in L1) and the gate math follows at once, reading h_{t-1} from the
    packed operand and writing h_t into the next one (and into h) directly."""
    cdef int tid = cn_omp_thread_num(), nt = cn_omp_num_threads()
    cdef Py_ssize_t Kt = H + F + 2, slot = _cdiv(N, W) * Kt * W
    cdef Py_ssize_t ldh = S * N, ldx = T * N
    cdef Py_ssize_t j0, j1, f0, f1, t, q, m, v, w, mw
    cdef floating *B
    cdef floating *Bn
    cdef floating *hc
    cdef floating *s
    cdef const unsigned char *keep
    _split(H, mr, tid, nt, &j0, &j1)
    _split(F, 1, tid, nt, &f0, &f1)
    m = j1 - j0
    mw = m * W
    s = scratch + tid * 4 * mmax * W
    _pack_rows(h, ldh, j0, j1, P, Kt, W, N, 0)             # h_0
    _pack_rows(xf, ldx, f0, f1, P, Kt, W, N, H + 1)        # x_0
    _barrier(nt)
    for t in range(T):
        B = P + (t % 2) * slot
        Bn = P + ((t + 1) % 2) * slot
        hc = h + ((t + 1) % S) * N
        keep = mask + t * N if mask != NULL else NULL
        if m > 0:
            for v in range(_cdiv(N, W)):
                w = min(W, N - v * W)
                for q in range(2):
                    _mm(m, w, Kt, A + (q * H + j0) * Kt, Kt, B + v * Kt * W, W,
                        s + q * mw, W, False)
                _mm(m, w, H + 1, A + (2 * H + j0) * Kt, Kt, B + v * Kt * W, W, s + 2 * mw, W,
                    False)
                _mm(m, w, F + 1, A + (2 * H + j0) * Kt + H + 1, Kt,
                    B + (v * Kt + H + 1) * W, W, s + 3 * mw, W, False)
                _gru_ring_rows(s, m, w, W, B + (v * Kt + j0) * W, Bn + (v * Kt + j0) * W,
                               hc + j0 * ldh + v * W, ldh,
                               keep + v * W if keep != NULL else NULL, act, ract)
        if t + 1 < T:
            _pack_rows(xf + (t + 1) * N, ldx, f0, f1, Bn, Kt, W, N, H + 1)
            _barrier(nt)
