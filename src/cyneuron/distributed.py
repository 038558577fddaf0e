"""Data-parallel training over MPI (mpi4py), Horovod's model: every rank holds the whole
model and its own part of the data; each step, the ranks' gradients are averaged with
one all-reduce of the model's flat gradient buffer (in place), then every rank applies
the same fused optimizer update, so the weights stay identical on every rank.

    mpirun -n 4 python train.py          # train.py:
    import cyneuron as cn
    x, y = cn.distributed.shard(x, y)    # this rank's part: samples rank, rank + size, ...
    model.fit(x, y, batch_size=32, distributed=True)   # 32 per rank, 4 x 32 per step
    if cn.distributed.rank() == 0:
        model.save("net.cyn")

The pieces `fit(..., distributed=True)` puts together, usable in custom loops:
init / rank / size, shard, broadcast_weights, DistributedOptimizer and
callbacks.MetricAverage. mpi4py is imported on first use only: training without
`distributed=True` costs nothing more.

Collectives wait with a timeout (`init(timeout=...)`, env CYNEURON_MPI_TIMEOUT,
default 300 s) and raise TimeoutError instead of hanging, and `init()` makes an
uncaught exception on any rank print its traceback and abort the whole job.
"""
import os
import sys
import time
import traceback

import numpy as np

from . import optimizers as _optimizers

DEFAULT_TIMEOUT = 300.0
# set by MPI launchers (MPICH / Intel MPI hydra, Open MPI, PMIx, Slurm's srun)
_LAUNCHER_VARS = ("PMI_RANK", "PMI_SIZE", "PMI_FD", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK",
                  "MPI_LOCALNRANKS", "SLURM_STEP_ID")

_state = {"comm": None, "timeout": DEFAULT_TIMEOUT, "hook": None}


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError:
        raise ImportError("cyneuron.distributed needs mpi4py and an MPI library: "
                          "pip install 'cyneuron[mpi]' (mpi4py and the mpich wheel), or "
                          "pip install mpi4py built against your system MPI") from None
    return MPI


def launched():
    """True when this process was started by an MPI launcher (mpirun, mpiexec, srun)."""
    return any(v in os.environ for v in _LAUNCHER_VARS)


def init(timeout=None, abort_on_error=True, comm=None):
    """Start MPI (once; later calls only change the settings); returns (rank, size).

    timeout: seconds a collective call waits for the other ranks before raising
    TimeoutError (None: env CYNEURON_MPI_TIMEOUT, else 300). abort_on_error: an uncaught
    exception on any rank prints its traceback and calls MPI Abort, which ends every
    rank, instead of leaving the others waiting. comm: an mpi4py communicator to train
    over (default COMM_WORLD)."""
    MPI = _mpi()
    if timeout is None:
        env = os.environ.get("CYNEURON_MPI_TIMEOUT")
        timeout = float(env) if env else _state["timeout"]
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    _state["timeout"] = float(timeout)
    if comm is not None:
        if not isinstance(comm, MPI.Comm):
            raise TypeError(f"comm must be an mpi4py communicator, got {type(comm).__name__}")
        _state["comm"] = comm
    elif _state["comm"] is None:
        _state["comm"] = MPI.COMM_WORLD
    if abort_on_error and _state["hook"] is None:
        _state["hook"] = sys.excepthook
        sys.excepthook = _abort_hook
    return rank(), size()


_ABORT_PAUSE = 1.0    # seconds between writing the error and MPI Abort


def _abort_hook(kind, value, tb):
    """Print the error (with the rank) and end the whole job."""
    comm = _state["comm"]
    text = "".join(traceback.format_exception(kind, value, tb))
    sys.stderr.write(f"[cyneuron.distributed rank {comm.Get_rank()}/{comm.Get_size()}] "
                     f"uncaught exception, aborting the job:\n{text}")
    sys.stderr.flush()
    sys.stdout.flush()
    if comm.Get_size() > 1:
        # Abort kills every rank at once; the launcher may not yet have forwarded what
        # this rank just wrote (MPICH's hydra then prints nothing). A short pause lets
        # the message reach the user first.
        time.sleep(_ABORT_PAUSE)
        comm.Abort(1)
    _state["hook"](kind, value, tb)


def _comm():
    if _state["comm"] is None:
        init()
    return _state["comm"]


def rank():
    """This process's rank (0 .. size() - 1)."""
    return _comm().Get_rank()


def size():
    """The number of ranks."""
    return _comm().Get_size()


