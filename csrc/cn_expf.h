/* The float32 exp of the kernels, and the tanh and sigmoid built on it: one definition
 * for the recurrent cells (src/cyneuron/_kernels/recurrent.pyx), attention's softmax
 * (attention.pyx) and the RBM's sigmoid (rbm_math.h).
 *
 * e^x: Cody-Waite reduction x = n ln2 + r (|r| <= ln2 / 2), Cephes's degree-6
 * polynomial for e^r, 2^n built in the exponent bits. The clamps are selects and there
 * are no calls, so loops over it vectorize; NaN stays NaN. Under GCC the selects only
 * become vector blends where comparisons may be assumed not to trap: the includer
 * compiles its loops with `#pragma GCC optimize("no-trapping-math")` (which changes no
 * result). The vector exp, tanh and sigmoid, one copy per instruction set, are
 * vmath_template.h's (cn_vexp, cn_vtanh, cn_vsigmoid: the same polynomials, a wider
 * exp range and a more accurate sigmoid below 0), which the recurrent rows also use. */
#ifndef CN_EXPF_H
#define CN_EXPF_H
#include <math.h>
#include <stdint.h>
#include <string.h>

static inline float cn_expf(float x) {
    float t, n, r, z, p;
    int32_t bits;
    x = x > 88.0f ? 88.0f : x;
    x = x < -87.0f ? -87.0f : x;
    t = x * 1.44269504088896341f + 12582912.0f;   /* 1.5 * 2^23: rounds to an integer */
    n = t - 12582912.0f;
    r = x - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    z = r * r;
    p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * z + r + 1.0f;
    /* bits(t) = bits(1.5 * 2^23) + n; 0x4B3FFF81 = bits(1.5 * 2^23) - 127 (the bias) */
    memcpy(&bits, &t, sizeof bits);
    bits = (bits - 0x4B3FFF81) << 23;
    memcpy(&t, &bits, sizeof t);
    return p * t;
}

/* e^x, exactly 0 below -87 (and for -inf): masked attention scores weigh nothing. */
static inline float cn_expf_flush(float x) {
    float e = cn_expf(x);
    return x < -87.0f ? 0.0f : e;
}

/* tanh: Cephes's odd polynomial for |x| < 0.625, else 1 - 2 / (e^2|x| + 1); both are
   computed and one selected. */
static inline float cn_tanhf(float x) {
    float ax = fabsf(x), z = x * x, s, b;
    s = -5.70498872745e-3f;
    s = s * z + 2.06390887954e-2f;
    s = s * z - 5.37397155531e-2f;
    s = s * z + 1.33314422036e-1f;
    s = s * z - 3.33332819422e-1f;
    s = s * z * ax + ax;
    b = 1.0f - 2.0f / (cn_expf(ax + ax) + 1.0f);
    return copysignf(ax < 0.625f ? s : b, x);
}

static inline float cn_sigmoidf(float x) { return 1.0f / (1.0f + cn_expf(-x)); }

#endif
