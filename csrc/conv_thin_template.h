/* One copy of the thin convolution (see conv_thin.h), included once per element type and
 * instruction set with CN_T (float or double), CN_SFX (the copy's suffix), CN_ATTR (its
 * target attribute) and CN_BYTES (the vector width in bytes) defined. */
#define CN_CAT_(a, b) a##_##b
#define CN_CAT(a, b) CN_CAT_(a, b)
#define CN_VEC CN_CAT(cn_thin_vec, CN_SFX)
#define CN_UVEC CN_CAT(cn_thin_uvec, CN_SFX)
#define CN_IVEC CN_CAT(cn_thin_ivec, CN_SFX)

typedef CN_T CN_VEC __attribute__((vector_size(CN_BYTES)));
typedef CN_T CN_UVEC __attribute__((vector_size(CN_BYTES), aligned(sizeof(CN_T))));
typedef CN_INT CN_IVEC __attribute__((vector_size(CN_BYTES)));

/* The activation on a vector of sums and on one sum (comparisons give all-ones masks) */
CN_ATTR static inline CN_VEC CN_CAT(cn_thin_act_v, CN_SFX)(CN_VEC a, int act, CN_T alpha) {
    CN_VEC zero = {0};
    CN_IVEC positive = a > zero;
    if (act == CN_THIN_RELU)
        return (CN_VEC)((CN_IVEC)a & positive);
    if (act == CN_THIN_LEAKY_RELU)
        return (CN_VEC)(((CN_IVEC)a & positive) | ((CN_IVEC)(a * alpha) & ~positive));
    return a;
}

static inline CN_T CN_CAT(cn_thin_act_s, CN_SFX)(CN_T s, int act, CN_T alpha) {
    if (act == CN_THIN_RELU)
        return s > 0 ? s : (CN_T)0;
    if (act == CN_THIN_LEAKY_RELU)
        return s > 0 ? s : alpha * s;
    return s;
}

/* Channels f0.. of pixel (oy, ox), one sum at a time (fewer than a vector of them). */
CN_ATTR static void CN_CAT(cn_thin_pixel_tail, CN_SFX)(const cn_thin_geometry *g,
                                                       const CN_T *p, const CN_T *w,
                                                       const CN_T *bias, int64_t oy,
                                                       int64_t ox, int64_t f0, CN_T *row) {
    const int64_t C = g->C, F = g->F, WP = g->OW + g->KW - 1, KC = g->KW * C;
    for (int64_t f = f0; f < F; f++) {
        CN_T s = bias ? bias[f] : (CN_T)0;
        for (int64_t i = 0; i < g->KH; i++)
            for (int64_t k = 0; k < KC; k++)
                s += p[((oy + i) * WP + ox) * C + k] * w[(i * KC + k) * F + f];
        row[ox * F + f] = CN_CAT(cn_thin_act_s, CN_SFX)(s, g->act, (CN_T)g->alpha);
    }
}

/* Conv row oy of one sample into row (OW x F), bias and activation applied; p is the
 * zero-padded input, (OH + KH - 1) x (OW + KW - 1) x C. Channels go two vectors at a
 * time (their K x 2VL slice of w stays in L1 across the row), pixels four at a time:
 * eight sums in registers. */
