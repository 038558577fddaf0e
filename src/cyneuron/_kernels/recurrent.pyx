"""Kernels of the sequence layers: recurrent cells over whole sequences, layout changes,
and the embedding lookup.

Recurrent layers keep sequences unit-major inside (layouts below, before the sequence
drivers): a sequence kernel here runs the whole loop over time in one OpenMP region,
each thread computing its units' rows of every step's GEMM (the single-thread entry of
gemm.pxd: recurrent and input products, and the biases, at once) and their fused gate
math, with one barrier per step. Backward (BPTT) is the mirror: the fused pass for the
gate gradients, then the GEMM with the recurrent kernel for d(loss)/d(h_{t-1}).

Gate layouts follow Keras: LSTM i, f, c, o; GRU z, r, h with reset_after=True.
Activations are given by code (ACTIVATIONS maps names); their derivatives are taken
from the forward outputs, which the layers keep. float32 uses branch-free polynomial
exp and tanh (the Cephes expf/tanhf polynomials, within a few ulp) whose loops the
compiler vectorizes, with an AVX2 + FMA copy chosen at run time; float64 uses libm, so
gradient checks see exact functions.

Masks (T, N) uint8: 0 marks a padded step of a sample, whose state is carried over
unchanged (Keras's masking).

Where things are: this file holds the activation codes and their scalar math, the
argument checks, the layout kernels and the entry points; the cell math per cell type
is in _rnn_cells.pxi, the shared sequence loops (forward, BPTT) in _rnn_sequence.pxi,
the GRU inference loop in _rnn_inference.pxi, the one-sample LSTM inference loop in
_rnn_one.pxi (all four `include`d below, so one module),
and the float32 C gate rows with their per-ISA copies in csrc/rnn_gates.h.
"""
import numpy as np

from cython cimport floating
from cython.parallel cimport parallel, prange
from libc.math cimport tanh
from libc.stdint cimport int64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy, memset

from cyneuron._kernels._openmp cimport (
    cn_omp_barrier, cn_omp_max_threads, cn_omp_num_threads, cn_omp_thread_num,
    distance_percent, threads_for)
from cyneuron._kernels cimport _math
from cyneuron._kernels.gemm cimport dgemm_serial, sgemm_serial
from cyneuron._kernels.gemm import block_sizes as _gemm_block_sizes
from cyneuron._kernels.gemm import get_isa as _gemm_isa


cdef extern from "rnn_gates.h":
    float cn_expf(float x) noexcept nogil
    float cn_tanhf(float x) noexcept nogil
    float cn_sigmoidf(float x) noexcept nogil
    void cn_tanhf_inplace(float *x, Py_ssize_t n) noexcept nogil
    void cn_sigmoidf_inplace(float *x, Py_ssize_t n) noexcept nogil
    int cn_rnn_use_isa(int isa) noexcept nogil
    void cn_lstm_fwd_row(Py_ssize_t n, float *gi, float *gf, float *gc, float *go,
                         const float *pi, const float *pf, const float *pc, const float *po,
                         float bi, float bf, float bc, float bo, const float *cp, float *c,
                         float *ac, float *h) noexcept nogil
    void cn_gru_ring_rows(Py_ssize_t m, Py_ssize_t w, Py_ssize_t W, float *gz,
                          const float *gr, const float *gh, float *gx, const float *hp,
                          float *hn, float *ho, Py_ssize_t ldo,
                          const unsigned char *keep) noexcept nogil
    void cn_gru_fwd_row(Py_ssize_t n, float *gz, float *gr, float *gh, const float *pz,
                        const float *pr, const float *ph, float bz, float br, float bh,
                        float rbz, float rbr, float rbh, const float *hp, float *rh,
                        float *h) noexcept nogil
    void cn_lstm_bwd_row_f(Py_ssize_t n, const float *gi, const float *gf, const float *gc,
                           const float *go, const float *si, const float *sf, const float *sc,
                           const float *so, const float *sa, const float *cp, const float *ac,
                           const float *dh, float *dc, float *di, float *df, float *dcc,
                           float *dout) noexcept nogil
    void cn_lstm_bwd_row_d(Py_ssize_t n, const double *gi, const double *gf, const double *gc,
                           const double *go, const double *si, const double *sf,
                           const double *sc, const double *so, const double *sa,
                           const double *cp, const double *ac, const double *dh, double *dc,
                           double *di, double *df, double *dcc, double *dout) noexcept nogil
    void cn_lstm_bwd_default_f(Py_ssize_t n, const float *gi, const float *gf,
            const float *gc, const float *go, const float *cp, const float *ac,
            const float *dy, float *dh, float *dc, float *di, float *df, float *dcc,
            float *dout) noexcept nogil
    void cn_lstm_bwd_default_d(Py_ssize_t n, const double *gi, const double *gf,
            const double *gc, const double *go, const double *cp, const double *ac,
            const double *dy, double *dh, double *dc, double *di, double *df, double *dcc,
            double *dout) noexcept nogil
    void cn_gru_bwd_default_f(Py_ssize_t n, const float *z, const float *r,
            const float *hh, const float *rh, const float *hp, const float *dy, float *dh,
            float *dxz, float *dxr, float *dxh, float *drz, float *drr,
            float *drh) noexcept nogil
    void cn_gru_bwd_default_d(Py_ssize_t n, const double *z, const double *r,
            const double *hh, const double *rh, const double *hp, const double *dy,
            double *dh, double *dxz, double *dxr, double *dxh, double *drz, double *drr,
            double *drh) noexcept nogil
    void cn_gru_bwd_row_f(Py_ssize_t n, const float *z, const float *r, const float *hh,
                          const float *sz, const float *sr, const float *sh, const float *rh,
                          const float *hp, float *dh, float *dxz, float *dxr, float *dxh,
                          float *drz, float *drr, float *drh) noexcept nogil
    void cn_gru_bwd_row_d(Py_ssize_t n, const double *z, const double *r, const double *hh,
                          const double *sz, const double *sr, const double *sh,
                          const double *rh, const double *hp, double *dh, double *dxz,
                          double *dxr, double *dxh, double *drz, double *drr,
                          double *drh) noexcept nogil


