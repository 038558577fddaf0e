/* Register-blocked GEMM micro-kernel, instantiated once per ISA and dtype.
 *
 * The including file defines:
 *   UKR_NAME            function name
 *   UKR_T               scalar type (float or double)
 *   UKR_V               vector type, UKR_VL lanes
 *   UKR_MR, UKR_NV      rows of the block, vectors per row (NR = NV * VL)
 *   UKR_ZERO()          a zero vector
 *   UKR_LOAD(p)         unaligned load of VL scalars
 *   UKR_STORE(p, v)     unaligned store
 *   UKR_BCAST(p)        broadcast one scalar
 *   UKR_FMA(a, b, c)    a * b + c
 *   UKR_ADD(a, b)       a + b
 * The accumulator array is indexed with compile-time constants only, so the
 * compiler keeps it in registers.  Edge tiles (m < MR or n < NR) go through a
 * small stack tile; packed panels are zero-padded, so the loop never branches.
 */
#define UKR_NR (UKR_NV * UKR_VL)

void UKR_NAME(int64_t k, const UKR_T *restrict a, const UKR_T *restrict b,
              UKR_T *restrict c, int64_t ldc, int m, int n, int beta)
{
    UKR_V acc[UKR_MR][UKR_NV];
#pragma GCC unroll 16
    for (int i = 0; i < UKR_MR; ++i)
#pragma GCC unroll 8
        for (int j = 0; j < UKR_NV; ++j)
            acc[i][j] = UKR_ZERO();

    for (int64_t p = 0; p < k; ++p) {
        UKR_V bv[UKR_NV];
#pragma GCC unroll 8
        for (int j = 0; j < UKR_NV; ++j)
            bv[j] = UKR_LOAD(b + j * UKR_VL);
#pragma GCC unroll 16
        for (int i = 0; i < UKR_MR; ++i) {
            UKR_V av = UKR_BCAST(a + i);
#pragma GCC unroll 8
            for (int j = 0; j < UKR_NV; ++j)
                acc[i][j] = UKR_FMA(av, bv[j], acc[i][j]);
        }
        a += UKR_MR;
        b += UKR_NR;
    }

    if (m == UKR_MR && n == UKR_NR) {
#pragma GCC unroll 16
        for (int i = 0; i < UKR_MR; ++i)
#pragma GCC unroll 8
            for (int j = 0; j < UKR_NV; ++j) {
                UKR_T *dst = c + i * ldc + j * UKR_VL;
                UKR_V v = beta ? UKR_ADD(UKR_LOAD(dst), acc[i][j]) : acc[i][j];
                UKR_STORE(dst, v);
            }
        return;
    }

    UKR_T tile[UKR_MR * UKR_NR];
#pragma GCC unroll 16
    for (int i = 0; i < UKR_MR; ++i)
#pragma GCC unroll 8
        for (int j = 0; j < UKR_NV; ++j)
            UKR_STORE(tile + i * UKR_NR + j * UKR_VL, acc[i][j]);
    for (int i = 0; i < m; ++i)
        for (int j = 0; j < n; ++j)
            c[i * ldc + j] = (beta ? c[i * ldc + j] : (UKR_T)0) + tile[i * UKR_NR + j];
}

#undef UKR_NR
