"""Layers (Keras names and weight layouts)."""
from .activation import ELU, Activation, LeakyReLU, Maxout, PReLU
from .base import Layer, deserialize, serialize
from .dense import Dense
from .normalization import BatchNormalization, LayerNormalization, Normalization
from .regularization import Dropout

__all__ = ["Layer", "Dense", "Activation", "LeakyReLU", "ELU", "PReLU", "Maxout", "Dropout",
           "BatchNormalization", "LayerNormalization", "Normalization", "serialize", "deserialize"]
