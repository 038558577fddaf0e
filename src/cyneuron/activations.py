"""Activation functions, usable by name in any layer's `activation=` argument.

Each activation maps x to y = f(x) and back-propagates dx = dy * f'(x) with
`backward(y, dy, out=None, x=None)`. Most derivatives are a closed form of the
forward *output* y, so layers keep only y (and may compute y in place over x).
Activations whose derivative is not a stable closed form of y (gelu, swish,
mish, softsign, hard_swish) set `needs_input = True`: their backward reads the forward
*input* x instead (y may then be None), so layers keep x as well.

Both methods take C-contiguous float32/float64 arrays and accept `out=` (which
may be the input itself: the kernels run in place).

`binary_step` has a zero derivative wherever it has one: nothing flows back
through it, so it suits perceptron-style outputs, not gradient training.
"""
import numbers

import numpy as np

from ._kernels import activations as _k
from ._registry import Registry

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


class Activation:
    """Base class: subclasses set `name` and implement `forward` / `backward`."""

    name = None
    needs_input = False   # True: backward needs the forward input x, not only y

    def __call__(self, x):
        x = np.asarray(x)
        dtype = x.dtype if x.dtype in (np.float32, np.float64) else np.float64
        return self.forward(np.ascontiguousarray(x, dtype=dtype))

    def forward(self, x, out=None):
        raise NotImplementedError

    def backward(self, y, dy, out=None, x=None):
        raise NotImplementedError

    def get_config(self):
        return {"name": self.name}

    def __repr__(self):
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "name")
        return f"{type(self).__name__}({params})"


def _out_like(x, out):
    return np.empty_like(x) if out is None else out


class _Elementwise(Activation):
    """An activation computed by a pair of flat element-wise kernels.

    The backward kernel reads y, or x when `needs_input`; `_args()` are the extra
    scalar parameters both kernels take.
    """

    _forward_kernel = None
    _backward_kernel = None

    def _args(self):
        return ()

    def forward(self, x, out=None):
        out = _out_like(x, out)
        type(self)._forward_kernel(x.reshape(-1), out.reshape(-1), *self._args())
        return out

    def backward(self, y, dy, out=None, x=None):
        source = _require_input(self, x) if self.needs_input else y
        out = _out_like(dy, out)
        type(self)._backward_kernel(source.reshape(-1), dy.reshape(-1), out.reshape(-1),
                                    *self._args())
        return out


def _require_input(activation, x):
    if x is None:
        raise ValueError(f"{activation.name}: backward needs the forward input x "
                         f"(needs_input=True): call backward(y, dy, x=x)")
    return x


