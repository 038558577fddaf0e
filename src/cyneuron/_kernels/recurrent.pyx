"""Kernels of the sequence layers: recurrent cells over whole sequences, layout changes,
and the embedding lookup.

Recurrent layers keep sequences time-major inside, (T, N, ...): the input projection
of all steps is then one GEMM whose per-step slices are contiguous, and each step's
recurrent GEMM accumulates straight into its slice. A sequence kernel here runs the
whole loop over time with, per step, one `gemm` call (its direct plan reads the
recurrent kernel in place: nothing is packed again step after step) and one fused pass
over the batch rows (OpenMP) that applies every gate's activation and updates the
state. Backward (BPTT) is the mirror: one fused pass for the gate gradients, then one
GEMM with the transposed recurrent kernel for d(loss)/d(h_{t-1}).

Gate layouts follow Keras: LSTM i, f, c, o; GRU z, r, h with reset_after=True.
Activations are given by code (ACTIVATIONS maps names); their derivatives are taken
from the forward outputs, which the layers keep. float32 uses branch-free polynomial
exp and tanh (the Cephes expf/tanhf polynomials, a few ulp) whose loops the compiler
vectorizes; float64 uses libm, so gradient checks see exact functions.

Masks (T, N) uint8: 0 marks a padded step of a sample, whose state is carried over
unchanged (Keras's masking).
"""
import numpy as np

from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport exp, tanh
from libc.stdint cimport int64_t
from libc.string cimport memcpy, memset

from cyneuron._kernels._openmp cimport threads_for
from cyneuron._kernels.gemm import gemm as _gemm
from cyneuron._kernels.gemm import get_isa as _gemm_isa


