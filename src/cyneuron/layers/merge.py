"""Merge layers: combine a list of tensors (Keras names and rules).

Add, Subtract (two inputs), Multiply, Average, Maximum, Minimum: element-wise over inputs
of one shape. Concatenate(axis=-1): joined along an axis, the other sizes equal.
Dot(axes, normalize=False): per-sample dot products along the given axes (batch_dot).

Called on a list: `layers.Add()([a, b])`; `forward([x1, x2])` / `backward(g) -> [g1, g2]`.
Gradients that are the incoming gradient itself (Add) are returned as is, not copied:
the model never writes into an array it did not allocate.
"""
import numbers

import numpy as np

from .._kernels.arrays import add
from .._validation import check_numeric
from .base import Layer


class _Merge(Layer):
    """Base class of the merge layers: a list of at least two inputs."""

    _abstract = True
    _n_inputs = "many"
    supports_masking = True
    _exactly = None            # a fixed number of inputs (Subtract, Dot), else None

    def build(self, input_shape):
        shapes = self._shapes(input_shape)
        self._check_shapes(shapes)
        self.input_shape = shapes
        self.built = True

    def _shapes(self, input_shape):
        if not isinstance(input_shape, (list, tuple)) or not input_shape or \
                not all(isinstance(s, (list, tuple)) for s in input_shape):
            raise ValueError(f"{type(self).__name__} {self.name!r} takes a list of input shapes; "
                             f"got {input_shape!r}")
        shapes = [tuple(int(d) for d in s) for s in input_shape]
        n = len(shapes)
        if self._exactly is not None and n != self._exactly:
            raise ValueError(f"{type(self).__name__} {self.name!r} takes exactly "
                             f"{self._exactly} inputs; got {n}")
        if n < 2:
            raise ValueError(f"{type(self).__name__} {self.name!r} takes at least 2 inputs; "
                             f"got {n}")
        return shapes

    def _check_shapes(self, shapes):
        if any(s != shapes[0] for s in shapes):
            raise ValueError(f"{type(self).__name__} {self.name!r} needs inputs of one shape; "
                             f"got {[(None,) + s for s in shapes]}")

    def _check_call_shapes(self, shapes):
        shapes = self._shapes(shapes)
        if shapes != self.input_shape:
            raise ValueError(f"layer {self.name!r} was built for inputs "
                             f"{[(None,) + s for s in self.input_shape]}; called on "
                             f"{[(None,) + s for s in shapes]}")

    def compute_output_shape(self, input_shape):
        return tuple(self._shapes(input_shape)[0])

    def forward(self, inputs, training=False):
        """The merged output of the list `inputs` (arrays with a batch axis)."""
        if not isinstance(inputs, (list, tuple)):
            raise TypeError(f"{type(self).__name__} {self.name!r} takes a list of arrays; "
                            f"got {type(inputs).__name__}")
        xs = [check_numeric(x, f"inputs[{i}]") for i, x in enumerate(inputs)]
        for i, x in enumerate(xs):
            if x.ndim < 2 or x.shape[0] == 0:
                raise ValueError(f"layer {self.name!r}: inputs[{i}] must be a non-empty batch; "
                                 f"got shape {x.shape}")
            if x.shape[0] != xs[0].shape[0]:
                raise ValueError(f"layer {self.name!r}: inputs have different batch sizes "
                                 f"{[x.shape[0] for x in xs]}")
        if self.dtype is None:
            self.dtype = np.dtype(np.float32)
        shapes = [x.shape[1:] for x in xs]
        if not self.built:
            self.build(shapes)
        else:
            self._check_call_shapes(shapes)
        xs = [np.ascontiguousarray(x, dtype=self.dtype) for x in xs]
        xs = [x.copy() if self._shares_buffer(x) else x
              for x in xs]
        return self._forward(xs, training)

    def backward(self, grad_output):
        """Gradients w.r.t. each input of the last forward call, as a list."""
        if not hasattr(self, "_last_output_shape"):
            raise RuntimeError(f"layer {self.name!r}: call forward before backward")
        g = check_numeric(grad_output, "grad_output")
        if g.shape != self._last_output_shape:
            raise ValueError(f"grad_output must have the shape of the last output "
                             f"{self._last_output_shape}; got {g.shape}")
        return self._backward(np.ascontiguousarray(g, dtype=self.dtype), True)

    def _forward(self, xs, training):
        y = self._combine(xs)
        self._last_output_shape = y.shape
        return y

    def _backward(self, grad_output, need_input_grad):
        if not need_input_grad:
            return None
        return self._split(grad_output)


class Add(_Merge):
    """The element-wise sum of the inputs (on all threads: a residual network's skip
    connections, 64 x 28 x 28 x 32 float32 on 2 threads 1.08 -> 0.58 ms)."""

    def _combine(self, xs):
        self._n = len(xs)
        y = self._buffer("y", xs[0].shape)
        add(xs[0], xs[1], y)
        for x in xs[2:]:
            add(y, x, y)
        return y

    def _split(self, g):
        return [g] * self._n


