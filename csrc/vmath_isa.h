/* The macro set of one vector instruction set, for the float32 templates that are
 * instantiated once per set: csrc/vmath_template.h (exp, sigmoid, tanh, ... and their
 * loops) and csrc/rnn_gates_template.h (the recurrent gate rows, built on the former).
 * Define CN_VM_ISA (1: AVX2 + FMA, 2: AVX-512F), include this, then the template, then
 * csrc/vmath_undef.h. Needs csrc/vmath.h's helpers (cn_scale_avx2, cn_gelu_tanh_arg_*).
 *
 *   CN_SFX        name suffix (avx2, avx512)          CN_VW   lanes per vector
 *   CN_ATTR       the function attribute (target)     CN_V    the vector type
 *   CN_NAME(f)    f with the suffix                   CN_PS   a constant in every lane
 *   V_LD V_ST V_SET1 V_ADD V_SUB V_MUL V_FMADD V_FNMADD V_FMSUB V_MIN V_MAX V_RCP
 *   V_AND V_ANDNOT V_OR           bit operations on float vectors
 *   V_SELECT_LT(a, c, x, y)       a < c ? x : y, per lane
 *   V_RCP_NEWTON_STEPS            Newton steps after V_RCP's estimate
 *   V_SCALE(p, n, t)              p 2^n (n also given as t = n + 1.5 2^23)
 *   V_SCALE_NEG, V_SCALE_POS      the same for n in [-151, 0], in [0, 127]
 *   V_GELU_TANH_ARG(x)            2 sqrt(2/pi) (x + 0.044715 x^3), rounded once
 * No include guard: included once per instruction set and template. */

#define CN_CAT_(a, b) a##_##b
#define CN_CAT(a, b) CN_CAT_(a, b)
#define CN_NAME(name) CN_CAT(name, CN_SFX)
#define CN_PS(v) V_SET1(v)

#if CN_VM_ISA == 1
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
#define V_FMSUB _mm256_fmsub_ps
#define V_MIN _mm256_min_ps
#define V_MAX _mm256_max_ps
#define V_RCP _mm256_rcp_ps
#define V_RCP_NEWTON_STEPS 2
#define V_AND _mm256_and_ps
#define V_ANDNOT _mm256_andnot_ps
#define V_OR _mm256_or_ps
#define V_SELECT_LT(a, c, x, y) _mm256_blendv_ps((y), (x), _mm256_cmp_ps((a), (c), _CMP_LT_OQ))
#define V_SCALE(p, n, t) cn_scale_avx2((p), (t))
#define V_SCALE_NEG(p, n, t) cn_scale_neg_avx2((p), (t))
#define V_SCALE_POS(p, n, t) cn_scale_pos_avx2((p), (t))
#define V_GELU_TANH_ARG cn_gelu_tanh_arg_avx2

#elif CN_VM_ISA == 2      /* AVX-512F only: bit operations through the integer forms (no DQ) */
#define CN_SFX avx512
#define CN_VW 16
#define CN_V __m512
#define CN_ATTR __attribute__((target("avx512f")))
#define CN_VM_BITS(op, a, b) \
    _mm512_castsi512_ps(op(_mm512_castps_si512(a), _mm512_castps_si512(b)))
#define V_LD _mm512_loadu_ps
#define V_ST _mm512_storeu_ps
#define V_SET1 _mm512_set1_ps
#define V_ADD _mm512_add_ps
#define V_SUB _mm512_sub_ps
#define V_MUL _mm512_mul_ps
#define V_FMADD _mm512_fmadd_ps
#define V_FNMADD _mm512_fnmadd_ps
#define V_FMSUB _mm512_fmsub_ps
#define V_MIN _mm512_min_ps
#define V_MAX _mm512_max_ps
#define V_RCP _mm512_rcp14_ps
#define V_RCP_NEWTON_STEPS 1
#define V_AND(a, b) CN_VM_BITS(_mm512_and_si512, a, b)
#define V_ANDNOT(a, b) CN_VM_BITS(_mm512_andnot_si512, a, b)
#define V_OR(a, b) CN_VM_BITS(_mm512_or_si512, a, b)
#define V_SELECT_LT(a, c, x, y) \
    _mm512_mask_blend_ps(_mm512_cmp_ps_mask((a), (c), _CMP_LT_OQ), (y), (x))
#define V_SCALE(p, n, t) _mm512_scalef_ps((p), (n))    /* p 2^n in one instruction */
#define V_SCALE_NEG V_SCALE
#define V_SCALE_POS V_SCALE
#define V_GELU_TANH_ARG cn_gelu_tanh_arg_avx512

#else
#error "vmath_isa.h: define CN_VM_ISA as 1 (AVX2 + FMA) or 2 (AVX-512F) first"
#endif
