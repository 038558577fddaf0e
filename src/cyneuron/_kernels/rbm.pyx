"""Restricted Boltzmann machine kernels: contrastive divergence (CD-k / PCD-k) training and
Bernoulli sampling with a counter-based generator.

`cd_fit` runs whole epochs of mini-batch updates in ONE OpenMP parallel region: each
thread owns a block of hidden units (rows of W, shape (n_hidden, n_visible) as
scikit-learn's components_) and a block of visible units, so that the positive phase,
the hidden half of each Gibbs step and the weight update touch only the thread's own
rows of W; the visible half of a Gibbs step reads all of W and all hidden samples, and
the threads meet at a barrier around it. The products are the project GEMM's serial
entry points (gemm.pxd), read through strides (no transposed copies).

Random draws: the uniform for element e (row-major index in its matrix) of sampling
phase c is 52 bits of SplitMix64(stream(key, c) + (e + 1) * golden) as a double in
[0, 1) (csrc/rbm_math.h, like the dropout masks' generator): the samples depend on (key, counter) only, never on the thread
count. `uniforms(key, counter, n)` returns the draws of one phase so a numpy reference
can reproduce them. Phase counters: batch b (counted over the whole fit) uses counters
counter0 + b * (2k + 2) + p, with p = 0 for the hidden sample of the positive phase (CD
only), 1 + 2s for the visible sample of Gibbs step s and 2 + 2s for its hidden sample.
"""
from cython cimport floating
from cython.parallel cimport parallel, prange
from libc.stdint cimport int64_t, uint64_t

from cyneuron._kernels._openmp cimport (
    cn_omp_barrier, cn_omp_num_threads, cn_omp_thread_num, threads_for)
from cyneuron._kernels.gemm cimport current_isa, dgemm_serial, sgemm_serial

cdef extern from "rbm_math.h" nogil:
    double cn_rbm_uniform(uint64_t stream, uint64_t i)
    void cn_rbm_sigmoid_d(int isa, int64_t rows, int64_t ld, int64_t c0, int64_t c1,
                          double *Z, const double *bias)
    void cn_rbm_sigmoid_s(int isa, int64_t rows, int64_t ld, int64_t c0, int64_t c1,
                          float *Z, const float *bias)
    void cn_rbm_sample_d(int isa, int64_t rows, int64_t ld, int64_t c0, int64_t c1,
                         const double *P, double *S, uint64_t stream)
    void cn_rbm_sample_s(int isa, int64_t rows, int64_t ld, int64_t c0, int64_t c1,
                         const float *P, float *S, uint64_t stream)

cdef uint64_t GOLDEN = <uint64_t> 0x9E3779B97F4A7C15ULL
cdef uint64_t STREAM_MUL = <uint64_t> 0xD1B54A32D192ED03ULL


cdef inline uint64_t _splitmix64(uint64_t z) noexcept nogil:
    z = (z ^ (z >> 30)) * <uint64_t> 0xBF58476D1CE4E5B9ULL
    z = (z ^ (z >> 27)) * <uint64_t> 0x94D049BB133111EBULL
    return z ^ (z >> 31)


cdef inline uint64_t _stream(uint64_t key, uint64_t counter) noexcept nogil:
    return _splitmix64(key + (counter + 1) * STREAM_MUL)


cdef inline double _uniform(uint64_t stream, uint64_t i) noexcept nogil:
    return cn_rbm_uniform(stream, i)


def uniforms(uint64_t key, uint64_t counter, Py_ssize_t n):
    """The n uniform draws in [0, 1) of phase `counter` of stream `key` (for references)."""
    import numpy as np
    if n < 0:
        raise ValueError(f"n must be >= 0; got {n}")
    out = np.empty(n, np.float64)
    cdef double[::1] o = out
    cdef uint64_t s = _stream(key, counter)
    cdef Py_ssize_t i
    for i in range(n):
        o[i] = _uniform(s, <uint64_t> i)
    return out