cpdef enum Act:
    ACT_LINEAR = 0
    ACT_TANH = 1
    ACT_SIGMOID = 2
    ACT_RELU = 3
    ACT_HARD_SIGMOID = 4

# Names of cyneuron.activations that the cells apply (derivatives from their outputs).
ACTIVATIONS = {"linear": ACT_LINEAR, "tanh": ACT_TANH, "sigmoid": ACT_SIGMOID,
               "relu": ACT_RELU, "hard_sigmoid": ACT_HARD_SIGMOID}

cdef enum:
    # Rough cost of one hidden unit of one row in scalar operations (threads_for).
    COST_CELL = 16
    COST_COPY = 2
    # Gate rows per block of step_weights's transposes.
    TILE_G = 16


_GATE_PATHS = ("generic", "avx2", "avx512")


def _sync_isa():
    """Follow the GEMM's instruction set (CYNEURON_ISA, gemm.set_isa): the float32
    gate math runs its copy for that set (generic C, AVX2 + FMA, AVX-512). Returns the
    path now in use."""
    return _GATE_PATHS[cn_rnn_use_isa(_GATE_PATHS.index(_gemm_isa()))]


_sync_isa()


# -- scalar math ------------------------------------------------------------------------
cdef inline floating _tanh(floating x) noexcept nogil:
    """float32: the vectorizable cn_tanhf; float64: libm's (as _math.ftanh)."""
    if floating is float:
        return cn_tanhf(x)
    else:
        return _math.ftanh(x)


cdef inline floating _sigmoid(floating x) noexcept nogil:
    """float32: the vectorizable cn_sigmoidf; float64: the overflow-free _math.sigmoid."""
    if floating is float:
        return cn_sigmoidf(x)
    else:
        return _math.sigmoid(x)


cdef void _act_inplace(int code, floating *x, Py_ssize_t n) noexcept nogil:
    """x = activation(x) over n contiguous values; one loop per code, so each vectorizes."""
    cdef Py_ssize_t j
    cdef floating v
    if code == ACT_TANH:
        if floating is float:
            cn_tanhf_inplace(x, n)
        else:
            for j in range(n):
                x[j] = tanh(x[j])
    elif code == ACT_SIGMOID:
        if floating is float:
            cn_sigmoidf_inplace(x, n)
        else:
            for j in range(n):
                x[j] = _sigmoid(x[j])
    elif code == ACT_RELU:
        for j in range(n):
            x[j] = x[j] if x[j] > 0 else 0
    elif code == ACT_HARD_SIGMOID:
        for j in range(n):
            v = x[j] * <floating>(1.0 / 6.0) + <floating>0.5
            v = 0 if v < 0 else v
            x[j] = <floating>1 if v > <floating>1 else v
    # ACT_LINEAR: nothing to do


