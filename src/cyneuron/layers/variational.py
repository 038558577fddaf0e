"""Layers of a variational autoencoder.

    z_mean = layers.Dense(latent)(h)
    z_log_var = layers.Dense(latent)(h)
    z = layers.Sampling(seed=0)([z_mean, z_log_var])
    ...
    vae = cn.Model(inputs, outputs)
    vae.add_loss(layers.GaussianKL()([z_mean, z_log_var]))

Sampling draws z = mean + exp(log_var / 2) * eps, eps ~ N(0, I) (the reparameterisation
trick: the noise is an input, so gradients reach mean and log_var). GaussianKL gives each
sample's KL(N(mean, exp(log_var)) || N(0, I)); `model.add_loss` makes its batch mean part
of the training loss.
"""
import numpy as np

from .._random import get_rng
from .merge import _Merge
from .noise import _check_seed


class Sampling(_Merge):
    """z = z_mean + exp(0.5 * z_log_var) * eps from [z_mean, z_log_var], eps ~ N(0, I)
    drawn anew each call, in training and at inference (as Keras's VAE example).
    seed: an int gives the layer its own reproducible stream; None uses the library
    generator (`cn.set_seed`)."""

    _exactly = 2
    supports_masking = False

    def __init__(self, seed=None, name=None, dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.seed = _check_seed(seed)
        self._rng = None if seed is None else np.random.default_rng(int(seed))

    def _combine(self, xs):
        mean, log_var = xs
        eps = self._buffer("eps", mean.shape)
        (self._rng or get_rng()).standard_normal(dtype=eps.dtype, out=eps)
        std = np.multiply(log_var, 0.5, out=self._buffer("std", mean.shape))
        np.exp(std, out=std)
        z = np.multiply(std, eps, out=self._buffer("z", mean.shape))
        z += mean
        return z

    def _split(self, g):
        # dz/dmean = 1; dz/dlog_var = 0.5 * std * eps
        d_log_var = np.multiply(g, self._buffers["std"], out=self._buffer("dlv", g.shape))
        d_log_var *= self._buffers["eps"]
        d_log_var *= 0.5
        return [g, d_log_var]

    def get_config(self):
        return {"name": self.name, "seed": self.seed}


class GaussianKL(_Merge):
    """Per-sample KL divergence of N(z_mean, exp(z_log_var)) from N(0, I), summed over
    the latent axis: -0.5 * sum(1 + log_var - mean^2 - exp(log_var)); output (batch, 1).
    Meant for `model.add_loss` (a VAE's KL term)."""

    _exactly = 2
    supports_masking = False

    def compute_output_shape(self, input_shape):
        return (1,)

    def _check_shapes(self, shapes):
        super()._check_shapes(shapes)
        if len(shapes[0]) != 1:
            raise ValueError(f"GaussianKL {self.name!r} takes (batch, latent) inputs; got "
                             f"{[(None,) + s for s in shapes]}")

    def _combine(self, xs):
        mean, log_var = xs
        self._mean = mean
        var = np.exp(log_var, out=self._buffer("var", mean.shape))
        terms = np.square(mean, out=self._buffer("terms", mean.shape))
        terms += var
        terms -= log_var
        terms -= 1.0
        out = self._buffer("kl", (len(mean), 1))
        np.sum(terms, axis=1, keepdims=True, out=out)
        out *= 0.5
        return out

    def _split(self, g):
        # d/dmean = mean; d/dlog_var = 0.5 * (exp(log_var) - 1); times the incoming g
        d_mean = np.multiply(self._mean, g, out=self._buffer("dmean", self._mean.shape))
        d_log_var = np.subtract(self._buffers["var"], 1.0, out=self._buffer("dlv",
                                                                          self._mean.shape))
        d_log_var *= g
        d_log_var *= 0.5
        return [d_mean, d_log_var]

    def get_config(self):
        return {"name": self.name}
