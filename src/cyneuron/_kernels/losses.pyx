"""Loss kernels: each returns the sum over samples of the (weighted) per-sample loss and
writes d(that sum)/d(prediction) * scale into `grad`.

Predictions and targets are (n_samples, n_outputs). As in Keras, the per-sample loss is
the mean over the last axis of an element-wise loss (MSE, MAE, Huber, arctan, hinge,
binary cross-entropy) or its sum (KL divergence and the categorical cross-entropies).
Every kernel takes the same two optional buffers:

  sample_weight  (n_samples,)  multiplies each per-sample loss (and its gradient)
  losses         (n_samples,)  receives the weighted per-sample losses

The caller passes scale = 1 / n_samples for Keras's default "sum_over_batch_size"
reduction, 1 for "sum". The softmax cross-entropies take *logits*: the softmax is fused
in with log-sum-exp and the gradient is p - t. Scalar formulas are closed forms computed
in double precision, stable for any input (scikit-learn's _loss.pyx.tp style).
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport atan, exp, fabs, log, log1p
from libc.stdint cimport int64_t

from cyneuron._kernels._math cimport fexp, flog
from cyneuron._kernels._openmp cimport threads_for


cdef _check_same_shape(tuple shape, tuple other, str name):
    if shape != other:
        raise ValueError(f"{name} must have shape {shape}; got {other}")


cdef _check_optional(object buf, Py_ssize_t n, str name):
    if buf is not None and buf.shape[0] != n:
        raise ValueError(f"{name} must have {n} elements (one per sample); got {buf.shape[0]}")


# Rough cost, in scalar operations, of one element: decides the thread count.
cdef enum:
    COST_CHEAP = 2
    COST_TRANSCENDENTAL = 32   # a libm exp or log: ~20 cycles

# Element-wise losses known to the shared row driver.
cdef enum Kind:
    SQUARED = 0
    ABSOLUTE = 1
    HUBER = 2
    ARCTAN = 3
    HINGE = 4
    BINARY_CE = 5
    BINARY_CE_LOGITS = 6
    KL_DIVERGENCE = 7
    CATEGORICAL_CE = 8

ctypedef struct loss_grad:
    double loss
    double grad


# -------------------------------------------------------------------- scalar closed forms
cdef inline double log1pexp(double x) noexcept nogil:
    """log(1 + e^x) without overflow or loss of precision (cut-offs as in scikit-learn)."""
    if x <= -37:
        return exp(x)
    elif x <= -2:
        return log1p(exp(x))
    elif x <= 18:
        return log(1 + exp(x))
    elif x <= 33.3:
        return x + exp(-x)
    return x


cdef inline double _times(double a, double z) noexcept nogil:
    """a * z with 0 * inf = 0: an infinite logit whose target agrees costs nothing."""
    return 0 if a == 0 else a * z


cdef inline loss_grad _binary_ce_logits(double z, double t) noexcept nogil:
    """-(t log s(z) + (1 - t) log(1 - s(z))) = log(1 + e^z) - t z; d/dz = s(z) - t."""
    cdef loss_grad r
    cdef double e
    if z <= 0:
        r.loss = log1pexp(z) - _times(t, z)
    else:   # log1p(e^-z), not e^-z beyond 18: that cut-off costs 1e7 ulps at z = 19
        r.loss = log1p(exp(-z)) + _times(1 - t, z)
    if z > -37:
        e = exp(-z)
        r.grad = ((1 - t) - t * e) / (1 + e)
    else:
        r.grad = exp(z) - t
    return r


cdef inline loss_grad _element(int kind, double p, double t, double param) noexcept nogil:
    """Loss of one element p (prediction) against t (target), and its derivative in p.
    `param` is Huber's delta, or the probability clip epsilon of the cross-entropies."""
    cdef loss_grad r
    cdef double d, a, q, tc
    if kind == SQUARED:
        d = p - t
        r.loss = d * d
        r.grad = 2 * d
    elif kind == ABSOLUTE:
        d = p - t
        r.loss = fabs(d)
        r.grad = 1 if d > 0 else (-1 if d < 0 else (0 if d == 0 else d))   # NaN stays NaN
    elif kind == HUBER:
        d = p - t
        a = fabs(d)
        if a <= param:
            r.loss = 0.5 * d * d
            r.grad = d
        elif a > param:
            r.loss = param * (a - 0.5 * param)
            r.grad = param if d > 0 else -param
        else:                      # NaN: propagate it (it would read as -delta)
            r.loss = d
            r.grad = d
    elif kind == ARCTAN:
        d = p - t
        a = atan(d)
        r.loss = a * a
        r.grad = 2 * a / (1 + d * d)
    elif kind == HINGE:
        d = 1 - t * p
        if d > 0:
            r.loss = d
            r.grad = -t
        elif d <= 0:
            r.loss = 0
            r.grad = 0
        else:                      # NaN: propagate it (it would read as a zero loss)
            r.loss = d
            r.grad = d
    elif kind == BINARY_CE:
        # p clipped to [eps, 1 - eps] as Keras does; the clip has zero gradient.
        q = p
        r.grad = 0
        if q < param:
            q = param
        elif q > 1 - param:
            q = 1 - param
        else:
            r.grad = (q - t) / (q * (1 - q))
        r.loss = -(t * log(q) + (1 - t) * log1p(-q))
    elif kind == BINARY_CE_LOGITS:
        r = _binary_ce_logits(p, t)
    elif kind == KL_DIVERGENCE:
        # Keras: sum t log(t / p) with t and p clipped to [eps, 1].
        tc = t if t > param else param
        if tc > 1:
            tc = 1
        q = p
        r.grad = 0
        if q < param:
            q = param
        elif q > 1:
            q = 1
        else:
            r.grad = -tc / q
        r.loss = tc * (log(tc) - log(q))
    else:  # CATEGORICAL_CE on probabilities, clipped to [eps, 1 - eps]
        q = p
        r.grad = 0
        if q < param:
            q = param
        elif q > 1 - param:
            q = 1 - param
        else:
            r.grad = -t / q
        r.loss = -t * log(q)
    return r


