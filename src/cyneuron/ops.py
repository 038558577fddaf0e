"""Public kernels on numpy arrays: validated inputs in, new (or `out=`) arrays out.

These are thin wrappers: they check shapes and dtypes, pick the float32 or
float64 kernel, allocate the result and release the GIL inside the kernel.
"""
import numpy as np

from . import activations as _activations
from ._kernels import gemm as _gemm
from ._validation import check_numeric

_ACTIVATIONS = ["linear", "binary_step", "sigmoid", "hard_sigmoid", "tanh", "relu", "leaky_relu",
                "elu", "selu", "gelu", "swish", "silu", "mish", "softplus", "softsign", "relu6",
                "hard_tanh", "exponential", "hard_swish", "hard_silu", "softmax", "log_softmax"]
__all__ = (["matmul", "scaled_dot_product_attention", "scaled_dot_product_attention_grad"]
           + _ACTIVATIONS + [name + "_grad" for name in _ACTIVATIONS])


_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _result_dtype(*arrays):
    """float32 when every input is float32 (or float16), float64 otherwise."""
    if all(a.dtype in (np.float32, np.float16) for a in arrays):
        return np.dtype(np.float32)
    return np.dtype(np.float64)


def _as_operand(x, name, dtype):
    """x as a 2-D array of `dtype` whose strides the GEMM can read (copied only if not)."""
    if x.ndim != 2:
        raise ValueError(f"matmul: {name} must be 2-D; got an array of shape {x.shape}")
    x = x.astype(dtype, copy=False)
    if any(s % x.itemsize for s in x.strides) or not x.flags.aligned:
        x = np.array(x, order="C")      # an aligned, contiguous copy
    return x


def _operands(a, b):
    """(a, b) as 2-D float arrays of one dtype. Float arrays of one dtype pass straight
    through (the common case costs a few attribute reads)."""
    if (type(a) is np.ndarray and type(b) is np.ndarray and a.dtype is b.dtype
            and a.dtype in _FLOATS and a.ndim == 2 and b.ndim == 2
            and not (a.strides[0] | a.strides[1] | b.strides[0] | b.strides[1]) % a.itemsize
            and a.flags.aligned and b.flags.aligned):
        return a, b
    a = check_numeric(a, "a")
    b = check_numeric(b, "b")
    dtype = _result_dtype(a, b)
    return _as_operand(a, "a", dtype), _as_operand(b, "b", dtype)


def epilogue_of(activation):
    """(code, alpha) of the GEMM epilogue that applies `activation` (an Activation),
    or None when the activation is not element-wise or not fused."""
    code = _gemm.EPILOGUES.get(activation.name)
    if code is None:
        return None
    alpha = getattr(activation, "negative_slope", getattr(activation, "alpha", 0.0))
    return code, float(alpha)


def matmul(a, b, trans_a=False, trans_b=False, bias=None, activation=None, out=None):
    """op(a) @ op(b) (+ bias) (then activation), where op transposes when asked.

    The transposes cost nothing: the GEMM packs or reads either layout. Strided,
    sliced and Fortran-ordered inputs are read through their strides. The result
    is float32 when both inputs are float32, float64 otherwise (integers are
    converted). Bias and element-wise activations (relu, sigmoid, tanh, gelu, ...)
    are applied in the GEMM's epilogue, on each tile while it is in cache.

    bias: shape (N,), added to every row. activation: a name from
    cyneuron.activations. out: a C-contiguous (M, N) array of the result dtype.
    """
    if (bias is None and activation is None and type(a) is np.ndarray and type(b) is np.ndarray
            and a.ndim == 2 and b.ndim == 2):
        # Fast path: the kernel's own C checks suffice for float arrays of one dtype; on
        # anything else it raises before touching c, and the explaining path below runs.
        x, y = a.T if trans_a else a, b.T if trans_b else b
        try:
            if out is None:
                return _gemm.product(x, y)
            _gemm.gemm(x, y, out)
            return out
        except (TypeError, ValueError):
            pass
    a, b = _operands(a, b)
    dtype = a.dtype
    if trans_a:
        a = a.T
    if trans_b:
        b = b.T
    (m, k), (k2, n) = a.shape, b.shape
    if k != k2:
        raise ValueError(
            f"matmul: inner dimensions differ: op(a) has shape {a.shape} and op(b) {b.shape} "
            f"(trans_a={trans_a}, trans_b={trans_b})")
    act, code, alpha = None, 0, 0.0
    if activation is not None:
        act = _activations.get(activation)
        fused = epilogue_of(act)
        if fused is not None:
            (code, alpha), act = fused, None
    if bias is not None:
        bias = check_numeric(bias, "bias")
        if bias.shape != (n,):
            raise ValueError(f"matmul: bias must have shape ({n},); got {bias.shape}")
        bias = np.require(bias, dtype=dtype, requirements=["C", "A"])

    result = _check_out(out, (m, n), dtype)
    # The kernel writes C while reading A and B: never let them overlap.
    target = result
    if out is not None and (not out.flags.aligned or _overlap(out, a) or _overlap(out, b)):
        target = np.empty((m, n), dtype)
    if k == 0:
        target.fill(0)
        if bias is not None:
            target += bias
        if code:
            act = _activations.get(activation)
    else:
        _gemm.gemm(a, b, target, bias, code, alpha)
    if act is not None:
        act.forward(target, out=target)
    if target is not result:
        np.copyto(result, target)
    return result


