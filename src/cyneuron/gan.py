"""Generative adversarial networks on the public custom-loop API.

    gan = cn.models.GAN(generator, discriminator, latent_dim=32)
    gan.compile(d_optimizer=cn.optimizers.Adam(2e-4, beta_1=0.5),
                g_optimizer=cn.optimizers.Adam(2e-4, beta_1=0.5), label_smoothing=0.1)
    gan.fit(x, epochs=20, batch_size=64)
    images = gan.generate(16)

Each step of fit (`train_step`, which a subclass may override) does what a user's own
loop would: a discriminator update on real and generated samples, then a generator
update with the non-saturating loss -log D(G(z)) (Goodfellow et al. 2014), through
`model(x, training=True)`, `model.backward(d_out)` and `optimizer.apply_gradients(model)`;
the generator's gradient is the discriminator's input gradient handed to the generator.
The steps skip what no one reads: the input gradients of the discriminator's step and
of the generator (`backward(..., input_grads=False)`) and the discriminator's weight
gradients in the generator's step (`weight_grads=False`).
The two models keep their own optimizers (and optimizer state).

The discriminator returns one value per sample: a logit (a linear output, recommended),
or a probability (a sigmoid output). label_smoothing (one-sided, Salimans et al. 2016)
trains the discriminator towards 1 - label_smoothing on real samples.

ConditionalGAN does the same with a class label: the generator takes [z, one_hot(label)],
the discriminator [x, one_hot(label)].
"""
import math
import numbers
import warnings

import numpy as np

from . import losses as _losses
from . import optimizers as _optimizers
from ._kernels.arrays import all_finite
from ._random import get_rng
from ._validation import check_array, check_positive
from .callbacks import CallbackList, History, make_progress


def _model(value, what):
    from .models import Model, Sequential

    if not isinstance(value, Model):
        raise TypeError(f"{what} must be a cyneuron model (cn.Model or cn.Sequential); got "
                        f"{type(value).__name__}")
    if isinstance(value, Sequential) and not value.built:
        return value, False
    return value, True


def _input_shapes(model):
    return [tuple(t.shape[1:]) for t in model.inputs]


def _output_shape(model, what):
    if len(model.outputs) != 1:
        raise ValueError(f"{what} must have one output; {model.name!r} has "
                         f"{len(model.outputs)}")
    return tuple(model.outputs[0].shape[1:])