cdef void _dact(int code, const floating *y, floating *d, Py_ssize_t n) noexcept nogil:
    """d = activation'(x) written from the outputs y = activation(x)."""
    cdef Py_ssize_t j
    if code == ACT_TANH:
        for j in range(n):
            d[j] = 1 - y[j] * y[j]
    elif code == ACT_SIGMOID:
        for j in range(n):
            d[j] = y[j] * (1 - y[j])
    elif code == ACT_RELU:
        for j in range(n):
            d[j] = 1 if y[j] > 0 else 0
    elif code == ACT_HARD_SIGMOID:
        for j in range(n):
            d[j] = <floating>(1.0 / 6.0) if (y[j] > 0 and y[j] < 1) else 0
    else:
        for j in range(n):
            d[j] = 1


# -- argument checks ----------------------------------------------------------------------
cdef _check_shape(tuple got, tuple want, str name):
    if got != want:
        raise ValueError(f"{name} must have shape {want}; got {got}")


cdef _check_code(int code, str name):
    if not ACT_LINEAR <= code <= ACT_HARD_SIGMOID:
        raise ValueError(f"{name}: unknown activation code {code}")


cdef _check_mask(const unsigned char[:, ::1] mask, Py_ssize_t T, Py_ssize_t N):
    if mask is not None:
        _check_shape((mask.shape[0], mask.shape[1]), (T, N), "mask")


# -- layout -------------------------------------------------------------------------------
def to_feature_major(const floating[:, :, ::1] x, floating[:, ::1] out, bint reverse=False,
                     const floating[:, ::1] scale=None):
    """out[f, s * N + n] = x[n, t, f] * scale[n, f] (scale: a per-sample feature mask, or
    None), with step s = T - 1 - t when `reverse` (go_backwards), else t.
    x (N, T, F), out (F, T * N): the input sequence as the B operand of the projection."""
    cdef Py_ssize_t N = x.shape[0], T = x.shape[1], F = x.shape[2], f, s, n, t
    _check_shape((out.shape[0], out.shape[1]), (F, T * N), "out")
    if scale is not None:
        _check_shape((scale.shape[0], scale.shape[1]), (N, F), "scale")
    if N == 0 or T == 0 or F == 0:
        return
    cdef bint has_scale = scale is not None
    cdef Py_ssize_t nb, n0, n1
    # Blocks of 16 samples of one step: their 16 rows of x[:, t, :] stay in L1 while the
    # F output rows are written 16 values at a time.
    for s in prange(T, nogil=True, num_threads=threads_for(N * T * F * COST_COPY),
                    schedule="static"):
        t = T - 1 - s if reverse else s
        for nb in range(0, N, 16):
            n1 = min(N, nb + 16)
            for f in range(F):
                for n in range(nb, n1):
                    if has_scale:
                        out[f, s * N + n] = x[n, t, f] * scale[n, f]
                    else:
                        out[f, s * N + n] = x[n, t, f]


def to_batch_major(const floating[:, :, ::1] xt, floating[:, :, ::1] out, bint reverse=False,
                   const floating[:, ::1] scale=None):
    """out[n, t] = xt[s, n] * scale[n] with s = T - 1 - t when `reverse`, else t.
    xt (T, N, F) time-major (the input gradient), out (N, T, F)."""
    cdef Py_ssize_t T = xt.shape[0], N = xt.shape[1], F = xt.shape[2], t, n, f, s
    _check_shape((out.shape[0], out.shape[1], out.shape[2]), (N, T, F), "out")
    if scale is not None:
        _check_shape((scale.shape[0], scale.shape[1]), (N, F), "scale")
    if N == 0 or T == 0 or F == 0:
        return
    cdef bint has_scale = scale is not None
    for n in prange(N, nogil=True, num_threads=threads_for(N * T * F * COST_COPY),
                    schedule="static"):
        for s in range(T):
            t = T - 1 - s if reverse else s
            if has_scale:
                for f in range(F):
                    out[n, t, f] = xt[s, n, f] * scale[n, f]
            else:
                memcpy(&out[n, t, 0], &xt[s, n, 0], F * sizeof(floating))


