"""Threads and locks of a model: the readers-writer lock on its weights, the claim of
the one training thread, the pool of inference replicas, and Ctrl-C deferred to the end
of a training step.

predict / evaluate / model(x) run on the model itself when its per-call state is free
(one uncontended lock: the single-threaded path), else on an idle replica from a small
pool (made on first need, kept for reuse). Weights are guarded by a readers-writer lock:
passes on replicas read under it, every writer (the optimizer step, set_weights,
apply_gradients, a training forward pass that moves BatchNormalization statistics) holds
it alone and also holds the model's own state, so a pass on the model itself needs no
read lock. One thread trains at a time: fit / train_on_batch from a second thread raise
RuntimeError.
"""
import copy
import os
import signal
import threading

from .. import _config

# Idle inference replicas a model keeps for concurrent callers (more are made when more
# threads run at once, and dropped after use).
MAX_IDLE_REPLICAS = max(8, os.cpu_count() or 1)
_get_ident = threading.get_ident
_THREAD_STATE = ("_own", "_train_guard", "_wlock", "_pool", "_pool_lock", "_build_lock")


class _WeightsLock:
    """Readers-writer lock on a model's weights. Readers (inference on replicas, saving,
    get_weights) share it; a writer (optimizer step, set_weights) holds it alone. Writers
    go first: once one waits, new readers wait, so a stream of predictions cannot starve
    the trainer. Both kinds re-enter in the thread holding them (a writer may also read).
    Uncontended, a pair of calls costs about a microsecond (no notify without sleepers)."""

    __slots__ = ("_cond", "_readers", "_writer", "_depth", "_waiting", "_sleeping")

    def __init__(self):
        self._cond = threading.Condition(threading.Lock())
        self._readers = {}        # thread id -> depth
        self._writer = None
        self._depth = 0
        self._waiting = 0         # writers waiting
        self._sleeping = 0        # threads in cond.wait()

    def _wait(self):
        self._sleeping += 1
        try:
            self._cond.wait()
        finally:
            self._sleeping -= 1

    def acquire_read(self):
        me = _get_ident()
        cond = self._cond
        cond.acquire()
        try:
            if self._writer == me:
                self._depth += 1
                return
            depth = self._readers.get(me)
            if depth is None:
                while self._writer is not None or self._waiting:
                    self._wait()
                depth = 0
            self._readers[me] = depth + 1
        finally:
            cond.release()

    def release_read(self):
        me = _get_ident()
        cond = self._cond
        cond.acquire()
        try:
            if self._writer == me:
                self._depth -= 1
                return
            depth = self._readers[me] - 1
            if depth:
                self._readers[me] = depth
            else:
                del self._readers[me]
                if not self._readers and self._sleeping:
                    cond.notify_all()
        finally:
            cond.release()

    def acquire_write(self):
        me = _get_ident()
        cond = self._cond
        cond.acquire()
        try:
            if self._writer == me:
                self._depth += 1
                return
            if me in self._readers:
                raise RuntimeError("a thread reading a model's weights cannot change them "
                                   "(set_weights / a training step inside predict or save?)")
            if self._writer is not None or self._readers:
                self._waiting += 1
                try:
                    while self._writer is not None or self._readers:
                        self._wait()
                except BaseException:        # interrupted: readers held back may go on
                    self._waiting -= 1
                    if self._sleeping:
                        cond.notify_all()
                    raise
                self._waiting -= 1
            self._writer = me
            self._depth = 1
        finally:
            cond.release()

    def release_write(self):
        cond = self._cond
        cond.acquire()
        try:
            self._depth -= 1
            if self._depth == 0:
                self._writer = None
                if self._sleeping:
                    cond.notify_all()
        finally:
            cond.release()


class _DeferredInterrupt:
    """Ctrl-C (SIGINT) during fit: noted, and raised as KeyboardInterrupt at the end of
    the current step, so no step is left half done. A second Ctrl-C raises at once.
    Only in the main thread, and only over Python's default handler."""

    __slots__ = ("hit", "_old")

    def __init__(self):
        self.hit = False
        self._old = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            try:
                self._old = signal.signal(signal.SIGINT, self._handler)
            except (ValueError, OSError):      # an interpreter without signals
                self._old = None
        return self

    def _handler(self, signum, frame):
        if self.hit:
            raise KeyboardInterrupt
        self.hit = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
            self._old = None
        return False



class ThreadsMixin:
    """Model methods that claim the model for a pass, a training thread or a writer."""

    def _init_threading(self):
        """Locks and the replica pool (see the module docstring, "Threads")."""
        self._own = threading.RLock()          # the model's own per-call state
        self._train_guard = threading.RLock()  # held by the one thread training
        self._wlock = _WeightsLock()           # the weights
        self._build_lock = threading.RLock()
        self._pool = []
        self._pool_lock = threading.Lock()
        self._trainer = None                   # the thread in fit / train_on_batch
        self._train_depth = 0
        self._awaiting_backward = False        # model(x, training=True) state kept for backward

    # -- threads ---------------------------------------------------------------------------------
    def _take_runner(self):
        """The model to run an inference pass on: the model itself when its per-call state
        is free (single-threaded use costs one uncontended lock), else an idle replica
        (the same weights, read under the weights' shared lock). Give it back with
        _give_back."""
        _config.apply_num_threads()
        if self._own.acquire(False):
            if not self._awaiting_backward:
                return self
            self._own.release()       # model(x, training=True) state waits for backward
        with self._pool_lock:
            r = self._pool.pop() if self._pool else None
        if r is None or r._pool_stamp != self._compile_serial:
            r = self._replica()
            r._losses = copy.deepcopy(self._losses)         # they own buffers
            r._out_metrics = copy.deepcopy(self._out_metrics)
            r._pool_stamp = self._compile_serial
        self._wlock.acquire_read()
        return r

    def _give_back(self, runner):
        if runner is self:
            self._own.release()
            return
        self._wlock.release_read()
        with self._pool_lock:
            if len(self._pool) < MAX_IDLE_REPLICAS:
                self._pool.append(runner)

    def _check_not_training_elsewhere(self, what):
        trainer = self._trainer
        if trainer is not None and trainer != threading.get_ident():
            raise RuntimeError(f"{what}: model {self.name!r} is being trained (fit / "
                               f"train_on_batch) in another thread; call it from that thread "
                               f"(e.g. in a callback) or after training")

    def _begin_training(self, what):
        """Claim the model for one training thread (a second one gets a RuntimeError)
        and its own per-call state; undo with _end_training."""
        _config.apply_num_threads()
        if not self._train_guard.acquire(False):
            raise RuntimeError(f"{what}: model {self.name!r} is already being trained in "
                               f"another thread; a model trains in one thread at a time "
                               f"(predict / evaluate / model(x) may run alongside)")
        try:
            self._own.acquire()
        except BaseException:
            self._train_guard.release()
            raise
        if self._train_depth == 0:
            self._trainer = threading.get_ident()
            self._awaiting_backward = False
        self._train_depth += 1

    def _end_training(self):
        self._train_depth -= 1
        if self._train_depth == 0:
            self._trainer = None
        self._own.release()
        self._train_guard.release()

    def _begin_write(self, what):
        """Exclusive access to the weights (and the model's own state) for a writer
        outside the optimizer step of fit; undo with _end_write."""
        self._check_not_training_elsewhere(what)
        self._own.acquire()
        try:
            self._wlock.acquire_write()
        except BaseException:
            self._own.release()
            raise

    def _end_write(self):
        self._wlock.release_write()
        self._own.release()