def _overlap(x, y):
    return np.may_share_memory(x, y) and np.shares_memory(x, y)


def _check_out(out, shape, dtype):
    if out is None:
        return np.empty(shape, dtype)
    if type(out) is np.ndarray and out.shape == shape and out.dtype is dtype \
            and out.flags.c_contiguous and out.flags.writeable:
        return out
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy array, got {type(out).__name__}")
    if out.shape != shape:
        raise ValueError(f"out must have shape {shape}; got {out.shape}")
    if out.dtype != dtype:
        raise TypeError(f"out must have dtype {dtype.name}; got {out.dtype.name}")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError("out must be a writeable C-contiguous array")
    return out


def _as_float(x, name):
    x = check_numeric(x, name)
    dtype = x.dtype if x.dtype in (np.float32, np.float64) else np.float64
    return np.asarray(x, dtype=dtype, order="C")  # keeps 0-d input 0-d


def _forward(act, x):
    x = _as_float(x, "x")
    return act.forward(x, out=np.empty_like(x))


def _grad(act, y, dy, x):
    """dy * f'(x) from y, or from x for activations with `needs_input` (y unused then)."""
    if act.needs_input:
        if x is None:
            raise ValueError(f"{act.name}_grad needs the forward input x (its derivative is "
                             f"not a closed form of the output): call {act.name}_grad(y, dy, x=x)")
        ref, ref_name = _as_float(x, "x"), "x"
    else:
        ref, ref_name = _as_float(y, "y"), "y"
    dy = np.asarray(check_numeric(dy, "dy"), dtype=ref.dtype, order="C")
    if dy.shape != ref.shape:
        raise ValueError(f"dy must have the shape of {ref_name} {ref.shape}; got {dy.shape}")
    if act.needs_input:
        return act.backward(None, dy, out=np.empty_like(dy), x=ref)
    return act.backward(ref, dy, out=np.empty_like(dy))


def _unary(name):
    act = _activations.get(name)

    def forward(x):
        return _forward(act, x)

    def grad(y, dy, x=None):
        return _grad(act, y, dy, x)

    forward.__name__, grad.__name__ = name, name + "_grad"
    over = " over the last axis" if name in ("softmax", "log_softmax") else ""
    forward.__doc__ = f"{name} of x{over}; a new array."
    if act.needs_input:
        grad.__doc__ = (f"Gradient through {name}: dy * {name}'(x), given the forward input x "
                        f"(keyword x=; y, the output, is not used and may be None).")
    else:
        grad.__doc__ = (f"Gradient through {name}: dy * {name}'(x), given its output "
                        f"y = {name}(x) (x is not needed).")
    return forward, grad


linear, linear_grad = _unary("linear")
binary_step, binary_step_grad = _unary("binary_step")
sigmoid, sigmoid_grad = _unary("sigmoid")
hard_sigmoid, hard_sigmoid_grad = _unary("hard_sigmoid")
tanh, tanh_grad = _unary("tanh")
relu, relu_grad = _unary("relu")
selu, selu_grad = _unary("selu")
swish, swish_grad = _unary("swish")
silu, silu_grad = swish, swish_grad
mish, mish_grad = _unary("mish")
softplus, softplus_grad = _unary("softplus")
softsign, softsign_grad = _unary("softsign")
relu6, relu6_grad = _unary("relu6")
hard_tanh, hard_tanh_grad = _unary("hard_tanh")
exponential, exponential_grad = _unary("exponential")
hard_swish, hard_swish_grad = _unary("hard_swish")
hard_silu, hard_silu_grad = hard_swish, hard_swish_grad
softmax, softmax_grad = _unary("softmax")
log_softmax, log_softmax_grad = _unary("log_softmax")


