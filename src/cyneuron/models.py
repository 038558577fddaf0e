"""Models: one graph engine. `Model(inputs, outputs)` runs a graph of layers (the Keras
functional API); `Sequential` is its linear case and runs on the same engine.

At build the engine works out, once: the topological order of the nodes, a slot per
tensor, which layers run a second time (a replica per extra call: the same weights, its
own buffers, its gradients added into the layer's after the backward pass), the fused
pairs (softmax / sigmoid output + cross-entropy on the logits; a Dense layer's
input-gradient GEMM applying the previous Dense layer's activation derivative in its
epilogue), and where gradients meet at a fan-out (summed into a buffer of the engine).

All trainable parameters of the graph, nested models included, live in one flat buffer
`_params` (and their gradients in `_grads`): each layer's trainable weights are views
into it, a nested model's parameters a contiguous slice, so the optimizer step is one
fused kernel over the whole model (the KANN design). Non-trainable weights (moving
statistics) stay with their layers; get_weights() lists both, in layer order.

Per-call state (what one forward/backward pass writes, so what two concurrent passes
must not share): the engine's per-slot lists `_vals` / `_masks`, its fan-out sums
`_acc`, fit's gather buffers `_batch_buffers`, and in every layer its `_buffers` and the
attributes its last forward left for backward (`_x`, `_y`, masks...). `model._replica()`
returns a model sharing every weight array with fresh per-call state (replicas of every
layer): a thread running inference on its own replica leaves the others' passes alone.

Threads. predict / evaluate / model(x) run on the model itself when its per-call state
is free (one uncontended lock: the single-threaded path), else on an idle replica from a
small pool (made on first need, kept for reuse). Weights are guarded by a readers-writer
lock: passes on replicas read under it, every writer (the optimizer step, set_weights,
apply_gradients, a training forward pass that moves BatchNormalization statistics) holds
it alone and also holds the model's own state, so a pass on the model itself needs no
read lock. One thread trains at a time: fit / train_on_batch from a second thread raise
RuntimeError. Ctrl-C during fit is deferred to the end of the current step (Keras 3:
the KeyboardInterrupt then propagates; the model and model.history stay consistent).
"""
import copy
import numbers
import os
import signal
import threading
import time
import warnings

import numpy as np

from . import _config
from . import _inference
from . import losses as _losses
from . import metrics as _metrics
from . import optimizers as _optimizers
from . import saving
from ._kernels.arrays import gather_rows
from ._random import get_rng
from ._validation import as_dtype, check_array, check_positive
from .callbacks import CallbackList, History, make_progress
from .layers import base as _layer_base
from .layers.base import Layer
from .layers.input_layer import Input, InputLayer, SymbolicTensor, connect, is_symbolic

DEFAULT_PREDICT_BATCH = 1024
_BIND_EPOCH = [0]    # bumped whenever a model (re)binds layers into its flat buffers
# Idle inference replicas a model keeps for concurrent callers (more are made when more
# threads run at once, and dropped after use).
MAX_IDLE_REPLICAS = max(8, os.cpu_count() or 1)
_get_ident = threading.get_ident
_THREAD_STATE = ("_own", "_train_guard", "_wlock", "_pool", "_pool_lock", "_build_lock")


class _WeightsLock:
    """Readers-writer lock on a model's weights. Readers (inference on replicas, saving,
    get_weights) share it; a writer (optimizer step, set_weights) holds it alone. Writers
    go first: once one waits, new readers wait, so a stream of predictions cannot starve
    the trainer. Both kinds re-enter in the thread holding them (a writer may also read).
    Uncontended, a pair of calls costs about a microsecond (no notify without sleepers)."""

    __slots__ = ("_cond", "_readers", "_writer", "_depth", "_waiting", "_sleeping")

    def __init__(self):
        self._cond = threading.Condition(threading.Lock())
        self._readers = {}        # thread id -> depth
        self._writer = None
        self._depth = 0
        self._waiting = 0         # writers waiting
        self._sleeping = 0        # threads in cond.wait()

    def _wait(self):
        self._sleeping += 1
        try:
            self._cond.wait()
        finally:
            self._sleeping -= 1

    def acquire_read(self):
        me = _get_ident()
        cond = self._cond
        cond.acquire()
        try:
            if self._writer == me:
                self._depth += 1
                return
            depth = self._readers.get(me)
            if depth is None:
                while self._writer is not None or self._waiting:
                    self._wait()
                depth = 0
            self._readers[me] = depth + 1
        finally:
            cond.release()

    def release_read(self):
        me = _get_ident()
        cond = self._cond
        cond.acquire()
        try:
            if self._writer == me:
                self._depth -= 1
                return
            depth = self._readers[me] - 1
            if depth:
                self._readers[me] = depth
            else:
                del self._readers[me]
                if not self._readers and self._sleeping:
                    cond.notify_all()
        finally:
            cond.release()

    def acquire_write(self):
        me = _get_ident()
        cond = self._cond
        cond.acquire()
        try:
            if self._writer == me:
                self._depth += 1
                return
            if me in self._readers:
                raise RuntimeError("a thread reading a model's weights cannot change them "
                                   "(set_weights / a training step inside predict or save?)")
            if self._writer is not None or self._readers:
                self._waiting += 1
                try:
                    while self._writer is not None or self._readers:
                        self._wait()
                except BaseException:        # interrupted: readers held back may go on
                    self._waiting -= 1
                    if self._sleeping:
                        cond.notify_all()
                    raise
                self._waiting -= 1
            self._writer = me
            self._depth = 1
        finally:
            cond.release()

    def release_write(self):
        cond = self._cond
        cond.acquire()
        try:
            self._depth -= 1
            if self._depth == 0:
                self._writer = None
                if self._sleeping:
                    cond.notify_all()
        finally:
            cond.release()


class _DeferredInterrupt:
    """Ctrl-C (SIGINT) during fit: noted, and raised as KeyboardInterrupt at the end of
    the current step, so no step is left half done. A second Ctrl-C raises at once.
    Only in the main thread, and only over Python's default handler."""

    __slots__ = ("hit", "_old")

    def __init__(self):
        self.hit = False
        self._old = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            try:
                self._old = signal.signal(signal.SIGINT, self._handler)
            except (ValueError, OSError):      # an interpreter without signals
                self._old = None
        return self

    def _handler(self, signum, frame):
        if self.hit:
            raise KeyboardInterrupt
        self.hit = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
            self._old = None
        return False


class _Step:
    """One node of the plan: its layer (or replica) and the slots it reads and writes."""

    __slots__ = ("layer", "ins", "outs", "many", "multi_out", "need_always", "reads_input",
                 "fuse_prev", "prev", "logits", "mask_op", "mask_kw", "input_masks", "index")


def _mask_and(masks):
    masks = [m for m in masks if m is not None]
    if not masks:
        return None
    out = masks[0]
    for m in masks[1:]:
        if m.shape == out.shape:
            out = out & m
    return out


