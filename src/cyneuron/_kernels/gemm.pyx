"""GEMM driver: BLIS-style loops around the per-ISA micro-kernels in csrc/.

    for jc in N by NC:            B block -> L3
      for pc in K by KC:          pack B[pc:, jc:] into NR-column slivers (parallel)
        for ic in M by MC:        pack A[ic:, pc:] into MR-row slivers (parallel), -> L2
          for every (jr, ir) tile: micro-kernel MR x NR (parallel over tiles)

A and B arrive as pointers with a row and a column stride, so A.T, B.T and any
strided view are absorbed by the packing: no transposed copy is ever made.
The micro-kernel for this CPU is chosen once at import (cn_best_isa) and can be
forced with CYNEURON_ISA (see cyneuron._config).
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.stdint cimport int64_t
from libc.stdlib cimport free

from cyneuron._kernels._openmp cimport cn_omp_max_threads


cdef extern from "stdlib.h" nogil:
    int posix_memalign(void **memptr, size_t alignment, size_t size)

cdef extern from "cn_kernels.h" nogil:
    ctypedef void (*cn_sgemm_ukr_t)(int64_t k, const float *a, const float *b,
                                    float *c, int64_t ldc, int m, int n, int beta) noexcept nogil
    ctypedef void (*cn_dgemm_ukr_t)(int64_t k, const double *a, const double *b,
                                    double *c, int64_t ldc, int m, int n, int beta) noexcept nogil
    ctypedef struct cn_kernel_table:
        int isa
        const char *name
        int s_mr
        int s_nr
        int d_mr
        int d_nr
        cn_sgemm_ukr_t sgemm_ukr
        cn_dgemm_ukr_t dgemm_ukr
    int CN_ISA_GENERIC, CN_ISA_AVX2, CN_ISA_AVX512, CN_ISA_COUNT
    int cn_cpu_supports(int isa)
    int cn_best_isa()
    const cn_kernel_table *cn_kernels_for(int isa)


# Cache blocking (elements). KC x NR B sliver stays in L1, MC x KC A block in
# L2, KC x NC B block in L3. MC and NC are rounded to multiples of MR and NR.
cdef enum:
    KC_BLOCK = 256
    MC_TARGET = 144
    NC_TARGET = 4096
    # Below this many multiply-adds one thread is faster than waking the pool.
    GEMM_PARALLEL_MIN_MACS = 1 << 20

ISA_NAMES = ("generic", "avx2", "avx512")

cdef const cn_kernel_table *_table = cn_kernels_for(cn_best_isa())


def supported_isas():
    """Instruction sets this CPU can run, slowest first."""
    return tuple(n for i, n in enumerate(ISA_NAMES) if cn_cpu_supports(i))


def get_isa():
    """Name of the instruction set whose micro-kernels are in use."""
    return _table.name.decode()


def set_isa(str name):
    """Use the micro-kernels of instruction set `name` from now on."""
    global _table
    if name not in ISA_NAMES:
        raise ValueError(f"isa must be one of {ISA_NAMES}, got {name!r}")
    cdef int isa = ISA_NAMES.index(name)
    if not cn_cpu_supports(isa):
        raise ValueError(f"isa {name!r} is not supported by this CPU; supported: {supported_isas()}")
    _table = cn_kernels_for(isa)


def block_sizes(str dtype):
    """(MR, NR, MC, KC, NC) of the current path for 'float32' or 'float64'."""
    cdef int mr = _table.s_mr if dtype == "float32" else _table.d_mr
    cdef int nr = _table.s_nr if dtype == "float32" else _table.d_nr
    return (mr, nr, (MC_TARGET // mr) * mr, KC_BLOCK, (NC_TARGET // nr) * nr)


cdef inline int64_t _min(int64_t a, int64_t b) noexcept nogil:
    return a if a < b else b


cdef inline void _pack_a_sliver(int64_t ip, int64_t mc, int64_t kc, const floating *a,
                                int64_t rsa, int64_t csa, floating *out, int mr) noexcept nogil:
    """Rows ip*MR.. of the A block, as kc columns of MR values, zero-padded."""
    cdef int64_t i, p, m = _min(mr, mc - ip * mr)
    cdef const floating *src = a + ip * mr * rsa
    cdef floating *dst = out + ip * mr * kc
    if csa == 1:
        for i in range(m):
            for p in range(kc):
                dst[p * mr + i] = src[i * rsa + p]
    else:
        for p in range(kc):
            for i in range(m):
                dst[p * mr + i] = src[i * rsa + p * csa]
    for p in range(kc):
        for i in range(m, mr):
            dst[p * mr + i] = 0


cdef inline void _pack_b_sliver(int64_t jp, int64_t kc, int64_t nc, const floating *b,
                                int64_t rsb, int64_t csb, floating *out, int nr) noexcept nogil:
    """Columns jp*NR.. of the B block, as kc rows of NR values, zero-padded."""
    cdef int64_t j, p, n = _min(nr, nc - jp * nr)
    cdef const floating *src = b + jp * nr * csb
    cdef floating *dst = out + jp * nr * kc
    if rsb == 1:
        for j in range(n):
            for p in range(kc):
                dst[p * nr + j] = src[p + j * csb]
    else:
        for p in range(kc):
            for j in range(n):
                dst[p * nr + j] = src[p * rsb + j * csb]
    for p in range(kc):
        for j in range(n, nr):
            dst[p * nr + j] = 0


cdef inline void _tile(int64_t t, int64_t m_slivers, int64_t mc, int64_t nc, int64_t kc,
                       const floating *a_pack, const floating *b_pack, floating *c,
                       int64_t ldc, int mr, int nr, int beta) noexcept nogil:
    """Micro-kernel on tile t; tiles run down a B sliver, so it stays in L1."""
    cdef int64_t jp = t // m_slivers
    cdef int64_t ip = t - jp * m_slivers
    cdef int m = <int>_min(mr, mc - ip * mr)
    cdef int n = <int>_min(nr, nc - jp * nr)
    if floating is float:
        _table.sgemm_ukr(kc, a_pack + ip * mr * kc, b_pack + jp * nr * kc,
                         c + ip * mr * ldc + jp * nr, ldc, m, n, beta)
    else:
        _table.dgemm_ukr(kc, a_pack + ip * mr * kc, b_pack + jp * nr * kc,
                         c + ip * mr * ldc + jp * nr, ldc, m, n, beta)


cdef void *_aligned(size_t nbytes) noexcept nogil:
    cdef void *p = NULL
    if posix_memalign(&p, 64, nbytes if nbytes > 0 else 64) != 0:
        return NULL
    return p


cdef int _gemm(int64_t M, int64_t N, int64_t K,
               const floating *A, int64_t rsa, int64_t csa,
               const floating *B, int64_t rsb, int64_t csb,
               floating *C, int64_t ldc, int nthreads) noexcept nogil:
    """C[M, N] = A[M, K] . B[K, N]; strides in elements. Returns -1 if out of memory."""
    cdef int mr, nr
    if floating is float:
        mr = _table.s_mr
        nr = _table.s_nr
    else:
        mr = _table.d_mr
        nr = _table.d_nr
    cdef int64_t mc_blk = (MC_TARGET // mr) * mr
    cdef int64_t nc_blk = (NC_TARGET // nr) * nr
    cdef int64_t a_rows = (_min(M, mc_blk) + mr - 1) // mr * mr
    cdef int64_t b_cols = (_min(N, nc_blk) + nr - 1) // nr * nr
    cdef int64_t k_cap = _min(K, KC_BLOCK)
    cdef floating *a_pack = <floating *>_aligned(a_rows * k_cap * sizeof(floating))
    cdef floating *b_pack = <floating *>_aligned(b_cols * k_cap * sizeof(floating))
    if a_pack == NULL or b_pack == NULL:
        free(a_pack)
        free(b_pack)
        return -1

    cdef int64_t jb, pb, ib, jc, pc, ic, nc, kc, mc, s, n_slivers, m_slivers, n_tiles
    cdef int beta
    for jb in range((N + nc_blk - 1) // nc_blk):
        jc = jb * nc_blk
        nc = _min(nc_blk, N - jc)
        n_slivers = (nc + nr - 1) // nr
        for pb in range((K + KC_BLOCK - 1) // KC_BLOCK):
            pc = pb * KC_BLOCK
            kc = _min(KC_BLOCK, K - pc)
            beta = pc > 0
            if nthreads > 1 and n_slivers > 1:
                for s in prange(n_slivers, num_threads=nthreads, schedule="static"):
                    _pack_b_sliver(s, kc, nc, B + pc * rsb + jc * csb, rsb, csb, b_pack, nr)
            else:
                for s in range(n_slivers):
                    _pack_b_sliver(s, kc, nc, B + pc * rsb + jc * csb, rsb, csb, b_pack, nr)
            for ib in range((M + mc_blk - 1) // mc_blk):
                ic = ib * mc_blk
                mc = _min(mc_blk, M - ic)
                m_slivers = (mc + mr - 1) // mr
                n_tiles = m_slivers * n_slivers
                if nthreads > 1 and n_tiles > 1:
                    for s in prange(m_slivers, num_threads=nthreads, schedule="static"):
                        _pack_a_sliver(s, mc, kc, A + ic * rsa + pc * csa, rsa, csa, a_pack, mr)
                    for s in prange(n_tiles, num_threads=nthreads, schedule="static"):
                        _tile(s, m_slivers, mc, nc, kc, a_pack, b_pack,
                              C + ic * ldc + jc, ldc, mr, nr, beta)
                else:
                    for s in range(m_slivers):
                        _pack_a_sliver(s, mc, kc, A + ic * rsa + pc * csa, rsa, csa, a_pack, mr)
                    for s in range(n_tiles):
                        _tile(s, m_slivers, mc, nc, kc, a_pack, b_pack,
                              C + ic * ldc + jc, ldc, mr, nr, beta)
    free(a_pack)
    free(b_pack)
    return 0


def gemm(const floating[:, :] a, const floating[:, :] b, floating[:, ::1] c):
    """c = a @ b. `a` and `b` may be any strided views (a.T costs nothing).

    Shapes must agree: a (M, K), b (K, N), c (M, N), all one dtype, K >= 1.
    cyneuron.ops.matmul is the validated public entry point.
    """
    cdef int64_t M = a.shape[0], K = a.shape[1], N = b.shape[1]
    if b.shape[0] != K or c.shape[0] != M or c.shape[1] != N:
        raise ValueError("gemm: shapes do not agree")
    if M == 0 or N == 0:
        return
    if K == 0:
        raise ValueError("gemm: inner dimension must be at least 1")
    cdef int64_t item = sizeof(floating)
    cdef int64_t rsa = a.strides[0] // item, csa = a.strides[1] // item
    cdef int64_t rsb = b.strides[0] // item, csb = b.strides[1] // item
    cdef int nthreads = 1
    if M * N * K >= GEMM_PARALLEL_MIN_MACS:
        nthreads = cn_omp_max_threads()
    cdef int rc
    with nogil:
        rc = _gemm(M, N, K, &a[0, 0], rsa, csa, &b[0, 0], rsb, csb, &c[0, 0], c.shape[1], nthreads)
    if rc != 0:
        raise MemoryError("gemm: could not allocate packing buffers")
