"""Threads: threadpoolctl sees and limits cyneuron's OpenMP pool, and training on 1 or 2
threads gives the same result within float tolerance."""
import os

import numpy as np
import pytest

import cyneuron as cn
from cyneuron import _config, layers

threadpoolctl = pytest.importorskip("threadpoolctl")


def test_threadpoolctl_lists_the_openmp_runtime():
    runtime = _config.openmp_runtime()
    assert runtime is not None
    infos = [i for i in threadpoolctl.threadpool_info() if i["user_api"] == "openmp"]
    assert infos, threadpoolctl.threadpool_info()
    assert any(os.path.realpath(i["filepath"]) == os.path.realpath(runtime) for i in infos), \
        (runtime, infos)


@pytest.mark.parametrize("user_api", [None, "openmp"])
def test_threadpool_limits_limits_the_kernels(restore_threads, user_api):
    cn.set_num_threads(2)
    with threadpoolctl.threadpool_limits(limits=1, user_api=user_api):
        assert cn.get_num_threads() == 1
        a = np.random.default_rng(0).standard_normal((300, 300)).astype(np.float32)
        np.testing.assert_allclose(cn.ops.matmul(a, a), a @ a, rtol=1e-4, atol=1e-3)
    assert cn.get_num_threads() == 2


def _train(threads):
    cn.set_num_threads(threads)
    cn.set_seed(3)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((512, 96)).astype(np.float32)
    y = rng.integers(0, 10, 512)
    model = cn.Sequential([layers.Dense(384, activation="relu"), layers.BatchNormalization(),
                           layers.Dense(256, activation="tanh"), layers.Dropout(0.2),
                           layers.Dense(10, activation="softmax")])
    model.compile(optimizer=cn.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    history = model.fit(x, y, epochs=2, batch_size=128, verbose=0)
    return model.get_weights(), history.history["loss"], model.predict(x)


def test_one_and_two_threads_agree(restore_threads):
    w1, loss1, p1 = _train(1)
    w2, loss2, p2 = _train(2)
    np.testing.assert_allclose(loss1, loss2, rtol=1e-5)
    for a, b in zip(w1, w2):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(p1, p2, rtol=1e-4, atol=1e-5)


def test_cache_line_round_trip(restore_threads):
    """The probe of how far apart the pool's threads are: a positive time on 2 threads
    (None where they cannot run on two CPUs), None on one, a clear error for bad input;
    `cn.show_config` reports it."""
    from cyneuron._kernels import _openmp

    cn.set_num_threads(1)
    assert _openmp.cache_line_round_trip_ns() is None
    cn.set_num_threads(2)
    ns = _openmp.cache_line_round_trip_ns(trips=500)
    if (os.cpu_count() or 1) >= 2:
        assert ns is None or 0 < ns < 1e6
    for bad in ({"trips": 0}, {"tries": 0}):
        with pytest.raises(ValueError, match="trips and tries"):
            _openmp.cache_line_round_trip_ns(**bad)
    assert "thread_round_trip_ns" in _config.config()


def test_thread_distance_scales_the_one_thread_threshold(restore_threads):
    """Far-apart threads (a long cache-line round trip) keep more products on one thread:
    the GEMM's thresholds grow with the round trip from the near case (~110 ns), capped at
    4x; None leaves them; nonsense is refused; results do not change, and the other
    kernels' split (threads_for) does not follow it. set_num_threads and each epoch
    measure it."""
    from cyneuron._kernels import gemm as _gemm

    try:
        near = _gemm.set_thread_distance(50.0)          # nearer than the reference: 1x
        assert _gemm.set_thread_distance(110.0) == near
        assert _gemm.set_thread_distance(None) == near
        far = _gemm.set_thread_distance(385.0)
        assert far == near * 350 // 100 and _gemm.plan_limits()["parallel_min_macs"] == far
        assert _gemm.plan_limits()["parallel_min_b_bytes"] == (1 << 18) * 350 // 100
        assert _gemm.set_thread_distance(5000.0) == near * 4
        for bad in (0, -3.0, float("nan")):
            with pytest.raises(ValueError, match="round_trip_ns"):
                _gemm.set_thread_distance(bad)
        # the same product gives the same result whichever side of the threshold it falls
        rng = np.random.default_rng(1)
        a = rng.standard_normal((32, 128)).astype(np.float32)
        b = rng.standard_normal((128, 64)).astype(np.float32)
        cn.set_num_threads(2)
        _gemm.set_thread_distance(110.0)
        c_near = cn.ops.matmul(a, b)
        _gemm.set_thread_distance(1000.0)
        np.testing.assert_allclose(cn.ops.matmul(a, b), c_near, rtol=1e-5, atol=1e-5)
        # the other kernels (threads_for) split as before: an Adam step over 100k parameters
        from cyneuron._kernels import optim as _optim

        results = []
        for distance in (110.0, 1000.0):
            _gemm.set_thread_distance(distance)
            r = np.random.default_rng(2)
            p, g, m, v = (r.standard_normal(100_000).astype(np.float32) for _ in range(4))
            v = np.abs(v)
            _optim.adam_update(p, g, m, v, p[:0], 1e-3, 0.9, 0.999, 1e-7, 3, False)
            results.append((p, m, v))
        for near_arr, far_arr in zip(*results):
            np.testing.assert_array_equal(near_arr, far_arr)
        ns = _config.probe_thread_distance()
        assert ns is None or ns > 0
    finally:
        _gemm.set_thread_distance(110.0)
