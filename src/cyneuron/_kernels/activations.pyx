"""Activation kernels: forward y = f(x) and backward dx = dy * f'(x).

Most backward passes take the forward *output* y (their derivative is a closed
form of y), so layers keep one buffer per activation. Where the derivative is
not a stable closed form of y (gelu, swish, mish, softsign, hard_swish) the
backward pass takes the forward *input* x instead. Element-wise kernels work on flat
contiguous arrays and may run in place (out is x, or dx is dy): each reads
element i before writing it. PReLU and Maxout, layers with weights, have their
kernels here too.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport INFINITY
from cyneuron._kernels._math cimport (fexp, fexpm1, ferfc, flog, flog1p, ftanh, gelu,
                                      gelu_tanh, sigmoid, softplus)
from cyneuron._kernels._openmp cimport threads_for
from cyneuron._kernels.gemm cimport current_isa


cdef extern from "vmath.h" nogil:
    # float32 vector copies (AVX2 + FMA, AVX-512F) of the transcendental activations
    # (csrc/vmath_template.h); the generic path keeps the libm loops below.
    enum:
        CN_VM_SIGMOID, CN_VM_TANH, CN_VM_SWISH, CN_VM_GELU, CN_VM_GELU_TANH, CN_VM_EXP, CN_VM_ELU
    int cn_vm_isa(int isa)
    void cn_vm_map_f32(int isa, int fn, const float *x, float *y, Py_ssize_t n, float alpha,
                       float scale)
    float cn_vm_exp_sum_f32(int isa, const float *x, float *y, Py_ssize_t n, float m)


cdef _check_len(Py_ssize_t n, Py_ssize_t other, str name):
    if other != n:
        raise ValueError(f"{name} must have {n} elements; got {other}")


cdef _check_rows(tuple shape, tuple other, str name):
    if other != shape:
        raise ValueError(f"{name} must have shape {shape}; got {other}")

# Rough cost, in scalar operations, of one element: decides the thread count.
cdef enum:
    COST_CHEAP = 1
    COST_VECTOR = 2          # a transcendental function on the vector copies
    COST_TRANSCENDENTAL = 16
    VM_CHUNK = 2048          # elements per task of the vector copies (a multiple of 16)


cdef bint _vector_map(int fn, const float[::1] x, float[::1] out, float alpha=1,
                      float scale=1) noexcept:
    """out = fn(x) (float32) through the vector copy of the GEMM's instruction set, in
    chunks of VM_CHUNK, so every element gets the same bits whatever the thread count;
    False on the generic path (the caller runs its libm loop)."""
    cdef int isa = cn_vm_isa(current_isa())
    cdef Py_ssize_t n = x.shape[0], c, lo
    if isa == 0:
        return False
    if n == 0:
        return True
    cdef int nt = threads_for(n * COST_VECTOR)
    for c in prange((n + VM_CHUNK - 1) // VM_CHUNK, nogil=True, num_threads=nt,
                    schedule="static"):
        lo = c * VM_CHUNK
        cn_vm_map_f32(isa, fn, &x[lo], &out[lo], min(<Py_ssize_t>VM_CHUNK, n - lo), alpha,
                      scale)
    return True


def sigmoid_forward(const floating[::1] x, floating[::1] out):
    cdef Py_ssize_t i, n = x.shape[0]
    _check_len(n, out.shape[0], "out")
    if floating is float:
        if _vector_map(CN_VM_SIGMOID, x, out):
            return
    cdef int nt = threads_for(n * COST_TRANSCENDENTAL)
    for i in prange(n, nogil=True, num_threads=nt, schedule="static"):
        out[i] = sigmoid(x[i])


def sigmoid_backward(const floating[::1] y, const floating[::1] dy, floating[::1] dx):
    cdef Py_ssize_t i, n = y.shape[0]
    _check_len(n, dy.shape[0], "dy")
    _check_len(n, dx.shape[0], "dx")
    cdef int nt = threads_for(n * COST_CHEAP)
    for i in prange(n, nogil=True, num_threads=nt, schedule="static"):
        dx[i] = dy[i] * y[i] * (1 - y[i])


def tanh_forward(const floating[::1] x, floating[::1] out):
    cdef Py_ssize_t i, n = x.shape[0]
    _check_len(n, out.shape[0], "out")
    if floating is float:
        if _vector_map(CN_VM_TANH, x, out):
            return
    cdef int nt = threads_for(n * COST_TRANSCENDENTAL)
    for i in prange(n, nogil=True, num_threads=nt, schedule="static"):
        out[i] = ftanh(x[i])


def tanh_backward(const floating[::1] y, const floating[::1] dy, floating[::1] dx):
    cdef Py_ssize_t i, n = y.shape[0]
    _check_len(n, dy.shape[0], "dy")
    _check_len(n, dx.shape[0], "dx")
    cdef int nt = threads_for(n * COST_CHEAP)
    for i in prange(n, nogil=True, num_threads=nt, schedule="static"):
        dx[i] = dy[i] * (1 - y[i] * y[i])


def relu_forward(const floating[::1] x, floating[::1] out):
    cdef Py_ssize_t i, n = x.shape[0]
    cdef floating v
    _check_len(n, out.shape[0], "out")
    cdef int nt = threads_for(n * COST_CHEAP)
    for i in prange(n, nogil=True, num_threads=nt, schedule="static"):
        v = x[i]
        out[i] = 0 if v <= 0 else v      # NaN stays NaN


def relu_backward(const floating[::1] y, const floating[::1] dy, floating[::1] dx):
    """dx = dy where y > 0. The derivative at 0 is taken as 0, as in Keras/PyTorch."""
    cdef Py_ssize_t i, n = y.shape[0]
    cdef floating d
    _check_len(n, dy.shape[0], "dy")
    _check_len(n, dx.shape[0], "dx")
    cdef int nt = threads_for(n * COST_CHEAP)
    for i in prange(n, nogil=True, num_threads=nt, schedule="static"):
        d = dy[i]  # loaded unconditionally, so the select compiles branch-free
        dx[i] = d if y[i] > 0 else 0


def softmax_forward(const floating[:, ::1] x, floating[:, ::1] out):
    """Row-wise softmax, shifted by the row max so exp never overflows."""
    cdef Py_ssize_t i, j, n = x.shape[0], c = x.shape[1]
    _check_rows((n, c), (out.shape[0], out.shape[1]), "out")
    if c == 0:
        return
    cdef floating m, s
    cdef int isa = cn_vm_isa(current_isa()) if floating is float else 0
    cdef int nt = threads_for(n * c * (COST_VECTOR if isa else COST_TRANSCENDENTAL))
    for i in prange(n, nogil=True, num_threads=nt, schedule="static"):
        m = x[i, 0]
        for j in range(1, c):
            if x[i, j] > m:
                m = x[i, j]
        if floating is float:
            if isa:
                s = cn_vm_exp_sum_f32(isa, &x[i, 0], &out[i, 0], c, m)
        if floating is double or isa == 0:
            s = 0
            for j in range(c):
                out[i, j] = fexp(x[i, j] - m)
                s = s + out[i, j]
        for j in range(c):
            out[i, j] = out[i, j] / s


def softmax_backward(const floating[:, ::1] y, const floating[:, ::1] dy, floating[:, ::1] dx):
    """dx = y * (dy - sum(dy * y)) per row (the softmax Jacobian-vector product)."""
    cdef Py_ssize_t i, j, n = y.shape[0], c = y.shape[1]
    _check_rows((n, c), (dy.shape[0], dy.shape[1]), "dy")
    _check_rows((n, c), (dx.shape[0], dx.shape[1]), "dx")
    cdef floating s
    cdef int nt = threads_for(n * c * COST_CHEAP)
    for i in prange(n, nogil=True, num_threads=nt, schedule="static"):
        s = 0
        for j in range(c):
            s = s + dy[i, j] * y[i, j]
        for j in range(c):
            dx[i, j] = y[i, j] * (dy[i, j] - s)


# ---------------------------------------------------------------------------------
# Scalar helpers: closed forms that neither overflow nor cancel for |x| up to the
# float range. float32 kernels call the float libm functions.
# ---------------------------------------------------------------------------------
cdef double SQRT1_2 = 0.70710678118654752440          # 1 / sqrt(2)
cdef double INV_SQRT_2PI = 0.39894228040143267794     # 1 / sqrt(2 pi)
cdef double SQRT_2_OVER_PI = 0.79788456080286535588   # sqrt(2 / pi)
cdef double GELU_CUBIC = 0.044715


cdef inline floating _gelu_grad(floating x) noexcept nogil:
    """Phi(x) + x phi(x); x*x only overflows where exp(-x*x/2) is 0 anyway; the limits
    1 and 0 at +-inf (not inf * 0)."""
    if x == INFINITY:
        return 1
    if x == -INFINITY:
        return 0
    return (ferfc(<floating>(-x * SQRT1_2)) / 2
            + x * <floating>INV_SQRT_2PI * fexp(-(x * x) / 2))


# Beyond |x| = 100 the tanh-approximate GELU is exactly relu (e^-(2u) underflows
# in float64 already at |x| ~ 10); cutting there also keeps x^3 finite.
cdef double GELU_TANH_CUT = 100.0


cdef inline floating _gelu_tanh_grad(floating x) noexcept nogil:
    """sigmoid(2u) + x sigmoid(2u) sigmoid(-2u) 2 u'(x), both sigmoids from one exp."""
    cdef floating t, e, p, q, s
    if x > GELU_TANH_CUT:
        return 1
    if x < -GELU_TANH_CUT:
        return 0
    t = 2 * SQRT_2_OVER_PI * (x + GELU_CUBIC * x * x * x)
    e = fexp(-t if t > 0 else t)                   # e^-|t|, never overflows
    p = 1 / (1 + e)                                # sigmoid(|t|)
    q = e / (1 + e)                                # sigmoid(-|t|)
    s = p if t >= 0 else q
    return s + x * p * q * 2 * SQRT_2_OVER_PI * (1 + 3 * GELU_CUBIC * x * x)


