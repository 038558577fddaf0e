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


# -- scalar and row helpers ------------------------------------------------------------------
cdef extern from "tree_act_f32.h" nogil:
    void cn_tree_sigmoidf_inplace(float *x, Py_ssize_t n)
    void cn_tree_tanhf_to(const float *x, float *y, Py_ssize_t n)
    void cn_tree_use_isa(int isa)
    void cn_tree_lstm_bwd_row(Py_ssize_t n, const float *dh, float *dc, const float *i,
                              const float *u, const float *o, const float *tc, float *dzi,
                              float *dzu, float *dzo)
    void cn_tree_forget_bwd_row(Py_ssize_t n, const float *dc, const float *ck, const float *f,
                                float *dzf, float *dck, float *acc)


cdef inline void _sigmoid_row(floating *x, Py_ssize_t n) noexcept nogil:
    """x = sigmoid(x): float32 through the vectorized loops, float64 through libm."""
    cdef Py_ssize_t j
    if floating is float:
        cn_tree_sigmoidf_inplace(x, n)
    else:
        for j in range(n):
            x[j] = _math.sigmoid(x[j])


cdef inline void _tanh_row(const floating *x, floating *y, Py_ssize_t n) noexcept nogil:
    """y = tanh(x) (y may be x)."""
    cdef Py_ssize_t j
    if floating is float:
        cn_tree_tanhf_to(x, y, n)
    else:
        for j in range(n):
            y[j] = tanh(x[j])


