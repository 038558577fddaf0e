"""Self-organising map kernels: best-matching-unit search and the online / batch updates.

Nodes are stored row-major, node (i, j) of an m x n map at index i * n + j, weights
W (m * n, D). Distances use the GEMM identity ||x - w||^2 = ||x||^2 - 2 x.w + ||w||^2
with the squared norms of the weights (wsq) kept by the caller (and by the online
update, which refreshes wsq[j] as it rewrites w_j).

Neighbourhood codes: 0 gaussian, 1 mexican_hat, 2 bubble, 3 triangle (MiniSom's
definitions: gaussian and mexican hat on the map's euclidean node coordinates, which
the hexagonal topology shifts; bubble and triangle on the grid indices). Topology codes:
0 rectangular, 1 hexagonal. Decay codes: 0 asymptotic (learning rate and sigma divided
by 1 + t / (T / 2)), 1 linear (learning rate to zero, sigma to one), 2 inverse
(learning rate C / (C + t) with C = T / 100, sigma / (1 + t (sigma - 1) / T)).
"""
from cython cimport floating
from cython.parallel cimport parallel, prange
from libc.math cimport exp, fabs, sqrt
from libc.stdint cimport int64_t
from libc.stdlib cimport free, malloc

from cyneuron._kernels._openmp cimport threads_for
from cyneuron._kernels.gemm cimport current_isa, dgemm_serial, sgemm_serial

cdef extern from "som_pass.h" nogil:
    void cn_som_pass_d(int isa, int64_t D, int64_t K, double *Wt, const double *amt,
                       const double *x, const double *xn, double *wsq, double *dist)
    void cn_som_pass_s(int isa, int64_t D, int64_t K, float *Wt, const float *amt,
                       const float *x, const float *xn, float *wsq, float *dist)

cdef double HEX_Y = 0.8660254037844386   # sqrt(3) / 2, MiniSom's Y_HEX_CONV_FACTOR

cdef enum:
    CHUNK = 64      # rows of X per GEMM in the winner search


cdef inline void _mm(int64_t M, int64_t N, int64_t K, const floating *A, int64_t rsa,
                     int64_t csa, const floating *B, int64_t rsb, int64_t csb, floating *C,
                     int64_t ldc) noexcept nogil:
    if floating is float:
        sgemm_serial(M, N, K, A, rsa, csa, B, rsb, csb, C, ldc, False)
    else:
        dgemm_serial(M, N, K, A, rsa, csa, B, rsb, csb, C, ldc, False)


def squared_norms(const floating[:, ::1] W, floating[::1] out):
    """out[j] = ||W[j]||^2 (float64 sums)."""
    cdef Py_ssize_t j, d, K = W.shape[0], D = W.shape[1]
    cdef double s
    if out.shape[0] != K:
        raise ValueError(f"out must have length {K}")
    for j in range(K):
        s = 0
        for d in range(D):
            s = s + <double> W[j, d] * W[j, d]
        out[j] = <floating> s


def best_two(const floating[:, ::1] X, const floating[:, ::1] W, const floating[::1] wsq,
             int64_t[::1] first, int64_t[::1] second, floating[::1] dist):
    """For each row x of X: the nearest node (first), the second nearest (second; -1 when
    the map has one node) and the squared distance to the nearest (dist, clipped at 0).
    Rows are searched in chunks of 64 with one GEMM (X_chunk W^T) each, chunks in
    parallel (OpenMP), so the answer does not depend on the thread count."""
    cdef Py_ssize_t N = X.shape[0], D = X.shape[1], K = W.shape[0]
    if W.shape[1] != D:
        raise ValueError(f"X has {D} features, the map's weights {W.shape[1]}")
    if wsq.shape[0] != K or first.shape[0] != N or second.shape[0] != N or dist.shape[0] != N:
        raise ValueError("wsq, first, second and dist must match W and X")
    if N == 0 or K == 0:
        return
    cdef Py_ssize_t n_chunks = (N + CHUNK - 1) // CHUNK, c
    cdef int nt = threads_for(<double> N * K * D)
    nt = min(nt, <int> n_chunks)
    cdef floating *scratch
    cdef const floating *px = &X[0, 0]
    cdef const floating *pw = &W[0, 0]
    cdef const floating *pq = &wsq[0]
    cdef int64_t *p1 = &first[0]
    cdef int64_t *p2 = &second[0]
    cdef floating *pd = &dist[0]
    with nogil, parallel(num_threads=nt):
        scratch = <floating *> malloc(CHUNK * K * sizeof(floating))
        if scratch != NULL:
            for c in prange(n_chunks, schedule="static"):
                _best_two_chunk(px, pw, pq, p1, p2, pd, c * CHUNK, min(N, (c + 1) * CHUNK),
                                D, K, scratch)
            free(scratch)