cdef inline floating _swish_grad(floating x) noexcept nogil:
    """d/dx x sigmoid(x) = s (1 + x (1 - s)), with 1 - s = sigmoid(-x) computed directly;
    the limits 1 and 0 at +-inf (not inf * 0)."""
    if x == INFINITY:
        return 1
    if x == -INFINITY:
        return 0
    cdef floating e = fexp(-x if x > 0 else x)
    cdef floating p = 1 / (1 + e), q = e / (1 + e)
    if x >= 0:
        return p * (1 + x * q)
    return q * (1 + x * p)


# Above this, tanh(softplus(x)) rounds to 1 and the derivative to 1 (float32: e^-40,
# float64: e^-80 relative terms); below it e^x (e^x + 2) squared stays finite.
cdef inline floating _mish_cut(floating x) noexcept nogil:
    if floating is float:
        return 20
    else:
        return 40


cdef inline floating _mish(floating x) noexcept nogil:
    """x tanh(softplus(x)) = x n / (n + 2), n = e^x (e^x + 2): exact for x << 0 too."""
    cdef floating e, n
    if x > _mish_cut(x):
        return x
    if x == -INFINITY:
        return 0                 # the limit (not -inf * 0)
    e = fexp(x)
    n = e * (e + 2)
    return x * n / (n + 2)


