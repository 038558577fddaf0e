"""Pooling layers on channels-last data (Keras names): MaxPooling1D/2D,
AveragePooling1D/2D, GlobalMaxPooling1D/2D, GlobalAveragePooling1D/2D.

The kernels (cyneuron._kernels.pooling) see every input as (N, H, W, C): 1-D
sequences as (N, 1, L, C), and a global pooling as one window over the whole
input. Padding follows TensorFlow: 'same' pads by its rule and the padded
positions are never pooled (max ignores them, the average counts only the
positions inside the input). Max pooling keeps, while training, the index of
each maximum for the backward pass.
"""
import numpy as np

from .._kernels import pooling as _k
from ._spatial import SpatialLayer, normalize_padding, normalize_tuple, output_size


class _Pooling(SpatialLayer):
    """A window slid over the spatial axes; `_max` picks max or average pooling."""

    _max = True

    def __init__(self, pool_size=2, strides=None, padding="valid", name=None, dtype=None):
        super().__init__(name=name, dtype=dtype)
        n = self.spatial_rank
        self.pool_size = normalize_tuple(pool_size, n, "pool_size")
        self.strides = self.pool_size if strides is None else normalize_tuple(strides, n,
                                                                               "strides")
        self.padding = normalize_padding(padding)
        self._plans = {}

    def _plan(self, input_shape):
        """((H, W), (OH, OW), window, strides, padding before) for one input size."""
        plan = self._plans.get(input_shape)
        if plan is not None:
            return plan
        self._check_rank(input_shape)
        axes = ("steps",) if self.spatial_rank == 1 else ("height", "width")
        out, before = zip(*(output_size(size, p, s, 1, self.padding, "pool_size", axis)
                            for size, p, s, axis in zip(input_shape[:-1], self.pool_size,
                                                        self.strides, axes)))
        one, zero = (1,) * (2 - self.spatial_rank), (0,) * (2 - self.spatial_rank)
        plan = (one + tuple(input_shape[:-1]), one + out, one + self.pool_size,
                one + self.strides, zero + before)
        self._plans[input_shape] = plan
        return plan

    def build(self, input_shape):
        input_shape = tuple(int(d) for d in input_shape)
        self._plan(input_shape)
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        out_hw = self._plan(tuple(int(d) for d in input_shape))[1]
        return out_hw[2 - self.spatial_rank:] + (int(input_shape[-1]),)

    def _forward(self, x, training):
        hw, out_hw, window, strides, padding = self._plan(x.shape[1:])
        n, c = x.shape[0], x.shape[-1]
        x4 = x.reshape((n,) + hw + (c,))
        y = self._buffer("y", (n,) + self.compute_output_shape(x.shape[1:]))
        y4 = y.reshape((n,) + out_hw + (c,))
        if self._max:
            argmax = self._argmax_buffer(y4.shape) if training else None
            _k.max_pool_forward(x4, y4, argmax, window, strides, padding)
            self._argmax = argmax
        else:
            _k.avg_pool_forward(x4, y4, window, strides, padding)
        self._x = x
        self._last_output_shape = y.shape
        return y

    def _argmax_buffer(self, shape):
        buf = self._buffers.get("argmax")
        if buf is None or buf.shape != shape:
            buf = self._buffers["argmax"] = np.empty(shape, np.int32)
        return buf

    def _backward(self, grad_output, need_input_grad):
        if not need_input_grad:
            return None
        x = self._x
        hw, out_hw, window, strides, padding = self._plan(x.shape[1:])
        n, c = x.shape[0], x.shape[-1]
        dy4 = grad_output.reshape((n,) + out_hw + (c,))
        dx = self._buffer("dx", x.shape)
        dx4 = dx.reshape((n,) + hw + (c,))
        if self._max:
            if self._argmax is None:  # the forward ran in inference mode: find the maxima now
                self._argmax = self._argmax_buffer(dy4.shape)
                _k.max_pool_forward(x.reshape((n,) + hw + (c,)), self._buffer("y_again", dy4.shape),
                                    self._argmax, window, strides, padding)
            tiled = (strides == window and padding == (0, 0)
                     and all(o * p == d for o, p, d in zip(out_hw, window, hw)))
            _k.max_pool_backward(dy4, self._argmax, dx4, window if tiled else None)
        else:
            _k.avg_pool_backward(dy4, dx4, window, strides, padding)
        return dx

    def get_config(self):
        return {"name": self.name, "pool_size": self.pool_size, "strides": self.strides,
                "padding": self.padding}


class MaxPooling2D(_Pooling):
    """Maximum over pool_size windows (default 2x2) moved by strides (default pool_size).
    padding 'valid' or 'same'. Input (N, H, W, C)."""

    spatial_rank = 2


class MaxPooling1D(_Pooling):
    """Maximum over windows of pool_size steps (default 2). Input (N, steps, C)."""

    spatial_rank = 1


class AveragePooling2D(_Pooling):
    """Mean over pool_size windows; with padding 'same' the padded positions are not
    counted. Input (N, H, W, C)."""

    spatial_rank = 2
    _max = False


class AveragePooling1D(_Pooling):
    """Mean over windows of pool_size steps. Input (N, steps, C)."""

    spatial_rank = 1
    _max = False


class _GlobalPooling(_Pooling):
    """One window over all spatial positions: (N, ..., C) -> (N, C), or keepdims."""

    def __init__(self, keepdims=False, name=None, dtype=None):
        SpatialLayer.__init__(self, name=name, dtype=dtype)
        self.keepdims = bool(keepdims)
        self._plans = {}

    def _plan(self, input_shape):
        self._check_rank(input_shape)
        hw = (1,) * (2 - self.spatial_rank) + tuple(input_shape[:-1])
        return hw, (1, 1), hw, hw, (0, 0)

    def compute_output_shape(self, input_shape):
        self._check_rank(input_shape)
        c = int(input_shape[-1])
        return (1,) * self.spatial_rank + (c,) if self.keepdims else (c,)

    def get_config(self):
        return {"name": self.name, "keepdims": self.keepdims}


class GlobalMaxPooling2D(_GlobalPooling):
    """Maximum over height and width: (N, H, W, C) -> (N, C) ((N, 1, 1, C) with keepdims)."""

    spatial_rank = 2


class GlobalMaxPooling1D(_GlobalPooling):
    """Maximum over the steps: (N, L, C) -> (N, C) ((N, 1, C) with keepdims)."""

    spatial_rank = 1


class GlobalAveragePooling2D(_GlobalPooling):
    """Mean over height and width: (N, H, W, C) -> (N, C) ((N, 1, 1, C) with keepdims)."""

    spatial_rank = 2
    _max = False


class GlobalAveragePooling1D(_GlobalPooling):
    """Mean over the steps: (N, L, C) -> (N, C) ((N, 1, C) with keepdims)."""

    spatial_rank = 1
    _max = False
