"""Kernels of the tree layers (TreeRNN, TreeLSTM): the level schedule of a batch of trees,
and the bottom-up / top-down passes over its levels.

A batch of trees arrives as a children array (trees, max_nodes, K): row j of tree b
lists the indices of node j's children (-1: no child); node 0 is the root and every
child comes after its parent, so rows not reachable from the root are padding.
`schedule` orders the real nodes of the whole batch by height (leaves 0, a parent one
above its highest child): each level is a contiguous block of "positions", and a node's
children always sit in lower levels, so a level's nodes are computed together once the
levels below are done. Edges are stored parent by parent (CSR): the children of the
nodes at positions [a, b) are the edges [edge_start[a], edge_start[b]).

The passes run every level in one call, without the GIL: gather the children's states,
one GEMM for the whole level (the single-thread GEMM of gemm.pxd), then the fused cell
math; backward (backpropagation through structure) walks the levels top-down, the
mirror image. The input projections and the weight gradients are GEMMs over all nodes at
once; the layer runs them with the threaded GEMM.

Cells (gate layouts of the pre-activations z, G columns per node; H units):
  CELL_RNN         h = act(z), z = W x + U [h_0; h_1] + b             G = H, U (2H, H)
  CELL_BINARY      i, f_0, f_1, u, o = sigma, sigma, sigma, tanh, sigma of z
                   c = i u + f_0 c_0 + f_1 c_1, h = o tanh(c)         G = 5H, U (2H, 5H)
  CELL_CHILD_SUM   i, u, o of z = W x + U h~ + b with h~ = sum of the children's h;
                   f_k = sigma(W_f x + U_f h_k + b_f) per child k
                   c = i u + sum_k f_k c_k, h = o tanh(c)              G = 4H (i, f, u, o)
A missing child slot of the binary cells holds zeros.
"""
import numpy as np

from cython cimport floating
from libc.math cimport tanh
from libc.stdint cimport int64_t
from libc.string cimport memcpy, memset

from cyneuron._kernels cimport _math
from cyneuron._kernels.gemm cimport dgemm_serial, sgemm_serial

cdef enum:
    C_RNN = 0
    C_BINARY = 1
    C_CHILD_SUM = 2
    A_LINEAR = 0
    A_TANH = 1
    A_SIGMOID = 2
    A_RELU = 3

CELL_RNN, CELL_BINARY, CELL_CHILD_SUM = C_RNN, C_BINARY, C_CHILD_SUM
TACT_LINEAR, TACT_TANH, TACT_SIGMOID, TACT_RELU = A_LINEAR, A_TANH, A_SIGMOID, A_RELU

ACTIVATIONS = {"linear": A_LINEAR, "tanh": A_TANH, "sigmoid": A_SIGMOID,
               "relu": A_RELU}