class Model(Layer):
    """A graph of layers from `inputs` to `outputs` (Keras functional API).

        inputs = cn.Input(shape=(20,))
        h = layers.Dense(64, activation="relu")(inputs)
        outputs = layers.Dense(1)(layers.Add()([h, layers.Dense(64)(inputs)]))
        model = cn.Model(inputs, outputs)

    inputs / outputs: a symbolic tensor, a list of them, or a dict {name: tensor}.
    A model is a layer: call it on symbolic tensors to nest it in another model (its
    parameters become a slice of the outer model's flat buffer), or on arrays:
    `model(x, training=True)` then `model.backward(dy)` for custom training loops.
    """

    _abstract = True      # not in the layer registry: saving names models itself

    def __init__(self, inputs=None, outputs=None, name=None, dtype=None):
        super().__init__(name=name, dtype=None)
        self._init_model_state()
        if inputs is None or outputs is None:
            raise TypeError("Model(inputs, outputs): both are required (symbolic tensors from "
                            "cn.Input and layers called on them); for a stack of layers use "
                            "cn.Sequential")
        self._init_graph(inputs, outputs, dtype)

    # -- construction ---------------------------------------------------------------------
    def _init_model_state(self):
        self.optimizer = None
        self.loss = None
        self.metrics = []
        self.stop_training = False     # a callback sets it to end fit after the current epoch
        self._losses = []
        self._loss_tensors = []        # add_loss: symbolic tensors whose batch mean is a loss
        self._loss_weights = []
        self._out_metrics = []
        self._compiled_segments = None
        self._model_trainable = True
        self._epoch = -1
        self._fused_key = None
        self._compile_serial = 0
        self._init_threading()

    def _init_threading(self):
        """Locks and the replica pool (see the module docstring, "Threads")."""
        self._own = threading.RLock()          # the model's own per-call state
        self._train_guard = threading.RLock()  # held by the one thread training
        self._wlock = _WeightsLock()           # the weights
        self._build_lock = threading.RLock()
        self._pool = []
        self._pool_lock = threading.Lock()
        self._trainer = None                   # the thread in fit / train_on_batch
        self._train_depth = 0
        self._awaiting_backward = False        # model(x, training=True) state kept for backward

    @staticmethod
    def _flatten_io(value, what):
        """(structure, tensors, names) from a tensor, a list/tuple or a dict of them."""
        if isinstance(value, SymbolicTensor):
            return "single", [value], None
        if isinstance(value, dict):
            if not value:
                raise ValueError(f"Model: {what} is an empty dict")
            for key, t in value.items():
                if not isinstance(key, str) or not isinstance(t, SymbolicTensor):
                    raise TypeError(f"Model: {what} dict must map names to symbolic tensors; "
                                    f"got {key!r}: {type(t).__name__}")
            return "dict", list(value.values()), list(value.keys())
        if isinstance(value, (list, tuple)) and value:
            for i, t in enumerate(value):
                if not isinstance(t, SymbolicTensor):
                    raise TypeError(f"Model: {what}[{i}] must be a symbolic tensor (from "
                                    f"cn.Input or a layer called on one); got "
                                    f"{type(t).__name__}")
            return "list", list(value), None
        raise TypeError(f"Model: {what} must be a symbolic tensor, a list or a dict of them; "
                        f"got {type(value).__name__}")

    def _init_graph(self, inputs, outputs, dtype=None):
        self._io = (inputs, outputs, dtype)      # add_loss rebuilds the graph from them
        in_struct, ins, in_names = self._flatten_io(inputs, "inputs")
        out_struct, outs, out_names = self._flatten_io(outputs, "outputs")
        for i, t in enumerate(ins):
            if not isinstance(t.node.layer, InputLayer):
                raise ValueError(f"Model: inputs[{i}] is the output of layer "
                                 f"{t.node.layer.name!r}; model inputs must come from cn.Input()")
        if len({id(t) for t in ins}) != len(ins):
            raise ValueError("Model: the same Input appears twice in inputs")
        if in_names is not None:
            for key, t in zip(in_names, ins):
                if key != t.node.layer.name:
                    t.node.layer.name = key      # Keras names dict inputs by their key
        known = {id(t) for t in ins}
        order, done, used_inputs = [], set(), set()

        def reach_input(node, k, out):
            tensor = node.outputs[0]
            if id(tensor) not in known:
                raise ValueError(f"Model: output {k} ({out.name!r}) depends on Input "
                                 f"{node.layer.name!r}, which is not in the model's inputs "
                                 f"{[t.name for t in ins]}")
            used_inputs.add(id(tensor))

        # depth-first, post-order: a topological order (add_loss tensors are roots too)
        for k, out in enumerate(outs + self._loss_tensors):
            if isinstance(out.node.layer, InputLayer):
                reach_input(out.node, k, out)
                continue
            stack = [[out.node, 0]]
            while stack:
                frame = stack[-1]
                node, i = frame
                if i == 0 and id(node) in done:
                    stack.pop()
                    continue
                if i < len(node.inputs):
                    frame[1] += 1
                    child = node.inputs[i].node
                    if isinstance(child.layer, InputLayer):
                        reach_input(child, k, out)
                    elif id(child) not in done:
                        stack.append([child, 0])
                else:
                    stack.pop()
                    done.add(id(node))
                    order.append(node)
        unused = [t.name for t in ins if id(t) not in used_inputs]
        if unused:
            warnings.warn(f"Model {self.name!r}: inputs {unused} are not used by any output",
                          stacklevel=3)
        dtypes = {t.dtype for t in ins + outs}
        if dtype is not None:
            dtypes.add(as_dtype(dtype, "dtype"))
        if len(dtypes) > 1:
            raise ValueError(f"Model: inputs and outputs have different dtypes "
                             f"{sorted(d.name for d in dtypes)}; give every cn.Input the dtype")
        self.dtype = dtypes.pop()
        self.inputs, self.outputs = ins, outs
        self._in_struct, self._out_struct = in_struct, out_struct
        self._nodes = order
        self.input_names = [t.node.layer.name for t in ins]
        if out_names is None:
            out_names, counts = [], {}
            for t in outs:
                base = t.name
                counts[base] = counts.get(base, 0) + 1
                out_names.append(base if counts[base] == 1 else f"{base}_{counts[base] - 1}")
        self.output_names = list(out_names)
        unique = []
        for node in order:
            if not any(node.layer is u for u in unique):
                unique.append(node.layer)
        self._param_layers = unique
        self._check_nesting()
        if not hasattr(self, "_keep_layers"):      # Sequential keeps its own list
            self.layers = [t.node.layer for t in ins] + unique
        shapes_in = [t.shape[1:] for t in ins]
        shapes_out = [t.shape[1:] for t in outs]
        self.input_shape = shapes_in[0] if in_struct == "single" else shapes_in
        self.output_shape = shapes_out[0] if out_struct == "single" else shapes_out
        self._assign_slots()
        self._has_masks = any(t.has_mask for node in order for t in node.outputs)
        self.built = True
        self._allocate()
        if self._losses:          # compiled before it was built (Sequential)
            self._compiled_segments = self._trainable_segments()

    def _assign_slots(self):
        """A slot per tensor: the inputs first, then each node's outputs in order."""
        slot = {}
        for t in self.inputs:
            slot[id(t)] = len(slot)
        for node in self._nodes:
            for t in node.outputs:
                slot[id(t)] = len(slot)
        self._slot_of = slot
        self._n_slots = len(slot)
        self._in_slots = [slot[id(t)] for t in self.inputs]
        self._out_slots = [slot[id(t)] for t in self.outputs]

    def _check_nesting(self):
        """A layer may sit inside a nested model or directly in this graph, not both."""
        seen = {}
        for layer in self._param_layers:
            members = layer._all_layers() if isinstance(layer, Model) else [layer]
            for m in members:
                if id(m) in seen and seen[id(m)] is not layer:
                    nested = layer if isinstance(layer, Model) else seen[id(m)]
                    raise ValueError(f"Model {self.name!r}: layer {m.name!r} is used both inside "
                                     f"nested model {nested.name!r} and elsewhere in the graph; "
                                     f"call the nested model instead")
                seen[id(m)] = layer

    def _all_layers(self):
        """Every leaf layer of the graph, nested models expanded."""
        out = []
        for layer in self._param_layers:
            out.extend(layer._all_layers() if isinstance(layer, Model) else [layer])
        return out

    # -- flat buffers ------------------------------------------------------------------------
    def _count_trainable(self):
        return int(sum(layer._count_trainable() for layer in self._param_layers))

    def count_params(self):
        """All weights, trainable and non-trainable."""
        return sum(layer.count_params() for layer in self._param_layers) if self.built else 0

    def _allocate(self):
        """A new flat buffer pair for the whole graph; every layer's trainable weights
        become views into it (their values are copied in)."""
        size = self._count_trainable()
        _BIND_EPOCH[0] += 1
        self._bind(np.empty(size, self.dtype), np.zeros(size, self.dtype), 0)

    def _bind(self, params, grads, offset):
        start = offset
        ranges = []
        for layer in self._param_layers:
            if layer.dtype is not None and layer.dtype != self.dtype:
                raise ValueError(f"layer {layer.name!r} has dtype {layer.dtype.name} but the "
                                 f"model {self.name!r} is {self.dtype.name}")
            begin = offset
            offset = layer._bind(params, grads, offset)
            ranges.append((layer, begin - start, offset - start))
        self._params = params[start:offset]
        self._grads = grads[start:offset]
        self._ranges = ranges
        self._weights = [w for layer in self._param_layers for w in layer._weights]
        self._gradients = [g for layer in self._param_layers for g in layer._gradients]
        self._weight_names = [f"{layer.name}/{n}" for layer in self._param_layers
                              for n in layer._weight_names]
        self._trainable = [t for layer in self._param_layers for t in layer._trainable]
        # non-trainable weights (moving statistics) change in a training forward pass
        self._stateful = not all(self._trainable)
        self._expected = [(w, w.__array_interface__["data"][0])
                          for w in self._trainable_views() if w.size]
        # weight regularizers of every leaf layer (nested models' included): applied by the
        # model whose step fills the gradients (the outermost one that trains)
        self._weight_regs = [r for layer in self._all_layers()
                             for r in layer._regularized_weights()]
        self._epoch = _BIND_EPOCH[0]
        self._make_plan()
        return offset

    def _trainable_views(self):
        return [w for layer in self._param_layers for w in layer.trainable_weights]

    def _owns_weights(self):
        views = [w for w in self._trainable_views() if w.size]
        if len(views) != len(self._expected):
            return False
        return all(w.__array_interface__["data"][0] == addr
                   for w, (_, addr) in zip(views, self._expected))

    def _ensure_bound(self):
        """Layers shared with another model may have been bound into that model's buffer
        since: take them back (their current values are copied in)."""
        if self._epoch != _BIND_EPOCH[0]:
            primary = self.__dict__.get("_replica_of")
            if primary is not None:        # a replica follows its model's buffers
                primary._ensure_bound()
                self._params, self._grads = primary._params, primary._grads
                self._expected = primary._expected
            elif not self._owns_weights():
                _BIND_EPOCH[0] += 1
                self._bind(self._params, self._grads, 0)
            self._epoch = _BIND_EPOCH[0]

    # -- the plan -------------------------------------------------------------------------------
    def _make_plan(self, substitute=None):
        """Steps in topological order; the second and later calls of a layer get replicas."""
        substitute = substitute or {}
        consumers = [0] * self._n_slots
        for node in self._nodes:
            for t in node.inputs:
                consumers[self._slot_of[id(t)]] += 1
        for s in self._out_slots:
            consumers[s] += 1
        # Extra loss terms seeded in the backward pass: activity regularizers on layer
        # outputs and add_loss tensors. A seeded slot counts as one more consumer, so no
        # fused path (which would hand back d/dz instead of d/dy) crosses it.
        seeds = [(self._slot_of[id(node.outputs[0])], node.layer.activity_regularizer)
                 for node in self._nodes
                 if node.layer.activity_regularizer is not None and len(node.outputs) == 1]
        seeds += [(self._slot_of[id(t)], None) for t in self._loss_tensors]
        for slot, _ in seeds:
            consumers[slot] += 1
        self._seeds = seeds
        in_slots = set(self._in_slots)
        producer = {}
        used, steps, pairs = set(), [], []
        for index, node in enumerate(self._nodes):
            layer = substitute.get(id(node.layer), node.layer)
            if id(layer) in used:
                primary = layer
                layer = layer._replica()
                pairs.extend((p, r) for p, r, t in zip(primary._gradients, layer._gradients,
                                                       primary._trainable) if t)
            used.add(id(layer))
            s = _Step()
            s.index = index
            s.layer = layer
            s.ins = tuple(self._slot_of[id(t)] for t in node.inputs)
            s.outs = tuple(self._slot_of[id(t)] for t in node.outputs)
            s.many = node.many_inputs
            s.multi_out = isinstance(layer, Model) and layer._out_struct != "single"
            s.need_always = any(i not in in_slots for i in s.ins)
            s.reads_input = any(i in in_slots for i in s.ins)
            s.logits = False
            s.prev = None
            s.fuse_prev = False
            if not s.many and len(s.ins) == 1 and s.ins[0] in producer:
                prev = steps[producer[s.ins[0]]]
                if (getattr(layer, "_fuses_input_grad", False) and consumers[s.ins[0]] == 1
                        and not prev.multi_out and hasattr(prev.layer, "_grad_epilogue")):
                    s.prev = producer[s.ins[0]]
                    s.fuse_prev = True
            s.mask_op = None
            s.mask_kw = False
            if self._has_masks:
                if getattr(layer, "mask_zero", False):
                    s.mask_op = "own"
                elif isinstance(layer, Model):
                    s.mask_op = "model"
                elif any(t.has_mask for t in node.outputs):
                    # attention: the output's mask is the query's (the first input's)
                    s.mask_op = "first" if getattr(layer, "_mask_from_first_input", False) \
                        else "pass"
                s.mask_kw = hasattr(layer, "_check_mask") or hasattr(layer, "forward_layer")
            # layers that read the padding mask of each of their inputs (attention)
            s.input_masks = self._has_masks and getattr(layer, "_input_masks", False)
            for o in s.outs:
                producer[o] = len(steps)
            steps.append(s)
        self._steps = steps
        self._pairs = pairs
        self._consumers = consumers
        self._nested_aux = [s.layer for s in steps
                            if isinstance(s.layer, Model) and s.layer._has_aux]
        self._has_aux = bool(seeds or self._nested_aux)
        # A one-path graph (every Sequential) runs through a tight loop over its layers.
        chain = (len(self._in_slots) == 1 and len(self._out_slots) == 1 and not pairs
                 and not self._has_masks and not self._has_aux and steps
                 and self._out_slots[0] == steps[-1].outs[0])
        previous = self._in_slots[0] if self._in_slots else None
        for s in steps if chain else []:
            if s.many or s.multi_out or s.ins != (previous,) or consumers[s.outs[0]] != 1:
                chain = False
                break
            previous = s.outs[0]
        self._chain = [s.layer for s in steps] if chain else None
        self._chain_fuse = [s.fuse_prev for s in steps]
        self._vals = [None] * self._n_slots
        self._masks = [None] * self._n_slots
        self._acc = {}
        self._fused_key = None

    def _replica(self):
        """A copy of this model for a second call in an outer graph (or for a concurrent
        caller): replicas of every layer, its own plan; its gradients are added into this
        model's afterwards. Made without pickling hooks, so nothing of the model (its
        weights included) is written while another thread may be training it. A replica
        asked for a replica hands over to its model: the plan maps the graph's own layers
        (node.layer) to the copies, which a replica's copies are not."""
        origin = self.__dict__.get("_replica_of")
        if origin is not None:
            return origin._replica()
        r = object.__new__(type(self))
        r.__dict__.update(self.__dict__)
        r._buffers = {}
        r._batch_buffers = {}
        r._replica_of = self
        mapping = {id(layer): layer._replica() for layer in self._param_layers}
        r._param_layers = [mapping[id(layer)] for layer in self._param_layers]
        r._gradients = [g for layer in r._param_layers for g in layer._gradients]
        r._make_plan(substitute=mapping)
        return r

    # -- threads ---------------------------------------------------------------------------------
    def _take_runner(self):
        """The model to run an inference pass on: the model itself when its per-call state
        is free (single-threaded use costs one uncontended lock), else an idle replica
        (the same weights, read under the weights' shared lock). Give it back with
        _give_back."""
        _config.apply_num_threads()
        if self._own.acquire(False):
            if not self._awaiting_backward:
                return self
            self._own.release()       # model(x, training=True) state waits for backward
        with self._pool_lock:
            r = self._pool.pop() if self._pool else None
        if r is None or r._pool_stamp != self._compile_serial:
            r = self._replica()
            r._losses = copy.deepcopy(self._losses)         # they own buffers
            r._out_metrics = copy.deepcopy(self._out_metrics)
            r._pool_stamp = self._compile_serial
        self._wlock.acquire_read()
        return r

    def _give_back(self, runner):
        if runner is self:
            self._own.release()
            return
        self._wlock.release_read()
        with self._pool_lock:
            if len(self._pool) < MAX_IDLE_REPLICAS:
                self._pool.append(runner)

    def _check_not_training_elsewhere(self, what):
        trainer = self._trainer
        if trainer is not None and trainer != threading.get_ident():
            raise RuntimeError(f"{what}: model {self.name!r} is being trained (fit / "
                               f"train_on_batch) in another thread; call it from that thread "
                               f"(e.g. in a callback) or after training")

    def _begin_training(self, what):
        """Claim the model for one training thread (a second one gets a RuntimeError)
        and its own per-call state; undo with _end_training."""
        _config.apply_num_threads()
        if not self._train_guard.acquire(False):
            raise RuntimeError(f"{what}: model {self.name!r} is already being trained in "
                               f"another thread; a model trains in one thread at a time "
                               f"(predict / evaluate / model(x) may run alongside)")
        try:
            self._own.acquire()
        except BaseException:
            self._train_guard.release()
            raise
        if self._train_depth == 0:
            self._trainer = threading.get_ident()
            self._awaiting_backward = False
        self._train_depth += 1

    def _end_training(self):
        self._train_depth -= 1
        if self._train_depth == 0:
            self._trainer = None
        self._own.release()
        self._train_guard.release()

    def _begin_write(self, what):
        """Exclusive access to the weights (and the model's own state) for a writer
        outside the optimizer step of fit; undo with _end_write."""
        self._check_not_training_elsewhere(what)
        self._own.acquire()
        try:
            self._wlock.acquire_write()
        except BaseException:
            self._own.release()
            raise

    def _end_write(self):
        self._wlock.release_write()
        self._own.release()

    def _update_fusion(self):
        """Which outputs train on logits (softmax/sigmoid + cross-entropy), for the
        current compile settings and fusion switch."""
        key = (_config.fusion_enabled(), id(self.loss))
        if self._fused_key == key:
            return
        for s in self._steps:
            s.logits = False
        self._fused = []
        for k in range(len(self._out_slots)):
            fused = self._output_fuses(k)
            self._fused.append(fused)
            if fused:
                self._output_step(k).logits = True
        self._fused_key = key

    def _output_step(self, k):
        slot = self._out_slots[k]
        for s in self._steps:
            if slot in s.outs:
                return s
        return None

    def _output_fuses(self, k):
        loss = self._losses[k] if k < len(self._losses) else None
        if loss is None or loss.fuses_with is None or not _config.fusion_enabled() \
                or getattr(loss, "from_logits", False):
            return False
        step = self._output_step(k)
        if step is None or step.multi_out:
            return False
        layer = step.layer
        return (getattr(getattr(layer, "activation", None), "name", None) == loss.fuses_with
                and hasattr(layer, "_forward_logits")
                and self._consumers[self._out_slots[k]] == 1)

    def _fused_output(self):
        """True when the loss absorbs the (first) output layer's activation."""
        if not self.built or not self._losses:
            return False
        return self._output_fuses(0)

    # -- running the graph --------------------------------------------------------------------
    def _run_forward(self, xs, training, logits=False):
        """Outputs (a list) for inputs `xs` (a list of checked arrays); with logits=True the
        fused outputs are their logits."""
        vals = self._vals
        for i, x in zip(self._in_slots, xs):
            vals[i] = x
        masks = self._masks if self._has_masks else None
        if masks is not None:
            for i, x in zip(self._in_slots, xs):
                masks[i] = getattr(x, "_keras_mask", None)
        for s in self._steps:
            x = [vals[i] for i in s.ins] if s.many else vals[s.ins[0]]
            if logits and s.logits:
                y = s.layer._forward_logits(x, training)
            elif s.input_masks:
                y = s.layer._forward(x, training, masks=[masks[i] for i in s.ins])
            elif s.mask_kw and masks is not None:
                y = s.layer._forward(x, training, mask=masks[s.ins[0]])
            else:
                y = s.layer._forward(x, training)
            if s.multi_out:
                for o, v in zip(s.outs, y):
                    vals[o] = v
            else:
                vals[s.outs[0]] = y
            if masks is not None:
                self._step_mask(s, y, masks)
        return [vals[o] for o in self._out_slots]

    def _step_mask(self, s, y, masks):
        op = s.mask_op
        if op is None:
            for o in s.outs:
                masks[o] = None
        elif op == "own":
            masks[s.outs[0]] = getattr(y, "_keras_mask", None)
        elif op == "first":
            masks[s.outs[0]] = masks[s.ins[0]]
        elif op == "model":
            inner = s.layer
            for o, io in zip(s.outs, inner._out_slots):
                masks[o] = inner._masks[io] if inner._has_masks else None
        else:
            masks[s.outs[0]] = _mask_and([masks[i] for i in s.ins])

    def output_masks(self):
        """The padding masks of the outputs from the last forward pass (None where none)."""
        if not self._has_masks:
            return [None] * len(self._out_slots)
        return [self._masks[o] for o in self._out_slots]

    def _accumulate(self, grads, owned, slot, g):
        cur = grads[slot]
        if cur is None:
            grads[slot] = g
        elif owned[slot]:
            np.add(cur, g, out=cur)
        else:
            buf = self._acc.get(slot)
            if buf is None or buf.shape != cur.shape or buf.dtype != cur.dtype:
                buf = self._acc[slot] = np.empty(cur.shape, cur.dtype)
            np.add(cur, g, out=buf)
            grads[slot] = buf
            owned[slot] = True

    def _run_backward(self, out_grads, want_inputs=False, logits=False):
        """Backward pass from the gradients of the outputs (a list, None entries for no
        gradient); fills every layer's parameter gradients (the flat buffer) and returns
        the gradients of the inputs (a list) when want_inputs."""
        n = self._n_slots
        grads = [None] * n
        owned = [False] * n
        dz_ready = [False] * n
        for slot, g in zip(self._out_slots, out_grads):
            if g is not None:
                self._accumulate(grads, owned, slot, g)
        if self._seeds:
            for slot, g in self._seed_grads():
                self._accumulate(grads, owned, slot, g)
        steps = self._steps
        for s in reversed(steps):
            if s.multi_out:
                g = [grads[o] for o in s.outs]
                if all(v is None for v in g):
                    g = None
            else:
                g = grads[s.outs[0]]
            layer = s.layer
            if g is None:
                for pg in layer._gradients:
                    pg.fill(0)
                continue
            need = s.need_always or (want_inputs and s.reads_input)
            into = None
            if s.fuse_prev:
                into = steps[s.prev].layer._grad_epilogue()
            if logits and s.logits:
                gin = (layer._backward_logits(g, need, into=into) if into is not None
                       else layer._backward_logits(g, need))
            elif into is not None or dz_ready[s.outs[0]]:
                gin = layer._backward(g, need, into=into, grad_is_dz=dz_ready[s.outs[0]])
            else:
                gin = layer._backward(g, need)
            if into is not None:
                dz_ready[s.ins[0]] = True
            if need and gin is not None:
                if s.many or (isinstance(layer, Model) and layer._in_struct != "single"):
                    for slot, gi in zip(s.ins, gin):
                        if gi is not None:
                            self._accumulate(grads, owned, slot, gi)
                else:
                    self._accumulate(grads, owned, s.ins[0], gin)
        for p, r in self._pairs:
            np.add(p, r, out=p)
        return [grads[i] for i in self._in_slots] if want_inputs else None

    # -- extra loss terms (regularizers, add_loss) ----------------------------------------------
    def _seed_grads(self):
        """(slot, gradient) of each activity regularizer / add_loss term of this graph, from
        the values of the last forward pass (divided by the batch size)."""
        out = []
        for slot, reg in self._seeds:
            v = self._vals[slot]
            n = len(v)
            if reg is None:
                g = np.full(v.shape, 1.0 / n, v.dtype)
            else:
                g = reg.gradient(v)
                g *= 1.0 / n
            out.append((slot, g))
        return out

    def _aux_value(self):
        """This graph's activity regularizer and add_loss terms (nested models' included)
        for the last forward pass."""
        total = 0.0
        for slot, reg in self._seeds:
            v = self._vals[slot]
            total += (float(v.sum(dtype=np.float64)) if reg is None else reg(v)) / len(v)
        for m in self._nested_aux:
            total += m._aux_value()
        return total

    def _weight_penalty(self):
        return sum(reg(w) for w, _, reg in self._weight_regs)

    def _add_weight_reg_grads(self):
        for w, g, reg in self._weight_regs:
            reg.add_gradient(w, g)

    def add_loss(self, loss):
        """Add a loss term (Keras's add_loss): `loss` is a symbolic tensor of this model's
        graph (any layer's output, e.g. layers.GaussianKL()([z_mean, z_log_var])); the term
        is the batch mean of each sample's sum of its values. fit, train_on_batch,
        evaluate, compute_loss and backward include it; its gradient flows back through
        the layers that made it. The graph is rebuilt to reach the tensor (weights kept)."""
        if not isinstance(loss, SymbolicTensor):
            raise TypeError(f"add_loss takes a symbolic tensor of the model's graph (a layer's "
                            f"output); got {type(loss).__name__}. Penalties on weights: "
                            f"kernel_regularizer= etc.; on outputs: activity_regularizer=")
        if not self.built or isinstance(self, Sequential):
            raise ValueError("add_loss needs a functional model cn.Model(inputs, outputs) "
                             "built from the tensor's graph")
        if any(loss is t for t in self._loss_tensors):
            return
        self._loss_tensors.append(loss)
        try:
            self._init_graph(*self._io)
        except ValueError:
            self._loss_tensors.pop()
            raise ValueError(f"add_loss: tensor {loss.name!r} is not computed from the inputs "
                             f"of model {self.name!r}") from None
        self._fused_key = None

    @property
    def losses(self):
        """The extra loss terms of the last forward pass (activity regularizers, add_loss
        tensors) and the current weight penalties, as floats (Keras's model.losses)."""
        if not self.built:
            return []
        out = []
        for slot, reg in self._seeds:
            v = self._vals[slot]
            if v is not None:
                out.append((float(v.sum(dtype=np.float64)) if reg is None else reg(v)) / len(v))
        out.extend(m._aux_value() for m in self._nested_aux)
        out.extend(reg(w) for w, _, reg in self._weight_regs)
        return out

    # As a layer inside another model.
    def _forward(self, x, training):
        xs = x if self._in_struct != "single" else [x]
        outs = self._run_forward(xs, training)
        return outs[0] if self._out_struct == "single" else outs

    def _backward(self, grad_output, need_input_grad):
        gs = grad_output if self._out_struct != "single" else [grad_output]
        gin = self._run_backward(gs, want_inputs=need_input_grad)
        if not need_input_grad:
            return None
        return gin[0] if self._in_struct == "single" else gin

    def _output_has_mask(self, inputs):
        return any(t.has_mask for t in self.outputs)

    def _check_call_shapes(self, shapes):
        expected = [tuple(t.shape[1:]) for t in self.inputs]
        got = [tuple(s) for s in shapes] if self._in_struct != "single" else [tuple(shapes)]
        if got != expected:
            raise ValueError(f"model {self.name!r} takes inputs of shape "
                             f"{[(None,) + s for s in expected]}; called on "
                             f"{[(None,) + s for s in got]}")

    def build(self, input_shape):
        """Already built from its inputs: checks that `input_shape` (with or without the
        batch axis) is the inputs' shape."""
        if self._in_struct == "single":
            shape = _sample_shape(input_shape, len(self.input_shape))
            self._check_call_shapes(shape)
        else:
            self._check_call_shapes([_sample_shape(s, len(e)) for s, e in
                                     zip(input_shape, self.input_shape)])

    def compute_output_shape(self, input_shape):
        shapes = [tuple(t.shape[1:]) for t in self.outputs]
        return shapes[0] if self._out_struct == "single" else shapes

    @property
    def _n_inputs(self):
        return 1 if self._in_struct == "single" else len(self.inputs)

    @property
    def _input_names(self):
        return self.input_names

    def _inputs_from_dict(self, inputs):
        unknown = sorted(set(inputs) - set(self.input_names))
        if unknown:
            raise ValueError(f"model {self.name!r} has no inputs named {unknown}; its inputs are "
                             f"{self.input_names}")
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise ValueError(f"model {self.name!r}: inputs {missing} are missing")
        return [inputs[n] for n in self.input_names]

    def get_layer(self, name=None, index=None):
        """The layer called `name` (or at position `index` of model.layers)."""
        if index is not None:
            if not isinstance(index, numbers.Integral) or not -len(self.layers) <= index < len(
                    self.layers):
                raise ValueError(f"index {index!r} is not a position in model.layers "
                                 f"({len(self.layers)} layers)")
            return self.layers[index]
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise ValueError(f"model {self.name!r} has no layer named {name!r}; its layers are "
                         f"{[layer.name for layer in self.layers]}")

    # -- trainable ---------------------------------------------------------------------------
    @property
    def trainable(self):
        return self._model_trainable

    @trainable.setter
    def trainable(self, value):
        """As Keras: setting it sets every layer of the model (nested ones too)."""
        self._model_trainable = bool(value)
        for layer in self._param_layers if self.built else getattr(self, "layers", []):
            layer.trainable = bool(value)

    def _frozen_ranges(self, frozen=False):
        """(start, end) ranges of self._params that belong to frozen layers."""
        out = []
        for layer, a, b in self._ranges:
            f = frozen or not layer.trainable
            if isinstance(layer, Model):
                out.extend((a + x, a + y) for x, y in layer._frozen_ranges(f))
            elif f and b > a:
                out.append((a, b))
        return out

    def _trainable_segments(self):
        """None when everything trains, else the (start, end) ranges that do."""
        frozen = self._frozen_ranges(not self.trainable)
        if not frozen:
            return None
        segments, pos = [], 0
        for a, b in sorted(frozen):
            if a > pos:
                segments.append((pos, a))
            pos = max(pos, b)
        if pos < self._params.size:
            segments.append((pos, self._params.size))
        return segments

    def _zero_frozen(self, segments):
        if segments is None:
            return
        pos = 0
        for a, b in segments:
            self._grads[pos:a] = 0
            pos = b
        self._grads[pos:] = 0

    def _apply_optimizer(self, optimizer, segments):
        """optimizer.apply_gradients(model): a writer of the weights like any other."""
        self._begin_write("apply_gradients")
        try:
            if segments is None:
                optimizer.apply_gradients(self._params, self._grads)
            else:
                optimizer._apply_segments(self._params, self._grads, segments)
        finally:
            self._end_write()

    # -- weights -------------------------------------------------------------------------------
    def get_weights(self):
        """Copies of all weights, one consistent set even while another thread trains."""
        self._wlock.acquire_read()
        try:
            return [w for layer in self._param_layers for w in layer.get_weights()]
        finally:
            self._wlock.release_read()

    def set_weights(self, weights):
        self._require_built()
        weights = list(weights)
        expected = sum(len(layer._weights) for layer in self._param_layers)
        if len(weights) != expected:
            raise ValueError(f"the model has {expected} weight arrays; got {len(weights)}")
        checked, start = [], 0
        for layer in self._param_layers:  # check everything before changing anything
            n = len(layer._weights)
            checked.append(layer._check_weights(weights[start:start + n]))
            start += n
        self._begin_write("set_weights")
        try:
            for layer, layer_weights in zip(self._param_layers, checked):
                for current, new in zip(layer._weights, layer_weights):
                    current[...] = new
        finally:
            self._end_write()

    def _check_weights(self, weights):
        weights = list(weights)
        expected = sum(len(layer._weights) for layer in self._param_layers)
        if len(weights) != expected:
            raise ValueError(f"model {self.name!r} expects {expected} weight arrays; got "
                             f"{len(weights)}")
        checked, start = [], 0
        for layer in self._param_layers:
            n = len(layer._weights)
            checked.extend(layer._check_weights(weights[start:start + n]))
            start += n
        return checked

    def get_gradients(self):
        return [g for layer in self._param_layers for g in layer.get_gradients()]

    @property
    def trainable_weights(self):
        return [w for layer in self._param_layers for w in layer.trainable_weights]

    @property
    def non_trainable_weights(self):
        return [w for layer in self._param_layers for w in layer.non_trainable_weights]

    def __getstate__(self):
        state = self.__dict__.copy()
        for key in ("_vals", "_masks", "_acc", "_batch_buffers", "_buffers", "_slot_of",
                    "_steps", "_pairs", "_expected") + _THREAD_STATE:
            state.pop(key, None)
        return state

    def __setstate__(self, state):
        """Unpickling: layers' trainable weights become views of the flat buffers again
        (pickle stores views as separate copies)."""
        self.__dict__.update(state)
        self._buffers = {}
        self._init_threading()
        if self.built:
            # joblib may hand back read-only memory maps: training needs writable arrays
            self._params = np.require(self._params, requirements=["C", "W"])
            self._grads = np.require(self._grads, requirements=["C", "W"])
            if self.optimizer is not None:
                self.optimizer.slots = {k: np.require(v, requirements=["C", "W"])
                                        for k, v in self.optimizer.slots.items()}
            self._assign_slots()       # slots are keyed by object ids: new ones here
            _BIND_EPOCH[0] += 1
            self._bind(self._params, self._grads, 0)

    # -- configuration and files ---------------------------------------------------------------
    def get_config(self):
        """The graph as JSON types: its layers (each once, as {"class_name", "config"}),
        its inputs, and its nodes in topological order (layer name and input tensor ids:
        the inputs are tensors 0..k-1, each node's outputs the next ids)."""
        self._require_built()
        tensor_id = {}
        for t in self.inputs:
            tensor_id[id(t)] = len(tensor_id)
        nodes = []
        for node in self._nodes:
            nodes.append({"layer": node.layer.name,
                          "inputs": [tensor_id[id(t)] for t in node.inputs],
                          "many": bool(node.many_inputs)})
            for t in node.outputs:
                tensor_id[id(t)] = len(tensor_id)
        names = [layer.name for layer in self._param_layers]
        if len(set(names)) != len(names):
            raise ValueError(f"model {self.name!r} has two layers of one name; layer names must "
                             f"be unique to save the model")
        config = {"name": self.name, "dtype": self.dtype.name,
                "layers": [_serialize(layer) for layer in self._param_layers],
                "inputs": [layer.get_config() for layer in (t.node.layer for t in self.inputs)],
                "input_structure": self._in_struct, "output_structure": self._out_struct,
                "nodes": nodes, "outputs": [tensor_id[id(t)] for t in self.outputs],
                "output_names": list(self.output_names)}
        if self._loss_tensors:
            config["added_losses"] = [tensor_id[id(t)] for t in self._loss_tensors]
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        """A new model (fresh weights) from get_config()'s dict."""
        if not isinstance(config, dict) or not isinstance(config.get("nodes"), list) \
                or not isinstance(config.get("layers"), list) \
                or not isinstance(config.get("inputs"), list):
            raise ValueError("a Model config must be a dict with 'layers', 'inputs' and 'nodes'")
        try:
            layers = {}
            for spec in config["layers"]:
                layer = _deserialize(spec, custom_objects)
                layers[layer.name] = layer
            dtype = config.get("dtype", "float32")
            tensors = [Input(shape=tuple(c["shape"]), dtype=dtype, name=c["name"])
                       for c in config["inputs"]]
            def tensor(i):
                if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(tensors):
                    raise IndexError(f"tensor id {i!r} is not one made before it")
                return tensors[i]

            for node in config["nodes"]:
                layer = layers[node["layer"]]
                args = [tensor(i) for i in node["inputs"]]
                if not args:
                    raise IndexError(f"node of layer {node['layer']!r} has no inputs")
                out = layer(args if node.get("many") or len(args) > 1 else args[0])
                tensors.extend(out if isinstance(out, list) else [out])
            outs = [tensor(i) for i in config["outputs"]]
            names = config.get("output_names")
            ins = tensors[:len(config["inputs"])]
            inputs = ins[0] if config.get("input_structure") == "single" else \
                ({t.node.layer.name: t for t in ins} if config.get("input_structure") == "dict"
                 else ins)
            if config.get("output_structure") == "single":
                outputs = outs[0]
            elif config.get("output_structure") == "dict":
                outputs = dict(zip(names, outs))
            else:
                outputs = outs
            model = cls(inputs, outputs, name=config.get("name"))
            for i in config.get("added_losses") or []:
                model.add_loss(tensor(i))
        except (KeyError, IndexError, TypeError) as exc:
            raise ValueError(f"invalid Model config: {type(exc).__name__}: {exc}") from None
        if names and config.get("output_structure") != "dict":
            model.output_names = list(names)
        return model

    def save(self, filepath, include_optimizer=True):
        """Write architecture, compile settings, weights (and the optimizer state) to one
        file, atomically; `cn.load_model(filepath)` reads it back. No pickle is used."""
        self._wlock.acquire_read()      # one consistent set of weights and optimizer state
        try:
            saving.save_model(self, filepath, include_optimizer=include_optimizer)
        finally:
            self._wlock.release_read()

    def save_weights(self, filepath):
        """Write only the weights (get_weights() order) to a file, atomically."""
        self._wlock.acquire_read()
        try:
            saving.save_weights(self, filepath)
        finally:
            self._wlock.release_read()

    def load_weights(self, filepath):
        """Read weights written by save_weights (or save) into this model (same architecture)."""
        saving.load_weights(self, filepath)

    # -- training set-up -----------------------------------------------------------------------
    def _per_output(self, value, what, default=None):
        """`value` (one for all outputs, a list, or a dict by output name) as a list."""
        n = len(self.output_names)
        if isinstance(value, dict):
            unknown = sorted(set(value) - set(self.output_names))
            if unknown:
                raise ValueError(f"compile: {what} names unknown outputs {unknown}; the model's "
                                 f"outputs are {self.output_names}")
            return [value.get(name, default) for name in self.output_names]
        if isinstance(value, (list, tuple)) and what != "metrics":
            if len(value) != n:
                raise ValueError(f"compile: {what} has {len(value)} entries; the model has {n} "
                                 f"outputs {self.output_names}")
            return list(value)
        return [value] * n

    def compile(self, optimizer="sgd", loss=None, metrics=None, loss_weights=None):
        """Optimizer, loss(es) and metrics. Several outputs: loss, metrics and loss_weights
        as one for all, a list in output order, or a dict by output name (outputs without
        a loss are not trained); the loss trained is the weighted sum of the outputs'."""
        if loss is None:
            raise ValueError("compile: a loss is required, e.g. loss='mean_squared_error'")
        self._require_built_graph()
        n = len(self.output_names)
        per_loss = self._per_output(loss, "loss")
        losses, seen = [], set()
        for item in per_loss:
            if item is None:
                losses.append(None)
                continue
            instance = _losses.get(item)
            if id(instance) in seen:          # one instance per output: each owns its buffers
                instance = copy.deepcopy(instance)
            seen.add(id(instance))
            losses.append(instance)
        if all(item is None for item in losses):
            raise ValueError(f"compile: no output has a loss (outputs {self.output_names})")
        weights = [1.0] * n if loss_weights is None else self._per_output(loss_weights,
                                                                          "loss_weights", 0.0)
        for name, w in zip(self.output_names, weights):
            if isinstance(w, bool) or not isinstance(w, numbers.Real) or not np.isfinite(w) \
                    or w < 0:
                raise ValueError(f"compile: loss_weights for output {name!r} must be a finite "
                                 f"number >= 0, got {w!r}")
        if isinstance(metrics, str):
            metrics = [metrics]
        if isinstance(metrics, dict):
            per_metrics = self._per_output(metrics, "metrics", [])
        elif isinstance(metrics, (list, tuple)) and n > 1 and metrics and \
                all(isinstance(m, (list, tuple)) or m is None for m in metrics):
            if len(metrics) != n:
                raise ValueError(f"compile: metrics has {len(metrics)} lists; the model has {n} "
                                 f"outputs {self.output_names}")
            per_metrics = list(metrics)
        else:
            per_metrics = [list(metrics or [])] * n
        out_metrics = []
        for k, ms in enumerate(per_metrics):
            ms = [ms] if isinstance(ms, str) or not isinstance(ms, (list, tuple)) and ms else ms
            made = [_metrics.get(m) for m in (ms or [])]
            if k > 0:
                made = [copy.deepcopy(m) for m in made]    # each output keeps its own state
            out_metrics.append(made)
        self.optimizer = _optimizers.get(optimizer)
        self._losses = losses
        self._loss_weights = [float(w) for w in weights]
        self._out_metrics = out_metrics
        self.loss = losses[0] if n == 1 else losses
        self.metrics = out_metrics[0] if n == 1 else [m for ms in out_metrics for m in ms]
        self._compiled_segments = self._trainable_segments() if self.built else None
        self._fused_key = None
        self._compile_serial += 1      # pooled inference replicas copy losses and metrics

    def _metric_names(self):
        if len(self.output_names) == 1:
            return [[m.name for m in self._out_metrics[0]]]
        return [[f"{name}_{m.name}" for m in ms]
                for name, ms in zip(self.output_names, self._out_metrics)]

    # -- data checks ---------------------------------------------------------------------------
    def _require_built_graph(self):
        if not self.built:
            raise RuntimeError("the model is not built yet: call build(input_shape) or fit/predict")

    def _as_inputs(self, x, name="x"):
        """x (an array, a list or a dict by input name) as a list of raw inputs."""
        k = len(self.inputs) if self.built else 1
        names = self.input_names if self.built else []
        if isinstance(x, dict):
            if not self.built:
                raise ValueError(f"{name}: a dict of inputs needs a built model")
            unknown = sorted(set(x) - set(names))
            if unknown:
                raise ValueError(f"{name} names unknown inputs {unknown}; the model's inputs are "
                                 f"{names}")
            missing = [n for n in names if n not in x]
            if missing:
                raise ValueError(f"{name} lacks inputs {missing}")
            return [x[n] for n in names]
        if k == 1:
            if isinstance(x, (list, tuple)) and len(x) == 1 and hasattr(x[0], "shape") \
                    and np.ndim(x[0]) >= 2:
                return [x[0]]
            return [x]
        if not isinstance(x, (list, tuple)) or len(x) != k:
            got = f"a list of {len(x)}" if isinstance(x, (list, tuple)) else type(x).__name__
            raise ValueError(f"the model has {k} inputs {names}; {name} must be a list of {k} "
                             f"arrays or a dict by name, got {got}")
        return list(x)

    def _check_x(self, x, name="x"):
        """Checked input arrays (a list), converted to the model dtype; builds an unbuilt
        Sequential from the first array's shape."""
        raw = self._as_inputs(x, name)
        xs = []
        for i, xi in enumerate(raw):
            label = name if len(raw) == 1 else f"{name}[{self.input_names[i]!r}]" \
                if self.built else name
            arr = check_array(xi, label, self.dtype)
            if arr.ndim < 2:
                raise ValueError(f"{label} must be at least 2-D (samples, features); got shape "
                                 f"{arr.shape}")
            xs.append(arr)
        if not self.built:
            with self._build_lock:       # two threads' first calls build it once
                if not self.built:
                    self.build(xs[0].shape[1:])
        for i, arr in enumerate(xs):
            expected = tuple(self.inputs[i].shape[1:])
            label = name if len(xs) == 1 else f"{name}[{self.input_names[i]!r}]"
            if arr.shape[1:] != expected:
                raise ValueError(f"{label} has per-sample shape {arr.shape[1:]}; the model expects "
                                 f"{expected}")
            if len(arr) != len(xs[0]):
                raise ValueError(f"the inputs have different numbers of samples: "
                                 f"{[len(a) for a in xs]}")
        return xs

    def _as_targets(self, y, name="y"):
        """y as a list per output (None for outputs without a loss)."""
        n = len(self.output_names)
        if isinstance(y, dict):
            unknown = sorted(set(y) - set(self.output_names))
            if unknown:
                raise ValueError(f"{name} names unknown outputs {unknown}; the model's outputs "
                                 f"are {self.output_names}")
            ys = [y.get(o) for o in self.output_names]
        elif n == 1:
            ys = [y[0] if isinstance(y, (list, tuple)) and len(y) == 1 and
                  hasattr(y[0], "shape") else y]
        else:
            if not isinstance(y, (list, tuple)) or len(y) != n:
                got = f"a list of {len(y)}" if isinstance(y, (list, tuple)) else type(y).__name__
                raise ValueError(f"the model has {n} outputs {self.output_names}; {name} must be "
                                 f"a list of {n} arrays or a dict by output name, got {got}")
            ys = list(y)
        for k, (loss, yk) in enumerate(zip(self._losses, ys)):
            if loss is not None and yk is None:
                raise ValueError(f"{name} has no target for output {self.output_names[k]!r}, "
                                 f"which has a loss")
        return ys

    def _check_xy(self, x, y, x_name="x", y_name="y"):
        """(inputs, targets) checked and prepared by each output's loss; single-input,
        single-output models get arrays, others lists."""
        xs = self._check_x(x, x_name)
        if y is None:
            raise ValueError(f"{y_name} is required")
        ys = self._as_targets(y, y_name)
        n = len(xs[0])
        targets = []
        for k, (loss, yk) in enumerate(zip(self._losses, ys)):
            if loss is None:
                targets.append(None)
                continue
            label = y_name if len(ys) == 1 else f"{y_name}[{self.output_names[k]!r}]"
            arr = np.asarray(yk) if not isinstance(yk, np.ndarray) else yk
            if len(arr) != n:
                raise ValueError(f"{x_name} and {label} must have the same number of samples; "
                                 f"got {n} and {len(arr)}")
            shape = (n,) + tuple(self.outputs[k].shape[1:])
            targets.append(loss.prepare_targets(arr, shape, self.dtype, name=label))
        return self._unwrap_in(xs), self._unwrap_out(targets)

    def _unwrap_in(self, xs):
        return xs[0] if len(self.inputs) == 1 else xs

    def _unwrap_out(self, values):
        return values[0] if len(self.outputs) == 1 else values

    def _wrap_in(self, x):
        return [x] if len(self.inputs) == 1 else x

    def _wrap_out(self, v):
        return [v] if len(self.outputs) == 1 else (v if v is not None else [None] * len(
            self.outputs))

    def _require_compiled(self):
        if not self._losses or self.optimizer is None:
            raise RuntimeError("the model must be compiled first: call model.compile(...)")

    def _require_built(self):
        if not self.built:
            raise RuntimeError("the model is not built yet: call build(input_shape) or fit/predict")

    # -- one step --------------------------------------------------------------------------------
    def _forward_backward(self, x, targets, sample_weight=None):
        """Forward in training mode, losses, backward. Fills the flat gradient buffer.
        Returns (loss, outputs): arrays for one output, lists for several."""
        self._ensure_bound()
        self._update_fusion()
        if self._chain is not None:
            return self._chain_forward_backward(x, targets, sample_weight)
        xs, ts, ws = self._wrap_in(x), self._wrap_out(targets), self._wrap_out(sample_weight)
        outs = self._run_forward(xs, True, logits=True)
        out_grads, per_output, total = [], [], 0.0
        for k, out in enumerate(outs):
            loss = self._losses[k]
            if loss is None:
                out_grads.append(None)
                per_output.append(None)
                continue
            mask = self._masks[self._out_slots[k]] if self._has_masks else None
            if self._fused[k]:
                value, g = loss.value_and_grad_logits(ts[k], out, ws[k], mask=mask) \
                    if mask is not None else loss.value_and_grad_logits(ts[k], out, ws[k])
            else:
                value, g = loss.value_and_grad(ts[k], out, ws[k], mask=mask) \
                    if mask is not None else loss.value_and_grad(ts[k], out, ws[k])
            lw = self._loss_weights[k]
            if lw != 1.0:
                g *= lw
            out_grads.append(g)
            per_output.append(value)
            total = (value if lw == 1.0 else lw * value) if len(outs) == 1 else total + lw * value
        self._last_losses = per_output
        if self._has_aux:
            total = total + self._aux_value()
        if self._weight_regs:
            total = total + self._weight_penalty()
        self._run_backward(out_grads, logits=True)
        if self._weight_regs:
            self._add_weight_reg_grads()
        self._zero_frozen(self._compiled_segments)
        for k in range(len(outs)):
            if self._fused[k]:
                outs[k] = self._fused_activation(outs[k], k)
        return total, self._unwrap_out(outs)

    def _chain_forward_backward(self, x, targets, sample_weight):
        """_forward_backward for a one-path graph: the same calls as the general loop,
        without its bookkeeping."""
        layers, fuse = self._chain, self._chain_fuse
        h = x
        for layer in layers[:-1]:
            h = layer._forward(h, True)
        last = layers[-1]
        n = len(layers)
        into = layers[n - 2]._grad_epilogue() if fuse[n - 1] else None
        extra = {} if into is None else {"into": into}
        loss_fn = self._losses[0]
        fused = self._fused[0]
        if fused:
            out = last._forward_logits(h, True)
            loss, g = loss_fn.value_and_grad_logits(targets, out, sample_weight)
        else:
            out = last._forward(h, True)
            loss, g = loss_fn.value_and_grad(targets, out, sample_weight)
        lw = self._loss_weights[0]
        if lw != 1.0:
            g *= lw
            loss = loss * lw
        self._last_losses = [loss]
        if fused:
            g = last._backward_logits(g, n > 1, **extra)
            out = self._fused_activation(out)
        else:
            g = last._backward(g, n > 1, **extra)
        for i in range(n - 2, -1, -1):
            g_is_dz = into is not None   # layer i+1 applied layer i's derivative
            into = layers[i - 1]._grad_epilogue() if fuse[i] else None
            if into is None and not g_is_dz:
                g = layers[i]._backward(g, i > 0)
            else:
                g = layers[i]._backward(g, i > 0, into=into, grad_is_dz=g_is_dz)
        if self._weight_regs:
            loss = loss + self._weight_penalty()
            self._add_weight_reg_grads()
        if self._compiled_segments is not None:
            self._zero_frozen(self._compiled_segments)
        return loss, out

    def _fused_activation(self, z, k=0):
        """The output activation applied in place to the logits of the fused path, so
        that metrics see the model's outputs (probabilities); skipped without metrics."""
        if not self._out_metrics[k]:
            return z
        return self._output_step(k).layer.activation.forward(z, out=z)

    def _train_step(self, x, targets, sample_weight=None):
        """One step (the caller holds the model's own state). Passes on replicas in other
        threads read the weights meanwhile: the optimizer update (and a forward pass that
        moves non-trainable statistics) takes them exclusively."""
        lock = self._wlock
        if self._stateful:
            lock.acquire_write()
            try:
                loss, out = self._forward_backward(x, targets, sample_weight)
                self._optimizer_update()
            finally:
                lock.release_write()
            return loss, out
        loss, out = self._forward_backward(x, targets, sample_weight)
        lock.acquire_write()
        try:
            self._optimizer_update()
        finally:
            lock.release_write()
        return loss, out

    def _optimizer_update(self):
        if self._compiled_segments is None:
            self.optimizer.apply_gradients(self._params, self._grads)
        else:
            self.optimizer._apply_segments(self._params, self._grads, self._compiled_segments)

    def _update_metrics(self, targets, outs, start_logs=None):
        """Add a batch to every metric; returns their results (by log name)."""
        logs = {}
        ts, os_ = self._wrap_out(targets), self._wrap_out(outs)
        names = self._metric_names()
        for k, ms in enumerate(self._out_metrics):
            mask = self._masks[self._out_slots[k]] if self._has_masks else None
            for m, name in zip(ms, names[k]):
                if mask is None:
                    m.update(ts[k], os_[k])
                else:
                    m.update(ts[k], os_[k], sample_weight=mask)
                logs[name] = m.result()
        return logs

    def _reset_metrics(self):
        for ms in self._out_metrics:
            for m in ms:
                m.reset()

    def _loss_logs(self, loss):
        logs = {"loss": float(loss)}
        if len(self.outputs) > 1:
            for name, value in zip(self.output_names, self._last_losses):
                if value is not None:
                    logs[f"{name}_loss"] = float(value)
        return logs

    def train_on_batch(self, x, y, sample_weight=None, class_weight=None, return_dict=False):
        """One optimizer step on the batch (x, y). Returns the loss (and metrics)."""
        self._require_compiled()
        self._begin_training("train_on_batch")
        try:
            if self._custom_train_step():
                logs = self.train_step(_pack(x, y, sample_weight))
                return logs if return_dict else _logs_result(logs)
            x, targets = self._check_xy(x, y)
            weights = self._sample_weights(y, len(self._wrap_in(x)[0]), sample_weight,
                                           class_weight)
            loss, out = self._train_step(x, targets, weights)
            logs = self._loss_logs(loss)
            self._reset_metrics()
            logs.update(self._update_metrics(targets, out))
        finally:
            self._end_training()
        if return_dict:
            return logs
        return _logs_result(logs)

    def compute_gradients(self, x, y):
        """(loss, grads) on the batch, grads in get_weights() order (zeros for the
        non-trainable weights); updates nothing, moving statistics included."""
        self._require_compiled()
        self._begin_training("compute_gradients")
        try:
            x, targets = self._check_xy(x, y)
            state = self.non_trainable_weights
            saved = [w.copy() for w in state]
            self._wlock.acquire_write()     # moving statistics change for a moment
            try:
                loss, _ = self._forward_backward(x, targets)
            finally:
                for w, value in zip(state, saved):
                    w[...] = value
                self._wlock.release_write()
            return float(loss), self.get_gradients()
        finally:
            self._end_training()

    # -- custom training loops --------------------------------------------------------------------
    def __call__(self, inputs, training=False, **kwargs):
        """On symbolic tensors: nest this model in a graph. On arrays: one forward pass over
        the whole batch (kept for `backward`); returns new arrays (a list, or a dict, for
        several outputs)."""
        if is_symbolic(inputs):
            return super().__call__(inputs, **kwargs)
        if kwargs:
            raise TypeError(f"model {self.name!r}: unexpected arguments {sorted(kwargs)}")
        xs = self._check_x(inputs, "x")
        if not training:
            runner = self._take_runner()
            try:
                runner._ensure_bound()
                outs = runner._run_forward(xs, False)
                runner._called_with = [x.shape for x in xs]
                return self._structure_outputs([np.array(o) for o in outs])
            finally:
                self._give_back(runner)
        # a training pass: its state is kept for backward (other threads' inference uses
        # replicas meanwhile); moving statistics change, so it writes
        self._check_not_training_elsewhere("model(x, training=True)")
        _config.apply_num_threads()
        self._own.acquire()
        try:
            self._ensure_bound()
            self._awaiting_backward = True
            if self._stateful:
                self._wlock.acquire_write()
                try:
                    outs = self._run_forward(xs, True)
                finally:
                    self._wlock.release_write()
            else:
                outs = self._run_forward(xs, True)
            self._called_with = [x.shape for x in xs]
            return self._structure_outputs([np.array(o) for o in outs])
        finally:
            self._own.release()

    def backward(self, grad_output, input_grads=True, weight_grads=True):
        """After `y = model(x, training=True)`: back-propagates d(loss)/dy (an array, or a
        list / dict per output; None for no gradient), fills the flat gradient buffer
        (frozen layers' ranges zeroed) and returns d(loss)/dx (a list for several inputs).
        input_grads=False: d(loss)/dx is not computed (returns None), as for a step on data.
        weight_grads=False: the gradient buffer is zeroed and layers that can skip their
        weight gradients do (convolutions), as for a GAN's generator step through D."""
        if not hasattr(self, "_called_with"):
            raise RuntimeError(f"model {self.name!r}: call model(x, training=True) before "
                               f"backward")
        if isinstance(grad_output, dict):
            unknown = sorted(set(grad_output) - set(self.output_names))
            if unknown:
                raise ValueError(f"grad_output names unknown outputs {unknown}; the model's "
                                 f"outputs are {self.output_names}")
            gs = [grad_output.get(n) for n in self.output_names]
        elif len(self.outputs) == 1:
            gs = [grad_output]
        else:
            if not isinstance(grad_output, (list, tuple)) or len(grad_output) != len(self.outputs):
                raise ValueError(f"the model has {len(self.outputs)} outputs; grad_output must be "
                                 f"a list of {len(self.outputs)} arrays (or None) or a dict")
            gs = list(grad_output)
        n = self._called_with[0][0]
        checked = []
        for k, g in enumerate(gs):
            if g is None:
                checked.append(None)
                continue
            label = "grad_output" if len(gs) == 1 else f"grad_output[{self.output_names[k]!r}]"
            g = check_array(g, label, self.dtype)
            expected = (n,) + tuple(self.outputs[k].shape[1:])
            if g.shape != expected:
                raise ValueError(f"{label} must have the shape of the output {expected}; got "
                                 f"{g.shape}")
            checked.append(g)
        self._check_not_training_elsewhere("backward")
        with self._own:
            skip = [] if weight_grads else self._param_layers
            for layer in skip:
                layer._skip_weight_grads = True
            try:
                gin = self._run_backward(checked, want_inputs=bool(input_grads))
            finally:
                for layer in skip:
                    del layer._skip_weight_grads
            if not weight_grads:
                self._grads.fill(0)
            elif self._weight_regs:
                self._add_weight_reg_grads()
            self._zero_frozen(self._trainable_segments())
            if not input_grads:
                self._awaiting_backward = False
                return None
            gin = [np.zeros(shape, self.dtype) if g is None else np.array(g)
                   for g, shape in zip(gin, self._called_with)]
            self._awaiting_backward = False
        return gin[0] if len(gin) == 1 else gin

    def _custom_train_step(self):
        return type(self).train_step is not Model.train_step

    def train_step(self, data):
        """One training step on `data` = (x, y) or (x, y, sample_weight); returns the logs.
        Override it (Keras 3 style) for what fit cannot express; inside, use
        `self(x, training=True)`, `self.compute_loss(...)`, `self.backward(dy)` and
        `self.optimizer.apply_gradients(self)`."""
        x, y, sw = _unpack(data)
        x, targets = self._check_xy(x, y)
        weights = self._sample_weights(y, len(self._wrap_in(x)[0]), sw, None)
        loss, out = self._train_step(x, targets, weights)
        logs = self._loss_logs(loss)
        logs.update(self._update_metrics(targets, out))
        return logs

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None):
        """(loss, d loss / d y_pred) of the compiled loss(es) for predictions y_pred (an
        array or a list per output) against y; the gradient is what `backward` takes."""
        self._require_compiled()
        preds = self._wrap_out(y_pred) if not isinstance(y_pred, dict) else \
            [y_pred.get(n) for n in self.output_names]
        ys = self._as_targets(y)
        ws = self._wrap_out(sample_weight)
        total, grads = 0.0, []
        for k, (loss, yk, pk) in enumerate(zip(self._losses, ys, preds)):
            if loss is None:
                grads.append(None)
                continue
            pk = check_array(pk, "y_pred", self.dtype)
            t = loss.prepare_targets(np.asarray(yk), pk.shape, self.dtype)
            w = None if ws[k] is None else _losses.check_sample_weight(ws[k], len(pk),
                                                                       self.dtype, allow_nd=True)
            value, g = loss.value_and_grad(t, pk, w)
            total += self._loss_weights[k] * value
            grads.append(g * self._loss_weights[k])
        if self._has_aux:        # from the last forward pass, as backward adds their gradients
            total += self._aux_value()
        if self._weight_regs:
            total += self._weight_penalty()
        return float(total), self._unwrap_out(grads)

    # -- loops -----------------------------------------------------------------------------------
    def fit(self, x, y=None, epochs=1, batch_size=32, shuffle=True, validation_data=None,
            validation_split=0.0, verbose=1, callbacks=None, sample_weight=None,
            class_weight=None, initial_epoch=0, distributed=False):
        """Train for `epochs` passes over (x, y) in mini-batches; returns a History.

        x / y: arrays, or lists / dicts (by input / output name) for several inputs or
        outputs. verbose: 0 silent, 1 a progress bar per batch with loss, metrics and ETA
        (tqdm where installed), 2 one line per epoch.
        callbacks: Callback instances (cn.callbacks), called at train, epoch and batch
        begin/end; a callback may set `model.stop_training = True` (fit stops after the
        current batch, then finishes the epoch's validation and callbacks).
        sample_weight: one weight per sample (or per time step, (samples, steps)),
        multiplying its loss. class_weight: a dict {class index: weight} (classes not in
        it weigh 1) or "balanced" (n_samples / (n_classes * count)); multiplies sample_weight.
        validation_data: (x_val, y_val) or (x_val, y_val, sample_weight_val).
        initial_epoch: the epoch to start from (to resume a run; epochs is the last one).
        distributed: True under mpirun: data-parallel training over MPI, (x, y) being this
        rank's samples and batch_size per rank (see cyneuron.distributed.fit).

        Ctrl-C (KeyboardInterrupt) stops fit at the end of the current step, as Keras 3
        does: the exception propagates (no on_train_end), the model holds the weights and
        optimizer state of the last finished step (consistent, saveable) and
        model.history the finished epochs. One thread trains a model at a time: fit from
        a second thread while one runs raises RuntimeError; predict / evaluate / model(x)
        from other threads run alongside on replicas and see one consistent set of weights.
        """
        if distributed:
            from . import distributed as _distributed
            return _distributed.fit(self, x, y, epochs=epochs, batch_size=batch_size,
                                    shuffle=shuffle, validation_data=validation_data,
                                    validation_split=validation_split, verbose=verbose,
                                    callbacks=callbacks, sample_weight=sample_weight,
                                    class_weight=class_weight, initial_epoch=initial_epoch)
        self._require_compiled()
        self._begin_training("fit")
        try:
            with _DeferredInterrupt() as interrupt:
                return self._fit(interrupt, x, y, epochs, batch_size, shuffle, validation_data,
                                 validation_split, verbose, callbacks, sample_weight,
                                 class_weight, initial_epoch)
        finally:
            self._end_training()

    def _fit(self, interrupt, x, y, epochs, batch_size, shuffle, validation_data,
             validation_split, verbose, callbacks, sample_weight, class_weight, initial_epoch):
        check_positive(epochs, "epochs", integer=True)
        check_positive(batch_size, "batch_size", integer=True)
        if isinstance(initial_epoch, bool) or not isinstance(initial_epoch, numbers.Integral) \
                or not 0 <= initial_epoch <= epochs:
            raise ValueError(f"initial_epoch must be an integer in [0, epochs={epochs}], "
                             f"got {initial_epoch!r}")
        if verbose not in (0, 1, 2):
            raise ValueError(f"verbose must be 0, 1 or 2, got {verbose!r}")
        if not 0 <= validation_split < 1:
            raise ValueError(f"validation_split must be in [0, 1), got {validation_split!r}")
        custom = self._custom_train_step()
        if custom:
            xs = [np.asarray(a) for a in self._as_inputs(x)]
            ys = None if y is None else [None if a is None else np.asarray(a)
                                         for a in self._as_targets(y)]
            weights = None if sample_weight is None else \
                [None if w is None else np.asarray(w) for w in self._wrap_out(sample_weight)]
        else:
            xs, targets = self._check_xy(x, y)
            xs, ys = self._wrap_in(xs), self._wrap_out(targets)
            weights = self._wrap_out(self._sample_weights(y, len(xs[0]), sample_weight,
                                                          class_weight))
        n_all = len(xs[0])
        if validation_data is not None:
            if validation_split:
                raise ValueError("give validation_data or validation_split, not both")
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
                raise ValueError("validation_data must be a tuple (x_val, y_val) or "
                                 "(x_val, y_val, sample_weight_val)")
            x_val, t_val = self._check_xy(*validation_data[:2], x_name="x_val", y_name="y_val")
            w_val = None
            if len(validation_data) == 3 and validation_data[2] is not None:
                w_val = self._sample_weights(None, len(self._wrap_in(x_val)[0]),
                                             validation_data[2], None)
            val = (x_val, t_val, w_val)
        elif validation_split:
            n_val = int(n_all * validation_split)
            if n_val == 0 or n_val == n_all:
                raise ValueError(f"validation_split={validation_split} leaves an empty split "
                                 f"of {n_all} samples")
            cut = lambda arrays, part: None if arrays is None else [  # noqa: E731
                None if a is None else (a[-n_val:] if part else a[:-n_val]) for a in arrays]
            if custom:
                val_x, val_y = cut(xs, True), cut(ys, True)
                vx, vt = self._check_xy(self._unwrap_in(val_x), self._unwrap_out(val_y))
                val = (vx, vt, None)
            else:
                val = (self._unwrap_in(cut(xs, True)), self._unwrap_out(cut(ys, True)),
                       self._unwrap_out(cut(weights, True)))
            xs, ys, weights = cut(xs, False), cut(ys, False), cut(weights, False)
        else:
            val = None

        n = len(xs[0])
        steps = (n + batch_size - 1) // batch_size
        dist = self.__dict__.get("_distributed")    # set by cyneuron.distributed.fit
        if dist is not None:
            steps = dist.begin(self, n, batch_size)
        params = {"epochs": epochs, "steps": steps, "verbose": verbose}
        history = History()
        history.set_model(self)
        history.set_params(params)
        self.history = history
        progress = make_progress(verbose, epochs, steps)
        callbacks = CallbackList(callbacks, self, params)
        rng = get_rng()
        self.stop_training = False
        logs = {}
        no_weights = weights is None or all(w is None for w in weights)
        callbacks.call("on_train_begin", {})
        # callbacks.BackupAndRestore restores a backup in on_train_begin and says from which
        # epoch to go on (as Keras 3's fit reads model._initial_epoch)
        initial_epoch = self.__dict__.pop("_initial_epoch", None) or initial_epoch
        try:
            for epoch in range(initial_epoch, epochs):
                order = rng.permutation(n) if shuffle else np.arange(n)
                self._reset_metrics()
                callbacks.call("on_epoch_begin", epoch, {})
                progress.epoch_begin(epoch)
                loss_sum, seen, sums = 0.0, 0, {}
                for step in range(steps):
                    callbacks.call("on_train_batch_begin", step, {})
                    idx = order[step * batch_size:(step + 1) * batch_size]
                    if dist is not None:
                        dist.step(step, len(idx))
                        if not len(idx):        # this rank's samples are used up
                            dist.empty_step(self)
                            progress.batch_end(step, logs)
                            callbacks.call("on_train_batch_end", step, logs)
                            if self.stop_training:
                                break
                            continue
                    xb = [self._gather(a, idx, f"x{i}") for i, a in enumerate(xs)]
                    tb = [None if a is None else self._gather(a, idx, f"t{i}")
                          for i, a in enumerate(ys)]
                    wb = None if no_weights else [
                        None if a is None else self._gather(a, idx, f"w{i}")
                        for i, a in enumerate(weights)]
                    if custom:
                        step_logs = self.train_step(_pack(
                            self._unwrap_in(xb), self._unwrap_out(tb),
                            None if wb is None else self._unwrap_out(wb)))
                        step_logs = {k: float(v) for k, v in dict(step_logs).items()}
                        for k, v in step_logs.items():
                            sums[k] = sums.get(k, 0.0) + v * len(idx)
                        seen += len(idx)
                        logs = {k: v / seen for k, v in sums.items()}
                    else:
                        loss, out = self._train_step(self._unwrap_in(xb), self._unwrap_out(tb),
                                                     None if wb is None else self._unwrap_out(wb))
                        loss_sum += float(loss) * len(idx)
                        seen += len(idx)
                        logs = {"loss": loss_sum / seen}
                        if len(self.outputs) > 1:
                            for name, value in zip(self.output_names, self._last_losses):
                                if value is not None:
                                    key = f"{name}_loss"
                                    sums[key] = sums.get(key, 0.0) + float(value) * len(idx)
                                    logs[key] = sums[key] / seen
                        logs.update(self._update_metrics(self._unwrap_out(tb), out))
                    progress.batch_end(step, logs)
                    callbacks.call("on_train_batch_end", step, logs)
                    if interrupt.hit:
                        raise KeyboardInterrupt(f"fit interrupted after step {step + 1} of "
                                                f"epoch {epoch + 1}")
                    if self.stop_training:
                        break
                if val is not None:
                    logs.update(("val_" + k, v) for k, v in self._evaluate(*val[:2], batch_size,
                                                                            val[2]).items())
                callbacks.call("on_epoch_end", epoch, logs)
                history.record(epoch, logs)
                progress.epoch_end(logs)
                if interrupt.hit:
                    raise KeyboardInterrupt(f"fit interrupted after epoch {epoch + 1}")
                if self.stop_training:
                    break
        except BaseException:
            progress.close()     # then the exception propagates (Keras 3: no on_train_end)
            raise
        progress.close()
        callbacks.call("on_train_end", logs)
        return history

    def _sample_weights(self, y, n, sample_weight, class_weight):
        """Loss weights from sample_weight and class_weight: None, or per output (an array
        for one output, a list for several)."""
        k = len(self.outputs)
        if sample_weight is None:
            per = [None] * k
        elif isinstance(sample_weight, dict):
            unknown = sorted(set(sample_weight) - set(self.output_names))
            if unknown:
                raise ValueError(f"sample_weight names unknown outputs {unknown}")
            per = [sample_weight.get(name) for name in self.output_names]
        elif k > 1 and isinstance(sample_weight, (list, tuple)) and len(sample_weight) == k:
            per = list(sample_weight)
        else:
            per = [sample_weight] * k
        out = []
        for j, w in enumerate(per):
            w = _losses.check_sample_weight(w, n, self.dtype, allow_nd=True)
            if w is not None:
                if (w < 0).any():
                    raise ValueError("sample_weight must be non-negative")
                steps = (n,) + tuple(self.outputs[j].shape[1:-1]) if self.built else None
                if w.ndim > 1 and (steps is None or w.shape != steps):
                    raise ValueError(f"sample_weight has shape {w.shape}; give one weight per "
                                     f"sample ({n},) or per step {steps} of output "
                                     f"{self.output_names[j]!r}")
            out.append(w)
        if class_weight is not None:
            if k > 1:
                raise ValueError("class_weight is for models with one output; give "
                                 "sample_weight per output instead")
            per_class = class_weight_to_sample_weight(y, class_weight).astype(self.dtype)
            if out[0] is not None and out[0].ndim > 1:
                raise ValueError("class_weight cannot be combined with per-step sample_weight")
            out[0] = per_class if out[0] is None else out[0] * per_class
        if all(w is None for w in out):
            return None
        return self._unwrap_out(out)

    def _gather(self, data, idx, key):
        """data[idx] into a buffer kept per batch size (the last short batch gets its own);
        rows copied whole, in parallel for large batches."""
        buffers = self.__dict__.setdefault("_batch_buffers", {})
        shape = (len(idx),) + data.shape[1:]
        buf = buffers.get((key, len(idx)))
        if buf is None or buf.shape != shape or buf.dtype != data.dtype:
            if len(buffers) >= 8 * max(1, len(self.inputs) + len(self.outputs)):
                buffers.clear()     # many batch sizes over many fits: start afresh
            buf = buffers[(key, len(idx))] = np.empty(shape, data.dtype)
        if data.flags.c_contiguous and idx.dtype == np.int64:
            gather_rows(data, idx, buf)
        else:
            np.take(data, idx, axis=0, out=buf)
        return buf

    def _evaluate(self, x, targets, batch_size, sample_weight=None):
        self._ensure_bound()
        self._update_fusion()
        self._reset_metrics()
        xs, ts = self._wrap_in(x), self._wrap_out(targets)
        ws = self._wrap_out(sample_weight)
        n = len(xs[0])
        total, per_sums = 0.0, [0.0] * len(ts)
        for start in range(0, n, batch_size):
            xb = [a[start:start + batch_size] for a in xs]
            outs = self._run_forward(xb, False, logits=True)
            m = len(xb[0])
            batch_total = 0.0
            for k, out in enumerate(outs):
                loss = self._losses[k]
                if loss is None:
                    continue
                tb = ts[k][start:start + batch_size]
                wb = None if ws[k] is None else ws[k][start:start + batch_size]
                mask = self._masks[self._out_slots[k]] if self._has_masks else None
                kw = {} if mask is None else {"mask": mask}
                if self._fused[k]:
                    value, _ = loss.value_and_grad_logits(tb, out, wb, **kw)
                    outs[k] = self._fused_activation(out, k)
                else:
                    value, _ = loss.value_and_grad(tb, out, wb, **kw)
                per_sums[k] += float(value) * m
                lw = self._loss_weights[k]
                batch_total = (value if lw == 1.0 else lw * value) if len(outs) == 1 else \
                    batch_total + lw * value
            if self._has_aux:
                batch_total = batch_total + self._aux_value()
            if self._weight_regs:
                batch_total = batch_total + self._weight_penalty()
            total += float(batch_total) * m
            self._update_metrics(self._unwrap_out([None if t is None else
                                                   t[start:start + batch_size] for t in ts]),
                                 self._unwrap_out(outs))
        logs = {"loss": total / n}
        if len(self.outputs) > 1:
            for name, loss, s in zip(self.output_names, self._losses, per_sums):
                if loss is not None:
                    logs[f"{name}_loss"] = s / n
        for ms, names in zip(self._out_metrics, self._metric_names()):
            logs.update((name, m.result()) for m, name in zip(ms, names))
        return logs

    def evaluate(self, x, y, batch_size=None, verbose=0, sample_weight=None):
        """{'loss': ..., <metric>: ...} over (x, y); sample_weight weighs each sample's loss.
        Safe to call from several threads at once (each call has its own metric state)."""
        self._require_compiled()
        batch_size = DEFAULT_PREDICT_BATCH if batch_size is None else \
            check_positive(batch_size, "batch_size", integer=True)
        x, targets = self._check_xy(x, y)
        weights = self._sample_weights(y, len(self._wrap_in(x)[0]), sample_weight, None)
        runner = self._take_runner()
        try:
            logs = runner._evaluate(x, targets, batch_size, weights)
        finally:
            self._give_back(runner)
        if verbose:
            print(" - ".join(f"{k}: {v:.4f}" for k, v in logs.items()))
        return logs

    def predict(self, x, batch_size=None, verbose=0):
        """Model outputs for x, as new arrays (float32 or the model dtype): an array, or a
        list (a dict for dict outputs) for several outputs. Safe to call from several
        threads at once (also while another thread trains: one consistent weight set).
        verbose: 0 or "auto" (quiet, the default), 1 or 2: one line with the sample
        count and the time taken (Keras's argument, so Keras code runs unchanged)."""
        batch_size = DEFAULT_PREDICT_BATCH if batch_size is None else \
            check_positive(batch_size, "batch_size", integer=True)
        if verbose not in (0, 1, 2, "auto") or isinstance(verbose, float):
            raise ValueError(f"verbose must be 0, 1, 2 or 'auto'; got {verbose!r}")
        if verbose in (0, "auto"):        # small plain calls: the lean path (_inference)
            out = _inference.predict(self, x, batch_size)
            if out is not None:
                return out
        started = time.perf_counter() if verbose in (1, 2) else None
        xs = self._check_x(x)
        n = len(xs[0])
        results = [np.empty((n,) + tuple(t.shape[1:]), self.dtype) for t in self.outputs]
        runner = self._take_runner()
        try:
            runner._ensure_bound()
            for start in range(0, n, batch_size):
                outs = runner._run_forward([a[start:start + batch_size] for a in xs], False)
                for r, h in zip(results, outs):
                    r[start:start + len(h)] = h
        finally:
            self._give_back(runner)
        if started is not None:
            print(f"{n}/{n} samples - {time.perf_counter() - started:.3f}s")
        return self._structure_outputs(results)

    def _structure_outputs(self, values):
        if self._out_struct == "single":
            return values[0]
        if self._out_struct == "dict":
            return dict(zip(self.output_names, values))
        return values

    # -- display ---------------------------------------------------------------------------------
    def summary(self, print_fn=print):
        """Print the layers: name (type), output shape, parameter count, and (for graphs)
        the layers each one is called on."""
        graph = not isinstance(self, Sequential)
        header = ("Layer (type)", "Output shape", "Param #") + (("Connected to",) if graph else ())
        rows = [header]
        if self.built:
            for t in (self.inputs if graph else []):
                layer = t.node.layer
                rows.append((f"{layer.name} (InputLayer)", str(t.shape), "0", ""))
            for node in self._nodes:
                layer = node.layer
                shapes = [t.shape for t in node.outputs]
                out = str(shapes[0]) if len(shapes) == 1 else str(shapes)
                row = (f"{layer.name} ({type(layer).__name__})", out, str(layer.count_params()))
                if graph:
                    row += (", ".join(t.name for t in node.inputs),)
                rows.append(row)
        else:
            for layer in self.layers:
                rows.append((f"{layer.name} ({type(layer).__name__})", "?",
                             str(layer.count_params())))
        widths = [max(len(r[i]) for r in rows) + 2 for i in range(len(header))]
        line = "-" * sum(widths)
        print_fn(f'Model: "{self.name}"')
        print_fn(line)
        for i, row in enumerate(rows):
            print_fn("".join(cell.ljust(w) for cell, w in zip(row, widths)))
            print_fn("=" * sum(widths) if i == 0 else line)
        layers = self._param_layers if self.built else self.layers
        total = sum(layer.count_params() for layer in layers)
        trainable = sum(layer._count_trainable() for layer in layers)
        if self.built:
            frozen = self._frozen_ranges(not self.trainable)
            trainable -= sum(b - a for a, b in frozen)
        print_fn(f"Total params: {total:,}" + ("" if self.built else " (model not built yet)"))
        print_fn(f"Trainable params: {trainable:,}")
        print_fn(f"Non-trainable params: {total - trainable:,}")