cdef extern from *:
    """
    #include <math.h>
    #include <stdint.h>
    #include <string.h>

    /* The selects below (clamps, branch choice) only become vector blends when the
       compiler may assume that comparisons do not trap: GCC's default
       -ftrapping-math forbids it (clang's default allows it). This changes no result. */
    #if defined(__GNUC__) && !defined(__clang__)
    #pragma GCC push_options
    #pragma GCC optimize("no-trapping-math")
    #endif

    /* e^x, float32: Cody-Waite reduction x = n ln2 + r (|r| <= ln2 / 2), Cephes's
       degree-6 polynomial for e^r, 2^n built in the exponent bits. The clamps are
       selects and there are no calls, so loops over it vectorize; NaN stays NaN. */
    static inline float cn_expf(float x) {
        float t, n, r, z, p;
        int32_t bits;
        x = x > 88.0f ? 88.0f : x;
        x = x < -87.0f ? -87.0f : x;
        t = x * 1.44269504088896341f + 12582912.0f;   /* 1.5 * 2^23: rounds to an integer */
        n = t - 12582912.0f;
        r = x - n * 0.693359375f;
        r = r + n * 2.12194440e-4f;
        z = r * r;
        p = 1.9875691500e-4f;
        p = p * r + 1.3981999507e-3f;
        p = p * r + 8.3334519073e-3f;
        p = p * r + 4.1665795894e-2f;
        p = p * r + 1.6666665459e-1f;
        p = p * r + 5.0000001201e-1f;
        p = p * z + r + 1.0f;
        /* bits(t) = bits(1.5 * 2^23) + n; 0x4B3FFF81 = bits(1.5 * 2^23) - 127 (the bias) */
        memcpy(&bits, &t, sizeof bits);
        bits = (bits - 0x4B3FFF81) << 23;
        memcpy(&t, &bits, sizeof t);
        return p * t;
    }

    /* tanh, float32: Cephes's odd polynomial for |x| < 0.625, else 1 - 2 / (e^2|x| + 1);
       both are computed and one selected. */
    static inline float cn_tanhf(float x) {
        float ax = fabsf(x), z = x * x, s, b;
        s = -5.70498872745e-3f;
        s = s * z + 2.06390887954e-2f;
        s = s * z - 5.37397155531e-2f;
        s = s * z + 1.33314422036e-1f;
        s = s * z - 3.33332819422e-1f;
        s = s * z * ax + ax;
        b = 1.0f - 2.0f / (cn_expf(ax + ax) + 1.0f);
        return copysignf(ax < 0.625f ? s : b, x);
    }

    static inline float cn_sigmoidf(float x) { return 1.0f / (1.0f + cn_expf(-x)); }

    /* The loops, once per instruction set: the AVX2 copy (no FMA, so the same
       roundings and the same results as the baseline copy) is only called after
       cn_rnn_use_avx2 checked the CPU. */
    #define CN_ACT_LOOPS(suffix, attr)                                               \
        attr static void cn_tanhf_loop_##suffix(float *x, Py_ssize_t n) {           \
            for (Py_ssize_t j = 0; j < n; j++) x[j] = cn_tanhf(x[j]);              \
        }                                                                            \
        attr static void cn_sigmoidf_loop_##suffix(float *x, Py_ssize_t n) {        \
            for (Py_ssize_t j = 0; j < n; j++) x[j] = cn_sigmoidf(x[j]);           \
        }
    CN_ACT_LOOPS(generic, )
    #if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
    #define CN_RNN_HAVE_AVX2 1
    CN_ACT_LOOPS(avx2, __attribute__((target("avx2,fma"))))
    #else
    #define CN_RNN_HAVE_AVX2 0
    #endif

    static int cn_rnn_avx2 = 0;

    /* Use the AVX2 loops when asked and the CPU (and OS) support them; returns the choice. */
    static int cn_rnn_use_avx2(int on) {
    #if CN_RNN_HAVE_AVX2
        cn_rnn_avx2 = on && __builtin_cpu_supports("avx2");
    #else
        cn_rnn_avx2 = 0;
    #endif
        return cn_rnn_avx2;
    }

    static void cn_tanhf_inplace(float *x, Py_ssize_t n) {
    #if CN_RNN_HAVE_AVX2
        if (cn_rnn_avx2) { cn_tanhf_loop_avx2(x, n); return; }
    #endif
        cn_tanhf_loop_generic(x, n);
    }

    static void cn_sigmoidf_inplace(float *x, Py_ssize_t n) {
    #if CN_RNN_HAVE_AVX2
        if (cn_rnn_avx2) { cn_sigmoidf_loop_avx2(x, n); return; }
    #endif
        cn_sigmoidf_loop_generic(x, n);
    }

    #if defined(__GNUC__) && !defined(__clang__)
    #pragma GCC pop_options
    #endif
    """
    float cn_expf(float x) noexcept nogil
    float cn_tanhf(float x) noexcept nogil
    float cn_sigmoidf(float x) noexcept nogil
    void cn_tanhf_inplace(float *x, Py_ssize_t n) noexcept nogil
    void cn_sigmoidf_inplace(float *x, Py_ssize_t n) noexcept nogil
    int cn_rnn_use_avx2(int on) noexcept nogil


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


def _sync_isa():
    """Follow the GEMM's instruction set (CYNEURON_ISA, gemm.set_isa): the float32
    activation loops run their AVX2 copy unless the generic path is in use. Returns
    the path now in use."""
    return "avx2" if cn_rnn_use_avx2(_gemm_isa() != "generic") else "generic"


_sync_isa()


# -- scalar math ------------------------------------------------------------------------
cdef inline floating _tanh(floating x) noexcept nogil:
    if floating is float:
        return cn_tanhf(x)
    else:
        return tanh(x)


cdef inline floating _sigmoid(floating x) noexcept nogil:
    if floating is float:
        return cn_sigmoidf(x)
    else:
        if x >= 0:
            return 1 / (1 + exp(-x))
        return exp(x) / (1 + exp(x))


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
def to_time_major(const floating[:, :, ::1] x, floating[:, :, ::1] out, bint reverse=False,
                  const floating[:, ::1] scale=None):
    """out[t, n] = x[n, s] * scale[n] (scale: a per-sample feature mask, or None), where
    s = T - 1 - t when `reverse` (go_backwards) and t otherwise. x (N, T, F), out (T, N, F)."""
    cdef Py_ssize_t N = x.shape[0], T = x.shape[1], F = x.shape[2], t, n, f, s
    _check_shape((out.shape[0], out.shape[1], out.shape[2]), (T, N, F), "out")
    if scale is not None:
        _check_shape((scale.shape[0], scale.shape[1]), (N, F), "scale")
    if N == 0 or T == 0 or F == 0:
        return
    cdef bint has_scale = scale is not None
    for t in prange(T, nogil=True, num_threads=threads_for(N * T * F * COST_COPY),
                    schedule="static"):
        s = T - 1 - t if reverse else t
        for n in range(N):
            if has_scale:
                for f in range(F):
                    out[t, n, f] = x[n, s, f] * scale[n, f]
            else:
                memcpy(&out[t, n, 0], &x[n, s, 0], F * sizeof(floating))


