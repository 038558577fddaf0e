/* GEMM epilogue loops in C (the cheap ones: no transcendental functions). Included by
   _kernels/gemm.pyx; see its Cython epilogue for the rest. */
#ifndef CN_GEMM_EPILOGUE_H
#define CN_GEMM_EPILOGUE_H
/* The cheap epilogues (bias, relu, leaky_relu; the relu / leaky_relu / sigmoid / tanh
   derivatives from the output) as C loops with an AVX2 copy: this extension is built
   for the baseline SSE2, where these loops run at half width or not vectorized at
   all. The AVX2 copy runs when the micro-kernels in use are AVX2 or wider; neither
   uses FMA, so both give the same bits as the Cython loops they stand in for.
   leaky_relu is written as max(x, slope x) (min for a slope > 1; a zero slope, where
   0 * inf is NaN, keeps the plain form) and its derivative as a multiplication by a
   selected 1 or slope: the same bits as x > 0 ? x : slope x (NaN and signed zeros
   included), but GCC vectorizes these forms, not that one (it keeps a branch there,
   which mispredicts on random signs: 1.5 ns a value). */
#include <stdint.h>

#include "cn_isa_copies.h"

enum { CN_EPI_RELU = 1, CN_EPI_SIGMOID = 2, CN_EPI_TANH = 3, CN_EPI_LEAKY_RELU = 8 };

#define CN_EPI_FNS(T, sfx, attr)                                                     \
attr static void cn_bias_act_##sfx(T *c, int64_t ldc, int m, int n,                 \
                                   const T *restrict bias, int act, T alpha) {      \
    for (int i = 0; i < m; i++) {                                                   \
        T *restrict row = c + i * ldc;                                              \
        if (bias)                                                                   \
            for (int j = 0; j < n; j++) row[j] = row[j] + bias[j];                  \
        if (act == CN_EPI_RELU)                                                     \
            for (int j = 0; j < n; j++) row[j] = row[j] > 0 ? row[j] : 0;           \
        else if (act == CN_EPI_LEAKY_RELU && alpha > 0 && alpha <= 1)               \
            for (int j = 0; j < n; j++) {                                           \
                T v = row[j], w = alpha * v;   /* = max(v, slope v) */              \
                row[j] = v > w ? v : w;                                             \
            }                                                                       \
        else if (act == CN_EPI_LEAKY_RELU && alpha > 1)                             \
            for (int j = 0; j < n; j++) {                                           \
                T v = row[j], w = alpha * v;   /* = min(v, slope v) */              \
                row[j] = v < w ? v : w;                                             \
            }                                                                       \
        else if (act == CN_EPI_LEAKY_RELU)  /* slope 0: 0 * inf is NaN */          \
            for (int j = 0; j < n; j++) row[j] = row[j] > 0 ? row[j] : alpha * row[j]; \
    }                                                                               \
}                                                                                   \
attr static void cn_act_grad_##sfx(T *c, int64_t ldc, int m, int n,                 \
                                   const T *y, int act, T alpha) {                  \
    for (int i = 0; i < m; i++) {                                                   \
        T *restrict row = c + i * ldc;                                              \
        const T *restrict yr = y + i * ldc;                                         \
        if (act == CN_EPI_RELU)                                                     \
            for (int j = 0; j < n; j++) row[j] = yr[j] > 0 ? row[j] : 0;            \
        else if (act == CN_EPI_LEAKY_RELU)                                          \
            for (int j = 0; j < n; j++) {                                           \
                T s = yr[j] > 0 ? (T)1 : alpha;                                     \
                row[j] = row[j] * s;                                                \
            }                                                                       \
        else if (act == CN_EPI_SIGMOID)                                             \
            for (int j = 0; j < n; j++) row[j] = row[j] * yr[j] * (1 - yr[j]);      \
        else if (act == CN_EPI_TANH)                                                \
            for (int j = 0; j < n; j++) row[j] = row[j] * (1 - yr[j] * yr[j]);      \
    }                                                                               \
}

/* c += bias (none for bias NULL), then relu if asked; returns 1 when a value of c +
   bias is NaN or infinite (v - v is NaN exactly for those), else 0: the check of
   predict's first product, in the same pass. */