cdef inline void _act_row(int code, const floating *z, floating *h, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t j
    if code == A_TANH:
        _tanh_row(z, h, n)
    elif code == A_SIGMOID:
        memcpy(h, z, n * sizeof(floating))
        _sigmoid_row(h, n)
    elif code == A_RELU:
        for j in range(n):
            h[j] = z[j] if z[j] > 0 else 0
    else:
        memcpy(h, z, n * sizeof(floating))


cdef inline void _dact_row(int code, const floating *h, const floating *dh, floating *dz,
                           Py_ssize_t n) noexcept nogil:
    """dz = dh * act'(z), the derivative taken from the output h."""
    cdef Py_ssize_t j
    if code == A_TANH:
        for j in range(n):
            dz[j] = dh[j] * (1 - h[j] * h[j])
    elif code == A_SIGMOID:
        for j in range(n):
            dz[j] = dh[j] * h[j] * (1 - h[j])
    elif code == A_RELU:
        for j in range(n):
            dz[j] = dh[j] if h[j] > 0 else 0
    else:
        memcpy(dz, dh, n * sizeof(floating))


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


cdef _check_shapes(int cell, Py_ssize_t P, Py_ssize_t G, Py_ssize_t H, Py_ssize_t E,
                   const int64_t[::1] level_start, const int64_t[::1] edge_start,
                   tuple u, tuple hc, tuple c, tuple tc, tuple fe):
    cdef Py_ssize_t L = level_start.shape[0] - 1
    _check(L >= 1 and edge_start.shape[0] == P + 1 and level_start[0] == 0
           and level_start[L] == P and edge_start[P] == E, "schedule and buffers disagree")
    _check(cell in (C_RNN, C_BINARY, C_CHILD_SUM), "unknown cell")
    _check(G == (H if cell == C_RNN else 5 * H if cell == C_BINARY else 4 * H),
           "z has the wrong width for the cell")
    _check(hc == (P, H if cell == C_CHILD_SUM else 2 * H), "hc has the wrong shape")
    _check(u == (hc[1], G), "u has the wrong shape")
    if cell != C_RNN:
        _check(c == (P, H) and tc == (P, H), "c / tanh(c) have the wrong shape")
    if cell == C_CHILD_SUM:
        _check(fe == (E, H), "the edge buffers have the wrong shape")


# -- forward -----------------------------------------------------------------------------------
def forward(int cell, int act, const int64_t[::1] level_start, const int64_t[::1] edge_start,
            const int64_t[::1] kids, floating[:, ::1] z, const floating[:, ::1] u,
            floating[:, ::1] hc, floating[:, ::1] h, floating[:, ::1] c, floating[:, ::1] tc,
            floating[:, ::1] hk, floating[:, ::1] fe):
    """Bottom-up over the levels. z (P, G) holds x W + b on entry; the LSTM cells leave
    their activated gates in it. hc (P, 2H) (binary cells: the children's h side by
    side) or (P, H) (child-sum: their sum); h, c, tc (P, H) the states and tanh(c);
    child-sum also hk (E, H) each edge's child h and fe (E, H) its forget gate. Unused
    buffers may be (0, 0) arrays. The kids must be positions of lower levels (as
    schedule makes them)."""
    cdef Py_ssize_t P = z.shape[0], G = z.shape[1], H = h.shape[1]
    cdef Py_ssize_t L = level_start.shape[0] - 1, E = kids.shape[0]
    _check(h.shape[0] == P, "h has the wrong shape")
    _check_shapes(cell, P, G, H, E, level_start, edge_start, (u.shape[0], u.shape[1]),
                  (hc.shape[0], hc.shape[1]), (c.shape[0], c.shape[1]),
                  (tc.shape[0], tc.shape[1]), (fe.shape[0], fe.shape[1]))
    if cell == C_CHILD_SUM:
        _check(hk.shape[0] == E and hk.shape[1] == H, "hk has the wrong shape")
    _check_kids(level_start, edge_start, kids)
    from cyneuron._kernels.gemm import get_isa
    cn_tree_use_isa(("generic", "avx2", "avx512").index(get_isa()))
    cdef Py_ssize_t l, a, b, p, e, ea, eb, j, s, k, W = hc.shape[1]
    cdef floating *zp
    cdef floating *cp
    cdef floating *hcp
    cdef floating *q
    cdef const floating *ck
    cdef const floating *hkp
    with nogil:
        for l in range(L):
            a, b = level_start[l], level_start[l + 1]
            ea, eb = edge_start[a], edge_start[b]
            if l > 0:
                # the children's states, then one GEMM for the level
                for p in range(a, b):
                    hcp = &hc[p, 0]
                    memset(hcp, 0, W * sizeof(floating))
                    for e in range(edge_start[p], edge_start[p + 1]):
                        hkp = &h[kids[e], 0]
                        if cell == C_CHILD_SUM:
                            memcpy(&hk[e, 0], hkp, H * sizeof(floating))
                            for j in range(H):
                                hcp[j] += hkp[j]
                        else:
                            memcpy(hcp + (e - edge_start[p]) * H, hkp, H * sizeof(floating))
                if cell == C_CHILD_SUM:
                    _mm(b - a, H, H, &hc[a, 0], H, 1, &u[0, 0], G, 1, &z[a, 0], G, True)
                    _mm(b - a, 2 * H, H, &hc[a, 0], H, 1, &u[0, 2 * H], G, 1, &z[a, 2 * H], G,
                        True)
                    _mm(eb - ea, H, H, &hk[ea, 0], H, 1, &u[0, H], G, 1, &fe[ea, 0], H, False)
                else:
                    _mm(b - a, G, W, &hc[a, 0], W, 1, &u[0, 0], G, 1, &z[a, 0], G, True)
            for p in range(a, b):
                zp = &z[p, 0]
                if cell == C_RNN:
                    _act_row(act, zp, &h[p, 0], H)
                    continue
                cp = &c[p, 0]
                if cell == C_BINARY:     # i, f0, f1 | u | o
                    _sigmoid_row(zp, 3 * H)
                    _tanh_row(zp + 3 * H, zp + 3 * H, H)
                    _sigmoid_row(zp + 4 * H, H)
                    q = zp + 3 * H
                    for j in range(H):
                        cp[j] = zp[j] * q[j]
                    for e in range(edge_start[p], edge_start[p + 1]):
                        q = zp + (1 + e - edge_start[p]) * H
                        ck = &c[kids[e], 0]
                        for j in range(H):
                            cp[j] += q[j] * ck[j]
                    q = zp + 4 * H
                else:                    # i | f | u | o; one forget gate per edge
                    _sigmoid_row(zp, H)
                    _tanh_row(zp + 2 * H, zp + 2 * H, H)
                    _sigmoid_row(zp + 3 * H, H)
                    q = zp + 2 * H
                    for j in range(H):
                        cp[j] = zp[j] * q[j]
                    for e in range(edge_start[p], edge_start[p + 1]):
                        q = &fe[e, 0]
                        for j in range(H):
                            q[j] += zp[H + j]
                        _sigmoid_row(q, H)
                        ck = &c[kids[e], 0]
                        for j in range(H):
                            cp[j] += q[j] * ck[j]
                    q = zp + 3 * H
                _tanh_row(cp, &tc[p, 0], H)
                hcp = &h[p, 0]
                ck = &tc[p, 0]
                for j in range(H):
                    hcp[j] = q[j] * ck[j]


cdef _check_kids(const int64_t[::1] level_start, const int64_t[::1] edge_start,
                 const int64_t[::1] kids):
    """Every edge of a level points below that level (what makes the passes safe)."""
    cdef Py_ssize_t l, e, L = level_start.shape[0] - 1
    for l in range(L):
        for e in range(edge_start[level_start[l]], edge_start[level_start[l + 1]]):
            if kids[e] < 0 or kids[e] >= level_start[l]:
                raise ValueError("tree kernel: an edge does not point to a lower level")
    for e in range(edge_start.shape[0] - 1):
        if edge_start[e + 1] < edge_start[e]:
            raise ValueError("tree kernel: edge_start must not decrease")


# -- backward ----------------------------------------------------------------------------------
def backward(int cell, int act, const int64_t[::1] level_start, const int64_t[::1] edge_start,
             const int64_t[::1] kids, const floating[:, ::1] z, const floating[:, ::1] ut,
             const floating[:, ::1] h, const floating[:, ::1] c, const floating[:, ::1] tc,
             const floating[:, ::1] fe, floating[:, ::1] dh, floating[:, ::1] dc,
             floating[:, ::1] dz, floating[:, ::1] dhc, floating[:, ::1] dfe,
             floating[:, ::1] dhk):
    """Top-down over the levels (backpropagation through structure), from forward's z,
    h, c, tc, fe; ut (G, W) is the recurrent kernel transposed (contiguous rows: the
    GEMMs read it in place). dh (P, H) holds the gradients of the outputs on entry and receives
    those from the parents; dc (P, H) zeros on entry (LSTM). Writes dz (P, G), the
    gradients of the pre-activations (child-sum: its forget columns hold the sum over
    the node's children of dfe (E, H), each edge's forget pre-activation gradient);
    dhc (P, width of hc) and dhk (E, H) are scratch."""
    cdef Py_ssize_t P = z.shape[0], G = z.shape[1], H = h.shape[1]
    cdef Py_ssize_t L = level_start.shape[0] - 1, E = kids.shape[0]
    _check(dz.shape[0] == P and dz.shape[1] == G and dh.shape[0] == P and dh.shape[1] == H
           and h.shape[0] == P, "h / dh / dz have the wrong shape")
    _check_shapes(cell, P, G, H, E, level_start, edge_start, (ut.shape[1], ut.shape[0]),
                  (dhc.shape[0], dhc.shape[1]), (c.shape[0], c.shape[1]),
                  (tc.shape[0], tc.shape[1]), (fe.shape[0], fe.shape[1]))
    if cell != C_RNN:
        _check(dc.shape[0] == P and dc.shape[1] == H, "dc has the wrong shape")
    if cell == C_CHILD_SUM:
        _check(dfe.shape[0] == E and dfe.shape[1] == H and dhk.shape[0] == E
               and dhk.shape[1] == H, "dfe / dhk have the wrong shape")
    _check_kids(level_start, edge_start, kids)
    cdef Py_ssize_t l, a, b, p, e, ea, eb, j, k, W = ut.shape[1]
    cdef Py_ssize_t ou = 3 * H if cell == C_BINARY else 2 * H    # the u and o columns
    cdef Py_ssize_t oo = 4 * H if cell == C_BINARY else 3 * H
    cdef const floating *zp
    cdef const floating *tcp
    cdef const floating *ck
    cdef const floating *q
    cdef floating *dzp
    cdef floating *dcp
    cdef floating *dhp
    cdef floating *dck
    cdef floating *r
    cdef floating gf
    with nogil:
        for l in range(L - 1, -1, -1):
            a, b = level_start[l], level_start[l + 1]
            ea, eb = edge_start[a], edge_start[b]
            for p in range(a, b):
                zp = &z[p, 0]
                dzp = &dz[p, 0]
                dhp = &dh[p, 0]
                if cell == C_RNN:
                    _dact_row(act, &h[p, 0], dhp, dzp, H)
                    continue
                dcp = &dc[p, 0]
                tcp = &tc[p, 0]
                if floating is float:
                    cn_tree_lstm_bwd_row(H, dhp, dcp, zp, zp + ou, zp + oo, tcp, dzp,
                                         dzp + ou, dzp + oo)
                else:
                    for j in range(H):
                        dcp[j] += dhp[j] * zp[oo + j] * (1 - tcp[j] * tcp[j])
                        dzp[j] = dcp[j] * zp[ou + j] * zp[j] * (1 - zp[j])
                        dzp[ou + j] = dcp[j] * zp[j] * (1 - zp[ou + j] * zp[ou + j])
                        dzp[oo + j] = dhp[j] * tcp[j] * zp[oo + j] * (1 - zp[oo + j])
                # forget gates: binary, one column block per child slot; child-sum, one
                # row per edge (dfe), summed into the node's forget column block
                memset(dzp + H, 0, (2 * H if cell == C_BINARY else H) * sizeof(floating))
                for e in range(edge_start[p], edge_start[p + 1]):
                    k = kids[e]
                    if cell == C_BINARY:
                        q = zp + (1 + e - edge_start[p]) * H
                        r = dzp + (1 + e - edge_start[p]) * H
                    else:
                        q = &fe[e, 0]
                        r = &dfe[e, 0]
                    if floating is float:
                        cn_tree_forget_bwd_row(H, dcp, &c[k, 0], q, r, &dc[k, 0],
                                               dzp + H if cell == C_CHILD_SUM else NULL)
                    else:
                        ck = &c[k, 0]
                        dck = &dc[k, 0]
                        for j in range(H):
                            r[j] = dcp[j] * ck[j] * q[j] * (1 - q[j])
                            dck[j] += dcp[j] * q[j]
                            if cell == C_CHILD_SUM:
                                dzp[H + j] += r[j]
            if l == 0:
                break
            # the children's h gradients: one GEMM with U^T for the level, then scatter
            if cell == C_CHILD_SUM:
                _mm(b - a, H, H, &dz[a, 0], G, 1, &ut[0, 0], H, 1, &dhc[a, 0], H, False)
                _mm(b - a, H, 2 * H, &dz[a, 2 * H], G, 1, &ut[2 * H, 0], H, 1, &dhc[a, 0], H,
                    True)
                _mm(eb - ea, H, H, &dfe[ea, 0], H, 1, &ut[H, 0], H, 1, &dhk[ea, 0], H, False)
                for p in range(a, b):
                    for e in range(edge_start[p], edge_start[p + 1]):
                        dck = &dh[kids[e], 0]
                        q = &dhc[p, 0]
                        ck = &dhk[e, 0]
                        for j in range(H):
                            dck[j] += q[j] + ck[j]
            else:
                _mm(b - a, W, G, &dz[a, 0], G, 1, &ut[0, 0], W, 1, &dhc[a, 0], W, False)
                for p in range(a, b):
                    for e in range(edge_start[p], edge_start[p + 1]):
                        dck = &dh[kids[e], 0]
                        q = &dhc[p, (e - edge_start[p]) * H]
                        for j in range(H):
                            dck[j] += q[j]


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
