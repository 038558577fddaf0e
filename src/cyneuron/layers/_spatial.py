"""Shared pieces of the convolution and pooling layers: argument checks, TensorFlow's
output-size and padding rules, and the channels-last input check.

Output size along one axis of `size` positions, for a window of `window` positions
dilated by `dilation` (it spans (window - 1) * dilation + 1) and a stride:

    valid:  floor((size - span) / stride) + 1        (no padding; span <= size)
    same:   ceil(size / stride), padded with max((out - 1) * stride + span - size, 0)
            zeros, the smaller half before, the larger half after (TensorFlow's rule)
    causal: ceil(size / stride), span - 1 zeros before (Conv1D only)
"""
import numbers

import numpy as np

from .._validation import check_numeric
from .base import Layer


def normalize_tuple(value, n, name):
    """A positive int or a sequence of `n` positive ints, as a tuple of `n` ints."""
    items = (value,) * n if isinstance(value, numbers.Integral) else value
    try:
        items = tuple(items)
    except TypeError:
        items = ()
    if len(items) != n or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool)
                                  and v > 0 for v in items):
        what = "a positive int" if n == 1 else f"a positive int or a tuple of {n} positive ints"
        raise ValueError(f"{name} must be {what}; got {value!r}")
    return tuple(int(v) for v in items)


def normalize_padding(value, allowed=("valid", "same")):
    """A padding name, lower-cased, from `allowed`."""
    key = value.lower() if isinstance(value, str) else value
    if key not in allowed:
        raise ValueError(f"padding must be one of {', '.join(map(repr, allowed))}; got {value!r}")
    return key


def output_size(size, window, stride, dilation, padding, window_name, axis_name):
    """(output positions, padding before) along one axis; a ValueError naming
    `window_name` when the window is larger than the (padded) input."""
    span = (window - 1) * dilation + 1
    if padding == "same":
        out = -(-size // stride)
        return out, max((out - 1) * stride + span - size, 0) // 2
    if padding == "causal":
        return -(-size // stride), span - 1
    if span > size:
        dilated = f" (dilated by {dilation}: {span} positions)" if dilation > 1 else ""
        raise ValueError(f"{window_name} {window}{dilated} is larger than the input's {size} "
                         f"positions along {axis_name} with padding 'valid'; use a smaller "
                         f"{window_name} or padding='same'")
    return (size - span) // stride + 1, 0


class SpatialLayer(Layer):
    """A layer on channels-last data of `spatial_rank` spatial axes: (N, L, C) or
    (N, H, W, C). Like Keras, a built layer accepts any spatial size; the rank and
    the channel count must match what it was built for."""

    spatial_rank = 2

    @property
    def _layout(self):
        return "(batch, steps, channels)" if self.spatial_rank == 1 else \
            "(batch, height, width, channels)"

    def _check_rank(self, input_shape):
        if len(input_shape) != self.spatial_rank + 1:
            raise ValueError(f"{type(self).__name__} {self.name!r} expects "
                             f"{self.spatial_rank + 2}-D input x {self._layout}; got per-sample "
                             f"shape {tuple(input_shape)} ({len(input_shape) + 1}-D with the batch)")

    def _check_input(self, x):
        x = check_numeric(x, "x")
        self._check_rank(x.shape[1:])
        if x.shape[0] == 0 or x.size == 0:
            raise ValueError(f"layer {self.name!r}: x is empty (shape {x.shape})")
        if not self.built:
            self._build_standalone(x)
        elif x.shape[-1] != self.input_shape[-1]:
            raise ValueError(f"layer {self.name!r} was built for inputs with "
                             f"{self.input_shape[-1]} channels (the last axis of x); got x of "
                             f"shape {x.shape} with {x.shape[-1]}")
        else:
            self.compute_output_shape(x.shape[1:])  # a window larger than the input raises
        return np.ascontiguousarray(x, dtype=self.dtype)