def to_batch_major(const floating[:, :, ::1] xt, floating[:, :, ::1] out, bint reverse=False,
                   const floating[:, ::1] scale=None):
    """The inverse of to_time_major: out[n, s] = xt[t, n] * scale[n]. xt (T, N, F), out (N, T, F)."""
    cdef Py_ssize_t T = xt.shape[0], N = xt.shape[1], F = xt.shape[2], t, n, f, s
    _check_shape((out.shape[0], out.shape[1], out.shape[2]), (N, T, F), "out")
    if scale is not None:
        _check_shape((scale.shape[0], scale.shape[1]), (N, F), "scale")
    if N == 0 or T == 0 or F == 0:
        return
    cdef bint has_scale = scale is not None
    for n in prange(N, nogil=True, num_threads=threads_for(N * T * F * COST_COPY),
                    schedule="static"):
        for t in range(T):
            s = T - 1 - t if reverse else t
            if has_scale:
                for f in range(F):
                    out[n, s, f] = xt[t, n, f] * scale[n, f]
            else:
                memcpy(&out[n, s, 0], &xt[t, n, 0], F * sizeof(floating))


# -- LSTM ---------------------------------------------------------------------------------
cdef void _lstm_fwd_row(floating *g, const floating *c_prev, const floating *h_prev,
                        floating *c, floating *h, floating *ac, floating *out, Py_ssize_t H,
                        int act, int ract, bint keep) noexcept nogil:
    """One batch row of one step. g: the 4H pre-activations (i, f, c, o), replaced by the
    gate values; c = f c_prev + i g; ac = act(c); h = o ac. keep: a masked step."""
    cdef Py_ssize_t j
    if keep:
        memcpy(c, c_prev, H * sizeof(floating))
        memcpy(h, h_prev, H * sizeof(floating))
    else:
        _act_inplace(ract, g, 2 * H)
        _act_inplace(act, g + 2 * H, H)
        _act_inplace(ract, g + 3 * H, H)
        for j in range(H):
            c[j] = g[H + j] * c_prev[j] + g[j] * g[2 * H + j]
        memcpy(ac, c, H * sizeof(floating))
        _act_inplace(act, ac, H)
        for j in range(H):
            h[j] = g[3 * H + j] * ac[j]
    if out != NULL:
        memcpy(out, h, H * sizeof(floating))


cdef void _lstm_bwd_row(const floating *g, const floating *c_prev, const floating *ac,
                        const floating *dy, floating *dh, floating *dc, floating *dg,
                        floating *s, Py_ssize_t H, int act, int ract, bint keep,
                        bint direct) noexcept nogil:
    """One batch row of one step of BPTT. dh: d(loss)/d(h_t) from later steps (dy adds the
    output's own gradient); dc: d(loss)/d(c_t) in, d(loss)/d(c_{t-1}) out; dg: the 4H gate
    pre-activation gradients. With `direct`, dh leaves with the part of d(loss)/d(h_{t-1})
    that skips the recurrent kernel (zero, or all of it on a masked step). s: 5H scratch."""
    cdef Py_ssize_t j
    cdef floating dht, dcj
    if keep:
        memset(dg, 0, 4 * H * sizeof(floating))
        if dy != NULL:
            for j in range(H):
                dh[j] = dh[j] + dy[j]
        return
    _dact(ract, g, s, 2 * H)
    _dact(act, g + 2 * H, s + 2 * H, H)
    _dact(ract, g + 3 * H, s + 3 * H, H)
    _dact(act, ac, s + 4 * H, H)
    for j in range(H):
        dht = dh[j] + dy[j] if dy != NULL else dh[j]
        dcj = dc[j] + dht * g[3 * H + j] * s[4 * H + j]
        dg[j] = dcj * g[2 * H + j] * s[j]
        dg[H + j] = dcj * c_prev[j] * s[H + j]
        dg[2 * H + j] = dcj * g[j] * s[2 * H + j]
        dg[3 * H + j] = dht * ac[j] * s[3 * H + j]
        dc[j] = dcj * g[H + j]
        if direct:
            dh[j] = 0


