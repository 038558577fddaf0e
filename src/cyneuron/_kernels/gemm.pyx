"""GEMM driver: BLIS-style loops around the per-ISA micro-kernels in csrc/.

Two plans, chosen per call:

packed (the BLIS five loops; large M, or B not row-contiguous):
    for jc in N by NC:            B block -> L3
      for pc in K by KC:          pack B[pc:, jc:] into NR-column slivers
        (barrier)
        for ic in my rows by MC:  A read in place (packed per thread only when its stride
                                  aliases cache sets or neither of its strides is 1) -> L2
          for jr, ir:             micro-kernel MR x NR (epilogue: see below)
        (barrier)
direct (row-contiguous B whose rows stay cacheable, e.g. x @ W and x.T @ dy, for
    batch-sized M, or any M when B's sliver rows are whole cache lines; always for
    M <= MR, a single sample): no packing at all; rows in blocks of MC, the micro-kernel
    reads A through its strides and B's rows in place, and only a ragged last column
    sliver is copied into a zero-padded buffer. A single row (M = 1) goes to the GEMV
    kernel instead, which streams along B's rows; threads split the columns.

One OpenMP parallel region per call. Threads split C by rows or by column
slivers, whichever leaves the least work on the busiest thread (columns on a tie).
Split by rows, they pack each B block together and meet at the two barriers
around it; split by columns, each packs only its own slivers and they meet once
per NC block. Packing buffers live in
workspaces that are allocated once and reused (a small pool, so concurrent
callers from several Python threads never share one).

A and B arrive as pointers with a row and a column stride, so A.T, B.T and any
strided view are absorbed: no transposed copy is ever made. The epilogue adds a
bias and applies an element-wise activation to each finished strip of C, a few
NR slivers wide and a row block tall, while it is still in cache. The micro-kernel for this CPU is chosen once at import (cn_best_isa)
and can be forced with CYNEURON_ISA (see cyneuron._config).

Files: this one holds the blocking, the plan choice, the workspaces and the checked
entry point; _gemm_plans.pxi the three plans and the parallel region, _gemm_epilogue.pxi
the epilogue (csrc/gemm_epilogue.h its C loops), _gemm_serial.pxi the entry for kernels
that run their own parallel region; the micro-kernels are in csrc/.
"""
from cython cimport floating
from cython.parallel cimport parallel, prange
from libc.stdint cimport int64_t
from libc.stdlib cimport free

cimport numpy as cnp
import numpy as np

from cyneuron._kernels._openmp cimport (
    cn_current_cpu, cn_leave_cpu, cn_omp_barrier, cn_omp_max_threads, cn_omp_num_threads,
    cn_omp_thread_num, cn_omp_wtime, distance_percent)
from cyneuron._kernels._openmp import set_distance
from cyneuron._kernels cimport _math


cnp.import_array()


cdef extern from "stdlib.h" nogil:
    int posix_memalign(void **memptr, size_t alignment, size_t size)

cdef extern from "cn_kernels.h" nogil:
    ctypedef void (*cn_sgemm_ukr_t)(int64_t k, const float *a, int64_t a_rs, int64_t a_cs,
                                    const float *b, int64_t b_rs, float *c, int64_t ldc,
                                    int m, int n, int beta) noexcept nogil
    ctypedef void (*cn_dgemm_ukr_t)(int64_t k, const double *a, int64_t a_rs, int64_t a_cs,
                                    const double *b, int64_t b_rs, double *c, int64_t ldc,
                                    int m, int n, int beta) noexcept nogil
    ctypedef void (*cn_spack_t)(int64_t m, int64_t k, const float *src, int64_t rs, int64_t cs,
                                float *dst) noexcept nogil
    ctypedef void (*cn_dpack_t)(int64_t m, int64_t k, const double *src, int64_t rs,
                                int64_t cs, double *dst) noexcept nogil
    ctypedef double (*cn_fma_loop_t)(int64_t iters) noexcept nogil
    ctypedef void (*cn_sgemv_t)(int64_t k, int64_t n, const float *x, int64_t incx,
                                const float *b, int64_t b_rs, float *y, int beta) noexcept nogil
    ctypedef void (*cn_dgemv_t)(int64_t k, int64_t n, const double *x, int64_t incx,
                                const double *b, int64_t b_rs, double *y, int beta) noexcept nogil
    ctypedef void (*cn_sdots_t)(int64_t k, const float *a, int64_t a_rs, const float *b,
                                float *c, int64_t ldc, int64_t m, int beta) noexcept nogil
    ctypedef void (*cn_ddots_t)(int64_t k, const double *a, int64_t a_rs, const double *b,
                                double *c, int64_t ldc, int64_t m, int beta) noexcept nogil
    ctypedef void (*cn_sgemm_rows_ukr_t)(int64_t k, int64_t nseg, int64_t seg_stride,
                                         const float *const *a_rows, const float *b,
                                         int64_t b_rs, float *c, int64_t ldc, int m, int n,
                                         int beta) noexcept nogil
    ctypedef void (*cn_dgemm_rows_ukr_t)(int64_t k, int64_t nseg, int64_t seg_stride,
                                         const double *const *a_rows, const double *b,
                                         int64_t b_rs, double *c, int64_t ldc, int m, int n,
                                         int beta) noexcept nogil
    ctypedef void (*cn_sgemm_ukr_epi_t)(int64_t k, const float *a, int64_t a_rs, int64_t a_cs,
                                        const float *b, int64_t b_rs, float *c, int64_t ldc,
                                        int m, int n, int beta, const float *bias,
                                        int relu, int *nonfinite) noexcept nogil
    ctypedef void (*cn_dgemm_ukr_epi_t)(int64_t k, const double *a, int64_t a_rs,
                                        int64_t a_cs, const double *b, int64_t b_rs,
                                        double *c, int64_t ldc, int m, int n, int beta,
                                        const double *bias, int relu,
                                        int *nonfinite) noexcept nogil
    ctypedef struct cn_kernel_table:
        int isa
        const char *name
        int s_mr
        int s_nr
        int d_mr
        int d_nr
        cn_sgemm_ukr_t sgemm_ukr
        cn_dgemm_ukr_t dgemm_ukr
        cn_spack_t s_pack_a
        cn_spack_t s_pack_b
        cn_dpack_t d_pack_a
        cn_dpack_t d_pack_b
        cn_fma_loop_t fma_loop
        cn_sgemv_t sgemv
        cn_dgemv_t dgemv
        cn_sdots_t sdots
        cn_ddots_t ddots
        cn_sgemm_rows_ukr_t sgemm_rows_ukr
        cn_dgemm_rows_ukr_t dgemm_rows_ukr
        cn_sgemm_ukr_epi_t sgemm_ukr_epi
        cn_dgemm_ukr_epi_t dgemm_ukr_epi
    int CN_ISA_GENERIC, CN_ISA_AVX2, CN_ISA_AVX512, CN_ISA_COUNT
    int cn_cpu_supports(int isa)
    int cn_best_isa()
    const cn_kernel_table *cn_kernels_for(int isa)
    const cn_kernel_table *cn_kernel_layout(int isa)