cdef void _best_two_chunk(const floating *X, const floating *W, const floating *wsq,
                          int64_t *first, int64_t *second, floating *dist, Py_ssize_t r0,
                          Py_ssize_t r1, Py_ssize_t D, Py_ssize_t K,
                          floating *S) noexcept nogil:
    cdef Py_ssize_t r, j, d
    cdef double best, next_, v, xx
    cdef int64_t b1, b2
    _mm(r1 - r0, K, D, X + r0 * D, D, 1, W, 1, D, S, K)
    for r in range(r0, r1):
        best = 1e308
        next_ = 1e308
        b1 = -1
        b2 = -1
        for j in range(K):
            v = <double> wsq[j] - 2.0 * S[(r - r0) * K + j]
            if v < best:
                next_ = best
                b2 = b1
                best = v
                b1 = j
            elif v < next_:
                next_ = v
                b2 = j
        xx = 0
        for d in range(D):
            xx = xx + <double> X[r * D + d] * X[r * D + d]
        first[r] = b1
        second[r] = b2
        dist[r] = <floating> max(0.0, best + xx)


cdef inline double _decayed(double value, double t, double T, int decay, bint is_sigma) noexcept nogil:
    cdef double C
    if decay == 0:
        return value / (1 + t / (T / 2))
    if decay == 1:
        if is_sigma:
            return value + t * (1 - value) / T
        return value * (1 - t / T)
    if is_sigma:
        C = (value - 1) / T
        return value / (1 + t * C)
    C = T / 100.0
    return value * C / (C + t)


cdef inline double _node_x(Py_ssize_t i, Py_ssize_t j, Py_ssize_t n, int topo) noexcept nogil:
    """MiniSom's euclidean x coordinate of node (i, j) (hexagonal: every other column j,
    counted from the last, is shifted by -0.5)."""
    if topo == 1 and (n - 1 - j) % 2 == 0:
        return i - 0.5
    return <double> i


cdef inline double _node_y(Py_ssize_t j, int topo) noexcept nogil:
    return j * HEX_Y if topo == 1 else <double> j