def lstm_forward(floating[:, :, ::1] gates, const floating[:, ::1] kernel_rec,
                 floating[:, :, ::1] h, floating[:, :, ::1] c, floating[:, :, ::1] act_c,
                 floating[:, :, ::1] out=None, const unsigned char[:, ::1] mask=None,
                 int activation=ACT_TANH, int recurrent_activation=ACT_SIGMOID):
    """Run an LSTM over T steps (time-major).

    gates (T, N, 4H): in, x_t @ kernel + bias of every step; out, the gate values.
    kernel_rec (H, 4H). h, c (T + 1, N, H): [0] holds the initial state, step t writes
    [t + 1]. act_c (T, N, H): activation(c_t), kept for backward. out (N, T, H) or None:
    receives h_t at [:, t] as well (return_sequences). mask (T, N) or None.
    """
    cdef Py_ssize_t T = gates.shape[0], N = gates.shape[1], H = h.shape[2], t, n
    _check_shape((gates.shape[0], gates.shape[1], gates.shape[2]), (T, N, 4 * H), "gates")
    _check_shape((kernel_rec.shape[0], kernel_rec.shape[1]), (H, 4 * H), "kernel_rec")
    _check_shape((h.shape[0], h.shape[1], h.shape[2]), (T + 1, N, H), "h")
    _check_shape((c.shape[0], c.shape[1], c.shape[2]), (T + 1, N, H), "c")
    _check_shape((act_c.shape[0], act_c.shape[1], act_c.shape[2]), (T, N, H), "act_c")
    if out is not None:
        _check_shape((out.shape[0], out.shape[1], out.shape[2]), (N, T, H), "out")
    _check_mask(mask, T, N)
    _check_code(activation, "activation")
    _check_code(recurrent_activation, "recurrent_activation")
    if T == 0 or N == 0 or H == 0:
        return
    cdef bint has_out = out is not None, has_mask = mask is not None
    cdef floating *po
    cdef int nt = threads_for(N * H * COST_CELL)
    _sync_isa()
    gemm = _gemm
    g_nd, h_nd, w_nd = np.asarray(gates), np.asarray(h), np.asarray(kernel_rec)
    for t in range(T):
        gemm(h_nd[t], w_nd, g_nd[t], None, 0, 0.0, True)
        for n in prange(N, nogil=True, num_threads=nt, schedule="static"):
            po = &out[n, t, 0] if has_out else NULL
            _lstm_fwd_row(&gates[t, n, 0], &c[t, n, 0], &h[t, n, 0], &c[t + 1, n, 0],
                          &h[t + 1, n, 0], &act_c[t, n, 0], po, H, activation,
                          recurrent_activation, has_mask and mask[t, n] == 0)


