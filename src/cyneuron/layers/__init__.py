"""Layers (Keras names and weight layouts)."""
from .activation import ELU, Activation, LeakyReLU, Maxout, PReLU
from .base import Layer
from .dense import Dense
from .embedding import Embedding
from .normalization import BatchNormalization, LayerNormalization, Normalization
from .recurrent import GRU, LSTM, SimpleRNN
from .regularization import Dropout
from .wrappers import Bidirectional, TimeDistributed, Wrapper

__all__ = ["Layer", "Dense", "Activation", "LeakyReLU", "ELU", "PReLU", "Maxout", "Dropout",
           "BatchNormalization", "LayerNormalization", "Normalization", "Embedding",
           "SimpleRNN", "LSTM", "GRU", "Bidirectional", "TimeDistributed", "Wrapper"]
