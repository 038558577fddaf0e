"""Fork safety: the library works in a child process after the parent used the OpenMP pool.

libgomp's worker threads do not survive fork(); a child that enters a parallel region
with more than one thread waits for them forever. cyneuron's pthread_atfork handler
(csrc/cn_fork.h) makes such a child run every kernel on one thread. Each scenario runs
in its own interpreter under a timeout, so a regression fails the test instead of
hanging the suite.
"""
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="fork and /proc are Linux-specific here")

TIMEOUT = 120   # seconds for a whole scenario; a hang shows up as a timeout failure

# A module the children import by name (spawn and forkserver need importable functions).
JOB_MODULE = textwrap.dedent('''
    import numpy as np
    import cyneuron as cn
    from cyneuron._kernels import _openmp

    MODEL = None        # set in the parent; a forked child inherits it


    def make_data():
        rng = np.random.default_rng(0)
        x = rng.standard_normal((512, 64))
        y = rng.integers(0, 10, 512)
        return x, y


    def job(path, use_inherited):
        """predict and one training step, on the inherited model or the saved one."""
        x, y = make_data()
        model = MODEL if (use_inherited and MODEL is not None) else cn.load_model(path)
        pred = model.predict(x)
        loss = model.train_on_batch(x[:256], y[:256])
        after = [w.copy() for w in model.get_weights()]
        return {"pred": pred, "loss": loss, "weights": after,
                "threads": cn.get_num_threads(),
                "single": _openmp.forked_single_thread()}
''')

SCENARIO = textwrap.dedent('''
    import multiprocessing as mp
    import os
    import sys
    import numpy as np
    import cyneuron as cn
    from cyneuron import layers
    import forkjob

    def threads_of_this_process():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Threads:"):
                    return int(line.split()[1])

    def main():
        method, path = sys.argv[1], sys.argv[2]
        cn.set_num_threads(2)
        cn.set_seed(0)
        x, y = forkjob.make_data()
        model = cn.Sequential([layers.Dense(256, activation="relu"), layers.Dense(10, activation="softmax")],
                              dtype="float64")
        model.compile(optimizer=cn.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
        model.fit(x, y, epochs=2, batch_size=256, verbose=0)     # the pool runs with 2 threads
        assert threads_of_this_process() >= 2, "the parent should be multi-threaded here"
        model.save(path)
        forkjob.MODEL = model
        reference = forkjob.job(path, use_inherited=False)      # the parent's own answers

        ctx = mp.get_context(method)
        with ctx.Pool(2, maxtasksperchild=1) as pool:      # each task in a fresh child
            results = pool.starmap(forkjob.job, [(path, True), (path, False), (path, True)])
        for r in results:
            np.testing.assert_allclose(r["pred"], reference["pred"], rtol=1e-12, atol=1e-14)
            assert abs(r["loss"] - reference["loss"]) <= 1e-12 * abs(reference["loss"])
            for a, b in zip(r["weights"], reference["weights"]):
                np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
            if method == "fork":
                assert r["single"] and r["threads"] == 1, r
            else:
                assert not r["single"] and r["threads"] >= 1, r
        # the parent keeps its pool
        assert cn.get_num_threads() == 2
        again = model.predict(x)
        np.testing.assert_allclose(again, reference["pred"], rtol=1e-12, atol=1e-14)
        print("OK", method, [r["threads"] for r in results])

    if __name__ == "__main__":       # spawn and forkserver children import this file
        main()
''')


def _run(tmp_path, method):
    (tmp_path / "forkjob.py").write_text(JOB_MODULE)
    (tmp_path / "scenario.py").write_text(SCENARIO)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path)] + sys.path)
    try:
        done = subprocess.run([sys.executable, str(tmp_path / "scenario.py"), method,
                               str(tmp_path / "model.cyn")], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"start method {method!r}: the scenario hung (killed after {TIMEOUT} s); "
                    f"output: {str(exc.stdout)[-2000:]} {str(exc.stderr)[-2000:]}")
    assert done.returncode == 0, \
        f"{method}: rc {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    assert f"OK {method}" in done.stdout


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_children_predict_and_train_like_the_parent(tmp_path, method):
    """After fit ran the OpenMP pool on 2 threads, children made with each start method
    predict and take a training step with the parent's results, without hanging."""
    _run(tmp_path, method)


RAW_FORK = textwrap.dedent('''
    import os, sys, warnings
    import numpy as np
    import cyneuron as cn
    from cyneuron._kernels import _openmp

    cn.set_num_threads(2)
    a = np.random.default_rng(1).standard_normal((400, 300))
    ref = cn.ops.matmul(a, a, trans_b=True)          # a parallel GEMM in the parent
    pid = os.fork()
    if pid == 0:                                     # the child
        code = 1
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                cn.set_num_threads(2)                # refused with a warning, stays 1
            assert any("forked" in str(w.message) for w in caught), caught
            assert cn.get_num_threads() == 1 and _openmp.forked_single_thread()
            assert cn.show_config is not None and cn.get_num_threads() == 1
            got = cn.ops.matmul(a, a, trans_b=True)
            np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)
            pid2 = os.fork()                         # a grandchild is single-threaded too
            if pid2 == 0:
                ok = _openmp.forked_single_thread() and np.allclose(
                    cn.ops.matmul(a, a, trans_b=True), ref, rtol=1e-12, atol=1e-12)
                os._exit(0 if ok else 3)
            _, status = os.waitpid(pid2, 0)
            code = 0 if os.waitstatus_to_exitcode(status) == 0 else 4
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, status
    assert not _openmp.forked_single_thread() and cn.get_num_threads() == 2
    print("OK raw")
''')


def test_raw_os_fork_child_and_grandchild(tmp_path):
    script = tmp_path / "raw.py"
    script.write_text(RAW_FORK)
    try:
        done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                              timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"a forked child hung (killed after {TIMEOUT} s)")
    assert done.returncode == 0 and "OK raw" in done.stdout, done.stdout + done.stderr


SINGLE_PARENT = textwrap.dedent('''
    import os
    import numpy as np
    import cyneuron as cn
    from cyneuron._kernels import _openmp

    with open("/proc/self/status") as f:
        threads = [int(l.split()[1]) for l in f if l.startswith("Threads:")][0]
    assert threads == 1, threads
    pid = os.fork()
    if pid == 0:
        os._exit(0 if not _openmp.forked_single_thread() and cn.get_num_threads() == 2 else 5)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, status
    assert _openmp.threads_at_last_fork() == 1
    print("OK single")
''')


def test_child_of_a_single_threaded_parent_keeps_its_threads(tmp_path):
    """No OpenMP pool exists in a parent with one thread: its children may use threads."""
    script = tmp_path / "single.py"
    script.write_text(SINGLE_PARENT)
    env = dict(os.environ, OMP_NUM_THREADS="2", OPENBLAS_NUM_THREADS="1", OMP_THREAD_LIMIT="2",
               MKL_NUM_THREADS="1")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=TIMEOUT, env=env)
    assert done.returncode == 0 and "OK single" in done.stdout, done.stdout + done.stderr
