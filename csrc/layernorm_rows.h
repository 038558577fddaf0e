/* The row loops of layer normalization (cyneuron._kernels.normalization): one row of D
 * features at a time, float32 or float64 in and out, sums in double.
 *
 * Each row sum runs in CN_LN_LANES partial sums (element j into lane j % CN_LN_LANES up
 * to the last whole group, the rest into a tail sum), added up in one fixed order at the
 * end. The one-sum form (s += x[j]) waits on the latency of every addition and does not
 * vectorize; the lanes do (written as GCC vectors: its vectorizer left them scalar), and
 * since both copies (the baseline's and AVX2's, neither with FMA contraction) run the
 * same additions in the same order, they give the same bits. 2048 float32 rows of 128
 * features (a Transformer's), one thread, Intel Xeon (AVX2 copy): the forward pass 427
 * -> 205 us, the backward 488 -> 310 us. */
#ifndef CN_LAYERNORM_ROWS_H
#define CN_LAYERNORM_ROWS_H
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "cn_isa_copies.h"

#define CN_LN_LANES 8

/* Eight lanes as two vectors of four doubles (GCC's vector extension: one AVX2
   register each, two SSE2 registers in the baseline copy, the same additions either
   way); lanes 0-3 in lo, 4-7 in hi. */
typedef double cn_ln_v4d __attribute__((vector_size(32)));
typedef float cn_ln_v4f __attribute__((vector_size(16)));

static inline cn_ln_v4d cn_ln_load_f32(const float *p) {
    cn_ln_v4f f;
    memcpy(&f, p, sizeof f);
    return __builtin_convertvector(f, cn_ln_v4d);
}
static inline cn_ln_v4d cn_ln_load_f64(const double *p) {
    cn_ln_v4d d;
    memcpy(&d, p, sizeof d);
    return d;
}

/* The lanes' total, always in this order: ((l0 + l4) + (l1 + l5)) + ((l2 + l6) +
   (l3 + l7)), then the tail. */
#define CN_LN_TOTAL(lo, hi, tail) __extension__ ({                                       \
    cn_ln_v4d s_ = (lo) + (hi);                                                          \
    ((s_[0] + s_[1]) + (s_[2] + s_[3])) + (tail); })

#define CN_LN_FNS(T, LOAD, sfx, attr)                                                          \
/* out = gamma * (x - mean) / sqrt(var + eps) + beta; *mean and *inv_std kept for the    \
   backward pass */                                                                      \
attr static void cn_ln_forward_row_##sfx(const T *restrict x, int64_t D,                 \
                                         const T *restrict gamma, const T *restrict beta, \
                                         double eps, T *restrict out, T *mean_out,       \
                                         T *inv_std_out) {                               \
    cn_ln_v4d lo = {0, 0, 0, 0}, hi = lo, mv;                                            \
    double tail = 0;                                                                     \
    int64_t whole = D - D % CN_LN_LANES, j;                                              \
    for (j = 0; j < whole; j += CN_LN_LANES) {                                           \
        lo += LOAD(x + j);                                                \
        hi += LOAD(x + j + 4);                                            \
    }                                                                                    \
    for (j = whole; j < D; j++) tail += (double)x[j];                                    \
    double m = CN_LN_TOTAL(lo, hi, tail) / (double)D;                                    \
    mv = (cn_ln_v4d){m, m, m, m};                                                        \
    lo = hi = (cn_ln_v4d){0, 0, 0, 0};                                                   \
    tail = 0;                                                                            \
    for (j = 0; j < whole; j += CN_LN_LANES) {                                           \
        cn_ln_v4d d0 = LOAD(x + j) - mv;                                  \
        cn_ln_v4d d1 = LOAD(x + j + 4) - mv;                              \
        lo += d0 * d0;                                                                   \
        hi += d1 * d1;                                                                   \
    }                                                                                    \
    for (j = whole; j < D; j++) {                                                        \
        double d = (double)x[j] - m;                                                     \
        tail += d * d;                                                                   \
    }                                                                                    \
    double istd = 1 / sqrt(CN_LN_TOTAL(lo, hi, tail) / (double)D + eps);                 \
    *mean_out = (T)m;                                                                    \
    *inv_std_out = (T)istd;                                                              \
    for (j = 0; j < D; j++)                                                              \
        out[j] = (T)(((double)x[j] - m) * istd * (double)gamma[j] + (double)beta[j]);    \
}                                                                                        \
/* With xh = (x - mean) * inv_std and g = dy * gamma: dgamma_part += dy * xh,            \
   dbeta_part += dy, and (dx not NULL) dx = inv_std (g - mean(g) - xh mean(g xh)) */     \