cdef extern from "gemm_epilogue.h":
    int CN_EPI_RELU, CN_EPI_SIGMOID, CN_EPI_TANH, CN_EPI_LEAKY_RELU
    # c (m x n, row stride ldc) += bias (bias may be NULL), then relu if asked; 1 if a
    # value of c + bias is not finite
    int cn_bias_nonfinite_f32(int avx2, float *c, int64_t ldc, int m, int n,
                              const float *bias, int relu) noexcept nogil
    int cn_bias_nonfinite_f64(int avx2, double *c, int64_t ldc, int m, int n,
                              const double *bias, int relu) noexcept nogil
    void cn_flag_set(int *flag) noexcept nogil
    # c (m x n, row stride ldc) = act(c + bias) for linear / relu / leaky_relu
    void cn_bias_act_f32(int avx2, float *c, int64_t ldc, int m, int n, const float *bias,
                         int act, float alpha) noexcept nogil
    void cn_bias_act_f64(int avx2, double *c, int64_t ldc, int m, int n, const double *bias,
                         int act, double alpha) noexcept nogil
    # c *= act'(y) for relu / leaky_relu / sigmoid / tanh (y: the output, stride ldc)
    void cn_act_grad_f32(int avx2, float *c, int64_t ldc, int m, int n, const float *y,
                         int act, float alpha) noexcept nogil
    void cn_act_grad_f64(int avx2, double *c, int64_t ldc, int m, int n, const double *y,
                         int act, double alpha) noexcept nogil
    # out[j] = the sum over p < k of b[p * rsb + j], j < n, p in order
    void cn_column_sums_f32(int avx2, const float *b, int64_t rsb, int64_t k, int64_t n,
                            float *out) noexcept nogil
    void cn_column_sums_f64(int avx2, const double *b, int64_t rsb, int64_t k, int64_t n,
                            double *out) noexcept nogil


# Cache blocking (elements). A KC x NR B sliver stays in L1, an MC x KC A block
# in L2, a KC x NC B block in L3. MC and NC are rounded to multiples of MR and NR.
cdef enum:
    KC_BLOCK = 384
    MC_TARGET = 72
    NC_TARGET = 4096
    # Below this many multiply-adds one thread is faster than waking the pool (AVX2;
    # the AVX-512 kernels do twice the work in the same time: 2.5 times as many, see
    # _parallel_min_macs).
    GEMM_PARALLEL_MIN_MACS = 1 << 16
    # ... unless B is this large: then even a few rows (a single sample) are bound by
    # reading B, and splitting its columns lets each core keep its part in its own L2.
    # Scaled by the threads' distance too (set_thread_distance): one sample through
    # 784x256 on 2 threads 0.81 of one thread's time near, 1.12 far; 3136x128 0.73 both.
    PARALLEL_MIN_B_BYTES = 1 << 18
    # A single row times a B of at least this many bytes sums its K in two halves
    # (_run_gemv_halves), whatever the thread count; see _choose.
    GEMV_HALVES_MIN_B_BYTES = 1 << 20
    GEMV_HALVES_MIN_K = 64
    # The epilogue runs on strips this many slivers wide (rows long enough to
    # vectorize, few enough that the strip is still in L1/L2).
    EPILOGUE_SLIVERS = 4
    # The direct plan (nothing packed) is used up to this many rows of C (further when
    # B's rows sit on cache lines: see _choose).
    DIRECT_MAX_M = 128
    # ... and past this many row tiles only when B's sliver rows stay in L1 (_choose).
    DIRECT_FEW_ROW_TILES = 4
    # A^T (A's columns contiguous: X^T in a weight gradient) past DIRECT_MAX_M rows is
    # packed from this many columns of C and of A (_choose).
    PACK_A_T_MIN_N = 256
    PACK_A_T_MIN_K = 128
    # Products that mostly write C split their rows among threads (see _choose): K at
    # most this, C at least this large, each thread's piece of a row at most this wide.
    STREAM_MAX_K = 48
    STREAM_MIN_C_BYTES = 1 << 18
    STREAM_MAX_PIECE_BYTES = 512
    MAX_THREADS = 64


# Element-wise activations the epilogue can apply (cyneuron.activations names).
cpdef enum Epilogue:
    EPI_LINEAR = 0
    EPI_RELU = 1
    EPI_SIGMOID = 2
    EPI_TANH = 3
    EPI_GELU = 4
    EPI_GELU_TANH = 5
    EPI_SWISH = 6
    EPI_SOFTPLUS = 7
    EPI_LEAKY_RELU = 8
    EPI_ELU = 9

EPILOGUES = {"linear": EPI_LINEAR, "relu": EPI_RELU, "sigmoid": EPI_SIGMOID, "tanh": EPI_TANH,
             "gelu": EPI_GELU, "gelu_tanh": EPI_GELU_TANH, "swish": EPI_SWISH,
             "softplus": EPI_SOFTPLUS, "leaky_relu": EPI_LEAKY_RELU, "elu": EPI_ELU}

if (EPI_RELU, EPI_SIGMOID, EPI_TANH, EPI_LEAKY_RELU) != \
        (CN_EPI_RELU, CN_EPI_SIGMOID, CN_EPI_TANH, CN_EPI_LEAKY_RELU):
    raise ImportError("gemm: the C epilogue codes differ from the Epilogue enum")

ISA_NAMES = ("generic", "avx2", "avx512")

cdef const cn_kernel_table *_table = cn_kernels_for(cn_best_isa())


cdef int current_isa() noexcept nogil:
    return _table.isa


def supported_isas():
    """Instruction sets this CPU can run, slowest first."""
    return tuple(n for i, n in enumerate(ISA_NAMES) if cn_cpu_supports(i))


def get_isa():
    """Name of the instruction set whose micro-kernels are in use."""
    return _table.name.decode()


def epilogue_isa():
    """Instruction set of the epilogue's C loops now: their AVX2 copy on the AVX2 and
    AVX-512 paths (an AVX-512 copy measured no gain: the pass is ~1% of the product)."""
    return "generic" if _table.isa == CN_ISA_GENERIC else "avx2"


def set_isa(str name):
    """Use the micro-kernels of instruction set `name` from now on."""
    global _table
    if name not in ISA_NAMES:
        raise ValueError(f"isa must be one of {ISA_NAMES}, got {name!r}")
    cdef int isa = ISA_NAMES.index(name)
    if not cn_cpu_supports(isa):
        raise ValueError(f"isa {name!r} is not supported by this CPU; supported: {supported_isas()}")
    _table = cn_kernels_for(isa)


cdef const cn_kernel_table *_layout(isa) except NULL:
    """The table of `isa` (a name; None: the path in use) for its blocking only: any ISA
    compiled in, whether or not this CPU runs it."""
    if isa is None:
        return _table
    if isa not in ISA_NAMES:
        raise ValueError(f"isa must be one of {ISA_NAMES} or None, got {isa!r}")
    cdef const cn_kernel_table *t = cn_kernel_layout(ISA_NAMES.index(isa))
    if t == NULL:
        raise ValueError(f"isa {isa!r} is not compiled into this build")
    return t


def compiled_isas():
    """Instruction sets compiled into this build (their blocking can be inspected
    even where this CPU cannot run them)."""
    return tuple(n for i, n in enumerate(ISA_NAMES) if cn_kernel_layout(i) != NULL)


