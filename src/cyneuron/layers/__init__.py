"""Layers (Keras names and weight layouts)."""
from .activation import ELU, Activation, LeakyReLU, Maxout, PReLU
from .attention import MultiHeadAttention
from .base import Layer, deserialize, serialize
from .conv import Conv1D, Conv2D, Conv2DTranspose
from .dense import Dense
from .embedding import Embedding
from .input_layer import Input, InputLayer
from .merge import Add, Average, Concatenate, Dot, Maximum, Minimum, Multiply, Subtract
from .normalization import BatchNormalization, LayerNormalization, Normalization
from .rbf import RBF
from .pooling import (AveragePooling1D, AveragePooling2D, GlobalAveragePooling1D,
                      GlobalAveragePooling2D, GlobalMaxPooling1D, GlobalMaxPooling2D,
                      MaxPooling1D, MaxPooling2D)
from .recurrent import GRU, LSTM, RNN, SimpleRNN
from .regularization import Dropout
from .reshaping import (Cropping1D, Cropping2D, Flatten, Permute, RepeatVector, Reshape,
                        UpSampling1D, UpSampling2D, ZeroPadding2D)
from .tree import TreeLSTM, TreeRNN
from .transformer import (PositionalEncoding, TokenAndPositionEmbedding, TransformerDecoder,
                          TransformerEncoder)
from .wrappers import Bidirectional, TimeDistributed, Wrapper

__all__ = ["Layer", "Dense", "Activation", "LeakyReLU", "ELU", "PReLU", "Maxout", "Dropout",
           "BatchNormalization", "LayerNormalization", "Normalization", "Conv1D", "Conv2D",
           "Conv2DTranspose", "MaxPooling1D", "MaxPooling2D", "AveragePooling1D",
           "AveragePooling2D", "GlobalMaxPooling1D", "GlobalMaxPooling2D",
           "GlobalAveragePooling1D", "GlobalAveragePooling2D", "Flatten", "Reshape",
           "ZeroPadding2D", "Cropping1D", "Cropping2D", "Permute", "RepeatVector",
           "UpSampling1D", "UpSampling2D", "Embedding", "RNN", "SimpleRNN", "LSTM", "GRU",
           "Bidirectional", "TimeDistributed", "Wrapper", "serialize", "deserialize",
           "Input", "InputLayer", "Add", "Subtract", "Multiply", "Average", "Maximum",
           "Minimum", "Concatenate", "Dot", "RBF", "MultiHeadAttention",
           "TokenAndPositionEmbedding", "PositionalEncoding", "TransformerEncoder",
           "TransformerDecoder", "TreeRNN", "TreeLSTM"]