class Sequential(Model):
    """A linear stack of layers: the graph engine's one-path case (same plan, same
    fused paths, no extra cost).

    layers: list of Layer (a first `cn.Input(shape)` fixes the input shape).
    dtype: 'float32' (default) or 'float64' for every layer.
    """

    _keep_layers = True
    _abstract = True

    def __init__(self, layers=None, name="sequential", dtype="float32"):
        Layer.__init__(self, name=name, dtype=None)
        self._init_model_state()
        self.dtype = as_dtype(dtype, "dtype")
        self.layers = []
        self.built = False
        self.input_shape = None
        self._param_layers = []
        self._in_struct = self._out_struct = "single"
        self.inputs, self.outputs = [], []
        self.input_names, self.output_names = [], [name]
        pending_input = None
        for i, layer in enumerate(layers or []):
            if i == 0 and isinstance(layer, SymbolicTensor) and isinstance(layer.node.layer,
                                                                             InputLayer):
                pending_input = layer.shape[1:]
                continue
            self.add(layer)
        if pending_input is not None and self.layers:
            self.build(pending_input)

    # -- structure --------------------------------------------------------------
    def add(self, layer):
        if isinstance(layer, SymbolicTensor):
            raise TypeError("cn.Input goes first in Sequential([cn.Input(shape), ...])")
        if not isinstance(layer, Layer):
            raise TypeError(f"layers must be cyneuron Layer instances; got {type(layer).__name__}")
        if self.built:
            raise RuntimeError("cannot add layers to a model that is already built")
        if any(layer is existing for existing in self.layers):
            raise ValueError(f"layer {layer.name!r} is already in the model; a layer instance "
                             f"can appear only once (its buffers hold one forward pass)")
        if layer.dtype is not None and layer.dtype != self.dtype:
            raise ValueError(f"layer {layer.name!r} has dtype {layer.dtype.name} but the model "
                             f"is {self.dtype.name}; set dtype on the model")
        if getattr(layer, "_n_inputs", 1) != 1:
            raise ValueError(f"layer {layer.name!r} ({type(layer).__name__}) takes several "
                             f"inputs; it cannot be a step of a Sequential model")
        self.layers.append(layer)

    def build(self, input_shape):
        """Build every layer for the per-sample `input_shape` (e.g. (784,); (None, 784)
        with the batch axis is accepted too) and gather the parameters into the model's
        flat buffers."""
        if not self.layers:
            raise ValueError("the model has no layers")
        shape = _sample_shape(input_shape)
        if self.built:
            if shape != self.input_shape:
                raise ValueError(f"the model is built for inputs {self.input_shape}; got {shape}")
            return
        inp = Input(shape=shape, dtype=self.dtype.name, name=f"{self.name}_input")
        t = inp
        for layer in self.layers:
            here = t.shape[1:]
            if layer.built and not isinstance(layer, Model) and \
                    not layer._accepts_input_shape(here):
                raise ValueError(f"layer {layer.name!r} was built for inputs {layer.input_shape}, "
                                 f"but receives {here} here")
            if isinstance(layer, Model):
                if layer.dtype != self.dtype:
                    raise ValueError(f"model {layer.name!r} is {layer.dtype.name} but the "
                                     f"Sequential {self.name!r} is {self.dtype.name}")
                if layer.built:
                    layer._check_call_shapes(here)
                else:
                    layer.build(here)
            else:
                layer.dtype = self.dtype
                if not layer.built:
                    layer.build(here)
            out = layer.compute_output_shape(here)
            t = connect(layer, [t], False, [out])[0]
        self._init_graph(inp, t)
        self.input_shape = shape
        self.output_shape = tuple(t.shape[1:])

    # -- configuration ---------------------------------------------------------------------
    def get_config(self):
        """The architecture as JSON types: name, dtype, per-sample input shape (None
        until built) and each layer as {"class_name", "config"}."""
        return {"name": self.name, "dtype": self.dtype.name,
                "input_shape": list(self.input_shape) if self.built else None,
                "layers": [_serialize(layer) for layer in self.layers]}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        """A new model (fresh weights, built if the config has an input shape) from
        get_config()'s dict; custom_objects maps class names to your own Layer classes."""
        if not isinstance(config, dict) or not isinstance(config.get("layers"), list):
            raise ValueError("a Sequential config must be a dict with a 'layers' list")
        layers = [_deserialize(spec, custom_objects) for spec in config["layers"]]
        try:
            model = cls(layers, name=config.get("name", "sequential"),
                        dtype=config.get("dtype", "float32"))
            if config.get("input_shape") is not None:
                model.build(tuple(config["input_shape"]))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"invalid Sequential config: {exc}") from None
        return model

    @property
    def trainable(self):
        return self._model_trainable

    @trainable.setter
    def trainable(self, value):
        self._model_trainable = bool(value)
        for layer in self.layers:
            layer.trainable = bool(value)

    def _fused_output(self):
        """True when the loss absorbs the last layer's activation (softmax + cross-entropy)."""
        if not self._losses:
            return False
        loss = self._losses[0]
        last = self.layers[-1]
        fuses = loss.fuses_with
        return (fuses is not None and _config.fusion_enabled()
                and not getattr(loss, "from_logits", False)
                and getattr(getattr(last, "activation", None), "name", None) == fuses
                and hasattr(last, "_forward_logits") and last.activity_regularizer is None)

    def _require_built_graph(self):
        pass      # compile before build: the graph is made from the first data

    def _output_fuses(self, k):
        return self._fused_output()



