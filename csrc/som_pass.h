/* The self-organising map's online update pass (cyneuron._kernels.som.train_online), in
 * plain C so that the compiler vectorizes it for each instruction set: generic (the
 * build's baseline, SSE2 on x86-64), AVX2+FMA and AVX-512F copies, compiled with GCC's
 * target attribute in this one file and picked at run time by the caller from the GEMM's
 * instruction set (current_isa(), which follows the CPU check and CYNEURON_ISA), so the
 * AVX code is only reached on a CPU that has it.
 *
 * Wt is the weights node-minor, (D, K). For every d and node j:
 *   q = Wt[d, j] + amt[j] * (x[d] - Wt[d, j]);  Wt[d, j] = q;
 *   wsq[j] += q * q;  dist[j] -= 2 xn[d] * q
 * (the update by the neighbourhood amounts amt, the new squared norms, and the cross
 * term of the next sample's distances: one pass over the weights per iteration). */
#ifndef CN_SOM_PASS_H
#define CN_SOM_PASS_H
#include <stdint.h>

#define CN_SOM_PASS_BODY(T)                                                          \
    for (int64_t d = 0; d < D; d++) {                                                \
        T *restrict row = Wt + d * K;                                                \
        const T xd = x[d], a2 = 2 * xn[d];                                           \
        for (int64_t j = 0; j < K; j++) {                                            \
            T q = row[j] + amt[j] * (xd - row[j]);                                   \
            row[j] = q;                                                              \
            wsq[j] += q * q;                                                         \
            dist[j] -= a2 * q;                                                       \
        }                                                                            \
    }

#define CN_SOM_PASS_DEF(NAME, T, ATTR)                                               \
    ATTR static void NAME(int64_t D, int64_t K, T *restrict Wt, const T *restrict amt,  \
                          const T *restrict x, const T *restrict xn, T *restrict wsq, \
                          T *restrict dist) { CN_SOM_PASS_BODY(T) }

CN_SOM_PASS_DEF(cn_som_pass_d_generic, double, )
CN_SOM_PASS_DEF(cn_som_pass_s_generic, float, )
#if defined(CN_HAVE_X86_KERNELS) && defined(__GNUC__)
CN_SOM_PASS_DEF(cn_som_pass_d_avx2, double, __attribute__((target("avx2,fma"))))
CN_SOM_PASS_DEF(cn_som_pass_s_avx2, float, __attribute__((target("avx2,fma"))))
CN_SOM_PASS_DEF(cn_som_pass_d_avx512, double, __attribute__((target("avx512f,avx2,fma"))))
CN_SOM_PASS_DEF(cn_som_pass_s_avx512, float, __attribute__((target("avx512f,avx2,fma"))))
#define CN_SOM_HAVE_X86 1
#else
#define CN_SOM_HAVE_X86 0
#endif

/* isa: 0 generic, 1 AVX2, 2 AVX-512 (the GEMM's numbering). */
static inline void cn_som_pass_d(int isa, int64_t D, int64_t K, double *Wt, const double *amt,
                                 const double *x, const double *xn, double *wsq, double *dist) {
#if CN_SOM_HAVE_X86
    if (isa == 2) { cn_som_pass_d_avx512(D, K, Wt, amt, x, xn, wsq, dist); return; }
    if (isa == 1) { cn_som_pass_d_avx2(D, K, Wt, amt, x, xn, wsq, dist); return; }
#endif
    (void)isa;
    cn_som_pass_d_generic(D, K, Wt, amt, x, xn, wsq, dist);
}

static inline void cn_som_pass_s(int isa, int64_t D, int64_t K, float *Wt, const float *amt,
                                 const float *x, const float *xn, float *wsq, float *dist) {
#if CN_SOM_HAVE_X86
    if (isa == 2) { cn_som_pass_s_avx512(D, K, Wt, amt, x, xn, wsq, dist); return; }
    if (isa == 1) { cn_som_pass_s_avx2(D, K, Wt, amt, x, xn, wsq, dist); return; }
#endif
    (void)isa;
    cn_som_pass_s_generic(D, K, Wt, amt, x, xn, wsq, dist);
}
#endif