def states_to_batch_major(const floating[:, :, ::1] h, floating[:, :, ::1] out):
    """out[n, t, j] = h[j, t + 1, n]: the states after each step, (H, T + 1, N) unit-major,
    as the (N, T, H) output sequence."""
    cdef Py_ssize_t H = h.shape[0], T = h.shape[1] - 1, N = h.shape[2], t, n, j
    if T < 0:
        raise ValueError("h must hold at least the initial state")
    _check_shape((out.shape[0], out.shape[1], out.shape[2]), (N, T, H), "out")
    if N == 0 or T == 0 or H == 0:
        return
    for t in prange(T, nogil=True, num_threads=threads_for(N * T * H * COST_COPY),
                    schedule="static"):
        for n in range(N):
            for j in range(H):
                out[n, t, j] = h[j, t + 1, n]


def batch_to_unit_major(const floating[:, :, ::1] y, floating[:, :, ::1] out):
    """out[j, t, n] = y[n, t, j]: (N, T, H) -> (H, T, N) (the output sequence's gradient)."""
    cdef Py_ssize_t N = y.shape[0], T = y.shape[1], H = y.shape[2], t, n, j
    _check_shape((out.shape[0], out.shape[1], out.shape[2]), (H, T, N), "out")
    if N == 0 or T == 0 or H == 0:
        return
    for t in prange(T, nogil=True, num_threads=threads_for(N * T * H * COST_COPY),
                    schedule="static"):
        for j in range(H):
            for n in range(N):
                out[j, t, n] = y[n, t, j]

# The cell math per cell type, the shared sequence loops and the GRU inference loop:
# read in this order (Cython `include`: one extension module, so that the cell math
# inlines into the loops).
include "_rnn_cells.pxi"
include "_rnn_sequence.pxi"
include "_rnn_inference.pxi"
include "_rnn_one.pxi"


# -- entry points -------------------------------------------------------------------------
def step_weights(const floating[:, :] kernel, const floating[:, :] kernel_rec,
                 const floating[::1] bias, const floating[::1] bias_rec,
                 floating[:, ::1] out):
    """out (G, H + F + 2) = [kernel_rec^T | bias_rec | kernel^T | bias] (None biases: 0),
    the A operand of every forward step. kernel (F, G), kernel_rec (H, G)."""
    cdef Py_ssize_t F = kernel.shape[0], G = kernel.shape[1], H = kernel_rec.shape[0], g, j
    _check_shape((kernel_rec.shape[0], kernel_rec.shape[1]), (H, G), "kernel_rec")
    _check_shape((out.shape[0], out.shape[1]), (G, H + F + 2), "out")
    if bias is not None:
        _check_shape((bias.shape[0],), (G,), "bias")
    if bias_rec is not None:
        _check_shape((bias_rec.shape[0],), (G,), "bias_rec")
    cdef bint hb = bias is not None, hr = bias_rec is not None
    cdef Py_ssize_t gb, g0, g1
    # Blocks of TILE_G gate rows: each source row's TILE_G values are read at once (the
    # plain loop read one value per row of the source, a cache line each).
    for gb in prange(_cdiv(G, TILE_G), nogil=True,
                     num_threads=threads_for(G * (H + F) * COST_COPY), schedule="static"):
        g0 = gb * TILE_G
        g1 = min(G, g0 + TILE_G)
        for j in range(H):
            for g in range(g0, g1):
                out[g, j] = kernel_rec[j, g]
        for g in range(g0, g1):
            out[g, H] = bias_rec[g] if hr else 0
            out[g, H + F + 1] = bias[g] if hb else 0
        for j in range(F):
            for g in range(g0, g1):
                out[g, H + 1 + j] = kernel[j, g]


def row_sums(const floating[:, ::1] m, floating[::1] out):
    """out (rows,) = the sums of m's rows (the bias gradients from the gate gradients)."""
    cdef Py_ssize_t R = m.shape[0], C = m.shape[1], r
    _check_shape((out.shape[0],), (R,), "out")
    if R == 0:
        return
    if C == 0:
        out[:] = 0
        return
    for r in prange(R, nogil=True, num_threads=threads_for(R * C), schedule="static"):
        out[r] = _sum(&m[r, 0], C)


cdef floating _sum(const floating *x, Py_ssize_t n) noexcept nogil:
    """Sum of n values in 8 interleaved partial sums (vectorizable without reassociation)."""
    cdef floating acc[8]
    cdef Py_ssize_t j, k, n8 = n - n % 8
    for k in range(8):
        acc[k] = 0
    for j in range(0, n8, 8):
        for k in range(8):
            acc[k] += x[j + k]
    for j in range(n8, n):
        acc[j - n8] += x[j]
    return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))


