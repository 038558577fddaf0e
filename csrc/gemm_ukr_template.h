/* Register-blocked GEMM micro-kernel and its packing routines, instantiated
 * once per ISA and dtype (see cn_kernels.h for the contract).
 *
 * The including file defines:
 *   UKR_NAME, PACK_A_NAME, PACK_B_NAME, GEMV_NAME, DOTS_NAME   function names
 *   UKR_T               scalar type (float or double)
 *   UKR_V               vector type, UKR_VL lanes
 *   UKR_MR, UKR_NV      rows of the block, vectors per row (NR = NV * VL)
 *   UKR_ZERO()          a zero vector
 *   UKR_LOAD(p)         unaligned load of VL scalars
 *   UKR_STORE(p, v)     unaligned store
 *   UKR_BCAST(p)        broadcast one scalar
 *   UKR_FMA(a, b, c)    a * b + c
 *   UKR_ADD(a, b)       a + b
 * and optionally UKR_ROWS_NAME (the row-pointer kernel below).
 * The accumulators are indexed with compile-time constants only, so the
 * compiler keeps them in registers. A is read through a row and a column
 * stride, so the same kernel runs on packed slivers and on matrices in place.
 * Edge tiles (m < MR or n < NR) are stored through a small stack tile.
 */
#define UKR_NR (UKR_NV * UKR_VL)
/* vectors of y the one-row kernel (GEMV_NAME) keeps in registers */
#ifndef GEMV_NV
#define GEMV_NV 8
#endif

/* The body of the micro-kernel for ROWS rows and the first NVU of its NV vectors of
 * columns (compile-time constants): rows past m repeat row m - 1, so only the store
 * looks at m. Row i of A starts at UKR_ROW(i); K runs as nseg segments of k columns,
 * segment s at s * seg_stride from each row's start, its columns a_cs apart, B's rows
 * one after another throughout. */
#define UKR_BODY(ROWS, NVU)                                                                  \
    const UKR_T *row[ROWS];                                                             \
    _Pragma("GCC unroll 16")                                                            \
    for (int i = 0; i < ROWS; ++i)                                                      \
        row[i] = UKR_ROW(i < m ? i : m - 1);                                            \
    for (int i = 0; i < m; ++i) {  /* C is read or written last: fetch it now */        \
        __builtin_prefetch(c + i * ldc, 1, 3);                                          \
        __builtin_prefetch(c + i * ldc + n - 1, 1, 3);                                  \
    }                                                                                   \
    UKR_V acc[ROWS][NVU];                                                            \
    _Pragma("GCC unroll 16")                                                            \
    for (int i = 0; i < ROWS; ++i)                                                      \
        _Pragma("GCC unroll 8")                                                         \
        for (int j = 0; j < NVU; ++j)                                                \
            acc[i][j] = UKR_ZERO();                                                     \
    for (int64_t seg = 0; seg < nseg; ++seg) {                                          \
    int64_t off = seg * seg_stride;                                                     \
    _Pragma("GCC unroll 4")                                                             \
    for (int64_t p = 0; p < k; ++p) {                                                   \
        UKR_V bv[NVU];                                                               \
        _Pragma("GCC unroll 8")                                                         \
        for (int j = 0; j < NVU; ++j)                                                \
            bv[j] = UKR_LOAD(b + j * UKR_VL);                                           \
        _Pragma("GCC unroll 16")                                                        \
        for (int i = 0; i < ROWS; ++i) {                                                \
            UKR_V av = UKR_BCAST(row[i] + off);                                         \
            _Pragma("GCC unroll 8")                                                     \
            for (int j = 0; j < NVU; ++j)                                            \
                acc[i][j] = UKR_FMA(av, bv[j], acc[i][j]);                              \
        }                                                                               \
        off += a_cs;                                                                    \
        b += b_rs;                                                                      \
    }                                                                                   \
    }                                                                                   \
    if (m == ROWS && n == NVU * UKR_VL) {                                                     \
        _Pragma("GCC unroll 16")                                                        \
        for (int i = 0; i < ROWS; ++i)                                                  \
            _Pragma("GCC unroll 8")                                                     \
            for (int j = 0; j < NVU; ++j) {                                          \
                UKR_T *dst = c + i * ldc + j * UKR_VL;                                  \
                UKR_V v = beta ? UKR_ADD(UKR_LOAD(dst), acc[i][j]) : acc[i][j];         \
                UKR_STORE(dst, UKR_FIN_V(v, j));                                        \
            }                                                                           \
        return;                                                                         \
    }                                                                                   \
    UKR_T tile[ROWS * UKR_NR];                                                          \
    _Pragma("GCC unroll 16")                                                            \
    for (int i = 0; i < ROWS; ++i)                                                      \
        _Pragma("GCC unroll 8")                                                         \
        for (int j = 0; j < NVU; ++j)                                                \
            UKR_STORE(tile + i * UKR_NR + j * UKR_VL, acc[i][j]);                       \
    for (int i = 0; i < m; ++i)                                                         \
        for (int j = 0; j < n; ++j)                                                     \
            c[i * ldc + j] = UKR_FIN_S((beta ? c[i * ldc + j] : (UKR_T)0)               \
                                       + tile[i * UKR_NR + j], j);

