"""Layers (Keras names and weight layouts)."""
from .base import Layer
from .dense import Dense
from .normalization import BatchNormalization, LayerNormalization, Normalization
from .regularization import Dropout

__all__ = ["Layer", "Dense", "Dropout", "BatchNormalization", "LayerNormalization",
           "Normalization"]
