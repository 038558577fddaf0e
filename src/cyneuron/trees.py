"""Trees as arrays: parse nested tuples or Penn-Treebank strings into padded arrays that
the tree layers (layers.TreeRNN, layers.TreeLSTM) and a model's fit / predict take.

    data = cn.trees.from_ptb(["(3 (2 good) (3 movie))", "(1 (1 bad) (2 (2 the) (2 plot)))"])
    data.tokens      # (trees, max_nodes) int64 token ids, 0 = no token / padding
    data.children    # (trees, max_nodes, max_children) int64 child indices, -1 = none
    data.labels      # (trees, max_nodes) int64 node labels (PTB), 0 at padding
    model.fit([data.tokens, data.children], data.labels, ...)

Each tree is stored in pre-order: node 0 is the root, a node's children come after it,
and the rows after the tree's last node are padding (all -1 children, token 0). So the
arrays are rectangular and batch like any other input (fit shuffles and slices trees);
the layers order each batch's nodes by level themselves (`schedule`, the kernel's
batched level order: all nodes of one height across the batch side by side).
"""
import numpy as np

from ._kernels import tree as _k

__all__ = ["TreeBatch", "from_nested", "from_ptb", "schedule"]


class TreeBatch:
    """Trees as padded arrays (see the module docstring).

    tokens (n, max_nodes), children (n, max_nodes, max_children), labels (n, max_nodes)
    or None, parent (n, max_nodes) (-1 at the root and padding), level (n, max_nodes)
    the height (leaves 0; -1 at padding), mask (n, max_nodes) True at real nodes,
    n_nodes (n,), vocab {token: id} (ids from 1; 0 means no token), label_vocab
    {label: id} for non-integer PTB labels, else None.
    `inputs` is [tokens, children], what a tree model's fit / predict take; indexing
    (batch[idx]) selects trees.
    """

    def __init__(self, tokens, children, labels=None, vocab=None, label_vocab=None):
        self.tokens = np.asarray(tokens, np.int64)
        self.children = np.asarray(children, np.int64)
        if self.tokens.ndim != 2 or self.children.ndim != 3 \
                or self.children.shape[:2] != self.tokens.shape:
            raise ValueError(f"tokens must be (trees, max_nodes) and children (trees, max_nodes, "
                             f"max_children); got {self.tokens.shape} and {self.children.shape}")
        self.labels = None if labels is None else np.asarray(labels, np.int64)
        self.vocab = vocab
        self.label_vocab = label_vocab
        sched = schedule(self.children)
        n, m = self.tokens.shape
        pos = sched["pos"].reshape(n, m)
        self.mask = pos >= 0
        self.n_nodes = self.mask.sum(axis=1)
        self.level = np.full((n, m), -1, np.int64)
        starts = sched["level_start"]
        heights = np.repeat(np.arange(len(starts) - 1), np.diff(starts))
        self.level.reshape(-1)[sched["src"]] = heights
        self.parent = np.full((n, m), -1, np.int64)
        b, j, s = np.nonzero(self.children >= 0)
        real = self.mask[b, j]
        self.parent[b[real], self.children[b[real], j[real], s[real]]] = j[real]

    @property
    def inputs(self):
        """[tokens, children]: the inputs of a tree model."""
        return [self.tokens, self.children]

    @property
    def max_nodes(self):
        return self.tokens.shape[1]

    @property
    def max_children(self):
        return self.children.shape[2]

    @property
    def root_labels(self):
        """(n,) the label of each root (None without labels)."""
        return None if self.labels is None else self.labels[:, 0].copy()

    def __len__(self):
        return len(self.tokens)

    def __getitem__(self, idx):
        idx = np.arange(len(self))[idx]
        if np.ndim(idx) == 0:
            idx = np.array([idx])
        return TreeBatch(self.tokens[idx], self.children[idx],
                         None if self.labels is None else self.labels[idx],
                         self.vocab, self.label_vocab)

    def __repr__(self):
        return (f"<TreeBatch trees={len(self)} max_nodes={self.max_nodes} "
                f"max_children={self.max_children} nodes={int(self.n_nodes.sum())}>")