cdef inline floating _mish_grad(floating x) noexcept nogil:
    """tanh(sp) + x (1 - tanh(sp)^2) sigmoid(x) = n/(n+2) + x 4 e (1 + e) / (n + 2)^2."""
    cdef floating e, n, d
    if x > _mish_cut(x):
        return 1
    if x == -INFINITY:
        return 0                 # the limit (not -inf * 0)
    e = fexp(x)
    n = e * (e + 2)
    d = n + 2
    return n / d + x * 4 * e * (1 + e) / (d * d)


cdef inline floating _softsign_grad(floating x) noexcept nogil:
    """1 / (1 + |x|)^2, squared after the division so it never overflows."""
    cdef floating d = 1 / (1 + (x if x >= 0 else -x))
    return d * d


# ---------------------------------------------------------------------------------
# Element-wise kernels whose derivative is a closed form of the output y
# ---------------------------------------------------------------------------------
def binary_step_forward(const floating[::1] x, floating[::1] out):
    """1 where x >= 0, else 0 (the perceptron's threshold unit)."""
    cdef Py_ssize_t i, n = x.shape[0]
    _check_len(n, out.shape[0], "out")
    cdef int nt = threads_for(n * COST_CHEAP)
    for i in prange(n, nogil=True, num_threads=nt, schedule="static"):
        out[i] = 1 if x[i] >= 0 else (0 if x[i] < 0 else x[i])    # NaN stays NaN


def binary_step_backward(const floating[::1] y, const floating[::1] dy, floating[::1] dx):
    """The step is flat wherever it is differentiable: dx = 0 (nothing flows back)."""
    cdef Py_ssize_t i, n = y.shape[0]
    _check_len(n, dy.shape[0], "dy")
    _check_len(n, dx.shape[0], "dx")
    cdef int nt = threads_for(n * COST_CHEAP)
    for i in prange(n, nogil=True, num_threads=nt, schedule="static"):
        dx[i] = 0


