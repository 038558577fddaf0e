"""The training loop's array passes: the finite check on input data and the batch gather,
against numpy, on 1 and 2 threads."""
import numpy as np
import pytest

from cyneuron._kernels.arrays import add, all_finite, gather_rows


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1,), (7,), (33,), (4097,), (3000, 33), (5, 4, 3)])
def test_all_finite_matches_numpy(isa, kernel_threads, dtype, shape):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(dtype)
    assert all_finite(x)
    info = np.finfo(dtype)
    assert all_finite(np.array([info.max, -info.max, info.tiny, info.tiny / 4, -0.0], dtype))
    flat = x.reshape(-1)
    # first, middle, last; inside a 32-lane group, in the tail after the last full group,
    # either side of a 4096-element block boundary
    positions = {0, flat.size // 2, flat.size - 1, 5 % flat.size, (flat.size // 32) * 32 - 1,
                 min(4095, flat.size - 1), min(4096, flat.size - 1)}
    for position in sorted(p for p in positions if p >= 0):
        for bad in (np.nan, np.inf, -np.inf):
            y = flat.copy()
            y[position] = bad
            assert not all_finite(y.reshape(shape))


def test_all_finite_other_layouts_and_dtypes_go_to_numpy():
    x = np.arange(20, dtype=np.float64).reshape(4, 5)
    assert all_finite(x.T) and all_finite(x[:, ::2]) and all_finite(x.astype(np.float16))
    y = x.copy()
    y[1, 2] = np.nan
    assert not all_finite(y.T) and not all_finite(y.astype(np.float16))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
@pytest.mark.parametrize("shape", [(50,), (50, 3), (400, 784), (60, 4, 5)])
def test_gather_rows_matches_take(kernel_threads, dtype, shape):
    rng = np.random.default_rng(1)
    src = (rng.standard_normal(shape) * 100).astype(dtype)
    for count in (1, 7, shape[0]):
        idx = rng.permutation(shape[0])[:count].astype(np.int64)
        out = np.empty((count,) + shape[1:], dtype)
        gather_rows(src, idx, out)
        np.testing.assert_array_equal(out, np.take(src, idx, axis=0))


def test_gather_rows_refuses_bad_arguments():
    src = np.zeros((5, 3))
    out = np.empty((2, 3))
    with pytest.raises(IndexError, match="out of range"):
        gather_rows(src, np.array([0, 5], np.int64), out)
    with pytest.raises(IndexError, match="out of range"):
        gather_rows(src, np.array([-1, 0], np.int64), out)
    with pytest.raises(ValueError, match="idx"):
        gather_rows(src, np.array([0, 1], np.int32), out)
    with pytest.raises(ValueError, match="does not hold rows"):
        gather_rows(src, np.array([0, 1], np.int64), np.empty((2, 4)))
    with pytest.raises(ValueError, match="does not hold rows"):
        gather_rows(src, np.array([0, 1], np.int64), np.empty((2, 3), np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        gather_rows(src.T, np.array([0, 1], np.int64), np.empty((2, 5)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1,), (7, 3), (2048, 128), (3, 5000, 7)])
def test_add_gives_numpy_s_bits_on_every_thread_count(kernel_threads, dtype, shape):
    """out = a + b, or (a + b) + c: numpy's sums bit for bit, split between threads or not,
    into a fresh array or in place over one of the inputs."""
    rng = np.random.default_rng(2)
    a, b, c = (rng.standard_normal(shape).astype(dtype) for _ in range(3))
    out = np.full(shape, np.nan, dtype)
    add(a, b, out)
    np.testing.assert_array_equal(out, a + b)
    add(a, b, out, c)
    np.testing.assert_array_equal(out, (a + b) + c)
    want = (a + b) + c
    add(a, b, a, c)
    np.testing.assert_array_equal(a, want)


def test_add_other_layouts_dtypes_and_overlaps_go_to_numpy():
    """What the kernel does not take (strided views, mixed or integer dtypes, broadcasts,
    partial overlap, non-arrays) gives numpy's result, or numpy's error."""
    rng = np.random.default_rng(3)
    a = rng.standard_normal((40, 30)).astype(np.float32)
    b = rng.standard_normal((40, 30))
    for x, y in ((a, a.T.copy().T), (a, b), (a, a[0]), (a, 2.0), (a.astype(np.int64), a)):
        out = np.empty((40, 30), np.result_type(x, y))
        add(x, y, out)
        np.testing.assert_array_equal(out, np.add(x, y))
        add(x, y, out, a)
        np.testing.assert_array_equal(out, np.add(np.add(x, y), a))
    buf = np.arange(13, dtype=np.float32)
    want = buf[1:] + 1
    add(buf[1:], np.ones(12, np.float32), buf[:12])     # overlapping out and a
    np.testing.assert_array_equal(buf[:12], want)
    with pytest.raises(ValueError):
        add(a, np.ones((3, 3), np.float32), np.empty((40, 30), np.float32))