cdef void _neighbourhood(double *h, double *fx, double *fy, Py_ssize_t m, Py_ssize_t n,
                         Py_ssize_t ci, Py_ssize_t cj, double sigma, int nbh,
                         int topo) noexcept nogil:
    """h[i * n + j]: the neighbourhood weight of node (i, j) around the winner (ci, cj).
    fx (2m) and fy (n) are scratch for the separable factors."""
    cdef Py_ssize_t i, j, p
    cdef double d = 2 * sigma * sigma, cx = _node_x(ci, cj, n, topo), cy = _node_y(cj, topo)
    cdef double dx, dy, q
    if nbh == 0 or nbh == 1:
        # exp(-(dx^2 + dy^2) / d) = exp(-dx^2 / d) exp(-dy^2 / d); dx depends on (i, parity of j)
        for p in range(2):
            for i in range(m):
                dx = (i - 0.5 if (topo == 1 and p == 1) else <double> i) - cx
                fx[p * m + i] = exp(-dx * dx / d)
        for j in range(n):
            dy = _node_y(j, topo) - cy
            fy[j] = exp(-dy * dy / d)
        for i in range(m):
            for j in range(n):
                p = 1 if (topo == 1 and (n - 1 - j) % 2 == 0) else 0
                h[i * n + j] = fx[p * m + i] * fy[j]
                if nbh == 1:
                    dx = _node_x(i, j, n, topo) - cx
                    dy = _node_y(j, topo) - cy
                    q = dx * dx + dy * dy
                    h[i * n + j] = h[i * n + j] * (1 - 2 / d * q)
    elif nbh == 2:
        for i in range(m):
            fx[i] = 1.0 if (i > ci - sigma and i < ci + sigma) else 0.0
        for j in range(n):
            fy[j] = 1.0 if (j > cj - sigma and j < cj + sigma) else 0.0
        for i in range(m):
            for j in range(n):
                h[i * n + j] = fx[i] * fy[j]
    else:
        for i in range(m):
            fx[i] = max(0.0, sigma - fabs(<double> (ci - i)))
        for j in range(n):
            fy[j] = max(0.0, sigma - fabs(<double> (cj - j)))
        for i in range(m):
            for j in range(n):
                h[i * n + j] = fx[i] * fy[j]


def neighbourhood(Py_ssize_t m, Py_ssize_t n, Py_ssize_t ci, Py_ssize_t cj, double sigma,
                  int nbh, int topo):
    """The (m, n) neighbourhood weights around node (ci, cj) (for tests and plots)."""
    import numpy as np
    if not (0 <= ci < m and 0 <= cj < n):
        raise ValueError(f"node ({ci}, {cj}) is outside the {m} x {n} map")
    out = np.empty(m * n)
    fx = np.empty(2 * m)
    fy = np.empty(n)
    cdef double[::1] o = out, a = fx, b = fy
    _neighbourhood(&o[0], &a[0], &b[0], m, n, ci, cj, sigma, nbh, topo)
    return out.reshape(m, n)