def lstm_backward(const floating[:, :, ::1] gates, const floating[:, :, ::1] c,
                  const floating[:, :, ::1] act_c, const floating[:, ::1] kernel_rec_t,
                  floating[:, ::1] dh, floating[:, ::1] dc, floating[:, :, ::1] dgates,
                  floating[:, ::1] scratch, const floating[:, :, ::1] dy=None,
                  const unsigned char[:, ::1] mask=None, int activation=ACT_TANH,
                  int recurrent_activation=ACT_SIGMOID, bint state_grad=False):
    """Backpropagation through time for lstm_forward's run.

    dh, dc (N, H): in, d(loss)/d(h_T) and d(loss)/d(c_T); out (with state_grad), the
    gradients w.r.t. the initial h and c. dgates (T, N, 4H): receives d(loss)/d(gate
    pre-activations) of every step, the input projection's gradient. kernel_rec_t (4H, H):
    the recurrent kernel transposed, contiguous. scratch (N, 5H). dy (N, T, H) or None:
    the gradient of the output sequence.
    """
    cdef Py_ssize_t T = gates.shape[0], N = gates.shape[1], H = dh.shape[1], t, n
    _check_shape((gates.shape[0], gates.shape[1], gates.shape[2]), (T, N, 4 * H), "gates")
    _check_shape((c.shape[0], c.shape[1], c.shape[2]), (T + 1, N, H), "c")
    _check_shape((act_c.shape[0], act_c.shape[1], act_c.shape[2]), (T, N, H), "act_c")
    _check_shape((kernel_rec_t.shape[0], kernel_rec_t.shape[1]), (4 * H, H), "kernel_rec_t")
    _check_shape((dh.shape[0], dh.shape[1]), (N, H), "dh")
    _check_shape((dc.shape[0], dc.shape[1]), (N, H), "dc")
    _check_shape((dgates.shape[0], dgates.shape[1], dgates.shape[2]), (T, N, 4 * H), "dgates")
    _check_shape((scratch.shape[0], scratch.shape[1]), (N, 5 * H), "scratch")
    if dy is not None:
        _check_shape((dy.shape[0], dy.shape[1], dy.shape[2]), (N, T, H), "dy")
    _check_mask(mask, T, N)
    _check_code(activation, "activation")
    _check_code(recurrent_activation, "recurrent_activation")
    if T == 0 or N == 0 or H == 0:
        return
    cdef bint has_dy = dy is not None, has_mask = mask is not None
    cdef const floating *pdy
    cdef int nt = threads_for(N * H * COST_CELL)
    gemm = _gemm
    dg_nd, w_nd, dh_nd = np.asarray(dgates), np.asarray(kernel_rec_t), np.asarray(dh)
    for t in range(T - 1, -1, -1):
        for n in prange(N, nogil=True, num_threads=nt, schedule="static"):
            pdy = &dy[n, t, 0] if has_dy else NULL
            _lstm_bwd_row(&gates[t, n, 0], &c[t, n, 0], &act_c[t, n, 0], pdy, &dh[n, 0],
                          &dc[n, 0], &dgates[t, n, 0], &scratch[n, 0], H, activation,
                          recurrent_activation, has_mask and mask[t, n] == 0, has_mask)
        if t > 0 or state_grad:
            gemm(dg_nd[t], w_nd, dh_nd, None, 0, 0.0, has_mask)


# -- GRU (reset_after=True) ---------------------------------------------------------------
cdef void _gru_fwd_row(floating *g, const floating *rec, const floating *h_prev, floating *h,
                       floating *out, Py_ssize_t H, int act, int ract, bint keep) noexcept nogil:
    """One batch row of one step. g: x_t @ kernel + input bias for (z, r, h), replaced by
    z, r and the candidate hh; rec: h_prev @ recurrent_kernel + recurrent bias.
    z, r = ract(g + rec); hh = act(g_h + r * rec_h); h = z h_prev + (1 - z) hh."""
    cdef Py_ssize_t j
    if keep:
        memcpy(h, h_prev, H * sizeof(floating))
    else:
        for j in range(2 * H):
            g[j] = g[j] + rec[j]
        _act_inplace(ract, g, 2 * H)
        for j in range(H):
            g[2 * H + j] = g[2 * H + j] + g[H + j] * rec[2 * H + j]
        _act_inplace(act, g + 2 * H, H)
        for j in range(H):
            h[j] = g[2 * H + j] + g[j] * (h_prev[j] - g[2 * H + j])
    if out != NULL:
        memcpy(out, h, H * sizeof(floating))


cdef void _gru_bwd_row(const floating *g, const floating *rec, const floating *h_prev,
                       const floating *dy, floating *dh, floating *dgx, floating *dgr,
                       floating *s, Py_ssize_t H, int act, int ract, bint keep) noexcept nogil:
    """One batch row of BPTT. dgx: gradients of the input projection (z, r, h); dgr: of the
    recurrent projection (they differ in the h part, which r multiplies). dh leaves with
    the part of d(loss)/d(h_{t-1}) that skips the recurrent kernel. s: 3H scratch."""
    cdef Py_ssize_t j
    cdef floating dht, dn, dz, dr
    if keep:
        memset(dgx, 0, 3 * H * sizeof(floating))
        memset(dgr, 0, 3 * H * sizeof(floating))
        if dy != NULL:
            for j in range(H):
                dh[j] = dh[j] + dy[j]
        return
    _dact(ract, g, s, 2 * H)
    _dact(act, g + 2 * H, s + 2 * H, H)
    for j in range(H):
        dht = dh[j] + dy[j] if dy != NULL else dh[j]
        dn = dht * (1 - g[j]) * s[2 * H + j]
        dz = dht * (h_prev[j] - g[2 * H + j]) * s[j]
        dr = dn * rec[2 * H + j] * s[H + j]
        dgx[j] = dz
        dgr[j] = dz
        dgx[H + j] = dr
        dgr[H + j] = dr
        dgx[2 * H + j] = dn
        dgr[2 * H + j] = dn * g[H + j]
        dh[j] = dht * g[j]


