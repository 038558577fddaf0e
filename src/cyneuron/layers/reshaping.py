"""Layers that move data: Flatten, Reshape, ZeroPadding2D, Cropping1D/2D, Permute,
RepeatVector, UpSampling1D/2D.

Flatten and Reshape return views of their (C-contiguous) input and gradient, so
they cost nothing; the element order is C order, as in Keras on channels-last data.
"""
import math
import numbers

import numpy as np

from .._kernels import pooling as _k
from ._spatial import SpatialLayer, normalize_tuple
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


def _count(v):
    return isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 0


def _positive(v):
    return isinstance(v, numbers.Integral) and not isinstance(v, bool) and v > 0


class RepeatVector(Layer):
    """(N, features) -> (N, n, features): each sample repeated n times (Keras), e.g.
    to feed one encoding to every step of a decoder RNN. Backward sums over the copies."""

    def __init__(self, n, name=None, dtype=None):
        super().__init__(name=name, dtype=dtype)
        if not _positive(n):
            raise ValueError(f"n must be a positive int; got {n!r}")
        self.n = int(n)

    def build(self, input_shape):
        if len(input_shape) != 1:
            raise ValueError(f"RepeatVector {self.name!r} expects 2-D input x (batch, features); "
                             f"got per-sample shape {tuple(input_shape)}")
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        return (self.n, int(input_shape[0]))

    def _forward(self, x, training):
        y = self._buffer("y", (x.shape[0], self.n, x.shape[1]))
        np.copyto(y, x[:, None, :])
        self._last_output_shape = y.shape
        return y

    def _backward(self, grad_output, need_input_grad):
        if not need_input_grad:
            return None
        dx = self._buffer("dx", (grad_output.shape[0], grad_output.shape[2]))
        return np.sum(grad_output, axis=1, out=dx)

    def get_config(self):
        return {"name": self.name, "n": self.n}


class Permute(Layer):
    """Permute the non-batch axes: dims is a permutation of 1..rank (1-indexed, the
    batch axis 0 stays first), as keras.layers.Permute; Permute((2, 1)) swaps the two
    axes of (N, a, b) data. The output is a contiguous copy (the next layer reads rows)."""

    def __init__(self, dims, name=None, dtype=None):
        super().__init__(name=name, dtype=dtype)
        try:
            axes = tuple(dims)
        except TypeError:
            axes = None
        if not axes or not all(_positive(d) for d in axes) \
                or sorted(int(d) for d in axes) != list(range(1, len(axes) + 1)):
            raise ValueError(f"dims must be a permutation of 1..rank (the axes after the batch "
                             f"axis, counting from 1), e.g. (2, 1); got {dims!r}")
        self.dims = tuple(int(d) for d in axes)
        self._inverse = (0,) + tuple(int(i) + 1 for i in np.argsort(self.dims))

    def build(self, input_shape):
        if len(input_shape) != len(self.dims):
            raise ValueError(f"Permute {self.name!r}: dims {self.dims} permute {len(self.dims)} "
                             f"axes but the input has per-sample shape {tuple(input_shape)}")
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        return tuple(int(input_shape[d - 1]) for d in self.dims)

    def _forward(self, x, training):
        y = self._buffer("y", (x.shape[0],) + self.compute_output_shape(x.shape[1:]))
        np.copyto(y, x.transpose((0,) + self.dims))
        self._x_shape = x.shape
        self._last_output_shape = y.shape
        return y

    def _backward(self, grad_output, need_input_grad):
        if not need_input_grad:
            return None
        dx = self._buffer("dx", self._x_shape)
        np.copyto(dx, grad_output.transpose(self._inverse))
        return dx

    def get_config(self):
        return {"name": self.name, "dims": self.dims}


def _crop_pair(value, name):
    """An int (both ends) or a pair (before, after) of non-negative ints."""
    if _count(value):
        return (int(value),) * 2
    try:
        before, after = value
    except (TypeError, ValueError):
        before = after = None
    if _count(before) and _count(after):
        return (int(before), int(after))
    raise ValueError(f"{name} must be a non-negative int or a pair (before, after) of "
                     f"non-negative ints; got {value!r}")


