/* The float32 gate math of the recurrent layers for one vector instruction set,
 * included once per set by csrc/rnn_gates.h (after the scalar cn_expf / cn_tanhf /
 * cn_sigmoidf of cn_expf.h, which handle the ragged ends) with these macros:
 *
 *   CN_SFX        name suffix (avx2, avx512)          CN_VW   lanes per vector
 *   CN_ATTR       the function attribute (target)     CN_V    the vector type
 *   V_LD V_ST V_SET1 V_ADD V_SUB V_MUL V_FMADD V_FNMADD V_MIN V_MAX V_RCP
 *   V_XOR V_AND V_ANDNOT V_OR     bit operations on float vectors
 *   V_SELECT_LT(a, c, x, y)       a < c ? x : y, per lane
 *   V_POW2N(t)                    2^n from t = n + 1.5 * 2^23 (bits of the exponent)
 *
 * The same Cephes exp and tanh polynomials as the scalar code, the clamps as min/max
 * (whose NaN operand comes second, so NaN passes through), and the divisions as a
 * reciprocal estimate refined by one Newton step (within an ulp or two of a division).
 * The fused rows run in two passes over a row: the gates (independent chains), then
 * the cell state's tanh, so that the out-of-order core overlaps many elements instead
 * of waiting on one long chain. No include guard: included once per instruction set. */

#define CN_CAT_(a, b) a##_##b
#define CN_CAT(a, b) CN_CAT_(a, b)
#define CN_NAME(name) CN_CAT(name, CN_SFX)
#define CN_PS(v) V_SET1(v)

CN_ATTR static inline CN_V CN_NAME(cn_vexp)(CN_V x) {
    CN_V t, n, r, z, p;
    x = V_MIN(CN_PS(88.0f), x);
    x = V_MAX(CN_PS(-87.0f), x);
    t = V_FMADD(x, CN_PS(1.44269504088896341f), CN_PS(12582912.0f));
    n = V_SUB(t, CN_PS(12582912.0f));
    r = V_FNMADD(n, CN_PS(0.693359375f), x);
    r = V_FMADD(n, CN_PS(2.12194440e-4f), r);
    z = V_MUL(r, r);
    p = V_FMADD(CN_PS(1.9875691500e-4f), r, CN_PS(1.3981999507e-3f));
    p = V_FMADD(p, r, CN_PS(8.3334519073e-3f));
    p = V_FMADD(p, r, CN_PS(4.1665795894e-2f));
    p = V_FMADD(p, r, CN_PS(1.6666665459e-1f));
    p = V_FMADD(p, r, CN_PS(5.0000001201e-1f));
    p = V_ADD(V_FMADD(p, z, r), CN_PS(1.0f));
    return V_MUL(p, V_POW2N(t));
}

/* 1 / d for d >= 1 (or NaN): estimate, then r + r (1 - d r). */
CN_ATTR static inline CN_V CN_NAME(cn_vrecip)(CN_V d) {
    CN_V r = V_RCP(d);
    return V_FMADD(r, V_FNMADD(d, r, CN_PS(1.0f)), r);
}

CN_ATTR static inline CN_V CN_NAME(cn_vsigmoid)(CN_V x) {
    CN_V e = CN_NAME(cn_vexp)(V_XOR(x, CN_PS(-0.0f)));
    return CN_NAME(cn_vrecip)(V_ADD(e, CN_PS(1.0f)));
}

CN_ATTR static inline CN_V CN_NAME(cn_vtanh)(CN_V x) {
    CN_V sign = V_AND(x, CN_PS(-0.0f));
    CN_V ax = V_ANDNOT(CN_PS(-0.0f), x);
    CN_V z = V_MUL(x, x), s, b;
    s = V_FMADD(CN_PS(-5.70498872745e-3f), z, CN_PS(2.06390887954e-2f));
    s = V_FMADD(s, z, CN_PS(-5.37397155531e-2f));
    s = V_FMADD(s, z, CN_PS(1.33314422036e-1f));
    s = V_FMADD(s, z, CN_PS(-3.33332819422e-1f));
    s = V_FMADD(V_MUL(s, z), ax, ax);
    b = CN_NAME(cn_vrecip)(V_ADD(CN_NAME(cn_vexp)(V_ADD(ax, ax)), CN_PS(1.0f)));
    b = V_FNMADD(CN_PS(2.0f), b, CN_PS(1.0f));
    return V_OR(V_SELECT_LT(ax, CN_PS(0.625f), s, b), sign);
}

