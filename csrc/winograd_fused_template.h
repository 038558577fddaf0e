/* One copy of the fused Winograd transforms (see winograd_fused.h), included once per
 * element type and instruction set with CN_T (float or double), CN_INT (the integer of
 * its width), CN_SFX (the copy's suffix), CN_ATTR (its target attribute) and CN_BYTES
 * (the vector width in bytes) defined. Every transform works on one vector of channels
 * (the last vector of a row may be partial: loaded padded with zeros, stored in part). */
#define CN_CAT_(a, b) a##_##b
#define CN_CAT(a, b) CN_CAT_(a, b)
#define CN_FN(name) CN_CAT(name, CN_SFX)
#define CN_VEC CN_FN(cn_wino_vec)
#define CN_UVEC CN_FN(cn_wino_uvec)
#define CN_IVEC CN_FN(cn_wino_ivec)
#define CN_VL ((int)(CN_BYTES / sizeof(CN_T)))
#define CN_INLINE static inline __attribute__((always_inline))

typedef CN_T CN_VEC __attribute__((vector_size(CN_BYTES)));
typedef CN_T CN_UVEC __attribute__((vector_size(CN_BYTES), aligned(sizeof(CN_T))));
typedef CN_INT CN_IVEC __attribute__((vector_size(CN_BYTES)));

/* The n <= CN_VL values at p as a vector (zeros after them), and back. */
CN_ATTR CN_INLINE CN_VEC CN_FN(cn_wino_load)(const CN_T *p, int n) {
    CN_VEC v = {0};
    if (n == CN_VL)
        return *(const CN_UVEC *)p;
    memcpy(&v, p, n * sizeof(CN_T));
    return v;
}

CN_ATTR CN_INLINE void CN_FN(cn_wino_store)(CN_T *p, CN_VEC v, int n) {
    if (n == CN_VL)
        *(CN_UVEC *)p = v;
    else
        memcpy(p, &v, n * sizeof(CN_T));
}

/* The 1-D transforms on vectors: d[k * ds] in, o[k * os] out (winograd.pyx.tp's). */
CN_ATTR CN_INLINE void CN_FN(cn_wino_bt)(const CN_VEC *d, int ds, CN_VEC *o, int os) {
    const CN_T two = 2, four = 4, five = 5;    /* 6 -> 6: B^T d */
    CN_VEC d0 = d[0], d1 = d[ds], d2 = d[2 * ds], d3 = d[3 * ds], d4 = d[4 * ds],
           d5 = d[5 * ds];
    o[0] = four * d0 - five * d2 + d4;
    o[os] = d3 + d4 - four * (d1 + d2);
    o[2 * os] = d4 - d3 + four * (d1 - d2);
    o[3 * os] = d4 - d2 + two * (d3 - d1);
    o[4 * os] = d4 - d2 + two * (d1 - d3);
    o[5 * os] = four * d1 - five * d3 + d5;
}

CN_ATTR CN_INLINE void CN_FN(cn_wino_at)(const CN_VEC *m, int ms, CN_VEC *o, int os) {
    const CN_T two = 2, four = 4, eight = 8;   /* 6 -> 4: A^T m */
    CN_VEC a = m[ms] + m[2 * ms], b = m[3 * ms] + m[4 * ms];
    CN_VEC p = m[ms] - m[2 * ms], q = m[3 * ms] - m[4 * ms];
    o[0] = m[0] + a + b;
    o[os] = p + two * q;
    o[2 * os] = a + four * b;
    o[3 * os] = p + eight * q + m[5 * ms];
}