def lstm_forward(const floating[:, ::1] xf, const floating[:, ::1] weights,
                 floating[:, :, ::1] gates, floating[:, :, ::1] h, floating[:, :, ::1] c,
                 floating[:, :, ::1] act_c, const unsigned char[:, ::1] mask=None,
                 int activation=ACT_TANH, int recurrent_activation=ACT_SIGMOID):
    """Run an LSTM over T steps (see the layouts and rings above).

    xf (F, T*N): the inputs, feature-major (to_feature_major); weights (4H, H + F + 2)
    (step_weights); gates (T | 1, 4H, N) receives the gate values; h (H, T+1 | 2, N) and
    c (T+1 | 2, H, N): index 0 holds the initial state; act_c (T | 1, H, N). mask (T, N)
    or None: 0 keeps a sample's state. After the run, h[:, T % S] and c[T % Tc] hold the
    final state.
    """
    _forward(1, xf, weights, gates, h, c, act_c, mask, activation, recurrent_activation)


def lstm_backward(const floating[:, :, ::1] gates, const floating[:, :, ::1] c,
                  const floating[:, :, ::1] act_c, const floating[:, ::1] kernel_rec,
                  floating[:, ::1] dh, floating[:, ::1] dc, floating[:, ::1] dgates,
                  floating[:, ::1] scratch, const floating[:, :, ::1] dy=None,
                  const unsigned char[:, ::1] mask=None, int activation=ACT_TANH,
                  int recurrent_activation=ACT_SIGMOID, bint state_grad=False):
    """Backpropagation through time for a full (not ring) lstm_forward run.

    dh, dc (H, N): in, d(loss)/d(h_T) and d(loss)/d(c_T) (unit-major); out (with
    state_grad), the gradients w.r.t. the initial states. dgates (4H, T*N): receives
    d(loss)/d(gate pre-activations) of every step. kernel_rec (H, 4H) as stored.
    scratch (5H, N). dy (H, T, N) or None: the output sequence's gradient, unit-major.
    """
    cdef const floating[:, :, ::1] no_h = None
    _backward(1, gates, c, act_c, no_h, kernel_rec, dh, dc, dgates, dgates, scratch, dy, mask,
              activation, recurrent_activation, state_grad)


def gru_forward(const floating[:, ::1] xf, const floating[:, ::1] weights,
                floating[:, :, ::1] gates, floating[:, :, ::1] rh, floating[:, :, ::1] h,
                const unsigned char[:, ::1] mask=None, int activation=ACT_TANH,
                int recurrent_activation=ACT_SIGMOID):
    """Run a GRU (reset_after=True) over T steps (see the layouts and rings above).

    xf (F, T*N); weights (3H, H + F + 2) (step_weights with the recurrent bias);
    gates (T | 1, 3H, N) receives z, r and the candidate; rh (T | 1, H, N) the h block's
    recurrent product + bias (kept for backward); h (H, T+1 | 2, N).
    """
    cdef floating[:, :, ::1] no_c = None
    _forward(2, xf, weights, gates, h, no_c, rh, mask, activation, recurrent_activation)


def gru_backward(const floating[:, :, ::1] gates, const floating[:, :, ::1] rh,
                 const floating[:, :, ::1] h, const floating[:, ::1] kernel_rec,
                 floating[:, ::1] dh, floating[:, ::1] dgx, floating[:, ::1] dgr,
                 floating[:, ::1] scratch, const floating[:, :, ::1] dy=None,
                 const unsigned char[:, ::1] mask=None, int activation=ACT_TANH,
                 int recurrent_activation=ACT_SIGMOID, bint state_grad=False):
    """Backpropagation through time for a full gru_forward run.

    dh (H, N): in, d(loss)/d(h_T); out (with state_grad), d(loss)/d(initial h).
    dgx, dgr (3H, T*N): receive the gradients of the input and of the recurrent products.
    kernel_rec (H, 3H) as stored. scratch (3H, N). dy (H, T, N) or None.
    """
    cdef const floating[:, :, ::1] no_c = None
    cdef floating[:, ::1] no_dc = None
    _backward(2, gates, no_c, rh, h, kernel_rec, dh, no_dc, dgx, dgr, scratch, dy, mask,
              activation, recurrent_activation, state_grad)


