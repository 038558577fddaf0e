"""Scalar math shared by the kernels: float32 calls the float libm functions."""
from cython cimport floating
from libc.math cimport (INFINITY, erfc, erfcf, exp, expf, expm1, expm1f, log, log1p, log1pf, logf,
                        tanh, tanhf)


cdef inline floating fexp(floating x) noexcept nogil:
    if floating is float:
        return expf(x)
    else:
        return exp(x)


cdef inline floating flog(floating x) noexcept nogil:
    if floating is float:
        return logf(x)
    else:
        return log(x)


cdef inline floating ftanh(floating x) noexcept nogil:
    if floating is float:
        return tanhf(x)
    else:
        return tanh(x)


cdef inline floating sigmoid(floating x) noexcept nogil:
    """1 / (1 + e^-x) without overflow for large |x|."""
    cdef floating e
    if x >= 0:
        return 1 / (1 + fexp(-x))
    e = fexp(x)
    return e / (1 + e)


cdef inline floating ferfc(floating x) noexcept nogil:
    if floating is float:
        return erfcf(x)
    else:
        return erfc(x)


cdef inline floating fexpm1(floating x) noexcept nogil:
    if floating is float:
        return expm1f(x)
    else:
        return expm1(x)


cdef inline floating flog1p(floating x) noexcept nogil:
    if floating is float:
        return log1pf(x)
    else:
        return log1p(x)


cdef inline floating relu(floating x) noexcept nogil:
    """max(x, 0); NaN stays NaN (x <= 0 is false for NaN)."""
    return 0 if x <= 0 else x


cdef inline floating leaky_relu(floating x, floating slope) noexcept nogil:
    return x if x > 0 else slope * x


cdef inline floating elu(floating x, floating alpha) noexcept nogil:
    """x for x > 0, alpha * (e^x - 1) otherwise (expm1: exact near 0)."""
    return x if x > 0 else alpha * fexpm1(x)


cdef inline floating softplus(floating x) noexcept nogil:
    """log(1 + e^x) = max(x, 0) + log1p(e^-|x|): no overflow for large x."""
    if x > 0:
        return x + flog1p(fexp(-x))
    return flog1p(fexp(x))


cdef inline floating swish(floating x) noexcept nogil:
    """x * sigmoid(x) (also called SiLU); 0 at -inf (its limit, not -inf * 0)."""
    if x == -INFINITY:
        return 0
    return x * sigmoid(x)


cdef inline floating gelu(floating x) noexcept nogil:
    """Exact GELU x Phi(x), Phi(x) = erfc(-x / sqrt 2) / 2: no cancellation for x << 0;
    0 at -inf (its limit, not -inf * 0)."""
    if x == -INFINITY:
        return 0
    return x * ferfc(<floating>(-x * 0.70710678118654752440)) / 2


cdef inline floating gelu_tanh(floating x) noexcept nogil:
    """GELU, tanh approximation: 0.5 x (1 + tanh(u)) = x sigmoid(2u),
    u = sqrt(2/pi) (x + 0.044715 x^3). Beyond |x| = 100 it is exactly relu (and x^3
    stays finite)."""
    if x > 100:
        return x
    if x < -100:
        return 0
    return x * sigmoid(<floating>(2 * 0.79788456080286535588 * (x + 0.044715 * x * x * x)))
