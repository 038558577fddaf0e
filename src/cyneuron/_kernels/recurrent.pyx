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
"""
import numpy as np

from cython cimport floating
from cython.parallel cimport parallel, prange
from libc.math cimport tanh
from libc.stdint cimport int64_t
from libc.string cimport memcpy, memset

from cyneuron._kernels._openmp cimport (
    cn_omp_barrier, cn_omp_max_threads, cn_omp_num_threads, cn_omp_thread_num, threads_for)
from cyneuron._kernels cimport _math
from cyneuron._kernels.gemm cimport dgemm_serial, sgemm_serial
from cyneuron._kernels.gemm import block_sizes as _gemm_block_sizes
from cyneuron._kernels.gemm import get_isa as _gemm_isa


cdef extern from *:
    """
    #include <math.h>
    #include <stdint.h>
    #include <string.h>

    #if defined(_MSC_VER)
    #define CN_RESTRICT __restrict
    #else
    #define CN_RESTRICT restrict
    #endif

    /* The selects below (clamps, branch choice) only become vector blends when the
       compiler may assume that comparisons do not trap: GCC's default
       -ftrapping-math forbids it (clang's default allows it). This changes no result. */
    #if defined(__GNUC__) && !defined(__clang__)
    #pragma GCC push_options
    #pragma GCC optimize("no-trapping-math")
    #endif

    /* cn_expf, cn_tanhf, cn_sigmoidf: the float32 polynomials, branch-free */
    #include "cn_expf.h"

    /* The scalar loops (the generic copy; the vector copies below, whose fused
       multiply-adds round differently, stay within an ulp or two of it and are only
       called after cn_rnn_use_isa checked the CPU). */
    #define CN_ACT_LOOPS(suffix, attr)                                               \
        attr static void cn_tanhf_loop_##suffix(float *x, Py_ssize_t n) {           \
            for (Py_ssize_t j = 0; j < n; j++) x[j] = cn_tanhf(x[j]);              \
        }                                                                            \
        attr static void cn_sigmoidf_loop_##suffix(float *x, Py_ssize_t n) {        \
            for (Py_ssize_t j = 0; j < n; j++) x[j] = cn_sigmoidf(x[j]);           \
        }
    /* One unit's row of a step (n samples) with the default activations (sigmoid gates,
       tanh candidate and state) in a single pass: every value is read and written once.
       p*: the input projection rows, b*: biases, g*: the recurrent products in, gate
       values out. */
    #define CN_FUSED_ROWS(suffix, attr)                                                  \
        attr static void cn_lstm_fwd_row_##suffix(Py_ssize_t n, float *CN_RESTRICT gi,   \
                float *CN_RESTRICT gf, float *CN_RESTRICT gc, float *CN_RESTRICT go,     \
                const float *CN_RESTRICT pi, const float *CN_RESTRICT pf,                \
                const float *CN_RESTRICT pc, const float *CN_RESTRICT po, float bi,      \
                float bf, float bc, float bo, const float *CN_RESTRICT cp,               \
                float *CN_RESTRICT c, float *CN_RESTRICT ac, float *CN_RESTRICT h) {     \
            for (Py_ssize_t k = 0; k < n; k++) {                                         \
                float i = cn_sigmoidf(gi[k] + pi[k] + bi);                               \
                float f = cn_sigmoidf(gf[k] + pf[k] + bf);                               \
                float g = cn_tanhf(gc[k] + pc[k] + bc);                                  \
                float o = cn_sigmoidf(go[k] + po[k] + bo);                               \
                float cc = f * cp[k] + i * g;                                            \
                float a = cn_tanhf(cc);                                                  \
                gi[k] = i; gf[k] = f; gc[k] = g; go[k] = o;                              \
                c[k] = cc; ac[k] = a; h[k] = o * a;                                      \
            }                                                                            \
        }                                                                                \
        attr static void cn_gru_fwd_row_##suffix(Py_ssize_t n, float *CN_RESTRICT gz,    \
                float *CN_RESTRICT gr, float *CN_RESTRICT gh, const float *CN_RESTRICT pz,\
                const float *CN_RESTRICT pr, const float *CN_RESTRICT ph, float bz,      \
                float br, float bh, float rbz, float rbr, float rbh,                      \
                const float *CN_RESTRICT hp, float *CN_RESTRICT rh, float *CN_RESTRICT h) {\
            for (Py_ssize_t k = 0; k < n; k++) {                                         \
                float z = cn_sigmoidf(gz[k] + rbz + pz[k] + bz);                         \
                float r = cn_sigmoidf(gr[k] + rbr + pr[k] + br);                         \
                float rk = gh[k] + rbh;                                                  \
                float hh = cn_tanhf(ph[k] + bh + r * rk);                                \
                gz[k] = z; gr[k] = r; gh[k] = hh; rh[k] = rk;                            \
                h[k] = hh + z * (hp[k] - hh);                                            \
            }                                                                            \
        }
    CN_FUSED_ROWS(generic, )
    CN_ACT_LOOPS(generic, )

    /* Inference GRU rows on one sliver of w samples (the packed operand's layout): m
       units' rows of z, r pre-activations (gz, gr), the candidate's recurrent product
       + bias (gh) and input product + bias (gx), each row W apart; h_{t-1} read from hp
       and h_t written to hn (rows W apart) and to ho (rows ldo apart). keep (w) or
       NULL: 0 carries h_{t-1} over. Nothing else is stored. */
    static void cn_gru_ring_rows_generic(Py_ssize_t m, Py_ssize_t w, Py_ssize_t W,
            float *gz, const float *gr, const float *gh, float *gx,
            const float *hp, float *hn, float *ho, Py_ssize_t ldo,
            const unsigned char *keep) {
        for (Py_ssize_t i = 0; i < m; i++) {
            for (Py_ssize_t k = 0; k < w; k++) {
                Py_ssize_t e = i * W + k;
                float z = cn_sigmoidf(gz[e]), r = cn_sigmoidf(gr[e]);
                float hh = cn_tanhf(gx[e] + r * gh[e]);
                float v = hh + z * (hp[e] - hh);
                if (keep != NULL && keep[k] == 0) v = hp[e];
                hn[e] = v; ho[i * ldo + k] = v;
            }
        }
    }
    #if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
    #define CN_RNN_HAVE_SIMD 1
    /* Vector copies of the float32 math, one per instruction set, from one template
       (csrc/rnn_gates_template.h: the polynomials, the reciprocal + Newton step and the
       two-pass rows are written once). Only called after cn_rnn_use_isa checked the CPU. */
    #include <immintrin.h>

    #define CN_SFX avx2
    #define CN_VW 8
    #define CN_V __m256
    #define CN_ATTR __attribute__((target("avx2,fma")))
    #define V_LD _mm256_loadu_ps
    #define V_ST _mm256_storeu_ps
    #define V_SET1 _mm256_set1_ps
    #define V_ADD _mm256_add_ps
    #define V_SUB _mm256_sub_ps
    #define V_MUL _mm256_mul_ps
    #define V_FMADD _mm256_fmadd_ps
    #define V_FNMADD _mm256_fnmadd_ps
    #define V_MIN _mm256_min_ps
    #define V_MAX _mm256_max_ps
    #define V_RCP _mm256_rcp_ps
    #define V_XOR _mm256_xor_ps
    #define V_AND _mm256_and_ps
    #define V_ANDNOT _mm256_andnot_ps
    #define V_OR _mm256_or_ps
    #define V_SELECT_LT(a, c, x, y) _mm256_blendv_ps((y), (x), _mm256_cmp_ps((a), (c), _CMP_LT_OQ))
    #define V_POW2N(t) _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_sub_epi32( \
        _mm256_castps_si256(t), _mm256_set1_epi32(0x4B3FFF81)), 23))
    #include "rnn_gates_template.h"
    #undef CN_SFX
    #undef CN_VW
    #undef CN_V
    #undef CN_ATTR
    #undef V_LD
    #undef V_ST
    #undef V_SET1
    #undef V_ADD
    #undef V_SUB
    #undef V_MUL
    #undef V_FMADD
    #undef V_FNMADD
    #undef V_MIN
    #undef V_MAX
    #undef V_RCP
    #undef V_XOR
    #undef V_AND
    #undef V_ANDNOT
    #undef V_OR
    #undef V_SELECT_LT
    #undef V_POW2N

    /* AVX-512F only (bit operations through the integer forms, which need no DQ);
       rcp14 is a finer estimate than AVX's rcp, so results differ from the AVX2 copy
       by an ulp or so. */
    #define CN_SFX avx512
    #define CN_VW 16
    #define CN_V __m512
    #define CN_ATTR __attribute__((target("avx512f")))
    #define CN_BITS(op, a, b) _mm512_castsi512_ps(op(_mm512_castps_si512(a), _mm512_castps_si512(b)))
    #define V_LD _mm512_loadu_ps
    #define V_ST _mm512_storeu_ps
    #define V_SET1 _mm512_set1_ps
    #define V_ADD _mm512_add_ps
    #define V_SUB _mm512_sub_ps
    #define V_MUL _mm512_mul_ps
    #define V_FMADD _mm512_fmadd_ps
    #define V_FNMADD _mm512_fnmadd_ps
    #define V_MIN _mm512_min_ps
    #define V_MAX _mm512_max_ps
    #define V_RCP _mm512_rcp14_ps
    #define V_XOR(a, b) CN_BITS(_mm512_xor_si512, a, b)
    #define V_AND(a, b) CN_BITS(_mm512_and_si512, a, b)
    #define V_ANDNOT(a, b) CN_BITS(_mm512_andnot_si512, a, b)
    #define V_OR(a, b) CN_BITS(_mm512_or_si512, a, b)
    #define V_SELECT_LT(a, c, x, y) \
        _mm512_mask_blend_ps(_mm512_cmp_ps_mask((a), (c), _CMP_LT_OQ), (y), (x))
    #define V_POW2N(t) _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_sub_epi32( \
        _mm512_castps_si512(t), _mm512_set1_epi32(0x4B3FFF81)), 23))
    #include "rnn_gates_template.h"
    #else
    #define CN_RNN_HAVE_SIMD 0
    #endif

    /* The vector copy in use: 0 none (generic C), 1 AVX2 + FMA, 2 AVX-512. */
    static int cn_rnn_isa = 0;

    /* Use the copy of instruction set `isa` (the GEMM's: 0 generic, 1 AVX2, 2 AVX-512)
       if the CPU (and OS, which the GEMM's check covers) support it, else the widest
       below it that they do; returns the choice. */
    static int cn_rnn_use_isa(int isa) {
    #if CN_RNN_HAVE_SIMD
        if (isa >= 2 && !__builtin_cpu_supports("avx512f")) isa = 1;
        if (isa >= 1 && !(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")))
            isa = 0;
        cn_rnn_isa = isa < 0 ? 0 : (isa > 2 ? 2 : isa);
    #else
        cn_rnn_isa = 0;
    #endif
        return cn_rnn_isa;
    }

    /* The gradient loops of one unit's row (n samples, no mask), float and double.
       Their many arrays never overlap: `restrict` says so, so they vectorize. */
    #define CN_BWD_ROWS(T, sfx)                                                           \
    static void cn_lstm_bwd_row_##sfx(Py_ssize_t n, const T *CN_RESTRICT gi,             \
            const T *CN_RESTRICT gf, const T *CN_RESTRICT gc, const T *CN_RESTRICT go,    \
            const T *CN_RESTRICT si, const T *CN_RESTRICT sf, const T *CN_RESTRICT sc,    \
            const T *CN_RESTRICT so, const T *CN_RESTRICT sa, const T *CN_RESTRICT cp,    \
            const T *CN_RESTRICT ac, const T *CN_RESTRICT dh, T *CN_RESTRICT dc,          \
            T *CN_RESTRICT di, T *CN_RESTRICT df, T *CN_RESTRICT dcc, T *CN_RESTRICT dout) { \
        for (Py_ssize_t k = 0; k < n; k++) {                                             \
            T dht = dh[k];                                                               \
            T dcj = dc[k] + dht * go[k] * sa[k];                                         \
            di[k] = dcj * gc[k] * si[k];                                                 \
            df[k] = dcj * cp[k] * sf[k];                                                 \
            dcc[k] = dcj * gi[k] * sc[k];                                                \
            dout[k] = dht * ac[k] * so[k];                                               \
            dc[k] = dcj * gf[k];                                                         \
        }                                                                                \
    }                                                                                    \
    static void cn_gru_bwd_row_##sfx(Py_ssize_t n, const T *CN_RESTRICT z,               \
            const T *CN_RESTRICT r, const T *CN_RESTRICT hh, const T *CN_RESTRICT sz,     \
            const T *CN_RESTRICT sr, const T *CN_RESTRICT sh, const T *CN_RESTRICT rh,    \
            const T *CN_RESTRICT hp, T *CN_RESTRICT dh, T *CN_RESTRICT dxz,              \
            T *CN_RESTRICT dxr, T *CN_RESTRICT dxh, T *CN_RESTRICT drz,                   \
            T *CN_RESTRICT drr, T *CN_RESTRICT drh) {                                     \
        for (Py_ssize_t k = 0; k < n; k++) {                                             \
            T dht = dh[k];                                                               \
            T dn = dht * (1 - z[k]) * sh[k];                                             \
            T dz = dht * (hp[k] - hh[k]) * sz[k];                                        \
            T dr = dn * rh[k] * sr[k];                                                   \
            dxz[k] = dz; drz[k] = dz;                                                    \
            dxr[k] = dr; drr[k] = dr;                                                    \
            dxh[k] = dn; drh[k] = dn * r[k];                                             \
            dh[k] = dht * z[k];                                                          \
        }                                                                                \
    }
    CN_BWD_ROWS(float, f)
    CN_BWD_ROWS(double, d)

    /* The same with the default activations (sigmoid gates, tanh candidate and state),
       their derivatives taken inline from the outputs, and the output's own gradient dy
       (or NULL) added: one pass over a row, nothing written to scratch. dh leaves holding
       dh + dy (GRU: its direct part, (dh + dy) z). */
    /* (dy is tested once, outside the loops: a select on it inside becomes a masked
       load through a NULL pointer, which AMD CPUs execute very slowly.) */
    #define CN_LSTM_BWD_DEF_BODY(T, DHT)                                                    \
        for (Py_ssize_t k = 0; k < n; k++) {                                             \
            T dht = DHT;                                                                 \
            T i = gi[k], f = gf[k], g = gc[k], o = go[k], a = ac[k];                     \
            T dcj = dc[k] + dht * o * (1 - a * a);                                       \
            di[k] = dcj * g * (i * (1 - i));                                             \
            df[k] = dcj * cp[k] * (f * (1 - f));                                         \
            dcc[k] = dcj * i * (1 - g * g);                                              \
            dout[k] = dht * a * (o * (1 - o));                                           \
            dc[k] = dcj * f;                                                             \
            dh[k] = dht;                                                                 \
        }
    #define CN_GRU_BWD_DEF_BODY(T, DHT)                                                     \
        for (Py_ssize_t k = 0; k < n; k++) {                                             \
            T dht = DHT;                                                                 \
            T zk = z[k], rk = r[k], hk = hh[k];                                          \
            T dn = dht * (1 - zk) * (1 - hk * hk);                                       \
            T dz = dht * (hp[k] - hk) * (zk * (1 - zk));                                 \
            T dr = dn * rh[k] * (rk * (1 - rk));                                         \
            dxz[k] = dz; drz[k] = dz;                                                    \
            dxr[k] = dr; drr[k] = dr;                                                    \
            dxh[k] = dn; drh[k] = dn * rk;                                               \
            dh[k] = dht * zk;                                                            \
        }
    #define CN_BWD_DEFAULT_ROWS(T, sfx, attr)                                              \
    attr static void cn_lstm_bwd_def_##sfx(Py_ssize_t n, const T *CN_RESTRICT gi,        \
            const T *CN_RESTRICT gf, const T *CN_RESTRICT gc, const T *CN_RESTRICT go,    \
            const T *CN_RESTRICT cp, const T *CN_RESTRICT ac, const T *CN_RESTRICT dy,    \
            T *CN_RESTRICT dh, T *CN_RESTRICT dc, T *CN_RESTRICT di, T *CN_RESTRICT df,   \
            T *CN_RESTRICT dcc, T *CN_RESTRICT dout) {                                    \
        if (dy != NULL) { CN_LSTM_BWD_DEF_BODY(T, dh[k] + dy[k]) }                          \
        else { CN_LSTM_BWD_DEF_BODY(T, dh[k]) }                                             \
    }                                                                                    \
    attr static void cn_gru_bwd_def_##sfx(Py_ssize_t n, const T *CN_RESTRICT z,          \
            const T *CN_RESTRICT r, const T *CN_RESTRICT hh, const T *CN_RESTRICT rh,     \
            const T *CN_RESTRICT hp, const T *CN_RESTRICT dy, T *CN_RESTRICT dh,          \
            T *CN_RESTRICT dxz, T *CN_RESTRICT dxr, T *CN_RESTRICT dxh,                   \
            T *CN_RESTRICT drz, T *CN_RESTRICT drr, T *CN_RESTRICT drh) {                 \
        if (dy != NULL) { CN_GRU_BWD_DEF_BODY(T, dh[k] + dy[k]) }                           \
        else { CN_GRU_BWD_DEF_BODY(T, dh[k]) }                                              \
    }
    CN_BWD_DEFAULT_ROWS(float, f, )
    CN_BWD_DEFAULT_ROWS(double, d, )
    #if CN_RNN_HAVE_SIMD
    CN_BWD_DEFAULT_ROWS(float, f_avx2, __attribute__((target("avx2,fma"))))
    CN_BWD_DEFAULT_ROWS(double, d_avx2, __attribute__((target("avx2,fma"))))
    CN_BWD_DEFAULT_ROWS(float, f_avx512, __attribute__((target("avx512f"))))
    CN_BWD_DEFAULT_ROWS(double, d_avx512, __attribute__((target("avx512f"))))
    #define CN_PICK(name, sfx) (cn_rnn_isa == 2 ? name##_##sfx##_avx512 :               \
                                cn_rnn_isa == 1 ? name##_##sfx##_avx2 : name##_##sfx)
    #else
    #define CN_PICK(name, sfx) (name##_##sfx)
    #endif

    static void cn_lstm_bwd_default_f(Py_ssize_t n, const float *gi, const float *gf,
            const float *gc, const float *go, const float *cp, const float *ac,
            const float *dy, float *dh, float *dc, float *di, float *df, float *dcc,
            float *dout) {
        CN_PICK(cn_lstm_bwd_def, f)(n, gi, gf, gc, go, cp, ac, dy, dh, dc, di, df, dcc, dout);
    }
    static void cn_lstm_bwd_default_d(Py_ssize_t n, const double *gi, const double *gf,
            const double *gc, const double *go, const double *cp, const double *ac,
            const double *dy, double *dh, double *dc, double *di, double *df, double *dcc,
            double *dout) {
        CN_PICK(cn_lstm_bwd_def, d)(n, gi, gf, gc, go, cp, ac, dy, dh, dc, di, df, dcc, dout);
    }
    static void cn_gru_bwd_default_f(Py_ssize_t n, const float *z, const float *r,
            const float *hh, const float *rh, const float *hp, const float *dy, float *dh,
            float *dxz, float *dxr, float *dxh, float *drz, float *drr, float *drh) {
        CN_PICK(cn_gru_bwd_def, f)(n, z, r, hh, rh, hp, dy, dh, dxz, dxr, dxh, drz, drr, drh);
    }
    static void cn_gru_bwd_default_d(Py_ssize_t n, const double *z, const double *r,
            const double *hh, const double *rh, const double *hp, const double *dy,
            double *dh, double *dxz, double *dxr, double *dxh, double *drz, double *drr,
            double *drh) {
        CN_PICK(cn_gru_bwd_def, d)(n, z, r, hh, rh, hp, dy, dh, dxz, dxr, dxh, drz, drr, drh);
    }

    /* The copy in use: name_avx512, name_avx2 or name_generic. */
    #if CN_RNN_HAVE_SIMD
    #define CN_SIMD_PICK(name) (cn_rnn_isa == 2 ? name##_avx512 :                          \
                                cn_rnn_isa == 1 ? name##_avx2 : name##_generic)
    #else
    #define CN_SIMD_PICK(name) (name##_generic)
    #endif

    static void cn_tanhf_inplace(float *x, Py_ssize_t n) {
        CN_SIMD_PICK(cn_tanhf_loop)(x, n);
    }

    static void cn_sigmoidf_inplace(float *x, Py_ssize_t n) {
        CN_SIMD_PICK(cn_sigmoidf_loop)(x, n);
    }

    static void cn_lstm_fwd_row(Py_ssize_t n, float *gi, float *gf, float *gc, float *go,
                                const float *pi, const float *pf, const float *pc,
                                const float *po, float bi, float bf, float bc, float bo,
                                const float *cp, float *c, float *ac, float *h) {
        CN_SIMD_PICK(cn_lstm_fwd_row)(n, gi, gf, gc, go, pi, pf, pc, po, bi, bf, bc, bo, cp, c,
                                      ac, h);
    }

    static void cn_gru_fwd_row(Py_ssize_t n, float *gz, float *gr, float *gh, const float *pz,
                               const float *pr, const float *ph, float bz, float br, float bh,
                               float rbz, float rbr, float rbh, const float *hp, float *rh,
                               float *h) {
        CN_SIMD_PICK(cn_gru_fwd_row)(n, gz, gr, gh, pz, pr, ph, bz, br, bh, rbz, rbr, rbh, hp,
                                     rh, h);
    }

    static void cn_gru_ring_rows(Py_ssize_t m, Py_ssize_t w, Py_ssize_t W,
            float *gz, const float *gr, const float *gh, float *gx,
            const float *hp, float *hn, float *ho, Py_ssize_t ldo,
            const unsigned char *keep) {
        CN_SIMD_PICK(cn_gru_ring_rows)(m, w, W, gz, gr, gh, gx, hp, hn, ho, ldo, keep);
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


# -- the sequence loops ---------------------------------------------------------------------
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
            if floating is float:
                cn_lstm_bwd_default_f(N, g + e, g + hn + e, g + 2 * hn + e, g + 3 * hn + e,
                                      c_prev + e, ac + e, dy + j * ldy if dy != NULL else NULL,
                                      dh + e, dc + e, dg + j * ldg, dg + (H + j) * ldg,
                                      dg + (2 * H + j) * ldg, dg + (3 * H + j) * ldg)
            else:
                cn_lstm_bwd_default_d(N, g + e, g + hn + e, g + 2 * hn + e, g + 3 * hn + e,
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
            if floating is float:
                cn_lstm_bwd_row_f(N, g + e, g + hn + e, g + 2 * hn + e, g + 3 * hn + e, s + e,
                                  s + hn + e, s + 2 * hn + e, s + 3 * hn + e, s + 4 * hn + e,
                                  c_prev + e, ac + e, dh + e, dc + e, dg + j * ldg,
                                  dg + (H + j) * ldg, dg + (2 * H + j) * ldg,
                                  dg + (3 * H + j) * ldg)
            else:
                cn_lstm_bwd_row_d(N, g + e, g + hn + e, g + 2 * hn + e, g + 3 * hn + e, s + e,
                                  s + hn + e, s + 2 * hn + e, s + 3 * hn + e, s + 4 * hn + e,
                                  c_prev + e, ac + e, dh + e, dc + e, dg + j * ldg,
                                  dg + (H + j) * ldg, dg + (2 * H + j) * ldg,
                                  dg + (3 * H + j) * ldg)
        return
    for j in range(j0, j1):
        for n in range(N):
            e = j * N + n
            dht = dh[e] + dy[j * ldy + n] if dy != NULL else dh[e]
            if keep != NULL and keep[n] == 0:
                dg[j * ldg + n] = 0
                dg[(H + j) * ldg + n] = 0
                dg[(2 * H + j) * ldg + n] = 0
                dg[(3 * H + j) * ldg + n] = 0
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
            if floating is float:
                cn_gru_bwd_default_f(N, g + e, g + hn + e, g + 2 * hn + e, rh + e,
                                     h_prev + j * ldh, dy + j * ldy if dy != NULL else NULL,
                                     dh + e, dgx + j * ldg, dgx + (H + j) * ldg,
                                     dgx + (2 * H + j) * ldg, dgr + j * ldg,
                                     dgr + (H + j) * ldg, dgr + (2 * H + j) * ldg)
            else:
                cn_gru_bwd_default_d(N, g + e, g + hn + e, g + 2 * hn + e, rh + e,
                                     h_prev + j * ldh, dy + j * ldy if dy != NULL else NULL,
                                     dh + e, dgx + j * ldg, dgx + (H + j) * ldg,
                                     dgx + (2 * H + j) * ldg, dgr + j * ldg,
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
            if floating is float:
                cn_gru_bwd_row_f(N, g + e, g + hn + e, g + 2 * hn + e, s + e, s + hn + e,
                                 s + 2 * hn + e, rh + e, h_prev + j * ldh, dh + e, dgx + j * ldg,
                                 dgx + (H + j) * ldg, dgx + (2 * H + j) * ldg, dgr + j * ldg,
                                 dgr + (H + j) * ldg, dgr + (2 * H + j) * ldg)
            else:
                cn_gru_bwd_row_d(N, g + e, g + hn + e, g + 2 * hn + e, s + e, s + hn + e,
                                 s + 2 * hn + e, rh + e, h_prev + j * ldh, dh + e, dgx + j * ldg,
                                 dgx + (H + j) * ldg, dgx + (2 * H + j) * ldg, dgr + j * ldg,
                                 dgr + (H + j) * ldg, dgr + (2 * H + j) * ldg)
        return
    for j in range(j0, j1):
        for n in range(N):
            e = j * N + n
            dht = dh[e] + dy[j * ldy + n] if dy != NULL else dh[e]
            if keep != NULL and keep[n] == 0:
                dgx[j * ldg + n] = 0
                dgx[(H + j) * ldg + n] = 0
                dgx[(2 * H + j) * ldg + n] = 0
                dgr[j * ldg + n] = 0
                dgr[(H + j) * ldg + n] = 0
                dgr[(2 * H + j) * ldg + n] = 0
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


# -- the sequence drivers -------------------------------------------------------------------
# One OpenMP parallel region runs the whole loop over time. Each thread owns a fixed block
# of units [j0, j1) (a multiple of the micro-kernel's MR rows where it can): per step it
# computes its rows of every gate block with the single-thread GEMM (gemm.pxd), applies
# the gate math to its units and writes its rows of the next step's GEMM operand; then
# one barrier, since every thread needs the whole new state.
#
# The forward GEMM of a step is the whole pre-activation at once:
#   weights (G, Kt) = [recurrent_kernel^T | b_rec | kernel^T | b_in], Kt = H + F + 2,
#   operand (Kt, N) = [h_{t-1}; 1; x_t; 1],
# so no separate input projection is stored. (GRU: the h block's recurrent and input
# parts are two products over the first H + 1 and the last F + 1 rows.) The operand is
# kept packed in slivers of `W` columns (the micro-kernel's NR), (N / W, Kt, W), two
# slots in turn, so the micro-kernel reads it in place from contiguous rows whatever N
# is (a state row of the (H, T+1, N) buffer lies T+1 rows of N apart: for large N that
# stride maps every row to a few cache sets). Backward packs each step's gate gradients
# the same way for d(loss)/d(h_{t-1}) = recurrent_kernel (H, G) @ dgates_t (G, N), whose
# rows are again split by units; the weight gradients stay GEMMs over all steps (layer).
#
# Rings (inference): gates (Tg, G, N), c (Tc, H, N), act_c / rh (Ta, H, N) and
# h (H, S, N) may hold only 1 (gates, act_c, rh) or 2 (c, h) steps: step t uses index
# t % T_, so the full buffers (T, T+1) are the same code. Threads only ever read and
# write their own units' rows of these; the packed operands are the only shared data.
# GRU with rings (inference, T > 1) takes a loop of its own (_gru_ring_thread): per sliver
# of W samples, the thread's four products go to a small scratch and the gate math
# follows at once, reading h_{t-1} from the packed operand and writing h_t into the next
# one; gates and rh are then left untouched.

cdef enum:
    # Per-step multiply-adds below which one thread runs the loop (a barrier per step
    # costs more than splitting saves).
    SEQ_PARALLEL_MIN_MACS = 1 << 16


cdef inline Py_ssize_t _cdiv(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return (a + b - 1) // b


cdef inline void _split(Py_ssize_t count, Py_ssize_t unit, int tid, int nt, Py_ssize_t *begin,
                        Py_ssize_t *end) noexcept nogil:
    """Thread tid's part [begin, end) of `count` items, cut in whole blocks of `unit`."""
    cdef Py_ssize_t blocks = _cdiv(count, unit)
    cdef Py_ssize_t q = blocks // nt, r = blocks % nt
    cdef Py_ssize_t b0 = tid * q + (tid if tid < r else r)
    cdef Py_ssize_t b1 = b0 + q + (1 if tid < r else 0)
    begin[0] = min(count, b0 * unit)
    end[0] = min(count, b1 * unit)


cdef inline void _mm(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const floating *A,
                     Py_ssize_t lda, const floating *B, Py_ssize_t ldb, floating *C,
                     Py_ssize_t ldc, bint accumulate) noexcept nogil:
    if floating is float:
        sgemm_serial(M, N, K, A, lda, 1, B, ldb, 1, C, ldc, accumulate)
    else:
        dgemm_serial(M, N, K, A, lda, 1, B, ldb, 1, C, ldc, accumulate)


cdef void _packed_product(Py_ssize_t M, const floating *A, Py_ssize_t lda, const floating *P,
                          Py_ssize_t Kt, Py_ssize_t row0, Py_ssize_t K, Py_ssize_t W,
                          Py_ssize_t N, floating *C, Py_ssize_t ldc,
                          bint accumulate) noexcept nogil:
    """C (M, N) (+)= A (M, K) @ rows [row0, row0 + K) of the packed operand P (N / W
    slivers of Kt rows of W values)."""
    cdef Py_ssize_t v
    for v in range(_cdiv(N, W)):
        _mm(M, min(W, N - v * W), K, A, lda, P + (v * Kt + row0) * W, W, C + v * W, ldc,
            accumulate)


cdef void _pack_rows(const floating *src, Py_ssize_t lds, Py_ssize_t r0, Py_ssize_t r1,
                     floating *P, Py_ssize_t Kt, Py_ssize_t W, Py_ssize_t N,
                     Py_ssize_t row0) noexcept nogil:
    """Rows [r0, r1) of src (row r at src + r lds, N values) into rows row0 + r of P."""
    cdef Py_ssize_t r, v, n
    for r in range(r0, r1):
        for v in range(_cdiv(N, W)):
            n = min(W, N - v * W)
            memcpy(P + (v * Kt + row0 + r) * W, src + r * lds + v * W, n * sizeof(floating))


cdef inline void _barrier(int nt) noexcept nogil:
    if nt > 1:
        cn_omp_barrier()


cdef void _fwd_thread(int cell, Py_ssize_t T, Py_ssize_t N, Py_ssize_t H, Py_ssize_t F,
                      const floating *xf, const floating *A, floating *gates, Py_ssize_t Tg,
                      floating *h, Py_ssize_t S, floating *c, Py_ssize_t Tc, floating *aux,
                      Py_ssize_t Ta, floating *xh, floating *P, Py_ssize_t W,
                      const floating *zero, const unsigned char *mask, int act, int ract,
                      Py_ssize_t mr) noexcept nogil:
    """One thread's share of a forward run (inside the parallel region). cell: 0 SimpleRNN,
    1 LSTM, 2 GRU. aux: act_c (LSTM) or rh (GRU). xh (GRU): (3H, N), the h block's input
    part in its last H rows (the first 2H stay zero)."""
    cdef int tid = cn_omp_thread_num(), nt = cn_omp_num_threads()
    cdef Py_ssize_t gc = 4 if cell == 1 else (3 if cell == 2 else 1)
    cdef Py_ssize_t G = gc * H, Kt = H + F + 2, slot = _cdiv(N, W) * Kt * W
    cdef Py_ssize_t ldh = S * N, hn = H * N, ldx = T * N
    cdef Py_ssize_t j0, j1, f0, f1, t, q, m
    cdef floating *g
    cdef floating *B
    cdef floating *Bn
    cdef const floating *hp
    cdef floating *hc
    cdef const unsigned char *keep
    _split(H, mr, tid, nt, &j0, &j1)
    _split(F, 1, tid, nt, &f0, &f1)
    m = j1 - j0
    _pack_rows(h, ldh, j0, j1, P, Kt, W, N, 0)             # h_0
    _pack_rows(xf, ldx, f0, f1, P, Kt, W, N, H + 1)        # x_0
    _barrier(nt)
    for t in range(T):
        g = gates + (t % Tg) * G * N
        B = P + (t % 2) * slot
        Bn = P + ((t + 1) % 2) * slot
        hp = h + (t % S) * N
        hc = h + ((t + 1) % S) * N
        keep = mask + t * N if mask != NULL else NULL
        if m > 0:
            if cell == 2:
                for q in range(2):
                    _packed_product(m, A + (q * H + j0) * Kt, Kt, B, Kt, 0, Kt, W, N,
                                    g + (q * H + j0) * N, N, False)
                _packed_product(m, A + (2 * H + j0) * Kt, Kt, B, Kt, 0, H + 1, W, N,
                                g + (2 * H + j0) * N, N, False)
                _packed_product(m, A + (2 * H + j0) * Kt + H + 1, Kt, B, Kt, H + 1, F + 1, W,
                                N, xh + (2 * H + j0) * N, N, False)
                _gru_fwd_chunk(g, xh, N, <const floating *>NULL, <const floating *>NULL,
                               aux + (t % Ta) * hn, hp, hc, ldh, keep, j0, j1, H, N, act, ract)
            else:
                for q in range(gc):
                    _packed_product(m, A + (q * H + j0) * Kt, Kt, B, Kt, 0, Kt, W, N,
                                    g + (q * H + j0) * N, N, False)
                if cell == 1:
                    _lstm_fwd_chunk(g, zero, 0, <const floating *>NULL, c + (t % Tc) * hn,
                                    c + ((t + 1) % Tc) * hn, aux + (t % Ta) * hn, hp, hc, ldh,
                                    keep, j0, j1, H, N, act, ract)
                else:
                    _rnn_fwd_chunk(g, zero, 0, <const floating *>NULL, hp, hc, ldh, keep, j0,
                                   j1, N, act)
            if t + 1 < T:
                _pack_rows(hc, ldh, j0, j1, Bn, Kt, W, N, 0)
        if t + 1 < T:
            _pack_rows(xf + (t + 1) * N, ldx, f0, f1, Bn, Kt, W, N, H + 1)
            _barrier(nt)


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


cdef void _bwd_thread(int cell, Py_ssize_t T, Py_ssize_t N, Py_ssize_t H,
                      const floating *gates, const floating *c, const floating *aux,
                      const floating *h, const floating *wrec, const floating *dy,
                      floating *dh, floating *dc, floating *dgx, floating *dgr, floating *s,
                      floating *P, Py_ssize_t W, const unsigned char *mask, int act, int ract,
                      bint state_grad, Py_ssize_t mr) noexcept nogil:
    """One thread's share of BPTT. gates (T, G, N); c (T+1, H, N) (LSTM); aux: act_c (LSTM)
    or rh (GRU), (T, H, N); h (H, T+1, N) (GRU); wrec (H, G) as stored; dy (H, T, N) or
    NULL; dgx, dgr (G, T*N) (the same array but for GRU); s: scratch."""
    cdef int tid = cn_omp_thread_num(), nt = cn_omp_num_threads()
    cdef Py_ssize_t gc = 4 if cell == 1 else (3 if cell == 2 else 1)
    cdef Py_ssize_t G = gc * H, slot = _cdiv(N, W) * G * W, ld = T * N, hn = H * N
    cdef Py_ssize_t j0, j1, t, q, m
    cdef bint has_mask = mask != NULL
    cdef const floating *pdy
    cdef const unsigned char *keep
    cdef floating *B
    _split(H, mr, tid, nt, &j0, &j1)
    m = j1 - j0
    for t in range(T - 1, -1, -1):
        B = P + (t % 2) * slot
        pdy = dy + t * N if dy != NULL else NULL
        keep = mask + t * N if has_mask else NULL
        if m > 0:
            if cell == 1:
                _lstm_bwd_chunk(gates + t * G * N, c + t * hn, aux + t * hn, pdy, ld, dh, dc,
                                dgx + t * N, ld, s, keep, j0, j1, H, N, act, ract, has_mask)
            elif cell == 2:
                _gru_bwd_chunk(gates + t * G * N, aux + t * hn, h + t * N, (T + 1) * N, pdy, ld,
                               dh, dgx + t * N, dgr + t * N, ld, s, keep, j0, j1, H, N, act,
                               ract)
            else:
                _rnn_bwd_chunk(gates + t * G * N, pdy, ld, dh, dgx + t * N, ld, s, keep, j0,
                               j1, N, act, has_mask)
            if t > 0 or state_grad:
                for q in range(gc):
                    _pack_rows(dgr + q * H * ld + t * N, ld, j0, j1, B, G, W, N, q * H)
        if t > 0 or state_grad:
            _barrier(nt)
            if m > 0:
                # LSTM and SimpleRNN leave dh untouched without a mask (the product is all
                # of d(loss)/d(h_{t-1})); GRU and masked runs leave the direct part in it.
                _packed_product(m, wrec + j0 * G, G, B, G, 0, G, W, N, dh + j0 * N, N,
                                has_mask or cell == 2)


cdef int _seq_threads(Py_ssize_t macs, Py_ssize_t H, Py_ssize_t mr):
    if macs < SEQ_PARALLEL_MIN_MACS:
        return 1
    return max(1, min(cn_omp_max_threads(), <int>_cdiv(H, mr)))


cdef tuple _micro_tile(object dtype):
    """(MR, NR) of the GEMM micro-kernel in use for this dtype."""
    sizes = _gemm_block_sizes("float32" if dtype == np.float32 else "float64")
    return sizes[0], sizes[1]


cdef _check_ring(Py_ssize_t got, Py_ssize_t full, Py_ssize_t ring, str name, str what):
    if got != full and got != ring:
        raise ValueError(f"{name} must hold {full} {what} (or {ring} when not kept for "
                         f"backward); got {got}")


cdef _forward(int cell, const floating[:, ::1] xf, const floating[:, ::1] weights,
              floating[:, :, ::1] gates, floating[:, :, ::1] h, floating[:, :, ::1] c,
              floating[:, :, ::1] aux, const unsigned char[:, ::1] mask, int act, int ract):
    cdef Py_ssize_t H = h.shape[0], N = h.shape[2], F = xf.shape[0], T, gc, G, Kt
    gc = 4 if cell == 1 else (3 if cell == 2 else 1)
    G, Kt = gc * H, H + F + 2
    _check_code(act, "activation")
    _check_code(ract, "recurrent_activation")
    if N == 0 or xf.shape[1] % N != 0:
        raise ValueError(f"xf must have shape (features, T * {N}); "
                         f"got {(xf.shape[0], xf.shape[1])}")
    T = xf.shape[1] // N
    _check_shape((weights.shape[0], weights.shape[1]), (G, Kt), "weights")
    _check_shape((gates.shape[1], gates.shape[2]), (G, N), "gates")
    _check_ring(gates.shape[0], T, 1, "gates", "steps")
    _check_ring(h.shape[1], T + 1, 2, "h", "states")
    if cell != 0:
        _check_shape((aux.shape[1], aux.shape[2]), (H, N), "act_c" if cell == 1 else "rh")
        _check_ring(aux.shape[0], T, 1, "act_c" if cell == 1 else "rh", "steps")
    if cell == 1:
        _check_shape((c.shape[1], c.shape[2]), (H, N), "c")
        _check_ring(c.shape[0], T + 1, 2, "c", "states")
    _check_mask(mask, T, N)
    if T == 0 or H == 0:
        return
    _sync_isa()
    mr, W = _micro_tile(np.asarray(weights).dtype)
    dtype = np.asarray(weights).dtype
    packed = np.zeros((2, _cdiv(N, W), Kt, W), dtype)
    packed[:, :, H, :] = 1
    packed[:, :, Kt - 1, :] = 1
    zero = np.zeros(N, dtype)
    cdef bint fused = cell == 2 and gates.shape[0] == 1 and T > 1   # GRU inference
    xh = np.zeros((3 * H, N), dtype) if cell == 2 and not fused else zero
    cdef floating[:, :, :, ::1] P = packed
    cdef floating[::1] z = zero
    cdef floating[:, ::1] xhv = xh.reshape(-1, N)
    cdef const unsigned char *pk = &mask[0, 0] if mask is not None else NULL
    cdef floating *pc = &c[0, 0, 0] if cell == 1 else NULL
    cdef floating *pa = &aux[0, 0, 0] if cell != 0 else NULL
    cdef Py_ssize_t Tg = gates.shape[0], S = h.shape[1]
    cdef Py_ssize_t Tc = c.shape[0] if cell == 1 else 1, Ta = aux.shape[0] if cell != 0 else 1
    cdef Py_ssize_t w = W, r = mr
    cdef int nt = _seq_threads(G * Kt * N, H, r)
    cdef Py_ssize_t mmax = _cdiv(_cdiv(H, r), nt) * r
    cdef floating[::1] sc
    if fused:   # inference: no gates kept, the gate math fused per sliver
        scratch = np.empty(nt * 4 * mmax * W, dtype)
        sc = scratch
        with nogil, parallel(num_threads=nt):
            _gru_ring_thread(T, N, H, F, &xf[0, 0], &weights[0, 0], &h[0, 0, 0], S,
                             &P[0, 0, 0, 0], w, &sc[0], mmax, pk, act, ract, r)
        return
    with nogil, parallel(num_threads=nt):
        _fwd_thread(cell, T, N, H, F, &xf[0, 0], &weights[0, 0], &gates[0, 0, 0], Tg,
                    &h[0, 0, 0], S, pc, Tc, pa, Ta, &xhv[0, 0], &P[0, 0, 0, 0], w, &z[0], pk,
                    act, ract, r)


cdef _backward(int cell, const floating[:, :, ::1] gates, const floating[:, :, ::1] c,
               const floating[:, :, ::1] aux, const floating[:, :, ::1] h,
               const floating[:, ::1] kernel_rec, floating[:, ::1] dh, floating[:, ::1] dc,
               floating[:, ::1] dgx, floating[:, ::1] dgr, floating[:, ::1] scratch,
               const floating[:, :, ::1] dy, const unsigned char[:, ::1] mask, int act,
               int ract, bint state_grad):
    cdef Py_ssize_t T = gates.shape[0], N = gates.shape[2], H = dh.shape[0], gc, G
    gc = 4 if cell == 1 else (3 if cell == 2 else 1)
    G = gc * H
    _check_shape((gates.shape[0], gates.shape[1], gates.shape[2]), (T, G, N), "gates")
    if cell == 1:
        _check_shape((c.shape[0], c.shape[1], c.shape[2]), (T + 1, H, N), "c")
        _check_shape((aux.shape[0], aux.shape[1], aux.shape[2]), (T, H, N), "act_c")
        _check_shape((dc.shape[0], dc.shape[1]), (H, N), "dc")
    if cell == 2:
        _check_shape((aux.shape[0], aux.shape[1], aux.shape[2]), (T, H, N), "rh")
        _check_shape((h.shape[0], h.shape[1], h.shape[2]), (H, T + 1, N), "h")
    _check_shape((kernel_rec.shape[0], kernel_rec.shape[1]), (H, G), "kernel_rec")
    _check_shape((dh.shape[0], dh.shape[1]), (H, N), "dh")
    _check_shape((dgx.shape[0], dgx.shape[1]), (G, T * N), "dgx" if cell == 2 else "dgates")
    _check_shape((dgr.shape[0], dgr.shape[1]), (G, T * N), "dgr" if cell == 2 else "dgates")
    _check_shape((scratch.shape[0], scratch.shape[1]),
                 ((5 if cell == 1 else gc) * H, N), "scratch")
    if dy is not None:
        _check_shape((dy.shape[0], dy.shape[1], dy.shape[2]), (H, T, N), "dy")
    _check_mask(mask, T, N)
    _check_code(act, "activation")
    _check_code(ract, "recurrent_activation")
    if T == 0 or N == 0 or H == 0:
        return
    mr, W = _micro_tile(np.asarray(kernel_rec).dtype)
    packed = np.empty((2, _cdiv(N, W), G, W), np.asarray(kernel_rec).dtype)
    cdef floating[:, :, :, ::1] P = packed
    cdef const unsigned char *pk = &mask[0, 0] if mask is not None else NULL
    cdef const floating *pdy = &dy[0, 0, 0] if dy is not None else NULL
    cdef const floating *pc = &c[0, 0, 0] if cell == 1 else NULL
    cdef const floating *pa = &aux[0, 0, 0] if cell != 0 else NULL
    cdef const floating *ph = &h[0, 0, 0] if cell == 2 else NULL
    cdef floating *pdc = &dc[0, 0] if cell == 1 else NULL
    cdef Py_ssize_t w = W, r = mr
    cdef int nt = _seq_threads(G * H * N, H, r)
    with nogil, parallel(num_threads=nt):
        _bwd_thread(cell, T, N, H, &gates[0, 0, 0], pc, pa, ph, &kernel_rec[0, 0], pdy,
                    &dh[0, 0], pdc, &dgx[0, 0], &dgr[0, 0], &scratch[0, 0], &P[0, 0, 0, 0], w,
                    pk, act, ract, state_grad, r)


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