# -- collectives with a timeout ----------------------------------------------------------------
def _wait(request, what):
    """Wait for a non-blocking request; TimeoutError after the timeout."""
    if request.Test():
        return
    timeout = _state["timeout"]
    start = time.monotonic()
    spin_until = start + 0.01
    while not request.Test():
        now = time.monotonic()
        if now > spin_until:          # a slow peer: stop spinning, let other work run
            if now - start > timeout:
                raise TimeoutError(
                    f"cyneuron.distributed rank {rank()}: {what} waited more than "
                    f"{timeout:g} s for the other ranks (a rank failed, is stuck, or left "
                    f"the collective calls out of step); raise the limit with "
                    f"init(timeout=...) or CYNEURON_MPI_TIMEOUT")
            time.sleep(1e-4)


def allreduce_(buffer, what="an all-reduce"):
    """Sum a contiguous numpy array over all ranks, in place (MPI.IN_PLACE)."""
    MPI = _mpi()
    _wait(_comm().Iallreduce(MPI.IN_PLACE, buffer, op=MPI.SUM), what)
    return buffer


def broadcast_(buffer, root=0, what="a broadcast"):
    """Root's contiguous numpy array into `buffer` on every rank, in place."""
    _wait(_comm().Ibcast(buffer, root=root), what)
    return buffer


def allgather(values, what="an all-gather"):
    """A (size, len(values)) float64 array: each rank's values, by rank."""
    mine = np.ascontiguousarray(values, np.float64).reshape(-1)
    out = np.empty((size(), mine.size), np.float64)
    _wait(_comm().Iallgather(mine, out), what)
    return out


def _check_same(values, what, show=None):
    """ValueError on every rank when the ranks' values differ; show(row) words a row."""
    table = allgather(values, f"the check of {what}")
    if not (table == table[0]).all():
        show = show or (lambda row: str(list(map(int, row))))
        per_rank = ", ".join(f"rank {r}: {show(row)}" for r, row in enumerate(table))
        raise ValueError(f"the ranks hold different models: {what} differ ({per_rank}); "
                         f"build the same model on every rank")


def _signature(model):
    """Parameter count, dtype and weight shapes of a built model, as numbers."""
    shapes = [d for w in model.get_weights() for d in (w.ndim,) + w.shape]
    return [model._params.size, np.dtype(model.dtype).itemsize, len(shapes), sum(shapes),
            sum(i * d for i, d in enumerate(shapes))]


# -- data -------------------------------------------------------------------------------------
def shard(x, y=None, *more, rank=None, size=None):
    """This rank's part of the samples: rows rank, rank + size, rank + 2 size, ...

    Each of x, y (and further arrays; a list or dict of numpy arrays, for several
    inputs or outputs, too; other sequences are read as one array) is split alike. The
    shards differ in size by at most one sample (the last ranks get the smaller ones).
    Strided, so that with shuffle=False step s of every rank (batch_size B) together
    covers samples s * size * B .. (s + 1) * size * B - 1: the batch one process with
    batch_size size * B would take."""
    r = globals()["rank"]() if rank is None else rank
    s = globals()["size"]() if size is None else size
    if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1:
        raise ValueError(f"size must be a positive integer, got {s!r}")
    if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or not 0 <= r < s:
        raise ValueError(f"rank must be an integer in [0, {s}), got {r!r}")

    def part(a, name):
        if a is None:
            return None
        if isinstance(a, dict):
            return {k: part(v, f"{name}[{k!r}]") for k, v in a.items()}
        if isinstance(a, (list, tuple)) and a and all(isinstance(v, np.ndarray) for v in a):
            return [part(v, f"{name}[{i}]") for i, v in enumerate(a)]    # several inputs
        a = np.asarray(a)
        if a.ndim == 0:
            raise ValueError(f"{name} must be an array of samples, got a scalar")
        return np.ascontiguousarray(a[r::s])

    arrays = [part(a, n) for a, n in zip((x, y) + more, ["x", "y"] +
                                          [f"arrays[{i}]" for i in range(len(more))])]
    return arrays[0] if y is None and not more else tuple(arrays)


