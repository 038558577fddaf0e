"""Arrays that start on a cache line.

numpy's allocations start 16 bytes into a 64-byte line. When two threads write the two
sides of a split C (the GEMM splits columns between threads), a line shared by both in
every row makes them fight over it (false sharing); scratch buffers and parameter
buffers made here start on a line instead.
"""
import numpy as np

CACHE_LINE = 64


def empty_aligned(shape, dtype, alignment=CACHE_LINE):
    """np.empty(shape, dtype), C-contiguous, its first element on an `alignment`-byte
    boundary (a view into a slightly larger buffer)."""
    dtype = np.dtype(dtype)
    shape = (shape,) if np.isscalar(shape) else tuple(shape)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + alignment, np.uint8)
    start = -raw.ctypes.data % alignment
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def zeros_aligned(shape, dtype, alignment=CACHE_LINE):
    """np.zeros with empty_aligned's placement."""
    out = empty_aligned(shape, dtype, alignment)
    out.fill(0)
    return out
