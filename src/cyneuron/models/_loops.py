"""Model methods for the loops over a data set: fit (epochs, batches, validation,
callbacks, sample and class weights), evaluate, predict, and summary."""
import numbers
import time

import numpy as np

from .. import _config, _inference
from .. import losses as _losses
from .._kernels.arrays import gather_rows
from .._random import get_rng
from .._validation import check_positive
from ..callbacks import CallbackList, History, make_progress
from ._threads import _DeferredInterrupt
from ._training import _pack


DEFAULT_PREDICT_BATCH = 1024


class LoopsMixin:
    """fit, evaluate, predict and summary."""


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
            from .. import distributed as _distributed
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
                _config.probe_thread_distance()   # the vCPUs may have moved since
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
        from .sequential import Sequential     # sequential.py imports the loops
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