CN_ATTR static inline __attribute__((always_inline)) void CN_CAT(cn_thin_row, CN_SFX)(
        const cn_thin_geometry *g, const CN_T *p, const CN_T *w, const CN_T *bias,
        int64_t oy, CN_T *row, const int64_t KH, const int64_t KW, const int64_t C) {
    enum { VL = CN_BYTES / sizeof(CN_T) };
    typedef CN_VEC V;
    typedef CN_UVEC U;
    const int64_t F = g->F, OW = g->OW, WP = OW + KW - 1, KC = KW * C;
    const int act = g->act;
    const CN_T alpha = (CN_T)g->alpha;
    int64_t ox, f = 0;
#define CN_ACT_V(a) CN_CAT(cn_thin_act_v, CN_SFX)(a, act, alpha)
    for (; f + 2 * VL <= F; f += 2 * VL) {
        V b0 = {0}, b1 = {0};
        if (bias) {
            b0 = *(const U *)(bias + f);
            b1 = *(const U *)(bias + f + VL);
        }
        for (ox = 0; ox + 4 <= OW; ox += 4) {
            V a00 = b0, a01 = b1, a10 = b0, a11 = b1, a20 = b0, a21 = b1, a30 = b0, a31 = b1;
            for (int64_t i = 0; i < KH; i++) {
                const CN_T *src = p + ((oy + i) * WP + ox) * C;
                const CN_T *wk = w + i * KC * F + f;
                for (int64_t k = 0; k < KC; k++) {
                    V w0 = *(const U *)(wk + k * F), w1 = *(const U *)(wk + k * F + VL);
                    CN_T x0 = src[k], x1 = src[k + C], x2 = src[k + 2 * C], x3 = src[k + 3 * C];
                    a00 += x0 * w0; a01 += x0 * w1; a10 += x1 * w0; a11 += x1 * w1;
                    a20 += x2 * w0; a21 += x2 * w1; a30 += x3 * w0; a31 += x3 * w1;
                }
            }
            CN_T *o = row + ox * F + f;
            *(U *)(o) = CN_ACT_V(a00); *(U *)(o + VL) = CN_ACT_V(a01);
            *(U *)(o + F) = CN_ACT_V(a10); *(U *)(o + F + VL) = CN_ACT_V(a11);
            *(U *)(o + 2 * F) = CN_ACT_V(a20); *(U *)(o + 2 * F + VL) = CN_ACT_V(a21);
            *(U *)(o + 3 * F) = CN_ACT_V(a30); *(U *)(o + 3 * F + VL) = CN_ACT_V(a31);
        }
        for (; ox < OW; ox++) {          /* the last OW % 4 pixels */
            V a0 = b0, a1 = b1;
            for (int64_t i = 0; i < KH; i++) {
                const CN_T *src = p + ((oy + i) * WP + ox) * C;
                const CN_T *wk = w + i * KC * F + f;
                for (int64_t k = 0; k < KC; k++) {
                    a0 += src[k] * *(const U *)(wk + k * F);
                    a1 += src[k] * *(const U *)(wk + k * F + VL);
                }
            }
            *(U *)(row + ox * F + f) = CN_ACT_V(a0);
            *(U *)(row + ox * F + f + VL) = CN_ACT_V(a1);
        }
    }
    for (; f + VL <= F; f += VL) {       /* one vector of channels left */
        V b0 = {0};
        if (bias)
            b0 = *(const U *)(bias + f);
        for (ox = 0; ox < OW; ox++) {
            V a0 = b0;
            for (int64_t i = 0; i < KH; i++) {
                const CN_T *src = p + ((oy + i) * WP + ox) * C;
                const CN_T *wk = w + i * KC * F + f;
                for (int64_t k = 0; k < KC; k++)
                    a0 += src[k] * *(const U *)(wk + k * F);
            }
            *(U *)(row + ox * F + f) = CN_ACT_V(a0);
        }
    }
    for (ox = 0; ox < OW && f < F; ox++)  /* the channels past the last vector */
        CN_CAT(cn_thin_pixel_tail, CN_SFX)(g, p, w, bias, oy, ox, f, row);
#undef CN_ACT_V
}

/* Pooled rows [q0, q1) of y (QH, QW, F) of one sample x (H, W, C); scratch:
 * cn_thin_scratch(g) values. */
