"""One optimizer step of the scikit-learn estimators (_Trainer) and, with
distributed=True, its split between MPI ranks (_DistributedSteps)."""
import numbers

import numpy as np

from .._kernels.optim import add_l2_gradient


class _Trainer:
    """Mini-batch steps with scikit-learn's loss scaling and L2 penalty, on the model's
    flat buffers. Each epoch's shuffled copy of the data is made once (reorder), so a
    batch is a contiguous slice: no per-batch gather."""

    def __init__(self, estimator, model, X, targets, sample_weight):
        self.model = model
        self.alpha = float(estimator.alpha)
        # our loss times `scale` has scikit-learn's gradient; times `report` its value
        self.scale, self.report = estimator._loss_scaling()
        # flat views of the kernels and their gradients (parts of the model's buffers)
        self.kernels = [layer.kernel.reshape(-1) for layer in estimator._dense]
        self.kernel_grads = [layer._gradients[0].reshape(-1) for layer in estimator._dense]
        self.data = (X, targets, sample_weight)
        self.X, self.targets, self.weights = self.data
        self._shuffled = None
        self._constant = {}
        self.dist = None

    def reorder(self, order):
        """Use the samples in `order` for the next epoch."""
        if self._shuffled is None:
            self._shuffled = tuple(None if a is None else np.empty_like(a) for a in self.data)
        for source, out in zip(self.data, self._shuffled):
            if source is not None:
                # a permutation is always in range: mode="clip" skips numpy's
                # bounds-checked copy (2-3x faster than the default mode="raise")
                np.take(source, order, axis=0, out=out, mode="clip")
        self.X, self.targets, self.weights = self._shuffled

    def step(self, start, stop):
        """One optimizer step on samples start:stop; returns scikit-learn's batch loss."""
        model = self.model
        n = stop - start
        dist = self.dist
        if dist is not None:           # this rank's part of the batch
            lo, hi = dist.part(start, stop)
            xb, tb = self.X[lo:hi], self.targets[lo:hi]
        else:
            xb, tb = self.X[start:stop], self.targets[start:stop]
        if self.weights is None:
            weight_sum = float(n)
            wb = None
            if self.scale != 1.0:
                wb = self._constant.get(n)
                if wb is None:
                    wb = self._constant[n] = np.full(n, self.scale, model.dtype)
        else:
            wb = self.weights[start:stop]
            weight_sum = float(wb.sum())
            if weight_sum <= 0:
                raise ValueError("a batch has sample weights summing to 0; give more samples "
                                 "non-zero weight or use a larger batch_size")
            wb = (wb * (self.scale * n / weight_sum)).astype(model.dtype)
            if dist is not None:
                wb = wb[lo - start:hi - start]
        if dist is None:
            loss, _ = model._forward_backward(xb, tb, wb)
            loss = float(loss) * self.report
        else:
            loss = dist.forward_backward(model, xb, tb, wb, n) * self.report
        if self.alpha:
            factor = self.alpha / weight_sum
            penalty = sum(add_l2_gradient(k, g, factor)
                          for k, g in zip(self.kernels, self.kernel_grads))
            loss += 0.5 * self.alpha * penalty / weight_sum / (1 if dist is None else dist.size)
        model.optimizer.apply_gradients(model._params, model._grads)
        return loss


class _DistributedSteps:
    """distributed=True: the ranks agree on the random state and the start weights, each
    step's batch is split between them (rank r takes the r-th of `size` near-equal
    parts), and the gradients are summed with one all-reduce, each part weighted by its
    share of the batch, before the L2 term and the update. Losses are summed per epoch."""

    def __init__(self, estimator):
        from .. import distributed

        if not distributed.launched() and distributed._mpi().COMM_WORLD.Get_size() == 1:
            raise RuntimeError(f"{type(estimator).__name__}(distributed=True) needs the script "
                               f"started by an MPI launcher, e.g. `mpirun -n 2 python "
                               f"train.py` (no MPI launcher environment found)")
        distributed.init()
        self.rank, self.size = distributed.rank(), distributed.size()
        self.root = self.rank == 0
        if not isinstance(estimator.random_state, numbers.Integral):
            # None or a RandomState: the ranks would draw differently; take root's seed
            seed = np.array([estimator._random_state.randint(np.iinfo(np.int32).max)],
                            np.int64)
            distributed.broadcast_(seed, 0, "the broadcast of the random seed")
            estimator._random_state = np.random.RandomState(int(seed[0]))

    @property
    def d(self):
        from .. import distributed
        return distributed

    def start(self, model):
        self.d.broadcast_weights(model, 0)

    def part(self, start, stop):
        q, rem = divmod(stop - start, self.size)
        lo = start + self.rank * q + min(self.rank, rem)
        return lo, lo + q + (self.rank < rem)

    def forward_backward(self, model, xb, tb, wb, n):
        """This rank's part of the batch loss; the summed gradient in model._grads."""
        m = len(xb)
        if m:
            loss, _ = model._forward_backward(xb, tb, wb)
            if m != n:
                model._grads *= m / n
        else:
            loss = 0.0
            model._grads[:] = 0
        if self.size > 1:
            self.d.allreduce_(model._grads, "the all-reduce of the gradients")
        return float(loss) * m / n

    def total(self, value):
        buf = np.array([value], np.float64)
        return float(self.d.allreduce_(buf, "the sum of the epoch loss")[0])

    def mean(self, value):
        return self.total(value) / self.size