# -------------------------------------------------------------------- row driver
cdef double _rows(int kind, bint mean, double param, int cost,
                  const floating[:, ::1] y_pred, const floating[:, ::1] y_true,
                  floating[:, ::1] grad, double scale,
                  const floating[::1] sample_weight, floating[::1] losses) except? -1:
    """Per-sample loss = mean (or sum) over the row of the element loss, times its weight."""
    cdef Py_ssize_t i, j, n = y_pred.shape[0], c = y_pred.shape[1]
    _check_same_shape((n, c), (y_true.shape[0], y_true.shape[1]), "y_true")
    _check_same_shape((n, c), (grad.shape[0], grad.shape[1]), "grad")
    _check_optional(sample_weight, n, "sample_weight")
    _check_optional(losses, n, "losses")
    if c == 0:
        raise ValueError("y_pred must have at least one output column")
    cdef bint has_w = sample_weight is not None, has_l = losses is not None
    cdef double per_elem = 1.0 / c if mean else 1.0
    cdef double w, s, total = 0
    cdef loss_grad r
    cdef int nt = threads_for(n * c * cost)
    for i in prange(n, nogil=True, num_threads=nt, schedule="static"):
        w = sample_weight[i] if has_w else 1.0
        s = 0
        for j in range(c):
            r = _element(kind, y_pred[i, j], y_true[i, j], param)
            s = s + r.loss
            grad[i, j] = <floating>(r.grad * (w * per_elem * scale))
        s = s * per_elem * w
        if has_l:
            losses[i] = <floating>s
        total += s
    return total


def mean_squared_error(const floating[:, ::1] y_pred, const floating[:, ::1] y_true,
                       floating[:, ::1] grad, double scale,
                       const floating[::1] sample_weight=None, floating[::1] losses=None):
    """Per sample: mean_j (p - t)^2."""
    return _rows(SQUARED, True, 0.0, COST_CHEAP, y_pred, y_true, grad, scale, sample_weight, losses)


def mean_absolute_error(const floating[:, ::1] y_pred, const floating[:, ::1] y_true,
                        floating[:, ::1] grad, double scale,
                        const floating[::1] sample_weight=None, floating[::1] losses=None):
    """Per sample: mean_j |p - t| (gradient sign(p - t), 0 at 0)."""
    return _rows(ABSOLUTE, True, 0.0, COST_CHEAP, y_pred, y_true, grad, scale, sample_weight, losses)