def bernoulli_sample(const floating[:, ::1] p, floating[:, ::1] out, uint64_t key,
                     uint64_t counter):
    """out[r, c] = 1 where uniform(key, counter, r * cols + c) < p[r, c], else 0.
    out may be p."""
    cdef Py_ssize_t n = p.shape[0] * p.shape[1], i
    if out.shape[0] != p.shape[0] or out.shape[1] != p.shape[1]:
        raise ValueError(f"out must have shape {(p.shape[0], p.shape[1])}; got "
                         f"{(out.shape[0], out.shape[1])}")
    if n == 0:
        return
    cdef const floating *pp = &p[0, 0]
    cdef floating *po = &out[0, 0]
    cdef uint64_t s = _stream(key, counter)
    cdef int nt = threads_for(<double> n * 8)
    cdef Py_ssize_t chunk = 4096, n_chunks = (n + chunk - 1) // chunk, c
    for c in prange(n_chunks, nogil=True, num_threads=nt, schedule="static"):
        # one row of the flat view per chunk: element indices c * chunk + j
        _sample_cols(pp + c * chunk, po + c * chunk, 1, 0, 0, min(chunk, n - c * chunk),
                     s + <uint64_t> (c * chunk) * GOLDEN)


cdef inline void _mm(int64_t M, int64_t N, int64_t K, const floating *A, int64_t rsa,
                     int64_t csa, const floating *B, int64_t rsb, int64_t csb, floating *C,
                     int64_t ldc, bint accumulate) noexcept nogil:
    if M <= 0 or N <= 0:
        return
    if floating is float:
        sgemm_serial(M, N, K, A, rsa, csa, B, rsb, csb, C, ldc, accumulate)
    else:
        dgemm_serial(M, N, K, A, rsa, csa, B, rsb, csb, C, ldc, accumulate)


cdef inline void _barrier(int nt) noexcept nogil:
    if nt > 1:
        cn_omp_barrier()