def block_sizes(str dtype, isa=None):
    """(MR, NR, MC, KC, NC) for 'float32' or 'float64' on instruction set `isa`
    (default: the path in use)."""
    cdef const cn_kernel_table *t = _layout(isa)
    cdef int mr = t.s_mr if dtype == "float32" else t.d_mr
    cdef int nr = t.s_nr if dtype == "float32" else t.d_nr
    return (mr, nr, (MC_TARGET // mr) * mr, KC_BLOCK, (NC_TARGET // nr) * nr)


cdef int64_t _min_macs_for_tests = -1   # >= 0: overrides _parallel_min_macs (tests)


def _set_parallel_min_macs_for_tests(int64_t macs=-1):
    """Tests only: run every product of at least `macs` multiply-adds on the pool
    (0: all of them, so small shapes exercise the thread splits too); -1 restores the
    measured threshold."""
    global _min_macs_for_tests
    _min_macs_for_tests = macs


def set_thread_distance(round_trip_ns):
    """Scale the one-thread thresholds by the pool's measured cache-line round trip (ns;
    None leaves them as they are; see _openmp.set_distance): a region's fork, join and
    hand-over of C cost that many round trips, so when the CPUs share no L3 (3-4x the near
    case) small products stay on one thread longer. Allowed because every plan gives the
    same bits on any thread count (each element of C is summed by one thread, in the same
    order; tests/test_gemm_plans.py). Returns the GEMM threshold in use."""
    set_distance(round_trip_ns)
    return _parallel_min_macs()


cdef inline int64_t _parallel_min_macs() noexcept nogil:
    """Multiply-adds below which one thread is faster than two, for the kernels in use.
    Measured on Zen 3 (AVX2): 32x64x64 (131k) on 2 threads 0.81 of 1 thread's time. Zen 5
    (AVX-512), the two thread counts interleaved in one process (best of 6 x 5000 calls):
    32x64x64 (131k) 1.16, 32x128x64 / 64x64x64 / 128x32x64 (262k) 0.88-0.89, 64x128x64
    (524k) 0.72. The fork and join of a region cost ~0.6 us of that (rdtsc inside it);
    loops timed without interleaving drift by up to 40% on this shared VM. With the two
    vCPUs in different L3 domains (round trip ~390 ns instead of ~110) the same VM gave
    262k 1.31, 524k 1.06, 1M 0.75: the threshold scales with the round trip."""
    if _min_macs_for_tests >= 0:
        return _min_macs_for_tests
    cdef int64_t near = (GEMM_PARALLEL_MIN_MACS * 5 // 2 if _table.isa == CN_ISA_AVX512
                         else GEMM_PARALLEL_MIN_MACS)
    return near * distance_percent() // 100


def plan_limits():
    """{name: value} of the thresholds that pick threads and plans, for the path in use
    (for tests and docs)."""
    return {"parallel_min_macs": _parallel_min_macs(),
            "parallel_min_b_bytes": PARALLEL_MIN_B_BYTES * distance_percent() // 100,
            "direct_max_m": DIRECT_MAX_M, "swap_max_m": SWAP_MAX_M,
            "swap_min_b_bytes": SWAP_MIN_B_BYTES,
            "pack_a_t_min_n": PACK_A_T_MIN_N, "pack_a_t_min_k": PACK_A_T_MIN_K,
            "gemv_halves_min_b_bytes": GEMV_HALVES_MIN_B_BYTES,
            "gemv_halves_min_k": GEMV_HALVES_MIN_K,
            "max_threads": MAX_THREADS, "l2_sets": _l2_sets, "l2_ways": _l2_ways}


def fma_peak_gflops(int threads=1, double seconds=0.1):
    """Measured float32 multiply-add peak of this machine, GFLOP/s, on `threads` threads,
    with the current instruction set (float64 peak is half)."""
    cdef int64_t iters = 1 << 16
    cdef double flops = 0, t0, elapsed = 0
    cdef int nt = max(1, min(threads, MAX_THREADS))
    with nogil:
        while elapsed < seconds:
            t0 = cn_omp_wtime()
            flops = _fma_round(iters, nt)
            elapsed = cn_omp_wtime() - t0
            if elapsed < seconds:
                iters *= 2
    return flops / elapsed / 1e9


cdef double _fma_round(int64_t iters, int nt) noexcept nogil:
    cdef double total = 0
    cdef double[MAX_THREADS] done
    cdef int t
    for t in range(MAX_THREADS):
        done[t] = 0
    with parallel(num_threads=nt):
        done[cn_omp_thread_num()] = _table.fma_loop(iters)
    for t in range(nt):
        total += done[t]
    return total


cdef inline int64_t _min(int64_t a, int64_t b) noexcept nogil:
    return a if a < b else b


cdef inline int64_t _cdiv(int64_t a, int64_t b) noexcept nogil:
    return (a + b - 1) // b


cdef inline void _share(int64_t count, int t, int nt, int64_t *begin, int64_t *end) noexcept nogil:
    """Thread t's part [begin, end) of `count` items split as evenly as possible."""
    cdef int64_t q = count // nt, r = count % nt
    begin[0] = t * q + _min(t, r)
    end[0] = begin[0] + q + (1 if t < r else 0)


# -- one GEMM call --------------------------------------------------------------------
cdef struct Call:
    # C[M, N] (+)= A[M, K] . B[K, N], then the epilogue; strides in elements.
    int64_t M, N, K
    const void *A
    int64_t rsa, csa
    const void *B
    int64_t rsb, csb
    void *C
    int64_t ldc
    const void *bias
    int act
    double alpha
    int accumulate
    void *b_sums         # NULL, or N outputs: the column sums of B (a Dense layer's db)
    const void *act_out  # NULL, or y (M x N, row stride ldc): C *= act'(y) instead of act(C)
    # the plan
    int mr, nr
    int64_t mc, nc, kc
    int split_rows       # 1: threads split C's rows; 0: its column slivers
    int direct           # 1: nothing packed (B's rows read in place); 0: B packed
    int column           # 1: N = 1, rows of A dotted with B (or B streamed along A's columns)
    int pack_a           # packed plan: 1 packs A's blocks, 0 reads A in place
    void *b_pack         # shared packed B block (packed plan)
    void **a_pack        # one packed A block per thread (packed plan)
    void **edge          # one KC x NR buffer per thread (direct plan)
    const void *b_ready  # NULL, or all of B packed beforehand (packed plan; PackedB)
    int *nonfinite       # NULL, or set to 1 when a value of A @ B + bias is NaN or infinite
    int epi_in_ukr       # 1: the bias and relu go into the micro-kernel's last stores
    int k_halves         # 1: a single row summed over K's two halves (direct plan, M = 1)
    const Call *outer    # NULL, or the call this product is the transpose of (swapped plan):
                         # each thread moves its part of C over to outer's C (_swap_back)


cdef inline void _ukr(const Call *g, int64_t k, const floating *a, int64_t a_rs, int64_t a_cs,
                      const floating *b, int64_t b_rs, int64_t row, int64_t col, int m, int n,
                      int beta, bint last=False) noexcept nogil:
    """The micro-kernel on C[row:row+m, col:col+n]; on the k block that finishes C
    (last) with g.epi_in_ukr, the one that adds the bias and applies relu as it stores."""
    cdef floating *c = <floating *>g.C + row * g.ldc + col
    cdef const floating *bias
    if last and g.epi_in_ukr:
        bias = <const floating *>g.bias + col if g.bias != NULL else NULL
        if floating is float:
            _table.sgemm_ukr_epi(k, a, a_rs, a_cs, b, b_rs, c, g.ldc, m, n, beta, bias,
                                 g.act == EPI_RELU, g.nonfinite)
        else:
            _table.dgemm_ukr_epi(k, a, a_rs, a_cs, b, b_rs, c, g.ldc, m, n, beta, bias,
                                 g.act == EPI_RELU, g.nonfinite)
    elif floating is float:
        _table.sgemm_ukr(k, a, a_rs, a_cs, b, b_rs, c, g.ldc, m, n, beta)
    else:
        _table.dgemm_ukr(k, a, a_rs, a_cs, b, b_rs, c, g.ldc, m, n, beta)


include "_gemm_epilogue.pxi"
include "_gemm_plans.pxi"


# -- workspaces -----------------------------------------------------------------------
cdef void *_aligned(size_t nbytes) noexcept nogil:
    cdef void *p = NULL
    if posix_memalign(&p, 64, nbytes if nbytes > 0 else 64) != 0:
        return NULL
    return p


cdef int _grow(void **buf, size_t *have, size_t need) except -1:
    if need <= have[0]:
        return 0
    free(buf[0])
    buf[0] = _aligned(need)
    have[0] = need if buf[0] != NULL else 0
    if buf[0] == NULL:
        raise MemoryError(f"gemm: could not allocate {need} bytes of packing buffer")
    return 0


cdef class _Workspace:
    """Packing buffers for one call at a time; they only grow, and are reused."""
    cdef void *b_pack
    cdef size_t b_bytes
    cdef void *a_pack[MAX_THREADS]
    cdef size_t a_bytes[MAX_THREADS]
    cdef object swapped     # the (N, M) product of the swapped plan (_swap_pays)

    cdef object swapped_out(self, cnp.npy_intp rows, cnp.npy_intp cols, int type_num):
        """A C-contiguous (rows, cols) array of type_num, reusing the last one's memory."""
        cdef cnp.npy_intp size = rows * cols
        if self.swapped is None or self.swapped.dtype.num != type_num \
                or cnp.PyArray_SIZE(<cnp.ndarray>self.swapped) < size:
            self.swapped = cnp.PyArray_EMPTY(1, &size, type_num, 0)
        return self.swapped[:size].reshape(rows, cols)

    cdef int reserve(self, size_t b_bytes, size_t a_bytes, int nthreads) except -1:
        cdef int t
        _grow(&self.b_pack, &self.b_bytes, b_bytes)
        for t in range(nthreads):
            _grow(&self.a_pack[t], &self.a_bytes[t], a_bytes)
        return 0

    def __dealloc__(self):
        free(self.b_pack)
        for t in range(MAX_THREADS):
            free(self.a_pack[t])


_free_workspaces = []


cdef enum:
    CACHE_LINE = 64


cdef extern from *:
    """
    #include <unistd.h>
    /* Size and ways of the L1 data cache (level 1) or the L2 (level 2); 0 where the C
       library cannot tell. */
    static void cn_cache_geometry(int level, long *size, long *ways) {
        *size = *ways = 0;
    #if defined(_SC_LEVEL1_DCACHE_SIZE) && defined(_SC_LEVEL1_DCACHE_ASSOC) \
        && defined(_SC_LEVEL2_CACHE_SIZE) && defined(_SC_LEVEL2_CACHE_ASSOC)
        *size = sysconf(level == 1 ? _SC_LEVEL1_DCACHE_SIZE : _SC_LEVEL2_CACHE_SIZE);
        *ways = sysconf(level == 1 ? _SC_LEVEL1_DCACHE_ASSOC : _SC_LEVEL2_CACHE_ASSOC);
    #endif
    }
    """
    void cn_cache_geometry(int level, long *size, long *ways) noexcept nogil


# The L2 the direct plan's B sliver (kc rows at B's row stride) must fit in: read from
# the CPU at import (Zen 5: 1 MiB, 16 ways; the direct plan then takes 32x784x256 on 2
# threads in 32 us instead of the packed plan's 46), else Zen 3's 512 KiB, 8 ways.
cdef int64_t _l2_sets = 1024, _l2_ways = 8


# The L1 sets (and ways) that the direct plan's B sliver rows, and X^T's columns read in
# place, spread over (see _choose): read from the CPU at import, else 64 sets of 12 ways
# (48 KiB, Zen 5 and recent Intel cores).
cdef int64_t _l1_sets = 64, _l1_ways = 12


cdef long _sets(int level, long *ways) noexcept nogil:
    """Sets of 64-byte lines of the cache at this level (its ways in *ways), 0 when
    unknown or not a power of two (as set indexing needs)."""
    cdef long size
    cn_cache_geometry(level, &size, ways)
    cdef long sets = size // (ways[0] * CACHE_LINE) if size > 0 and ways[0] > 0 else 0
    return sets if sets > 0 and sets & (sets - 1) == 0 else 0


cdef void _read_caches():
    global _l2_sets, _l2_ways, _l1_sets, _l1_ways
    cdef long ways, sets = _sets(2, &ways)
    if sets:
        _l2_sets, _l2_ways = sets, ways
    sets = _sets(1, &ways)
    if sets:
        _l1_sets, _l1_ways = sets, ways


_read_caches()


def l2_cache():
    """(sets, ways) of 64-byte lines the plan choice assumes for the L2 cache."""
    return (_l2_sets, _l2_ways)


def l1_sets():
    """Sets of 64-byte lines the plan choice assumes for the L1 data cache."""
    return _l1_sets


def l1_ways():
    """Ways of the L1 data cache the plan choice assumes."""
    return _l1_ways


cdef inline int64_t _gcd(int64_t a, int64_t b) noexcept nogil:
    while b:
        a, b = b, a % b
    return a


cdef int64_t _sets_of_rows(int64_t stride_bytes, int64_t cache_sets) noexcept nogil:
    """How many of a cache's sets the first line of rows at this stride fall in: strides
    of a large power of two all land in a few."""
    if stride_bytes < 0:
        stride_bytes = -stride_bytes
    if stride_bytes % CACHE_LINE == 0:
        return cache_sets // _gcd(stride_bytes // CACHE_LINE, cache_sets)
    return cache_sets


cdef bint _rows_stay_cached(int64_t stride_bytes, int64_t rows) noexcept nogil:
    """Whether `rows` rows at this stride (two lines each) fit in the L2 sets they map to."""
    return _sets_of_rows(stride_bytes, _l2_sets) * _l2_ways >= 2 * rows


cdef int64_t _l1_sets_of_rows(int64_t stride_bytes, int64_t row_bytes) noexcept nogil:
    """How many L1 sets rows of row_bytes at this stride fall in."""
    return _min(_l1_sets, _sets_of_rows(stride_bytes, _l1_sets) * _cdiv(row_bytes, CACHE_LINE))


cdef bint _rows_on_lines(const Call *g, size_t item) noexcept nogil:
    """Whether B starts on a cache line, its rows are whole lines apart and its
    columns fill whole slivers: each sliver row read in place is then NR / line lines."""
    return ((<size_t>g.B) % CACHE_LINE == 0 and (g.rsb * item) % CACHE_LINE == 0
            and g.N % g.nr == 0)


cdef bint _rows_share_lines(const Call *g, size_t item) noexcept nogil:
    """Whether splitting C's columns at sliver boundaries splits cache lines in some
    rows: C does not start on a line, or its rows are not a whole number of lines."""
    return (<size_t>g.C) % CACHE_LINE != 0 or (g.ldc * item) % CACHE_LINE != 0


cdef enum:
    # dY @ W^T with few rows (a Dense layer's input gradient at small batches): B is W
    # seen transposed, and the packed plan transposes all of W on every call for only M
    # rows of use. C^T = W @ dY^T reads W in place and packs only dY; each thread then
    # moves the part of C^T it computed (still in its cache) over to C, with C's epilogue.
    # 2 threads, Zen 5, B transposed, the product alone / swapped: 32x256x784 37.1 / 26.8
    # us, 32x512x512 53.2 / 36.5, 32x1024x1024 261 / 154, 128x1024x1024 638 / 541;
    # 32x128x256 (B 128 KiB) 6.1 / 5.9: not worth the transpose. (C^T was moved over by
    # one thread after the product until session 16: Intel Xeon, 2 threads, 128x512x512
    # 251 -> 217 us, the inner product alone 200.)
    SWAP_MAX_M = 128
    SWAP_MIN_B_BYTES = 1 << 18


cdef bint _swap_pays(const Call *g, size_t item) noexcept nogil:
    """Whether to compute a @ b as (b^T @ a^T)^T: b column-major and large, few rows (and
    fewer than columns, so the swapped call never swaps back), no column sums; or a
    narrow C (_narrow_swap_pays)."""
    return ((g.rsb == 1 and g.csb != 1 and 1 < g.M <= SWAP_MAX_M and g.M < g.N
             and g.K * g.N * <int64_t>item >= SWAP_MIN_B_BYTES and g.b_sums == NULL)
            or _narrow_swap_pays(g))


cdef bint _narrow_swap_pays(const Call *g) noexcept nogil:
    """A^T (A's columns contiguous) times a B of at most NR / 2 columns (a classifier
    head's weight gradient X^T dY): each NR-wide sliver of C would hold N useful columns;
    C^T = B^T A^T puts them in MR-row tiles instead (10 columns: 10 of 32 lanes against
    10 of 16 rows with AVX-512's 8x32 tiles) and reads A^T's rows in place as its B. The
    column sums of B are summed apart (B is narrow). Intel Xeon, with b_sums, 2 threads
    (one), us: 512x512x10 51.1 -> 27.4 (80.7 -> 49.8), 128x512x10 13.8 -> 9.0, 512x32x10
    8.1 -> 5.3, 1024x256x3 52.7 -> 16.2, 784x512x16 71.0 -> 67.6 (141 -> 112). Not for
    A's rows contiguous (a forward pass): A^T would then be packed transposed as B, and
    512x512x10 went 40.0 -> 44.8 us."""
    return g.rsa == 1 and g.csa != 1 and 1 < g.N <= g.nr // 2 and g.M >= 2 * g.nr


cdef void _swapped_call(Call *s, const Call *g, void *t) noexcept nogil:
    """s: the swapped plan's product T = B^T A^T of g, (N, M) into t, that hands each
    thread's part of T over to g's C (the epilogue is g's, applied there)."""
    s[0] = g[0]
    s.M, s.N = g.N, g.M
    s.A, s.rsa, s.csa = g.B, g.csb, g.rsb
    s.B, s.rsb, s.csb = g.A, g.csa, g.rsa
    s.C, s.ldc = t, g.M
    s.bias = s.b_sums = s.act_out = NULL
    s.act, s.accumulate = EPI_LINEAR, 0
    s.nonfinite = NULL
    s.outer = g


cdef void _swap_back(const Call *s, floating dummy, int t, int nt) noexcept nogil:
    """Thread t's part of the swapped product T (the rows or column slivers it computed,
    so still in its cache): C (+)= that part transposed, then C's epilogue on it."""
    cdef const Call *g = s.outer
    cdef const floating *tp = <const floating *>s.C
    cdef floating *c = <floating *>g.C
    cdef int64_t r0 = 0, r1 = s.M, c0, c1, jb, jc, nc, i, j, j0, j1
    cdef int64_t block = s.N if s.direct else s.nc
    for jb in range(_cdiv(s.N, block)):
        jc = jb * block
        nc = _min(block, s.N - jc)
        if s.split_rows:
            _share(_cdiv(s.M, s.mr), t, nt, &r0, &r1)
            r0 *= s.mr
            r1 = _min(s.M, r1 * s.mr)
            c0, c1 = jc, jc + nc
        else:
            _share(_cdiv(nc, s.nr), t, nt, &c0, &c1)
            c0, c1 = jc + c0 * s.nr, jc + _min(nc, c1 * s.nr)
        if r1 <= r0 or c1 <= c0:
            continue
        # T's rows r are C's columns, T's columns C's rows: 64 columns of C at a time,
        # whose lines of T stay in L1
        for j0 in range(r0, r1, 64):
            j1 = _min(r1, j0 + 64)
            for i in range(c0, c1):
                if g.accumulate:
                    for j in range(j0, j1):
                        c[i * g.ldc + j] += tp[j * s.ldc + i]
                else:
                    for j in range(j0, j1):
                        c[i * g.ldc + j] = tp[j * s.ldc + i]
        _finish(g, dummy, c0, c1 - c0, r0, r1 - r0)


cdef void _choose(Call *g, int nthreads, size_t item) noexcept nogil:
    """Choose the plan, the split of C among threads and whether A is packed."""
    cdef int64_t m_sl = _cdiv(g.M, g.mr), n_sl
    g.mc = (MC_TARGET // g.mr) * g.mr
    g.nc = (NC_TARGET // g.nr) * g.nr
    n_sl = _cdiv(_min(g.N, g.nc), g.nr)
    # K in equal blocks of at most KC_BLOCK (784 = 3 x 262, not 384 + 384 + 16).
    g.kc = _cdiv(g.K, _cdiv(g.K, KC_BLOCK))
    cdef int64_t kc = g.kc
    # A is read in place when its rows are contiguous, or its columns are and their
    # stride does not map them all onto a few cache sets (in place measured 3-5% faster
    # than packing); other strided views are packed.
    cdef bint a_in_place = g.csa == 1 or (g.rsa == 1 and _rows_stay_cached(g.csa * item, kc))
    # ... but A^T in place (a weight gradient's X^T) spends a line of L1 on every k for
    # MR values, beside the B sliver the row tiles share there: packed, a tile's A is
    # half as many lines, read in order. That pays once each packed tile is used across
    # enough columns, with many row tiles and K past a few lines (or fewer lines whose
    # stride crowds them into too few L1 sets to stay). Intel Xeon, 2 threads, X^T @ dY,
    # in place (direct) / packed A, us: 512x784x512 1351 / 1213, 512x512x512 964 / 847,
    # 512x784x256 679 / 618, 128x784x256 170 / 154, 512x1024x1024 4051 / 3038,
    # 128x3136x256 813 / 704; K = 32 with rows 4 KiB apart (one set), one thread (two):
    # 32x1024x1024 563-580 / 448-474, 32x2048x512 514-528 / 434-440 (271-280 / 247); the
    # AVX2 kernels 0.65-0.92 of the time where K >= 128, float64 0.77-0.94. Not for
    # N = 128 (512x256x128 106 / 124, AVX2 1.13x slower), K = 32 at a stride that spreads
    # (32x784x256 43 / 46) or few rows (8192x27x256 483 / 608, 4096x32x256 249 / 307).
    cdef bint pack_a_t = (g.rsa == 1 and g.csa != 1 and g.M > DIRECT_MAX_M
                          and g.N >= PACK_A_T_MIN_N
                          and (g.K >= PACK_A_T_MIN_K
                               or _sets_of_rows(g.csa * item, _l1_sets) * _l1_ways < kc))
    # Direct when B's rows stay cacheable, and always for a few rows (a single sample):
    # each element of B is then used so few times that packing it costs more than misses.
    # Past DIRECT_MAX_M rows too when every sliver row is two whole cache lines (B and its
    # row stride on lines, no ragged sliver): read in place, a sliver costs no more than
    # a packed one, and packing is saved. Zen 5 AVX-512, one thread, interleaved,
    # packed / direct: 256x784x256 414 / 402 us, 256x3136x128 825 / 787, 512x512x512
    # 1056 / 1032; misaligned B (numpy's 16-byte start) read in place was 3% slower, and
    # N = 10 (all edge, copied per row block) 30% slower.
    # Up to DIRECT_MAX_M rows, B's sliver is read again by each row tile: past a few
    # tiles, that needs its rows spread over a quarter of the L1 sets or more, else they
    # come from L2 each time and packing B pays. Intel Xeon (48 KiB 12-way L1), direct /
    # packed GFLOP/s, one thread (two): 128x784x256 (rows 1 KiB apart: 8 of 64 sets)
    # 137 / 152 (241 / 279), 128x784x512 127 / 147 (240 / 281), 64x784x512 124 / 130
    # (225 / 250); 512 bytes apart (16 sets) direct stays ahead: 128x784x128 161 / 153
    # (257 / 257); and with 4 row tiles: 32x784x256 143 / 124 (222 / 214).
    # Past DIRECT_MAX_M rows an eighth of the sets will do (an MC block of row tiles per
    # pass): rows 2 KiB apart (4 of 64 sets) pack B, 1 KiB (8 sets) still read in place.
    # Intel Xeon, 2 threads (one), direct / packed, us: 512x784x512 1321 / 1241 (2380 /
    # 2247), 512x512x512 867 / 808 (1644 / 1535); AVX2 kernels 0.92 of the time; at 1 KiB
    # even: 512x784x256 611 / 615 (1197 / 1198), 256x784x256 315 / 310 (591 / 610).
    # (Zen 5's 512x512x512 above was 2% faster in place: not measured again since.)
    g.direct = (g.csb == 1 and a_in_place and not pack_a_t
                and (g.M <= g.mr or _rows_stay_cached(g.rsb * item, kc)
                     and (g.M <= DIRECT_MAX_M or _rows_on_lines(g, item))
                     and (m_sl <= DIRECT_FEW_ROW_TILES
                          or (4 if g.M <= DIRECT_MAX_M else 8)
                          * _l1_sets_of_rows(g.rsb * item, g.nr * item) >= _l1_sets)))
    g.pack_a = not g.direct and (not a_in_place or pack_a_t)
    # One output column (Dense(1), a step on one sample): the micro-kernel would compute
    # NR columns to keep one, so dot A's rows with B instead, or stream B down A's
    # columns when those are contiguous (C's rows are then contiguous too: ldc = 1).
    g.column = g.N == 1 and (g.csa == 1 or (g.rsa == 1 and g.ldc == 1))
    if g.column:
        g.direct = g.pack_a = 0
    # A single sample through a large B: split among threads by columns, each core reads
    # half of every row of B, so half of every page, and its B can only use half of its
    # L2's sets; a model's layers then no longer stay in the two L2s between calls. Split
    # by K (each core all of half the rows, the partial sums added after), they do. The
    # halves are summed apart on one thread too, so the bits never depend on the thread
    # count. Intel Xeon (2 MiB L2), 2 threads, predict on one sample, columns / K halves,
    # us: 784-512-512-10 (2.7 MB of weights) 51.6 / 22.0, 784-1024-1024-10 202 / 153,
    # 3136-128-10 15.6 / 11.8; one product alone (B always in L2), 1x784x512 8.4 / 7.0,
    # 1x512x512 4.4 / 5.2 (the barrier and the added pass): hence from 1 MiB of B on.
    g.k_halves = (g.direct and g.M == 1 and g.K >= GEMV_HALVES_MIN_K
                  and g.K * g.N * <int64_t>item >= GEMV_HALVES_MIN_B_BYTES)
    # Split whichever way leaves the fewest tiles on the busiest thread; on a tie, rows
    # when each thread would own a single sliver and a column split would have them
    # writing the halves of one cache line in every row at the same moments (false
    # sharing: numpy's arrays start 16 bytes into a line). Measured on 2 threads, C 16
    # bytes off a line, columns / rows: 32x128x64 4.2 / 3.2 us, 64x128x64 5.7 / 4.4 us;
    # with more slivers per thread the split lines cost little and rows (every thread
    # reading all of B) cost more: 32x64x256 4.5 / 5.0 us, 64x64x128 4.1 / 5.1 us.
    # On the packed plan a row split also has each thread read the slivers the others
    # packed, moving them between cores on every call: counted as one tile's work per
    # sliver that crosses (2 threads, interleaved in one process, B transposed: 32x256x784
    # rows 44.0 / columns 35.9 us, 64x256x784 66.7 / 63.0 us; one thread 72 / 122 us).
    # Other ties (even tile counts both ways, the common case) split the longer side of
    # C: each thread reads half of the larger operand and all of the smaller, instead of
    # all of the larger one. Intel Xeon, 2 threads, operands on lines (direct plan),
    # rows / columns: 784x512x256 (A = X^T) 727 / 744 us, 512x784x256 634 / 653,
    # 256x512x128 (X^T) 122 / 131, 784x128x256 (X^T) 189 / 200, 512x256x128 106 / 116,
    # 784x512x64 (X^T) 187 / 239, 1024x10x512 49 / 77, 2048x512x256 1669 / 1704; one
    # loss, 1024x256x512 927 / 885. Inside a 784-256-128-10 fit at batch 512, where A was
    # last written by the other thread's half of a product, the step went 2.52-2.64 ->
    # 2.43-2.49 ms.
    cdef int64_t row_tiles = _cdiv(m_sl, nthreads) * n_sl, column_tiles = m_sl * _cdiv(n_sl, nthreads)
    if not g.direct and not g.column:
        row_tiles += n_sl - _cdiv(n_sl, nthreads)
    # Split by columns, every thread packs all of A's row panels (those it shares out
    # split by rows): each counted as one tile's work too. Intel Xeon, 2 threads, A = X^T
    # packed, b_sums, rows / columns, us: 784x512x256 539 / 578, 784x512x512 1069 / 1104,
    # 512x512x512 782 / 808, 784x256x256 332 / 349, 512x2048x512 3161 / 3300, 784x128x256
    # 153 / 157, 1024x512x1024 2854 / 2851.
    if g.pack_a:
        column_tiles += m_sl - _cdiv(m_sl, nthreads)
    g.split_rows = row_tiles < column_tiles or (row_tiles == column_tiles and (
        g.N < g.M or n_sl <= nthreads and _rows_share_lines(g, item)))
    # A product that mostly writes C (few multiply-adds per value) split by columns has
    # each thread write a short piece of every row, beside the other's: the L2 streamer
    # runs on along the row into the other thread's piece and fetches its lines, which
    # then cross back on every write. Rows keep each thread's part of C contiguous, and
    # with K this small reading all of B costs next to nothing. Intel Xeon (AVX-512, 2 MiB
    # L2), 2 threads, C on a cache line, columns / rows (one thread): 512x10x128 17.1 / 9.8
    # (11.5) us, 1024x10x128 36.4 / 15.5 (21.8), 2048x10x128 67.8 / 26.5 (43.7), 512x32x128
    # 22.2 / 15.8, 512x48x128 26.7 / 22.5, 512x10x256 25.1 / 13.1, 1024x20x100 41.6 / 25.0;
    # columns stay ahead with a smaller C (512x16x64 6.5 / 7.9, 256x32x128 10.0 / 13.2) or
    # wider pieces (512x10x512 28.7 / 32.3); 512x32x256 33.3 / 36.4 is the one case the
    # rule gets wrong.
    if (not g.split_rows and g.K <= STREAM_MAX_K and g.M * g.N * <int64_t>item >= STREAM_MIN_C_BYTES
            and _cdiv(n_sl, nthreads) * g.nr * <int64_t>item <= STREAM_MAX_PIECE_BYTES):
        g.split_rows = 1
    # The bias and relu in the micro-kernel's stores on the last k block (the strip pass
    # of _finish re-reads C from cache: 784x256 at batch 256, one thread, ~4 us of 400)
    # (not the one-column plan, nor the direct plan's one-row GEMV: no micro-kernel)
    g.epi_in_ukr = (not g.column and g.M > 1 and g.act_out == NULL and not g.accumulate
                    and (g.act == EPI_RELU or g.act == EPI_LINEAR
                         and (g.bias != NULL or g.nonfinite != NULL)))


cdef int _plan(Call *g, _Workspace ws, int nthreads, size_t item) except -1:
    """Choose the plan and size the workspace for it."""
    _choose(g, nthreads, item)
    cdef int64_t kc = g.kc
    if g.column:   # a_pack[t]: a contiguous copy of B's column when it is strided
        ws.reserve(0, g.K * item if g.csa == 1 and g.rsb != 1 else 0, nthreads)
        g.b_pack = NULL
        g.a_pack = NULL
        g.edge = ws.a_pack
    elif g.direct:   # a_pack[t]: the ragged-edge buffer (a_pack[0]: K's second half's sums)
        ws.reserve(0, (g.N if g.k_halves and g.N > kc * g.nr else kc * g.nr) * item, nthreads)
        g.b_pack = NULL
        g.a_pack = NULL
        g.edge = ws.a_pack
    else:
        ws.reserve(_cdiv(_min(g.N, g.nc), g.nr) * g.nr * kc * item if g.b_ready == NULL else 0,
                   _min(g.mc, _cdiv(g.M, g.mr) * g.mr) * kc * item if g.pack_a else 0, nthreads)
        g.b_pack = ws.b_pack
        g.a_pack = ws.a_pack
        g.edge = NULL
    return 0


def plan(a, b, int threads=1, isa=None, c=None):
    """How a @ b would run on `threads` threads with the blocking of instruction set
    `isa` (default: the path in use; any compiled ISA, runnable here or not), into `c`
    (default: a C-contiguous result starting on a cache line):
    {"plan": "direct" | "packed" | "column" | "swapped", "split": "rows" | "columns" |
    "k", "pack_a": bool} (for tests and profiling; "column": N = 1, "k": a single row
    summed over K's two halves apart, see _choose; "swapped": C^T
    = b^T a^T is computed and transposed, see _swap_pays; split and pack_a are then those
    of the swapped product)."""
    cdef Call g
    cdef size_t item = a.itemsize
    cdef const cn_kernel_table *t = _layout(isa)
    g.M, g.K, g.N = a.shape[0], a.shape[1], b.shape[1]
    g.rsa, g.csa = a.strides[0] // item, a.strides[1] // item
    g.rsb, g.csb = b.strides[0] // item, b.strides[1] // item
    g.ldc = g.N
    g.A = <void *><size_t>a.ctypes.data
    g.B = <void *><size_t>b.ctypes.data
    g.C = NULL
    if c is not None:
        g.C = <void *><size_t>c.ctypes.data
        g.ldc = c.strides[0] // item
    if item == 4:
        g.mr, g.nr = t.s_mr, t.s_nr
    else:
        g.mr, g.nr = t.d_mr, t.d_nr
    g.b_sums = g.bias = g.act_out = NULL
    g.nonfinite = NULL
    g.outer = NULL
    g.act = g.accumulate = 0
    cdef Call s
    cdef const Call *chosen = &g
    if _swap_pays(&g, item):   # the swapped product, as gemm runs it (never swapped back)
        _swapped_call(&s, &g, NULL)
        chosen = &s
    _choose(<Call *>chosen, max(1, threads), item)
    return {"plan": "swapped" if chosen.outer != NULL else "column" if chosen.column
            else "direct" if chosen.direct else "packed",
            "split": "k" if chosen.k_halves else "rows" if chosen.split_rows else "columns",
            "pack_a": bool(chosen.pack_a)}


cdef inline void _extent(cnp.ndarray x, char **lo, char **hi) noexcept:
    """First and one-past-last byte an array's elements can touch."""
    cdef char *p = <char *>cnp.PyArray_DATA(x)
    cdef char *start = p
    cdef char *end = p + cnp.PyArray_ITEMSIZE(x)
    cdef int d
    cdef cnp.npy_intp extent
    for d in range(cnp.PyArray_NDIM(x)):
        extent = (cnp.PyArray_DIM(x, d) - 1) * cnp.PyArray_STRIDE(x, d)
        if extent < 0:
            start += extent
        else:
            end += extent
    lo[0], hi[0] = start, end


cdef bint _overlap(cnp.ndarray x, cnp.ndarray y) noexcept:
    """Whether x and y may touch the same bytes (an empty array touches none: its
    extent would otherwise reach one stride before its data pointer)."""
    if cnp.PyArray_SIZE(x) == 0 or cnp.PyArray_SIZE(y) == 0:
        return False
    cdef char *xl
    cdef char *xh
    cdef char *yl
    cdef char *yh
    _extent(x, &xl, &xh)
    _extent(y, &yl, &yh)
    return xl < yh and yl < xh


cdef int _check_operand(cnp.ndarray x, str name, int type_num, int ndim=2,
                        str who="gemm") except -1:
    if cnp.PyArray_NDIM(x) != ndim:
        raise ValueError(f"{who}: {name} must be {ndim}-D; got {cnp.PyArray_NDIM(x)}-D")
    if cnp.PyArray_TYPE(x) != type_num:
        raise TypeError(f"{who}: a, b and c must share one float dtype; {name} is "
                        f"{x.dtype.name}")
    cdef int d
    for d in range(ndim):
        if cnp.PyArray_STRIDE(x, d) % cnp.PyArray_ITEMSIZE(x):
            raise ValueError(f"{who}: the strides of {name} must be multiples of its item "
                             f"size")
    if not cnp.PyArray_ISALIGNED(x):
        # reading a float through a misaligned pointer is undefined behaviour in C (and
        # lets the compiler's alignment assumptions fault): ops.matmul copies such input
        raise ValueError(f"{who}: {name} is not aligned to its item size; pass an aligned "
                         f"copy (np.require({name}, requirements='A'))")
    return 0


def product(cnp.ndarray a not None, cnp.ndarray b not None):
    """a @ b into a new C-contiguous array of a's dtype (gemm's rules otherwise). The
    array is made here, in C: for small products the ~0.3 us that np.empty costs from
    Python is a tenth of the call (64^3 on 2 threads: 2.53 -> 2.2 us)."""
    if cnp.PyArray_NDIM(a) != 2 or cnp.PyArray_NDIM(b) != 2:
        raise ValueError(f"product: a and b must be 2-D; got {a.ndim}-D and {b.ndim}-D")
    cdef cnp.npy_intp dims[2]
    dims[0] = cnp.PyArray_DIM(a, 0)
    dims[1] = cnp.PyArray_DIM(b, 1)
    cdef cnp.ndarray c = cnp.PyArray_EMPTY(2, dims, cnp.PyArray_TYPE(a), 0)
    gemm(a, b, c)
    return c


def gemm(cnp.ndarray a not None, cnp.ndarray b not None, cnp.ndarray c not None,
         cnp.ndarray bias=None, int activation=EPI_LINEAR, double alpha=0.0,
         bint accumulate=False, cnp.ndarray b_sums=None, cnp.ndarray act_out=None,
         bint check_finite=False):
    """c = act(a @ b + bias), or c += a @ b with accumulate=True (then no bias/activation);
    with b_sums, also b_sums = b.sum(axis=0) in the same pass (a Dense layer's bias
    gradient next to its kernel gradient x.T @ dy); with act_out, the forward output y
    of `activation` (shaped like c), c = (a @ b) * act'(y) instead: that activation's
    backward pass fused into the GEMM that makes its gradient (GRAD_EPILOGUES: linear,
    relu, leaky_relu, elu, sigmoid, tanh, softplus). With check_finite, returns whether
    every value of a @ b + bias was finite (checked in the epilogue, before the
    activation, while each strip is in cache); else None.

    float32 or float64 ndarrays of one dtype. `a` and `b` may be any strided views
    (a.T costs nothing); c must be C-contiguous, writeable, and must not overlap a
    or b. Shapes: a (M, K), b (K, N), c (M, N), bias (N,) contiguous, K >= 1.
    `activation` is an Epilogue code (EPILOGUES maps names); `alpha` is leaky_relu's
    slope or elu's alpha. The checks are a few C comparisons; cyneuron.ops.matmul is
    the public entry point that also converts and explains.
    """
    cdef int type_num = cnp.PyArray_TYPE(c)
    if type_num != cnp.NPY_FLOAT and type_num != cnp.NPY_DOUBLE:
        raise TypeError(f"gemm: c must be float32 or float64; got {c.dtype.name}")
    _check_operand(a, "a", type_num)
    _check_operand(b, "b", type_num)
    _check_operand(c, "c", type_num)
    if not cnp.PyArray_IS_C_CONTIGUOUS(c) or not cnp.PyArray_ISWRITEABLE(c):
        raise ValueError("gemm: c must be a writeable C-contiguous array")
    cdef Call g
    g.M, g.K, g.N = cnp.PyArray_DIM(a, 0), cnp.PyArray_DIM(a, 1), cnp.PyArray_DIM(b, 1)
    if cnp.PyArray_DIM(b, 0) != g.K or cnp.PyArray_DIM(c, 0) != g.M or cnp.PyArray_DIM(c, 1) != g.N:
        raise ValueError(f"gemm: shapes do not agree: a {(<object>a).shape}, b {(<object>b).shape}, "
                         f"c {(<object>c).shape}")
    if bias is not None:
        if cnp.PyArray_NDIM(bias) != 1 or cnp.PyArray_DIM(bias, 0) != g.N \
                or cnp.PyArray_TYPE(bias) != type_num or not cnp.PyArray_IS_C_CONTIGUOUS(bias) \
                or not cnp.PyArray_ISALIGNED(bias):
            raise ValueError(f"gemm: bias must be a contiguous ({g.N},) array of dtype "
                             f"{c.dtype.name}; got {(<object>bias).shape} {bias.dtype.name}")
    if b_sums is not None:
        if cnp.PyArray_NDIM(b_sums) != 1 or cnp.PyArray_DIM(b_sums, 0) != g.N \
                or cnp.PyArray_TYPE(b_sums) != type_num or not cnp.PyArray_IS_C_CONTIGUOUS(b_sums) \
                or not cnp.PyArray_ISWRITEABLE(b_sums) or not cnp.PyArray_ISALIGNED(b_sums):
            raise ValueError(f"gemm: b_sums must be a writeable contiguous ({g.N},) array of "
                             f"dtype {c.dtype.name}; got {(<object>b_sums).shape} "
                             f"{b_sums.dtype.name}")
        if _overlap(b_sums, a) or _overlap(b_sums, b) or _overlap(b_sums, c):
            raise ValueError("gemm: b_sums must not share memory with a, b or c")
    if not EPI_LINEAR <= activation <= EPI_ELU:
        raise ValueError(f"gemm: unknown epilogue activation code {activation}")
    if act_out is not None:
        if cnp.PyArray_NDIM(act_out) != 2 or cnp.PyArray_DIM(act_out, 0) != g.M \
                or cnp.PyArray_DIM(act_out, 1) != g.N or cnp.PyArray_TYPE(act_out) != type_num \
                or not cnp.PyArray_IS_C_CONTIGUOUS(act_out) or not cnp.PyArray_ISALIGNED(act_out):
            raise ValueError(f"gemm: act_out must be a contiguous {(<object>c).shape} array of "
                             f"dtype {c.dtype.name}; got {(<object>act_out).shape} "
                             f"{act_out.dtype.name}")
        if activation not in GRAD_EPILOGUES:
            raise ValueError(f"gemm: the derivative of epilogue activation {activation} cannot "
                             f"be taken from its output (act_out)")
        if bias is not None or accumulate:
            raise ValueError("gemm: act_out takes no bias and no accumulate")
        if _overlap(act_out, c):
            raise ValueError("gemm: act_out must not share memory with c")
    if accumulate and (bias is not None or activation != EPI_LINEAR):
        raise ValueError("gemm: accumulate=True takes no bias or activation")
    if check_finite and (accumulate or act_out is not None):
        raise ValueError("gemm: check_finite takes no accumulate and no act_out")
    if g.M == 0 or g.N == 0:
        if b_sums is not None:
            np.sum(b, axis=0, out=b_sums)
        return True if check_finite else None
    if g.K == 0:
        raise ValueError("gemm: inner dimension must be at least 1")
    if _overlap(c, a) or _overlap(c, b):
        raise ValueError("gemm: c must not share memory with a or b")
    cdef size_t item = cnp.PyArray_ITEMSIZE(c)
    g.rsa, g.csa = cnp.PyArray_STRIDE(a, 0) // item, cnp.PyArray_STRIDE(a, 1) // item
    g.rsb, g.csb = cnp.PyArray_STRIDE(b, 0) // item, cnp.PyArray_STRIDE(b, 1) // item
    g.A, g.B, g.C = cnp.PyArray_DATA(a), cnp.PyArray_DATA(b), cnp.PyArray_DATA(c)
    g.ldc = g.N
    g.bias = cnp.PyArray_DATA(bias) if bias is not None else NULL
    g.act, g.alpha, g.accumulate = activation, alpha, accumulate
    g.b_sums = cnp.PyArray_DATA(b_sums) if b_sums is not None else NULL
    g.act_out = cnp.PyArray_DATA(act_out) if act_out is not None else NULL
    g.b_ready = NULL
    g.outer = NULL
    cdef int nonfinite = 0
    g.nonfinite = &nonfinite if check_finite else NULL
    g.epi_in_ukr = 0        # set by _choose (the swapped product's epilogue is _finish's)
    if type_num == cnp.NPY_FLOAT:
        g.mr, g.nr = _table.s_mr, _table.s_nr
    else:
        g.mr, g.nr = _table.d_mr, _table.d_nr
    cdef int nthreads = 1
    cdef int64_t min_b_bytes = <int64_t>PARALLEL_MIN_B_BYTES * distance_percent() // 100
    if g.M * g.N * g.K >= _parallel_min_macs() or g.K * g.N * <int64_t>item >= min_b_bytes:
        nthreads = min(cn_omp_max_threads(), MAX_THREADS)
    cdef _Workspace ws = _free_workspaces.pop() if _free_workspaces else _Workspace()
    cdef cnp.ndarray t
    cdef Call swapped
    try:
        if _swap_pays(&g, item):
            t = ws.swapped_out(g.N, g.M, type_num)
            _swapped_call(&swapped, &g, cnp.PyArray_DATA(t))
            _plan(&swapped, ws, nthreads, item)
            with nogil:
                if type_num == cnp.NPY_FLOAT:
                    if g.b_sums != NULL:
                        _column_sums(&g, <float>0, 0, 1)
                    _run(&swapped, <float>0, nthreads)
                else:
                    if g.b_sums != NULL:
                        _column_sums(&g, <double>0, 0, 1)
                    _run(&swapped, <double>0, nthreads)
        else:
            _plan(&g, ws, nthreads, item)
            with nogil:
                if type_num == cnp.NPY_FLOAT:
                    _run(&g, <float>0, nthreads)
                else:
                    _run(&g, <double>0, nthreads)
    finally:
        _free_workspaces.append(ws)
    return nonfinite == 0 if check_finite else None


include "_gemm_serial.pxi"
include "_gemm_prepacked.pxi"
