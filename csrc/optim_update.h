/* The optimizer update loops of cyneuron._kernels.optim: Adam, RMSprop and Adagrad (a
 * square root and a division per element), one fused pass over a flat parameter buffer.
 *
 * Each optimizer states only its update math: one function macro FN(T, name, SQRT, attr).
 * CN_OPT_COPIES compiles it for float32 / float64 and three instruction sets: AVX-512,
 * AVX2 and the baseline (SSE2, what the extension is built for, where the square root and
 * division run at a third of the AVX2 rate). All share one signature (cn_update_f32/f64):
 *
 *   params, grads, three state arrays s0..s2 (NULL where a variant does not use one), n,
 *   h[CN_OPT_NH] = four hyperparameters of the optimizer, then wd, gs, cv (optim.pyx)
 *
 * so one Cython loop (optim._in_parts) splits any of them between threads, and one table
 * (cn_update_*_for) picks the copy matching the GEMM's instruction set (current_isa, which
 * follows CYNEURON_ISA and set_isa and is only ever a set this CPU has). No copy uses FMA
 * (the AVX-512 one has contraction turned off), so all give the same bits.
 *
 * Moments are flushed to zero below the smallest normal number: a weight whose gradient
 * stays 0 (a dead ReLU unit) has its first moment decay every step into the subnormal
 * range, where each multiply takes a slow microcode path (measured on Zen 5: Adam over a
 * 669k-parameter MLP after 20 steps, 15k subnormal moments, 254 -> 182 us on one thread).
 * What is flushed would move a weight by less than learning_rate * 1e-38 / epsilon. The
 * selects only vectorize when comparisons may be assumed not to trap (GCC's default
 * -ftrapping-math forbids it), which changes no result. */
#ifndef CN_OPTIM_UPDATE_H
#define CN_OPTIM_UPDATE_H
#include <float.h>
#include <math.h>
#include <stdint.h>

#include "cn_isa_copies.h"   /* CN_TARGET_AVX2 */

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("no-trapping-math")
#endif
#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#if defined(__clang__)
#define CN_OPT_AVX512 __attribute__((target("avx512f,avx512vl")))
#pragma clang fp contract(off)
#else
#define CN_OPT_AVX512 __attribute__((target("avx512f,avx512vl"), optimize("fp-contract=off")))
#endif
#else   /* no x86 copies: the three columns of the table are the same baseline code */
#define CN_OPT_AVX512
#endif

enum { CN_ADAM, CN_RMSPROP, CN_ADAGRAD, CN_OPT_KINDS };
enum { CN_OPT_NH = 7 };   /* h: four hyperparameters, then wd, gs, cv */

#define CN_TINY(T) ((T)(sizeof(T) == sizeof(float) ? FLT_MIN : DBL_MIN))
#define CN_FLUSH(x, T) ((x) < CN_TINY(T) && (x) > -CN_TINY(T) ? 0 : (x))

/* The signature every update shares; the state arrays' names are the optimizer's. */
#define CN_OPT_SIGNATURE(T, name, s0, s1, s2)                                          \
    static void name(T *restrict params, const T *restrict grads, T *restrict s0,      \
                     T *restrict s1, T *restrict s2, int64_t n, const T *restrict h)

/* wd: learning_rate * weight_decay, gs: the global-norm scale, cv: the clip limit (inf
   when off); then, for element i, g: the scaled, clipped gradient and w: the weight
   after decay (branch-free, so the loops vectorize) */
#define CN_SETTINGS(T) const T wd = h[4], gs = h[5], cv = h[6];
#define CN_GRAD(T)                                                                     \
        T g = grads[i] * gs;                                                           \
        g = g < cv ? g : cv;                                                           \
        g = g > -cv ? g : -cv;                                                         \
        T w = params[i];                                                               \
        w = w - wd * w;

/* Adam: h = alpha (the step's bias-corrected rate), 1 - beta_1, 1 - beta_2, epsilon;
   v_max NULL: no amsgrad. */
#define CN_ADAM_LOOP(T, SQRT, AMSGRAD)                                                 \
    for (int64_t i = 0; i < n; i++) {                                                  \
        CN_GRAD(T)                                                                     \
        T mi = m[i] + (g - m[i]) * b1;                                                 \
        T vi = v[i] + (g * g - v[i]) * b2;                                             \
        mi = CN_FLUSH(mi, T);                                                          \
        vi = CN_FLUSH(vi, T);                                                          \
        m[i] = mi;                                                                     \
        v[i] = vi;                                                                     \
        if (AMSGRAD) {                                                                 \
            vi = vi > v_max[i] ? vi : v_max[i];                                        \
            v_max[i] = vi;                                                             \
        }                                                                              \
        params[i] = w - alpha * mi / (SQRT(vi) + eps);                                 \
    }