cdef inline void _block(Py_ssize_t n, int tid, int nt, Py_ssize_t *lo, Py_ssize_t *hi) noexcept nogil:
    """Thread tid's share [lo, hi) of n units, in multiples of 16 (SIMD width)."""
    cdef Py_ssize_t per = (n + nt - 1) // nt
    per = ((per + 15) // 16) * 16
    lo[0] = min(n, tid * per)
    hi[0] = min(n, lo[0] + per)


cdef inline void _sigmoid_cols(floating *Z, Py_ssize_t rows, Py_ssize_t ld, Py_ssize_t c0,
                               Py_ssize_t c1, const floating *bias) noexcept nogil:
    if floating is float:
        cn_rbm_sigmoid_s(current_isa(), rows, ld, c0, c1, Z, bias)
    else:
        cn_rbm_sigmoid_d(current_isa(), rows, ld, c0, c1, Z, bias)


cdef inline void _bias_cols(floating *Z, Py_ssize_t rows, Py_ssize_t ld, Py_ssize_t c0,
                            Py_ssize_t c1, const floating *bias) noexcept nogil:
    cdef Py_ssize_t r, c
    for r in range(rows):
        for c in range(c0, c1):
            Z[r * ld + c] = Z[r * ld + c] + bias[c]


cdef inline void _sample_cols(const floating *P, floating *S, Py_ssize_t rows, Py_ssize_t ld,
                              Py_ssize_t c0, Py_ssize_t c1, uint64_t stream) noexcept nogil:
    if floating is float:
        cn_rbm_sample_s(current_isa(), rows, ld, c0, c1, P, S, stream)
    else:
        cn_rbm_sample_d(current_isa(), rows, ld, c0, c1, P, S, stream)


cdef inline void _plain_update(floating *W, const floating *G, Py_ssize_t r0, Py_ssize_t r1,
                              floating a, floating c) noexcept nogil:
    """W += a G - c W on [r0, r1) (no momentum: the velocity is not stored)."""
    cdef Py_ssize_t r
    for r in range(r0, r1):
        W[r] = W[r] + (a * G[r] - c * W[r])


cdef void _cd_thread(const floating *X, const int64_t *starts, Py_ssize_t n_batches,
                     Py_ssize_t D, Py_ssize_t H, floating *W, floating *bh, floating *bv,
                     floating *chain, Py_ssize_t Bc, floating *vW, floating *vbh,
                     floating *vbv, floating *Vn, floating *Hp, floating *Hn, floating *Hs,
                     floating *G, int n_epochs, int k, bint persistent, int gaussian,
                     double lr, double mom, double wd, uint64_t key,
                     uint64_t counter0) noexcept nogil:
    cdef int tid = cn_omp_thread_num(), nt = cn_omp_num_threads()
    cdef Py_ssize_t j0, j1, i0, i1, e, b, B, Bn, r, c, s
    cdef uint64_t phases = 2 * <uint64_t> k + 2, base, nb = 0
    cdef const floating *V0
    cdef floating *Hchain
    cdef double scale, g, sp, sn
    _block(H, tid, nt, &j0, &j1)
    _block(D, tid, nt, &i0, &i1)
    for e in range(n_epochs):
        for b in range(n_batches):
            base = counter0 + nb * phases
            nb = nb + 1
            B = starts[b + 1] - starts[b]
            V0 = X + starts[b] * D
            # positive phase: Hp[:, J] = sigmoid(V0 W[J]^T + bh[J])
            _mm(B, j1 - j0, D, V0, D, 1, W + j0 * D, 1, D, Hp + j0, H, False)
            _sigmoid_cols(Hp, B, H, j0, j1, bh)
            if persistent:
                Hchain = chain
                Bn = Bc
            else:
                Hchain = Hs
                Bn = B
                _sample_cols(Hp, Hs, B, H, j0, j1, _stream(key, base))
            _barrier(nt)
            for s in range(k):
                # visible half: Vn[:, I] = act(Hchain W[:, I] + bv[I]), sampled if Bernoulli
                _mm(Bn, i1 - i0, H, Hchain, H, 1, W + i0, D, 1, Vn + i0, D, False)
                if gaussian:
                    _bias_cols(Vn, Bn, D, i0, i1, bv)
                else:
                    _sigmoid_cols(Vn, Bn, D, i0, i1, bv)
                    _sample_cols(Vn, Vn, Bn, D, i0, i1, _stream(key, base + 1 + 2 * s))
                _barrier(nt)
                # hidden half: Hn[:, J] = sigmoid(Vn W[J]^T + bh[J])
                _mm(Bn, j1 - j0, D, Vn, D, 1, W + j0 * D, 1, D, Hn + j0, H, False)
                _sigmoid_cols(Hn, Bn, H, j0, j1, bh)
                if s < k - 1 or persistent:
                    _sample_cols(Hn, Hchain, Bn, H, j0, j1, _stream(key, base + 2 + 2 * s))
                if s < k - 1:
                    _barrier(nt)
            # update of W[J, :], bh[J], bv[I]: gradient (V0^T Hp / B - Vn^T Hn / Bn)
            scale = <double> B / <double> Bn
            for r in range(Bn):
                for c in range(j0, j1):
                    Hn[r * H + c] = <floating> (-scale * Hn[r * H + c])
            _mm(j1 - j0, D, B, Hp + j0, 1, H, V0, D, 1, G + j0 * D, D, False)
            _mm(j1 - j0, D, Bn, Hn + j0, 1, H, Vn, D, 1, G + j0 * D, D, True)
            for c in range(j0, j1):
                sp = 0
                for r in range(B):
                    sp = sp + Hp[r * H + c]
                for r in range(Bn):
                    sp = sp + Hn[r * H + c]
                vbh[c] = <floating> (mom * vbh[c] + lr * sp / B)
                bh[c] = bh[c] + vbh[c]
            if mom == 0:
                _plain_update(W, G, j0 * D, j1 * D, <floating> (lr / B), <floating> (lr * wd))
            else:
                for r in range(j0 * D, j1 * D):
                    g = G[r] / B - wd * W[r]
                    vW[r] = <floating> (mom * vW[r] + lr * g)
                    W[r] = W[r] + vW[r]
            for c in range(i0, i1):
                sp = 0
                sn = 0
                for r in range(B):
                    sp = sp + V0[r * D + c]
                for r in range(Bn):
                    sn = sn + Vn[r * D + c]
                vbv[c] = <floating> (mom * vbv[c] + lr * (sp - scale * sn) / B)
                bv[c] = bv[c] + vbv[c]


def cd_fit(const floating[:, ::1] X, const int64_t[::1] starts, floating[:, ::1] W,
           floating[::1] bh, floating[::1] bv, floating[:, ::1] chain, floating[:, ::1] vW,
           floating[::1] vbh, floating[::1] vbv, floating[:, ::1] Vn, floating[:, ::1] Hp,
           floating[:, ::1] Hn, floating[:, ::1] Hs, floating[:, ::1] G, int n_epochs, int k,
           bint persistent, bint gaussian, double learning_rate, double momentum,
           double weight_decay, uint64_t key, uint64_t counter0, int n_threads=0):
    """n_epochs passes of CD-k (or PCD-k with persistent=True) over the mini-batches
    X[starts[b]:starts[b + 1]], in order; updates W (n_hidden, n_visible), bh, bv, the
    velocities vW / vbh / vbv (momentum) and the persistent chain (its hidden samples,
    (Bc, n_hidden)) in place. Vn, Hp, Hn, Hs, G are caller-owned scratch buffers of at
    least (rows, D), (Bmax, H), (rows, H), (Bmax, H), (H, D) where rows = max(Bmax, Bc).

    Update per batch of B rows (Bn negative rows: Bc with PCD, else B):
      grad_W = V0^T Hp / B - Vn^T Hn / Bn - weight_decay W (no decay on the biases),
      v = momentum v + learning_rate grad, param += v.
    Returns the counter after the last batch: pass it as counter0 to continue the stream.
    """
    cdef Py_ssize_t n_batches = starts.shape[0] - 1, H = W.shape[0], D = W.shape[1]
    cdef Py_ssize_t Bc = chain.shape[0], bmax = 0, b, rows
    if n_batches < 1:
        raise ValueError("starts must hold at least two offsets")
    if X.shape[1] != D:
        raise ValueError(f"X has {X.shape[1]} features; W expects {D}")
    if k < 1:
        raise ValueError(f"k must be >= 1; got {k}")
    for b in range(n_batches):
        if starts[b + 1] <= starts[b] or starts[b] < 0 or starts[b + 1] > X.shape[0]:
            raise ValueError("starts must increase strictly within [0, len(X)]")
        bmax = max(bmax, starts[b + 1] - starts[b])
    rows = max(bmax, Bc) if persistent else bmax
    if persistent and (Bc < 1 or chain.shape[1] != H):
        raise ValueError(f"chain must have shape (>=1, {H}); got {(chain.shape[0], chain.shape[1])}")
    if bh.shape[0] != H or vbh.shape[0] != H or bv.shape[0] != D or vbv.shape[0] != D:
        raise ValueError("bias or velocity length does not match W")
    if vW.shape[0] != H or vW.shape[1] != D or G.shape[0] != H or G.shape[1] != D:
        raise ValueError("vW and G must have W's shape")
    if Vn.shape[0] < rows or Vn.shape[1] != D or Hn.shape[0] < rows or Hn.shape[1] != H \
            or Hp.shape[0] < bmax or Hp.shape[1] != H or Hs.shape[0] < bmax or Hs.shape[1] != H:
        raise ValueError("scratch buffers are too small")
    cdef int nt = n_threads
    if nt <= 0:
        # one batch's products on one thread take microseconds; the threads meet 2k + 1
        # times per batch, so only large batches are worth splitting
        nt = threads_for(<double> rows * D * H * (2 * k + 2) / 64)
        nt = min(nt, <int> max(1, min((H + 15) // 16, (D + 15) // 16)))
    cdef floating *pchain = &chain[0, 0] if chain.shape[0] > 0 else NULL
    with nogil, parallel(num_threads=nt):
        _cd_thread(&X[0, 0], &starts[0], n_batches, D, H, &W[0, 0], &bh[0], &bv[0], pchain,
                   Bc, &vW[0, 0], &vbh[0], &vbv[0], &Vn[0, 0], &Hp[0, 0], &Hn[0, 0],
                   &Hs[0, 0], &G[0, 0], n_epochs, k, persistent, gaussian, learning_rate,
                   momentum, weight_decay, key, counter0)
    return counter0 + <uint64_t> n_epochs * <uint64_t> n_batches * (2 * <uint64_t> k + 2)