class GAN:
    """A generator G(z) and a discriminator D(x) trained against each other.

    generator: a model from latent vectors (latent_dim,) to samples.
    discriminator: a model from samples (the generator's output shape) to one value per
    sample (shape (1,)): a logit, or a probability with a sigmoid output.
    latent_dim: the size of z ~ N(0, I).
    """

    def __init__(self, generator, discriminator, latent_dim):
        if isinstance(latent_dim, bool) or not isinstance(latent_dim, numbers.Integral) \
                or latent_dim < 1:
            raise ValueError(f"latent_dim must be a positive int; got {latent_dim!r}")
        self.latent_dim = int(latent_dim)
        self.generator, built = _model(generator, "generator")
        if not built:
            generator.build(self._generator_inputs()[0])
        self.discriminator, built = _model(discriminator, "discriminator")
        self._check_models(built)
        self.d_optimizer = self.g_optimizer = None
        self.label_smoothing = 0.0
        self.stop_training = False
        self.history = None

    def _generator_inputs(self):
        return [(self.latent_dim,)]

    def _check_models(self, d_built):
        g, d = self.generator, self.discriminator
        expected = self._generator_inputs()
        if _input_shapes(g) != expected:
            raise ValueError(f"the generator {g.name!r} takes inputs "
                             f"{[(None,) + s for s in _input_shapes(g)]}, but latent_dim="
                             f"{self.latent_dim} needs {[(None,) + s for s in expected]}")
        sample = _output_shape(g, "the generator")
        if not d_built:
            d.build(sample)
        wanted = [sample] + expected[1:]
        if _input_shapes(d) != wanted:
            raise ValueError(f"the generator's output shape {(None,) + sample} does not match "
                             f"the discriminator's inputs "
                             f"{[(None,) + s for s in _input_shapes(d)]}"
                             + ("" if len(wanted) == 1 else
                                f" (expected {[(None,) + s for s in wanted]})"))
        if _output_shape(d, "the discriminator") != (1,):
            raise ValueError(f"the discriminator must output one value per sample, shape "
                             f"(None, 1); {d.name!r} outputs "
                             f"{(None,) + _output_shape(d, 'the discriminator')}")
        if g.dtype != d.dtype:
            raise ValueError(f"the generator is {g.dtype.name} and the discriminator "
                             f"{d.dtype.name}; give both the same dtype")
        self.dtype = g.dtype

    def compile(self, d_optimizer="adam", g_optimizer="adam", label_smoothing=0.0):
        """Optimizers of the two models (separate instances: each keeps its own state) and
        the one-sided label smoothing of the real targets (0 <= label_smoothing < 1)."""
        d_opt = _optimizers.get(d_optimizer)
        g_opt = _optimizers.get(g_optimizer)
        if d_opt is g_opt:
            raise ValueError("d_optimizer and g_optimizer must be two optimizer instances "
                             "(each keeps its own moments); pass two, or names")
        if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, numbers.Real) \
                or not 0 <= label_smoothing < 1:
            raise ValueError(f"label_smoothing must be a number in [0, 1); got "
                             f"{label_smoothing!r}")
        self.d_optimizer, self.g_optimizer = d_opt, g_opt
        self.label_smoothing = float(label_smoothing)
        last = self.discriminator._output_step(0).layer
        while hasattr(last, "_output_step"):          # a nested model: its own output layer
            last = last._output_step(0).layer
        probs = getattr(getattr(last, "activation", None), "name", None) == "sigmoid"
        self.loss_fn = _losses.BinaryCrossentropy(from_logits=not probs)
        return self

    # -- the pieces a custom step uses ---------------------------------------------------
    def sample_latent(self, n):
        """n latent vectors z ~ N(0, I) from the library generator (`cn.set_seed`)."""
        return get_rng().standard_normal((n, self.latent_dim)).astype(self.dtype)

    def bce(self, target, d_out):
        """(loss, d loss / d d_out) of the discriminator outputs d_out against a constant
        target (1 real, 0 fake) or an array of targets."""
        target = np.broadcast_to(np.asarray(target, self.dtype), d_out.shape)
        t = self.loss_fn.prepare_targets(target, d_out.shape, self.dtype)
        value, grad = self.loss_fn.value_and_grad(t, d_out)
        return float(value), np.array(grad)

    def train_step(self, real):
        """One discriminator update and one generator update on a batch of real samples;
        returns {"d_loss", "g_loss"}. Override it for another GAN variant."""
        n = len(real)
        g, d = self.generator, self.discriminator
        # discriminator: real samples towards 1 - smoothing, generated ones towards 0
        fake = g(self.sample_latent(n), training=True)
        d_out = d(np.concatenate([real, fake]), training=True)
        targets = np.zeros((2 * n, 1), self.dtype)
        targets[:n] = 1.0 - self.label_smoothing
        d_loss, grad = self.bce(targets, d_out)
        if not math.isfinite(d_loss):        # fit stops on it (TerminateOnNaN)
            return {"d_loss": d_loss, "g_loss": float("nan")}
        d.backward(grad, input_grads=False)
        self.d_optimizer.apply_gradients(d)
        # generator: the non-saturating loss -log D(G(z)); D's input gradient flows into G
        fake = g(self.sample_latent(n), training=True)
        g_loss, grad = self.bce(1.0, d(fake, training=True))
        g.backward(d.backward(grad, weight_grads=False), input_grads=False)
        self.g_optimizer.apply_gradients(g)
        return {"d_loss": d_loss, "g_loss": g_loss}

    # -- fit -------------------------------------------------------------------------------
    def _check_data(self, x, y=None):
        if y is not None:
            raise ValueError("GAN.fit takes no labels y (for class-conditional generation use "
                             "cn.models.ConditionalGAN)")
        shape = _output_shape(self.generator, "the generator")
        x = check_array(x, "x", self.dtype)
        if x.shape[1:] != shape:
            raise ValueError(f"x has per-sample shape {x.shape[1:]}; the generator makes "
                             f"samples of shape {shape}")
        if len(x) == 0:
            raise ValueError("x is empty")
        return [x]

    def _batch(self, data, idx):
        return data[0][idx]

    def fit(self, x, y=None, epochs=1, batch_size=32, shuffle=True, verbose=1, callbacks=None):
        """Train for `epochs` passes over the real samples x in mini-batches; returns a
        History of the per-epoch mean d_loss and g_loss. A NaN or infinite loss stops
        training at once with a warning naming the step (TerminateOnNaN behaviour)."""
        if self.d_optimizer is None:
            raise RuntimeError("compile the GAN first: gan.compile(d_optimizer, g_optimizer)")
        check_positive(epochs, "epochs", integer=True)
        check_positive(batch_size, "batch_size", integer=True)
        data = self._check_data(x, y)
        n = len(data[0])
        steps = (n + batch_size - 1) // batch_size
        params = {"epochs": epochs, "steps": steps, "verbose": verbose}
        history = History()
        history.set_model(self)
        history.set_params(params)
        self.history = history
        callbacks = CallbackList(callbacks, self, params)
        progress = make_progress(verbose, epochs, steps)
        rng = get_rng()
        self.stop_training = False
        logs = {}
        callbacks.call("on_train_begin", {})
        try:
            for epoch in range(epochs):
                order = rng.permutation(n) if shuffle else np.arange(n)
                callbacks.call("on_epoch_begin", epoch, {})
                progress.epoch_begin(epoch)
                sums, seen = {}, 0
                for step in range(steps):
                    callbacks.call("on_train_batch_begin", step, {})
                    idx = order[step * batch_size:(step + 1) * batch_size]
                    try:
                        step_logs = {k: float(v) for k, v in
                                     dict(self.train_step(self._batch(data, idx))).items()}
                        bad = [f"{k} is {v}" for k, v in step_logs.items()
                               if not math.isfinite(v)]
                    except ValueError:
                        # a model whose weights went NaN/inf makes outputs the next model's
                        # input check refuses: stop as for a NaN loss; other errors propagate
                        bad = self._non_finite_models()
                        if not bad:
                            raise
                        step_logs = {}
                    if bad:
                        warnings.warn(f"GAN.fit: {bad[0]} at epoch {epoch + 1}, step "
                                      f"{step + 1}; training stopped (TerminateOnNaN). Lower "
                                      f"the learning rates, or clip gradients (clipnorm).",
                                      RuntimeWarning, stacklevel=2)
                        self.stop_training = True
                    for k, v in step_logs.items():
                        sums[k] = sums.get(k, 0.0) + v * len(idx)
                    seen += len(idx)
                    logs = {k: v / seen for k, v in sums.items()}
                    progress.batch_end(step, logs)
                    callbacks.call("on_train_batch_end", step, logs)
                    if self.stop_training:
                        break
                callbacks.call("on_epoch_end", epoch, logs)
                history.record(epoch, logs)
                progress.epoch_end(logs)
                if self.stop_training:
                    break
        except BaseException:
            progress.close()
            raise
        progress.close()
        callbacks.call("on_train_end", logs)
        return history

    def _non_finite_models(self):
        return [f"the {what}'s weights are not finite" for what, m in
                (("generator", self.generator), ("discriminator", self.discriminator))
                if not all_finite(m._params)]

    def generate(self, n):
        """n new samples G(z), z ~ N(0, I)."""
        n = check_positive(n, "n", integer=True)
        return self.generator.predict(self.sample_latent(n))