def leaky_relu(x, negative_slope=0.2):
    """x where x > 0, else negative_slope * x; a new array."""
    return _forward(_activations.LeakyReLU(negative_slope), x)


def leaky_relu_grad(y, dy, x=None, negative_slope=0.2):
    """Gradient through leaky_relu, given its output y (x is not needed)."""
    return _grad(_activations.LeakyReLU(negative_slope), y, dy, x)


def elu(x, alpha=1.0):
    """x where x > 0, else alpha * (e^x - 1); a new array."""
    return _forward(_activations.ELU(alpha), x)


def elu_grad(y, dy, x=None, alpha=1.0):
    """Gradient through elu, given its output y (x is not needed)."""
    return _grad(_activations.ELU(alpha), y, dy, x)


def gelu(x, approximate=False):
    """x * Phi(x) (exact, erf), or its tanh approximation with approximate=True; a new array."""
    return _forward(_activations.GELU(approximate), x)


def gelu_grad(y, dy, x=None, approximate=False):
    """Gradient through gelu, given the forward input x (keyword x=; y is not used)."""
    return _grad(_activations.GELU(approximate), y, dy, x)


# ---------------------------------------------------------------------------------------
# Scaled dot-product attention (the fused kernel of cyneuron._kernels.attention)
# ---------------------------------------------------------------------------------------
# Tile sizes of the attention kernel: query rows per task and keys per score tile
# (measured on Zen 5, one thread, B=8 H=8 d=64: 128 x 256 beat 64 x 128 by 5-30%).
ATTENTION_TILES = (128, 256)


def _attention_operand(x, name, dtype):
    """x as an array of `dtype` whose last axis is contiguous (copied only if not)."""
    x = x.astype(dtype, copy=False)
    if x.ndim and ((x.shape[-1] > 1 and x.strides[-1] != x.itemsize)
                   or any(s % x.itemsize for s in x.strides)):
        x = np.ascontiguousarray(x)
    return x


def attention_mask(mask, lead, tq, tk):
    """A boolean attention mask (True: may attend) broadcast to lead + (tq, tk) and
    returned as a uint8 view of shape (B, H, tq, tk) (broadcast axes have stride 0)."""
    if mask is None:
        return None
    mask = check_numeric(mask, "mask")
    if mask.dtype.kind == "f":
        raise TypeError("mask must be boolean (True where a query may attend to a key); "
                        f"got dtype {mask.dtype.name!r} (additive float masks are not "
                        "supported)")
    target = tuple(lead) + (tq, tk)
    try:
        mask = np.broadcast_to(mask, target)
    except ValueError:
        raise ValueError(f"mask of shape {mask.shape} does not broadcast to "
                         f"(batch, heads, T_q, T_k) = {target}") from None
    if mask.dtype != np.bool_:
        mask = mask != 0
    mask = mask.view(np.uint8)
    while mask.ndim < 4:
        mask = mask[np.newaxis]
    return mask.reshape((-1,) + mask.shape[-3:]) if mask.ndim > 4 else mask


def _attention_args(q, k, v, mask, dropout, scale):
    q = check_numeric(q, "q")
    k = check_numeric(k, "k")
    v = check_numeric(v, "v")
    for x, name in ((q, "q"), (k, "k"), (v, "v")):
        if not 2 <= x.ndim <= 4:
            raise ValueError(f"{name} must have shape (batch, heads, T, d), (batch, T, d) or "
                             f"(T, d); got {x.shape}")
    if not q.ndim == k.ndim == v.ndim:
        raise ValueError(f"q, k and v must have the same rank; got {q.shape}, {k.shape}, "
                         f"{v.shape}")
    if k.shape[-1] != q.shape[-1]:
        raise ValueError(f"k's last axis ({k.shape[-1]}) must equal q's ({q.shape[-1]})")
    if k.shape[:-1] != v.shape[:-1]:
        raise ValueError(f"k {k.shape} and v {v.shape} must agree on all but the last axis")
    if q.shape[:-2] != k.shape[:-2]:
        raise ValueError(f"q {q.shape} and k {k.shape} must agree on the leading axes")
    if q.shape[-1] == 0 or k.shape[-2] == 0:
        raise ValueError("q and k need a feature axis of size >= 1 and at least one key")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float, np.floating)) \
            or not 0 <= dropout < 1:
        raise ValueError(f"dropout must be a number in [0, 1); got {dropout!r}")
    dtype = _result_dtype(q, k, v)
    lead = q.shape[:-2]
    tq, tk = q.shape[-2], k.shape[-2]
    if scale is None:
        scale = 1.0 / np.sqrt(q.shape[-1])
    elif isinstance(scale, bool) or not np.isfinite(scale):
        raise ValueError(f"scale must be a finite number or None; got {scale!r}")
    m = attention_mask(mask, lead, tq, tk)

    def four(x, name):
        x = _attention_operand(x, name, dtype)
        return x.reshape((1,) * (4 - x.ndim) + x.shape)
    return four(q, "q"), four(k, "k"), four(v, "v"), m, dtype, float(scale), lead


