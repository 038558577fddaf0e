"""Compiled kernels (Cython, nogil, OpenMP). Inputs are validated by cyneuron.ops."""
