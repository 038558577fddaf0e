"""Sequential: a stack of layers with Keras's compile / fit / evaluate / predict.

All trainable parameters live in one flat buffer (and their gradients in another);
each layer's trainable weights are views into it, so the optimizer step is a single
fused kernel over the whole model (the KANN design). Non-trainable weights (moving
statistics) stay with their layers; get_weights() lists both, in layer order.
"""
import numbers

import numpy as np

from . import _config
from . import losses as _losses
from . import metrics as _metrics
from . import optimizers as _optimizers
from ._kernels.arrays import gather_rows
from ._random import get_rng
from ._validation import as_dtype, check_array, check_positive, check_same_length
from .callbacks import CallbackList, History, make_progress
from .layers import base as _layer_base
from .layers.base import Layer

DEFAULT_PREDICT_BATCH = 1024


class Sequential:
    """A linear stack of layers.

    layers: list of Layer. dtype: 'float32' (default) or 'float64' for every layer.
    """

    def __init__(self, layers=None, name="sequential", dtype="float32"):
        self.name = name
        self.dtype = as_dtype(dtype, "dtype")
        self.layers = []
        self.built = False
        self.input_shape = None
        self.optimizer = None
        self.loss = None
        self.metrics = []
        self.stop_training = False  # a callback sets it to end fit after the current epoch
        for layer in layers or []:
            self.add(layer)

    # -- structure --------------------------------------------------------------
    def add(self, layer):
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
        self.layers.append(layer)

    def build(self, input_shape):
        """Build every layer for per-sample `input_shape` (e.g. (784,)) and gather the
        parameters into the model's flat buffers."""
        if not self.layers:
            raise ValueError("the model has no layers")
        shape = (int(input_shape),) if np.isscalar(input_shape) else tuple(int(d) for d in input_shape)
        if len(shape) >= 2 and shape[0] is None:
            shape = shape[1:]
        self.input_shape = shape
        for layer in self.layers:
            if layer.built and layer.input_shape != shape:
                raise ValueError(f"layer {layer.name!r} was built for inputs {layer.input_shape}, "
                                 f"but receives {shape} here")
            layer.dtype = self.dtype
            if not layer.built:
                layer.build(shape)
            shape = layer.compute_output_shape(shape)
        self.output_shape = shape
        size = sum(layer._count_trainable() for layer in self.layers)
        self._params = np.empty(size, self.dtype)
        self._grads = np.zeros(size, self.dtype)
        offset = 0
        for layer in self.layers:
            offset = layer._bind(self._params, self._grads, offset)
        self.built = True

    def count_params(self):
        """All weights, trainable and non-trainable."""
        return sum(layer.count_params() for layer in self.layers) if self.built else 0

    def get_weights(self):
        return [w for layer in self.layers for w in layer.get_weights()]

    def set_weights(self, weights):
        self._require_built()
        weights = list(weights)
        expected = sum(len(layer._weights) for layer in self.layers)
        if len(weights) != expected:
            raise ValueError(f"the model has {expected} weight arrays; got {len(weights)}")
        checked, start = [], 0
        for layer in self.layers:  # check everything before changing anything
            n = len(layer._weights)
            checked.append(layer._check_weights(weights[start:start + n]))
            start += n
        for layer, layer_weights in zip(self.layers, checked):
            for current, new in zip(layer._weights, layer_weights):
                current[...] = new

    def __setstate__(self, state):
        """Unpickling: layers' trainable weights become views of the flat buffers again
        (pickle stores views as separate copies)."""
        self.__dict__.update(state)
        if self.built:
            # joblib may hand back read-only memory maps: training needs writable arrays
            self._params = np.require(self._params, requirements=["C", "W"])
            self._grads = np.require(self._grads, requirements=["C", "W"])
            if self.optimizer is not None:
                self.optimizer.slots = {k: np.require(v, requirements=["C", "W"])
                                        for k, v in self.optimizer.slots.items()}
            offset = 0
            for layer in self.layers:
                offset = layer._bind(self._params, self._grads, offset)

    # -- configuration and files ------------------------------------------------------
    def get_config(self):
        """The architecture as JSON types: name, dtype, per-sample input shape (None
        until built) and each layer as {"class_name", "config"}."""
        return {"name": self.name, "dtype": self.dtype.name,
                "input_shape": list(self.input_shape) if self.built else None,
                "layers": [_layer_base.serialize(layer) for layer in self.layers]}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        """A new model (fresh weights, built if the config has an input shape) from
        get_config()'s dict; custom_objects maps class names to your own Layer classes."""
        if not isinstance(config, dict) or not isinstance(config.get("layers"), list):
            raise ValueError("a Sequential config must be a dict with a 'layers' list")
        layers = [_layer_base.deserialize(spec, custom_objects) for spec in config["layers"]]
        try:
            model = cls(layers, name=config.get("name", "sequential"),
                        dtype=config.get("dtype", "float32"))
            if config.get("input_shape") is not None:
                model.build(tuple(config["input_shape"]))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"invalid Sequential config: {exc}") from None
        return model

    def save(self, filepath, include_optimizer=True):
        """Write architecture, compile settings, weights (and the optimizer state) to one
        file, atomically; `cn.load_model(filepath)` reads it back. No pickle is used."""
        from . import saving

        saving.save_model(self, filepath, include_optimizer=include_optimizer)

    def save_weights(self, filepath):
        """Write only the weights (get_weights() order) to a file, atomically."""
        from . import saving

        saving.save_weights(self, filepath)

    def load_weights(self, filepath):
        """Read weights written by save_weights (or save) into this model (same architecture)."""
        from . import saving

        saving.load_weights(self, filepath)

    # -- training set-up ---------------------------------------------------------
    def compile(self, optimizer="sgd", loss=None, metrics=None):
        if loss is None:
            raise ValueError("compile: a loss is required, e.g. loss='mean_squared_error'")
        self.optimizer = _optimizers.get(optimizer)
        self.loss = _losses.get(loss)
        if isinstance(metrics, str):
            metrics = [metrics]
        self.metrics = [_metrics.get(m) for m in (metrics or [])]

    def _fused_output(self):
        """True when the loss absorbs the last layer's activation (softmax + cross-entropy)."""
        last = self.layers[-1]
        fuses = self.loss.fuses_with
        return (fuses is not None and _config.fusion_enabled()
                and not getattr(self.loss, "from_logits", False)
                and getattr(getattr(last, "activation", None), "name", None) == fuses
                and hasattr(last, "_forward_logits"))

    def _fused_activation(self, z):
        """The output activation applied in place to the logits of the fused path, so
        that metrics see the model's outputs (probabilities); skipped without metrics."""
        if not self.metrics:
            return z
        return self.layers[-1].activation.forward(z, out=z)

    # -- data checks ---------------------------------------------------------------
    def _check_x(self, x, name="x"):
        x = check_array(x, name, self.dtype)
        if x.ndim < 2:
            raise ValueError(f"{name} must be at least 2-D (samples, features); got shape {x.shape}")
        if not self.built:
            self.build(x.shape[1:])
        elif x.shape[1:] != self.input_shape:
            raise ValueError(f"{name} has per-sample shape {x.shape[1:]}; the model expects "
                             f"{self.input_shape}")
        return x

    def _check_xy(self, x, y, x_name="x", y_name="y"):
        x = self._check_x(x, x_name)
        if y is None:
            raise ValueError(f"{y_name} is required")
        y_arr = np.asarray(y) if not isinstance(y, np.ndarray) else y
        check_same_length(x, y_arr, x_name, y_name)
        targets = self.loss.prepare_targets(y_arr, (len(x),) + self.output_shape, self.dtype,
                                            name=y_name)
        return x, targets

    def _require_compiled(self):
        if self.loss is None or self.optimizer is None:
            raise RuntimeError("the model must be compiled first: call model.compile(...)")

    def _require_built(self):
        if not self.built:
            raise RuntimeError("the model is not built yet: call build(input_shape) or fit/predict")

    # -- one step ------------------------------------------------------------------
    def _forward_backward(self, x, targets, sample_weight=None):
        """Forward in training mode, loss, backward. Fills the flat gradient buffer."""
        layers = self.layers
        h = x
        for layer in layers[:-1]:
            h = layer._forward(h, True)
        last = layers[-1]
        n = len(layers)
        into = self._grad_fusion(n - 1)
        extra = {} if into is None else {"into": into}
        if self._fused_output():
            out = last._forward_logits(h, True)
            loss, g = self.loss.value_and_grad_logits(targets, out, sample_weight)
            g = last._backward_logits(g, n > 1, **extra)
            out = self._fused_activation(out)
        else:
            out = last._forward(h, True)
            loss, g = self.loss.value_and_grad(targets, out, sample_weight)
            g = last._backward(g, n > 1, **extra)
        for i in range(n - 2, -1, -1):
            g_is_dz = into is not None   # layer i+1 applied layer i's derivative
            into = self._grad_fusion(i)
            if into is None and not g_is_dz:
                g = layers[i]._backward(g, i > 0)
            else:
                g = layers[i]._backward(g, i > 0, into=into, grad_is_dz=g_is_dz)
        return loss, out

    def _grad_fusion(self, i):
        """(code, alpha, y) when layer i's input-gradient GEMM can apply layer i-1's
        activation derivative in its epilogue (Dense after Dense), else None."""
        if i < 1 or not getattr(self.layers[i], "_fuses_input_grad", False):
            return None
        previous = getattr(self.layers[i - 1], "_grad_epilogue", None)
        return previous() if previous is not None else None

    def _train_step(self, x, targets, sample_weight=None):
        loss, out = self._forward_backward(x, targets, sample_weight)
        self.optimizer.apply_gradients(self._params, self._grads)
        return loss, out

    def train_on_batch(self, x, y, sample_weight=None, class_weight=None, return_dict=False):
        """One optimizer step on the batch (x, y). Returns the loss (and metrics)."""
        self._require_compiled()
        x, targets = self._check_xy(x, y)
        weights = self._sample_weights(y, len(x), sample_weight, class_weight)
        loss, out = self._train_step(x, targets, weights)
        logs = {"loss": float(loss)}
        for m in self.metrics:
            m.reset()
            m.update(targets, out)
            logs[m.name] = m.result()
        if return_dict:
            return logs
        return logs["loss"] if len(logs) == 1 else list(logs.values())

    def compute_gradients(self, x, y):
        """(loss, grads) on the batch, grads in get_weights() order (zeros for the
        non-trainable weights); updates nothing, moving statistics included."""
        self._require_compiled()
        x, targets = self._check_xy(x, y)
        state = [w for layer in self.layers for w in layer.non_trainable_weights]
        saved = [w.copy() for w in state]
        try:
            loss, _ = self._forward_backward(x, targets)
        finally:
            for w, value in zip(state, saved):
                w[...] = value
        return float(loss), [g for layer in self.layers for g in layer.get_gradients()]

    # -- loops -----------------------------------------------------------------------
    def fit(self, x, y, epochs=1, batch_size=32, shuffle=True, validation_data=None,
            validation_split=0.0, verbose=1, callbacks=None, sample_weight=None,
            class_weight=None, initial_epoch=0):
        """Train for `epochs` passes over (x, y) in mini-batches; returns a History.

        verbose: 0 silent, 1 a progress bar per batch with loss, metrics and ETA (tqdm
        where installed), 2 one line per epoch.
        callbacks: Callback instances (cn.callbacks), called at train, epoch and batch
        begin/end; a callback may set `model.stop_training = True` (fit stops after the
        current batch, then finishes the epoch's validation and callbacks).
        sample_weight: one weight per sample, multiplying its loss. class_weight: a dict
        {class index: weight} (classes not in it weigh 1) or "balanced"
        (n_samples / (n_classes * count)); multiplies sample_weight.
        validation_data: (x_val, y_val) or (x_val, y_val, sample_weight_val).
        initial_epoch: the epoch to start from (to resume a run; epochs is the last one).
        """
        self._require_compiled()
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
        x, targets = self._check_xy(x, y)
        weights = self._sample_weights(y, len(x), sample_weight, class_weight)
        if validation_data is not None:
            if validation_split:
                raise ValueError("give validation_data or validation_split, not both")
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
                raise ValueError("validation_data must be a tuple (x_val, y_val) or "
                                 "(x_val, y_val, sample_weight_val)")
            x_val, t_val = self._check_xy(*validation_data[:2], x_name="x_val", y_name="y_val")
            w_val = None
            if len(validation_data) == 3 and validation_data[2] is not None:
                w_val = self._sample_weights(None, len(x_val), validation_data[2], None)
            val = (x_val, t_val, w_val)
        elif validation_split:
            n_val = int(len(x) * validation_split)
            if n_val == 0 or n_val == len(x):
                raise ValueError(f"validation_split={validation_split} leaves an empty split "
                                 f"of {len(x)} samples")
            val = (x[-n_val:], targets[-n_val:], None if weights is None else weights[-n_val:])
            x, targets = x[:-n_val], targets[:-n_val]
            weights = None if weights is None else weights[:-n_val]
        else:
            val = None

        n = len(x)
        steps = (n + batch_size - 1) // batch_size
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
        callbacks.call("on_train_begin", {})
        for epoch in range(initial_epoch, epochs):
            order = rng.permutation(n) if shuffle else np.arange(n)
            for m in self.metrics:
                m.reset()
            callbacks.call("on_epoch_begin", epoch, {})
            progress.epoch_begin(epoch)
            loss_sum, seen = 0.0, 0
            for step in range(steps):
                callbacks.call("on_train_batch_begin", step, {})
                idx = order[step * batch_size:(step + 1) * batch_size]
                xb, tb = self._gather(x, idx, "xb"), self._gather(targets, idx, "tb")
                wb = None if weights is None else self._gather(weights, idx, "wb")
                loss, out = self._train_step(xb, tb, wb)
                loss_sum += float(loss) * len(idx)
                seen += len(idx)
                for m in self.metrics:
                    m.update(tb, out)
                logs = {"loss": loss_sum / seen}
                logs.update((m.name, m.result()) for m in self.metrics)
                progress.batch_end(step, logs)
                callbacks.call("on_train_batch_end", step, logs)
                if self.stop_training:
                    break
            if val is not None:
                logs.update(("val_" + k, v) for k, v in self._evaluate(*val[:2], batch_size,
                                                                        val[2]).items())
            callbacks.call("on_epoch_end", epoch, logs)
            history.record(epoch, logs)
            progress.epoch_end(logs)
            if self.stop_training:
                break
        progress.close()
        callbacks.call("on_train_end", logs)
        return history

    def _sample_weights(self, y, n, sample_weight, class_weight):
        """Per-sample loss weights from sample_weight and class_weight, or None."""
        weights = _losses.check_sample_weight(sample_weight, n, self.dtype)
        if weights is not None and (weights < 0).any():
            raise ValueError("sample_weight must be non-negative")
        if class_weight is not None:
            per_class = class_weight_to_sample_weight(y, class_weight).astype(self.dtype)
            weights = per_class if weights is None else weights * per_class
        return weights

    def _gather(self, data, idx, key):
        """data[idx] into a buffer kept per batch size (the last short batch gets its own);
        rows copied whole, in parallel for large batches."""
        buffers = self.__dict__.setdefault("_batch_buffers", {})
        shape = (len(idx),) + data.shape[1:]
        buf = buffers.get((key, len(idx)))
        if buf is None or buf.shape != shape or buf.dtype != data.dtype:
            if len(buffers) >= 8:    # many batch sizes over many fits: start afresh
                buffers.clear()
            buf = buffers[(key, len(idx))] = np.empty(shape, data.dtype)
        if data.flags.c_contiguous and idx.dtype == np.int64:
            gather_rows(data, idx, buf)
        else:
            np.take(data, idx, axis=0, out=buf)
        return buf

    def _evaluate(self, x, targets, batch_size, sample_weight=None):
        fused = self._fused_output()
        for m in self.metrics:
            m.reset()
        total = 0.0
        for start in range(0, len(x), batch_size):
            xb, tb = x[start:start + batch_size], targets[start:start + batch_size]
            wb = None if sample_weight is None else sample_weight[start:start + batch_size]
            h = xb
            for layer in self.layers[:-1]:
                h = layer._forward(h, False)
            if fused:
                out = self.layers[-1]._forward_logits(h, False)
                loss, _ = self.loss.value_and_grad_logits(tb, out, wb)
                out = self._fused_activation(out)
            else:
                out = self.layers[-1]._forward(h, False)
                loss, _ = self.loss.value_and_grad(tb, out, wb)
            total += float(loss) * len(xb)
            for m in self.metrics:
                m.update(tb, out)
        logs = {"loss": total / len(x)}
        logs.update((m.name, m.result()) for m in self.metrics)
        return logs

    def evaluate(self, x, y, batch_size=None, verbose=0, sample_weight=None):
        """{'loss': ..., <metric>: ...} over (x, y); sample_weight weighs each sample's loss."""
        self._require_compiled()
        batch_size = DEFAULT_PREDICT_BATCH if batch_size is None else \
            check_positive(batch_size, "batch_size", integer=True)
        x, targets = self._check_xy(x, y)
        weights = self._sample_weights(y, len(x), sample_weight, None)
        logs = self._evaluate(x, targets, batch_size, weights)
        if verbose:
            print(" - ".join(f"{k}: {v:.4f}" for k, v in logs.items()))
        return logs

    def predict(self, x, batch_size=None):
        """Model outputs for x, as a new array (float32 or the model dtype)."""
        batch_size = DEFAULT_PREDICT_BATCH if batch_size is None else \
            check_positive(batch_size, "batch_size", integer=True)
        x = self._check_x(x)
        result = np.empty((len(x),) + self.output_shape, self.dtype)
        for start in range(0, len(x), batch_size):
            h = x[start:start + batch_size]
            for layer in self.layers:
                h = layer._forward(h, False)
            result[start:start + len(h)] = h
        return result

    def __call__(self, x):
        return self.predict(x)

    # -- display -----------------------------------------------------------------------
    def summary(self, print_fn=print):
        """Print a table of layers, output shapes and parameter counts."""
        rows = [("Layer (type)", "Output shape", "Param #")]
        for layer in self.layers:
            out = "?"
            if layer.built:
                out = str((None,) + tuple(layer.compute_output_shape(layer.input_shape)))
            rows.append((f"{layer.name} ({type(layer).__name__})", out, str(layer.count_params())))
        widths = [max(len(r[i]) for r in rows) + 2 for i in range(3)]
        line = "-" * sum(widths)
        print_fn(f'Model: "{self.name}"')
        print_fn(line)
        for i, row in enumerate(rows):
            print_fn("".join(cell.ljust(w) for cell, w in zip(row, widths)))
            print_fn("=" * sum(widths) if i == 0 else line)
        total = sum(layer.count_params() for layer in self.layers)
        trainable = sum(layer._count_trainable() for layer in self.layers)
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