/* The register block's shapes: a narrow sliver (Dense(10), a ragged edge: n <= NR / 2)
 * with half the vectors, one row (a single sample: no padding rows at all), a short
 * last row sliver (m <= MR / 2) with half the rows, else the full block. */
#if UKR_NV % 2 == 0
#define UKR_SHAPES                                                                      \
    if (n <= UKR_NR / 2) {                                                              \
        if (m == 1) {                                                                   \
            UKR_BODY(1, UKR_NV / 2)                                                     \
        } else if (m <= UKR_MR / 2) {                                                   \
            UKR_BODY(UKR_MR / 2, UKR_NV / 2)                                            \
        } else {                                                                        \
            UKR_BODY(UKR_MR, UKR_NV / 2)                                                \
        }                                                                               \
        return;                                                                         \
    }                                                                                   \
    UKR_SHAPES_FULL
#else
#define UKR_SHAPES UKR_SHAPES_FULL
#endif
#define UKR_SHAPES_FULL                                                                 \
    if (m == 1) {                                                                       \
        UKR_BODY(1, UKR_NV)                                                             \
    } else if (m <= UKR_MR / 2) {                                                       \
        UKR_BODY(UKR_MR / 2, UKR_NV)                                                    \
    } else {                                                                            \
        UKR_BODY(UKR_MR, UKR_NV)                                                        \
    }

/* A full-height tile of an A whose MR rows lie side by side (a_rs = 1: packed A, or A^T
 * read in place) gets a copy of the body where that is known: its rows are then offsets
 * from one pointer. The general body keeps MR row pointers, more than the free registers
 * with AVX-512's 8 rows: GCC reloads them from the stack for every broadcast (one L1
 * loop of the 8x32 kernel, K = 192, Intel Xeon: 174-181 -> 190-192 GFLOP/s). */
#define UKR_SHAPES_STRIDED                                                              \
    if (a_rs == 1 && m == UKR_MR && n > UKR_NR / 2) {                                   \
        UKR_BODY(UKR_MR, UKR_NV)                                                        \
    } else {                                                                            \
        UKR_SHAPES                                                                      \
    }

/* The stores' epilogue: none here and in UKR_ROWS_NAME; bias and relu in UKR_EPI_NAME. */
#define UKR_FIN_V(v, j) (v)
#define UKR_FIN_S(v, j) (v)
void UKR_NAME(int64_t k, const UKR_T *restrict a, int64_t a_rs, int64_t a_cs,
              const UKR_T *restrict b, int64_t b_rs,
              UKR_T *restrict c, int64_t ldc, int m, int n, int beta)
{
    const int64_t nseg = 1, seg_stride = 0;
#define UKR_ROW(i) (a + (i) * a_rs)
    UKR_SHAPES_STRIDED
#undef UKR_ROW
}

#ifdef UKR_ROWS_NAME
/* C[0:m, 0:n] = (beta ? C : 0) + A . B where row i of A is gathered from anywhere: its
 * nseg segments of k contiguous values start at a_rows[i] + s * seg_stride (an implicit
 * im2col: a convolution's output pixel, its kernel rows as segments). B as for UKR_NAME,
 * nseg * k rows. */
void UKR_ROWS_NAME(int64_t k, int64_t nseg, int64_t seg_stride,
                   const UKR_T *const *restrict a_rows, const UKR_T *restrict b, int64_t b_rs,
                   UKR_T *restrict c, int64_t ldc, int m, int n, int beta)
{
    const int64_t a_cs = 1;
#define UKR_ROW(i) (a_rows[i])
    UKR_SHAPES
#undef UKR_ROW
}
#endif
#undef UKR_FIN_V
#undef UKR_FIN_S

