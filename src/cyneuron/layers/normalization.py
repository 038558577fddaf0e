"""Normalization layers (Keras names and defaults): BatchNormalization,
LayerNormalization, and input normalization (Normalization with adapt).

The kernels see batch data as a 3-D view (outer, C, inner) around the feature axis
(see cyneuron._kernels.normalization), so channels-last (N, H, W, C) and
channels-first (N, C, H, W) data take the same code path.
"""
import math
import numbers

import numpy as np

from .. import initializers
from .._kernels import normalization as _k
from .._validation import check_array
from .base import Layer


def _check_float(value, name, low, high=None, low_open=False):
    """A real number in [low, high] ((low, high] with low_open); else a ValueError naming it."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (high is None or value <= high)
    if not ok:
        bracket = "(" if low_open else "["
        upper = "inf)" if high is None else f"{high}]"
        raise ValueError(f"{name} must be a number in {bracket}{low}, {upper}; got {value!r}")
    return float(value)


def _check_axes(axis, ndim, layer_name, allow_none=False):
    """Normalize `axis` (an int or a sequence of ints, counted on the full batch shape
    of rank `ndim`) to a sorted tuple of positive axes, never the batch axis 0."""
    if axis is None and allow_none:
        return ()
    axes = (axis,) if isinstance(axis, numbers.Integral) and not isinstance(axis, bool) else axis
    try:
        axes = tuple(axes)
    except TypeError:
        axes = None
    if not axes or not all(isinstance(a, numbers.Integral) and not isinstance(a, bool) for a in axes):
        raise ValueError(f"layer {layer_name!r}: axis must be an int or a non-empty sequence of "
                         f"ints; got {axis!r}")
    result = []
    for a in axes:
        full = int(a) + ndim if a < 0 else int(a)
        if not 1 <= full < ndim:
            raise ValueError(f"layer {layer_name!r}: axis {a} is out of range for inputs of rank "
                             f"{ndim} (the batch axis 0 cannot be normalized over)")
        if full in result:
            raise ValueError(f"layer {layer_name!r}: axis {axis!r} repeats axis {a}")
        result.append(full)
    return tuple(sorted(result))


def _block_view(full_shape, axes, layer_name):
    """(outer, K, inner) for a contiguous block of `axes` of `full_shape` (K their size)."""
    if axes and list(axes) != list(range(axes[0], axes[-1] + 1)):
        raise ValueError(f"layer {layer_name!r}: the axes {axes} must be consecutive")
    first = axes[0] if axes else len(full_shape)
    last = axes[-1] + 1 if axes else len(full_shape)
    return (math.prod(full_shape[:first]), math.prod(full_shape[first:last]),
            math.prod(full_shape[last:]))


class BatchNormalization(Layer):
    """Normalize each feature (channel) with the statistics of the batch while training
    and with moving averages of them at inference; then scale by gamma and shift by beta.

    Training: y = gamma * (x - mean_B) / sqrt(var_B + epsilon) + beta, with mean_B and
    the biased var_B taken over every axis but `axis`; then
    moving = momentum * moving + (1 - momentum) * batch statistic.
    Inference: the same with moving_mean and moving_variance.
    Weights (Keras order): gamma (if scale), beta (if center), moving_mean and
    moving_variance (non-trainable), each of shape (channels,).
    """
    _regularizable = {"gamma": ("gamma",), "beta": ("beta",)}

    def __init__(self, axis=-1, momentum=0.99, epsilon=1e-3, center=True, scale=True,
                 beta_initializer="zeros", gamma_initializer="ones",
                 moving_mean_initializer="zeros", moving_variance_initializer="ones",
                 name=None, dtype=None):
        super().__init__(name=name, dtype=dtype)
        if not isinstance(axis, numbers.Integral) or isinstance(axis, bool):
            raise ValueError(f"axis must be an int; got {axis!r}")
        self.axis = int(axis)
        self.momentum = _check_float(momentum, "momentum", 0.0, 1.0)
        self.epsilon = _check_float(epsilon, "epsilon", 0.0, low_open=True)
        self.center = bool(center)
        self.scale = bool(scale)
        self.beta_initializer = initializers.get(beta_initializer)
        self.gamma_initializer = initializers.get(gamma_initializer)
        self.moving_mean_initializer = initializers.get(moving_mean_initializer)
        self.moving_variance_initializer = initializers.get(moving_variance_initializer)

    def build(self, input_shape):
        self._axis = _check_axes(self.axis, len(input_shape) + 1, self.name)[0]
        channels = (int(input_shape[self._axis - 1]),)
        if self.scale:
            self.add_weight("gamma", channels, self.gamma_initializer)
        if self.center:
            self.add_weight("beta", channels, self.beta_initializer)
        self.add_weight("moving_mean", channels, self.moving_mean_initializer, trainable=False)
        self.add_weight("moving_variance", channels, self.moving_variance_initializer,
                        trainable=False)
        super().build(input_shape)

    def _weight(self, name):
        return self._weights[self._weight_names.index(name)]

    def _grad(self, name):
        return self._gradients[self._weight_names.index(name)]

    def _const(self, key, value):
        """gamma = 1 / beta = 0 stand-ins when scale / center is off."""
        c = self._weight("moving_mean").shape[0]
        buf = self._buffers.get(key)
        if buf is None or buf.shape != (c,) or buf.dtype != self.dtype:
            buf = self._buffers[key] = np.full(c, value, self.dtype)
        return buf

    def _forward(self, x, training):
        # As Keras: a frozen BatchNormalization (trainable=False) runs in inference mode,
        # with its moving statistics, and leaves them unchanged (fine-tuning recipes).
        training = training and self.trainable
        outer, c, inner = _block_view(x.shape, (self._axis,), self.name)
        x3 = x.reshape(outer, c, inner)
        gamma = self._weight("gamma") if self.scale else self._const("ones", 1)
        beta = self._weight("beta") if self.center else self._const("zeros", 0)
        if training:
            mean, var = self._buffer("batch_mean", (c,)), self._buffer("batch_var", (c,))
            _k.batchnorm_stats(x3, mean, var)
            for moving, batch in ((self._weight("moving_mean"), mean),
                                  (self._weight("moving_variance"), var)):
                moving *= self.momentum
                moving += (1 - self.momentum) * batch
        else:
            mean, var = self._weight("moving_mean"), self._weight("moving_variance")
        # Fold the statistics into one multiply-add per element.
        scale = self._buffer("scale", (c,))
        np.divide(gamma, np.sqrt(var + self.epsilon), out=scale)
        shift = self._buffer("shift", (c,))
        np.subtract(beta, mean * scale, out=shift)
        out = self._buffer("y", x.shape)
        _k.channel_affine(x3, scale, shift, out.reshape(outer, c, inner))
        self._x, self._mean, self._var, self._training = x, mean, var, training
        self._last_output_shape = out.shape
        return out

    def _backward(self, grad_output, need_input_grad):
        x = self._x
        outer, c, inner = _block_view(x.shape, (self._axis,), self.name)
        x3, dy3 = x.reshape(outer, c, inner), grad_output.reshape(outer, c, inner)
        gamma = self._weight("gamma") if self.scale else self._const("ones", 1)
        dgamma = self._grad("gamma") if self.scale else self._buffer("dgamma", (c,))
        dbeta = self._grad("beta") if self.center else self._buffer("dbeta", (c,))
        dx = self._buffer("dx", x.shape) if need_input_grad else None
        if self._training:
            _k.batchnorm_backward(x3, dy3, self._mean, self._var, gamma, self.epsilon,
                                  dgamma, dbeta, None if dx is None else dx.reshape(outer, c, inner))
            return dx
        # Inference statistics are constants: the layer is a per-channel affine map.
        inv_std = 1 / np.sqrt(self._var.astype(np.float64) + self.epsilon)
        x_hat = (x3 - self._mean[:, None]) * inv_std[:, None].astype(self.dtype)
        dbeta[...] = dy3.sum(axis=(0, 2))
        dgamma[...] = (dy3 * x_hat).sum(axis=(0, 2))
        if dx is None:
            return None
        _k.channel_affine(dy3, self._buffers["scale"], self._const("zeros", 0),
                          dx.reshape(outer, c, inner))
        return dx

    @property
    def moving_mean(self):
        return self._weight("moving_mean")

    @property
    def moving_variance(self):
        return self._weight("moving_variance")

    def get_config(self):
        return {"name": self.name, "axis": self.axis, "momentum": self.momentum,
                "epsilon": self.epsilon, "center": self.center, "scale": self.scale}


class LayerNormalization(Layer):
    """Normalize each sample over `axis` (the last axis by default, or a block of
    trailing axes): y = gamma * (x - mean) / sqrt(var + epsilon) + beta, the same in
    training and at inference. gamma (if scale) and beta (if center) have the shape of
    the normalized axes."""
    _regularizable = {"gamma": ("gamma",), "beta": ("beta",)}

    def __init__(self, axis=-1, epsilon=1e-3, center=True, scale=True,
                 beta_initializer="zeros", gamma_initializer="ones", name=None, dtype=None):
        super().__init__(name=name, dtype=dtype)
        _check_axes(axis, 64, self.name)  # type check now; the range once the rank is known
        self.axis = axis
        self.epsilon = _check_float(epsilon, "epsilon", 0.0, low_open=True)
        self.center = bool(center)
        self.scale = bool(scale)
        self.beta_initializer = initializers.get(beta_initializer)
        self.gamma_initializer = initializers.get(gamma_initializer)

    def build(self, input_shape):
        ndim = len(input_shape) + 1
        axes = _check_axes(self.axis, ndim, self.name)
        if axes != tuple(range(ndim - len(axes), ndim)):
            raise ValueError(f"layer {self.name!r}: axis {self.axis!r} must be the last axis or "
                             f"a block of trailing axes of inputs of rank {ndim}")
        self._n_axes = len(axes)
        param_shape = tuple(int(d) for d in input_shape[len(input_shape) - len(axes):])
        if self.scale:
            self.add_weight("gamma", param_shape, self.gamma_initializer)
        if self.center:
            self.add_weight("beta", param_shape, self.beta_initializer)
        self._features = math.prod(param_shape)
        super().build(input_shape)

    def _const(self, key, value):
        buf = self._buffers.get(key)
        if buf is None or buf.shape != (self._features,) or buf.dtype != self.dtype:
            buf = self._buffers[key] = np.full(self._features, value, self.dtype)
        return buf

    def _gamma_beta(self):
        i = 0
        gamma = beta = None
        if self.scale:
            gamma, i = self._weights[0].reshape(-1), 1
        if self.center:
            beta = self._weights[i].reshape(-1)
        return (self._const("ones", 1) if gamma is None else gamma,
                self._const("zeros", 0) if beta is None else beta)

    def _forward(self, x, training):
        x2 = x.reshape(-1, self._features)
        rows = x2.shape[0]
        gamma, beta = self._gamma_beta()
        out = self._buffer("y", x.shape)
        self._mean, self._inv_std = self._buffer("mean", (rows,)), self._buffer("inv_std", (rows,))
        _k.layernorm_forward(x2, gamma, beta, self.epsilon, out.reshape(rows, -1),
                             self._mean, self._inv_std)
        self._x = x
        self._last_output_shape = out.shape
        return out

    def _backward(self, grad_output, need_input_grad):
        x2 = self._x.reshape(-1, self._features)
        gamma, _ = self._gamma_beta()
        grads = [g.reshape(-1) for g in self._gradients]
        dgamma = grads.pop(0) if self.scale else self._buffer("dgamma", (self._features,))
        dbeta = grads.pop(0) if self.center else self._buffer("dbeta", (self._features,))
        dx = self._buffer("dx", self._x.shape) if need_input_grad else None
        _k.layernorm_backward(x2, grad_output.reshape(x2.shape), gamma, self._mean,
                              self._inv_std, dgamma, dbeta,
                              None if dx is None else dx.reshape(x2.shape))
        return dx

    def get_config(self):
        axis = list(self.axis) if isinstance(self.axis, (tuple, list)) else self.axis
        return {"name": self.name, "axis": axis, "epsilon": self.epsilon,
                "center": self.center, "scale": self.scale}


class Normalization(Layer):
    """Input normalization: y = (x - mean) / sqrt(variance), per feature along `axis`.

    Set mean and variance in the constructor, or learn them from data with
    `adapt(X)`: per-feature mean and variance over every axis but `axis` (None: one
    scalar mean and variance over everything). invert=True maps back:
    y = mean + x * sqrt(variance). Like Keras, the standard deviation is floored at
    1e-7. mean and variance are the layer's non-trainable weights (get_weights order:
    mean, variance; shape: the sizes of the axes in `axis`); before adapt they are
    0 and 1, the identity.
    """

    STD_FLOOR = 1e-7

    def __init__(self, axis=-1, mean=None, variance=None, invert=False, name=None, dtype=None):
        super().__init__(name=name, dtype=dtype)
        if axis is not None:
            _check_axes(axis, 64, self.name)
        self.axis = axis
        self.invert = bool(invert)
        if (mean is None) != (variance is None):
            raise ValueError("give both mean and variance, or neither (and call adapt)")
        self._stats = None   # (mean, variance) as float64, waiting for build or copied in
        if mean is not None:
            mean = check_array(mean, "mean", np.float64, allow_empty=False)
            variance = check_array(variance, "variance", np.float64, allow_empty=False)
            if (variance < 0).any():
                raise ValueError("variance must be non-negative")
            self._stats = (mean, variance)

    def _kept(self, ndim):
        return _check_axes(self.axis, ndim, self.name, allow_none=True)

    def adapt(self, data):
        """Set mean and variance from `data` (samples first), per feature along `axis`."""
        data = check_array(data, "data", np.float64)
        if data.ndim < 2:
            raise ValueError(f"data must be at least 2-D (samples, features); got shape {data.shape}")
        if self.built and data.shape[1:] != self.input_shape:
            raise ValueError(f"data has per-sample shape {data.shape[1:]}; layer {self.name!r} "
                             f"was built for {self.input_shape}")
        kept = self._kept(data.ndim)
        outer, k, inner = _block_view(data.shape, kept, self.name)
        mean, var = np.empty(k), np.empty(k)
        _k.batchnorm_stats(data.reshape(outer, k, inner), mean, var)
        shape = tuple(data.shape[a] for a in kept)
        self._stats = (mean.reshape(shape), var.reshape(shape))
        if self.built:
            self._copy_stats()
        return self

    def build(self, input_shape):
        full = (1,) + tuple(input_shape)
        kept = self._kept(len(full))
        self._view = _block_view(full, kept, self.name)[1:]
        shape = tuple(full[a] for a in kept)
        self.add_weight("mean", shape, initializers.get("zeros"), trainable=False)
        self.add_weight("variance", shape, initializers.get("ones"), trainable=False)
        super().build(input_shape)
        if self._stats is not None:
            self._copy_stats()

    def _copy_stats(self):
        for name, current, new in zip(("mean", "variance"), self._weights, self._stats):
            try:
                current[...] = np.broadcast_to(new, current.shape)
            except ValueError:
                raise ValueError(f"layer {self.name!r}: {name} of shape {new.shape} does not fit "
                                 f"the axis sizes {current.shape} of inputs "
                                 f"{self.input_shape}") from None

    def _scale_shift(self):
        """(scale, shift) with y = x * scale + shift, flat over the kept axes."""
        std = np.maximum(np.sqrt(self._weights[1].reshape(-1)), self.STD_FLOOR)
        mean = self._weights[0].reshape(-1)
        scale, shift = self._buffer("scale", std.shape), self._buffer("shift", std.shape)
        if self.invert:
            scale[...], shift[...] = std, mean
        else:
            np.divide(1, std, out=scale)
            np.multiply(-mean, scale, out=shift)
        return scale, shift

    def _forward(self, x, training):
        k, inner = self._view
        scale, shift = self._scale_shift()
        out = self._buffer("y", x.shape)
        view = (-1, k, inner)
        _k.channel_affine(x.reshape(view), scale, shift, out.reshape(view))
        self._last_output_shape = out.shape
        return out

    def _backward(self, grad_output, need_input_grad):
        if not need_input_grad:
            return None
        k, inner = self._view
        scale, _ = self._scale_shift()
        dx = self._buffer("dx", grad_output.shape)
        zeros = self._buffer("zeros", scale.shape)
        zeros.fill(0)
        view = (-1, k, inner)
        _k.channel_affine(grad_output.reshape(view), scale, zeros, dx.reshape(view))
        return dx

    @property
    def mean(self):
        return self._weights[0] if self.built else None

    @property
    def variance(self):
        return self._weights[1] if self.built else None

    def get_config(self):
        axis = list(self.axis) if isinstance(self.axis, (tuple, list)) else self.axis
        return {"name": self.name, "axis": axis, "invert": self.invert}