def _check_param(value, name, minimum=None):
    """A finite real number (>= minimum when given), as a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return float(value)


class Linear(Activation):
    """Identity: y = x."""

    name = "linear"

    def forward(self, x, out=None):
        if out is None or out is x:
            return x
        np.copyto(out, x)
        return out

    def backward(self, y, dy, out=None, x=None):
        if out is None or out is dy:
            return dy
        np.copyto(out, dy)
        return out


class BinaryStep(_Elementwise):
    """y = 1 where x >= 0, else 0 (threshold 0). Its gradient is zero everywhere
    (undefined at 0): it trains nothing by backpropagation; use it for perceptrons."""

    name = "binary_step"
    _forward_kernel = _k.binary_step_forward
    _backward_kernel = _k.binary_step_backward


class Sigmoid(_Elementwise):
    """y = 1 / (1 + e^-x), stable for large |x|."""

    name = "sigmoid"
    _forward_kernel = _k.sigmoid_forward
    _backward_kernel = _k.sigmoid_backward


class HardSigmoid(_Elementwise):
    """y = clip(x / 6 + 1/2, 0, 1) (Keras 3 and PyTorch's definition)."""

    name = "hard_sigmoid"
    _forward_kernel = _k.hard_sigmoid_forward
    _backward_kernel = _k.hard_sigmoid_backward


class Tanh(_Elementwise):
    name = "tanh"
    _forward_kernel = _k.tanh_forward
    _backward_kernel = _k.tanh_backward


class ReLU(_Elementwise):
    """y = max(x, 0); the derivative at 0 is 0."""

    name = "relu"
    _forward_kernel = _k.relu_forward
    _backward_kernel = _k.relu_backward


class LeakyReLU(_Elementwise):
    """y = x for x > 0, negative_slope * x otherwise (negative_slope >= 0; Keras's
    function default 0.2; the layer `layers.LeakyReLU` defaults to 0.3 as in Keras)."""

    name = "leaky_relu"
    _forward_kernel = _k.leaky_relu_forward
    _backward_kernel = _k.leaky_relu_backward

    def __init__(self, negative_slope=0.2):
        self.negative_slope = _check_param(negative_slope, "negative_slope", minimum=0)

    def _args(self):
        return (self.negative_slope,)

    def get_config(self):
        return {"name": self.name, "negative_slope": self.negative_slope}


class ELU(_Elementwise):
    """y = x for x > 0, alpha * (e^x - 1) otherwise (alpha >= 0)."""

    name = "elu"
    _forward_kernel = _k.elu_forward
    _backward_kernel = _k.elu_backward

    def __init__(self, alpha=1.0):
        self.alpha = _check_param(alpha, "alpha", minimum=0)

    def _args(self):
        return (self.alpha, 1.0)

    def get_config(self):
        return {"name": self.name, "alpha": self.alpha}


class SELU(_Elementwise):
    """Scaled ELU with the self-normalising constants of Klambauer et al. (2017)."""

    name = "selu"
    _forward_kernel = _k.elu_forward
    _backward_kernel = _k.elu_backward

    def _args(self):
        return (SELU_ALPHA, SELU_SCALE)


class Softplus(_Elementwise):
    """y = log(1 + e^x); its derivative sigmoid(x) = 1 - e^-y is taken from y."""

    name = "softplus"
    _forward_kernel = _k.softplus_forward
    _backward_kernel = _k.softplus_backward


class ReLU6(_Elementwise):
    """y = min(max(x, 0), 6); the derivative is 0 at both kinks."""

    name = "relu6"
    _forward_kernel = _k.relu6_forward
    _backward_kernel = _k.relu6_backward


class HardTanh(_Elementwise):
    """y = clip(x, -1, 1)."""

    name = "hard_tanh"
    _forward_kernel = _k.hard_tanh_forward
    _backward_kernel = _k.hard_tanh_backward


class Exponential(_Elementwise):
    """y = e^x (its derivative is y itself). It overflows to inf for x above
    log(max float) (about 88.7 in float32, 709.8 in float64), as exp does."""

    name = "exponential"
    _forward_kernel = _k.exponential_forward
    _backward_kernel = _k.exponential_backward


class HardSwish(_Elementwise):
    """y = x * relu6(x + 3) / 6 = x * hard_sigmoid(x) (MobileNetV3; Keras and PyTorch)."""

    name = "hard_swish"
    needs_input = True
    _forward_kernel = _k.hard_swish_forward
    _backward_kernel = _k.hard_swish_backward


class Softsign(_Elementwise):
    """y = x / (1 + |x|)."""

    name = "softsign"
    needs_input = True
    _forward_kernel = _k.softsign_forward
    _backward_kernel = _k.softsign_backward


class GELU(_Elementwise):
    """Gaussian error linear unit: x * Phi(x), exact (erf) by default; with
    approximate=True the tanh form 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))),
    named "gelu_tanh"."""

    name = "gelu"
    needs_input = True

    def __init__(self, approximate=False):
        if not isinstance(approximate, (bool, np.bool_)):
            raise ValueError(f"approximate must be True or False, got {approximate!r}")
        self.approximate = bool(approximate)
        self.name = "gelu_tanh" if self.approximate else "gelu"

    def forward(self, x, out=None):
        kernel = _k.gelu_tanh_forward if self.approximate else _k.gelu_forward
        out = _out_like(x, out)
        kernel(x.reshape(-1), out.reshape(-1))
        return out

    def backward(self, y, dy, out=None, x=None):
        x = _require_input(self, x)
        kernel = _k.gelu_tanh_backward if self.approximate else _k.gelu_backward
        out = _out_like(dy, out)
        kernel(x.reshape(-1), dy.reshape(-1), out.reshape(-1))
        return out

    def get_config(self):
        return {"name": "gelu", "approximate": self.approximate}


class GELUTanh(GELU):
    """GELU(approximate=True), by its registry name "gelu_tanh"."""

    name = "gelu_tanh"

    def __init__(self):
        super().__init__(approximate=True)


class Swish(_Elementwise):
    """y = x * sigmoid(x) (Swish with beta 1, also called SiLU)."""

    name = "swish"
    needs_input = True
    _forward_kernel = _k.swish_forward
    _backward_kernel = _k.swish_backward


class Mish(_Elementwise):
    """y = x * tanh(softplus(x)) (Misra, 2019)."""

    name = "mish"
    needs_input = True
    _forward_kernel = _k.mish_forward
    _backward_kernel = _k.mish_backward


class _RowWise(Activation):
    """An activation over the last axis: kernels take the array as rows."""

    _forward_kernel = None
    _backward_kernel = None

    def _check_rank(self, x):
        if x.ndim == 0:
            raise ValueError(f"{self.name} needs at least 1-D input (it runs over the last axis)")

    def forward(self, x, out=None):
        self._check_rank(x)
        out = _out_like(x, out)
        if x.size == 0:
            return out
        c = x.shape[-1]
        type(self)._forward_kernel(x.reshape(-1, c), out.reshape(-1, c))
        return out

    def backward(self, y, dy, out=None, x=None):
        self._check_rank(y)
        out = _out_like(dy, out)
        if y.size == 0:
            return out
        c = y.shape[-1]
        type(self)._backward_kernel(y.reshape(-1, c), dy.reshape(-1, c), out.reshape(-1, c))
        return out


class Softmax(_RowWise):
    """Softmax over the last axis."""

    name = "softmax"
    _forward_kernel = _k.softmax_forward
    _backward_kernel = _k.softmax_backward


class LogSoftmax(_RowWise):
    """log(softmax(x)) over the last axis, computed as x - logsumexp(x)."""

    name = "log_softmax"
    _forward_kernel = _k.log_softmax_forward
    _backward_kernel = _k.log_softmax_backward


_CLASSES = (Linear, BinaryStep, Sigmoid, HardSigmoid, Tanh, ReLU, LeakyReLU, ELU, SELU, GELU,
            GELUTanh, Swish, Mish, Softplus, Softsign, ReLU6, HardTanh, Exponential, HardSwish,
            Softmax, LogSoftmax)
_REGISTRY = Registry("activation", Activation, _CLASSES,
                     aliases={"identity": "linear", None: "linear", "silu": "swish",
                              "gelu_approximate": "gelu_tanh", "hard_silu": "hard_swish"})


def names():
    """Names accepted by `get`."""
    return _REGISTRY.names()


def get(identifier):
    """An Activation from a name, an Activation instance or class, None (linear), or
    a config dict such as {"name": "leaky_relu", "negative_slope": 0.1}."""
    if isinstance(identifier, dict):
        config = dict(identifier)
        name = config.pop("name", None)
        if not isinstance(name, str):
            raise ValueError(f"an activation config needs a 'name'; got {identifier!r}")
        cls = type(_REGISTRY.get(name))
        try:
            return cls(**config)
        except TypeError:
            raise ValueError(f"unknown parameters for activation {name!r}: "
                             f"{sorted(config)}") from None
    return _REGISTRY.get(identifier)


def serialize(activation):
    """The name, or the config dict when the activation has non-default parameters."""
    config = activation.get_config()
    try:
        default = get(activation.name).get_config()
    except ValueError:          # a user-defined activation not in the registry
        return config
    return activation.name if config == default else config
