/* Includes the template named by CN_VEC_TEMPLATE (a quoted file name) six times: float
 * and double, each for the build's baseline (16-byte vectors), AVX2 + FMA (32) and
 * AVX-512F (64). Each copy sees CN_T (the element type), CN_INT (the integer of its
 * width), CN_SFX (f32_generic ... f64_avx512: the suffix of its names), CN_ATTR (its
 * target attribute) and CN_BYTES (the vector width in bytes); cn_vec_undef.h clears
 * them after it. The caller picks a copy at run time from the GEMM's instruction set.
 * Used by the thin convolution (conv_thin.h) and the fused Winograd transforms
 * (winograd_fused.h). */
#include <stdint.h>

#ifndef CN_VEC_COPIES_TARGETS
#define CN_VEC_COPIES_TARGETS
#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define CN_VEC_AVX2 __attribute__((target("avx2,fma")))
#define CN_VEC_AVX512 __attribute__((target("avx512f")))
#else
#define CN_VEC_AVX2
#define CN_VEC_AVX512
#endif
/* fn_avx512 args, fn_avx2 args or fn_generic args for isa 2, 1 or 0 (the GEMM's
   current_isa); fn names the float or double copy, e.g. cn_thin_conv_pool_f32 */
#define CN_VEC_CALL(isa, fn, args) \
    ((isa) >= 2 ? fn##_avx512 args : (isa) == 1 ? fn##_avx2 args : fn##_generic args)
#endif

#define CN_T float
#define CN_INT int32_t
#define CN_SFX f32_generic
#define CN_ATTR
#define CN_BYTES 16
#include CN_VEC_TEMPLATE
#include "cn_vec_undef.h"
#define CN_T float
#define CN_INT int32_t
#define CN_SFX f32_avx2
#define CN_ATTR CN_VEC_AVX2
#define CN_BYTES 32
#include CN_VEC_TEMPLATE
#include "cn_vec_undef.h"
#define CN_T float
#define CN_INT int32_t
#define CN_SFX f32_avx512
#define CN_ATTR CN_VEC_AVX512
#define CN_BYTES 64
#include CN_VEC_TEMPLATE
#include "cn_vec_undef.h"
#define CN_T double
#define CN_INT int64_t
#define CN_SFX f64_generic
#define CN_ATTR
#define CN_BYTES 16
#include CN_VEC_TEMPLATE
#include "cn_vec_undef.h"
#define CN_T double
#define CN_INT int64_t
#define CN_SFX f64_avx2
#define CN_ATTR CN_VEC_AVX2
#define CN_BYTES 32
#include CN_VEC_TEMPLATE
#include "cn_vec_undef.h"
#define CN_T double
#define CN_INT int64_t
#define CN_SFX f64_avx512
#define CN_ATTR CN_VEC_AVX512
#define CN_BYTES 64
#include CN_VEC_TEMPLATE
#include "cn_vec_undef.h"
#undef CN_VEC_TEMPLATE
