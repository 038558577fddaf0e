/* float32 sigmoid and tanh over contiguous rows for the tree kernels
 * (src/cyneuron/_kernels/tree.pyx), one copy per instruction set.
 *
 * The branch-free scalar functions of cn_expf.h (selects, no calls), so the compiler
 * vectorizes the loops over them: the generic copy with the baseline flags, the others
 * under a target attribute and only called after the CPU check (cn_tree_use_isa follows
 * the GEMM's path).
 * Within a few ulp of libm; NaN stays NaN. */
#ifndef CN_TREE_ACT_F32_H
#define CN_TREE_ACT_F32_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("no-trapping-math")   /* selects become blends; no result changes */
#endif
#include "cn_expf.h"   /* the scalar exp, tanh and sigmoid (one definition), under the pragma */

/* The loops, and the backward rows of the LSTM cells (restrict: they vectorize):
   lstm_bwd: dc += dh o (1 - tc^2); the gate pre-activation gradients of i, u, o.
   forget_bwd: one child's forget gate f: dzf = dc c_k f (1 - f), dc_k += dc f, and
   (child-sum) acc += dzf. */
#define CN_TREE_LOOPS(sfx, attr)                                                       \
    attr static void cn_tree_sigmoid_##sfx(float *x, ptrdiff_t n) {                    \
        for (ptrdiff_t j = 0; j < n; j++) x[j] = cn_sigmoidf(x[j]);                    \
    }                                                                                  \
    attr static void cn_tree_tanh_##sfx(const float *x, float *y, ptrdiff_t n) {       \
        for (ptrdiff_t j = 0; j < n; j++) y[j] = cn_tanhf(x[j]);                       \
    }                                                                                  \
    attr static void cn_tree_lstm_bwd_##sfx(ptrdiff_t n, const float *restrict dh,     \
            float *restrict dc, const float *restrict i, const float *restrict u,      \
            const float *restrict o, const float *restrict tc, float *restrict dzi,    \
            float *restrict dzu, float *restrict dzo) {                                \
        for (ptrdiff_t j = 0; j < n; j++) {                                            \
            float d = dc[j] + dh[j] * o[j] * (1.0f - tc[j] * tc[j]);                   \
            dc[j] = d;                                                                 \
            dzi[j] = d * u[j] * i[j] * (1.0f - i[j]);                                  \
            dzu[j] = d * i[j] * (1.0f - u[j] * u[j]);                                  \
            dzo[j] = dh[j] * tc[j] * o[j] * (1.0f - o[j]);                             \
        }                                                                              \
    }                                                                                  \
    attr static void cn_tree_forget_bwd_##sfx(ptrdiff_t n, const float *restrict dc,   \
            const float *restrict ck, const float *restrict f, float *restrict dzf,    \
            float *restrict dck, float *restrict acc) {                                \
        for (ptrdiff_t j = 0; j < n; j++) {                                            \
            float r = dc[j] * ck[j] * f[j] * (1.0f - f[j]);                            \
            dzf[j] = r;                                                                \
            dck[j] += dc[j] * f[j];                                                    \
        }                                                                              \
        if (acc != NULL)                                                               \
            for (ptrdiff_t j = 0; j < n; j++) acc[j] += dzf[j];                        \
    }

CN_TREE_LOOPS(generic, )
#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define CN_TREE_SIMD 1
CN_TREE_LOOPS(avx2, __attribute__((target("avx2,fma"))))
CN_TREE_LOOPS(avx512, __attribute__((target("avx512f"))))
#else
#define CN_TREE_SIMD 0
#endif

static int cn_tree_isa = 0;   /* 0 generic, 1 AVX2, 2 AVX-512 (gemm.current_isa's codes) */

static void cn_tree_use_isa(int isa) { cn_tree_isa = CN_TREE_SIMD ? isa : 0; }

/* x = sigmoid(x) over n values */
static void cn_tree_sigmoidf_inplace(float *x, ptrdiff_t n) {
#if CN_TREE_SIMD
    if (cn_tree_isa == 2) { cn_tree_sigmoid_avx512(x, n); return; }
    if (cn_tree_isa == 1) { cn_tree_sigmoid_avx2(x, n); return; }
#endif
    cn_tree_sigmoid_generic(x, n);
}

/* y = tanh(x) over n values (y may be x) */
static void cn_tree_tanhf_to(const float *x, float *y, ptrdiff_t n) {
#if CN_TREE_SIMD
    if (cn_tree_isa == 2) { cn_tree_tanh_avx512(x, y, n); return; }
    if (cn_tree_isa == 1) { cn_tree_tanh_avx2(x, y, n); return; }
#endif
    cn_tree_tanh_generic(x, y, n);
}

static void cn_tree_lstm_bwd_row(ptrdiff_t n, const float *dh, float *dc, const float *i,
                                 const float *u, const float *o, const float *tc, float *dzi,
                                 float *dzu, float *dzo) {
#if CN_TREE_SIMD
    if (cn_tree_isa == 2) { cn_tree_lstm_bwd_avx512(n, dh, dc, i, u, o, tc, dzi, dzu, dzo); return; }
    if (cn_tree_isa == 1) { cn_tree_lstm_bwd_avx2(n, dh, dc, i, u, o, tc, dzi, dzu, dzo); return; }
#endif
    cn_tree_lstm_bwd_generic(n, dh, dc, i, u, o, tc, dzi, dzu, dzo);
}

static void cn_tree_forget_bwd_row(ptrdiff_t n, const float *dc, const float *ck, const float *f,
                                   float *dzf, float *dck, float *acc) {
#if CN_TREE_SIMD
    if (cn_tree_isa == 2) { cn_tree_forget_bwd_avx512(n, dc, ck, f, dzf, dck, acc); return; }
    if (cn_tree_isa == 1) { cn_tree_forget_bwd_avx2(n, dc, ck, f, dzf, dck, acc); return; }
#endif
    cn_tree_forget_bwd_generic(n, dc, ck, f, dzf, dck, acc);
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif

#endif