def train_online(const floating[:, ::1] X, const int64_t[::1] order, floating[:, ::1] W,
                 floating[::1] wsq, Py_ssize_t m, Py_ssize_t n, double sigma,
                 double learning_rate, int nbh, int topo, int decay, double max_iter,
                 int64_t epoch_len=0, int64_t t0=0):
    """Online (Kohonen) training, one sample per iteration, as MiniSom's train: at
    iteration t (t0 + position in `order`), x = X[order[t]], c = its best-matching node,
    eta = decay(learning_rate, t'), s = decay(sigma, t') with t' = t // epoch_len when
    epoch_len > 0 (else t), and every node moves w_j += eta h_j(c, s) (x - w_j). wsq is kept equal to the rows' squared
    norms. One thread: each iteration depends on the previous one."""
    cdef Py_ssize_t D = X.shape[1], K = W.shape[0], T = order.shape[0], it, j, d, r
    if X.shape[0] == 0:
        raise ValueError("X is empty")
    if K != m * n or W.shape[1] != D or wsq.shape[0] != K:
        raise ValueError("W must be (m * n, D) and wsq (m * n,)")
    if not max_iter > 0:
        raise ValueError("max_iter must be > 0")
    for it in range(T):
        if order[it] < 0 or order[it] >= X.shape[0]:
            raise ValueError(f"order[{it}] = {order[it]} is outside [0, {X.shape[0]})")
    if T == 0 or K == 0:
        return
    # Inside, the weights are node-minor, Wt (D, K): the distance and update loops run
    # along the nodes with no reduction in their inner loop, so they vectorize.
    cdef double *h = <double *> malloc((K + 2 * m + n) * sizeof(double))
    cdef floating *Wt = <floating *> malloc((D * K + 2 * K) * sizeof(floating))
    if h == NULL or Wt == NULL:
        free(h)
        free(Wt)
        raise MemoryError()
    cdef floating *dist = Wt + D * K
    cdef floating *amt = dist + K
    cdef double *fx = h + K
    cdef double *fy = fx + 2 * m
    cdef const floating *x
    cdef const floating *xn
    cdef floating *row
    cdef floating best, xd, a2, q
    cdef double eta, sig, tt
    cdef Py_ssize_t c
    cdef int isa = current_isa()
    try:
        with nogil:
            for j in range(K):
                for d in range(D):
                    Wt[d * K + j] = W[j, d]
            # distances of the first sample; later ones are accumulated in the update pass
            x = &X[order[0], 0]
            for j in range(K):
                dist[j] = wsq[j]
            for d in range(D):
                row = Wt + d * K
                a2 = 2 * x[d]
                for j in range(K):
                    dist[j] = dist[j] - a2 * row[j]
            for it in range(T):
                x = &X[order[it], 0]
                xn = &X[order[it + 1 if it + 1 < T else it], 0]
                # best-matching node: argmin ||w_j||^2 - 2 x.w_j
                best = dist[0]
                c = 0
                for j in range(1, K):
                    if dist[j] < best:
                        best = dist[j]
                        c = j
                tt = <double> (t0 + it)
                if epoch_len > 0:
                    tt = <double> ((t0 + it) // epoch_len)
                eta = _decayed(learning_rate, tt, max_iter, decay, False)
                sig = _decayed(sigma, tt, max_iter, decay, True)
                _neighbourhood(h, fx, fy, m, n, c // n, c % n, sig, nbh, topo)
                for j in range(K):
                    amt[j] = <floating> (eta * h[j])
                    wsq[j] = 0
                    dist[j] = 0
                # one pass over the weights: update, new squared norms, and -2 x_next.w
                if floating is float:
                    cn_som_pass_s(isa, D, K, Wt, amt, x, xn, &wsq[0], dist)
                else:
                    cn_som_pass_d(isa, D, K, Wt, amt, x, xn, &wsq[0], dist)
                for j in range(K):
                    dist[j] = dist[j] + wsq[j]
            for j in range(K):
                for d in range(D):
                    W[j, d] = Wt[d * K + j]
    finally:
        free(h)
        free(Wt)


def neighbourhood_matrix(Py_ssize_t m, Py_ssize_t n, double sigma, int nbh, int topo,
                         floating[:, ::1] out):
    """out[c, j] = h_j(c, sigma) for every winner c and node j (batch training)."""
    cdef Py_ssize_t K = m * n, c
    if out.shape[0] != K or out.shape[1] != K:
        raise ValueError(f"out must be ({K}, {K})")
    cdef double *h = <double *> malloc((K + 2 * m + n) * sizeof(double))
    if h == NULL:
        raise MemoryError()
    cdef Py_ssize_t j
    try:
        with nogil:
            for c in range(K):
                _neighbourhood(h, h + K, h + K + 2 * m, m, n, c // n, c % n, sigma, nbh, topo)
                for j in range(K):
                    out[c, j] = <floating> h[j]
    finally:
        free(h)


def winner_sums(const floating[:, ::1] X, const int64_t[::1] winners, floating[:, ::1] sums,
                floating[::1] counts):
    """sums[c] = the sum of the rows of X whose winner is c, counts[c] their number."""
    cdef Py_ssize_t N = X.shape[0], D = X.shape[1], K = sums.shape[0], r, d, c
    if winners.shape[0] != N or sums.shape[1] != D or counts.shape[0] != K:
        raise ValueError("shapes of winners, sums and counts do not match X")
    sums[:, :] = 0
    counts[:] = 0
    with nogil:
        for r in range(N):
            c = winners[r]
            if c < 0 or c >= K:
                continue
            counts[c] = counts[c] + 1
            for d in range(D):
                sums[c, d] = sums[c, d] + X[r, d]
