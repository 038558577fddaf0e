"""GEMM entry points for other kernels (cimport them; no Python, no threads, no allocation)."""
from libc.stdint cimport int64_t


cdef int sgemm_serial(int64_t M, int64_t N, int64_t K, const float *A, int64_t rsa, int64_t csa,
                      const float *B, int64_t rsb, int64_t csb, float *C, int64_t ldc,
                      bint accumulate) noexcept nogil
cdef int dgemm_serial(int64_t M, int64_t N, int64_t K, const double *A, int64_t rsa, int64_t csa,
                      const double *B, int64_t rsb, int64_t csb, double *C, int64_t ldc,
                      bint accumulate) noexcept nogil

cdef int sgemm_rows_serial(int64_t M, int64_t N, int64_t seg_len, int64_t nseg,
                           int64_t seg_stride, const float *base, const int64_t *row_offsets,
                           const float *B, int64_t rsb, float *C, int64_t ldc) noexcept nogil
cdef int dgemm_rows_serial(int64_t M, int64_t N, int64_t seg_len, int64_t nseg,
                           int64_t seg_stride, const double *base, const int64_t *row_offsets,
                           const double *B, int64_t rsb, double *C, int64_t ldc) noexcept nogil


# The instruction set of the micro-kernels in use (0 generic, 1 AVX2, 2 AVX-512; follows
# CYNEURON_ISA and set_isa): other kernels with their own SIMD copies follow it too.
cdef int current_isa() noexcept nogil