def gru_forward(floating[:, :, ::1] gates, floating[:, :, ::1] rec,
                const floating[:, ::1] kernel_rec, const floating[::1] bias_rec,
                floating[:, :, ::1] h, floating[:, :, ::1] out=None,
                const unsigned char[:, ::1] mask=None, int activation=ACT_TANH,
                int recurrent_activation=ACT_SIGMOID):
    """Run a GRU (reset_after=True) over T steps (time-major).

    gates (T, N, 3H): in, x_t @ kernel + input bias; out, z, r and the candidate.
    rec (T, N, 3H): receives h_{t-1} @ kernel_rec + bias_rec (kept for backward).
    kernel_rec (H, 3H); bias_rec (3H,) or None. h (T + 1, N, H): [0] the initial state.
    out (N, T, H) or None: receives h_t at [:, t]. mask (T, N) or None.
    """
    cdef Py_ssize_t T = gates.shape[0], N = gates.shape[1], H = h.shape[2], t, n
    _check_shape((gates.shape[0], gates.shape[1], gates.shape[2]), (T, N, 3 * H), "gates")
    _check_shape((rec.shape[0], rec.shape[1], rec.shape[2]), (T, N, 3 * H), "rec")
    _check_shape((kernel_rec.shape[0], kernel_rec.shape[1]), (H, 3 * H), "kernel_rec")
    if bias_rec is not None:
        _check_shape((bias_rec.shape[0],), (3 * H,), "bias_rec")
    _check_shape((h.shape[0], h.shape[1], h.shape[2]), (T + 1, N, H), "h")
    if out is not None:
        _check_shape((out.shape[0], out.shape[1], out.shape[2]), (N, T, H), "out")
    _check_mask(mask, T, N)
    _check_code(activation, "activation")
    _check_code(recurrent_activation, "recurrent_activation")
    if T == 0 or N == 0 or H == 0:
        return
    cdef bint has_out = out is not None, has_mask = mask is not None
    cdef floating *po
    cdef int nt = threads_for(N * H * COST_CELL)
    _sync_isa()
    gemm = _gemm
    r_nd, h_nd, w_nd = np.asarray(rec), np.asarray(h), np.asarray(kernel_rec)
    b_nd = np.asarray(bias_rec) if bias_rec is not None else None
    for t in range(T):
        gemm(h_nd[t], w_nd, r_nd[t], b_nd, 0, 0.0, False)
        for n in prange(N, nogil=True, num_threads=nt, schedule="static"):
            po = &out[n, t, 0] if has_out else NULL
            _gru_fwd_row(&gates[t, n, 0], &rec[t, n, 0], &h[t, n, 0], &h[t + 1, n, 0], po, H,
                         activation, recurrent_activation, has_mask and mask[t, n] == 0)