# -- weights ----------------------------------------------------------------------------------
def broadcast_weights(model, root=0):
    """Copy root's weights (trainable and non-trainable) to every rank, so that ranks
    seeded differently start alike. Checks first that every rank holds the same model."""
    if not getattr(model, "built", False):
        raise RuntimeError("broadcast_weights: the model is not built yet: call "
                           "model.build(input_shape) first")
    n = size()
    if not isinstance(root, (int, np.integer)) or isinstance(root, bool) or not 0 <= root < n:
        raise ValueError(f"root must be a rank in [0, {n}), got {root!r}")
    _check_same(_signature(model), "parameter counts and weight shapes",
                lambda row: f"{int(row[0])} trainable parameters of {8 * int(row[1])} bits, "
                            f"{int(row[2])} shape numbers summing to {int(row[3])}")
    if n == 1:
        return model
    model._ensure_bound()
    model._begin_write("broadcast_weights")
    try:
        broadcast_(model._params, root, "the broadcast of the weights")
        for layer in model._all_layers():
            for w, trainable in zip(layer._weights, layer._trainable):
                if not trainable and w.size:
                    buf = np.ascontiguousarray(w)
                    broadcast_(buf, root, "the broadcast of the non-trainable weights")
                    if buf is not w:
                        w[...] = buf
    finally:
        model._end_write()
    return model


# -- the optimizer ----------------------------------------------------------------------------
class DistributedOptimizer(_optimizers.Optimizer):
    """Wraps an optimizer: before each update, the flat gradient buffer is averaged over
    the ranks with one in-place all-reduce, then the wrapped optimizer's fused update
    runs on it (clipnorm then sees the global gradient). Reads and sets of its
    attributes (learning_rate, iterations, slots, ...) go to the wrapped optimizer, and
    saving a model stores the wrapped one.

    grad_weight: what this rank's gradient is multiplied by before the sum; None (the
    default) is 1 / size, the plain mean. fit(distributed=True) sets it each step to
    this rank's share of the step's samples, so that uneven batches weigh as one batch."""

    def __init__(self, optimizer):
        inner = _optimizers.get(optimizer)
        if isinstance(inner, DistributedOptimizer):
            raise ValueError("optimizer is already a DistributedOptimizer")
        self.__dict__["optimizer"] = inner
        self.__dict__["grad_weight"] = None
        self.__dict__["_checked"] = None

    def __getattr__(self, name):
        inner = self.__dict__.get("optimizer")
        if inner is None:
            raise AttributeError(name)
        return getattr(inner, name)

    def __setattr__(self, name, value):
        if name in self.__dict__ or name in ("grad_weight",):
            self.__dict__[name] = value
        else:
            setattr(self.optimizer, name, value)

    @property
    def name(self):
        return self.optimizer.name

    @property
    def _slot_names(self):
        return self.optimizer._slot_names

    @property
    def learning_rate(self):
        return self.optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, value):
        self.optimizer.learning_rate = value

    def reduce_gradients(self, grads):
        """Average `grads` (a flat array) over the ranks in place."""
        n = size()
        if self._checked != (grads.size, grads.dtype):
            _check_same([grads.size, grads.dtype.itemsize],
                        "parameter counts (the flat gradient buffers)",
                        lambda row: f"{int(row[0])} of {8 * int(row[1])} bits")
            self.__dict__["_checked"] = (grads.size, grads.dtype)
        weight = self.grad_weight
        if weight is None:
            weight = 1.0 / n
        if n == 1 and weight == 1.0:
            return grads
        if weight != 1.0:
            grads *= weight
        if n > 1:
            allreduce_(grads, "the all-reduce of the gradients")
        return grads

    def apply_gradients(self, params, grads=None):
        if grads is None:            # apply_gradients(model): the model calls back below
            return super().apply_gradients(params)
        _optimizers._check_flat(params, grads)
        self.reduce_gradients(grads)
        self.optimizer.apply_gradients(params, grads)

    def _apply_segments(self, params, grads, segments):
        self.reduce_gradients(grads)
        self.optimizer._apply_segments(params, grads, segments)

    def get_config(self):
        return self.optimizer.get_config()

    def __repr__(self):
        return f"DistributedOptimizer({self.optimizer!r})"


