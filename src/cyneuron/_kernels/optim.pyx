"""Optimizer updates: one fused loop over a model's flat parameter buffer (Keras rules).

Every update kernel takes the same three trailing settings, applied in Keras's order:

  grad_scale    the gradient is multiplied by it first (global-norm clipping: the caller
                passes clipnorm / max(norm, clipnorm), from `sum_of_squares`)
  clipvalue     then each gradient element is clipped to [-clipvalue, clipvalue] (0: off)
  weight_decay  decoupled decay: w -= learning_rate * weight_decay * w, before the step

Gradients are read only; the optimizer state (velocity, moments, accumulators) is
updated in place and has one element per parameter. Adam, RMSprop and Adagrad (a square
root and a division per element) run C loops with AVX2 and AVX-512 copies, the one
matching the GEMM's instruction set; no copy uses FMA, so all give the same bits. Their
update math is in csrc/optim_update.h; `_in_parts` splits any of them between threads.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport INFINITY, pow, sqrt
from libc.stdint cimport int64_t

cimport numpy as cnp

from cyneuron._kernels._openmp cimport threads_for
from cyneuron._kernels.gemm cimport current_isa

cnp.import_array()


cdef extern from "optim_update.h" nogil:
    # the update loops, one per optimizer, each in float32 / float64 for three
    # instruction sets (csrc/optim_update.h); `kind` picks the optimizer
    enum:
        CN_ADAM
        CN_RMSPROP
        CN_ADAGRAD
        CN_OPT_NH
    ctypedef void (*cn_update_f32)(float *params, const float *grads, float *s0, float *s1,
                                   float *s2, int64_t n, const float *h)
    ctypedef void (*cn_update_f64)(double *params, const double *grads, double *s0,
                                   double *s1, double *s2, int64_t n, const double *h)
    cn_update_f32 cn_update_f32_for(int kind, int isa)
    cn_update_f64 cn_update_f64_for(int kind, int isa)


cdef enum:
    # Scalar-operation cost of one element of an update with a square root and a
    # division (Adam, RMSprop, Adagrad): each is worth ~10 plain operations.
    COST_SQRT_DIV = 16


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
        _in_parts(CN_ADAM, <float *>p, <const float *>g, <float *>mp, <float *>vp,
                  <float *>vm, n, alpha, 1 - beta_1, 1 - beta_2, epsilon, wd, grad_scale, cv)
    else:
        _in_parts(CN_ADAM, <double *>p, <const double *>g, <double *>mp, <double *>vp,
                  <double *>vm, n, alpha, 1 - beta_1, 1 - beta_2, epsilon, wd, grad_scale, cv)


cdef inline floating *_at(floating *p, Py_ssize_t lo) noexcept nogil:
    return p + lo if p != NULL else NULL


cdef void _in_parts(int kind, floating *params, const floating *grads, floating *s0,
                    floating *s1, floating *s2, Py_ssize_t n, double h0, double h1,
                    double h2, double h3, double wd, double gs, double cv) noexcept nogil:
    """Run the update loop `kind` (CN_ADAM, CN_RMSPROP, CN_ADAGRAD) over n elements, one
    contiguous part per thread. s0..s2 are its state arrays (NULL: not used by this
    variant), h0..h3 its hyperparameters, in the order csrc/optim_update.h names them."""
    cdef floating h[CN_OPT_NH]
    h[0], h[1], h[2], h[3] = h0, h1, h2, h3
    h[4], h[5], h[6] = wd, gs, cv
    cdef int isa = current_isa()
    cdef cn_update_f32 f32 = cn_update_f32_for(kind, isa)
    cdef cn_update_f64 f64 = cn_update_f64_for(kind, isa)
    cdef int nt = threads_for(n * COST_SQRT_DIV), t
    cdef Py_ssize_t part = (n + nt - 1) // nt, lo, hi
    if nt == 1:     # no parallel region: its start (~0.5 us) is a bias vector's update
        if floating is float:
            f32(params, grads, s0, s1, s2, n, h)
        else:
            f64(params, grads, s0, s1, s2, n, h)
        return
    for t in prange(nt, num_threads=nt, schedule="static"):
        lo = t * part
        hi = min(n, lo + part)
        if hi <= lo:
            continue
        if floating is float:
            f32(params + lo, grads + lo, _at(s0, lo), _at(s1, lo), _at(s2, lo), hi - lo, h)
        else:
            f64(params + lo, grads + lo, _at(s0, lo), _at(s1, lo), _at(s2, lo), hi - lo, h)


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
    if n == 0:
        return
    _in_parts(CN_RMSPROP, &params[0], &grads[0], &velocity[0],
              &momentum_buf[0] if momentum != 0 else NULL,
              &average_grad[0] if centered else NULL, n,
              learning_rate, rho, momentum, epsilon,
              learning_rate * weight_decay, grad_scale, _clip_limit(clipvalue))


def adagrad_update(floating[::1] params, const floating[::1] grads, floating[::1] accumulator,
                   double learning_rate, double epsilon,
                   double weight_decay=0, double grad_scale=1, double clipvalue=0):
    """Keras Adagrad: accumulator += g^2; w -= lr g / sqrt(accumulator + epsilon)."""
    cdef Py_ssize_t n = params.shape[0]
    _check_size(n, grads, "grads")
    _check_size(n, accumulator, "accumulator")
    _check_settings(learning_rate, weight_decay, grad_scale, clipvalue)
    if n == 0:
        return
    _in_parts(CN_ADAGRAD, &params[0], &grads[0], &accumulator[0], NULL, NULL, n,
              learning_rate, epsilon, 0, 0,
              learning_rate * weight_decay, grad_scale, _clip_limit(clipvalue))
