"""Layers (Keras names and weight layouts)."""
from .activation import ELU, Activation, LeakyReLU, Maxout, PReLU
from .base import Layer
from .dense import Dense

__all__ = ["Layer", "Dense", "Activation", "LeakyReLU", "ELU", "PReLU", "Maxout"]
