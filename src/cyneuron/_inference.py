"""The lean path of Model.predict for small calls (one chunk of one input, one output).

predict's general path costs ~5 µs of Python per call before any layer runs (argument
parsing, the input conversion, per-chunk slicing and copying) and each Dense layer
~1.5 µs more (its epilogue looked up, its buffer found, views and state for a backward
pass that inference never takes). At batch 1 that is as long as the products
themselves. Here a ready float array is checked with a few attribute tests and one
finiteness pass, and the model runs a program made once per runner and input shape:
Dense layers call the GEMM (bias and element-wise activation in its epilogue) into
buffers the program owns, the last one into the returned array; other layers run their
own _forward. Anything else (lists, dicts, other dtypes, several chunks, masks,
several inputs or outputs, graphs that are not a chain of layers) returns None and takes the general path, which also raises
its errors.

Thread safety: the program lives in the runner that _take_runner hands out (the model
itself or a replica, used by one thread at a time) and is rebuilt when a different
runner (a replica that copied the model's attributes) finds it.
"""
import numpy as np

from ._config import fusion_enabled
from ._kernels.arrays import all_finite
from ._kernels.gemm import gemm
from .layers.dense import Dense
from .ops import epilogue_of

_KEY = "lean_predict"


def predict(model, x, batch_size):
    """model.predict(x, batch_size) for a plain call, or None (take the general path)."""
    if (type(x) is not np.ndarray or not model.built or model._out_struct != "single"
            or len(model._in_slots) != 1 or model._has_masks or x.dtype != model.dtype
            or x.ndim < 2 or not 0 < len(x) <= batch_size):
        return None
    flags = x.flags
    if not (flags.c_contiguous and flags.aligned) or x.shape[1:] != model.inputs[0].shape[1:]:
        return None
    if not all_finite(x):
        return None
    runner = model._take_runner()
    try:
        runner._ensure_bound()
        program = runner._buffers.get(_KEY)
        if program is None or program.owner is not runner or program.shape != x.shape \
                or program.steps is not runner._steps or program.fused != fusion_enabled():
            program = runner._buffers[_KEY] = _Program(runner, x.shape)
        return program.run(x) if program.chain else None
    finally:
        model._give_back(runner)


class _Program:
    """The steps of one runner for one input shape; run(x) returns a new output array."""

    def __init__(self, runner, shape):
        self.owner, self.shape, self.steps = runner, shape, runner._steps
        self.fused = fusion_enabled()
        self.ops = []
        plain = all(not s.many and not s.multi_out and not s.input_masks
                    for s in runner._steps)
        slots = [s.ins[0] for s in runner._steps] if plain else []
        chain = plain and len(runner._steps) > 0 and slots[0] == runner._in_slots[0] and all(
            a.outs[0] == b for a, b in zip(runner._steps, slots[1:])) \
            and runner._steps[-1].outs[0] == runner._out_slots[0]
        self.chain = chain
        if chain:
            self.ops = [_Op(s.layer) for s in runner._steps]

    def run(self, x):
        h = x
        last = len(self.ops) - 1
        for i, op in enumerate(self.ops):
            h = op.run(h, i == last)
        return h


class _Op:
    """One layer of a chain: a direct GEMM for a plain Dense layer, else its _forward."""

    def __init__(self, layer):
        self.layer = layer
        self.activation = getattr(layer, "activation", None)
        self.out = None
        self.dense = (type(layer)._forward is Dense._forward and isinstance(layer, Dense)
                      and not layer.activation.needs_input)
        if self.dense:
            fused = epilogue_of(layer.activation) if fusion_enabled() else None
            self.epilogue = None if not fusion_enabled() else fused or (0, 0.0)
            # not element-wise (softmax): after the product, in place
            self.after = None if fused is not None or layer.activation.name == "linear" \
                else layer.activation

    def run(self, x, last):
        layer = self.layer
        if not self.dense or layer.activation is not self.activation or x.ndim != 2:
            y = layer._forward(x, False)
            return np.array(y, copy=True) if last else y
        weights = layer._weights
        n, units = x.shape[0], weights[0].shape[1]
        if last:
            out = np.empty((n, units), layer.dtype)
        else:
            out = self.out
            if out is None or out.shape[0] != n:
                out = self.out = np.empty((n, units), layer.dtype)
        if self.epilogue is None:
            gemm(x, weights[0], out)
            if layer.use_bias:
                out += weights[1]
        else:
            gemm(x, weights[0], out, weights[1] if layer.use_bias else None, *self.epilogue)
        if self.after is not None:
            self.after.forward(out, out=out)
        return out
