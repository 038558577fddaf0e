/* float32 vector math for one instruction set, included once per set by csrc/vmath.h
 * under the macro set of csrc/vmath_isa.h (CN_SFX, CN_VW lanes, CN_V, CN_ATTR, V_*).
 * The one vector exp, sigmoid and tanh of the kernels: the activations, softmax, the
 * GEMM epilogue and the recurrent gate rows (csrc/rnn_gates_template.h) call them.
 *
 * Accuracy is that of the scalar libm functions the generic path calls, to a few ulps
 * (tests/test_properties_kernels.py holds every path to 64 ulps plus the condition
 * number's share in the tails): exp covers the whole float range (2^n applied as two
 * factors, so results fall gradually into the subnormals and overflow to inf like
 * libm's); divisions are a reciprocal estimate refined by one Newton step; erfc for the
 * exact GELU is t exp(-z^2 + P(t)), t = 1 / (1 + z / 2), with P of degree 10 fitted
 * here by least squares to erfc on z in [0, 12] (relative error 5e-8 in exact
 * arithmetic). No include guard: included once per instruction set. */

/* e^x = p 2^n for x already clamped: returns p, with n and t = n + 1.5 2^23 (Cephes:
   n = round(x / ln 2), r = x - n ln 2 in two parts, p = e^r by a polynomial). */
CN_ATTR static inline CN_V CN_NAME(cn_vexp_parts)(CN_V c, CN_V *n_out, CN_V *t_out) {
    CN_V t = V_FMADD(c, CN_PS(1.44269504088896341f), CN_PS(12582912.0f));
    CN_V n = V_SUB(t, CN_PS(12582912.0f));
    CN_V r = V_FNMADD(n, CN_PS(0.693359375f), c);
    r = V_FMADD(n, CN_PS(2.12194440e-4f), r);
    CN_V z = V_MUL(r, r);
    CN_V p = V_FMADD(CN_PS(1.9875691500e-4f), r, CN_PS(1.3981999507e-3f));
    p = V_FMADD(p, r, CN_PS(8.3334519073e-3f));
    p = V_FMADD(p, r, CN_PS(4.1665795894e-2f));
    p = V_FMADD(p, r, CN_PS(1.6666665459e-1f));
    p = V_FMADD(p, r, CN_PS(5.0000001201e-1f));
    *n_out = n;
    *t_out = t;
    return V_ADD(V_FMADD(p, z, r), CN_PS(1.0f));
}

/* e^x; 0 below -104 (past the smallest subnormal: e^-104 itself scales to 0, so the
   clamp alone gives 0 there, checked on every float32 input for both copies), inf above
   ~88.72. NaN stays NaN (V_MIN / V_MAX return their second operand when it is NaN). */
CN_ATTR static inline CN_V CN_NAME(cn_vexp)(CN_V x) {
    CN_V n, t, p = CN_NAME(cn_vexp_parts)(V_MAX(CN_PS(-104.0f), V_MIN(CN_PS(89.0f), x)), &n, &t);
    return V_SCALE(p, n, t);     /* p 2^n, gradually into the subnormals, inf past the top */
}

/* e^x for x <= 0 and for 0 <= x <= 88 (or NaN): the same bits as cn_vexp, with the
   cheaper scalings these ranges allow (sigmoid, tanh, ELU, softmax call them). */
CN_ATTR static inline CN_V CN_NAME(cn_vexp_neg)(CN_V x) {
    CN_V n, t, p = CN_NAME(cn_vexp_parts)(V_MAX(CN_PS(-104.0f), x), &n, &t);
    return V_SCALE_NEG(p, n, t);
}

CN_ATTR static inline CN_V CN_NAME(cn_vexp_pos)(CN_V x) {
    CN_V n, t, p = CN_NAME(cn_vexp_parts)(x, &n, &t);
    return V_SCALE_POS(p, n, t);
}

/* 1 / d for d >= 1 (or NaN, inf): estimate, then Newton steps r + r (1 - d r): one after
   AVX-512's 14-bit estimate, two after AVX's 12-bit one (one left 1 / 1 at 1 - 2^-24,
   so a saturated sigmoid times 10^4 was 9999.999). */
CN_ATTR static inline CN_V CN_NAME(cn_vrecip)(CN_V d) {
    CN_V r = V_RCP(d);
    for (int step = 0; step < V_RCP_NEWTON_STEPS; ++step)
        r = V_FMADD(r, V_FNMADD(d, r, CN_PS(1.0f)), r);
    return r;
}

/* 1 / (1 + e^-x) for x >= 0 and e^x / (1 + e^x) below: e never overflows. */
CN_ATTR static inline CN_V CN_NAME(cn_vsigmoid)(CN_V x) {
    CN_V e = CN_NAME(cn_vexp_neg)(V_OR(x, CN_PS(-0.0f)));  /* e^-|x| */
    CN_V s = CN_NAME(cn_vrecip)(V_ADD(e, CN_PS(1.0f)));
    return V_SELECT_LT(x, CN_PS(0.0f), V_MUL(e, s), s);
}

