"""Optimizer updates: one fused loop over a model's flat parameter buffer (Keras rules).

Every update kernel takes the same three trailing settings, applied in Keras's order:

  grad_scale    the gradient is multiplied by it first (global-norm clipping: the caller
                passes clipnorm / max(norm, clipnorm), from `sum_of_squares`)
  clipvalue     then each gradient element is clipped to [-clipvalue, clipvalue] (0: off)
  weight_decay  decoupled decay: w -= learning_rate * weight_decay * w, before the step

Gradients are read only; the optimizer state (velocity, moments, accumulators) is
updated in place and has one element per parameter. Adam, RMSprop and Adagrad (a square
root and a division per element) run C loops with AVX2 and AVX-512 copies, the one
matching the GEMM's instruction set; no copy uses FMA, so all give the same bits.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport INFINITY, pow, sqrt, sqrtf
from libc.stdint cimport int64_t

cimport numpy as cnp

from cyneuron._kernels._openmp cimport threads_for
from cyneuron._kernels.gemm cimport current_isa

cnp.import_array()


cdef extern from *:
    """
    #include <math.h>
    #include <stdint.h>

    /* The Adam loop in C, compiled three times: for AVX-512, AVX2 and the baseline (SSE2,
       what the extension is built for, where the square root and division of each element
       run at a third of the AVX2 rate). The copy matching the GEMM's instruction set runs
       (gemm.current_isa, which follows CYNEURON_ISA and set_isa, and is only ever a set
       this CPU has). No copy uses FMA (the AVX-512 one has contraction turned off), so
       all give the same bits.

       The moments are flushed to zero once they fall below the smallest normal number:
       a weight whose gradient stays 0 (a dead ReLU unit) has its first moment decay by
       beta_1 every step, into the subnormal range, where each multiply takes a slow
       microcode path (measured on Zen 5: Adam over a 669k-parameter MLP after 20 steps,
       15k subnormal moments, 254 -> 182 us on one thread). What is flushed would move a
       weight by less than learning_rate * 1e-38 / epsilon. The selects only vectorize
       when comparisons may be assumed not to trap (GCC's default -ftrapping-math forbids
       it), which changes no result. */
    #include <float.h>
    #if defined(__GNUC__) && !defined(__clang__)
    #pragma GCC push_options
    #pragma GCC optimize("no-trapping-math")
    #endif
    #if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
    #define CN_AVX2 __attribute__((target("avx2")))
    #if defined(__clang__)
    #define CN_AVX512 __attribute__((target("avx512f,avx512vl")))
    #pragma clang fp contract(off)
    #else
    #define CN_AVX512 __attribute__((target("avx512f,avx512vl"), optimize("fp-contract=off")))
    #endif
    #endif
    #define CN_TINY(T) ((T)(sizeof(T) == sizeof(float) ? FLT_MIN : DBL_MIN))
    #define CN_FLUSH(x, TINY) ((x) < (TINY) && (x) > -(TINY) ? 0 : (x))
    #define CN_ADAM_LOOP(T, SQRT, AMSGRAD, TINY)                                       \
        for (int64_t i = 0; i < n; i++) {                                             \
            T g = grads[i] * gs;                                                      \
            g = g < cv ? g : cv;                                                      \
            g = g > -cv ? g : -cv;                                                    \
            T w = params[i];                                                          \
            w = w - wd * w;                                                           \
            T mi = m[i] + (g - m[i]) * b1;                                            \
            T vi = v[i] + (g * g - v[i]) * b2;                                        \
            mi = CN_FLUSH(mi, TINY);                                                  \
            vi = CN_FLUSH(vi, TINY);                                                  \
            m[i] = mi;                                                                \
            v[i] = vi;                                                                \
            if (AMSGRAD) {                                                            \
                vi = vi > v_max[i] ? vi : v_max[i];                                   \
                v_max[i] = vi;                                                        \
            }                                                                         \
            params[i] = w - alpha * mi / (SQRT(vi) + eps);                            \
        }

    #define CN_ADAM_FN(T, name, SQRT, attr)                                            \
    attr static void name(T *restrict params, const T *restrict grads, T *restrict m,  \
                          T *restrict v, T *restrict v_max, int64_t n, T alpha, T b1,  \
                          T b2, T eps, T wd, T gs, T cv) {                             \
        if (v_max) { CN_ADAM_LOOP(T, SQRT, 1, CN_TINY(T)) }                            \
        else { CN_ADAM_LOOP(T, SQRT, 0, CN_TINY(T)) }                                  \
    }

    CN_ADAM_FN(float, cn_adam_f32_generic, sqrtf, )
    CN_ADAM_FN(double, cn_adam_f64_generic, sqrt, )
    #if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
    CN_ADAM_FN(float, cn_adam_f32_avx2, sqrtf, CN_AVX2)
    CN_ADAM_FN(double, cn_adam_f64_avx2, sqrt, CN_AVX2)
    CN_ADAM_FN(float, cn_adam_f32_avx512, sqrtf, CN_AVX512)
    CN_ADAM_FN(double, cn_adam_f64_avx512, sqrt, CN_AVX512)
    #else
    #define cn_adam_f32_avx2 cn_adam_f32_generic
    #define cn_adam_f64_avx2 cn_adam_f64_generic
    #define cn_adam_f32_avx512 cn_adam_f32_generic
    #define cn_adam_f64_avx512 cn_adam_f64_generic
    #endif

    /* isa: 0 generic, 1 AVX2, 2 AVX-512 (gemm.current_isa). */
    #define CN_PICK_ISA(name, isa) \
        ((isa) >= 2 ? name##_avx512 : (isa) == 1 ? name##_avx2 : name##_generic)

    static void cn_adam_f32(int isa, float *params, const float *grads, float *m, float *v,
                            float *v_max, int64_t n, float alpha, float b1, float b2,
                            float eps, float wd, float gs, float cv) {
        CN_PICK_ISA(cn_adam_f32, isa)(params, grads, m, v, v_max, n,
                                      alpha, b1, b2, eps, wd, gs, cv);
    }

    static void cn_adam_f64(int isa, double *params, const double *grads, double *m,
                            double *v, double *v_max, int64_t n, double alpha, double b1,
                            double b2, double eps, double wd, double gs, double cv) {
        CN_PICK_ISA(cn_adam_f64, isa)(params, grads, m, v, v_max, n,
                                      alpha, b1, b2, eps, wd, gs, cv);
    }

    /* RMSprop and Adagrad likewise (each element has a square root and a division). */
    #define CN_GRAD(T)                                                                 \
            T g = grads[i] * gs;                                                      \
            g = g < cv ? g : cv;                                                      \
            g = g > -cv ? g : -cv;                                                    \
            T w = params[i];                                                          \
            w = w - wd * w;

    #define CN_RMSPROP_LOOP(T, SQRT, CENTERED, MOMENTUM)                               \
        for (int64_t i = 0; i < n; i++) {                                             \
            CN_GRAD(T)                                                                \
            T vi = r * velocity[i] + (1 - r) * g * g;                                 \
            vi = CN_FLUSH(vi, CN_TINY(T));                                            \
            velocity[i] = vi;                                                         \
            T denom = vi;                                                             \
            if (CENTERED) {                                                           \
                T ai = r * average_grad[i] + (1 - r) * g;                             \
                average_grad[i] = ai;                                                 \
                denom = vi - ai * ai;                                                 \
            }                                                                         \
            T inc = lr * g / SQRT(denom + eps);                                       \
            if (MOMENTUM) {                                                           \
                inc = mu * momentum_buf[i] + inc;                                     \
                momentum_buf[i] = inc;                                                \
            }                                                                         \
            params[i] = w - inc;                                                      \
        }

    #define CN_RMSPROP_FN(T, name, SQRT, attr)                                         \
    attr static void name(T *restrict params, const T *restrict grads,                \
                          T *restrict velocity, T *restrict momentum_buf,             \
                          T *restrict average_grad, int64_t n, T lr, T r, T mu, T eps, \
                          T wd, T gs, T cv) {                                          \
        if (average_grad && momentum_buf) { CN_RMSPROP_LOOP(T, SQRT, 1, 1) }           \
        else if (average_grad) { CN_RMSPROP_LOOP(T, SQRT, 1, 0) }                      \
        else if (momentum_buf) { CN_RMSPROP_LOOP(T, SQRT, 0, 1) }                      \
        else { CN_RMSPROP_LOOP(T, SQRT, 0, 0) }                                        \
    }

    #define CN_ADAGRAD_FN(T, name, SQRT, attr)                                         \
    attr static void name(T *restrict params, const T *restrict grads,                \
                          T *restrict accumulator, int64_t n, T lr, T eps, T wd, T gs, \
                          T cv) {                                                      \
        for (int64_t i = 0; i < n; i++) {                                             \
            CN_GRAD(T)                                                                \
            T acc = accumulator[i] + g * g;                                           \
            accumulator[i] = acc;                                                     \
            params[i] = w - lr * g / SQRT(acc + eps);                                 \
        }                                                                             \
    }

    CN_RMSPROP_FN(float, cn_rmsprop_f32_generic, sqrtf, )
    CN_RMSPROP_FN(double, cn_rmsprop_f64_generic, sqrt, )
    CN_ADAGRAD_FN(float, cn_adagrad_f32_generic, sqrtf, )
    CN_ADAGRAD_FN(double, cn_adagrad_f64_generic, sqrt, )
    #if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
    CN_RMSPROP_FN(float, cn_rmsprop_f32_avx2, sqrtf, CN_AVX2)
    CN_RMSPROP_FN(double, cn_rmsprop_f64_avx2, sqrt, CN_AVX2)
    CN_ADAGRAD_FN(float, cn_adagrad_f32_avx2, sqrtf, CN_AVX2)
    CN_ADAGRAD_FN(double, cn_adagrad_f64_avx2, sqrt, CN_AVX2)
    CN_RMSPROP_FN(float, cn_rmsprop_f32_avx512, sqrtf, CN_AVX512)
    CN_RMSPROP_FN(double, cn_rmsprop_f64_avx512, sqrt, CN_AVX512)
    CN_ADAGRAD_FN(float, cn_adagrad_f32_avx512, sqrtf, CN_AVX512)
    CN_ADAGRAD_FN(double, cn_adagrad_f64_avx512, sqrt, CN_AVX512)
    #else
    #define cn_rmsprop_f32_avx2 cn_rmsprop_f32_generic
    #define cn_rmsprop_f64_avx2 cn_rmsprop_f64_generic
    #define cn_adagrad_f32_avx2 cn_adagrad_f32_generic
    #define cn_adagrad_f64_avx2 cn_adagrad_f64_generic
    #define cn_rmsprop_f32_avx512 cn_rmsprop_f32_generic
    #define cn_rmsprop_f64_avx512 cn_rmsprop_f64_generic
    #define cn_adagrad_f32_avx512 cn_adagrad_f32_generic
    #define cn_adagrad_f64_avx512 cn_adagrad_f64_generic
    #endif

    #define CN_RMSPROP_DISPATCH(T, name)                                               \
    static void name(int isa, T *params, const T *grads, T *velocity, T *momentum_buf, \
                     T *average_grad, int64_t n, T lr, T r, T mu, T eps, T wd, T gs,   \
                     T cv) {                                                           \
        CN_PICK_ISA(name, isa)(params, grads, velocity, momentum_buf,                  \
                               average_grad, n, lr, r, mu, eps, wd, gs, cv);           \
    }
    #define CN_ADAGRAD_DISPATCH(T, name)                                               \
    static void name(int isa, T *params, const T *grads, T *accumulator, int64_t n,   \
                     T lr, T eps, T wd, T gs, T cv) {                                  \
        CN_PICK_ISA(name, isa)(params, grads, accumulator, n, lr, eps, wd, gs, cv);    \
    }
    CN_RMSPROP_DISPATCH(float, cn_rmsprop_f32)
    CN_RMSPROP_DISPATCH(double, cn_rmsprop_f64)
    CN_ADAGRAD_DISPATCH(float, cn_adagrad_f32)
    CN_ADAGRAD_DISPATCH(double, cn_adagrad_f64)
    #if defined(__GNUC__) && !defined(__clang__)
    #pragma GCC pop_options
    #endif
    """
    void cn_adam_f32(int isa, float *params, const float *grads, float *m, float *v,
                     float *v_max, int64_t n, float alpha, float b1, float b2, float eps,
                     float wd, float gs, float cv) noexcept nogil
    void cn_adam_f64(int isa, double *params, const double *grads, double *m, double *v,
                     double *v_max, int64_t n, double alpha, double b1, double b2,
                     double eps, double wd, double gs, double cv) noexcept nogil
    void cn_rmsprop_f32(int isa, float *params, const float *grads, float *velocity,
                        float *momentum_buf, float *average_grad, int64_t n, float lr,
                        float r, float mu, float eps, float wd, float gs,
                        float cv) noexcept nogil
    void cn_rmsprop_f64(int isa, double *params, const double *grads, double *velocity,
                        double *momentum_buf, double *average_grad, int64_t n, double lr,
                        double r, double mu, double eps, double wd, double gs,
                        double cv) noexcept nogil
    void cn_adagrad_f32(int isa, float *params, const float *grads, float *accumulator,
                        int64_t n, float lr, float eps, float wd, float gs,
                        float cv) noexcept nogil
    void cn_adagrad_f64(int isa, double *params, const double *grads, double *accumulator,
                        int64_t n, double lr, double eps, double wd, double gs,
                        double cv) noexcept nogil


cdef enum:
    # Scalar-operation cost of one element of an update with a square root and a
    # division (Adam, RMSprop, Adagrad): each is worth ~10 plain operations.
    COST_SQRT_DIV = 16


cdef inline floating fsqrt(floating x) noexcept nogil:
    if floating is float:
        return sqrtf(x)
    else:
        return sqrt(x)


cdef inline floating _grad(floating g, floating grad_scale, floating limit) noexcept nogil:
    """The gradient after global-norm scaling and element-wise clipping to [-limit, limit]
    (limit = inf when clipvalue is off). Branch-free, so the loops vectorize."""
    g = g * grad_scale
    g = g if g < limit else limit
    return g if g > -limit else -limit


cdef inline double _clip_limit(double clipvalue) noexcept nogil:
    return clipvalue if clipvalue > 0 else INFINITY


cdef _check_size(Py_ssize_t n, object buf, str name):
    if buf is None or buf.shape[0] != n:
        size = "None" if buf is None else f"{buf.shape[0]} elements"
        raise ValueError(f"{name} must have {n} elements (one per parameter); got {size}")


cdef int _flat(object buf, str name, int type_num, Py_ssize_t n, void **data) except -1:
    """data = the pointer of `buf`, checked in C to be a contiguous, writeable 1-D ndarray
    of n elements of type_num: a few comparisons, where a typed memoryview argument costs
    about a microsecond each (the hot kernels below are called once per training step)."""
    cdef cnp.ndarray a
    if not isinstance(buf, cnp.ndarray) or cnp.PyArray_NDIM(<cnp.ndarray>buf) != 1 \
            or cnp.PyArray_DIM(<cnp.ndarray>buf, 0) != n:
        got = "None" if buf is None else f"shape {getattr(buf, 'shape', type(buf).__name__)}"
        raise ValueError(f"{name} must have {n} elements (one per parameter); got {got}")
    a = <cnp.ndarray>buf
    if cnp.PyArray_TYPE(a) != type_num:
        raise ValueError(f"{name} must have the parameters' dtype; got {a.dtype}")
    if not cnp.PyArray_IS_C_CONTIGUOUS(a) or not cnp.PyArray_ISWRITEABLE(a):
        raise ValueError(f"{name} must be a contiguous, writeable array")
    data[0] = cnp.PyArray_DATA(a)
    return 0


cdef int _float_type(object params) except -1:
    """NPY_FLOAT or NPY_DOUBLE: the dtype of the flat parameter buffer."""
    cdef int t = cnp.PyArray_TYPE(<cnp.ndarray>params) if isinstance(params, cnp.ndarray) else -1
    if t != cnp.NPY_FLOAT and t != cnp.NPY_DOUBLE:
        raise ValueError(f"params must be a float32 or float64 ndarray; got {type(params).__name__}"
                         f"{'' if t == -1 else ' of ' + str(params.dtype)}")
    return t


cdef _check_settings(double learning_rate, double weight_decay, double grad_scale, double clipvalue):
    if not learning_rate >= 0:
        raise ValueError(f"learning_rate must be >= 0, got {learning_rate}")
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    if not grad_scale >= 0:
        raise ValueError(f"grad_scale must be >= 0, got {grad_scale}")
    if not clipvalue >= 0:
        raise ValueError(f"clipvalue must be >= 0 (0: no clipping), got {clipvalue}")


def sum_of_squares(const floating[::1] x):
    """sum(x^2), accumulated in double: the squared global norm used by clipnorm."""
    cdef Py_ssize_t i, n = x.shape[0]
    cdef double total = 0
    cdef int nt = threads_for(n)
    for i in prange(n, nogil=True, num_threads=nt, schedule="static"):
        total += <double>x[i] * x[i]
    return total


def add_l2_gradient(weights, grads, double factor):
    """grads += factor * weights (an L2 penalty's gradient, scikit-learn's alpha) and
    return sum(weights^2) for the penalty's value, in one pass."""
    cdef int t = _float_type(weights)
    cdef Py_ssize_t n = cnp.PyArray_DIM(<cnp.ndarray>weights, 0)
    cdef void *w
    cdef void *g
    _flat(weights, "weights", t, n, &w)
    _flat(grads, "grads", t, n, &g)
    if t == cnp.NPY_FLOAT:
        return _add_l2(<const float *>w, <float *>g, n, <float>factor)
    return _add_l2(<const double *>w, <double *>g, n, factor)


cdef double _add_l2(const floating *weights, floating *grads, Py_ssize_t n,
                    floating f) noexcept nogil:
    cdef Py_ssize_t i, b
    cdef double s0 = 0, s1 = 0, s2 = 0, s3 = 0
    cdef floating w0, w1, w2, w3
    cdef int nt = threads_for(n * 2)
    # four running sums: one would be a chain of dependent adds (4 cycles each)
    for b in prange(n // 4, num_threads=nt, schedule="static"):
        i = 4 * b
        w0 = weights[i]
        w1 = weights[i + 1]
        w2 = weights[i + 2]
        w3 = weights[i + 3]
        grads[i] = grads[i] + f * w0
        grads[i + 1] = grads[i + 1] + f * w1
        grads[i + 2] = grads[i + 2] + f * w2
        grads[i + 3] = grads[i + 3] + f * w3
        s0 += <double>w0 * w0
        s1 += <double>w1 * w1
        s2 += <double>w2 * w2
        s3 += <double>w3 * w3
    for i in range(n - n % 4, n):
        grads[i] = grads[i] + f * weights[i]
        s0 += <double>weights[i] * weights[i]
    return (s0 + s1) + (s2 + s3)


def sgd_update(floating[::1] params, const floating[::1] grads, floating[::1] velocity,
               double learning_rate, double momentum, bint nesterov,
               double weight_decay=0, double grad_scale=1, double clipvalue=0):
    """Keras SGD: v = momentum v - lr g; w += v (Nesterov: w += momentum v - lr g).

    With momentum == 0 `velocity` is not touched (it may be empty).
    """
    cdef Py_ssize_t i, n = params.shape[0]
    _check_size(n, grads, "grads")
    if momentum != 0:
        _check_size(n, velocity, "velocity")
    _check_settings(learning_rate, weight_decay, grad_scale, clipvalue)
    cdef floating lr = learning_rate, mu = momentum, wd = learning_rate * weight_decay
    cdef floating gs = grad_scale, cv = _clip_limit(clipvalue), g, v, w
    cdef int nt = threads_for(n)
    if momentum == 0:
        for i in prange(n, nogil=True, num_threads=nt, schedule="static"):
            g = _grad(grads[i], gs, cv)
            w = params[i]
            params[i] = w - wd * w - lr * g
        return
    for i in prange(n, nogil=True, num_threads=nt, schedule="static"):
        g = _grad(grads[i], gs, cv)
        w = params[i]
        w = w - wd * w
        v = mu * velocity[i] - lr * g
        velocity[i] = v
        if nesterov:
            params[i] = w + mu * v - lr * g
        else:
            params[i] = w + v


def simd_path():
    """Instruction set of the Adam / RMSprop / Adagrad loops now (the GEMM's)."""
    return ("generic", "avx2", "avx512")[current_isa()]


def adam_update(params, grads, m, v, v_max,
                double learning_rate, double beta_1, double beta_2, double epsilon,
                long step, bint amsgrad,
                double weight_decay=0, double grad_scale=1, double clipvalue=0):
    """Keras Adam (and AdamW, through weight_decay), `step` counting from 1:

        m += (1 - beta_1) (g - m);  v += (1 - beta_2) (g^2 - v)
        w -= lr sqrt(1 - beta_2^step) / (1 - beta_1^step) * m / (sqrt(v) + epsilon)

    With amsgrad, v_max = max(v_max, v) replaces v in the step (else v_max may be empty).
    Every array is a contiguous 1-D ndarray of the parameters' dtype.
    """
    cdef int t = _float_type(params)
    cdef Py_ssize_t n = cnp.PyArray_DIM(<cnp.ndarray>params, 0)
    cdef void *p
    cdef void *g
    cdef void *mp
    cdef void *vp
    cdef void *vm = NULL
    _flat(params, "params", t, n, &p)
    _flat(grads, "grads", t, n, &g)
    _flat(m, "m", t, n, &mp)
    _flat(v, "v", t, n, &vp)
    if amsgrad:
        _flat(v_max, "v_max", t, n, &vm)
    _check_settings(learning_rate, weight_decay, grad_scale, clipvalue)
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    cdef double alpha = learning_rate * sqrt(1 - pow(beta_2, step)) / (1 - pow(beta_1, step))
    cdef double wd = learning_rate * weight_decay, cv = _clip_limit(clipvalue)
    if t == cnp.NPY_FLOAT:
        _adam(<float *>p, <const float *>g, <float *>mp, <float *>vp, <float *>vm, n, alpha,
              1 - beta_1, 1 - beta_2, epsilon, wd, grad_scale, cv)
    else:
        _adam(<double *>p, <const double *>g, <double *>mp, <double *>vp, <double *>vm, n,
              alpha, 1 - beta_1, 1 - beta_2, epsilon, wd, grad_scale, cv)


cdef void _adam(floating *params, const floating *grads, floating *m, floating *v,
                floating *v_max, Py_ssize_t n, floating alpha, floating b1, floating b2,
                floating eps, floating wd, floating gs, floating cv) noexcept nogil:
    """The Adam loop (cn_adam_*), one contiguous part per thread; v_max NULL: no amsgrad."""
    cdef int nt = threads_for(n * COST_SQRT_DIV), t
    cdef int isa = current_isa()
    cdef Py_ssize_t part = (n + nt - 1) // nt, lo, hi
    for t in prange(nt, num_threads=nt, schedule="static"):
        lo = t * part
        hi = min(n, lo + part)
        if hi <= lo:
            continue
        if floating is float:
            cn_adam_f32(isa, params + lo, grads + lo, m + lo, v + lo,
                        v_max + lo if v_max != NULL else NULL, hi - lo,
                        alpha, b1, b2, eps, wd, gs, cv)
        else:
            cn_adam_f64(isa, params + lo, grads + lo, m + lo, v + lo,
                        v_max + lo if v_max != NULL else NULL, hi - lo,
                        alpha, b1, b2, eps, wd, gs, cv)


def rmsprop_update(floating[::1] params, const floating[::1] grads, floating[::1] velocity,
                   floating[::1] momentum_buf, floating[::1] average_grad,
                   double learning_rate, double rho, double momentum, double epsilon,
                   bint centered,
                   double weight_decay=0, double grad_scale=1, double clipvalue=0):
    """Keras RMSprop:

        velocity = rho velocity + (1 - rho) g^2
        centered: average_grad = rho average_grad + (1 - rho) g;  denom = velocity - average_grad^2
        step = lr g / sqrt(denom + epsilon)
        momentum > 0: momentum_buf = momentum momentum_buf + step;  w -= momentum_buf
        else: w -= step

    momentum_buf (used when momentum > 0) and average_grad (when centered) may be empty otherwise.
    """
    cdef Py_ssize_t n = params.shape[0]
    _check_size(n, grads, "grads")
    _check_size(n, velocity, "velocity")
    if momentum != 0:
        _check_size(n, momentum_buf, "momentum_buf")
    if centered:
        _check_size(n, average_grad, "average_grad")
    _check_settings(learning_rate, weight_decay, grad_scale, clipvalue)
    cdef floating lr = learning_rate, r = rho, mu = momentum, eps = epsilon
    cdef floating wd = learning_rate * weight_decay, gs = grad_scale, cv = _clip_limit(clipvalue)
    if n == 0:
        return
    cdef floating *mom = &momentum_buf[0] if momentum != 0 else NULL
    cdef floating *avg = &average_grad[0] if centered else NULL
    cdef int nt = threads_for(n * COST_SQRT_DIV), t
    cdef int isa = current_isa()
    cdef Py_ssize_t part = (n + nt - 1) // nt, lo, hi
    for t in prange(nt, nogil=True, num_threads=nt, schedule="static"):
        lo = t * part
        hi = min(n, lo + part)
        if hi <= lo:
            continue
        if floating is float:
            cn_rmsprop_f32(isa, &params[lo], &grads[lo], &velocity[lo],
                           mom + lo if mom != NULL else NULL, avg + lo if avg != NULL else NULL,
                           hi - lo, lr, r, mu, eps, wd, gs, cv)
        else:
            cn_rmsprop_f64(isa, &params[lo], &grads[lo], &velocity[lo],
                           mom + lo if mom != NULL else NULL, avg + lo if avg != NULL else NULL,
                           hi - lo, lr, r, mu, eps, wd, gs, cv)


def adagrad_update(floating[::1] params, const floating[::1] grads, floating[::1] accumulator,
                   double learning_rate, double epsilon,
                   double weight_decay=0, double grad_scale=1, double clipvalue=0):
    """Keras Adagrad: accumulator += g^2; w -= lr g / sqrt(accumulator + epsilon)."""
    cdef Py_ssize_t n = params.shape[0]
    _check_size(n, grads, "grads")
    _check_size(n, accumulator, "accumulator")
    _check_settings(learning_rate, weight_decay, grad_scale, clipvalue)
    cdef floating lr = learning_rate, eps = epsilon
    cdef floating wd = learning_rate * weight_decay, gs = grad_scale, cv = _clip_limit(clipvalue)
    if n == 0:
        return
    cdef int nt = threads_for(n * COST_SQRT_DIV), t
    cdef int isa = current_isa()
    cdef Py_ssize_t part = (n + nt - 1) // nt, lo, hi
    for t in prange(nt, nogil=True, num_threads=nt, schedule="static"):
        lo = t * part
        hi = min(n, lo + part)
        if hi <= lo:
            continue
        if floating is float:
            cn_adagrad_f32(isa, &params[lo], &grads[lo], &accumulator[lo], hi - lo, lr, eps,
                           wd, gs, cv)
        else:
            cn_adagrad_f64(isa, &params[lo], &grads[lo], &accumulator[lo], hi - lo, lr, eps,
                           wd, gs, cv)
