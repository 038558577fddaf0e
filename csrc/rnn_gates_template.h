/* The float32 gate math of the recurrent layers for one vector instruction set,
 * included once per set by csrc/rnn_gates.h under the macro set of csrc/vmath_isa.h,
 * after csrc/vmath.h (whose cn_vexp, cn_vsigmoid and cn_vtanh of the same set these
 * rows call) and the scalar cn_expf / cn_tanhf / cn_sigmoidf of cn_expf.h (which handle
 * the ragged ends).
 *
 * The fused rows run in two passes over a row: the gates (independent chains), then
 * the cell state's tanh, so that the out-of-order core overlaps many elements instead
 * of waiting on one long chain. No include guard: included once per instruction set. */

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
