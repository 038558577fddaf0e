"""The graph engine under every model: from the symbolic graph to a plan, and the
forward and backward passes over it.

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
"""
import warnings

import numpy as np

from .. import _config
from .._kernels.arrays import add
from .._memory import empty_aligned, zeros_aligned
from .._validation import as_dtype
from ..layers.base import Layer
from ..layers.input_layer import InputLayer, SymbolicTensor


_BIND_EPOCH = [0]    # bumped whenever a model (re)binds layers into its flat buffers


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



class GraphEngine(Layer):
    """The engine part of Model (cyneuron.models.Model): graph construction, the flat
    parameter buffer, the plan, and running it forward and backward."""

    # -- construction ---------------------------------------------------------------------
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
            members = layer._all_layers() if isinstance(layer, GraphEngine) else [layer]
            for m in members:
                if id(m) in seen and seen[id(m)] is not layer:
                    nested = layer if isinstance(layer, GraphEngine) else seen[id(m)]
                    raise ValueError(f"Model {self.name!r}: layer {m.name!r} is used both inside "
                                     f"nested model {nested.name!r} and elsewhere in the graph; "
                                     f"call the nested model instead")
                seen[id(m)] = layer

    def _all_layers(self):
        """Every leaf layer of the graph, nested models expanded."""
        out = []
        for layer in self._param_layers:
            out.extend(layer._all_layers() if isinstance(layer, GraphEngine) else [layer])
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
        # on a cache line: the GEMMs write layers' gradients into it from two threads
        self._bind(empty_aligned(size, self.dtype), zeros_aligned(size, self.dtype), 0)

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
            s.multi_out = isinstance(layer, GraphEngine) and layer._out_struct != "single"
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
                elif isinstance(layer, GraphEngine):
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
                            if isinstance(s.layer, GraphEngine) and s.layer._has_aux]
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

    # -- fused output paths -------------------------------------------------------------------
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
            add(cur, g, cur)      # on all threads (a residual network's skip connections)
        else:
            buf = self._acc.get(slot)
            if buf is None or buf.shape != cur.shape or buf.dtype != cur.dtype:
                buf = self._acc[slot] = np.empty(cur.shape, cur.dtype)
            add(cur, g, buf)
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
                if s.many or (isinstance(layer, GraphEngine) and layer._in_struct != "single"):
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
        from .sequential import Sequential     # sequential.py imports the engine
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