# -- the schedule ------------------------------------------------------------------------------
def schedule(const int64_t[:, :, ::1] children, int max_children):
    """The level schedule of a batch of trees (see the module docstring).

    Returns a dict of int64 arrays: src (P,) the flat row b * max_nodes + j of each
    position; level_start (L + 1,); edge_start (P + 1,); kids (E,) the child position of
    each edge; pos (trees * max_nodes,) the position of each row, -1 for padding; roots
    (trees,) the root positions. ValueError (naming the tree and node) for a child index
    out of range or not after its parent, a node with two parents, or a node with more
    than max_children children.
    """
    cdef Py_ssize_t n = children.shape[0], m = children.shape[1], k = children.shape[2]
    cdef Py_ssize_t b, j, s, c, p, e, h, total = 0, levels = 0, nkids
    height_a = np.full(n * m, -1, np.int64)       # -1: not reached from the root
    cdef int64_t[::1] height = height_a
    for b in range(n):
        height[b * m] = 0
        for j in range(m):
            if height[b * m + j] < 0:
                continue
            total += 1
            nkids = 0
            for s in range(k):
                c = children[b, j, s]
                if c == -1:
                    continue
                nkids += 1
                if c <= j or c >= m:
                    raise ValueError(
                        f"children: tree {b}, node {j} names child {c}; children must be -1 "
                        f"(none) or an index after their parent, below max_nodes={m} (node 0 "
                        f"is the root)")
                if height[b * m + c] >= 0:
                    raise ValueError(f"children: tree {b}, node {c} has two parents (a tree "
                                     f"node has one)")
                height[b * m + c] = 0
            if nkids > max_children:
                raise ValueError(f"children: tree {b}, node {j} has {nkids} children; this "
                                 f"layer accepts at most {max_children}")
        # heights bottom-up: children come after their parents
        for j in range(m - 1, -1, -1):
            if height[b * m + j] < 0:
                continue
            h = 0
            for s in range(k):
                c = children[b, j, s]
                if c != -1 and height[b * m + c] + 1 > h:
                    h = height[b * m + c] + 1
            height[b * m + j] = h
            if h + 1 > levels:
                levels = h + 1
    level_start_a = np.zeros(levels + 1, np.int64)
    cdef int64_t[::1] level_start = level_start_a
    for j in range(n * m):
        if height[j] >= 0:
            level_start[height[j] + 1] += 1
    for h in range(levels):
        level_start[h + 1] += level_start[h]
    src_a = np.empty(total, np.int64)
    pos_a = np.full(n * m, -1, np.int64)
    roots_a = np.empty(n, np.int64)
    cdef int64_t[::1] src = src_a, pos = pos_a, roots = roots_a
    fill_a = level_start_a[:levels].copy()
    cdef int64_t[::1] fill = fill_a
    for j in range(n * m):          # (level, tree, node) order
        if height[j] >= 0:
            p = fill[height[j]]
            fill[height[j]] += 1
            src[p] = j
            pos[j] = p
    for b in range(n):
        roots[b] = pos[b * m]
    edge_start_a = np.zeros(total + 1, np.int64)
    cdef int64_t[::1] edge_start = edge_start_a
    for p in range(total):
        b, j = src[p] // m, src[p] % m
        nkids = 0
        for s in range(k):
            if children[b, j, s] != -1:
                nkids += 1
        edge_start[p + 1] = edge_start[p] + nkids
    kids_a = np.empty(edge_start[total], np.int64)
    cdef int64_t[::1] kids = kids_a
    for p in range(total):
        b, j = src[p] // m, src[p] % m
        e = edge_start[p]
        for s in range(k):
            c = children[b, j, s]
            if c != -1:
                kids[e] = pos[b * m + c]
                e += 1
    return {"src": src_a, "level_start": level_start_a, "edge_start": edge_start_a,
            "kids": kids_a, "pos": pos_a, "roots": roots_a}


# -- scalar helpers ----------------------------------------------------------------------------
cdef inline floating _act(int code, floating x) noexcept nogil:
    if code == A_TANH:
        return _math.ftanh(x)
    if code == A_SIGMOID:
        return _math.sigmoid(x)
    if code == A_RELU:
        return x if x > 0 else 0
    return x


cdef inline floating _dact(int code, floating y) noexcept nogil:
    """The activation's derivative from its output y."""
    if code == A_TANH:
        return 1 - y * y
    if code == A_SIGMOID:
        return y * (1 - y)
    if code == A_RELU:
        return 1 if y > 0 else 0
    return 1


cdef inline void _mm(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const floating *A,
                     Py_ssize_t rsa, Py_ssize_t csa, const floating *B, Py_ssize_t rsb,
                     Py_ssize_t csb, floating *C, Py_ssize_t ldc, bint accumulate) noexcept nogil:
    if M == 0 or N == 0 or K == 0:
        return
    if floating is float:
        sgemm_serial(M, N, K, A, rsa, csa, B, rsb, csb, C, ldc, accumulate)
    else:
        dgemm_serial(M, N, K, A, rsa, csa, B, rsb, csb, C, ldc, accumulate)


cdef _check(bint ok, str what):
    if not ok:
        raise ValueError("tree kernel: " + what)


