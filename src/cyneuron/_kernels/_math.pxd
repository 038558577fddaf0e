"""Scalar math shared by the kernels: float32 calls the float libm functions."""
from cython cimport floating
from libc.math cimport erf, erff, exp, expf, log, log1p, log1pf, logf, tanh, tanhf


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


cdef inline floating ferf(floating x) noexcept nogil:
    if floating is float:
        return erff(x)
    else:
        return erf(x)


cdef inline floating flog1p(floating x) noexcept nogil:
    if floating is float:
        return log1pf(x)
    else:
        return log1p(x)


cdef inline floating relu(floating x) noexcept nogil:
    return x if x > 0 else 0


cdef inline floating leaky_relu(floating x, floating slope) noexcept nogil:
    return x if x > 0 else slope * x


cdef inline floating elu(floating x, floating alpha) noexcept nogil:
    """x for x > 0, alpha * (e^x - 1) otherwise (expm1 would be exact near 0; e^x - 1
    matches Keras and is cheaper)."""
    return x if x > 0 else alpha * (fexp(x) - 1)


cdef inline floating softplus(floating x) noexcept nogil:
    """log(1 + e^x) = max(x, 0) + log1p(e^-|x|): no overflow for large x."""
    return (x if x > 0 else 0) + flog1p(fexp(-x if x > 0 else x))


cdef inline floating swish(floating x) noexcept nogil:
    """x * sigmoid(x) (also called SiLU)."""
    return x * sigmoid(x)


cdef inline floating gelu(floating x) noexcept nogil:
    """Exact GELU: x * Phi(x) = 0.5 x (1 + erf(x / sqrt(2)))."""
    return <floating>0.5 * x * (1 + ferf(x * <floating>0.7071067811865476))


cdef inline floating gelu_tanh(floating x) noexcept nogil:
    """GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    return <floating>0.5 * x * (1 + ftanh(<floating>0.7978845608028654 *
                                          (x + <floating>0.044715 * x * x * x)))