def gru_backward(const floating[:, :, ::1] gates, const floating[:, :, ::1] rec,
                 const floating[:, :, ::1] h, const floating[:, ::1] kernel_rec_t,
                 floating[:, ::1] dh, floating[:, :, ::1] dgx, floating[:, :, ::1] dgr,
                 floating[:, ::1] scratch, const floating[:, :, ::1] dy=None,
                 const unsigned char[:, ::1] mask=None, int activation=ACT_TANH,
                 int recurrent_activation=ACT_SIGMOID, bint state_grad=False):
    """Backpropagation through time for gru_forward's run.

    dh (N, H): in, d(loss)/d(h_T); out (with state_grad), d(loss)/d(initial h).
    dgx, dgr (T, N, 3H): receive the gradients of the input and of the recurrent
    projections. kernel_rec_t (3H, H): the recurrent kernel transposed, contiguous.
    scratch (N, 3H). dy (N, T, H) or None: the gradient of the output sequence.
    """
    cdef Py_ssize_t T = gates.shape[0], N = gates.shape[1], H = dh.shape[1], t, n
    _check_shape((gates.shape[0], gates.shape[1], gates.shape[2]), (T, N, 3 * H), "gates")
    _check_shape((rec.shape[0], rec.shape[1], rec.shape[2]), (T, N, 3 * H), "rec")
    _check_shape((h.shape[0], h.shape[1], h.shape[2]), (T + 1, N, H), "h")
    _check_shape((kernel_rec_t.shape[0], kernel_rec_t.shape[1]), (3 * H, H), "kernel_rec_t")
    _check_shape((dh.shape[0], dh.shape[1]), (N, H), "dh")
    _check_shape((dgx.shape[0], dgx.shape[1], dgx.shape[2]), (T, N, 3 * H), "dgx")
    _check_shape((dgr.shape[0], dgr.shape[1], dgr.shape[2]), (T, N, 3 * H), "dgr")
    _check_shape((scratch.shape[0], scratch.shape[1]), (N, 3 * H), "scratch")
    if dy is not None:
        _check_shape((dy.shape[0], dy.shape[1], dy.shape[2]), (N, T, H), "dy")
    _check_mask(mask, T, N)
    _check_code(activation, "activation")
    _check_code(recurrent_activation, "recurrent_activation")
    if T == 0 or N == 0 or H == 0:
        return
    cdef bint has_dy = dy is not None, has_mask = mask is not None
    cdef const floating *pdy
    cdef int nt = threads_for(N * H * COST_CELL)
    gemm = _gemm
    dg_nd, w_nd, dh_nd = np.asarray(dgr), np.asarray(kernel_rec_t), np.asarray(dh)
    for t in range(T - 1, -1, -1):
        for n in prange(N, nogil=True, num_threads=nt, schedule="static"):
            pdy = &dy[n, t, 0] if has_dy else NULL
            _gru_bwd_row(&gates[t, n, 0], &rec[t, n, 0], &h[t, n, 0], pdy, &dh[n, 0],
                         &dgx[t, n, 0], &dgr[t, n, 0], &scratch[n, 0], H, activation,
                         recurrent_activation, has_mask and mask[t, n] == 0)
        if t > 0 or state_grad:
            gemm(dg_nd[t], w_nd, dh_nd, None, 0, 0.0, True)


# -- SimpleRNN ----------------------------------------------------------------------------
cdef void _rnn_fwd_row(floating *g, const floating *h_prev, floating *h, floating *out,
                       Py_ssize_t H, int act, bint keep) noexcept nogil:
    """h = act(g), g = x_t @ kernel + bias + h_prev @ recurrent_kernel (replaced by h)."""
    if keep:
        memcpy(h, h_prev, H * sizeof(floating))
    else:
        _act_inplace(act, g, H)
        memcpy(h, g, H * sizeof(floating))
    if out != NULL:
        memcpy(out, h, H * sizeof(floating))


cdef void _rnn_bwd_row(const floating *hh, const floating *dy, floating *dh, floating *dg,
                       floating *s, Py_ssize_t H, int act, bint keep, bint direct) noexcept nogil:
    """dg = (dh + dy) act'(h); with `direct`, dh leaves with the part of d(loss)/d(h_{t-1})
    that skips the recurrent kernel (zero, or all of it on a masked step). s: H scratch."""
    cdef Py_ssize_t j
    cdef floating dht
    if keep:
        memset(dg, 0, H * sizeof(floating))
        if dy != NULL:
            for j in range(H):
                dh[j] = dh[j] + dy[j]
        return
    _dact(act, hh, s, H)
    for j in range(H):
        dht = dh[j] + dy[j] if dy != NULL else dh[j]
        dg[j] = dht * s[j]
        if direct:
            dh[j] = 0


