/* float32 vector math for the element-wise kernels (activations, softmax, the GEMM
 * epilogue): an AVX2 + FMA copy and an AVX-512F copy of csrc/vmath_template.h, picked
 * at run time by the caller from the GEMM's instruction set (gemm.current_isa: 0 generic,
 * 1 AVX2, 2 AVX-512, only ever a set this CPU has). On the generic path these return 0
 * and the caller runs its scalar loops (libm), so that path keeps its bits.
 *
 * Measured (Zen 5, one thread, 131,072 float32): sigmoid 989 us on the libm loop,
 * vector copies in the README's table. The macro set of each copy is csrc/vmath_isa.h;
 * csrc/rnn_gates.h instantiates its recurrent rows on the same functions. */
#ifndef CN_VMATH_H
#define CN_VMATH_H
#include <stdint.h>

enum { CN_VM_SIGMOID = 1, CN_VM_TANH = 2, CN_VM_SWISH = 3, CN_VM_GELU = 4,
       CN_VM_GELU_TANH = 5, CN_VM_EXP = 6, CN_VM_ELU = 7 };

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define CN_VM_HAVE_SIMD 1
#include <immintrin.h>

/* p 2^n (n also in t's low mantissa bits: t = n + 1.5 2^23) as p 2^(n/2) 2^(n - n/2): both
   factors normal for n in [-151, 129], so the result underflows and overflows like exp */
__attribute__((target("avx2,fma"))) static inline __m256 cn_scale_avx2(__m256 p, __m256 t) {
    __m256i k = _mm256_sub_epi32(_mm256_castps_si256(t), _mm256_set1_epi32(0x4B400000));
    __m256i k1 = _mm256_srai_epi32(k, 1);
    __m256i k2 = _mm256_sub_epi32(k, k1);
    __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(k1, _mm256_set1_epi32(127)), 23));
    __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(k2, _mm256_set1_epi32(127)), 23));
    return _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
}

/* The same p 2^n where the range of n allows fewer operations (the same bits: the
   products before the last are exact, the last rounds once, as above):
   n in [-151, 0] (e^x, x <= 0): p 2^(n + 64), normal, then times 2^-64;
   n in [0, 127] (e^x, 0 <= x <= 88): p 2^n, one factor. */
__attribute__((target("avx2,fma"))) static inline __m256 cn_scale_neg_avx2(__m256 p, __m256 t) {
    __m256i e = _mm256_add_epi32(_mm256_castps_si256(t), _mm256_set1_epi32(127 + 64 - 0x4B400000));
    __m256 s = _mm256_castsi256_ps(_mm256_slli_epi32(e, 23));
    return _mm256_mul_ps(_mm256_mul_ps(p, s), _mm256_set1_ps(5.42101086242752217e-20f));  /* 2^-64 */
}

__attribute__((target("avx2,fma"))) static inline __m256 cn_scale_pos_avx2(__m256 p, __m256 t) {
    __m256i e = _mm256_add_epi32(_mm256_castps_si256(t), _mm256_set1_epi32(127 - 0x4B400000));
    return _mm256_mul_ps(p, _mm256_castsi256_ps(_mm256_slli_epi32(e, 23)));
}

/* 2 sqrt(2/pi) (x + 0.044715 x^3) in double, rounded once (as the scalar code does):
   GELU-tanh's tail e^v is as accurate as v, and float steps would cost 6e-6 at x = -10. */
__attribute__((target("avx2,fma"))) static inline __m256 cn_gelu_tanh_arg_avx2(__m256 x) {
    const __m256d k = _mm256_set1_pd(2 * 0.79788456080286535588), c = _mm256_set1_pd(0.044715);
    __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(x));
    __m256d hi = _mm256_cvtps_pd(_mm256_extractf128_ps(x, 1));
    lo = _mm256_mul_pd(k, _mm256_fmadd_pd(_mm256_mul_pd(c, lo), _mm256_mul_pd(lo, lo), lo));
    hi = _mm256_mul_pd(k, _mm256_fmadd_pd(_mm256_mul_pd(c, hi), _mm256_mul_pd(hi, hi), hi));
    return _mm256_insertf128_ps(_mm256_castps128_ps256(_mm256_cvtpd_ps(lo)), _mm256_cvtpd_ps(hi), 1);
}

__attribute__((target("avx512f"))) static inline __m512 cn_gelu_tanh_arg_avx512(__m512 x) {
    const __m512d k = _mm512_set1_pd(2 * 0.79788456080286535588), c = _mm512_set1_pd(0.044715);
    __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(x));
    __m512d hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1)));
    lo = _mm512_mul_pd(k, _mm512_fmadd_pd(_mm512_mul_pd(c, lo), _mm512_mul_pd(lo, lo), lo));
    hi = _mm512_mul_pd(k, _mm512_fmadd_pd(_mm512_mul_pd(c, hi), _mm512_mul_pd(hi, hi), hi));
    return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castps_pd(_mm512_castps256_ps512(
        _mm512_cvtpd_ps(lo))), _mm256_castps_pd(_mm512_cvtpd_ps(hi)), 1));
}

#define CN_VM_ISA 1
#include "vmath_isa.h"
#include "vmath_template.h"
#include "vmath_undef.h"
#define CN_VM_ISA 2
#include "vmath_isa.h"
#include "vmath_template.h"
#include "vmath_undef.h"
#else
#define CN_VM_HAVE_SIMD 0
#endif

/* The vector copy for instruction set `isa` (0 generic, 1 AVX2, 2 AVX-512): 0 when
   there is none (the caller's scalar loops run). The caller passes a set the CPU has. */
static inline int cn_vm_isa(int isa) {
#if CN_VM_HAVE_SIMD
    return isa < 0 ? 0 : (isa > 2 ? 2 : isa);
#else
    (void)isa;
    return 0;
#endif
}

/* y[0:n] = fn(x[0:n]) (CN_VM_*; alpha and scale are ELU's) with copy `isa` (nonzero,
   from cn_vm_isa). */
static inline void cn_vm_map_f32(int isa, int fn, const float *x, float *y, int64_t n,
                                 float alpha, float scale) {
#if CN_VM_HAVE_SIMD
    if (isa >= 2)
        cn_vm_map_avx512(fn, x, y, n, alpha, scale);
    else
        cn_vm_map_avx2(fn, x, y, n, alpha, scale);
#else
    (void)isa; (void)fn; (void)x; (void)y; (void)n; (void)alpha; (void)scale;
#endif
}

/* y[0:n] = e^(x - m); returns their sum (copy `isa`, nonzero). */
static inline float cn_vm_exp_sum_f32(int isa, const float *x, float *y, int64_t n, float m) {
#if CN_VM_HAVE_SIMD
    return isa >= 2 ? cn_vm_exp_sum_avx512(x, y, n, m) : cn_vm_exp_sum_avx2(x, y, n, m);
#else
    (void)isa; (void)x; (void)y; (void)n; (void)m;
    return 0.0f;
#endif
}
#endif