CN_ATTR static void CN_CAT(cn_thin_conv_pool, CN_SFX)(const cn_thin_geometry *g,
                                                      const CN_T *x, const CN_T *w,
                                                      const CN_T *bias, CN_T *y,
                                                      CN_T *scratch, int64_t q0, int64_t q1) {
    const int64_t C = g->C, F = g->F, stride = g->OW * F;
    const int64_t HP = g->OH + g->KH - 1, WP = g->OW + g->KW - 1;
    enum { VL = CN_BYTES / sizeof(CN_T) };
    CN_T *p = scratch, *band = scratch + HP * WP * C;
    memset(p, 0, (size_t)(HP * WP * C) * sizeof(CN_T));
    const int64_t x0 = g->PL > 0 ? 0 : -g->PL, x1 = g->W < WP - g->PL ? g->W : WP - g->PL;
    for (int64_t iy = 0; iy < g->H; iy++) {
        int64_t py = iy + g->PT;
        if (py >= 0 && py < HP && x1 > x0)
            memcpy(p + (py * WP + x0 + g->PL) * C, x + (iy * g->W + x0) * C,
                   (size_t)((x1 - x0) * C) * sizeof(CN_T));
    }
    const CN_T scale = (CN_T)1 / (CN_T)(g->PH * g->PW);
    for (int64_t qy = q0; qy < q1; qy++) {
        for (int64_t i = 0; i < g->PH; i++) {
            CN_T *dst = band + i * stride;
            const int64_t oy = qy * g->SH + i;
#if CN_BYTES == 64
            /* the common first layers with their kernel shape as constants: the tap
             * loops unrolled and the kernel slice held in registers, which the 32
             * vector registers of AVX-512 allow (LeNet's 3x3 grey image 5.1 -> 3.5 us
             * a sample, Zen 5; with AVX2's 16 it spilled: 5.3 -> 7.6 us) */
            if (g->KH == 3 && g->KW == 3 && g->C == 1)
                CN_CAT(cn_thin_row, CN_SFX)(g, p, w, bias, oy, dst, 3, 3, 1);
            else if (g->KH == 3 && g->KW == 3 && g->C == 3)
                CN_CAT(cn_thin_row, CN_SFX)(g, p, w, bias, oy, dst, 3, 3, 3);
            else if (g->KH == 5 && g->KW == 5 && g->C == 1)
                CN_CAT(cn_thin_row, CN_SFX)(g, p, w, bias, oy, dst, 5, 5, 1);
            else
#endif
                CN_CAT(cn_thin_row, CN_SFX)(g, p, w, bias, oy, dst, g->KH, g->KW, g->C);
        }
        for (int64_t qx = 0; qx < g->QW; qx++) {
            CN_T *out = y + (qy * g->QW + qx) * F;
            const CN_T *first = band + qx * g->SW * F;
            int64_t f = 0;
            for (; f + VL <= F; f += VL) {       /* VL channels at a time in a register */
                CN_VEC m = *(const CN_UVEC *)(first + f);
                for (int64_t i = 0; i < g->PH; i++)
                    for (int64_t j = (i == 0); j < g->PW; j++) {
                        CN_VEC v = *(const CN_UVEC *)(first + i * stride + j * F + f);
                        if (g->max_pool) {
                            CN_IVEC above = v > m;
                            m = (CN_VEC)(((CN_IVEC)v & above) | ((CN_IVEC)m & ~above));
                        } else {
                            m += v;
                        }
                    }
                *(CN_UVEC *)(out + f) = g->max_pool ? m : m * scale;
            }
            for (; f < F; f++) {
                CN_T m = first[f];
                for (int64_t i = 0; i < g->PH; i++)
                    for (int64_t j = (i == 0); j < g->PW; j++) {
                        CN_T v = first[i * stride + j * F + f];
                        m = g->max_pool ? (v > m ? v : m) : m + v;
                    }
                out[f] = g->max_pool ? m : m * scale;
            }
        }
    }
}

#undef CN_VEC
#undef CN_UVEC
#undef CN_IVEC
#undef CN_CAT
#undef CN_CAT_