def huber(const floating[:, ::1] y_pred, const floating[:, ::1] y_true,
          floating[:, ::1] grad, double scale, double delta,
          const floating[::1] sample_weight=None, floating[::1] losses=None):
    """Per sample: mean_j of d^2 / 2 where |d| <= delta, else delta (|d| - delta / 2); d = p - t."""
    if not delta > 0:
        raise ValueError(f"delta must be positive, got {delta}")
    return _rows(HUBER, True, delta, COST_CHEAP, y_pred, y_true, grad, scale, sample_weight, losses)


def arctan(const floating[:, ::1] y_pred, const floating[:, ::1] y_true,
           floating[:, ::1] grad, double scale,
           const floating[::1] sample_weight=None, floating[::1] losses=None):
    """Per sample: mean_j arctan(p - t)^2; d/dp = 2 arctan(p - t) / (1 + (p - t)^2)."""
    return _rows(ARCTAN, True, 0.0, COST_TRANSCENDENTAL, y_pred, y_true, grad, scale,
                 sample_weight, losses)


def hinge(const floating[:, ::1] y_pred, const floating[:, ::1] y_true,
          floating[:, ::1] grad, double scale,
          const floating[::1] sample_weight=None, floating[::1] losses=None):
    """Per sample: mean_j max(1 - t p, 0), targets t in {-1, 1}."""
    return _rows(HINGE, True, 0.0, COST_CHEAP, y_pred, y_true, grad, scale, sample_weight, losses)


def binary_crossentropy(const floating[:, ::1] y_pred, const floating[:, ::1] y_true,
                        floating[:, ::1] grad, double scale, double eps,
                        const floating[::1] sample_weight=None, floating[::1] losses=None):
    """Per sample: mean_j -(t log p + (1 - t) log(1 - p)), p clipped to [eps, 1 - eps]."""
    return _rows(BINARY_CE, True, eps, COST_TRANSCENDENTAL, y_pred, y_true, grad, scale,
                 sample_weight, losses)


def binary_crossentropy_logits(const floating[:, ::1] z, const floating[:, ::1] y_true,
                               floating[:, ::1] grad, double scale,
                               const floating[::1] sample_weight=None, floating[::1] losses=None):
    """Per sample: mean_j log(1 + e^z) - t z, the cross-entropy of sigmoid(z); d/dz = sigmoid(z) - t."""
    return _rows(BINARY_CE_LOGITS, True, 0.0, COST_TRANSCENDENTAL, z, y_true, grad, scale,
                 sample_weight, losses)


def kl_divergence(const floating[:, ::1] y_pred, const floating[:, ::1] y_true,
                  floating[:, ::1] grad, double scale, double eps,
                  const floating[::1] sample_weight=None, floating[::1] losses=None):
    """Per sample: sum_j t log(t / p), t and p clipped to [eps, 1] (Keras)."""
    return _rows(KL_DIVERGENCE, False, eps, COST_TRANSCENDENTAL, y_pred, y_true, grad, scale,
                 sample_weight, losses)


def cross_entropy_probs(const floating[:, ::1] p, const floating[:, ::1] t,
                        floating[:, ::1] grad, double scale, double eps,
                        const floating[::1] sample_weight=None, floating[::1] losses=None):
    """Cross-entropy of probabilities p clipped to [eps, 1 - eps], as Keras does: where
    the clip is active the gradient is 0, as for any clip. Per sample: -sum_j t log p."""
    return _rows(CATEGORICAL_CE, False, eps, COST_TRANSCENDENTAL, p, t, grad, scale,
                 sample_weight, losses)


# -------------------------------------------------------------------- softmax cross-entropy
cdef inline floating _row_softmax(const floating[:, ::1] z, Py_ssize_t i,
                                  floating[:, ::1] e, floating *lse) noexcept nogil:
    """e[i] = exp(z[i] - max z[i]) (one exp per element) and lse = log sum exp z[i];
    returns 1 / sum e[i], so that softmax(z[i]) = e[i] times it."""
    cdef Py_ssize_t j, c = z.shape[1]
    cdef const floating *zi = &z[i, 0]
    cdef floating *ei = &e[i, 0]
    cdef floating m = zi[0], s = 0
    for j in range(1, c):
        m = zi[j] if zi[j] > m else m
    for j in range(c):
        ei[j] = fexp(zi[j] - m)
        s = s + ei[j]
    lse[0] = m + flog(s)
    return 1 / s


