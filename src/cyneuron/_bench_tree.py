"""`python -m cyneuron bench tree`: TreeLSTM training throughput, cyneuron next to two
PyTorch CPU implementations in the same run.

Model (all three alike): Embedding(1001, 64) -> binary TreeLSTM(128) over every node ->
Dense(5) per node, softmax cross-entropy averaged over the real nodes (Stanford Sentiment
Treebank style per-node labels), Adam 1e-3, float32. Data: random binary trees of 20-40
leaves (split points uniform, so often unbalanced; 39-79 nodes), words at the leaves,
batch 25. One call = one training step on the next of BATCHES fixed batches.

- cyneuron: a functional model, Embedding -> layers.TreeLSTM(variant="binary",
  return_nodes=True) -> Dense(5, softmax), `train_on_batch([tokens, children], labels)`.
- torch per-node: the way the usual tutorials write it: an nn.Module cell, a recursive
  Python function that evaluates one node at a time (children first), the per-node
  losses summed per tree, one backward and one optimizer step per batch.
- torch level-batched: the strong baseline: the batch's nodes in level order (its index
  tensors built before timing, from cyneuron.trees.schedule: so it gets that work for
  free), the input projection of all nodes as one matmul, then per level one gather of
  the children's states, one matmul and the gate math; autograd for the backward.

trees/s = 25 / seconds per step.
"""
import numpy as np

VOCAB, EMBED, UNITS, CLASSES = 1000, 64, 128, 5
LEAVES = (20, 40)
BATCH, BATCHES = 25, 8
LEARNING_RATE = 1e-3
IMPLEMENTATIONS = ("cyneuron", "torch level-batched", "torch per-node")


def random_tree(rng, leaves):
    """A nested binary tree (tuples) with `leaves` word ids (1..VOCAB) at the leaves."""
    if leaves == 1:
        return int(rng.integers(1, VOCAB + 1))
    k = int(rng.integers(1, leaves))
    return (random_tree(rng, k), random_tree(rng, leaves - k))


def tree_data(seed=0, batches=BATCHES, batch=BATCH):
    """[(TreeBatch, labels)] for `batches` batches of `batch` trees (per-node labels 0..4)."""
    from . import trees

    rng = np.random.default_rng(seed)
    vocab = {i: i for i in range(1, VOCAB + 1)}
    max_nodes = 2 * LEAVES[1] - 1
    out = []
    for _ in range(batches):
        nested = [random_tree(rng, int(rng.integers(LEAVES[0], LEAVES[1] + 1)))
                  for _ in range(batch)]
        data = trees.from_nested(nested, vocab=vocab, node_tokens=False, max_nodes=max_nodes,
                                 max_children=2)
        labels = rng.integers(0, CLASSES, size=data.tokens.shape)
        labels[~data.mask] = 0
        out.append((data, labels))
    return out


def cyneuron_step(batches, threads):
    import cyneuron as cn
    from cyneuron import layers

    cn.set_num_threads(threads)
    cn.set_seed(0)
    m = batches[0][0].max_nodes
    tokens = cn.Input(shape=(m,))
    kids = cn.Input(shape=(m, 2))
    h = layers.TreeLSTM(UNITS, variant="binary", return_nodes=True)(
        [layers.Embedding(VOCAB + 1, EMBED)(tokens), kids])
    model = cn.Model([tokens, kids], layers.Dense(CLASSES, activation="softmax")(h))
    model.compile(optimizer=cn.optimizers.Adam(LEARNING_RATE),
                  loss="sparse_categorical_crossentropy")
    inputs = [([d.tokens.astype(np.float32), d.children.astype(np.float32)], y)
              for d, y in batches]
    state = {"i": 0}

    def step():
        x, y = inputs[state["i"] % len(inputs)]
        state["i"] += 1
        return model.train_on_batch(x, y)

    return step


def _torch_modules(torch):
    nn = torch.nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(VOCAB + 1, EMBED)
            self.w = nn.Linear(EMBED, 5 * UNITS)               # x -> gates i, f0, f1, u, o
            self.u = nn.Linear(2 * UNITS, 5 * UNITS, bias=False)   # [h_left, h_right]
            self.out = nn.Linear(UNITS, CLASSES)

        def cell(self, z, c_left, c_right):
            i, f0, f1, u, o = z.chunk(5, dim=-1)
            c = torch.sigmoid(i) * torch.tanh(u) + torch.sigmoid(f0) * c_left \
                + torch.sigmoid(f1) * c_right
            return torch.sigmoid(o) * torch.tanh(c), c

    return Net


