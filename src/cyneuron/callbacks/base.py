"""The Callback hooks, the History that `fit` returns, and CallbackList (how fit calls a
list of callbacks)."""
import os


class Callback:
    """Base class for hooks into `fit` (Keras names). `self.model` is the model being
    trained; `logs` holds the running loss and metrics (and val_* at epoch end).
    Setting `model.stop_training = True` ends fit after the current epoch."""

    def __init__(self):
        self.model = None
        self.params = {}

    def set_model(self, model):
        self.model = model

    def set_params(self, params):
        self.params = dict(params)

    def on_train_begin(self, logs=None):
        pass

    def on_train_end(self, logs=None):
        pass

    def on_epoch_begin(self, epoch, logs=None):
        pass

    def on_epoch_end(self, epoch, logs=None):
        pass

    def on_train_batch_begin(self, batch, logs=None):
        pass

    def on_train_batch_end(self, batch, logs=None):
        pass


class History(Callback):
    """Per-epoch values of the loss and metrics: `history.history["loss"]` etc.
    `fit` returns it (and sets it as `model.history`); `plot(path)` draws the curves."""

    def __init__(self):
        super().__init__()
        self.history = {}
        self.epoch = []

    def record(self, epoch, logs):
        self.epoch.append(epoch)
        for key, value in logs.items():
            self.history.setdefault(key, []).append(value)

    def on_epoch_end(self, epoch, logs=None):
        self.record(epoch, logs or {})

    def plot(self, path, keys=None, dpi=100):
        """Write a PNG to `path`: one panel per loss or metric (its val_ curve beside it),
        against the epoch. keys: the names to draw (default: all). Needs matplotlib."""
        try:
            from matplotlib.figure import Figure
        except ImportError:
            raise ImportError("History.plot needs matplotlib: pip install matplotlib "
                              "(or pip install 'cyneuron[plot]')") from None
        if not self.epoch:
            raise ValueError("nothing to plot: the history has no epochs")
        names = []
        for key in self.history:
            base = key[4:] if key.startswith("val_") else key
            if base not in names:
                names.append(base)
        if keys is not None:
            keys = [keys] if isinstance(keys, str) else list(keys)
            unknown = [k for k in keys if k not in names]
            if unknown:
                raise ValueError(f"keys {unknown} are not in the history; it has {names}")
            names = keys
        epochs = [e + 1 for e in self.epoch]
        fig = Figure(figsize=(4.5 * len(names), 3.5), dpi=dpi)
        axes = fig.subplots(1, len(names), squeeze=False)[0]
        for ax, name in zip(axes, names):
            for key, style in ((name, "-"), ("val_" + name, "--")):
                values = self.history.get(key)
                if values is not None:
                    ax.plot(epochs[-len(values):], values, style, marker="o", markersize=3,
                            label=key)
            ax.set_title(name)
            ax.set_xlabel("epoch")
            if name in ("learning_rate", "lr"):
                ax.set_yscale("log")
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
        fig.savefig(os.fspath(path), format="png")
        return path

    def __repr__(self):
        return f"History(epochs={len(self.epoch)}, keys={list(self.history)})"


class CallbackList:
    """Calls each hook on every callback, in order."""

    def __init__(self, callbacks, model, params):
        if callbacks is None:
            callbacks = []
        elif isinstance(callbacks, Callback):
            callbacks = [callbacks]
        callbacks = list(callbacks)
        for cb in callbacks:
            if not isinstance(cb, Callback):
                raise TypeError(f"callbacks must be cyneuron Callback instances; got "
                                f"{type(cb).__name__}")
        self.callbacks = callbacks
        for cb in callbacks:
            cb.set_model(model)
            cb.set_params(params)

    def call(self, hook, *args):
        """callback.<hook>(*args) for every callback, e.g. call("on_epoch_end", epoch, logs)."""
        for cb in self.callbacks:
            getattr(cb, hook)(*args)
