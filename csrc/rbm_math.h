/* Element-wise loops of the RBM kernel (cyneuron._kernels.rbm): bias + logistic sigmoid
 * and Bernoulli sampling from the counter-based generator, in plain C written so that
 * the compiler vectorizes them (no libm calls, no data-dependent branches), compiled
 * for the build's baseline, AVX2+FMA and AVX-512F in this one file with GCC's target
 * attribute, and picked at run time from the GEMM's instruction set (current_isa(): the
 * CPU check and CYNEURON_ISA), so AVX code is only reached on a CPU that has it.
 *
 * exp, double: x clamped to [-708, 708]; k = round(x / ln 2) with the 1.5 * 2^52
 * shifter (whose bits then hold k, so 2^k is built with integer adds and a shift);
 * r = x - k ln 2 (two-part ln 2); e^r by its Taylor polynomial to degree 13,
 * |r| <= ln2 / 2. Measured: within 1.0 ulp of the correctly rounded exp over
 * [-700, 700]. float: cn_expf (cn_expf.h), the project's one float32 exp.
 *
 * Uniforms: draw i of stream s is u = splitmix64(s + (i + 1) * golden) >> 12 read as the
 * mantissa of a double in [1, 2), minus 1: 52 random bits in [0, 1).
 */
#ifndef CN_RBM_MATH_H
#define CN_RBM_MATH_H
#include <stdint.h>
#include <string.h>

#include "cn_expf.h"   /* cn_expf: the float32 exp, shared with the recurrent and attention kernels */

#define CN_RBM_GOLDEN 0x9E3779B97F4A7C15ULL

static inline uint64_t cn_rbm_mix(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static inline double cn_rbm_uniform(uint64_t stream, uint64_t i) {
    uint64_t b = (cn_rbm_mix(stream + (i + 1) * CN_RBM_GOLDEN) >> 12) | 0x3FF0000000000000ULL;
    double u;
    memcpy(&u, &b, 8);
    return u - 1.0;
}

static inline double cn_rbm_exp_d(double x) {
    const double shifter = 6755399441055744.0;      /* 1.5 * 2^52 */
    x = x < -708.0 ? -708.0 : (x > 708.0 ? 708.0 : x);
    double t = x * 1.4426950408889634 + shifter;
    double k = t - shifter;
    double r = (x - k * 6.93147180369123816490e-01) - k * 1.90821492927058770002e-10;
    double p = 1.0 / 6227020800.0;
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    int64_t tb, sb;
    memcpy(&tb, &t, 8);
    memcpy(&sb, &shifter, 8);
    int64_t eb = (tb - sb + 1023) << 52;
    double scale;
    memcpy(&scale, &eb, 8);
    return p * scale;
}

/* Z[r, c] = sigmoid(Z[r, c] + bias[c]) for r < rows, c0 <= c < c1 (row stride ld). */
#define CN_RBM_SIGMOID_DEF(NAME, T, EXP, ATTR)                                         \
    ATTR static void NAME(int64_t rows, int64_t ld, int64_t c0, int64_t c1, T *Z,        \
                          const T *bias) {                                               \
        for (int64_t r = 0; r < rows; r++) {                                             \
            T *restrict z = Z + r * ld;                                                  \
            for (int64_t c = c0; c < c1; c++)                                            \
                z[c] = (T)1 / ((T)1 + EXP(-(z[c] + bias[c])));                           \
        }                                                                                \
    }

/* S[r, c] = 1 if uniform(stream, r * ld + c) < P[r, c] else 0 (S may be P). */
#define CN_RBM_SAMPLE_DEF(NAME, T, ATTR)                                                \
    ATTR static void NAME(int64_t rows, int64_t ld, int64_t c0, int64_t c1, const T *P,  \
                          T *S, uint64_t stream) {                                       \
        for (int64_t r = 0; r < rows; r++) {                                             \
            for (int64_t c = c0; c < c1; c++) {                                          \
                double u = cn_rbm_uniform(stream, (uint64_t)(r * ld + c));               \
                S[r * ld + c] = u < (double)P[r * ld + c] ? (T)1 : (T)0;                 \
            }                                                                            \
        }                                                                                \
    }

#define CN_RBM_ALL(SUFFIX, ATTR)                                                        \
    CN_RBM_SIGMOID_DEF(cn_rbm_sigmoid_d_##SUFFIX, double, cn_rbm_exp_d, ATTR)          \
    CN_RBM_SIGMOID_DEF(cn_rbm_sigmoid_s_##SUFFIX, float, cn_expf, ATTR)                 \
    CN_RBM_SAMPLE_DEF(cn_rbm_sample_d_##SUFFIX, double, ATTR)                          \
    CN_RBM_SAMPLE_DEF(cn_rbm_sample_s_##SUFFIX, float, ATTR)

CN_RBM_ALL(generic, )
#if defined(CN_HAVE_X86_KERNELS) && defined(__GNUC__)
CN_RBM_ALL(avx2, __attribute__((target("avx2,fma"))))
CN_RBM_ALL(avx512, __attribute__((target("avx512f,avx2,fma"))))
#define CN_RBM_DISPATCH(NAME, ...)                                                      \
    do {                                                                                 \
        if (isa == 2) NAME##_avx512(__VA_ARGS__);                                        \
        else if (isa == 1) NAME##_avx2(__VA_ARGS__);                                     \
        else NAME##_generic(__VA_ARGS__);                                                \
    } while (0)
#else
#define CN_RBM_DISPATCH(NAME, ...) do { (void)isa; NAME##_generic(__VA_ARGS__); } while (0)
#endif

static inline void cn_rbm_sigmoid_d(int isa, int64_t rows, int64_t ld, int64_t c0, int64_t c1,
                                    double *Z, const double *bias) {
    CN_RBM_DISPATCH(cn_rbm_sigmoid_d, rows, ld, c0, c1, Z, bias);
}
static inline void cn_rbm_sigmoid_s(int isa, int64_t rows, int64_t ld, int64_t c0, int64_t c1,
                                    float *Z, const float *bias) {
    CN_RBM_DISPATCH(cn_rbm_sigmoid_s, rows, ld, c0, c1, Z, bias);
}
static inline void cn_rbm_sample_d(int isa, int64_t rows, int64_t ld, int64_t c0, int64_t c1,
                                   const double *P, double *S, uint64_t stream) {
    CN_RBM_DISPATCH(cn_rbm_sample_d, rows, ld, c0, c1, P, S, stream);
}
static inline void cn_rbm_sample_s(int isa, int64_t rows, int64_t ld, int64_t c0, int64_t c1,
                                   const float *P, float *S, uint64_t stream) {
    CN_RBM_DISPATCH(cn_rbm_sample_s, rows, ld, c0, c1, P, S, stream);
}
#endif
