/* The float32 gate math of the recurrent layers (src/cyneuron/_kernels/recurrent.pyx):
 * the fused rows of one LSTM / GRU step with the default activations, the element-wise
 * tanh and sigmoid loops, the inference GRU rows, and the gradient rows (float and
 * double), each as a generic C copy plus the AVX2 + FMA and AVX-512 copies generated
 * from rnn_gates_template.h, picked at run time by cn_rnn_use_isa (the GEMM's
 * instruction set, so an AVX copy only runs on a CPU that has it). Included once, by
 * recurrent.pyx. */
#ifndef CN_RNN_GATES_H
#define CN_RNN_GATES_H
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
/* the vector exp, sigmoid and tanh per instruction set, and their loops */
#include "vmath.h"

/* The scalar loops (the generic copy; the vector copies, vmath's cn_vm_map_f32, whose
   fused multiply-adds round differently, stay within a few ulps of it and are only
   called after cn_rnn_use_isa checked the CPU). */
static void cn_tanhf_loop_generic(float *x, Py_ssize_t n) {
    for (Py_ssize_t j = 0; j < n; j++) x[j] = cn_tanhf(x[j]);
}
static void cn_sigmoidf_loop_generic(float *x, Py_ssize_t n) {
    for (Py_ssize_t j = 0; j < n; j++) x[j] = cn_sigmoidf(x[j]);
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
#if CN_VM_HAVE_SIMD
/* Vector copies of the rows, one per instruction set, from one template
   (csrc/rnn_gates_template.h) under csrc/vmath_isa.h's macro set, on vmath's exp,
   sigmoid and tanh. Only called after cn_rnn_use_isa checked the CPU. */
#define CN_VM_ISA 1
#include "vmath_isa.h"
#include "rnn_gates_template.h"
#include "vmath_undef.h"
#define CN_VM_ISA 2
#include "vmath_isa.h"
#include "rnn_gates_template.h"
#include "vmath_undef.h"
#endif

/* The vector copy in use: 0 none (generic C), 1 AVX2 + FMA, 2 AVX-512. */
static int cn_rnn_isa = 0;

/* Use the copy of instruction set `isa` (the GEMM's: 0 generic, 1 AVX2, 2 AVX-512)
   if the CPU (and OS, which the GEMM's check covers) support it, else the widest
   below it that they do; returns the choice. */
static int cn_rnn_use_isa(int isa) {
#if CN_VM_HAVE_SIMD
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
#if CN_VM_HAVE_SIMD
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
#if CN_VM_HAVE_SIMD
#define CN_SIMD_PICK(name) (cn_rnn_isa == 2 ? name##_avx512 :                          \
                            cn_rnn_isa == 1 ? name##_avx2 : name##_generic)
#else
#define CN_SIMD_PICK(name) (name##_generic)
#endif

static void cn_tanhf_inplace(float *x, Py_ssize_t n) {
    if (cn_rnn_isa > 0)
        cn_vm_map_f32(cn_rnn_isa, CN_VM_TANH, x, x, n, 0.0f, 1.0f);
    else
        cn_tanhf_loop_generic(x, n);
}

static void cn_sigmoidf_inplace(float *x, Py_ssize_t n) {
    if (cn_rnn_isa > 0)
        cn_vm_map_f32(cn_rnn_isa, CN_VM_SIGMOID, x, x, n, 0.0f, 1.0f);
    else
        cn_sigmoidf_loop_generic(x, n);
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

#endif