class Subtract(_Merge):
    """inputs[0] - inputs[1] (exactly two inputs)."""

    _exactly = 2

    def _combine(self, xs):
        y = self._buffer("y", xs[0].shape)
        np.subtract(xs[0], xs[1], out=y)
        return y

    def _split(self, g):
        return [g, np.negative(g, out=self._buffer("dx1", g.shape))]


class Multiply(_Merge):
    """The element-wise product of the inputs."""

    def _combine(self, xs):
        self._xs = xs
        y = self._buffer("y", xs[0].shape)
        np.multiply(xs[0], xs[1], out=y)
        for x in xs[2:]:
            y *= x
        return y

    def _split(self, g):
        grads = []
        for i in range(len(self._xs)):
            d = self._buffer(f"dx{i}", g.shape)
            np.copyto(d, g)
            for j, x in enumerate(self._xs):
                if j != i:
                    d *= x
            grads.append(d)
        return grads


class Average(_Merge):
    """The element-wise mean of the inputs."""

    def _combine(self, xs):
        self._n = len(xs)
        y = self._buffer("y", xs[0].shape)
        add(xs[0], xs[1], y)
        for x in xs[2:]:
            add(y, x, y)
        y *= 1.0 / len(xs)
        return y

    def _split(self, g):
        d = np.multiply(g, 1.0 / self._n, out=self._buffer("dx", g.shape))
        return [d] * self._n


class _Extremum(_Merge):
    """Maximum / Minimum: the gradient goes to the input that won (the first on ties)."""

    _abstract = True
    _pick = None

    def _combine(self, xs):
        self._n = len(xs)
        y = self._buffer("y", xs[0].shape)
        winner = self._buffer("winner", xs[0].shape)    # index of the winning input
        np.copyto(y, xs[0])
        winner.fill(0)
        better = np.greater if self._pick == "max" else np.less
        won = self._bool_buffer(xs[0].shape)
        for i, x in enumerate(xs[1:], 1):
            better(x, y, out=won)
            np.copyto(y, x, where=won)
            np.copyto(winner, i, where=won)
        self._winner = winner
        return y

    def _bool_buffer(self, shape):
        buf = self._buffers.get("won")
        if buf is None or buf.shape != shape:
            buf = self._buffers["won"] = np.empty(shape, bool)
        return buf

    def _split(self, g):
        grads = []
        won = self._bool_buffer(g.shape)
        for i in range(self._n):
            d = self._buffer(f"dx{i}", g.shape)
            np.equal(self._winner, i, out=won)
            np.multiply(g, won, out=d)
            grads.append(d)
        return grads


class Maximum(_Extremum):
    """The element-wise maximum of the inputs."""

    _pick = "max"


class Minimum(_Extremum):
    """The element-wise minimum of the inputs."""

    _pick = "min"


def _check_axis(axis, name):
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise ValueError(f"{name} must be an integer axis, got {axis!r}")
    return int(axis)