# -- forward -----------------------------------------------------------------------------------
def forward(int cell, int act, const int64_t[::1] level_start, const int64_t[::1] edge_start,
            const int64_t[::1] kids, floating[:, ::1] z, const floating[:, ::1] u,
            floating[:, ::1] hc, floating[:, ::1] h, floating[:, ::1] c,
            floating[:, ::1] hk, floating[:, ::1] fe):
    """Bottom-up over the levels. z (P, G) holds W x + b on entry; the LSTM cells leave
    their activated gates in it. hc (P, 2H) (binary cells: the children's h side by
    side) or (P, H) (child-sum: their sum); h, c (P, H) the states; child-sum also hk
    (E, H) each edge's child h and fe (E, H) its forget gate. Unused buffers may be
    (0, 0) arrays."""
    cdef Py_ssize_t P = z.shape[0], G = z.shape[1], H = h.shape[1]
    cdef Py_ssize_t L = level_start.shape[0] - 1, E = kids.shape[0]
    _check(edge_start.shape[0] == P + 1 and h.shape[0] == P and level_start[L] == P,
           "schedule and buffers disagree")
    _check(G == (H if cell == C_RNN else 5 * H if cell == C_BINARY else 4 * H),
           "z has the wrong width for the cell")
    _check(hc.shape[0] == P and hc.shape[1] == (H if cell == C_CHILD_SUM else 2 * H),
           "hc has the wrong shape")
    _check(u.shape[1] == G and u.shape[0] == hc.shape[1], "u has the wrong shape")
    if cell != C_RNN:
        _check(c.shape[0] == P and c.shape[1] == H, "c has the wrong shape")
    if cell == C_CHILD_SUM:
        _check(hk.shape[0] == E and hk.shape[1] == H and fe.shape[0] == E and fe.shape[1] == H,
               "hk / fe have the wrong shape")
    cdef Py_ssize_t l, a, b, p, e, ea, eb, j, s, k
    cdef floating *zp
    cdef floating *hp
    cdef floating *cp
    cdef floating *hcp
    cdef floating gi, gu, go, acc
    with nogil:
        for l in range(L):
            a, b = level_start[l], level_start[l + 1]
            ea, eb = edge_start[a], edge_start[b]
            if l > 0:
                # the children's states, then one GEMM for the level
                for p in range(a, b):
                    hcp = &hc[p, 0]
                    memset(hcp, 0, hc.shape[1] * sizeof(floating))
                    for e in range(edge_start[p], edge_start[p + 1]):
                        k = kids[e]
                        if cell == C_CHILD_SUM:
                            memcpy(&hk[e, 0], &h[k, 0], H * sizeof(floating))
                            for j in range(H):
                                hcp[j] += h[k, j]
                        else:
                            memcpy(hcp + (e - edge_start[p]) * H, &h[k, 0], H * sizeof(floating))
                if cell == C_CHILD_SUM:
                    _mm(b - a, H, H, &hc[a, 0], H, 1, &u[0, 0], G, 1, &z[a, 0], G, True)
                    _mm(b - a, 2 * H, H, &hc[a, 0], H, 1, &u[0, 2 * H], G, 1, &z[a, 2 * H], G,
                        True)
                    _mm(eb - ea, H, H, &hk[ea, 0], H, 1, &u[0, H], G, 1, &fe[ea, 0], H, False)
                else:
                    _mm(b - a, G, 2 * H, &hc[a, 0], 2 * H, 1, &u[0, 0], G, 1, &z[a, 0], G, True)
            for p in range(a, b):
                zp = &z[p, 0]
                hp = &h[p, 0]
                if cell == C_RNN:
                    for j in range(H):
                        hp[j] = _act(act, zp[j])
                    continue
                cp = &c[p, 0]
                if cell == C_BINARY:
                    for j in range(H):
                        gi = _math.sigmoid(zp[j])
                        gu = _math.ftanh(zp[3 * H + j])
                        go = _math.sigmoid(zp[4 * H + j])
                        zp[j] = gi
                        zp[H + j] = _math.sigmoid(zp[H + j])
                        zp[2 * H + j] = _math.sigmoid(zp[2 * H + j])
                        zp[3 * H + j] = gu
                        zp[4 * H + j] = go
                        cp[j] = gi * gu
                    for e in range(edge_start[p], edge_start[p + 1]):
                        s = e - edge_start[p]
                        k = kids[e]
                        for j in range(H):
                            cp[j] += zp[(1 + s) * H + j] * c[k, j]
                else:
                    for j in range(H):
                        zp[j] = _math.sigmoid(zp[j])
                        zp[2 * H + j] = _math.ftanh(zp[2 * H + j])
                        zp[3 * H + j] = _math.sigmoid(zp[3 * H + j])
                        cp[j] = zp[j] * zp[2 * H + j]
                    for e in range(edge_start[p], edge_start[p + 1]):
                        k = kids[e]
                        for j in range(H):
                            fe[e, j] = _math.sigmoid(fe[e, j] + zp[H + j])
                            cp[j] += fe[e, j] * c[k, j]
                for j in range(H):
                    hp[j] = zp[(4 if cell == C_BINARY else 3) * H + j] * _math.ftanh(cp[j])


