/* Portable C micro-kernels: no intrinsics, compiled with the baseline flags. */
#include "cn_kernels.h"

#define UKR_MR 4
#define UKR_NV 8

#define UKR_NAME cn_sgemm_ukr_generic
#define UKR_ROWS_NAME cn_sgemm_rows_ukr_generic
#define UKR_EPI_NAME cn_sgemm_ukr_epi_generic
#define PACK_A_NAME cn_spack_a_generic
#define PACK_B_NAME cn_spack_b_generic
#define GEMV_NAME cn_sgemv_generic
#define DOTS_NAME cn_sdots_generic
#define FMA_LOOP_NAME cn_fma_loop_generic
#define UKR_T float
#define UKR_V float
#define UKR_VL 1
#define UKR_ZERO() 0
#define UKR_LOAD(p) (*(p))
#define UKR_STORE(p, v) (*(p) = (v))
#define UKR_BCAST(p) (*(p))
#define UKR_FMA(a, b, c) ((a) * (b) + (c))
#define UKR_ADD(a, b) ((a) + (b))
#define UKR_MAX(a, b) ((a) > (b) ? (a) : (b))
#define UKR_NONFINITE(v) ((v) - (v) != 0)
#include "gemm_ukr_template.h"
#undef UKR_NAME
#undef UKR_ROWS_NAME
#undef UKR_EPI_NAME
#undef PACK_A_NAME
#undef PACK_B_NAME
#undef GEMV_NAME
#undef DOTS_NAME
#undef FMA_LOOP_NAME
#undef UKR_T
#undef UKR_V

#define UKR_NAME cn_dgemm_ukr_generic
#define UKR_ROWS_NAME cn_dgemm_rows_ukr_generic
#define UKR_EPI_NAME cn_dgemm_ukr_epi_generic
#define PACK_A_NAME cn_dpack_a_generic
#define PACK_B_NAME cn_dpack_b_generic
#define GEMV_NAME cn_dgemv_generic
#define DOTS_NAME cn_ddots_generic
#define UKR_T double
#define UKR_V double
#include "gemm_ukr_template.h"

const cn_kernel_table cn_table_generic = {
    CN_ISA_GENERIC, "generic", 4, 8, 4, 8,
    cn_sgemm_ukr_generic, cn_dgemm_ukr_generic,
    cn_spack_a_generic, cn_spack_b_generic, cn_dpack_a_generic, cn_dpack_b_generic,
    cn_fma_loop_generic,
    cn_sgemv_generic, cn_dgemv_generic,
    cn_sdots_generic, cn_ddots_generic,
    cn_sgemm_rows_ukr_generic, cn_dgemm_rows_ukr_generic,
    cn_sgemm_ukr_epi_generic, cn_dgemm_ukr_epi_generic,
};