def _dropout_key(dropout, seed, name):
    if dropout == 0:
        return 0
    if seed is None:
        from ._random import get_rng
        return int(get_rng().integers(0, 2 ** 64, dtype=np.uint64))
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"{name} must be a non-negative int or None; got {seed!r}")
    return int(seed) % 2 ** 64


def scaled_dot_product_attention(q, k, v, mask=None, causal=False, dropout=0.0, scale=None,
                                 seed=None, return_lse=False):
    """softmax(q·kᵀ · scale, masked) · v in one fused kernel (the T_q × T_k matrix is
    never formed: online softmax over tiles of keys, OpenMP over batch × heads × tiles of
    query rows).

    q (batch, heads, T_q, d_k), k (batch, heads, T_k, d_k), v (batch, heads, T_k, d_v);
    also (batch, T, d) or (T, d). mask: boolean, broadcastable to
    (batch, heads, T_q, T_k), True where a query may attend to a key (as PyTorch's and
    Keras's boolean masks). causal: query i sees keys j <= i. A query that sees no key
    gets zeros. dropout: attention dropout rate applied to the softmax weights inside the
    kernel (counter-based draws from `seed`, or from the library generator when None).
    scale: default 1 / sqrt(d_k). return_lse: also return the row log-sum-exp
    (lead + (T_q,)), which `scaled_dot_product_attention_grad` needs.
    """
    from ._kernels import attention as _attn
    q4, k4, v4, m, dtype, scale, lead = _attention_args(q, k, v, mask, dropout, scale)
    key = _dropout_key(dropout, seed, "seed")
    out = np.empty(q4.shape[:3] + (v4.shape[3],), dtype)
    lse = np.empty(q4.shape[:3], dtype)
    _attn.forward(q4, k4, v4, out, lse, m, bool(causal), scale, float(dropout), key,
                  *ATTENTION_TILES)
    out = out.reshape(tuple(lead) + out.shape[2:])
    if return_lse:
        return out, lse.reshape(tuple(lead) + lse.shape[2:])
    return out


def scaled_dot_product_attention_grad(grad_output, q, k, v, output, lse, mask=None,
                                      causal=False, dropout=0.0, scale=None, seed=None):
    """(dq, dk, dv): the gradients of scaled_dot_product_attention given the gradient of
    its output, its output and its lse (return_lse=True), with the same mask, causal,
    dropout, scale and seed (dropout needs the seed the forward pass used). The
    attention weights are recomputed tile by tile (FlashAttention-2's backward)."""
    from ._kernels import attention as _attn
    q4, k4, v4, m, dtype, scale, lead = _attention_args(q, k, v, mask, dropout, scale)
    if dropout and seed is None:
        raise ValueError("seed: the backward pass of attention dropout needs the seed of "
                         "the forward pass")
    key = _dropout_key(dropout, seed, "seed")
    oshape = q4.shape[:3] + (v4.shape[3],)
    arrays = []
    for x, name, shape in ((grad_output, "grad_output", oshape), (output, "output", oshape),
                           (lse, "lse", q4.shape[:3])):
        x = check_numeric(x, name)
        if x.size != int(np.prod(shape)) or x.shape[-1:] != shape[-1:]:
            raise ValueError(f"{name} must have shape {tuple(lead) + shape[2:]}; "
                             f"got {x.shape}")
        arrays.append(np.ascontiguousarray(x, dtype=dtype).reshape(shape))
    g, o, lse4 = arrays
    dq = np.empty(q4.shape, dtype)
    dk = np.empty(k4.shape, dtype)
    dv = np.empty(v4.shape, dtype)
    _attn.backward(g, q4, k4, v4, o, lse4, dq, dk, dv, m, bool(causal), scale, float(dropout),
                   key, *ATTENTION_TILES)
    return (dq.reshape(tuple(lead) + dq.shape[2:]), dk.reshape(tuple(lead) + dk.shape[2:]),
            dv.reshape(tuple(lead) + dv.shape[2:]))
