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
 *   C[0:m, 0:n] = (beta ? C : 0) + A . B     (A: m x k, B: k x NR)
 * Element (i, p) of A is a[i * a_rs + p * a_cs]: a packed MR-row sliver has
 * a_rs = 1, a_cs = MR; a row-major matrix read in place has a_rs = lda, a_cs = 1.
 * Row p of B is the NR values at b + p * b_rs (a packed sliver has b_rs = NR;
 * a row-major matrix read in place has b_rs = ldb). Rows of A past m are never
 * read (the kernel repeats row m - 1 instead); B always has NR readable columns.
 * C is row-major with row stride ldc; 1 <= m <= MR, 1 <= n <= NR; with
 * beta == 0 C is only written, never read. */
typedef void (*cn_sgemm_ukr_t)(int64_t k, const float *a, int64_t a_rs, int64_t a_cs,
                               const float *b, int64_t b_rs,
                               float *c, int64_t ldc, int m, int n, int beta);
typedef void (*cn_dgemm_ukr_t)(int64_t k, const double *a, int64_t a_rs, int64_t a_cs,
                               const double *b, int64_t b_rs,
                               double *c, int64_t ldc, int m, int n, int beta);

/* The same product with row i of A gathered from anywhere (an implicit im2col):
 *   C[0:m, 0:n] = (beta ? C : 0) + A . B,  A[i, s * k + p] = a_rows[i][s * seg_stride + p]
 * for nseg segments of k columns (p < k); B has nseg * k rows as above. a_rows holds m
 * pointers (rows past m are never read). */
typedef void (*cn_sgemm_rows_ukr_t)(int64_t k, int64_t nseg, int64_t seg_stride,
                                    const float *const *a_rows, const float *b, int64_t b_rs,
                                    float *c, int64_t ldc, int m, int n, int beta);
typedef void (*cn_dgemm_rows_ukr_t)(int64_t k, int64_t nseg, int64_t seg_stride,
                                    const double *const *a_rows, const double *b, int64_t b_rs,
                                    double *c, int64_t ldc, int m, int n, int beta);
/* The micro-kernel with the cheap epilogue in its stores, for a k block that finishes
 * C: C = relu?((beta ? C : 0) + A . B + bias[0:n]) (bias NULL: none; relu 0 or 1), the
 * same bits as the kernel followed by the epilogue's bias add and relu; nonfinite (or
 * NULL) is set to 1 when a value before relu is NaN or infinite. */
typedef void (*cn_sgemm_ukr_epi_t)(int64_t k, const float *a, int64_t a_rs, int64_t a_cs,
                                   const float *b, int64_t b_rs, float *c, int64_t ldc,
                                   int m, int n, int beta, const float *bias, int relu,
                                   int *nonfinite);
typedef void (*cn_dgemm_ukr_epi_t)(int64_t k, const double *a, int64_t a_rs, int64_t a_cs,
                                   const double *b, int64_t b_rs, double *c, int64_t ldc,
                                   int m, int n, int beta, const double *bias, int relu,
                                   int *nonfinite);
/* Packing: copy an m-row (n-column) sliver of a strided matrix into the
 * contiguous, zero-padded layout the micro-kernel reads:
 *   pack_a: dst[p * MR + i] = src[i * rs + p * cs]   for i < m, 0 for m <= i < MR
 *   pack_b: dst[p * NR + j] = src[p * rs + j * cs]   for j < n, 0 for n <= j < NR */
typedef void (*cn_spack_t)(int64_t m, int64_t k, const float *src, int64_t rs, int64_t cs,
                           float *dst);
typedef void (*cn_dpack_t)(int64_t m, int64_t k, const double *src, int64_t rs, int64_t cs,
                           double *dst);

/* One-row product y[0:n] (+)= x . B[0:k, 0:n] (beta: add to y), x[p] at x + p * incx,
 * row p of B at b + p * b_rs with contiguous columns; any n. */
typedef void (*cn_sgemv_t)(int64_t k, int64_t n, const float *x, int64_t incx,
                           const float *b, int64_t b_rs, float *y, int beta);
typedef void (*cn_dgemv_t)(int64_t k, int64_t n, const double *x, int64_t incx,
                           const double *b, int64_t b_rs, double *y, int beta);

/* One-column product c[i * ldc] (+)= A[i, 0:k] . b[0:k] for i < m (beta: add to c),
 * row i of A at a + i * a_rs and b contiguous. */
typedef void (*cn_sdots_t)(int64_t k, const float *a, int64_t a_rs, const float *b,
                           float *c, int64_t ldc, int64_t m, int beta);
typedef void (*cn_ddots_t)(int64_t k, const double *a, int64_t a_rs, const double *b,
                           double *c, int64_t ldc, int64_t m, int beta);

/* Runs `iters` rounds of independent vector FMAs; returns the float32 flops done
 * (used to measure the machine's FMA peak). */
typedef double (*cn_fma_loop_t)(int64_t iters);

typedef struct {
    int isa;
    const char *name;
    int s_mr, s_nr;     /* float32 register block */
    int d_mr, d_nr;     /* float64 register block */
    cn_sgemm_ukr_t sgemm_ukr;
    cn_dgemm_ukr_t dgemm_ukr;
    cn_spack_t s_pack_a, s_pack_b;
    cn_dpack_t d_pack_a, d_pack_b;
    cn_fma_loop_t fma_loop;
    cn_sgemv_t sgemv;
    cn_dgemv_t dgemv;
    cn_sdots_t sdots;
    cn_ddots_t ddots;
    cn_sgemm_rows_ukr_t sgemm_rows_ukr;
    cn_dgemm_rows_ukr_t dgemm_rows_ukr;
    cn_sgemm_ukr_epi_t sgemm_ukr_epi;
    cn_dgemm_ukr_epi_t dgemm_ukr_epi;
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
/* The table of an instruction set compiled into this build, supported or not: for
 * reading its register blocking only (the plan rule for any ISA, in tests); never
 * call its kernels. NULL if the build lacks it. */
const cn_kernel_table *cn_kernel_layout(int isa);

#ifdef __cplusplus
}
#endif
#endif