def _sample_shape(shape, rank=None):
    """A per-sample shape from `shape` with or without a leading batch axis (None)."""
    if shape is None:
        raise ValueError("input_shape is required")
    if np.isscalar(shape):
        return (int(shape),)
    shape = tuple(shape)
    if len(shape) >= 1 and shape[0] is None:
        shape = shape[1:]
    if rank is not None and len(shape) == rank + 1:
        shape = shape[1:]       # a batch size given as a number
    for d in shape:
        if d is None or isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1:
            raise ValueError(f"input_shape must hold positive sizes (None only for the batch "
                             f"axis); got {tuple(shape)}")
    return tuple(int(d) for d in shape)


def _serialize(layer):
    if isinstance(layer, Model):
        return {"class_name": "Sequential" if isinstance(layer, Sequential) else "Functional",
                "config": layer.get_config()}
    return _layer_base.serialize(layer)


def _deserialize(spec, custom_objects=None):
    if isinstance(spec, dict) and spec.get("class_name") in ("Sequential", "Functional"):
        cls = Sequential if spec["class_name"] == "Sequential" else Model
        return cls.from_config(spec.get("config"), custom_objects)
    return _layer_base.deserialize(spec, custom_objects)


def model_from_config(config, custom_objects=None):
    """A Sequential or functional Model from its get_config() dict (functional configs
    have 'nodes')."""
    if isinstance(config, dict) and "nodes" in config:
        return Model.from_config(config, custom_objects)
    return Sequential.from_config(config, custom_objects)


