/* AVX2 + FMA micro-kernels (compiled with -mavx2 -mfma): fp32 6x16, fp64 6x8. */
#include <immintrin.h>
#include "cn_kernels.h"

#define UKR_MR 6
#define UKR_NV 2

#define UKR_NAME cn_sgemm_ukr_avx2
#define UKR_ROWS_NAME cn_sgemm_rows_ukr_avx2
#define UKR_EPI_NAME cn_sgemm_ukr_epi_avx2
#define PACK_A_NAME cn_spack_a_avx2
#define PACK_B_NAME cn_spack_b_avx2
#define GEMV_NAME cn_sgemv_avx2
#define DOTS_NAME cn_sdots_avx2
#define FMA_LOOP_NAME cn_fma_loop_avx2
#define UKR_T float
#define UKR_V __m256
#define UKR_VL 8
#define UKR_ZERO() _mm256_setzero_ps()
#define UKR_LOAD(p) _mm256_loadu_ps(p)
#define UKR_STORE(p, v) _mm256_storeu_ps((p), (v))
#define UKR_BCAST(p) _mm256_broadcast_ss(p)
#define UKR_FMA(a, b, c) _mm256_fmadd_ps((a), (b), (c))
#define UKR_ADD(a, b) _mm256_add_ps((a), (b))
#define UKR_MAX(a, b) _mm256_max_ps((a), (b))
#define UKR_NONFINITE(v) (_mm256_movemask_ps(_mm256_cmp_ps(_mm256_sub_ps((v), (v)), _mm256_setzero_ps(), _CMP_NEQ_UQ)) != 0)
#define UKR_MASK_T __m256i
#define UKR_MASK(n) _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))
#define UKR_LOAD_MASKED(p, mask) _mm256_maskload_ps((p), (mask))
#define UKR_STORE_MASKED(p, v, mask) _mm256_maskstore_ps((p), (mask), (v))
#include "gemm_ukr_template.h"
#define UKR_NR (UKR_NV * UKR_VL)
#define PACK_B_T_NAME cn_spack_b_t_avx2
#include "pack_transpose_f32.h"
#undef UKR_NR
#undef PACK_B_T_NAME
#include "gemm_ukr_undef.h"

#define UKR_NAME cn_dgemm_ukr_avx2
#define UKR_ROWS_NAME cn_dgemm_rows_ukr_avx2
#define UKR_EPI_NAME cn_dgemm_ukr_epi_avx2
#define PACK_A_NAME cn_dpack_a_avx2
#define PACK_B_NAME cn_dpack_b_avx2
#define GEMV_NAME cn_dgemv_avx2
#define DOTS_NAME cn_ddots_avx2
#define UKR_T double
#define UKR_V __m256d
#define UKR_VL 4
#define UKR_ZERO() _mm256_setzero_pd()
#define UKR_LOAD(p) _mm256_loadu_pd(p)
#define UKR_STORE(p, v) _mm256_storeu_pd((p), (v))
#define UKR_BCAST(p) _mm256_broadcast_sd(p)
#define UKR_FMA(a, b, c) _mm256_fmadd_pd((a), (b), (c))
#define UKR_ADD(a, b) _mm256_add_pd((a), (b))
#define UKR_MAX(a, b) _mm256_max_pd((a), (b))
#define UKR_NONFINITE(v) (_mm256_movemask_pd(_mm256_cmp_pd(_mm256_sub_pd((v), (v)), _mm256_setzero_pd(), _CMP_NEQ_UQ)) != 0)
#define UKR_MASK_T __m256i
#define UKR_MASK(n) _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), _mm256_setr_epi64x(0, 1, 2, 3))
#define UKR_LOAD_MASKED(p, mask) _mm256_maskload_pd((p), (mask))
#define UKR_STORE_MASKED(p, v, mask) _mm256_maskstore_pd((p), (mask), (v))
#include "gemm_ukr_template.h"

const cn_kernel_table cn_table_avx2 = {
    CN_ISA_AVX2, "avx2", 6, 16, 6, 8,
    cn_sgemm_ukr_avx2, cn_dgemm_ukr_avx2,
    cn_spack_a_avx2, cn_spack_b_t_avx2, cn_dpack_a_avx2, cn_dpack_b_avx2,
    cn_fma_loop_avx2,
    cn_sgemv_avx2, cn_dgemv_avx2,
    cn_sdots_avx2, cn_ddots_avx2,
    cn_sgemm_rows_ukr_avx2, cn_dgemm_rows_ukr_avx2,
    cn_sgemm_ukr_epi_avx2, cn_dgemm_ukr_epi_avx2,
};