def rnn_forward(floating[:, :, ::1] gates, const floating[:, ::1] kernel_rec,
                floating[:, :, ::1] h, floating[:, :, ::1] out=None,
                const unsigned char[:, ::1] mask=None, int activation=ACT_TANH):
    """Run a SimpleRNN over T steps (time-major).

    gates (T, N, H): in, x_t @ kernel + bias; out, h_t. kernel_rec (H, H).
    h (T + 1, N, H): [0] the initial state, step t writes [t + 1]. out (N, T, H) or None.
    """
    cdef Py_ssize_t T = gates.shape[0], N = gates.shape[1], H = h.shape[2], t, n
    _check_shape((gates.shape[0], gates.shape[1], gates.shape[2]), (T, N, H), "gates")
    _check_shape((kernel_rec.shape[0], kernel_rec.shape[1]), (H, H), "kernel_rec")
    _check_shape((h.shape[0], h.shape[1], h.shape[2]), (T + 1, N, H), "h")
    if out is not None:
        _check_shape((out.shape[0], out.shape[1], out.shape[2]), (N, T, H), "out")
    _check_mask(mask, T, N)
    _check_code(activation, "activation")
    if T == 0 or N == 0 or H == 0:
        return
    cdef bint has_out = out is not None, has_mask = mask is not None
    cdef floating *po
    cdef int nt = threads_for(N * H * COST_CELL)
    _sync_isa()
    gemm = _gemm
    g_nd, h_nd, w_nd = np.asarray(gates), np.asarray(h), np.asarray(kernel_rec)
    for t in range(T):
        gemm(h_nd[t], w_nd, g_nd[t], None, 0, 0.0, True)
        for n in prange(N, nogil=True, num_threads=nt, schedule="static"):
            po = &out[n, t, 0] if has_out else NULL
            _rnn_fwd_row(&gates[t, n, 0], &h[t, n, 0], &h[t + 1, n, 0], po, H, activation,
                         has_mask and mask[t, n] == 0)


def rnn_backward(const floating[:, :, ::1] h, const floating[:, ::1] kernel_rec_t,
                 floating[:, ::1] dh, floating[:, :, ::1] dgates, floating[:, ::1] scratch,
                 const floating[:, :, ::1] dy=None, const unsigned char[:, ::1] mask=None,
                 int activation=ACT_TANH, bint state_grad=False):
    """Backpropagation through time for rnn_forward's run. h (T + 1, N, H): the states;
    dh (N, H): in d(loss)/d(h_T), out (with state_grad) d(loss)/d(initial h);
    dgates (T, N, H): receives the pre-activation gradients; scratch (N, H)."""
    cdef Py_ssize_t T = h.shape[0] - 1, N = h.shape[1], H = h.shape[2], t, n
    if T < 0:
        raise ValueError("h must hold at least the initial state")
    _check_shape((kernel_rec_t.shape[0], kernel_rec_t.shape[1]), (H, H), "kernel_rec_t")
    _check_shape((dh.shape[0], dh.shape[1]), (N, H), "dh")
    _check_shape((dgates.shape[0], dgates.shape[1], dgates.shape[2]), (T, N, H), "dgates")
    _check_shape((scratch.shape[0], scratch.shape[1]), (N, H), "scratch")
    if dy is not None:
        _check_shape((dy.shape[0], dy.shape[1], dy.shape[2]), (N, T, H), "dy")
    _check_mask(mask, T, N)
    _check_code(activation, "activation")
    if T == 0 or N == 0 or H == 0:
        return
    cdef bint has_dy = dy is not None, has_mask = mask is not None
    cdef const floating *pdy
    cdef int nt = threads_for(N * H * COST_CELL)
    gemm = _gemm
    dg_nd, w_nd, dh_nd = np.asarray(dgates), np.asarray(kernel_rec_t), np.asarray(dh)
    for t in range(T - 1, -1, -1):
        for n in prange(N, nogil=True, num_threads=nt, schedule="static"):
            pdy = &dy[n, t, 0] if has_dy else NULL
            _rnn_bwd_row(&h[t + 1, n, 0], pdy, &dh[n, 0], &dgates[t, n, 0], &scratch[n, 0],
                         H, activation, has_mask and mask[t, n] == 0, has_mask)
        if t > 0 or state_grad:
            gemm(dg_nd[t], w_nd, dh_nd, None, 0, 0.0, has_mask)


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