class ConditionalGAN(GAN):
    """A GAN conditioned on a class label (Mirza & Osindero 2014): the generator takes
    [z, one_hot(label)] (shapes (latent_dim,), (num_classes,)) and the discriminator
    [x, one_hot(label)]; fit(x, y) takes integer labels 0..num_classes-1 (or one-hot
    rows). The discriminator learns to tell real (x, label) pairs from generated ones,
    so the generator learns to draw the class it is asked for."""

    def __init__(self, generator, discriminator, latent_dim, num_classes):
        if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) \
                or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2; got {num_classes!r}")
        self.num_classes = int(num_classes)
        super().__init__(generator, discriminator, latent_dim)

    def _generator_inputs(self):
        return [(self.latent_dim,), (self.num_classes,)]

    def one_hot(self, labels):
        """One-hot rows (n, num_classes) of integer labels (one-hot rows pass through)."""
        y = np.asarray(labels)
        if y.ndim == 2 and y.shape[1] == self.num_classes:
            return np.ascontiguousarray(y, self.dtype)
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim != 1 or y.dtype.kind not in "iuf" or (y.dtype.kind == "f" and (
                not np.all(np.isfinite(y)) or not np.array_equal(y, np.round(y)))):
            raise ValueError(f"labels must be integer class labels (n,) or one-hot rows "
                             f"(n, {self.num_classes}); got shape {y.shape}, dtype {y.dtype}")
        y = y.astype(np.int64)
        if len(y) and (y.min() < 0 or y.max() >= self.num_classes):
            raise ValueError(f"labels must be in 0..{self.num_classes - 1}; got values from "
                             f"{y.min()} to {y.max()}")
        out = np.zeros((len(y), self.num_classes), self.dtype)
        out[np.arange(len(y)), y] = 1
        return out

    def _check_data(self, x, y=None):
        if y is None:
            raise ValueError("ConditionalGAN.fit needs the class labels y")
        (x,) = GAN._check_data(self, x)
        labels = self.one_hot(y)
        if len(labels) != len(x):
            raise ValueError(f"x and y must have the same number of samples; got {len(x)} "
                             f"and {len(labels)}")
        return [x, labels]

    def _batch(self, data, idx):
        return data[0][idx], data[1][idx]

    def train_step(self, data):
        """One discriminator and one generator update on (real samples, one-hot labels);
        the generated samples are asked for the same labels."""
        real, labels = data
        n = len(real)
        g, d = self.generator, self.discriminator
        fake = g([self.sample_latent(n), labels], training=True)
        both = np.concatenate([labels, labels])
        d_out = d([np.concatenate([real, fake]), both], training=True)
        targets = np.zeros((2 * n, 1), self.dtype)
        targets[:n] = 1.0 - self.label_smoothing
        d_loss, grad = self.bce(targets, d_out)
        if not math.isfinite(d_loss):        # fit stops on it (TerminateOnNaN)
            return {"d_loss": d_loss, "g_loss": float("nan")}
        d.backward(grad, input_grads=False)
        self.d_optimizer.apply_gradients(d)
        fake = g([self.sample_latent(n), labels], training=True)
        g_loss, grad = self.bce(1.0, d([fake, labels], training=True))
        g.backward(d.backward(grad, weight_grads=False)[0], input_grads=False)
        self.g_optimizer.apply_gradients(g)
        return {"d_loss": d_loss, "g_loss": g_loss}

    def generate(self, labels):
        """One new sample per label (integer labels or one-hot rows)."""
        onehot = self.one_hot(labels)
        if len(onehot) == 0:
            raise ValueError("labels is empty")
        return self.generator.predict([self.sample_latent(len(onehot)), onehot])


__all__ = ["GAN", "ConditionalGAN"]
