/* Fast float32 packing of B when its *columns* are contiguous (B = W.T, as in
 * dX = dY . W^T): eight columns are loaded eight rows at a time and transposed
 * in registers with AVX shuffles, instead of one scalar per cycle.
 *
 * The including file defines PACK_B_T_NAME (the fast function), PACK_B_NAME (the
 * template's general one, already defined) and UKR_NR (a multiple of 8). Needs AVX. */
#include <immintrin.h>

static inline void cn_transpose8_ps(__m256 r[8])
{
    __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    __m256 u0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
    __m256 u1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
    __m256 u2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
    __m256 u3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
    __m256 u4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0));
    __m256 u5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
    __m256 u6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0));
    __m256 u7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
    r[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
    r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
    r[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
    r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
    r[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
    r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
    r[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
    r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}

void PACK_B_T_NAME(int64_t n, int64_t k, const float *restrict src, int64_t rs, int64_t cs,
                   float *restrict dst)
{
    if (rs != 1 || n != UKR_NR) {
        PACK_B_NAME(n, k, src, rs, cs, dst);
        return;
    }
    int64_t k8 = k - k % 8;
    for (int64_t p = 0; p < k8; p += 8) {
        for (int j0 = 0; j0 < UKR_NR; j0 += 8) {
            __m256 r[8];
            for (int j = 0; j < 8; ++j)
                r[j] = _mm256_loadu_ps(src + (j0 + j) * cs + p);
            cn_transpose8_ps(r);
            for (int q = 0; q < 8; ++q)
                _mm256_storeu_ps(dst + (p + q) * UKR_NR + j0, r[q]);
        }
    }
    for (int64_t p = k8; p < k; ++p)
        for (int j = 0; j < UKR_NR; ++j)
            dst[p * UKR_NR + j] = src[p + j * cs];
}
