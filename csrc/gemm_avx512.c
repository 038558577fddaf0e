/* AVX-512F micro-kernels (compiled with -mavx512f): fp32 8x32, fp64 8x16. */
#include <immintrin.h>
#include "cn_kernels.h"

#define UKR_MR 8
#define UKR_NV 2
#define GEMV_NV 16    /* 32 vector registers: 16 accumulators of the one-row kernel */

#define UKR_NAME cn_sgemm_ukr_avx512
#define UKR_ROWS_NAME cn_sgemm_rows_ukr_avx512
#define UKR_EPI_NAME cn_sgemm_ukr_epi_avx512
#define PACK_A_NAME cn_spack_a_avx512
#define PACK_B_NAME cn_spack_b_avx512
#define GEMV_NAME cn_sgemv_avx512
#define DOTS_NAME cn_sdots_avx512
#define FMA_LOOP_NAME cn_fma_loop_avx512
#define UKR_T float
#define UKR_V __m512
#define UKR_VL 16
#define UKR_ZERO() _mm512_setzero_ps()
#define UKR_LOAD(p) _mm512_loadu_ps(p)
#define UKR_STORE(p, v) _mm512_storeu_ps((p), (v))
#define UKR_BCAST(p) _mm512_set1_ps(*(p))
#define UKR_FMA(a, b, c) _mm512_fmadd_ps((a), (b), (c))
#define UKR_ADD(a, b) _mm512_add_ps((a), (b))
#define UKR_MAX(a, b) _mm512_max_ps((a), (b))
#define UKR_NONFINITE(v) (_mm512_cmp_ps_mask(_mm512_sub_ps((v), (v)), _mm512_setzero_ps(), _CMP_NEQ_UQ) != 0)
#define UKR_MASK_T __mmask16
#define UKR_MASK(n) ((__mmask16)((1u << (n)) - 1))
#define UKR_LOAD_MASKED(p, mask) _mm512_maskz_loadu_ps((mask), (p))
#define UKR_STORE_MASKED(p, v, mask) _mm512_mask_storeu_ps((p), (mask), (v))
#include "gemm_ukr_template.h"
#define UKR_NR (UKR_NV * UKR_VL)
#define PACK_B_T_NAME cn_spack_b_t_avx512
#include "pack_transpose_f32.h"
#undef UKR_NR
#undef PACK_B_T_NAME
#include "gemm_ukr_undef.h"

#define UKR_NAME cn_dgemm_ukr_avx512
#define UKR_ROWS_NAME cn_dgemm_rows_ukr_avx512
#define UKR_EPI_NAME cn_dgemm_ukr_epi_avx512
#define PACK_A_NAME cn_dpack_a_avx512
#define PACK_B_NAME cn_dpack_b_avx512
#define GEMV_NAME cn_dgemv_avx512
#define DOTS_NAME cn_ddots_avx512
#define UKR_T double
#define UKR_V __m512d
#define UKR_VL 8
#define UKR_ZERO() _mm512_setzero_pd()
#define UKR_LOAD(p) _mm512_loadu_pd(p)
#define UKR_STORE(p, v) _mm512_storeu_pd((p), (v))
#define UKR_BCAST(p) _mm512_set1_pd(*(p))
#define UKR_FMA(a, b, c) _mm512_fmadd_pd((a), (b), (c))
#define UKR_ADD(a, b) _mm512_add_pd((a), (b))
#define UKR_MAX(a, b) _mm512_max_pd((a), (b))
#define UKR_NONFINITE(v) (_mm512_cmp_pd_mask(_mm512_sub_pd((v), (v)), _mm512_setzero_pd(), _CMP_NEQ_UQ) != 0)
#define UKR_MASK_T __mmask8
#define UKR_MASK(n) ((__mmask8)((1u << (n)) - 1))
#define UKR_LOAD_MASKED(p, mask) _mm512_maskz_loadu_pd((mask), (p))
#define UKR_STORE_MASKED(p, v, mask) _mm512_mask_storeu_pd((p), (mask), (v))
#include "gemm_ukr_template.h"

const cn_kernel_table cn_table_avx512 = {
    CN_ISA_AVX512, "avx512", 8, 32, 8, 16,
    cn_sgemm_ukr_avx512, cn_dgemm_ukr_avx512,
    cn_spack_a_avx512, cn_spack_b_t_avx512, cn_dpack_a_avx512, cn_dpack_b_avx512,
    cn_fma_loop_avx512,
    cn_sgemv_avx512, cn_dgemv_avx512,
    cn_sdots_avx512, cn_ddots_avx512,
    cn_sgemm_rows_ukr_avx512, cn_dgemm_rows_ukr_avx512,
    cn_sgemm_ukr_epi_avx512, cn_dgemm_ukr_epi_avx512,
};