def rnn_forward(const floating[:, ::1] xf, const floating[:, ::1] weights,
                floating[:, :, ::1] gates, floating[:, :, ::1] h,
                const unsigned char[:, ::1] mask=None, int activation=ACT_TANH):
    """Run a SimpleRNN over T steps. xf (F, T*N); weights (H, H + F + 2) (step_weights);
    gates (T | 1, H, N) receives h_t; h (H, T+1 | 2, N)."""
    cdef floating[:, :, ::1] no_c = None
    _forward(0, xf, weights, gates, h, no_c, no_c, mask, activation, ACT_LINEAR)


def rnn_backward(const floating[:, :, ::1] gates, const floating[:, ::1] kernel_rec,
                 floating[:, ::1] dh, floating[:, ::1] dgates, floating[:, ::1] scratch,
                 const floating[:, :, ::1] dy=None, const unsigned char[:, ::1] mask=None,
                 int activation=ACT_TANH, bint state_grad=False):
    """Backpropagation through time for a full rnn_forward run. gates (T, H, N): the
    states; dh (H, N): in d(loss)/d(h_T), out (with state_grad) d(loss)/d(initial h);
    dgates (H, T*N) receives the pre-activation gradients; kernel_rec (H, H) as stored;
    scratch (H, N); dy (H, T, N) or None."""
    cdef const floating[:, :, ::1] no_c = None
    cdef floating[:, ::1] no_dc = None
    _backward(0, gates, no_c, no_c, no_c, kernel_rec, dh, no_dc, dgates, dgates, scratch, dy,
              mask, activation, ACT_LINEAR, state_grad)



# -- element-wise activations (tests and references) ----------------------------------------
def activation_forward(int code, const floating[::1] x, floating[::1] out):
    """out = activation(x) with the cells' own math (float32: the polynomial exp/tanh)."""
    _check_code(code, "code")
    cdef Py_ssize_t n = x.shape[0]
    _check_shape((out.shape[0],), (n,), "out")
    if n == 0:
        return
    _sync_isa()
    memcpy(&out[0], &x[0], n * sizeof(floating))
    _act_inplace(code, &out[0], n)


# -- Embedding ------------------------------------------------------------------------------
def embedding_lookup(const int64_t[::1] ids, const floating[:, ::1] table, floating[:, ::1] out):
    """out[k] = table[ids[k]]. Every id must lie in [0, table rows)."""
    cdef Py_ssize_t K = ids.shape[0], V = table.shape[0], D = table.shape[1], k
    _check_shape((out.shape[0], out.shape[1]), (K, D), "out")
    for k in range(K):
        if ids[k] < 0 or ids[k] >= V:
            raise ValueError(f"ids[{k}] = {ids[k]} is outside [0, {V})")
    if K == 0 or D == 0:
        return
    for k in prange(K, nogil=True, num_threads=threads_for(K * D * COST_COPY), schedule="static"):
        memcpy(&out[k, 0], &table[ids[k], 0], D * sizeof(floating))


cdef enum:
    EMB_COLUMNS = 16   # columns of the table gradient per parallel block


def embedding_grad(const int64_t[::1] ids, const floating[:, ::1] dy, floating[:, ::1] dtable):
    """dtable = sum over k of dy[k] scattered to row ids[k] (zero elsewhere). Threads own
    blocks of columns, so the sum is deterministic and free of races."""
    cdef Py_ssize_t K = ids.shape[0], V = dtable.shape[0], D = dtable.shape[1], k, b, j, j1
    cdef Py_ssize_t row
    _check_shape((dy.shape[0], dy.shape[1]), (K, D), "dy")
    for k in range(K):
        if ids[k] < 0 or ids[k] >= V:
            raise ValueError(f"ids[{k}] = {ids[k]} is outside [0, {V})")
    if V == 0 or D == 0:
        return
    cdef Py_ssize_t blocks = (D + EMB_COLUMNS - 1) // EMB_COLUMNS
    for row in prange(V, nogil=True, num_threads=threads_for(V * D), schedule="static"):
        memset(&dtable[row, 0], 0, D * sizeof(floating))
    for b in prange(blocks, nogil=True, num_threads=threads_for(K * D * COST_COPY),
                    schedule="static"):
        j1 = min(D, (b + 1) * EMB_COLUMNS)
        for k in range(K):
            row = ids[k]
            for j in range(b * EMB_COLUMNS, j1):
                dtable[row, j] = dtable[row, j] + dy[k, j]