class Concatenate(_Merge):
    """The inputs joined along `axis` (default -1, the features); the other sizes must
    match. Axis 0 (the batch) is refused."""

    def __init__(self, axis=-1, name=None, dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.axis = _check_axis(axis, "axis")
        if self.axis == 0:
            raise ValueError("Concatenate: axis 0 is the batch axis; pick a feature axis")

    def _sample_axis(self, rank):
        """The axis within a per-sample shape of `rank` dimensions."""
        axis = self.axis - 1 if self.axis > 0 else rank + self.axis
        if not 0 <= axis < rank:
            raise ValueError(f"Concatenate {self.name!r}: axis {self.axis} does not exist for "
                             f"inputs of rank {rank + 1}")
        return axis

    def _check_shapes(self, shapes):
        rank = len(shapes[0])
        if any(len(s) != rank for s in shapes):
            raise ValueError(f"Concatenate {self.name!r} needs inputs of one rank; got "
                             f"{[(None,) + s for s in shapes]}")
        axis = self._sample_axis(rank)
        for s in shapes:
            if s[:axis] + s[axis + 1:] != shapes[0][:axis] + shapes[0][axis + 1:]:
                raise ValueError(f"Concatenate {self.name!r}: inputs must match except along "
                                 f"axis {self.axis}; got {[(None,) + s for s in shapes]}")

    def compute_output_shape(self, input_shape):
        shapes = self._shapes(input_shape)
        self._check_shapes(shapes)
        axis = self._sample_axis(len(shapes[0]))
        out = list(shapes[0])
        out[axis] = sum(s[axis] for s in shapes)
        return tuple(out)

    def _combine(self, xs):
        axis = 1 + self._sample_axis(xs[0].ndim - 1)
        shape = list(xs[0].shape)
        shape[axis] = sum(x.shape[axis] for x in xs)
        y = self._buffer("y", tuple(shape))
        np.concatenate(xs, axis=axis, out=y)
        self._sizes = [x.shape[axis] for x in xs]
        self._axis = axis
        return y

    def _split(self, g):
        grads, start = [], 0
        index = [slice(None)] * g.ndim
        for i, size in enumerate(self._sizes):
            index[self._axis] = slice(start, start + size)
            part = g[tuple(index)]
            d = self._buffer(f"dx{i}", part.shape)
            np.copyto(d, part)
            grads.append(d)
            start += size
        return grads

    def get_config(self):
        return {"name": self.name, "axis": self.axis}


class Dot(_Merge):
    """Per-sample dot products of two inputs along `axes` (an axis, or one per input;
    axis 0 is the batch), as keras.layers.Dot / batch_dot: (batch, n) . (batch, n) with
    axes=1 gives (batch, 1); (batch, t, d) . (batch, s, d) with axes=2 gives (batch, t, s).
    normalize=True takes the cosine: each input is L2-normalized along its axis first."""

    _exactly = 2
    _EPS = 1e-12

    def __init__(self, axes, normalize=False, name=None, dtype=None):
        super().__init__(name=name, dtype=dtype)
        if isinstance(axes, (list, tuple)):
            if len(axes) != 2:
                raise ValueError(f"Dot: axes must be an axis or a pair of axes, got {axes!r}")
            axes = tuple(_check_axis(a, "axes") for a in axes)
        else:
            axes = (_check_axis(axes, "axes"),) * 2
        if 0 in axes:
            raise ValueError(f"Dot: axes {axes} include the batch axis 0")
        self.axes = axes
        self.normalize = bool(normalize)

    def _sample_axes(self, shapes):
        axes = []
        for shape, axis in zip(shapes, self.axes):
            rank = len(shape) + 1
            a = axis if axis > 0 else rank + axis
            if not 1 <= a < rank:
                raise ValueError(f"Dot {self.name!r}: axis {axis} does not exist for an input "
                                 f"of shape {(None,) + tuple(shape)}")
            axes.append(a)
        return axes

    def _check_shapes(self, shapes):
        a, b = self._sample_axes(shapes)
        if shapes[0][a - 1] != shapes[1][b - 1]:
            raise ValueError(f"Dot {self.name!r}: sizes along axes {self.axes} differ: "
                             f"{(None,) + shapes[0]} and {(None,) + shapes[1]}")

    def compute_output_shape(self, input_shape):
        shapes = self._shapes(input_shape)
        self._check_shapes(shapes)
        a, b = self._sample_axes(shapes)
        out = shapes[0][:a - 1] + shapes[0][a:] + shapes[1][:b - 1] + shapes[1][b:]
        return out if out else (1,)

    def _normalized(self, x, axis, key):
        norm = np.sqrt(np.maximum(np.sum(x * x, axis=axis, keepdims=True), self._EPS))
        xn = self._buffer(key, x.shape)
        np.divide(x, norm, out=xn)
        return xn, norm

    def _combine(self, xs):
        a, b = self._sample_axes([x.shape[1:] for x in xs])
        self._ab = (a, b)
        self._raw = xs
        if self.normalize:
            (x0, n0), (x1, n1) = (self._normalized(xs[0], a, "xn0"),
                                  self._normalized(xs[1], b, "xn1"))
            self._norms = (n0, n1)
        else:
            x0, x1 = xs
        self._xs = (x0, x1)
        # A (batch, rest_a, k) and B (batch, k, rest_b): one batched product.
        n = x0.shape[0]
        am = np.moveaxis(x0, a, -1).reshape(n, -1, x0.shape[a])
        bm = np.moveaxis(x1, b, 1).reshape(n, x1.shape[b], -1)
        self._mats = (am, bm)
        y = self._buffer("y", (n,) + self.compute_output_shape([x0.shape[1:], x1.shape[1:]]))
        np.matmul(am, bm, out=y.reshape(n, am.shape[1], bm.shape[2]))
        return y

    def _split(self, g):
        (x0, x1), (a, b), (am, bm) = self._xs, self._ab, self._mats
        n = g.shape[0]
        gm = g.reshape(n, am.shape[1], bm.shape[2])
        da = np.matmul(gm, bm.transpose(0, 2, 1),            # (n, rest_a, k)
                       out=self._buffer("da", (n, am.shape[1], am.shape[2])))
        db = np.matmul(am.transpose(0, 2, 1), gm,            # (n, k, rest_b)
                       out=self._buffer("db", (n, bm.shape[1], bm.shape[2])))
        moved0 = np.moveaxis(x0, a, -1).shape
        moved1 = np.moveaxis(x1, b, 1).shape
        d0 = self._buffer("dx0", x0.shape)
        d1 = self._buffer("dx1", x1.shape)
        np.copyto(d0, np.moveaxis(da.reshape(moved0), -1, a))
        np.copyto(d1, np.moveaxis(db.reshape(moved1), 1, b))
        if self.normalize:
            for d, xn, norm, axis in ((d0, x0, self._norms[0], a), (d1, x1, self._norms[1], b)):
                # d/dx of x / max(|x|, eps): (d - xn * sum(d * xn)) / |x| where |x| > eps
                inside = (norm * norm) > self._EPS
                proj = np.sum(d * xn, axis=axis, keepdims=True)
                np.divide(np.where(inside, d - xn * proj, d), norm, out=d)
        return [d0, d1]

    def get_config(self):
        return {"name": self.name, "axes": list(self.axes), "normalize": self.normalize}