def softmax_cross_entropy_sparse(const floating[:, ::1] z, const int64_t[::1] labels,
                                 floating[:, ::1] grad, double scale,
                                 const floating[::1] sample_weight=None, floating[::1] losses=None):
    """Sum over rows of -w log softmax(z)[label]; grad = w (softmax(z) - onehot) * scale."""
    cdef Py_ssize_t i, j, n = z.shape[0], c = z.shape[1]
    _check_same_shape((n, c), (grad.shape[0], grad.shape[1]), "grad")
    _check_same_shape((n,), (labels.shape[0],), "labels")
    _check_optional(sample_weight, n, "sample_weight")
    _check_optional(losses, n, "losses")
    if c == 0:
        raise ValueError("z must have at least one class column")
    if n and <const void *>&grad[0, 0] == <const void *>&z[0, 0]:
        raise ValueError("grad must not be z itself: the kernel reads z after writing grad")
    for i in range(n):
        if labels[i] < 0 or labels[i] >= c:
            raise ValueError(f"labels must be in [0, {c}); got {labels[i]} at row {i}")
    cdef bint has_w = sample_weight is not None, has_l = losses is not None
    cdef floating lse, ws, inv
    cdef double w, li, total = 0
    cdef int nt = threads_for(n * c * COST_TRANSCENDENTAL)
    for i in prange(n, nogil=True, num_threads=nt, schedule="static"):
        w = sample_weight[i] if has_w else 1.0
        lse = 0     # assigned here so that prange makes it private (it is written through &lse)
        inv = _row_softmax(z, i, grad, &lse)
        li = w * (lse - z[i, labels[i]])
        if has_l:
            losses[i] = <floating>li
        total += li
        ws = <floating>(w * scale)
        inv = inv * ws
        for j in range(c):
            grad[i, j] = grad[i, j] * inv
        grad[i, labels[i]] -= ws
    return total


def softmax_cross_entropy_dense(const floating[:, ::1] z, const floating[:, ::1] t,
                                floating[:, ::1] grad, double scale,
                                const floating[::1] sample_weight=None, floating[::1] losses=None):
    """Sum over rows of -w sum_j t_j log softmax(z)_j; grad = w (softmax(z) sum(t) - t) * scale."""
    cdef Py_ssize_t i, j, n = z.shape[0], c = z.shape[1]
    _check_same_shape((n, c), (grad.shape[0], grad.shape[1]), "grad")
    _check_same_shape((n, c), (t.shape[0], t.shape[1]), "t")
    _check_optional(sample_weight, n, "sample_weight")
    _check_optional(losses, n, "losses")
    if c == 0:
        raise ValueError("z must have at least one class column")
    if n and <const void *>&grad[0, 0] == <const void *>&z[0, 0]:
        raise ValueError("grad must not be z itself: the kernel reads z after writing grad")
    cdef bint has_w = sample_weight is not None, has_l = losses is not None
    cdef floating lse, tsum, ws, inv
    cdef double w, li, total = 0
    cdef int nt = threads_for(n * c * COST_TRANSCENDENTAL)
    for i in prange(n, nogil=True, num_threads=nt, schedule="static"):
        w = sample_weight[i] if has_w else 1.0
        lse = 0     # assigned here so that prange makes it private (it is written through &lse)
        inv = _row_softmax(z, i, grad, &lse)
        tsum = 0
        li = 0
        for j in range(c):
            tsum = tsum + t[i, j]
            if t[i, j] != 0:       # 0 log 0 = 0: a masked (-inf) logit with target 0
                li = li + t[i, j] * (lse - z[i, j])
        li = li * w
        if has_l:
            losses[i] = <floating>li
        total += li
        ws = <floating>(w * scale)
        inv = inv * tsum
        for j in range(c):
            grad[i, j] = (grad[i, j] * inv - t[i, j]) * ws
    return total
