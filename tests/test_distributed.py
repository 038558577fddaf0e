"""cyneuron.distributed: data-parallel training over MPI, run with `mpirun -n 2` on the
programs in tests/mpi_worker.py (skipped where mpi4py or mpirun is missing)."""
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

import cyneuron as cn
from cyneuron import distributed as dist

pytest.importorskip("mpi4py", reason="mpi4py is not installed (pip install 'cyneuron[mpi]')")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import mpi_worker as worker  # noqa: E402


def _mpirun():
    beside = os.path.join(os.path.dirname(sys.executable), "mpirun")
    return beside if os.access(beside, os.X_OK) else shutil.which("mpirun")


MPIRUN = _mpirun()
needs_mpirun = pytest.mark.skipif(MPIRUN is None, reason="no mpirun found (pip install mpich, "
                                                         "or a system MPI)")
LIMIT = 240     # seconds for one mpirun: a hang fails the test instead of the run


def _env():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "PMIX_"))}
    src = os.path.dirname(os.path.dirname(os.path.abspath(cn.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([src] + [p for p in [env.get("PYTHONPATH")] if p])
    env["OMP_NUM_THREADS"] = "1"
    return env


def launch(scenario, folder, ranks=2, mpi=True):
    cmd = [sys.executable, os.path.join(HERE, "mpi_worker.py"), scenario, str(folder)]
    if mpi:
        cmd = [MPIRUN, "-n", str(ranks)] + cmd
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=LIMIT, env=_env())
    return proc, time.monotonic() - start


def results(folder, scenario, ranks=2):
    return [dict(np.load(os.path.join(folder, f"{scenario}-rank{r}.npz"))) for r in range(ranks)]


def _ok(proc):
    assert proc.returncode == 0, proc.stdout + proc.stderr


def reference_fit(start, n, batch_size, opt, epochs):
    """The one-process run: same start weights, batch 2 * B, the whole data set."""
    x, y = worker.data(n)
    model = worker.mlp(seed=0)
    model.set_weights(_unflat(model, start))
    model.compile(optimizer=worker.optimizer(opt), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    history = model.fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=False, verbose=0)
    return worker.flat(model), history, model


def _unflat(model, flat):
    out, pos = [], 0
    for w in model.get_weights():
        out.append(flat[pos:pos + w.size].reshape(w.shape))
        pos += w.size
    return out


@pytest.fixture(scope="module")
def fit_runs(tmp_path_factory):
    if MPIRUN is None:
        pytest.skip("no mpirun found")
    folder = tmp_path_factory.mktemp("mpi_fit")
    proc, _ = launch("fit", folder)
    _ok(proc)
    return results(folder, "fit"), proc


@needs_mpirun
@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_two_ranks_half_batch_equal_one_rank_full_batch(fit_runs, opt):
    """2 ranks x batch B over their strided shards == 1 process x batch 2B: 20 steps,
    float64, the ranks' start weights differing (fit broadcasts rank 0's)."""
    ranks, _ = fit_runs
    assert not np.array_equal(ranks[0][f"{opt}_start"], ranks[1][f"{opt}_start"])
    assert int(ranks[0][f"{opt}_steps"]) == 20
    np.testing.assert_array_equal(ranks[0][f"{opt}_end"], ranks[1][f"{opt}_end"])
    expected, history, _ = reference_fit(ranks[0][f"{opt}_start"], 2 * worker.B * 20,
                                         2 * worker.B, opt, 1)
    assert not np.allclose(expected, ranks[0][f"{opt}_start"])       # it trained
    np.testing.assert_allclose(ranks[0][f"{opt}_end"], expected, rtol=1e-10, atol=1e-12)
    # the epoch loss averaged over the ranks (MetricAverage): the same on both
    np.testing.assert_array_equal(ranks[0][f"{opt}_loss"], ranks[1][f"{opt}_loss"])
    # fit put the model's own optimizer back
    assert ranks[0][f"{opt}_optimizer_is_plain"]


@needs_mpirun
def test_metric_average_agrees_across_ranks(fit_runs):
    """Each rank validated on its own shard; the logged val_loss is their mean."""
    ranks, _ = fit_runs
    local = [float(r["sgd_val_local"]) for r in ranks]
    assert local[0] != local[1]
    for r in ranks:
        assert r["sgd_val_logged"].shape == (1,)
        np.testing.assert_allclose(r["sgd_val_logged"][0], np.mean(local), rtol=1e-12)


@needs_mpirun
@pytest.mark.parametrize("case, n", [("uneven", 37), ("empty", 33)])
def test_uneven_shards(fit_runs, case, n):
    """37 samples: shards of 19 and 18, the last step 3 + 2 samples; 33: shards of 17 and
    16, rank 1 has no sample in the last step (a zero gradient, weighed 0). Both equal
    the one-process run with batch 8 over 3 epochs."""
    ranks, _ = fit_runs
    assert int(ranks[0][f"{case}_steps"]) == 3 * 5
    np.testing.assert_array_equal(ranks[0][f"{case}_end"], ranks[1][f"{case}_end"])
    expected, _, _ = reference_fit(ranks[0][f"{case}_start"], n, 8, "sgd", 3)
    np.testing.assert_allclose(ranks[0][f"{case}_end"], expected, rtol=1e-10, atol=1e-12)


@needs_mpirun
def test_only_rank_zero_prints(fit_runs):
    _, proc = fit_runs
    assert proc.stdout.count("Epoch 1/1") == 1, proc.stdout


@needs_mpirun
def test_train_on_batch_with_distributed_optimizer(tmp_path):
    proc, _ = launch("train_on_batch", tmp_path)
    _ok(proc)
    ranks = results(tmp_path, "tob")
    assert not np.array_equal(ranks[0]["before"], ranks[1]["before"])
    np.testing.assert_array_equal(ranks[0]["start"], ranks[1]["start"])
    np.testing.assert_array_equal(ranks[0]["end"], ranks[1]["end"])
    x, y = worker.data(2 * worker.B * 20)
    model = worker.mlp(seed=0)
    model.set_weights(_unflat(model, ranks[0]["start"]))
    model.compile(optimizer=cn.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    for step in range(20):
        model.train_on_batch(x[step * 2 * worker.B:(step + 1) * 2 * worker.B],
                             y[step * 2 * worker.B:(step + 1) * 2 * worker.B])
    np.testing.assert_allclose(ranks[0]["end"], worker.flat(model), rtol=1e-10, atol=1e-12)


@needs_mpirun
def test_broadcast_makes_ranks_identical(tmp_path):
    proc, _ = launch("broadcast", tmp_path)
    _ok(proc)
    ranks = results(tmp_path, "broadcast")
    n = int(ranks[0]["n"])
    differ = [not np.array_equal(ranks[0][f"before{i}"], ranks[1][f"before{i}"])
              for i in range(n)]
    assert all(differ)
    for i in range(n):
        np.testing.assert_array_equal(ranks[0][f"after{i}"], ranks[1][f"after{i}"])
        np.testing.assert_array_equal(ranks[0][f"after{i}"], ranks[1][f"before{i}"])  # root 1
    np.testing.assert_array_equal(ranks[0]["bn_mean"], ranks[1]["bn_mean"])


@needs_mpirun
def test_a_rank_raising_aborts_the_job(tmp_path):
    proc, elapsed = launch("raise", tmp_path)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "boom from rank 1" in out and "rank 1/2" in out, (proc.returncode, elapsed, out)
    assert elapsed < LIMIT


@needs_mpirun
def test_collective_timeout_aborts_instead_of_hanging(tmp_path):
    proc, elapsed = launch("timeout", tmp_path)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "TimeoutError" in out and "the test's all-reduce" in out, (proc.returncode, elapsed, out)
    assert elapsed < 50         # rank 1 sleeps 60 s: the abort ended it


@needs_mpirun
def test_different_models_are_a_clear_error(tmp_path):
    proc, _ = launch("mismatch", tmp_path)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "different models" in out and "parameter counts" in out, out


@needs_mpirun
@pytest.mark.parametrize("scenario", ["nompi", "nompi_sklearn"])
def test_distributed_without_mpirun_is_a_clear_error(tmp_path, scenario):
    if scenario == "nompi_sklearn":
        pytest.importorskip("sklearn")
    proc, _ = launch(scenario, tmp_path, mpi=False)
    assert proc.returncode != 0
    assert "needs the script started by an MPI launcher" in proc.stderr, proc.stderr


@needs_mpirun
def test_sklearn_estimator_distributed(tmp_path):
    """MLPClassifier(distributed=True) on 2 ranks follows the one-process fit."""
    pytest.importorskip("sklearn")
    from cyneuron.sklearn import MLPClassifier

    proc, _ = launch("sklearn", tmp_path)
    _ok(proc)
    ranks = results(tmp_path, "sklearn")
    x, y = worker.data(300)
    clf = MLPClassifier((12,), max_iter=4, batch_size=32, random_state=0, dtype="float64",
                        alpha=1e-3)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf.fit(x, y)
    for r in ranks:
        for i, (c, b) in enumerate(zip(clf.coefs_, clf.intercepts_)):
            np.testing.assert_allclose(r[f"coef{i}"], c, rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(r[f"bias{i}"], b, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(r["loss_curve"], clf.loss_curve_, rtol=1e-10)
        assert int(r["t"]) == clf.t_


# -- without MPI: the pieces that need no second rank ----------------------------------------
def test_shard_is_strided_and_uneven():
    x = np.arange(22).reshape(11, 2)
    y = np.arange(11)
    parts = [dist.shard(x, y, rank=r, size=3) for r in range(3)]
    assert [len(p[0]) for p in parts] == [4, 4, 3]       # the last shard is smaller
    np.testing.assert_array_equal(parts[1][1], [1, 4, 7, 10])
    np.testing.assert_array_equal(parts[1][0], x[1::3])
    assert all(p[0].flags.c_contiguous for p in parts)
    np.testing.assert_array_equal(np.sort(np.concatenate([p[1] for p in parts])), y)
    xs = dist.shard({"a": x, "b": [y, y]}, rank=2, size=3)
    np.testing.assert_array_equal(xs["b"][1], [2, 5, 8])
    np.testing.assert_array_equal(dist.shard([[1], [2], [3]], rank=1, size=2), [[2]])


def test_shard_bad_input():
    x = np.zeros((4, 2))
    with pytest.raises(ValueError, match="rank must be an integer in"):
        dist.shard(x, rank=3, size=3)
    with pytest.raises(ValueError, match="size must be a positive integer"):
        dist.shard(x, rank=0, size=0)
    with pytest.raises(ValueError, match="x must be an array of samples"):
        dist.shard(5.0, rank=0, size=2)


def test_distributed_optimizer_wraps_and_saves_as_the_inner(tmp_path):
    model = worker.mlp(seed=3)
    model.compile(optimizer=dist.DistributedOptimizer("adam"),
                  loss="sparse_categorical_crossentropy")
    model.optimizer.optimizer.apply_gradients(model._params, np.zeros_like(model._grads))
    model.save(tmp_path / "m.cyn")
    loaded = cn.load_model(tmp_path / "m.cyn")
    assert type(loaded.optimizer) is cn.optimizers.Adam
    assert loaded.optimizer.iterations == 1
    inner = cn.optimizers.Adam(0.01)
    opt = dist.DistributedOptimizer(inner)
    assert opt.name == "adam" and opt.learning_rate == 0.01
    opt.learning_rate = 0.02
    assert inner.learning_rate == 0.02
    assert opt.get_config() == inner.get_config()
    with pytest.raises(ValueError, match="already a DistributedOptimizer"):
        dist.DistributedOptimizer(opt)
    with pytest.raises(ValueError, match="unknown optimizer"):
        dist.DistributedOptimizer("nope")