class _Cropping(SpatialLayer):
    """Shared by Cropping1D and Cropping2D: `self.cropping` holds one (before, after)
    pair per spatial axis of channels-last data. Like Keras, a built layer takes any
    spatial size that leaves at least one position."""

    def build(self, input_shape):
        self._check_rank(input_shape)
        self.compute_output_shape(input_shape)
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        shape = [int(d) for d in input_shape]
        axes = ("steps",) if self.spatial_rank == 1 else ("height", "width")
        for i, ((before, after), axis) in enumerate(zip(self.cropping, axes)):
            if before + after >= shape[i]:
                raise ValueError(f"{type(self).__name__} {self.name!r}: cropping {self.cropping} "
                                 f"removes {before + after} of the {shape[i]} positions along "
                                 f"{axis}; at least one must remain")
            shape[i] -= before + after
        return tuple(shape)

    def _window(self, shape):
        """The slice of a full (N, ..., C) array that the output keeps."""
        return (slice(None),) + tuple(slice(b, size - a) for (b, a), size
                                      in zip(self.cropping, shape[1:])) + (slice(None),)

    def _forward(self, x, training):
        y = self._buffer("y", (x.shape[0],) + self.compute_output_shape(x.shape[1:]))
        np.copyto(y, x[self._window(x.shape)])
        self._x_shape = x.shape
        self._last_output_shape = y.shape
        return y

    def _backward(self, grad_output, need_input_grad):
        if not need_input_grad:
            return None
        dx = self._buffer("dx", self._x_shape)
        # zero only the cropped borders (every call: a graph may sum into dx in place)
        for axis, (before, after) in enumerate(self.cropping, start=1):
            index = [slice(None)] * dx.ndim
            index[axis] = slice(0, before)
            dx[tuple(index)] = 0
            index[axis] = slice(dx.shape[axis] - after, dx.shape[axis])
            dx[tuple(index)] = 0
        np.copyto(dx[self._window(self._x_shape)], grad_output)
        return dx