/* An odd polynomial below |x| = 0.625, 1 - 2 / (e^2|x| + 1) above, the sign put back. */
CN_ATTR static inline CN_V CN_NAME(cn_vtanh)(CN_V x) {
    CN_V sign = V_AND(x, CN_PS(-0.0f));
    CN_V ax = V_ANDNOT(CN_PS(-0.0f), x);
    CN_V z = V_MUL(x, x), s, b;
    s = V_FMADD(CN_PS(-5.70498872745e-3f), z, CN_PS(2.06390887954e-2f));
    s = V_FMADD(s, z, CN_PS(-5.37397155531e-2f));
    s = V_FMADD(s, z, CN_PS(1.33314422036e-1f));
    s = V_FMADD(s, z, CN_PS(-3.33332819422e-1f));
    s = V_FMADD(V_MUL(s, z), ax, ax);
    /* e^2|x| kept finite (1 / inf would make the Newton step NaN): tanh is 1 there */
    b = V_MIN(CN_PS(88.0f), V_ADD(ax, ax));
    b = CN_NAME(cn_vrecip)(V_ADD(CN_NAME(cn_vexp_pos)(b), CN_PS(1.0f)));
    b = V_FNMADD(CN_PS(2.0f), b, CN_PS(1.0f));
    return V_OR(V_SELECT_LT(ax, CN_PS(0.625f), s, b), sign);
}

/* e^x - 1 for x <= 0 (ELU's negative side): Taylor to x^8 above -0.5, where e^x - 1
   would cancel, e^x - 1 below. */
CN_ATTR static inline CN_V CN_NAME(cn_vexpm1_neg)(CN_V x) {
    CN_V p = V_FMADD(CN_PS(2.48015873e-5f), x, CN_PS(1.98412698e-4f));
    p = V_FMADD(p, x, CN_PS(1.38888889e-3f));
    p = V_FMADD(p, x, CN_PS(8.33333333e-3f));
    p = V_FMADD(p, x, CN_PS(4.16666667e-2f));
    p = V_FMADD(p, x, CN_PS(1.66666667e-1f));
    p = V_FMADD(p, x, CN_PS(0.5f));
    p = V_FMADD(V_MUL(p, x), x, x);
    CN_V big = V_SUB(CN_NAME(cn_vexp_neg)(x), CN_PS(1.0f));
    return V_SELECT_LT(x, CN_PS(-0.5f), big, p);
}

/* x Phi(x), Phi(x) = erfc(-x / sqrt 2) / 2 (no cancellation for x << 0); 0 below -15,
   where it underflows (and at -inf, its limit). */
CN_ATTR static inline CN_V CN_NAME(cn_vgelu)(CN_V x) {
    CN_V z = V_MUL(V_ANDNOT(CN_PS(-0.0f), x), CN_PS(0.70710678118654752f));
    CN_V t = CN_NAME(cn_vrecip)(V_FMADD(z, CN_PS(0.5f), CN_PS(1.0f)));
    CN_V p = V_FMADD(CN_PS(-1.087146242e-01f), t, CN_PS(7.825635586e-01f));
    p = V_FMADD(p, t, CN_PS(-2.315718064e+00f));
    p = V_FMADD(p, t, CN_PS(3.563482298e+00f));
    p = V_FMADD(p, t, CN_PS(-2.942532912e+00f));
    p = V_FMADD(p, t, CN_PS(1.304387848e+00f));
    p = V_FMADD(p, t, CN_PS(-5.678767502e-01f));
    p = V_FMADD(p, t, CN_PS(1.881671075e-01f));
    p = V_FMADD(p, t, CN_PS(3.606803071e-01f));
    p = V_FMADD(p, t, CN_PS(1.001110558e+00f));
    p = V_FMADD(p, t, CN_PS(-1.265549278e+00f));
    /* e^(-z^2 + p) with z^2 = x^2 / 2 split exactly into hi + lo (an FMA gives the
       rounding error of x^2): a rounded z^2 of ~100 would cost 3e-6 relative */
    CN_V hi = V_MUL(x, x);
    CN_V lo = V_FMSUB(x, x, hi);
    CN_V e = V_MUL(CN_NAME(cn_vexp)(V_MUL(hi, CN_PS(-0.5f))),
                   CN_NAME(cn_vexp)(V_FNMADD(lo, CN_PS(0.5f), p)));
    CN_V half_erfc = V_MUL(V_MUL(t, e), CN_PS(0.5f));
    CN_V phi = V_SELECT_LT(x, CN_PS(0.0f), half_erfc, V_SUB(CN_PS(1.0f), half_erfc));
    CN_V g = V_SELECT_LT(x, CN_PS(-15.0f), CN_PS(0.0f), V_MUL(x, phi));
    return V_SELECT_LT(CN_PS(15.0f), x, x, g);   /* Phi = 1 in float32 (and x = inf) */
}