# -- backward ----------------------------------------------------------------------------------
def backward(int cell, int act, const int64_t[::1] level_start, const int64_t[::1] edge_start,
             const int64_t[::1] kids, const floating[:, ::1] z, const floating[:, ::1] u,
             const floating[:, ::1] h, const floating[:, ::1] c, const floating[:, ::1] fe,
             floating[:, ::1] dh, floating[:, ::1] dc, floating[:, ::1] dz,
             floating[:, ::1] dhc, floating[:, ::1] dfe, floating[:, ::1] dhk):
    """Top-down over the levels (backpropagation through structure). dh (P, H) holds the
    gradients of the outputs on entry and receives those from the parents; dc (P, H)
    zeros on entry (LSTM). Writes dz (P, G), the gradients of the pre-activations (for
    child-sum, its forget columns hold the sum over the node's children of dfe, the
    gradient of each edge's forget pre-activation); dhc (P, width of hc) and dhk (E, H)
    are scratch."""
    cdef Py_ssize_t P = z.shape[0], G = z.shape[1], H = h.shape[1]
    cdef Py_ssize_t L = level_start.shape[0] - 1, E = kids.shape[0]
    _check(dz.shape[0] == P and dz.shape[1] == G and dh.shape[0] == P and dh.shape[1] == H
           and edge_start.shape[0] == P + 1 and level_start[L] == P, "buffers disagree")
    _check(dhc.shape[0] == P and dhc.shape[1] == u.shape[0] and u.shape[1] == G,
           "dhc / u have the wrong shape")
    if cell != C_RNN:
        _check(c.shape[0] == P and dc.shape[0] == P and dc.shape[1] == H, "c / dc wrong")
    if cell == C_CHILD_SUM:
        _check(fe.shape[0] == E and dfe.shape[0] == E and dhk.shape[0] == E, "edge buffers")
    cdef Py_ssize_t l, a, b, p, e, ea, eb, j, s, k, W = u.shape[0]
    cdef const floating *zp
    cdef floating *dzp
    cdef floating gi, gf, gu, go, tc, d, dcj
    with nogil:
        for l in range(L - 1, -1, -1):
            a, b = level_start[l], level_start[l + 1]
            ea, eb = edge_start[a], edge_start[b]
            for p in range(a, b):
                zp = &z[p, 0]
                dzp = &dz[p, 0]
                if cell == C_RNN:
                    for j in range(H):
                        dzp[j] = dh[p, j] * _dact(act, h[p, j])
                    continue
                go = 0
                for j in range(H):
                    gi = zp[j]
                    gu = zp[(3 if cell == C_BINARY else 2) * H + j]
                    go = zp[(4 if cell == C_BINARY else 3) * H + j]
                    tc = _math.ftanh(c[p, j])
                    dcj = dc[p, j] + dh[p, j] * go * (1 - tc * tc)
                    dc[p, j] = dcj
                    dzp[j] = dcj * gu * gi * (1 - gi)
                    dzp[(3 if cell == C_BINARY else 2) * H + j] = dcj * gi * (1 - gu * gu)
                    dzp[(4 if cell == C_BINARY else 3) * H + j] = dh[p, j] * tc * go * (1 - go)
                if cell == C_BINARY:
                    memset(dzp + H, 0, 2 * H * sizeof(floating))
                    for e in range(edge_start[p], edge_start[p + 1]):
                        s = e - edge_start[p]
                        k = kids[e]
                        for j in range(H):
                            gf = zp[(1 + s) * H + j]
                            dzp[(1 + s) * H + j] = dc[p, j] * c[k, j] * gf * (1 - gf)
                            dc[k, j] += dc[p, j] * gf
                else:
                    memset(dzp + H, 0, H * sizeof(floating))
                    for e in range(edge_start[p], edge_start[p + 1]):
                        k = kids[e]
                        for j in range(H):
                            gf = fe[e, j]
                            d = dc[p, j] * c[k, j] * gf * (1 - gf)
                            dfe[e, j] = d
                            dzp[H + j] += d
                            dc[k, j] += dc[p, j] * gf
            if l == 0:
                break
            # the children's h gradients: one GEMM with U^T for the level, then scatter
            if cell == C_CHILD_SUM:
                _mm(b - a, H, H, &dz[a, 0], G, 1, &u[0, 0], 1, G, &dhc[a, 0], H, False)
                _mm(b - a, H, 2 * H, &dz[a, 2 * H], G, 1, &u[0, 2 * H], 1, G, &dhc[a, 0], H,
                    True)
                _mm(eb - ea, H, H, &dfe[ea, 0], H, 1, &u[0, H], 1, G, &dhk[ea, 0], H, False)
                for p in range(a, b):
                    for e in range(edge_start[p], edge_start[p + 1]):
                        k = kids[e]
                        for j in range(H):
                            dh[k, j] += dhc[p, j] + dhk[e, j]
            else:
                _mm(b - a, W, G, &dz[a, 0], G, 1, &u[0, 0], 1, G, &dhc[a, 0], W, False)
                for p in range(a, b):
                    for e in range(edge_start[p], edge_start[p + 1]):
                        s = e - edge_start[p]
                        k = kids[e]
                        for j in range(H):
                            dh[k, j] += dhc[p, s * H + j]