def hard_sigmoid_forward(const floating[::1] x, floating[::1] out):
    """clip(x / 6 + 1/2, 0, 1) = relu6(x + 3) / 6 (Keras 3, PyTorch Hardsigmoid)."""
    cdef Py_ssize_t i, n = x.shape[0]
    _check_len(n, out.shape[0], "out")
    cdef floating v
    cdef int nt = threads_for(n * COST_CHEAP)
    for i in prange(n, nogil=True, num_threads=nt, schedule="static"):
        v = x[i] / 6 + <floating>0.5
        out[i] = 0 if v <= 0 else (1 if v >= 1 else v)


def hard_sigmoid_backward(const floating[::1] y, const floating[::1] dy, floating[::1] dx):
    """dx = dy / 6 where 0 < y < 1 (the linear part), else 0."""
    cdef Py_ssize_t i, n = y.shape[0]
    _check_len(n, dy.shape[0], "dy")
    _check_len(n, dx.shape[0], "dx")
    cdef int nt = threads_for(n * COST_CHEAP)
    for i in prange(n, nogil=True, num_threads=nt, schedule="static"):
        dx[i] = dy[i] / 6 if (y[i] > 0 and y[i] < 1) else 0


def leaky_relu_forward(const floating[::1] x, floating[::1] out, double negative_slope):
    """x where x > 0, else negative_slope * x."""
    cdef Py_ssize_t i, n = x.shape[0]
    cdef floating v
    _check_len(n, out.shape[0], "out")
    cdef floating a = <floating>negative_slope
    cdef int nt = threads_for(n * COST_CHEAP)
    for i in prange(n, nogil=True, num_threads=nt, schedule="static"):
        v = x[i]
        out[i] = v if v > 0 else a * v


def leaky_relu_backward(const floating[::1] y, const floating[::1] dy, floating[::1] dx,
                        double negative_slope):
    """dx = dy where y > 0, else negative_slope * dy (y > 0 iff x > 0 for a slope >= 0)."""
    cdef Py_ssize_t i, n = y.shape[0]
    cdef floating d
    _check_len(n, dy.shape[0], "dy")
    _check_len(n, dx.shape[0], "dx")
    cdef floating a = <floating>negative_slope
    cdef int nt = threads_for(n * COST_CHEAP)
    for i in prange(n, nogil=True, num_threads=nt, schedule="static"):
        d = dy[i]
        dx[i] = d if y[i] > 0 else a * d


def elu_forward(const floating[::1] x, floating[::1] out, double alpha, double scale):
    """scale * (x if x > 0 else alpha * expm1(x)): ELU (scale 1) and SELU."""
    cdef Py_ssize_t i, n = x.shape[0]
    _check_len(n, out.shape[0], "out")
    if floating is float:
        if _vector_map(CN_VM_ELU, x, out, <float>alpha, <float>scale):
            return
    cdef floating a = <floating>alpha, s = <floating>scale, v
    cdef int nt = threads_for(n * COST_TRANSCENDENTAL)
    for i in prange(n, nogil=True, num_threads=nt, schedule="static"):
        v = x[i]
        out[i] = s * v if v > 0 else s * a * fexpm1(v)


def elu_backward(const floating[::1] y, const floating[::1] dy, floating[::1] dx,
                 double alpha, double scale):
    """dx = dy * scale where y > 0, else dy * (y + scale * alpha) (= scale alpha e^x)."""
    cdef Py_ssize_t i, n = y.shape[0]
    _check_len(n, dy.shape[0], "dy")
    _check_len(n, dx.shape[0], "dx")
    cdef floating s = <floating>scale, sa = <floating>(scale * alpha)
    cdef int nt = threads_for(n * COST_CHEAP)
    for i in prange(n, nogil=True, num_threads=nt, schedule="static"):
        dx[i] = dy[i] * s if y[i] > 0 else dy[i] * (y[i] + sa)


def softplus_forward(const floating[::1] x, floating[::1] out):
    """log(1 + e^x), without overflow for large x or loss of e^x for x << 0."""
    cdef Py_ssize_t i, n = x.shape[0]
    _check_len(n, out.shape[0], "out")
    cdef int nt = threads_for(n * COST_TRANSCENDENTAL)
    for i in prange(n, nogil=True, num_threads=nt, schedule="static"):
        out[i] = softplus(x[i])