def torch_per_node_step(batches, threads):
    """The tutorial way: recursion over each tree, one node at a time."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = _torch_modules(torch)()
    opt = torch.optim.Adam(net.parameters(), lr=LEARNING_RATE)
    loss_fn = torch.nn.CrossEntropyLoss(reduction="sum")
    zeros = torch.zeros(1, UNITS)
    trees = []
    for data, labels in batches:
        per = []
        for t in range(len(data)):
            per.append((data.tokens[t].tolist(), data.children[t].tolist(),
                        torch.from_numpy(labels[t])))
        trees.append((per, int(data.n_nodes.sum())))
    state = {"i": 0}

    def node(tokens, children, j, out):
        kids = [k for k in children[j] if k >= 0]
        hl, cl = node(tokens, children, kids[0], out) if len(kids) > 0 else (zeros, zeros)
        hr, cr = node(tokens, children, kids[1], out) if len(kids) > 1 else (zeros, zeros)
        x = net.embed(torch.tensor([tokens[j]]))
        z = net.w(x) + net.u(torch.cat([hl, hr], dim=1))
        h, c = net.cell(z, cl, cr)
        out[j] = net.out(h)
        return h, c

    def step():
        per, count = trees[state["i"] % len(trees)]
        state["i"] += 1
        opt.zero_grad()
        loss = 0
        for tokens, children, labels in per:
            out = {}
            node(tokens, children, 0, out)
            idx = sorted(out)
            loss = loss + loss_fn(torch.cat([out[j] for j in idx]), labels[idx])
        loss = loss / count
        loss.backward()
        opt.step()
        return loss.item()

    return step


def torch_level_step(batches, threads):
    """Level by level: all nodes of one height across the batch at once."""
    import torch

    from .trees import schedule

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = _torch_modules(torch)()
    opt = torch.optim.Adam(net.parameters(), lr=LEARNING_RATE)
    loss_fn = torch.nn.CrossEntropyLoss()
    prepared = []
    for data, labels in batches:
        s = schedule(data.children, 2)
        starts, edges, kids = s["level_start"], s["edge_start"], s["kids"]
        levels = []
        for lv in range(1, len(starts) - 1):
            a, b = int(starts[lv]), int(starts[lv + 1])
            e = edges[a:b]
            if not (np.diff(edges[a:b + 1]) == 2).all():
                raise ValueError("the level-batched torch version takes full binary trees")
            levels.append((a, b, torch.from_numpy(kids[e]), torch.from_numpy(kids[e + 1])))
        prepared.append((torch.from_numpy(data.tokens.reshape(-1)[s["src"]]),
                         torch.from_numpy(labels.reshape(-1)[s["src"]]),
                         np.diff(starts).tolist(), levels))
    state = {"i": 0}

    def step():
        tokens, labels, sizes, levels = prepared[state["i"] % len(prepared)]
        state["i"] += 1
        opt.zero_grad()
        # every node's input projection at once, split by level (one cat backward, not a
        # zero-filled gradient per slice)
        zx = net.w(net.embed(tokens)).split(sizes)
        zero = torch.zeros(sizes[0], UNITS)
        h, c = net.cell(zx[0], zero, zero)
        hs, cs = [h], [c]
        for level, (a, b, left, right) in enumerate(levels, 1):
            h_all, c_all = torch.cat(hs), torch.cat(cs)
            z = zx[level] + net.u(torch.cat([h_all[left], h_all[right]], dim=1))
            h, c = net.cell(z, c_all[left], c_all[right])
            hs.append(h)
            cs.append(c)
        loss = loss_fn(net.out(torch.cat(hs)), labels)
        loss.backward()
        opt.step()
        return loss.item()

    return step


def tree_callables(threads, batches=None):
    """({name: one training step}, {name: why missing})."""
    batches = tree_data() if batches is None else batches
    fns, missing = {"cyneuron": cyneuron_step(batches, threads)}, {}
    try:
        import torch  # noqa: F401
    except ImportError:
        for name in IMPLEMENTATIONS[1:]:
            missing[name] = "torch not installed"
        return fns, missing
    fns["torch level-batched"] = torch_level_step(batches, threads)
    fns["torch per-node"] = torch_per_node_step(batches, threads)
    return fns, missing


def bench_tree(args, out):
    """Print the table of trees/s (train steps) and the ratios."""
    import cyneuron as cn

    from ._bench import _rate_table

    threads = args.threads or cn.get_num_threads()
    batches = tree_data()
    nodes = np.mean([int(d.n_nodes.sum()) for d, _ in batches])
    fns, missing = tree_callables(threads, batches)
    losses = {name: fn() for name, fn in fns.items()}
    title = (f"TreeLSTM (binary, units {UNITS}, embedding {EMBED}) training step, batch "
             f"{BATCH} trees of {LEAVES[0]}-{LEAVES[1]} leaves ({nodes:.0f} nodes per batch on "
             f"average), Adam, float32, {threads} thread(s) (trees/s)")
    saved = args.repeats
    try:
        args.repeats = max(3, min(args.repeats, 5))
        rate = _rate_table(title, fns, missing, BATCH, args, out, unit="trees/s",
                           names=IMPLEMENTATIONS)
    finally:
        args.repeats = saved
    out("  first-step loss (ln 5 = 1.609 expected): " + ", ".join(
        f"{k} {v:.4f}" for k, v in losses.items()))
    return rate