#ifdef UKR_EPI_NAME
/* UKR_NAME, then + bias[0:n] (bias may be NULL) and relu (x > 0 ? x : 0, NaN and -0
 * giving 0: max(x, 0) with the 0 second) on the values it stores: the epilogue of the k
 * block that finishes C, while the tile is in registers; with nonfinite, *nonfinite = 1
 * (an atomic store: threads share the flag) when a value plus bias, before relu, is NaN
 * or infinite (v - v is NaN exactly then). */
#define UKR_PASTE_(a, b) a##_##b
#define UKR_PASTE(a, b) UKR_PASTE_(a, b)
static inline UKR_V UKR_PASTE(UKR_EPI_NAME, fin_v)(UKR_V v, const UKR_T *bias, int relu,
                                                   int check, int *bad) {
    if (bias)
        v = UKR_ADD(v, UKR_LOAD(bias));
    if (check)
        *bad |= UKR_NONFINITE(v);
    return relu ? UKR_MAX(v, UKR_ZERO()) : v;
}
static inline UKR_T UKR_PASTE(UKR_EPI_NAME, fin_s)(UKR_T v, const UKR_T *bias, int relu,
                                                   int check, int *bad) {
    if (bias)
        v = v + *bias;
    if (check)
        *bad |= v - v != 0;
    return relu ? (v > 0 ? v : (UKR_T)0) : v;
}
#define UKR_FIN_V(v, j) UKR_PASTE(UKR_EPI_NAME, fin_v)((v), bias ? bias + (j) * UKR_VL : 0, \
                                                       relu, check, bad)
#define UKR_FIN_S(v, j) UKR_PASTE(UKR_EPI_NAME, fin_s)((v), bias ? bias + (j) : 0, relu, \
                                                       check, bad)
static inline __attribute__((always_inline)) void UKR_PASTE(UKR_EPI_NAME, body)(
        int64_t k, const UKR_T *restrict a, int64_t a_rs, int64_t a_cs,
        const UKR_T *restrict b, int64_t b_rs, UKR_T *restrict c, int64_t ldc, int m, int n,
        int beta, const UKR_T *restrict bias, int relu, const int check, int *bad)
{
    const int64_t nseg = 1, seg_stride = 0;
#define UKR_ROW(i) (a + (i) * a_rs)
    UKR_SHAPES_STRIDED
#undef UKR_ROW
}
/* ... and with nonfinite, *nonfinite = 1 (an atomic store: threads share the flag) when a
 * value plus bias, before relu, is NaN or infinite (v - v is NaN exactly then). */
void UKR_EPI_NAME(int64_t k, const UKR_T *restrict a, int64_t a_rs, int64_t a_cs,
                  const UKR_T *restrict b, int64_t b_rs, UKR_T *restrict c, int64_t ldc,
                  int m, int n, int beta, const UKR_T *restrict bias, int relu,
                  int *nonfinite)
{
    int bad = 0;
    if (nonfinite) {     /* two copies: the check compiled in, or out */
        UKR_PASTE(UKR_EPI_NAME, body)(k, a, a_rs, a_cs, b, b_rs, c, ldc, m, n, beta, bias,
                                      relu, 1, &bad);
        if (bad)
            __atomic_store_n(nonfinite, 1, __ATOMIC_RELAXED);
    } else {
        UKR_PASTE(UKR_EPI_NAME, body)(k, a, a_rs, a_cs, b, b_rs, c, ldc, m, n, beta, bias,
                                      relu, 0, &bad);
    }
}
#undef UKR_FIN_V
#undef UKR_FIN_S
#undef UKR_PASTE
#undef UKR_PASTE_
#endif
#undef UKR_SHAPES
#undef UKR_SHAPES_FULL
#undef UKR_SHAPES_STRIDED

void PACK_A_NAME(int64_t m, int64_t k, const UKR_T *restrict src, int64_t rs, int64_t cs,
                 UKR_T *restrict dst)
{
    if (m == UKR_MR && rs == 1) {          /* columns of A contiguous: copy MR at a time */
        for (int64_t p = 0; p < k; ++p)
#pragma GCC unroll 16
            for (int i = 0; i < UKR_MR; ++i)
                dst[p * UKR_MR + i] = src[p * cs + i];
        return;
    }
    for (int64_t i = 0; i < m; ++i)        /* rows of A contiguous: read along rows */
        for (int64_t p = 0; p < k; ++p)
            dst[p * UKR_MR + i] = src[i * rs + p * cs];
    for (int64_t p = 0; p < k; ++p)
        for (int64_t i = m; i < UKR_MR; ++i)
            dst[p * UKR_MR + i] = 0;
}

