"""empty_aligned / zeros_aligned: arrays that start on a cache line, like np.empty otherwise."""
import numpy as np
import pytest

from cyneuron._memory import empty_aligned, zeros_aligned


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
@pytest.mark.parametrize("shape", [(0,), (1,), (3, 5), (32, 784), (2, 0, 4), 7])
def test_aligned_arrays_start_on_a_line_and_behave_like_numpy(shape, dtype):
    for make in (empty_aligned, zeros_aligned):
        a = make(shape, dtype)
        want = np.empty(shape, dtype)
        assert a.shape == want.shape and a.dtype == want.dtype
        assert a.flags.c_contiguous and a.flags.writeable
        assert a.ctypes.data % 64 == 0 or a.size == 0
        a[...] = 3
        assert np.all(a == 3)
    assert np.all(zeros_aligned(shape, dtype) == 0)


def test_layer_scratch_buffers_are_aligned():
    import cyneuron as cn
    from cyneuron import layers
    model = cn.Sequential([layers.Dense(24, activation="relu"), layers.Dense(3)])
    model.compile(optimizer="adam", loss="mse")
    x = np.random.default_rng(0).standard_normal((13, 5)).astype(np.float32)
    model.fit(x, np.zeros((13, 3), np.float32), epochs=1, batch_size=13, verbose=0)
    bufs = [b for layer in model.layers for b in layer._buffers.values() if b.size]
    assert bufs and all(b.ctypes.data % 64 == 0 for b in bufs)
