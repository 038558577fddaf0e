"""Model methods for training one step: compile, the checks of x / y, the forward /
backward step and its fused paths, train_on_batch, and the custom-loop API (model(x),
model.backward, train_step, compute_loss)."""
import copy
import numbers

import numpy as np

from .. import _config
from .. import losses as _losses
from .. import metrics as _metrics
from .. import optimizers as _optimizers
from .._validation import check_array
from ..layers.input_layer import is_symbolic


class TrainingMixin:
    """compile, train_on_batch, compute_gradients and the custom training loop API."""


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
        if not any(self._out_metrics):
            return logs
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
        return type(self).train_step is not TrainingMixin.train_step

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