CN_ATTR static void CN_NAME(cn_tanhf_loop)(float *x, Py_ssize_t n) {
    Py_ssize_t j = 0;
    for (; j + CN_VW <= n; j += CN_VW) V_ST(x + j, CN_NAME(cn_vtanh)(V_LD(x + j)));
    for (; j < n; j++) x[j] = cn_tanhf(x[j]);
}

CN_ATTR static void CN_NAME(cn_sigmoidf_loop)(float *x, Py_ssize_t n) {
    Py_ssize_t j = 0;
    for (; j + CN_VW <= n; j += CN_VW) V_ST(x + j, CN_NAME(cn_vsigmoid)(V_LD(x + j)));
    for (; j < n; j++) x[j] = cn_sigmoidf(x[j]);
}

/* One unit's LSTM row (as CN_FUSED_ROWS in recurrent.pyx): the first pass leaves the
   cell state in c, the second its tanh in ac and h; the ragged end takes the scalar
   functions. */
CN_ATTR static void CN_NAME(cn_lstm_fwd_row)(Py_ssize_t n, float *CN_RESTRICT gi,
        float *CN_RESTRICT gf, float *CN_RESTRICT gc, float *CN_RESTRICT go,
        const float *CN_RESTRICT pi, const float *CN_RESTRICT pf,
        const float *CN_RESTRICT pc, const float *CN_RESTRICT po, float bi,
        float bf, float bc, float bo, const float *CN_RESTRICT cp,
        float *CN_RESTRICT c, float *CN_RESTRICT ac, float *CN_RESTRICT h) {
    Py_ssize_t nv = n - n % CN_VW, k;
    CN_V vbi = CN_PS(bi), vbf = CN_PS(bf), vbc = CN_PS(bc), vbo = CN_PS(bo);
    for (k = 0; k < nv; k += CN_VW) {
        CN_V i = CN_NAME(cn_vsigmoid)(V_ADD(V_ADD(V_LD(gi + k), V_LD(pi + k)), vbi));
        CN_V f = CN_NAME(cn_vsigmoid)(V_ADD(V_ADD(V_LD(gf + k), V_LD(pf + k)), vbf));
        CN_V g = CN_NAME(cn_vtanh)(V_ADD(V_ADD(V_LD(gc + k), V_LD(pc + k)), vbc));
        CN_V o = CN_NAME(cn_vsigmoid)(V_ADD(V_ADD(V_LD(go + k), V_LD(po + k)), vbo));
        V_ST(gi + k, i); V_ST(gf + k, f); V_ST(gc + k, g); V_ST(go + k, o);
        V_ST(c + k, V_FMADD(f, V_LD(cp + k), V_MUL(i, g)));
    }
    for (k = 0; k < nv; k += CN_VW) {
        CN_V a = CN_NAME(cn_vtanh)(V_LD(c + k));
        V_ST(ac + k, a);
        V_ST(h + k, V_MUL(V_LD(go + k), a));
    }
    for (k = nv; k < n; k++) {
        float i = cn_sigmoidf(gi[k] + pi[k] + bi);
        float f = cn_sigmoidf(gf[k] + pf[k] + bf);
        float g = cn_tanhf(gc[k] + pc[k] + bc);
        float o = cn_sigmoidf(go[k] + po[k] + bo);
        float cc = f * cp[k] + i * g;
        float a = cn_tanhf(cc);
        gi[k] = i; gf[k] = f; gc[k] = g; go[k] = o;
        c[k] = cc; ac[k] = a; h[k] = o * a;
    }
}

/* Inference GRU rows on one sliver (as cn_gru_ring_rows_generic). A full sliver's m
   rows are one block of m W values in every operand but ho: two passes over it, the
   gates (z kept in gz, the candidate's argument in gx) then the candidate and state,
   so that many independent elements overlap. A ragged sliver: a vector of samples at a
   time, the rest one by one. The mask then puts h_{t-1} back. */