class Cropping1D(_Cropping):
    """Crop (N, steps, C) sequences along the steps axis. cropping: an int (both ends)
    or a pair (start, end); Keras's default (1, 1)."""

    spatial_rank = 1

    def __init__(self, cropping=(1, 1), name=None, dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.cropping = (_crop_pair(cropping, "cropping"),)

    def get_config(self):
        return {"name": self.name, "cropping": self.cropping[0]}


class Cropping2D(_Cropping):
    """Crop (N, H, W, C) images. cropping: an int (all four sides), a pair
    (rows, columns) cropped on both sides, or ((top, bottom), (left, right)); Keras's
    default ((0, 0), (0, 0))."""

    spatial_rank = 2

    def __init__(self, cropping=((0, 0), (0, 0)), name=None, dtype=None):
        super().__init__(name=name, dtype=dtype)
        try:
            if _count(cropping):
                pairs = ((int(cropping),) * 2,) * 2
            else:
                rows, cols = cropping
                pairs = (_crop_pair(rows, "cropping"), _crop_pair(cols, "cropping"))
        except (TypeError, ValueError):
            raise ValueError("cropping must be a non-negative int, a pair (rows, columns), or "
                             f"((top, bottom), (left, right)) of non-negative ints; got "
                             f"{cropping!r}") from None
        self.cropping = pairs

    def get_config(self):
        return {"name": self.name, "cropping": self.cropping}


class UpSampling1D(SpatialLayer):
    """(N, steps, C) -> (N, steps * size, C): each step repeated `size` times (Keras).
    Backward sums the gradient over each step's copies."""

    spatial_rank = 1

    def __init__(self, size=2, name=None, dtype=None):
        super().__init__(name=name, dtype=dtype)
        if not _positive(size):
            raise ValueError(f"size must be a positive int; got {size!r}")
        self.size = int(size)

    def build(self, input_shape):
        self._check_rank(input_shape)
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        steps, channels = (int(d) for d in input_shape)
        return (steps * self.size, channels)

    def _forward(self, x, training):
        n, steps, c = x.shape
        y = self._buffer("y", (n, steps * self.size, c))
        _k.upsample_nearest(x.reshape(n, 1, steps, c), y.reshape(n, 1, -1, c), 1, self.size)
        self._x_shape = x.shape
        self._last_output_shape = y.shape
        return y

    def _backward(self, grad_output, need_input_grad):
        if not need_input_grad:
            return None
        n, steps, c = self._x_shape
        dx = self._buffer("dx", self._x_shape)
        _k.upsample_nearest_backward(grad_output.reshape(n, 1, -1, c), dx.reshape(n, 1, steps, c),
                                     1, self.size)
        return dx

    def get_config(self):
        return {"name": self.name, "size": self.size}


def _bilinear_taps(size, scale):
    """(lo, hi, frac) of 1-D linear interpolation with half-pixel centres (TensorFlow's
    and PyTorch's align_corners=False rule): output o reads the input at
    (o + 0.5) / scale - 0.5, clamped to [0, size - 1], as (1 - frac) x[lo] + frac x[hi]."""
    src = np.clip((np.arange(size * scale) + 0.5) / scale - 0.5, 0, size - 1)
    lo = np.floor(src).astype(np.intp)
    hi = np.minimum(lo + 1, size - 1)
    return lo, hi, src - lo


def _adjoint_taps(lo, hi, frac, size):
    """The taps transposed, by input index (CSR): (pointers, output indices, weights),
    zero weights dropped, for the gathering backward pass."""
    out = np.arange(len(lo))
    inputs = np.concatenate([lo, hi])
    outputs = np.concatenate([out, out])
    weights = np.concatenate([1 - frac, frac])
    keep = weights != 0
    inputs, outputs, weights = inputs[keep], outputs[keep], weights[keep]
    order = np.lexsort((outputs, inputs))
    ptr = np.zeros(size + 1, np.intp)
    np.cumsum(np.bincount(inputs, minlength=size), out=ptr[1:])
    return ptr, outputs[order].astype(np.intp), np.ascontiguousarray(weights[order])


class UpSampling2D(SpatialLayer):
    """(N, H, W, C) -> (N, H * size[0], W * size[1], C), as keras.layers.UpSampling2D.

    size: an int or a pair (rows, columns). interpolation: "nearest" (each pixel
    repeated; backward sums over the copies) or "bilinear" (half-pixel centres, edges
    clamped: tf.image.resize / PyTorch align_corners=False): each output pixel blends
    four input pixels, with row and column weights computed once per input size.
    Kernels: cyneuron._kernels.pooling.upsample_* (parallel over output rows; the
    backward passes gather over input rows, the bilinear one with the transposed taps).
    """

    spatial_rank = 2
    _interpolations = ("nearest", "bilinear")

    def __init__(self, size=(2, 2), interpolation="nearest", name=None, dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.size = normalize_tuple(size, 2, "size")
        key = interpolation.lower() if isinstance(interpolation, str) else interpolation
        if key not in self._interpolations:
            raise ValueError(f"interpolation must be one of {self._interpolations}; got "
                             f"{interpolation!r}")
        self.interpolation = key
        self._taps = {}

    def build(self, input_shape):
        self._check_rank(input_shape)
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        h, w, c = (int(d) for d in input_shape)
        return (h * self.size[0], w * self.size[1], c)

    def _interp(self, h, w):
        """(forward taps, adjoint taps), rows then columns, for an h x w input (once)."""
        key = (h, w)
        if key not in self._taps:
            rows, cols = _bilinear_taps(h, self.size[0]), _bilinear_taps(w, self.size[1])
            self._taps[key] = (rows + cols,
                               _adjoint_taps(*rows, h) + _adjoint_taps(*cols, w))
        return self._taps[key]

    def _forward(self, x, training):
        n, h, w, c = x.shape
        sh, sw = self.size
        y = self._buffer("y", (n, h * sh, w * sw, c))
        if self.interpolation == "nearest":
            _k.upsample_nearest(x, y, sh, sw)
        else:
            _k.upsample_bilinear(x, y, *self._interp(h, w)[0])
        self._x_shape = x.shape
        self._last_output_shape = y.shape
        return y

    def _backward(self, grad_output, need_input_grad):
        if not need_input_grad:
            return None
        n, h, w, c = self._x_shape
        sh, sw = self.size
        dx = self._buffer("dx", self._x_shape)
        if self.interpolation == "nearest":
            _k.upsample_nearest_backward(grad_output, dx, sh, sw)
        else:
            _k.upsample_bilinear_backward(grad_output, dx, *self._interp(h, w)[1])
        return dx

    def get_config(self):
        return {"name": self.name, "size": self.size, "interpolation": self.interpolation}