def softplus_backward(const floating[::1] y, const floating[::1] dy, floating[::1] dx):
    """sigmoid(x) = 1 - e^-y = -expm1(-y): accurate for tiny y (x << 0) as for large."""
    cdef Py_ssize_t i, n = y.shape[0]
    _check_len(n, dy.shape[0], "dy")
    _check_len(n, dx.shape[0], "dx")
    cdef int nt = threads_for(n * COST_TRANSCENDENTAL)
    for i in prange(n, nogil=True, num_threads=nt, schedule="static"):
        dx[i] = -dy[i] * fexpm1(-y[i])


def relu6_forward(const floating[::1] x, floating[::1] out):
    """min(max(x, 0), 6) (Keras relu6, PyTorch ReLU6)."""
    cdef Py_ssize_t i, n = x.shape[0]
    _check_len(n, out.shape[0], "out")
    cdef floating v
    cdef int nt = threads_for(n * COST_CHEAP)
    for i in prange(n, nogil=True, num_threads=nt, schedule="static"):
        v = x[i]
        out[i] = 0 if v <= 0 else (6 if v >= 6 else v)


def relu6_backward(const floating[::1] y, const floating[::1] dy, floating[::1] dx):
    """dx = dy where 0 < y < 6 (the linear part), else 0 (0 at both kinks, as PyTorch)."""
    cdef Py_ssize_t i, n = y.shape[0]
    cdef floating d
    _check_len(n, dy.shape[0], "dy")
    _check_len(n, dx.shape[0], "dx")
    cdef int nt = threads_for(n * COST_CHEAP)
    for i in prange(n, nogil=True, num_threads=nt, schedule="static"):
        d = dy[i]
        dx[i] = d if (y[i] > 0 and y[i] < 6) else 0


def hard_tanh_forward(const floating[::1] x, floating[::1] out):
    """clip(x, -1, 1) (Keras hard_tanh, PyTorch Hardtanh)."""
    cdef Py_ssize_t i, n = x.shape[0]
    _check_len(n, out.shape[0], "out")
    cdef floating v
    cdef int nt = threads_for(n * COST_CHEAP)
    for i in prange(n, nogil=True, num_threads=nt, schedule="static"):
        v = x[i]
        out[i] = -1 if v <= -1 else (1 if v >= 1 else v)


def hard_tanh_backward(const floating[::1] y, const floating[::1] dy, floating[::1] dx):
    """dx = dy where -1 < y < 1, else 0."""
    cdef Py_ssize_t i, n = y.shape[0]
    cdef floating d
    _check_len(n, dy.shape[0], "dy")
    _check_len(n, dx.shape[0], "dx")
    cdef int nt = threads_for(n * COST_CHEAP)
    for i in prange(n, nogil=True, num_threads=nt, schedule="static"):
        d = dy[i]
        dx[i] = d if (y[i] > -1 and y[i] < 1) else 0


def exponential_forward(const floating[::1] x, floating[::1] out):
    """e^x (Keras exponential); overflows to inf past log(max float), as exp does."""
    cdef Py_ssize_t i, n = x.shape[0]
    _check_len(n, out.shape[0], "out")
    if floating is float:
        if _vector_map(CN_VM_EXP, x, out):
            return
    cdef int nt = threads_for(n * COST_TRANSCENDENTAL)
    for i in prange(n, nogil=True, num_threads=nt, schedule="static"):
        out[i] = fexp(x[i])


def exponential_backward(const floating[::1] y, const floating[::1] dy, floating[::1] dx):
    """The derivative of e^x is its output: dx = dy * y."""
    cdef Py_ssize_t i, n = y.shape[0]
    _check_len(n, dy.shape[0], "dy")
    _check_len(n, dx.shape[0], "dx")
    cdef int nt = threads_for(n * COST_CHEAP)
    for i in prange(n, nogil=True, num_threads=nt, schedule="static"):
        dx[i] = dy[i] * y[i]