CN_ATTR static void CN_NAME(cn_gru_ring_rows)(Py_ssize_t m, Py_ssize_t w, Py_ssize_t W,
        float *CN_RESTRICT gz, const float *CN_RESTRICT gr,
        const float *CN_RESTRICT gh, float *CN_RESTRICT gx,
        const float *CN_RESTRICT hp, float *CN_RESTRICT hn, float *CN_RESTRICT ho,
        Py_ssize_t ldo, const unsigned char *keep) {
    Py_ssize_t wv = w - w % CN_VW, i, k, e;
    if (w == W && W % CN_VW == 0) {
        for (e = 0; e < m * W; e += CN_VW) {
            CN_V r = CN_NAME(cn_vsigmoid)(V_LD(gr + e));
            V_ST(gz + e, CN_NAME(cn_vsigmoid)(V_LD(gz + e)));
            V_ST(gx + e, V_FMADD(r, V_LD(gh + e), V_LD(gx + e)));
        }
        for (i = 0; i < m; i++) {
            for (k = 0; k < W; k += CN_VW) {
                e = i * W + k;
                CN_V hh = CN_NAME(cn_vtanh)(V_LD(gx + e));
                CN_V v = V_FMADD(V_LD(gz + e), V_SUB(V_LD(hp + e), hh), hh);
                V_ST(hn + e, v);
                V_ST(ho + i * ldo + k, v);
            }
        }
    } else {
        for (i = 0; i < m; i++) {
            for (k = 0; k < wv; k += CN_VW) {
                e = i * W + k;
                CN_V z = CN_NAME(cn_vsigmoid)(V_LD(gz + e));
                CN_V r = CN_NAME(cn_vsigmoid)(V_LD(gr + e));
                CN_V hh = CN_NAME(cn_vtanh)(V_FMADD(r, V_LD(gh + e), V_LD(gx + e)));
                CN_V v = V_FMADD(z, V_SUB(V_LD(hp + e), hh), hh);
                V_ST(hn + e, v);
                V_ST(ho + i * ldo + k, v);
            }
            for (k = wv; k < w; k++) {   /* the ragged end: as the full rows */
                e = i * W + k;
                float z = cn_sigmoidf(gz[e]), r = cn_sigmoidf(gr[e]);
                float hh = cn_tanhf(gx[e] + r * gh[e]);
                float v = hh + z * (hp[e] - hh);
                hn[e] = v; ho[i * ldo + k] = v;
            }
        }
    }
    if (keep != NULL)
        for (i = 0; i < m; i++)
            for (k = 0; k < w; k++)
                if (keep[k] == 0) {
                    hn[i * W + k] = hp[i * W + k];
                    ho[i * ldo + k] = hp[i * W + k];
                }
}

/* One unit's GRU training row (as CN_FUSED_ROWS): gates and the candidate's argument,
   then its tanh and the state. */
CN_ATTR static void CN_NAME(cn_gru_fwd_row)(Py_ssize_t n, float *CN_RESTRICT gz,
        float *CN_RESTRICT gr, float *CN_RESTRICT gh, const float *CN_RESTRICT pz,
        const float *CN_RESTRICT pr, const float *CN_RESTRICT ph, float bz,
        float br, float bh, float rbz, float rbr, float rbh,
        const float *CN_RESTRICT hp, float *CN_RESTRICT rh, float *CN_RESTRICT h) {
    Py_ssize_t nv = n - n % CN_VW, k;
    CN_V vbz = CN_PS(bz), vbr = CN_PS(br), vbh = CN_PS(bh);
    CN_V vrbz = CN_PS(rbz), vrbr = CN_PS(rbr), vrbh = CN_PS(rbh);
    for (k = 0; k < nv; k += CN_VW) {
        CN_V z = CN_NAME(cn_vsigmoid)(V_ADD(V_ADD(V_ADD(V_LD(gz + k), vrbz), V_LD(pz + k)), vbz));
        CN_V r = CN_NAME(cn_vsigmoid)(V_ADD(V_ADD(V_ADD(V_LD(gr + k), vrbr), V_LD(pr + k)), vbr));
        CN_V rk = V_ADD(V_LD(gh + k), vrbh);
        V_ST(gz + k, z); V_ST(gr + k, r);
        V_ST(rh + k, rk);
        /* the candidate's argument, its tanh taken in the second pass */
        V_ST(gh + k, V_FMADD(r, rk, V_ADD(V_LD(ph + k), vbh)));
    }
    for (k = 0; k < nv; k += CN_VW) {
        CN_V hh = CN_NAME(cn_vtanh)(V_LD(gh + k));
        CN_V z = V_LD(gz + k);
        V_ST(gh + k, hh);
        V_ST(h + k, V_FMADD(z, V_SUB(V_LD(hp + k), hh), hh));
    }
    for (k = nv; k < n; k++) {
        float z = cn_sigmoidf(gz[k] + rbz + pz[k] + bz);
        float r = cn_sigmoidf(gr[k] + rbr + pr[k] + br);
        float rk = gh[k] + rbh;
        float hh = cn_tanhf(ph[k] + bh + r * rk);
        gz[k] = z; gr[k] = r; gh[k] = hh; rh[k] = rk;
        h[k] = hh + z * (hp[k] - hh);
    }
}

#undef CN_PS
#undef CN_NAME
#undef CN_CAT
#undef CN_CAT_