CN_ATTR CN_INLINE void CN_FN(cn_wino_g)(const CN_VEC *t, int ts, CN_VEC *o, int os) {
    const CN_T quarter = 0.25, sixth = (CN_T)(1.0 / 6), twelfth = (CN_T)(1.0 / 12),
               d24 = (CN_T)(1.0 / 24);       /* 3 -> 6: G g */
    CN_VEC g0 = t[0], g1 = t[ts], g2 = t[2 * ts];
    o[0] = quarter * g0;
    o[os] = -sixth * (g0 + g1 + g2);
    o[2 * os] = -sixth * (g0 - g1 + g2);
    o[3 * os] = d24 * g0 + twelfth * g1 + sixth * g2;
    o[4 * os] = d24 * g0 - twelfth * g1 + sixth * g2;
    o[5 * os] = g2;
}

/* V[xi, t - base, :] = (B^T d B)[xi] for tiles t0 <= t < t1 (slices g->VS values
 * apart; base: the first tile of V's chunk). */
CN_ATTR void CN_FN(cn_wino_input)(const cn_wino_geometry *g, const CN_T *x, CN_T *V,
                                  int64_t t0, int64_t t1, int64_t base) {
    const int64_t H = g->H, W = g->W, C = g->C, per = g->TH * g->TW;
    const CN_VEC zero = {0};
    for (int64_t t = t0; t < t1; t++) {
        const int64_t r = t % per, y0 = (r / g->TW) * 4 - g->PT, x0 = (r % g->TW) * 4 - g->PL;
        const CN_T *sample = x + (t / per) * H * W * C;
        for (int64_t c = 0; c < C; c += CN_VL) {
            const int n = (int)(C - c < CN_VL ? C - c : CN_VL);
            CN_VEC d[36], s[36], o[6];
            for (int i = 0; i < 6; i++)
                for (int j = 0; j < 6; j++) {
                    const int64_t iy = y0 + i, ix = x0 + j;
                    d[i * 6 + j] = iy >= 0 && iy < H && ix >= 0 && ix < W
                        ? CN_FN(cn_wino_load)(sample + (iy * W + ix) * C + c, n) : zero;
                }
            for (int j = 0; j < 6; j++)         /* B^T down each column */
                CN_FN(cn_wino_bt)(&d[j], 6, &s[j], 6);
            for (int a = 0; a < 6; a++) {       /* then along each row */
                CN_FN(cn_wino_bt)(&s[a * 6], 1, o, 1);
                for (int b = 0; b < 6; b++)
                    CN_FN(cn_wino_store)(V + (a * 6 + b) * g->VS + (t - base) * C + c, o[b],
                                         n);
            }
        }
    }
}

/* U[xi, c, :] = (G g G^T)[xi] for input channels c0 <= c < c1, all filters (slices
 * g->US values apart); w is the Keras kernel (3, 3, C, F). */
CN_ATTR void CN_FN(cn_wino_kernel)(const cn_wino_geometry *g, const CN_T *w, CN_T *U,
                                   int64_t c0, int64_t c1) {
    const int64_t C = g->C, F = g->F;
    for (int64_t c = c0; c < c1; c++)
        for (int64_t f = 0; f < F; f += CN_VL) {
            const int n = (int)(F - f < CN_VL ? F - f : CN_VL);
            CN_VEC taps[9], half[18], o[6];
            for (int k = 0; k < 9; k++)
                taps[k] = CN_FN(cn_wino_load)(w + (k * C + c) * F + f, n);
            for (int j = 0; j < 3; j++)         /* G down each column of taps */
                CN_FN(cn_wino_g)(&taps[j], 3, &half[j], 3);
            for (int a = 0; a < 6; a++) {       /* then along each row */
                CN_FN(cn_wino_g)(&half[a * 3], 1, o, 1);
                for (int b = 0; b < 6; b++)
                    CN_FN(cn_wino_store)(U + (a * 6 + b) * g->US + c * F + f, o[b], n);
            }
        }
}

/* Tile t's outputs A^T m A for filters [f, f + m) from its products M[:, r] (slices
 * g->MS values apart), plus the bias, the activation, then pooled PH x PW (the max, or
 * the sum times 1 / (PH * PW), in the window's row-major order; 1x1: stored as they
 * are); outputs past the edge are dropped. Inlined with PH and PW as constants. */