#define CN_ADAM_FN(T, name, SQRT, attr)                                                \
    attr CN_OPT_SIGNATURE(T, name, m, v, v_max) {                                      \
        CN_SETTINGS(T)                                                                 \
        const T alpha = h[0], b1 = h[1], b2 = h[2], eps = h[3];                        \
        if (v_max) { CN_ADAM_LOOP(T, SQRT, 1) }                                        \
        else { CN_ADAM_LOOP(T, SQRT, 0) }                                              \
    }

/* RMSprop: h = lr, rho, momentum, epsilon; average_grad NULL: not centered;
   momentum_buf NULL: no momentum. */
#define CN_RMSPROP_LOOP(T, SQRT, CENTERED, MOMENTUM)                                   \
    for (int64_t i = 0; i < n; i++) {                                                  \
        CN_GRAD(T)                                                                     \
        T vi = r * velocity[i] + (1 - r) * g * g;                                      \
        vi = CN_FLUSH(vi, T);                                                          \
        velocity[i] = vi;                                                              \
        T denom = vi;                                                                  \
        if (CENTERED) {                                                                \
            T ai = r * average_grad[i] + (1 - r) * g;                                  \
            average_grad[i] = ai;                                                      \
            denom = vi - ai * ai;                                                      \
        }                                                                              \
        T inc = lr * g / SQRT(denom + eps);                                            \
        if (MOMENTUM) {                                                                \
            inc = mu * momentum_buf[i] + inc;                                          \
            momentum_buf[i] = inc;                                                     \
        }                                                                              \
        params[i] = w - inc;                                                           \
    }
#define CN_RMSPROP_FN(T, name, SQRT, attr)                                             \
    attr CN_OPT_SIGNATURE(T, name, velocity, momentum_buf, average_grad) {             \
        CN_SETTINGS(T)                                                                 \
        const T lr = h[0], r = h[1], mu = h[2], eps = h[3];                            \
        if (average_grad && momentum_buf) { CN_RMSPROP_LOOP(T, SQRT, 1, 1) }           \
        else if (average_grad) { CN_RMSPROP_LOOP(T, SQRT, 1, 0) }                      \
        else if (momentum_buf) { CN_RMSPROP_LOOP(T, SQRT, 0, 1) }                      \
        else { CN_RMSPROP_LOOP(T, SQRT, 0, 0) }                                        \
    }

/* Adagrad: h = lr, epsilon (unused_1, unused_2 are NULL). */
#define CN_ADAGRAD_FN(T, name, SQRT, attr)                                             \
    attr CN_OPT_SIGNATURE(T, name, accumulator, unused_1, unused_2) {                  \
        CN_SETTINGS(T)                                                                 \
        const T lr = h[0], eps = h[1];                                                 \
        (void)unused_1;                                                                \
        (void)unused_2;                                                                \
        for (int64_t i = 0; i < n; i++) {                                              \
            CN_GRAD(T)                                                                 \
            T acc = accumulator[i] + g * g;                                            \
            accumulator[i] = acc;                                                      \
            params[i] = w - lr * g / SQRT(acc + eps);                                  \
        }                                                                              \
    }

/* The six copies of one update: float32 / float64 x baseline / AVX2 / AVX-512. */
#define CN_OPT_COPIES(FN, name)                                                        \
    FN(float, name##_f32_generic, sqrtf, )                                             \
    FN(double, name##_f64_generic, sqrt, )                                             \
    FN(float, name##_f32_avx2, sqrtf, CN_TARGET_AVX2)                                  \
    FN(double, name##_f64_avx2, sqrt, CN_TARGET_AVX2)                                  \
    FN(float, name##_f32_avx512, sqrtf, CN_OPT_AVX512)                                 \
    FN(double, name##_f64_avx512, sqrt, CN_OPT_AVX512)

CN_OPT_COPIES(CN_ADAM_FN, cn_adam)
CN_OPT_COPIES(CN_RMSPROP_FN, cn_rmsprop)
CN_OPT_COPIES(CN_ADAGRAD_FN, cn_adagrad)

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif

typedef void (*cn_update_f32)(float *, const float *, float *, float *, float *, int64_t,
                              const float *);
typedef void (*cn_update_f64)(double *, const double *, double *, double *, double *,
                              int64_t, const double *);

/* One row per optimizer (the CN_ADAM... order), one column per instruction set. */
#define CN_OPT_ROW(name, t) { name##_##t##_generic, name##_##t##_avx2, name##_##t##_avx512 }
#define CN_OPT_TABLE(t)                                                                \
    static const cn_update_##t cn_updates_##t[CN_OPT_KINDS][3] = {                     \
        CN_OPT_ROW(cn_adam, t), CN_OPT_ROW(cn_rmsprop, t), CN_OPT_ROW(cn_adagrad, t)}; \
    /* isa: 0 generic, 1 AVX2, 2 AVX-512 (gemm.current_isa) */                          \
    static inline cn_update_##t cn_update_##t##_for(int kind, int isa) {               \
        return cn_updates_##t[kind][isa >= 2 ? 2 : isa == 1];                          \
    }
CN_OPT_TABLE(f32)
CN_OPT_TABLE(f64)

#endif