# ---------------------------------------------------------------------------------
# Element-wise kernels that back-propagate from the forward input x
# ---------------------------------------------------------------------------------
def hard_swish_forward(const floating[::1] x, floating[::1] out):
    """x * relu6(x + 3) / 6 = x * hard_sigmoid(x) (Keras hard_swish, PyTorch Hardswish)."""
    cdef Py_ssize_t i, n = x.shape[0]
    _check_len(n, out.shape[0], "out")
    cdef floating v
    cdef int nt = threads_for(n * COST_CHEAP)
    for i in prange(n, nogil=True, num_threads=nt, schedule="static"):
        v = x[i]
        out[i] = 0 if v <= -3 else (v if v >= 3 else v * (v + 3) / 6)


def hard_swish_backward(const floating[::1] x, const floating[::1] dy, floating[::1] dx):
    """From x: y is not monotonic on [-3, -1.5], so x cannot be read back from it.
    0 below -3, 1 above 3, (2x + 3) / 6 between (PyTorch's values at the kinks)."""
    cdef Py_ssize_t i, n = x.shape[0]
    _check_len(n, dy.shape[0], "dy")
    _check_len(n, dx.shape[0], "dx")
    cdef floating v
    cdef int nt = threads_for(n * COST_CHEAP)
    for i in prange(n, nogil=True, num_threads=nt, schedule="static"):
        v = x[i]
        dx[i] = 0 if v < -3 else (dy[i] if v > 3 else dy[i] * (2 * v + 3) / 6)


def gelu_forward(const floating[::1] x, floating[::1] out):
    cdef Py_ssize_t i, n = x.shape[0]
    _check_len(n, out.shape[0], "out")
    if floating is float:
        if _vector_map(CN_VM_GELU, x, out):
            return
    cdef int nt = threads_for(n * COST_TRANSCENDENTAL)
    for i in prange(n, nogil=True, num_threads=nt, schedule="static"):
        out[i] = gelu(x[i])


def gelu_backward(const floating[::1] x, const floating[::1] dy, floating[::1] dx):
    cdef Py_ssize_t i, n = x.shape[0]
    _check_len(n, dy.shape[0], "dy")
    _check_len(n, dx.shape[0], "dx")
    cdef int nt = threads_for(n * 2 * COST_TRANSCENDENTAL)
    for i in prange(n, nogil=True, num_threads=nt, schedule="static"):
        dx[i] = dy[i] * _gelu_grad(x[i])


def gelu_tanh_forward(const floating[::1] x, floating[::1] out):
    cdef Py_ssize_t i, n = x.shape[0]
    _check_len(n, out.shape[0], "out")
    if floating is float:
        if _vector_map(CN_VM_GELU_TANH, x, out):
            return
    cdef int nt = threads_for(n * COST_TRANSCENDENTAL)
    for i in prange(n, nogil=True, num_threads=nt, schedule="static"):
        out[i] = gelu_tanh(x[i])


def gelu_tanh_backward(const floating[::1] x, const floating[::1] dy, floating[::1] dx):
    cdef Py_ssize_t i, n = x.shape[0]
    _check_len(n, dy.shape[0], "dy")
    _check_len(n, dx.shape[0], "dx")
    cdef int nt = threads_for(n * COST_TRANSCENDENTAL)
    for i in prange(n, nogil=True, num_threads=nt, schedule="static"):
        dx[i] = dy[i] * _gelu_tanh_grad(x[i])


def swish_forward(const floating[::1] x, floating[::1] out):
    """x sigmoid(x) (Swish with beta = 1, SiLU)."""
    cdef Py_ssize_t i, n = x.shape[0]
    _check_len(n, out.shape[0], "out")
    if floating is float:
        if _vector_map(CN_VM_SWISH, x, out):
            return
    cdef floating v
    cdef int nt = threads_for(n * COST_TRANSCENDENTAL)
    for i in prange(n, nogil=True, num_threads=nt, schedule="static"):
        v = x[i]
        out[i] = 0 if v == -INFINITY else v * sigmoid(v)    # the limit at -inf, not -inf * 0


def swish_backward(const floating[::1] x, const floating[::1] dy, floating[::1] dx):
    cdef Py_ssize_t i, n = x.shape[0]
    _check_len(n, dy.shape[0], "dy")
    _check_len(n, dx.shape[0], "dx")
    cdef int nt = threads_for(n * COST_TRANSCENDENTAL)
    for i in prange(n, nogil=True, num_threads=nt, schedule="static"):
        dx[i] = dy[i] * _swish_grad(x[i])


def mish_forward(const floating[::1] x, floating[::1] out):
    """x tanh(softplus(x))."""
    cdef Py_ssize_t i, n = x.shape[0]
    _check_len(n, out.shape[0], "out")
    cdef int nt = threads_for(n * COST_TRANSCENDENTAL)
    for i in prange(n, nogil=True, num_threads=nt, schedule="static"):
        out[i] = _mish(x[i])