void PACK_B_NAME(int64_t n, int64_t k, const UKR_T *restrict src, int64_t rs, int64_t cs,
                 UKR_T *restrict dst)
{
    if (n == UKR_NR && cs == 1) {          /* rows of B contiguous: copy NR at a time */
        for (int64_t p = 0; p < k; ++p)
#pragma GCC unroll 8
            for (int j = 0; j < UKR_NR; ++j)
                dst[p * UKR_NR + j] = src[p * rs + j];
        return;
    }
    for (int64_t j = 0; j < n; ++j)
        for (int64_t p = 0; p < k; ++p)
            dst[p * UKR_NR + j] = src[p * rs + j * cs];
    for (int64_t p = 0; p < k; ++p)
        for (int64_t j = n; j < UKR_NR; ++j)
            dst[p * UKR_NR + j] = 0;
}

/* GEMV_NAME's y[j : j + NV * VL] held in NV registers down all k rows of b (NV a
 * compile-time constant); advances j. */
#define GEMV_STRIP(NV)                                                                  \
    {                                                                                   \
        UKR_V acc[NV];                                                                  \
        _Pragma("GCC unroll 16")                                                        \
        for (q = 0; q < NV; ++q)                                                        \
            acc[q] = beta ? UKR_LOAD(y + j + q * UKR_VL) : UKR_ZERO();                  \
        const UKR_T *row = b + j;                                                       \
        for (p = 0; p < k; ++p, row += b_rs) {                                          \
            UKR_T s = x[p * incx];                                                      \
            UKR_V xv = UKR_BCAST(&s);                                                   \
            _Pragma("GCC unroll 16")                                                    \
            for (q = 0; q < NV; ++q)                                                    \
                acc[q] = UKR_FMA(xv, UKR_LOAD(row + q * UKR_VL), acc[q]);               \
        }                                                                               \
        _Pragma("GCC unroll 16")                                                        \
        for (q = 0; q < NV; ++q)                                                        \
            UKR_STORE(y + j + q * UKR_VL, acc[q]);                                      \
        j += NV * UKR_VL;                                                               \
    }

/* y[0:n] (+)= x . B[0:k, 0:n], x[p] at x + p * incx, row p of B at b + p * b_rs
 * (contiguous columns): a one-row product down strips of GEMV_NV vectors of B's
 * columns, each strip's part of y held in registers. (The earlier form streamed whole
 * rows, four at a time, updating y in L1 for every four: measured ~8% slower on
 * LSTM(128)'s one-sample steps, 512 x 162 from L2, Zen AVX-512; both are bound by the
 * cache's bandwidth.) */
void GEMV_NAME(int64_t k, int64_t n, const UKR_T *restrict x, int64_t incx,
               const UKR_T *restrict b, int64_t b_rs, UKR_T *restrict y, int beta)
{
    /* Strips of GEMV_NV vectors of y stay in registers down all k rows of b, so each
     * FMA costs one load of b and y is read and written once (the k-outer form read
     * and wrote y for every 4 rows). The columns left over go in strips of 8, 4, 2 and
     * 1 vectors, so they too have independent sums (one vector at a time waited on the
     * FMA latency: 256 x 128 on AVX-512 took 2.2 us), and the last n % VL in one masked
     * vector (where the ISA has masked loads; one sample through a 10-class head, 1 x
     * 512 x 10 on AVX-512, took 2.47 us column by column, 0.77 us masked). Every y[j] still
     * sums its k terms in order, with FMAs, as the micro-kernel does. */
    int64_t p, j = 0, q;
    while (j + GEMV_NV * UKR_VL <= n)
        GEMV_STRIP(GEMV_NV)
#if GEMV_NV > 8
    if (j + 8 * UKR_VL <= n)
        GEMV_STRIP(8)
#endif
    if (j + 4 * UKR_VL <= n)
        GEMV_STRIP(4)
    if (j + 2 * UKR_VL <= n)
        GEMV_STRIP(2)
    if (j + UKR_VL <= n)
        GEMV_STRIP(1)
#ifdef UKR_LOAD_MASKED
    if (j < n) {   /* the last n - j < VL columns: one vector, its lanes past n masked off */
        UKR_MASK_T mask = UKR_MASK((int)(n - j));
        UKR_V acc = beta ? UKR_LOAD_MASKED(y + j, mask) : UKR_ZERO();
        const UKR_T *row = b + j;
        for (p = 0; p < k; ++p, row += b_rs) {
            UKR_T s = x[p * incx];
            acc = UKR_FMA(UKR_BCAST(&s), UKR_LOAD_MASKED(row, mask), acc);
        }
        UKR_STORE_MASKED(y + j, acc, mask);
        j = n;
    }
#endif
    for (; j < n; ++j) {
        UKR_T acc = beta ? y[j] : 0;
        for (p = 0; p < k; ++p)
            acc += x[p * incx] * b[p * b_rs + j];
        y[j] = acc;
    }
}