def schedule(children, max_children=None):
    """The batched level order of `children` (trees, max_nodes, K): a dict of int64 arrays
    src, level_start, edge_start, kids, pos, roots (see cyneuron._kernels.tree.schedule).
    ValueError for an index that is not a valid child, a node with two parents, or (with
    max_children) a node with more children."""
    c = np.asarray(children)
    if c.ndim != 3 or c.shape[0] == 0 or c.shape[1] == 0 or c.shape[2] == 0:
        raise ValueError(f"children must be a non-empty (trees, max_nodes, max_children) array; "
                         f"got shape {c.shape}")
    c = _as_index_array(c, "children")
    return _k.schedule(c, c.shape[2] if max_children is None else int(max_children))


def _as_index_array(a, name):
    """a as C-contiguous int64, refusing non-integers (floats holding integers are fine:
    a model casts its inputs to its float dtype)."""
    a = np.asarray(a)
    if a.dtype.kind == "f":
        if not np.isfinite(a).all() or (a != np.floor(a)).any():
            raise ValueError(f"{name} must hold integer indices; got non-integer values")
    elif a.dtype.kind not in "biu":
        raise TypeError(f"{name} must hold integers; got dtype {a.dtype.name!r}")
    return np.ascontiguousarray(a, dtype=np.int64)


# -- nested tuples -----------------------------------------------------------------------------
def _is_seq(v):
    return isinstance(v, (list, tuple))


def from_nested(trees, vocab=None, node_tokens=True, max_nodes=None, max_children=None):
    """TreeBatch from nested Python trees.

    node_tokens=True: an internal node is (token, children) with children a list or
    tuple, e.g. ("+", (1, ("*", (2, 3)))); False: an internal node is the tuple of its
    children, e.g. (("the", "cat"), "sat"), and has no token (id 0). Anything that is
    not a list or tuple is a leaf token. vocab: {token: id >= 1}; None builds one from
    the tokens (sorted by repr). max_nodes / max_children: pad to these sizes (ValueError
    if a tree needs more); by default the largest in `trees`.
    """
    if not _is_seq(trees) or len(trees) == 0:
        raise ValueError("trees must be a non-empty list of trees")
    flat = []     # per tree: pre-order list of (token or None, [child indices])
    for t, tree in enumerate(trees):
        nodes, stack = [], [(tree, -1)]
        while stack:              # iterative: deep chains need no recursion
            node, parent = stack.pop()
            index = len(nodes)
            if parent >= 0:
                nodes[parent][1].append(index)
            if not _is_seq(node):
                nodes.append((node, []))
                continue
            if node_tokens:
                if len(node) != 2 or not _is_seq(node[1]) or _is_seq(node[0]):
                    raise ValueError(f"trees[{t}]: with node_tokens=True an internal node is "
                                     f"(token, children); got {node!r}")
                token, kids = node
            else:
                token, kids = None, node
            if len(kids) == 0:
                raise ValueError(f"trees[{t}]: a node with an empty list of children: {node!r}")
            nodes.append((token, []))
            stack.extend((k, index) for k in reversed(kids))
        flat.append(nodes)
    if vocab is None:
        tokens = {tok for nodes in flat for tok, _ in nodes if tok is not None}
        vocab = {tok: i + 1 for i, tok in enumerate(sorted(tokens, key=repr))}
    return _to_batch(flat, vocab, None, None, max_nodes, max_children, "trees")


def _to_batch(flat, vocab, labels, label_vocab, max_nodes, max_children, what):
    need_nodes = max(len(nodes) for nodes in flat)
    need_kids = max(max((len(k) for _, k in nodes), default=0) for nodes in flat)
    m = need_nodes if max_nodes is None else int(max_nodes)
    k = max(1, need_kids) if max_children is None else int(max_children)
    if m < need_nodes:
        raise ValueError(f"max_nodes={m} is too small: a tree of {what} has {need_nodes} nodes")
    if k < need_kids:
        raise ValueError(f"max_children={k} is too small: a node of {what} has {need_kids} "
                         f"children")
    n = len(flat)
    tokens = np.zeros((n, m), np.int64)
    children = np.full((n, m, k), -1, np.int64)
    for t, nodes in enumerate(flat):
        for j, (tok, kids) in enumerate(nodes):
            if tok is not None:
                try:
                    tokens[t, j] = vocab[tok]
                except KeyError:
                    raise ValueError(f"{what}[{t}]: token {tok!r} is not in vocab") from None
                except TypeError:
                    raise ValueError(f"{what}[{t}]: token {tok!r} cannot be a vocab key") \
                        from None
            children[t, j, :len(kids)] = kids
    lab = None
    if labels is not None:
        lab = np.zeros((n, m), np.int64)
        for t, row in enumerate(labels):
            lab[t, :len(row)] = row
    return TreeBatch(tokens, children, lab, vocab, label_vocab)