# -- fit -----------------------------------------------------------------------------------------
class _FitPlan:
    """What Model._fit asks of a distributed run: the global step count, this rank's
    share of each step, a step with no local samples, and the weights at the start."""

    def __init__(self, optimizer, sum_losses):
        self.optimizer = optimizer
        self.sum_losses = sum_losses

    def begin(self, model, n, batch_size):
        """Start of training (the model is built): broadcast root's weights; returns the
        number of steps per epoch, that of the rank with the most samples."""
        broadcast_weights(model, 0)
        self.counts = allgather([n], "the exchange of sample counts")[:, 0].astype(np.int64)
        self.batch_size = batch_size
        empty = [r for r, c in enumerate(self.counts) if c == 0]
        if empty:
            raise ValueError(f"fit(distributed=True): ranks {empty} have no training samples "
                             f"(samples per rank: {self.counts.tolist()}); give every rank "
                             f"some, or run fewer ranks")
        return int(-(-self.counts.max() // batch_size))

    def step(self, step, m):
        """Before step `step` with m local samples: this rank's gradient weight."""
        if self.sum_losses:
            self.optimizer.grad_weight = 1.0
            return
        b = self.batch_size
        total = int(np.clip(self.counts - step * b, 0, b).sum())
        self.optimizer.grad_weight = m / total

    def empty_step(self, model):
        """A step with no local samples: a zero gradient joins the all-reduce."""
        model._ensure_bound()
        model._grads[:] = 0
        model._wlock.acquire_write()
        try:
            model._optimizer_update()
        finally:
            model._wlock.release_write()


def fit(model, x, y=None, batch_size=32, verbose=1, callbacks=None, **kwargs):
    """model.fit on this rank's samples (x, y), trained together with the other ranks:
    root's weights broadcast at the start, gradients averaged each step (weighted by
    each rank's samples in the step), epoch logs averaged (callbacks.MetricAverage),
    progress printed and ModelCheckpoint / CSVLogger run on rank 0 only.

    batch_size is per rank: a step trains on up to size * batch_size samples. Every
    rank runs the same number of steps (that of the largest shard); a rank whose
    samples are used up contributes a zero gradient. Other arguments as Model.fit."""
    from . import callbacks as _callbacks

    if not launched() and _mpi().COMM_WORLD.Get_size() == 1:
        raise RuntimeError("fit(distributed=True) needs the script started by an MPI "
                           "launcher, e.g. `mpirun -n 2 python train.py` (no MPI launcher "
                           "environment found in this process)")
    init()
    model._require_compiled()
    root = rank() == 0
    cbs = callbacks
    if cbs is None:
        cbs = []
    elif isinstance(cbs, _callbacks.Callback):
        cbs = [cbs]
    cbs = list(cbs)
    for cb in cbs:
        if isinstance(cb, _callbacks.BackupAndRestore):
            raise ValueError("fit(distributed=True) does not support BackupAndRestore (every "
                             "rank would write the same backup); save on rank 0 with "
                             "ModelCheckpoint and resume with broadcast_weights")
    if not root:
        cbs = [cb for cb in cbs if not isinstance(cb, (_callbacks.ModelCheckpoint,
                                                       _callbacks.CSVLogger))]
        verbose = 0
    if not any(isinstance(cb, _callbacks.MetricAverage) for cb in cbs):
        cbs.insert(0, _callbacks.MetricAverage())
    original = model.optimizer
    wrapped = original if isinstance(original, DistributedOptimizer) \
        else DistributedOptimizer(original)
    losses = [loss for loss in model._losses if loss is not None]
    sum_losses = all(getattr(loss, "reduction", None) == "sum" for loss in losses)
    model.optimizer = wrapped
    model._distributed = _FitPlan(wrapped, sum_losses)
    saved_weight = wrapped.grad_weight
    try:
        return model.fit(x, y, batch_size=batch_size, verbose=verbose, callbacks=cbs,
                         **kwargs)
    finally:
        model.__dict__.pop("_distributed", None)
        wrapped.grad_weight = saved_weight
        model.optimizer = original


def average_logs(logs):
    """Replace each number in `logs` by its mean over the ranks (same keys on every rank)."""
    keys = sorted(k for k, v in logs.items() if isinstance(v, (int, float, np.number)))
    _check_names(keys)
    if not keys or size() == 1:
        return logs
    values = np.array([float(logs[k]) for k in keys], np.float64)
    allreduce_(values, "the averaging of the epoch logs")
    values /= size()
    for k, v in zip(keys, values):
        logs[k] = float(v)
    return logs


def _check_names(keys):
    digest = [len(keys), sum(sum(map(ord, k)) * (i + 1) for i, k in enumerate(keys))]
    table = allgather(digest, "the check of the log names")
    if not (table == table[0]).all():
        raise ValueError(f"MetricAverage: the ranks log different values (rank {rank()} logs "
                         f"{keys}); compile the same metrics on every rank")