/* One function on a vector; alpha and scale are ELU's. */
CN_ATTR static inline __attribute__((always_inline)) CN_V CN_NAME(cn_vapply)(int fn, CN_V x, CN_V alpha, CN_V scale) {
    CN_V u;
    switch (fn) {
    case CN_VM_SIGMOID:
        return CN_NAME(cn_vsigmoid)(x);
    case CN_VM_TANH:
        return CN_NAME(cn_vtanh)(x);
    case CN_VM_SWISH:      /* x sigmoid(x); 0 far below (the limit at -inf, not -inf * 0) */
        return V_SELECT_LT(x, CN_PS(-104.0f), CN_PS(0.0f), V_MUL(x, CN_NAME(cn_vsigmoid)(x)));
    case CN_VM_GELU:
        return CN_NAME(cn_vgelu)(x);
    case CN_VM_GELU_TANH:  /* x sigmoid(2u), u = sqrt(2/pi)(x + 0.044715 x^3); relu past 100 */
        u = V_GELU_TANH_ARG(V_MAX(CN_PS(-100.0f), V_MIN(CN_PS(100.0f), x)));
        return V_SELECT_LT(x, CN_PS(-100.0f), CN_PS(0.0f), V_MUL(x, CN_NAME(cn_vsigmoid)(u)));
    case CN_VM_EXP:
        return CN_NAME(cn_vexp)(x);
    case CN_VM_ELU:        /* scale (x if x > 0 else alpha (e^x - 1)) */
        u = V_MUL(alpha, CN_NAME(cn_vexpm1_neg)(V_MIN(CN_PS(0.0f), x)));
        return V_MUL(scale, V_SELECT_LT(CN_PS(0.0f), x, x, u));
    default:
        return x;
    }
}

/* y[0:n] = fn(x[0:n]); y may be x. The ragged end goes through the vector code too
   (copied into a padded vector), so every element gets the same bits wherever it sits.
   One loop per function (the switch outside it, so each loop body is straight code). */
#define CN_VM_LOOP(FN)                                                                  \
    for (; i + CN_VW <= n; i += CN_VW)                                                  \
        V_ST(y + i, CN_NAME(cn_vapply)(FN, V_LD(x + i), va, vs));                       \
    if (i < n) {                                                                        \
        float pad[CN_VW];                                                               \
        int64_t r = n - i, j;                                                           \
        for (j = 0; j < CN_VW; j++)                                                     \
            pad[j] = j < r ? x[i + j] : 0.0f;                                           \
        V_ST(pad, CN_NAME(cn_vapply)(FN, V_LD(pad), va, vs));                           \
        for (j = 0; j < r; j++)                                                         \
            y[i + j] = pad[j];                                                          \
    }                                                                                   \
    return;

CN_ATTR static void CN_NAME(cn_vm_map)(int fn, const float *x, float *y, int64_t n,
                                       float alpha, float scale) {
    CN_V va = CN_PS(alpha), vs = CN_PS(scale);
    int64_t i = 0;
    switch (fn) {
    case CN_VM_SIGMOID: CN_VM_LOOP(CN_VM_SIGMOID)
    case CN_VM_TANH: CN_VM_LOOP(CN_VM_TANH)
    case CN_VM_SWISH: CN_VM_LOOP(CN_VM_SWISH)
    case CN_VM_GELU: CN_VM_LOOP(CN_VM_GELU)
    case CN_VM_GELU_TANH: CN_VM_LOOP(CN_VM_GELU_TANH)
    case CN_VM_EXP: CN_VM_LOOP(CN_VM_EXP)
    case CN_VM_ELU: CN_VM_LOOP(CN_VM_ELU)
    default: return;
    }
}
#undef CN_VM_LOOP

/* y[0:n] = e^(x - m) for the row max m, and their sum (softmax's middle pass). */
CN_ATTR static float CN_NAME(cn_vm_exp_sum)(const float *x, float *y, int64_t n, float m) {
    CN_V vm = CN_PS(m), acc = CN_PS(0.0f);
    float pad[CN_VW], total;
    int64_t i = 0, j;
    for (; i + CN_VW <= n; i += CN_VW) {
        CN_V e = CN_NAME(cn_vexp)(V_SUB(V_LD(x + i), vm));
        V_ST(y + i, e);
        acc = V_ADD(acc, e);
    }
    V_ST(pad, acc);
    total = 0.0f;
    for (j = 0; j < CN_VW; j++)
        total += pad[j];
    if (i < n) {
        int64_t r = n - i;
        for (j = 0; j < CN_VW; j++)
            pad[j] = j < r ? x[i + j] : m;
        V_ST(pad, CN_NAME(cn_vexp)(V_SUB(V_LD(pad), vm)));
        for (j = 0; j < r; j++) {
            y[i + j] = pad[j];
            total += pad[j];
        }
    }
    return total;
}
