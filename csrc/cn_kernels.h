/* cyneuron C core: SIMD GEMM micro-kernels and the CPU dispatch table.
 *
 * Plain C, no Python. Each instruction set has its own translation unit,
 * compiled with its own flags (gemm_generic.c, gemm_avx2.c, gemm_avx512.c);
 * code built with -mavx2/-mavx512f is only reached after cn_cpu_supports()
 * has said yes.
 */
#ifndef CN_KERNELS_H
#define CN_KERNELS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { CN_ISA_GENERIC = 0, CN_ISA_AVX2 = 1, CN_ISA_AVX512 = 2, CN_ISA_COUNT = 3 };

/* Micro-kernel contract (BLIS style):
 *   C[0:m, 0:n] = (beta ? C : 0) + Apanel . Bpanel
 * Apanel holds k steps of MR values (column p of an MR-row sliver of A),
 * Bpanel holds k steps of NR values (row p of an NR-column sliver of B),
 * both zero-padded past m and n. C is row-major with row stride ldc.
 * m <= MR and n <= NR; with beta == 0 C is only written, never read. */
typedef void (*cn_sgemm_ukr_t)(int64_t k, const float *a, const float *b,
                               float *c, int64_t ldc, int m, int n, int beta);
typedef void (*cn_dgemm_ukr_t)(int64_t k, const double *a, const double *b,
                               double *c, int64_t ldc, int m, int n, int beta);

typedef struct {
    int isa;
    const char *name;
    int s_mr, s_nr;     /* float32 register block */
    int d_mr, d_nr;     /* float64 register block */
    cn_sgemm_ukr_t sgemm_ukr;
    cn_dgemm_ukr_t dgemm_ukr;
} cn_kernel_table;

extern const cn_kernel_table cn_table_generic;
#if defined(CN_HAVE_X86_KERNELS)
extern const cn_kernel_table cn_table_avx2;
extern const cn_kernel_table cn_table_avx512;
#endif

/* 1 if this CPU and its operating system can run the instruction set. */
int cn_cpu_supports(int isa);
/* The fastest instruction set this CPU supports. */
int cn_best_isa(void);
/* The kernel table of an instruction set, or NULL if it is not supported here. */
const cn_kernel_table *cn_kernels_for(int isa);

#ifdef __cplusplus
}
#endif
#endif
