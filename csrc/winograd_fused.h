/* Winograd F(4x4, 3x3) transforms for the fused small-batch convolution
 * (conv.pyx's winograd_conv_pool): a 3x3, stride-1 convolution of a few samples, its
 * bias, a ReLU-class activation and a non-overlapping pooling after it, in one call.
 *
 * The layer's own Winograd (layers/conv.py with cyneuron._kernels.winograd) runs its 36
 * transform-domain products as 36 GEMM calls from Python and its transforms through
 * generic strided loops: right for a batch (the products are large), too slow for one
 * sample, where LeNet's 14x14x32 -> 64 took 62 us against 32 us for im2col + GEMM. Here
 * the transforms hold a whole 6x6 patch (or its products) of one vector of channels in
 * registers (GCC vector types of the copy's width), and the caller runs the 36 products
 * through the serial GEMM between them:
 *
 *   kernel:  U[xi] (C, F) = G g G^T            (g the 3x3 taps of each channel pair)
 *   input:   V[xi] (T, C) = B^T d B            (d each tile's 6x6 input patch, zeros
 *                                               outside the image)
 *   output:  y = act(A^T M A + bias), pooled   (M[xi] (T, F) = V[xi] @ U[xi])
 *
 * T counts the 4x4 output tiles of all samples; tile (ty, tx) of a sample reads its
 * patch from input row 4*ty - PT, column 4*tx - PL. The pooling fused in the output
 * transform has windows equal to its strides, each 1, 2 or 4 (a window never crosses
 * a tile); 1x1 writes the convolution's output. The formulas are Lavin and Gray's, as
 * in winograd.pyx.tp; contracted into FMAs here, so the bits may differ from the
 * layer's path in the last places.
 *
 * Compiled three times per type from winograd_fused_template.h (baseline, AVX2+FMA,
 * AVX-512F); the caller picks the copy of the GEMM's instruction set. */
#ifndef CN_WINOGRAD_FUSED_H
#define CN_WINOGRAD_FUSED_H
#include <stdint.h>
#include <string.h>

/* The activation codes and the vector activation are the thin convolution's
 * (cn_thin_act_v: linear, relu, leaky_relu, the GEMM epilogue's codes). */
#include "conv_thin.h"

typedef struct {
    int64_t N, H, W, C, F;      /* N samples of (H, W, C); F filters */
    int64_t PT, PL;             /* padding before the first row / column */
    int64_t OH, OW, TH, TW;     /* convolution output; tiles down and across */
    int64_t PH, PW, QH, QW;     /* pooling window = strides (1, 2 or 4); pooled output */
    int64_t VS, US, MS;         /* values from one transform-domain slice (xi) to the next
                                   in V (36, chunk, C), U (36, C, F) and M (36, chunk, F) */
    int act, max_pool;
    double alpha;               /* leaky_relu's slope */
} cn_wino_geometry;

#define CN_VEC_TEMPLATE "winograd_fused_template.h"
#include "cn_vec_copies.h"

/* cn_wino_{input,kernel,output}_{f32,f64}(isa, ...): the copy for isa 0 (baseline),
 * 1 (AVX2) or 2 (AVX-512), the GEMM's current_isa. The transform domain holds a chunk
 * of tiles at a time, its first tile `base` (t0 for the output):
 *   input(g, x, V, t0, t1, base)       tiles [t0, t1) into V (36, chunk, C) from x
 *                                      (N, H, W, C)
 *   kernel(g, w, U, c0, c1)            rows [c0, c1) of U (36, C, F) from w (3, 3, C, F)
 *   output(g, M, bias, y, f0, f1, t0, t1)  filters [f0, f1) of tiles [t0, t1) of y
 *                                      (N, QH, QW, F) from M (36, chunk, F); bias (F) or
 *                                      NULL */
#define CN_WINO_DISPATCH(tn, T)                                                             \
static inline void cn_wino_input_##tn(int isa, const cn_wino_geometry *g, const T *x,       \
                                      T *V, int64_t t0, int64_t t1, int64_t base) {         \
    CN_VEC_CALL(isa, cn_wino_input_##tn, (g, x, V, t0, t1, base));                           \
}                                                                                           \
static inline void cn_wino_kernel_##tn(int isa, const cn_wino_geometry *g, const T *w,      \
                                       T *U, int64_t c0, int64_t c1) {                      \
    CN_VEC_CALL(isa, cn_wino_kernel_##tn, (g, w, U, c0, c1));                                \
}                                                                                           \
static inline void cn_wino_output_##tn(int isa, const cn_wino_geometry *g, const T *M,      \
                                       const T *bias, T *y, int64_t f0, int64_t f1,         \
                                       int64_t t0, int64_t t1) {                            \
    CN_VEC_CALL(isa, cn_wino_output_##tn, (g, M, bias, y, f0, f1, t0, t1));                  \
}
CN_WINO_DISPATCH(f32, float)
CN_WINO_DISPATCH(f64, double)
#endif
