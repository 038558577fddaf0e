"""A process-wide count of writes to model weights, for copies made from them.

predict's lean path keeps the large Dense kernels packed for the GEMM (packing them
again costs ~4% of a batch-256 layer); a packed copy is used only while this count is
the one read before it was packed. Every writer in cyneuron calls weights_written()
after writing: the optimizer step (apply_gradients, and every write under a model's
exclusive weights lock), Layer.set_weights, Model.set_weights / load_weights (through
that lock), RBF.adapt, the scikit-learn MLP's initialisation. One count for all models:
a write anywhere makes every packed copy pack again on its next use (cheap, and never
stale). A write into a weight array in place outside these paths (layer.kernel[...] = v
in user code) is not seen: such code must use set_weights, or call weights_written().
"""
import itertools

_counter = itertools.count(1)
_current = 0


def weights_written():
    """Note that some weights changed (call it after the write)."""
    global _current
    _current = next(_counter)     # itertools.count: atomic under the GIL


def weights_version():
    """The current count: equal to an earlier read only if no write was noted since."""
    return _current