#define CN_EPI_CHECK_FNS(T, sfx, attr)                                               \
attr static int cn_bias_nonfinite_##sfx(T *c, int64_t ldc, int m, int n,            \
                                        const T *restrict bias, int relu) {         \
    int bad = 0;                                                                    \
    for (int i = 0; i < m; i++) {                                                   \
        T *restrict row = c + i * ldc;                                              \
        for (int j = 0; j < n; j++) {                                               \
            T v = bias ? row[j] + bias[j] : row[j];                                 \
            bad |= v - v != 0;                                                      \
            row[j] = relu ? (v > 0 ? v : 0) : v;                                    \
        }                                                                           \
    }                                                                               \
    return bad;                                                                     \
}

/* out[j] = the sum of b[p * rsb + j] over p = 0 .. k - 1, in that order (a Dense layer's
   bias gradient, the column sums of dz, next to its kernel gradient). B is read row
   after row (in the order the prefetchers follow: summing column strips down all rows
   instead took 2.3x as long for a 2048 x 512 B from L3) and out, in L1, takes four rows
   per load and store; the Cython loop this replaces ran at the baseline's width. */
#define CN_COLSUM_FNS(T, sfx, attr)                                                 \
attr static void cn_column_sums_##sfx(const T *restrict b, int64_t rsb, int64_t k,   \
                                      int64_t n, T *restrict out) {                 \
    int64_t p = 0;                                                                  \
    for (int64_t j = 0; j < n; j++) out[j] = 0;                                     \
    for (; p + 4 <= k; p += 4) {                                                    \
        const T *restrict r0 = b + p * rsb, *restrict r1 = r0 + rsb;                \
        const T *restrict r2 = r1 + rsb, *restrict r3 = r2 + rsb;                   \
        for (int64_t j = 0; j < n; j++) {                                           \
            T o = out[j];                                                           \
            o += r0[j];                                                             \
            o += r1[j];                                                             \
            o += r2[j];                                                             \
            o += r3[j];                                                             \
            out[j] = o;                                                             \
        }                                                                           \
    }                                                                               \
    for (; p < k; p++)                                                              \
        for (int64_t j = 0; j < n; j++) out[j] += b[p * rsb + j];                   \
}

#define CN_EPI_COPY(sfx, attr) CN_EPI_FNS(float, f32_##sfx, attr) CN_EPI_FNS(double, f64_##sfx, attr) \
    CN_EPI_CHECK_FNS(float, f32_##sfx, attr) CN_EPI_CHECK_FNS(double, f64_##sfx, attr) \
    CN_COLSUM_FNS(float, f32_##sfx, attr) CN_COLSUM_FNS(double, f64_##sfx, attr)
CN_BASELINE_AND_AVX2(CN_EPI_COPY)

#define CN_EPI_DISPATCH(name, T)                                                    \
static void name(int avx2, T *c, int64_t ldc, int m, int n, const T *y, int act,     \
                 T alpha) {                                                          \
    CN_PICK_AVX2(name, avx2)(c, ldc, m, n, y, act, alpha);                           \
}
CN_EPI_DISPATCH(cn_bias_act_f32, float)
CN_EPI_DISPATCH(cn_bias_act_f64, double)
CN_EPI_DISPATCH(cn_act_grad_f32, float)
CN_EPI_DISPATCH(cn_act_grad_f64, double)
#define CN_EPI_CHECK_DISPATCH(name, T)                                              \
static int name(int avx2, T *c, int64_t ldc, int m, int n, const T *bias, int relu) { \
    return CN_PICK_AVX2(name, avx2)(c, ldc, m, n, bias, relu);                      \
}
CN_EPI_CHECK_DISPATCH(cn_bias_nonfinite_f32, float)
CN_EPI_CHECK_DISPATCH(cn_bias_nonfinite_f64, double)
#define CN_COLSUM_DISPATCH(name, T)                                                 \
static void name(int avx2, const T *b, int64_t rsb, int64_t k, int64_t n, T *out) {  \
    CN_PICK_AVX2(name, avx2)(b, rsb, k, n, out);                                    \
}
CN_COLSUM_DISPATCH(cn_column_sums_f32, float)
CN_COLSUM_DISPATCH(cn_column_sums_f64, double)
/* *flag = 1, from any thread (a relaxed atomic store: several threads may set it) */
static inline void cn_flag_set(int *flag) { __atomic_store_n(flag, 1, __ATOMIC_RELAXED); }
#endif
