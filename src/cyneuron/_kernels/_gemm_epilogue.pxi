# The GEMM epilogue (included by gemm.pyx): bias and activation, or an activation's
# derivative, applied to each finished strip of C while it is in cache.

cdef extern from "vmath.h" nogil:
    # float32 vector copies of the transcendental activations (as _kernels/activations)
    enum:
        CN_VM_SIGMOID, CN_VM_TANH, CN_VM_SWISH, CN_VM_GELU, CN_VM_GELU_TANH, CN_VM_ELU
    int cn_vm_isa(int isa)
    void cn_vm_map_f32(int isa, int fn, const float *x, float *y, int64_t n, float alpha,
                       float scale)


cdef inline int _vector_fn(int act) noexcept nogil:
    """The vector math function for an epilogue activation, 0 if it has none."""
    if act == EPI_SIGMOID:
        return CN_VM_SIGMOID
    if act == EPI_TANH:
        return CN_VM_TANH
    if act == EPI_GELU:
        return CN_VM_GELU
    if act == EPI_GELU_TANH:
        return CN_VM_GELU_TANH
    if act == EPI_SWISH:
        return CN_VM_SWISH
    if act == EPI_ELU:
        return CN_VM_ELU
    return 0


cdef void _epilogue(floating *c, int64_t ldc, int m, int n, int act,
                    floating alpha) noexcept nogil:
    """C tile (m x n) = act(C), in place, for the activations the C loops leave out (the
    bias, relu and leaky_relu: _cheap_bias_act). float32 on the AVX2 / AVX-512 paths:
    the vector math of csrc/vmath.h; otherwise libm."""
    cdef int i, j, fn, isa
    cdef floating *row
    if floating is float:
        isa = cn_vm_isa(_table.isa)
        fn = _vector_fn(act)
        if isa and fn:
            for i in range(m):
                cn_vm_map_f32(isa, fn, c + i * ldc, c + i * ldc, n, alpha, 1)
            return
    for i in range(m):
        row = c + i * ldc
        if act == EPI_SIGMOID:
            for j in range(n):
                row[j] = _math.sigmoid(row[j])
        elif act == EPI_TANH:
            for j in range(n):
                row[j] = _math.ftanh(row[j])
        elif act == EPI_GELU:
            for j in range(n):
                row[j] = _math.gelu(row[j])
        elif act == EPI_GELU_TANH:
            for j in range(n):
                row[j] = _math.gelu_tanh(row[j])
        elif act == EPI_SWISH:
            for j in range(n):
                row[j] = _math.swish(row[j])
        elif act == EPI_SOFTPLUS:
            for j in range(n):
                row[j] = _math.softplus(row[j])
        elif act == EPI_ELU:
            for j in range(n):
                row[j] = _math.elu(row[j], alpha)


cdef void _epilogue_grad(floating *c, int64_t ldc, int m, int n, const floating *y,
                         int act, floating alpha) noexcept nogil:
    """C tile (m x n) *= act'(y), y the activation's forward output (row stride ldc), for
    elu and softplus (relu, leaky_relu, sigmoid and tanh go to the C loops, _cheap_grad);
    the formulas of cyneuron's activation kernels."""
    cdef int i, j
    cdef floating *row
    cdef const floating *yr
    for i in range(m):
        row = c + i * ldc
        yr = y + i * ldc
        if act == EPI_ELU:
            for j in range(n):
                row[j] = row[j] if yr[j] > 0 else row[j] * (yr[j] + alpha)
        elif act == EPI_SOFTPLUS:    # sigmoid(x) = 1 - e^-y
            for j in range(n):
                row[j] = -row[j] * _math.fexpm1(-yr[j])


# Activations whose derivative the epilogue can take from their output (act_out).
GRAD_EPILOGUES = frozenset((EPI_LINEAR, EPI_RELU, EPI_LEAKY_RELU, EPI_ELU, EPI_SIGMOID, EPI_TANH,
                            EPI_SOFTPLUS))



cdef inline void _cheap_bias_act(floating *c, int64_t ldc, int m, int n, const floating *bias,
                                 int act, floating alpha, bint avx2) noexcept nogil:
    if floating is float:
        cn_bias_act_f32(avx2, c, ldc, m, n, bias, act, alpha)
    else:
        cn_bias_act_f64(avx2, c, ldc, m, n, bias, act, alpha)


cdef inline int _bias_nonfinite(floating *c, int64_t ldc, int m, int n, const floating *bias,
                                bint relu, bint avx2) noexcept nogil:
    if floating is float:
        return cn_bias_nonfinite_f32(avx2, c, ldc, m, n, bias, relu)
    else:
        return cn_bias_nonfinite_f64(avx2, c, ldc, m, n, bias, relu)


cdef inline void _cheap_grad(floating *c, int64_t ldc, int m, int n, const floating *y,
                             int act, floating alpha, bint avx2) noexcept nogil:
    if floating is float:
        cn_act_grad_f32(avx2, c, ldc, m, n, y, act, alpha)
    else:
        cn_act_grad_f64(avx2, c, ldc, m, n, y, act, alpha)


cdef inline void _finish(const Call *g, floating dummy, int64_t row, int64_t m, int64_t col,
                         int64_t n) noexcept nogil:
    """The epilogue on a strip C[row:row+m, col:col+n] whose last k block just went in
    (EPILOGUE_SLIVERS slivers wide, so still in cache; once per strip, not per tile)."""
    cdef floating *c = <floating *>g.C + row * g.ldc + col
    cdef bint avx2 = _table.isa != CN_ISA_GENERIC
    cdef bint cheap
    if g.act_out != NULL:
        if g.act == EPI_RELU or g.act == EPI_LEAKY_RELU or g.act == EPI_SIGMOID \
                or g.act == EPI_TANH:
            _cheap_grad(c, g.ldc, <int>m, <int>n, <const floating *>g.act_out + row * g.ldc + col,
                        g.act, <floating>g.alpha, avx2)
        elif g.act != EPI_LINEAR:
            _epilogue_grad(c, g.ldc, <int>m, <int>n,
                           <const floating *>g.act_out + row * g.ldc + col, g.act,
                           <floating>g.alpha)
        return
    if g.epi_in_ukr:     # done by the micro-kernel as it stored C
        return
    cheap = g.act == EPI_RELU or g.act == EPI_LEAKY_RELU
    cdef const floating *bias = <const floating *>g.bias + col if g.bias != NULL else NULL
    if g.nonfinite != NULL:     # the bias and the check (and relu), then the activation
        if _bias_nonfinite(c, g.ldc, <int>m, <int>n, bias, g.act == EPI_RELU, avx2):
            cn_flag_set(g.nonfinite)
        if g.act == EPI_LEAKY_RELU:
            _cheap_bias_act(c, g.ldc, <int>m, <int>n, <const floating *>NULL, g.act,
                            <floating>g.alpha, avx2)
        elif not cheap and g.act != EPI_LINEAR:
            _epilogue(c, g.ldc, <int>m, <int>n, g.act, <floating>g.alpha)
        return
    if g.bias != NULL or cheap:      # the bias (and relu / leaky_relu) in the C loop
        _cheap_bias_act(c, g.ldc, <int>m, <int>n, bias, g.act if cheap else EPI_LINEAR,
                        <floating>g.alpha, avx2)
    if not cheap and g.act != EPI_LINEAR:
        _epilogue(c, g.ldc, <int>m, <int>n, g.act, <floating>g.alpha)
