"""Training progress output, the History that `fit` returns, and callbacks (Keras hooks).

Callbacks (Keras names and semantics): EarlyStopping, ModelCheckpoint, BackupAndRestore,
LearningRateScheduler, ReduceLROnPlateau, CSVLogger, TerminateOnNaN, LambdaCallback.
MetricAverage averages epoch logs over MPI ranks (cyneuron.distributed).
Progress: verbose=1 draws a per-batch bar (tqdm where installed, a plain one otherwise),
verbose=2 one line per epoch.

Where things are: base.py (Callback, History, CallbackList), progress.py (the bars),
monitor.py (callbacks steering training from its logs), files.py (callbacks writing
files). make_progress stays here: it picks the bar through this module's _load_tqdm.
"""
from .base import Callback, CallbackList, History  # noqa: F401
from .files import BackupAndRestore, CSVLogger, ModelCheckpoint  # noqa: F401
from .monitor import (EarlyStopping, LambdaCallback, LearningRateScheduler,  # noqa: F401
                      MetricAverage, ReduceLROnPlateau, TerminateOnNaN)
from .progress import ProgressPrinter, TqdmProgress, _format_logs  # noqa: F401


def _load_tqdm():
    """tqdm's bar class, or None when tqdm is not installed."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm


def make_progress(verbose, epochs, steps, stream=None):
    """The progress display for fit: a tqdm bar for verbose=1 where tqdm is installed,
    else the plain ProgressPrinter (which also does verbose=2 and silence)."""
    tqdm = _load_tqdm() if verbose == 1 else None
    if tqdm is not None:
        return TqdmProgress(tqdm, epochs, steps, stream)
    return ProgressPrinter(verbose, epochs, steps, stream)