# -- rows in and out of the level order ----------------------------------------------------------
def gather(const floating[:, ::1] x, const int64_t[::1] src, floating[:, ::1] out):
    """out[p] = x[src[p]]: the node inputs in level order."""
    cdef Py_ssize_t p, n = src.shape[0], f = x.shape[1], rows = x.shape[0]
    _check(out.shape[0] == n and out.shape[1] == f, "gather: out has the wrong shape")
    for p in range(n):
        if src[p] < 0 or src[p] >= rows:
            raise ValueError("tree kernel: gather index out of range")
    with nogil:
        for p in range(n):
            memcpy(&out[p, 0], &x[src[p], 0], f * sizeof(floating))


def scatter(const floating[:, ::1] y, const int64_t[::1] pos, floating[:, ::1] out):
    """out[r] = y[pos[r]] for every row r with pos[r] >= 0, zeros elsewhere: level-ordered
    rows back to (trees * max_nodes) rows."""
    cdef Py_ssize_t r, n = pos.shape[0], f = y.shape[1], rows = y.shape[0]
    _check(out.shape[0] == n and out.shape[1] == f, "scatter: out has the wrong shape")
    for r in range(n):
        if pos[r] >= rows:
            raise ValueError("tree kernel: scatter index out of range")
    with nogil:
        for r in range(n):
            if pos[r] >= 0:
                memcpy(&out[r, 0], &y[pos[r], 0], f * sizeof(floating))
            else:
                memset(&out[r, 0], 0, f * sizeof(floating))