def mish_backward(const floating[::1] x, const floating[::1] dy, floating[::1] dx):
    cdef Py_ssize_t i, n = x.shape[0]
    _check_len(n, dy.shape[0], "dy")
    _check_len(n, dx.shape[0], "dx")
    cdef int nt = threads_for(n * COST_TRANSCENDENTAL)
    for i in prange(n, nogil=True, num_threads=nt, schedule="static"):
        dx[i] = dy[i] * _mish_grad(x[i])


def softsign_forward(const floating[::1] x, floating[::1] out):
    """x / (1 + |x|)."""
    cdef Py_ssize_t i, n = x.shape[0]
    _check_len(n, out.shape[0], "out")
    cdef floating v
    cdef int nt = threads_for(n * COST_CHEAP)
    for i in prange(n, nogil=True, num_threads=nt, schedule="static"):
        v = x[i]
        if v == INFINITY or v == -INFINITY:
            out[i] = 1 if v > 0 else -1      # the limits (not inf / inf)
        else:
            out[i] = v / (1 + (v if v >= 0 else -v))


def softsign_backward(const floating[::1] x, const floating[::1] dy, floating[::1] dx):
    """From x, not y: (1 - |y|)^2 would cancel for large |x|."""
    cdef Py_ssize_t i, n = x.shape[0]
    _check_len(n, dy.shape[0], "dy")
    _check_len(n, dx.shape[0], "dx")
    cdef int nt = threads_for(n * COST_CHEAP)
    for i in prange(n, nogil=True, num_threads=nt, schedule="static"):
        dx[i] = dy[i] * _softsign_grad(x[i])


# ---------------------------------------------------------------------------------
# Row-wise kernels
# ---------------------------------------------------------------------------------
def log_softmax_forward(const floating[:, ::1] x, floating[:, ::1] out):
    """Row-wise x - max - log(sum(exp(x - max))): finite for any finite x."""
    cdef Py_ssize_t i, j, n = x.shape[0], c = x.shape[1]
    _check_rows((n, c), (out.shape[0], out.shape[1]), "out")
    if c == 0:
        return
    cdef floating m, s
    cdef int nt = threads_for(n * c * COST_TRANSCENDENTAL)
    for i in prange(n, nogil=True, num_threads=nt, schedule="static"):
        m = x[i, 0]
        for j in range(1, c):
            if x[i, j] > m:
                m = x[i, j]
        s = 0
        for j in range(c):
            s = s + fexp(x[i, j] - m)
        s = m + flog(s)
        for j in range(c):
            out[i, j] = x[i, j] - s


def log_softmax_backward(const floating[:, ::1] y, const floating[:, ::1] dy,
                         floating[:, ::1] dx):
    """dx = dy - exp(y) * sum(dy) per row (exp(y) is the softmax, in [0, 1])."""
    cdef Py_ssize_t i, j, n = y.shape[0], c = y.shape[1]
    _check_rows((n, c), (dy.shape[0], dy.shape[1]), "dy")
    _check_rows((n, c), (dx.shape[0], dx.shape[1]), "dx")
    cdef floating s
    cdef int nt = threads_for(n * c * COST_TRANSCENDENTAL)
    for i in prange(n, nogil=True, num_threads=nt, schedule="static"):
        s = 0
        for j in range(c):
            s = s + dy[i, j]
        for j in range(c):
            dx[i, j] = dy[i, j] - fexp(y[i, j]) * s


# ---------------------------------------------------------------------------------
# Layers with parameters: PReLU and Maxout
# ---------------------------------------------------------------------------------
def prelu_forward(const floating[:, ::1] x, const floating[::1] alpha, floating[:, ::1] out):
    """out[i, j] = x[i, j] if x[i, j] > 0 else alpha[j] * x[i, j]."""
    cdef Py_ssize_t i, j, n = x.shape[0], m = x.shape[1]
    _check_rows((n, m), (out.shape[0], out.shape[1]), "out")
    _check_len(m, alpha.shape[0], "alpha")
    cdef floating v
    cdef int nt = threads_for(n * m * COST_CHEAP)
    for i in prange(n, nogil=True, num_threads=nt, schedule="static"):
        for j in range(m):
            v = x[i, j]
            out[i, j] = v if v > 0 else alpha[j] * v