def _pack(x, y, sample_weight):
    return (x, y) if sample_weight is None else (x, y, sample_weight)


def _unpack(data):
    if not isinstance(data, tuple) or len(data) not in (1, 2, 3):
        return data, None, None
    x, y, sw = (tuple(data) + (None, None))[:3]
    return x, y, sw


def _logs_result(logs):
    values = [float(v) for v in logs.values()]
    return values[0] if len(values) == 1 else values


def class_weight_to_sample_weight(y, class_weight):
    """Per-sample weights (float64) from class_weight: a dict {class index: weight}
    (classes not in it weigh 1) or "balanced" (n_samples / (n_classes * count), as
    scikit-learn). y: integer labels (n,) or (n, 1), or one-hot / probability rows (n, k)."""
    y = np.asarray(y)
    if y.dtype.kind not in "biuf":
        raise TypeError(f"class_weight needs numeric class labels in y; got dtype {y.dtype.name!r}")
    if y.ndim == 2 and y.shape[1] > 1:
        labels = np.argmax(y, axis=1)
    elif y.ndim in (1, 2):
        labels = y.reshape(-1)
        if labels.dtype.kind == "f":
            if not np.all(np.isfinite(labels)) or not np.array_equal(labels, np.round(labels)):
                raise ValueError("class_weight needs integer class labels in y (or one-hot rows)")
        labels = labels.astype(np.int64)
    else:
        raise ValueError(f"class_weight needs y of shape (n,), (n, 1) or (n, classes); "
                         f"got {y.shape}")
    if isinstance(class_weight, str):
        if class_weight != "balanced":
            raise ValueError(f"class_weight must be a dict or 'balanced', got {class_weight!r}")
        classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
        return (len(labels) / (len(classes) * counts))[inverse].astype(np.float64)
    if not isinstance(class_weight, dict):
        raise TypeError(f"class_weight must be a dict or 'balanced', got "
                        f"{type(class_weight).__name__}")
    weights = np.ones(len(labels), np.float64)
    for label, value in class_weight.items():
        if isinstance(label, bool) or not isinstance(label, numbers.Integral):
            raise ValueError(f"class_weight keys must be integer class indices, got {label!r}")
        if isinstance(value, bool) or not isinstance(value, numbers.Real) \
                or not np.isfinite(value) or value < 0:
            raise ValueError(f"class_weight[{label}] must be a finite number >= 0, got {value!r}")
        weights[labels == int(label)] = float(value)
    return weights


saving.register_model_builder(model_from_config)
from .gan import GAN, ConditionalGAN  # noqa: E402,F401  (cn.models.GAN: built on the API above)
