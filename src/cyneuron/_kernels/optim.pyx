"""Optimizer updates: one fused loop over a model's flat parameter buffer (Keras rules).

Every update kernel takes the same three trailing settings, applied in Keras's order:

  grad_scale    the gradient is multiplied by it first (global-norm clipping: the caller
                passes clipnorm / max(norm, clipnorm), from `sum_of_squares`)
  clipvalue     then each gradient element is clipped to [-clipvalue, clipvalue] (0: off)
  weight_decay  decoupled decay: w -= learning_rate * weight_decay * w, before the step

Gradients are read only; the optimizer state (velocity, moments, accumulators) is
updated in place and has one element per parameter.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport INFINITY, pow, sqrt, sqrtf

from cyneuron._kernels._openmp cimport threads_for

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


def add_l2_gradient(const floating[::1] weights, floating[::1] grads, double factor):
    """grads += factor * weights (an L2 penalty's gradient, scikit-learn's alpha) and
    return sum(weights^2) for the penalty's value, in one pass."""
    cdef Py_ssize_t i, b, n = weights.shape[0]
    _check_size(n, grads, "grads")
    cdef double s0 = 0, s1 = 0, s2 = 0, s3 = 0
    cdef floating f = factor, w0, w1, w2, w3
    cdef int nt = threads_for(n * 2)
    # four running sums: one would be a chain of dependent adds (4 cycles each)
    for b in prange(n // 4, nogil=True, num_threads=nt, schedule="static"):
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


def adam_update(floating[::1] params, const floating[::1] grads, floating[::1] m,
                floating[::1] v, floating[::1] v_max,
                double learning_rate, double beta_1, double beta_2, double epsilon,
                long step, bint amsgrad,
                double weight_decay=0, double grad_scale=1, double clipvalue=0):
    """Keras Adam (and AdamW, through weight_decay), `step` counting from 1:

        m += (1 - beta_1) (g - m);  v += (1 - beta_2) (g^2 - v)
        w -= lr sqrt(1 - beta_2^step) / (1 - beta_1^step) * m / (sqrt(v) + epsilon)

    With amsgrad, v_max = max(v_max, v) replaces v in the step (else v_max may be empty).
    """
    cdef Py_ssize_t i, n = params.shape[0]
    _check_size(n, grads, "grads")
    _check_size(n, m, "m")
    _check_size(n, v, "v")
    if amsgrad:
        _check_size(n, v_max, "v_max")
    _check_settings(learning_rate, weight_decay, grad_scale, clipvalue)
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    cdef floating alpha = learning_rate * sqrt(1 - pow(beta_2, step)) / (1 - pow(beta_1, step))
    cdef floating b1 = 1 - beta_1, b2 = 1 - beta_2, eps = epsilon
    cdef floating wd = learning_rate * weight_decay, gs = grad_scale, cv = _clip_limit(clipvalue)
    cdef floating g, w, mi, vi
    cdef int nt = threads_for(n * COST_SQRT_DIV)
    for i in prange(n, nogil=True, num_threads=nt, schedule="static"):
        g = _grad(grads[i], gs, cv)
        w = params[i]
        w = w - wd * w
        mi = m[i] + (g - m[i]) * b1
        vi = v[i] + (g * g - v[i]) * b2
        m[i] = mi
        v[i] = vi
        if amsgrad:
            vi = vi if vi > v_max[i] else v_max[i]
            v_max[i] = vi
        params[i] = w - alpha * mi / (fsqrt(vi) + eps)


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
    cdef Py_ssize_t i, n = params.shape[0]
    _check_size(n, grads, "grads")
    _check_size(n, velocity, "velocity")
    if momentum != 0:
        _check_size(n, momentum_buf, "momentum_buf")
    if centered:
        _check_size(n, average_grad, "average_grad")
    _check_settings(learning_rate, weight_decay, grad_scale, clipvalue)
    cdef floating lr = learning_rate, r = rho, mu = momentum, eps = epsilon
    cdef floating wd = learning_rate * weight_decay, gs = grad_scale, cv = _clip_limit(clipvalue)
    cdef floating g, w, vi, ai, denom, inc
    cdef bint use_momentum = momentum != 0
    cdef int nt = threads_for(n * COST_SQRT_DIV)
    for i in prange(n, nogil=True, num_threads=nt, schedule="static"):
        g = _grad(grads[i], gs, cv)
        w = params[i]
        w = w - wd * w
        vi = r * velocity[i] + (1 - r) * g * g
        velocity[i] = vi
        denom = vi
        if centered:
            ai = r * average_grad[i] + (1 - r) * g
            average_grad[i] = ai
            denom = vi - ai * ai
        inc = lr * g / fsqrt(denom + eps)
        if use_momentum:
            inc = mu * momentum_buf[i] + inc
            momentum_buf[i] = inc
        params[i] = w - inc


def adagrad_update(floating[::1] params, const floating[::1] grads, floating[::1] accumulator,
                   double learning_rate, double epsilon,
                   double weight_decay=0, double grad_scale=1, double clipvalue=0):
    """Keras Adagrad: accumulator += g^2; w -= lr g / sqrt(accumulator + epsilon)."""
    cdef Py_ssize_t i, n = params.shape[0]
    _check_size(n, grads, "grads")
    _check_size(n, accumulator, "accumulator")
    _check_settings(learning_rate, weight_decay, grad_scale, clipvalue)
    cdef floating lr = learning_rate, eps = epsilon
    cdef floating wd = learning_rate * weight_decay, gs = grad_scale, cv = _clip_limit(clipvalue)
    cdef floating g, w, acc
    cdef int nt = threads_for(n * COST_SQRT_DIV)
    for i in prange(n, nogil=True, num_threads=nt, schedule="static"):
        g = _grad(grads[i], gs, cv)
        w = params[i]
        w = w - wd * w
        acc = accumulator[i] + g * g
        accumulator[i] = acc
        params[i] = w - lr * g / fsqrt(acc + eps)