# Columns per task of the dalpha reduction: each task owns its columns, no races.
cdef enum:
    PRELU_COLUMN_BLOCK = 256


def prelu_backward(const floating[:, ::1] x, const floating[::1] alpha,
                   const floating[:, ::1] dy, floating[:, ::1] dx, floating[::1] dalpha):
    """dx = dy where x > 0, else alpha * dy; dalpha[j] = sum_i dy * x over x <= 0."""
    cdef Py_ssize_t i, j, b, j0, j1, n = x.shape[0], m = x.shape[1]
    _check_rows((n, m), (dy.shape[0], dy.shape[1]), "dy")
    _check_rows((n, m), (dx.shape[0], dx.shape[1]), "dx")
    _check_len(m, alpha.shape[0], "alpha")
    _check_len(m, dalpha.shape[0], "dalpha")
    cdef floating v
    cdef Py_ssize_t n_blocks = (m + PRELU_COLUMN_BLOCK - 1) // PRELU_COLUMN_BLOCK
    cdef int nt = threads_for(n * m * COST_CHEAP)
    for i in prange(n, nogil=True, num_threads=nt, schedule="static"):
        for j in range(m):
            v = x[i, j]
            dx[i, j] = dy[i, j] if v > 0 else alpha[j] * dy[i, j]
    for b in prange(n_blocks, nogil=True, num_threads=nt if n_blocks > 1 else 1,
                    schedule="static"):
        j0 = b * PRELU_COLUMN_BLOCK
        j1 = min(j0 + PRELU_COLUMN_BLOCK, m)
        for j in range(j0, j1):
            dalpha[j] = 0
        for i in range(n):
            for j in range(j0, j1):
                if x[i, j] <= 0:
                    dalpha[j] += dy[i, j] * x[i, j]


def maxout_forward(const floating[:, ::1] z, floating[:, ::1] out, int[:, ::1] argmax):
    """out[i, u] = max_p z[i, u * pieces + p], pieces = z.shape[1] // out.shape[1];
    argmax keeps the winning p (the first on ties) for the backward pass."""
    cdef Py_ssize_t i, u, p, n = z.shape[0], units = out.shape[1]
    if units == 0 or z.shape[1] % units:
        raise ValueError(f"z must have a multiple of {units} columns; got {z.shape[1]}")
    cdef Py_ssize_t pieces = z.shape[1] // units
    _check_rows((n, units), (out.shape[0], out.shape[1]), "out")
    _check_rows((n, units), (argmax.shape[0], argmax.shape[1]), "argmax")
    if pieces == 0:
        raise ValueError("z must have at least one piece per unit")
    cdef floating best
    cdef int k
    cdef int nt = threads_for(n * units * pieces * COST_CHEAP)
    for i in prange(n, nogil=True, num_threads=nt, schedule="static"):
        for u in range(units):
            best = z[i, u * pieces]
            k = 0
            for p in range(1, pieces):
                if z[i, u * pieces + p] > best:
                    best = z[i, u * pieces + p]
                    k = <int>p
            out[i, u] = best
            argmax[i, u] = k


def maxout_backward(const floating[:, ::1] dy, const int[:, ::1] argmax, floating[:, ::1] dz):
    """dz[i, u * pieces + p] = dy[i, u] for the winning p, 0 for the others."""
    cdef Py_ssize_t i, u, p, n = dy.shape[0], units = dy.shape[1]
    if units == 0 or dz.shape[1] % units:
        raise ValueError(f"dz must have a multiple of {units} columns; got {dz.shape[1]}")
    cdef Py_ssize_t pieces = dz.shape[1] // units
    _check_rows((n, units), (argmax.shape[0], argmax.shape[1]), "argmax")
    if dz.shape[0] != n:
        raise ValueError(f"dz must have {n} rows; got {dz.shape[0]}")
    for i in range(n):
        for u in range(units):
            if argmax[i, u] < 0 or argmax[i, u] >= pieces:
                raise ValueError(f"argmax must be in [0, {pieces}); got {argmax[i, u]}")
    cdef int nt = threads_for(n * units * pieces * COST_CHEAP)
    for i in prange(n, nogil=True, num_threads=nt, schedule="static"):
        for u in range(units):
            for p in range(pieces):
                dz[i, u * pieces + p] = 0
            dz[i, u * pieces + argmax[i, u]] = dy[i, u]