CN_ATTR CN_INLINE void CN_FN(cn_wino_tile_out)(const cn_wino_geometry *g, const CN_T *M,
                                               const CN_T *bias, CN_T *y, int64_t t,
                                               int64_t row, int64_t f, int m,
                                               const int64_t PH, const int64_t PW) {
    const int64_t F = g->F, per = g->TH * g->TW, n = t / per, r = t % per;
    const int64_t oy0 = (r / g->TW) * 4, ox0 = (r % g->TW) * 4;
    const CN_T alpha = (CN_T)g->alpha, scale = (CN_T)1 / (CN_T)(PH * PW);
    const int max_pool = g->max_pool, act = g->act;
    CN_VEC mm[36], s[24], out[16];
    for (int k = 0; k < 36; k++)
        mm[k] = CN_FN(cn_wino_load)(M + k * g->MS + row * F + f, m);
    for (int b = 0; b < 6; b++)         /* A^T down each column */
        CN_FN(cn_wino_at)(&mm[b], 6, &s[b], 6);
    for (int p = 0; p < 4; p++)         /* then along each row */
        CN_FN(cn_wino_at)(&s[p * 6], 1, &out[p * 4], 1);
    if (bias) {
        const CN_VEC bv = CN_FN(cn_wino_load)(bias + f, m);
        for (int k = 0; k < 16; k++)
            out[k] += bv;
    }
    for (int k = 0; k < 16; k++)
        out[k] = CN_FN(cn_thin_act_v)(out[k], act, alpha);     /* conv_thin_template.h */
    for (int64_t py = 0; py < 4 / PH; py++) {
        const int64_t qy = oy0 / PH + py;
        if (qy >= g->QH)
            break;
        for (int64_t px = 0; px < 4 / PW; px++) {
            const int64_t qx = ox0 / PW + px;
            if (qx >= g->QW)
                break;
            const CN_VEC *first = &out[py * PH * 4 + px * PW];
            CN_VEC v = first[0];
            for (int64_t i = 0; i < PH; i++)
                for (int64_t j = (i == 0); j < PW; j++) {
                    const CN_VEC u = first[i * 4 + j];
                    if (max_pool) {
                        const CN_IVEC above = u > v;
                        v = (CN_VEC)(((CN_IVEC)u & above) | ((CN_IVEC)v & ~above));
                    } else {
                        v += u;
                    }
                }
            if (!max_pool && PH * PW > 1)
                v *= scale;
            CN_FN(cn_wino_store)(y + ((n * g->QH + qy) * g->QW + qx) * F + f, v, m);
        }
    }
}

/* Filters f0 <= f < f1 of y for tiles t0 <= t < t1, whose products are M's rows
 * t - t0 (cn_wino_tile_out). */
CN_ATTR void CN_FN(cn_wino_output)(const cn_wino_geometry *g, const CN_T *M,
                                   const CN_T *bias, CN_T *y, int64_t f0, int64_t f1,
                                   int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; t++)
        for (int64_t f = f0; f < f1; f += CN_VL) {
            const int m = (int)(f1 - f < CN_VL ? f1 - f : CN_VL);
            if (g->PH == 2 && g->PW == 2)
                CN_FN(cn_wino_tile_out)(g, M, bias, y, t, t - t0, f, m, 2, 2);
            else if (g->PH == 1 && g->PW == 1)
                CN_FN(cn_wino_tile_out)(g, M, bias, y, t, t - t0, f, m, 1, 1);
            else
                CN_FN(cn_wino_tile_out)(g, M, bias, y, t, t - t0, f, m, g->PH, g->PW);
        }
}

#undef CN_INLINE
#undef CN_VL
#undef CN_VEC
#undef CN_UVEC
#undef CN_IVEC
#undef CN_FN
#undef CN_CAT
#undef CN_CAT_