attr static void cn_ln_backward_row_##sfx(const T *restrict x, const T *restrict dy,     \
                                          int64_t D, const T *restrict gamma, double m,  \
                                          double istd, double *restrict dgamma_part,     \
                                          double *restrict dbeta_part, T *restrict dx) { \
    cn_ln_v4d lo1 = {0, 0, 0, 0}, hi1 = lo1, lo2 = lo1, hi2 = lo1;                       \
    cn_ln_v4d mv = {m, m, m, m}, sv = {istd, istd, istd, istd};                          \
    double t1 = 0, t2 = 0;                                                               \
    int64_t whole = D - D % CN_LN_LANES, j;                                              \
    for (j = 0; j < D; j++) {                                                            \
        double d = (double)dy[j];                                                        \
        dgamma_part[j] += d * (((double)x[j] - m) * istd);                               \
        dbeta_part[j] += d;                                                              \
    }                                                                                    \
    if (!dx)                                                                             \
        return;                                                                          \
    for (j = 0; j < whole; j += CN_LN_LANES) {                                           \
        cn_ln_v4d xh0 = (LOAD(x + j) - mv) * sv;                          \
        cn_ln_v4d xh1 = (LOAD(x + j + 4) - mv) * sv;                      \
        cn_ln_v4d g0 = LOAD(dy + j) * LOAD(gamma + j);     \
        cn_ln_v4d g1 = LOAD(dy + j + 4) * LOAD(gamma + j + 4); \
        lo1 += g0;                                                                       \
        hi1 += g1;                                                                       \
        lo2 += g0 * xh0;                                                                 \
        hi2 += g1 * xh1;                                                                 \
    }                                                                                    \
    for (j = whole; j < D; j++) {                                                        \
        double xh = ((double)x[j] - m) * istd;                                           \
        double g = (double)dy[j] * (double)gamma[j];                                     \
        t1 += g;                                                                         \
        t2 += g * xh;                                                                    \
    }                                                                                    \
    double s1 = CN_LN_TOTAL(lo1, hi1, t1) / (double)D;                                   \
    double s2 = CN_LN_TOTAL(lo2, hi2, t2) / (double)D;                                   \
    for (j = 0; j < D; j++) {                                                            \
        double xh = ((double)x[j] - m) * istd;                                           \
        dx[j] = (T)(istd * ((double)dy[j] * (double)gamma[j] - s1 - xh * s2));           \
    }                                                                                    \
}

#define CN_LN_COPY(sfx, attr) CN_LN_FNS(float, cn_ln_load_f32, f32_##sfx, attr) \
    CN_LN_FNS(double, cn_ln_load_f64, f64_##sfx, attr)
CN_BASELINE_AND_AVX2(CN_LN_COPY)

static void cn_ln_forward_row_f32(int avx2, const float *x, int64_t D, const float *gamma,
                                  const float *beta, double eps, float *out, float *mean,
                                  float *inv_std) {
    CN_PICK_AVX2(cn_ln_forward_row_f32, avx2)(x, D, gamma, beta, eps, out, mean, inv_std);
}
static void cn_ln_forward_row_f64(int avx2, const double *x, int64_t D, const double *gamma,
                                  const double *beta, double eps, double *out, double *mean,
                                  double *inv_std) {
    CN_PICK_AVX2(cn_ln_forward_row_f64, avx2)(x, D, gamma, beta, eps, out, mean, inv_std);
}
static void cn_ln_backward_row_f32(int avx2, const float *x, const float *dy, int64_t D,
                                   const float *gamma, double m, double istd,
                                   double *dgamma_part, double *dbeta_part, float *dx) {
    CN_PICK_AVX2(cn_ln_backward_row_f32, avx2)(x, dy, D, gamma, m, istd, dgamma_part,
                                               dbeta_part, dx);
}
static void cn_ln_backward_row_f64(int avx2, const double *x, const double *dy, int64_t D,
                                   const double *gamma, double m, double istd,
                                   double *dgamma_part, double *dbeta_part, double *dx) {
    CN_PICK_AVX2(cn_ln_backward_row_f64, avx2)(x, dy, D, gamma, m, istd, dgamma_part,
                                               dbeta_part, dx);
}
#endif