# -- Penn-Treebank strings ---------------------------------------------------------------------
def _parse_ptb(s, t):
    """[(word or None, [children], label)] of one bracketed string, pre-order."""
    nodes, stack, i, n = [], [], 0, len(s)

    def fail(msg, at):
        raise ValueError(f"strings[{t}]: malformed bracketed tree at character {at}: {msg} "
                         f"(near {s[max(0, at - 10):at + 10]!r})")

    def token(at):
        j = at
        while j < n and not s[j].isspace() and s[j] not in "()":
            j += 1
        return s[at:j], j

    while i < n:
        ch = s[i]
        if ch.isspace():
            i += 1
        elif ch == "(":
            if nodes and not stack:
                fail("a second tree after the root was closed", i)
            i += 1
            while i < n and s[i].isspace():
                i += 1
            label, i = token(i)
            if not label:
                fail("expected a label after '('", i)
            index = len(nodes)
            nodes.append([None, [], label])
            if stack:
                parent = nodes[stack[-1]]
                if parent[0] is not None:
                    fail("a node with a word cannot also have subtrees", i)
                parent[1].append(index)
            stack.append(index)
        elif ch == ")":
            if not stack:
                fail("')' without a matching '('", i)
            node = nodes[stack.pop()]
            if node[0] is None and not node[1]:
                fail("a node with neither a word nor subtrees", i)
            i += 1
        else:
            if not stack:
                fail("text outside the brackets", i)
            word, i = token(i)
            node = nodes[stack[-1]]
            if node[0] is not None or node[1]:
                fail(f"unexpected word {word!r} (a leaf holds one word, a node either a word "
                     f"or subtrees)", i - len(word))
            node[0] = word
    if stack:
        fail("missing ')'", n)
    if not nodes:
        fail("no tree", 0)
    return nodes


def from_ptb(strings, vocab=None, max_nodes=None, max_children=None):
    """TreeBatch from Penn-Treebank bracketed strings such as "(3 (2 good) (3 movie))":
    every node has a label; leaves hold one word (their token), internal nodes none.
    Integer labels (Stanford Sentiment Treebank) are kept as numbers, others are mapped
    through label_vocab (sorted). vocab, max_nodes, max_children as in from_nested.
    A malformed string raises ValueError naming the string and the character position."""
    if isinstance(strings, str):
        strings = [strings]
    if not _is_seq(strings) or len(strings) == 0:
        raise ValueError("strings must be a non-empty list of bracketed strings")
    parsed = []
    for t, s in enumerate(strings):
        if not isinstance(s, str):
            raise TypeError(f"strings[{t}] must be a str; got {type(s).__name__}")
        parsed.append(_parse_ptb(s, t))
    all_labels = {label for nodes in parsed for _, _, label in nodes}
    label_vocab = None
    if all(_is_int(x) for x in all_labels):
        to_id = int
    else:
        label_vocab = {x: i for i, x in enumerate(sorted(all_labels))}
        to_id = label_vocab.__getitem__
    if vocab is None:
        words = sorted({w for nodes in parsed for w, _, _ in nodes if w is not None})
        vocab = {w: i + 1 for i, w in enumerate(words)}
    flat = [[(w, kids) for w, kids, _ in nodes] for nodes in parsed]
    labels = [[to_id(label) for _, _, label in nodes] for nodes in parsed]
    return _to_batch(flat, vocab, labels, label_vocab, max_nodes, max_children, "strings")


def _is_int(text):
    try:
        int(text)
    except ValueError:
        return False
    return True

