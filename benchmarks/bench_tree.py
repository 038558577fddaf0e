"""TreeLSTM training, float32: cyneuron vs PyTorch CPU written two ways, one group, same run.

Binary TreeLSTM(128) over Embedding(1001, 64), Dense(5) on every node, per-node
cross-entropy, Adam 1e-3; batches of 25 random binary trees of 20-40 leaves. One round
= one training step (the next of 8 fixed batches). Contenders: cyneuron (layers.TreeLSTM,
level-batched kernels), PyTorch level-batched (one matmul per level, autograd) and
PyTorch per-node (the tutorials' recursive cell). extra_info records trees/s. The
callables are the ones `python -m cyneuron bench tree` times (cyneuron._bench_tree);
on a busy machine prefer that command with `--threads 1 --clock cpu`.
"""
import pytest

import cyneuron as cn
from cyneuron._bench import settle_threads
from cyneuron._bench_tree import BATCH, IMPLEMENTATIONS, tree_callables

THREADS = 1


@pytest.fixture(scope="module")
def callables():
    before = cn.get_num_threads()
    cn.set_num_threads(THREADS)
    yield tree_callables(THREADS)
    cn.set_num_threads(before)


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_tree_lstm_train_step(benchmark, callables, name):
    fns, missing = callables
    if name not in fns:
        pytest.skip(f"{name}: {missing.get(name, 'unavailable')}")
    benchmark.group = f"TreeLSTM train step, batch {BATCH} trees of 20-40 leaves, {THREADS} thread"
    settle_threads()
    slow = name == "torch per-node"
    loss = benchmark.pedantic(fns[name], rounds=3 if slow else 20, iterations=1,
                              warmup_rounds=1)
    assert loss == loss and loss > 0          # a finite loss: the step ran
    stats = getattr(benchmark, "stats", None)   # None under --benchmark-disable
    if stats is not None:
        benchmark.extra_info["trees_per_s"] = round(BATCH / stats.stats.median, 1)
