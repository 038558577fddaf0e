/* Direct convolution of a thin input (at most CN_THIN_MAX_PATCH values in a patch,
 * KH*KW*C: a first layer on images), stride and dilation 1, with the bias, a
 * ReLU-class activation and the pooling after it fused, for one sample (channels last).
 *
 * im2col + GEMM spends most of its time on such a layer writing patches and a
 * convolution output that the pooling reads back (K = 9 for a 3x3 grey image: the
 * GEMM is bound by its writes of C). Here each conv row a pooled row needs is made in a
 * small buffer (one row, OW x F, stays in L1) and pooled at once:
 *
 *   band[i][ox][f] = act(bias[f] + sum_k patch(oy0 + i, ox)[k] * w[k][f])
 *   y[py][px][f]   = max (or mean) over i < PH, j < PW of band[i][px*SW + j][f]
 *
 * with oy0 = py*SH and patch(oy, ox)[(i*KW + j)*C + c] = x[oy - PT + i][ox - PL + j][c]
 * (0 in the padding), read from a zero-padded copy of the sample. Four pixels by two
 * vectors of channels are summed in eight registers (GCC vector types of the copy's
 * width: zmm with AVX-512, ymm with AVX2, xmm on the baseline), the K x 2 vectors slice
 * of w staying in L1 across the row. The patch limit keeps that slice small: the same
 * loops on LeNet's second layer (K = 288, F = 64) ran at 28-48% of the GEMM's rate.
 *
 * Compiled three times per type from conv_thin_template.h (baseline, AVX2+FMA,
 * AVX-512F); the caller picks the copy of the GEMM's instruction set. */
#ifndef CN_CONV_THIN_H
#define CN_CONV_THIN_H
#include <stdint.h>
#include <string.h>

#define CN_THIN_MAX_PATCH 32

/* Activation codes: the GEMM epilogue's (gemm.pyx's Epilogue); only these three are
 * fused here (the caller checks). */
enum { CN_THIN_LINEAR = 0, CN_THIN_RELU = 1, CN_THIN_LEAKY_RELU = 8 };

typedef struct {
    int64_t H, W, C, F;         /* input (H, W, C), F output channels */
    int64_t KH, KW, PT, PL;     /* kernel, padding before the first row / column */
    int64_t OH, OW;             /* conv output */
    int64_t PH, PW, SH, SW;     /* pooling window and strides (no padding) */
    int64_t QH, QW;             /* pooled output */
    int act, max_pool;
    double alpha;               /* leaky_relu's slope */
} cn_thin_geometry;

#define CN_VEC_TEMPLATE "conv_thin_template.h"
#include "cn_vec_copies.h"

/* Values of scratch one sample needs: the padded input and PH conv rows */
static inline int64_t cn_thin_scratch(const cn_thin_geometry *g) {
    return (g->OH + g->KH - 1) * (g->OW + g->KW - 1) * g->C + g->PH * g->OW * g->F;
}

/* cn_thin_conv_pool_f32 / _f64(isa, ..., q0, q1): pooled rows [q0, q1) of one sample by
 * the copy for isa 0 (baseline), 1 (AVX2) or 2 (AVX-512), the GEMM's current_isa */
#define CN_THIN_DISPATCH(tn, T)                                                           \
static inline void cn_thin_conv_pool_##tn(int isa, const cn_thin_geometry *g, const T *x,  \
                                          const T *w, const T *bias, T *y, T *scratch,     \
                                          int64_t q0, int64_t q1) {                        \
    CN_VEC_CALL(isa, cn_thin_conv_pool_##tn, (g, x, w, bias, y, scratch, q0, q1));         \
}
CN_THIN_DISPATCH(f32, float)
CN_THIN_DISPATCH(f64, double)
#endif
