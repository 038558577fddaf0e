"""Layers that move data without arithmetic: Flatten, Reshape, ZeroPadding2D.

Flatten and Reshape return views of their (C-contiguous) input and gradient, so
they cost nothing; the element order is C order, as in Keras on channels-last data.
"""
import math
import numbers

import numpy as np

from .base import Layer


class Flatten(Layer):
    """(N, d1, d2, ...) -> (N, d1 * d2 * ...)."""

    def build(self, input_shape):
        if len(input_shape) < 1:
            raise ValueError(f"Flatten {self.name!r} needs inputs with a batch axis")
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        return (math.prod(int(d) for d in input_shape),)

    def _forward(self, x, training):
        self._x_shape = x.shape
        y = x.reshape(x.shape[0], -1)
        self._last_output_shape = y.shape
        return y

    def _backward(self, grad_output, need_input_grad):
        return grad_output.reshape(self._x_shape) if need_input_grad else None


class Reshape(Layer):
    """Reshape each sample to `target_shape` (without the batch axis; one entry may
    be -1, inferred from the others), as keras.layers.Reshape."""

    def __init__(self, target_shape, name=None, dtype=None):
        super().__init__(name=name, dtype=dtype)
        try:
            target = tuple(target_shape)
        except TypeError:
            target = None
        if not target or not all(isinstance(d, numbers.Integral) and not isinstance(d, bool)
                                 and (d > 0 or d == -1) for d in target) \
                or sum(d == -1 for d in target) > 1:
            raise ValueError("target_shape must be a non-empty tuple of positive ints, with at "
                             f"most one -1; got {target_shape!r}")
        self.target_shape = tuple(int(d) for d in target)

    def compute_output_shape(self, input_shape):
        size = math.prod(int(d) for d in input_shape)
        known = math.prod(d for d in self.target_shape if d != -1)
        if -1 in self.target_shape:
            if size % known:
                raise ValueError(f"Reshape {self.name!r}: cannot reshape per-sample shape "
                                 f"{tuple(input_shape)} ({size} values) to target_shape "
                                 f"{self.target_shape}")
            return tuple(size // known if d == -1 else d for d in self.target_shape)
        if known != size:
            raise ValueError(f"Reshape {self.name!r}: target_shape {self.target_shape} holds "
                             f"{known} values but each input sample has {size} "
                             f"(shape {tuple(input_shape)})")
        return self.target_shape

    def build(self, input_shape):
        self._output_shape = self.compute_output_shape(input_shape)
        super().build(input_shape)

    def _forward(self, x, training):
        self._x_shape = x.shape
        y = x.reshape((x.shape[0],) + self._output_shape)
        self._last_output_shape = y.shape
        return y

    def _backward(self, grad_output, need_input_grad):
        return grad_output.reshape(self._x_shape) if need_input_grad else None

    def get_config(self):
        return {"name": self.name, "target_shape": self.target_shape}


class ZeroPadding2D(Layer):
    """Pad (N, H, W, C) images with rows and columns of zeros.

    padding: an int (the same on all four sides), a pair (rows, columns) padded on
    both sides, or ((top, bottom), (left, right)).
    """

    def __init__(self, padding=(1, 1), name=None, dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.padding = self._normalize(padding)

    @staticmethod
    def _normalize(padding):
        def count(v):
            return isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 0

        try:
            if count(padding):
                return ((int(padding),) * 2,) * 2
            rows, cols = padding
            if count(rows) and count(cols):
                return ((int(rows),) * 2, (int(cols),) * 2)
            (top, bottom), (left, right) = rows, cols
            if all(count(v) for v in (top, bottom, left, right)):
                return ((int(top), int(bottom)), (int(left), int(right)))
        except (TypeError, ValueError):
            pass
        raise ValueError("padding must be a non-negative int, a pair (rows, columns), or "
                         f"((top, bottom), (left, right)) of non-negative ints; got {padding!r}")

    def build(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"ZeroPadding2D {self.name!r} expects 4-D input x "
                             f"(batch, height, width, channels); got per-sample shape "
                             f"{tuple(input_shape)}")
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        (top, bottom), (left, right) = self.padding
        h, w, c = (int(d) for d in input_shape)
        return (h + top + bottom, w + left + right, c)

    def _forward(self, x, training):
        shape = (x.shape[0],) + self.compute_output_shape(x.shape[1:])
        before = self._buffers.get("y")
        y = self._buffer("y", shape)
        if y is not before:  # a new buffer: its border is zeroed once, later calls refill the inside
            y.fill(0)
        (top, _), (left, _) = self.padding
        y[:, top:top + x.shape[1], left:left + x.shape[2], :] = x
        self._x_shape = x.shape
        self._last_output_shape = y.shape
        return y

    def _backward(self, grad_output, need_input_grad):
        if not need_input_grad:
            return None
        (top, _), (left, _) = self.padding
        _, h, w, _ = self._x_shape
        dx = self._buffer("dx", self._x_shape)
        np.copyto(dx, grad_output[:, top:top + h, left:left + w, :])
        return dx

    def get_config(self):
        return {"name": self.name, "padding": self.padding}