/* c[i * ldc] (+)= A[i, 0:k] . b[0:k] for i < m (beta: add to c): the one-column
 * product (a Dense(1) layer, a recurrent step on one sample), where the micro-kernel
 * would fill one of its NR columns. Rows of A (a + i * a_rs) and b are contiguous; four
 * rows at a time share each load of b, and each row's vector sum is reduced once. */
void DOTS_NAME(int64_t k, const UKR_T *restrict a, int64_t a_rs, const UKR_T *restrict b,
               UKR_T *restrict c, int64_t ldc, int64_t m, int beta)
{
    int64_t i = 0, p, j;
    for (; i < m; i += 4) {
        int rows = m - i < 4 ? (int)(m - i) : 4;
        const UKR_T *r[4];
        for (int q = 0; q < 4; ++q)     /* missing rows repeat the last one (not stored) */
            r[q] = a + (i + (q < rows ? q : rows - 1)) * a_rs;
        UKR_V s0 = UKR_ZERO(), s1 = UKR_ZERO(), s2 = UKR_ZERO(), s3 = UKR_ZERO();
        for (p = 0; p + UKR_VL <= k; p += UKR_VL) {
            UKR_V bv = UKR_LOAD(b + p);
            s0 = UKR_FMA(UKR_LOAD(r[0] + p), bv, s0);
            s1 = UKR_FMA(UKR_LOAD(r[1] + p), bv, s1);
            s2 = UKR_FMA(UKR_LOAD(r[2] + p), bv, s2);
            s3 = UKR_FMA(UKR_LOAD(r[3] + p), bv, s3);
        }
        UKR_T lanes[4][UKR_VL], sum[4];
        UKR_STORE(lanes[0], s0);
        UKR_STORE(lanes[1], s1);
        UKR_STORE(lanes[2], s2);
        UKR_STORE(lanes[3], s3);
        for (int q = 0; q < 4; ++q) {
            sum[q] = 0;
            for (j = 0; j < UKR_VL; ++j)
                sum[q] += lanes[q][j];
            for (j = p; j < k; ++j)
                sum[q] += r[q][j] * b[j];
        }
        for (int q = 0; q < rows; ++q)
            c[(i + q) * ldc] = (beta ? c[(i + q) * ldc] : (UKR_T)0) + sum[q];
    }
}

#undef UKR_BODY
#undef UKR_NR

#ifdef FMA_LOOP_NAME
/* 12 independent FMA chains, enough to fill both FMA pipes at any latency
 * up to 6 cycles: measures the machine's multiply-add peak. */
double FMA_LOOP_NAME(int64_t iters)
{
    UKR_V acc[12];
    UKR_T one = (UKR_T)1.0000001, tiny = (UKR_T)1e-7;
    UKR_V x = UKR_BCAST(&one), y = UKR_BCAST(&tiny);
    /* Distinct starting values: identical chains would be merged into one by the compiler. */
#pragma GCC unroll 12
    for (int i = 0; i < 12; ++i) {
        UKR_T start = (UKR_T)(i + 1);
        acc[i] = UKR_BCAST(&start);
    }
    for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 12
        for (int i = 0; i < 12; ++i)
            acc[i] = UKR_FMA(acc[i], x, y);
    }
    UKR_V sum = acc[0];
#pragma GCC unroll 12
    for (int i = 1; i < 12; ++i)
        sum = UKR_ADD(sum, acc[i]);
    UKR_T out[UKR_VL];
    UKR_STORE(out, sum);
    /* out[0] is finite and positive: the comparison keeps the loop alive. */
    return (double)iters * 12 * UKR_VL * 2 * (out[0] > -1);
}
#endif
