"""Training progress output and the History that `fit` returns."""
import sys
import time


class History:
    """Per-epoch values of the loss and metrics: `history.history["loss"]` etc."""

    def __init__(self):
        self.history = {}
        self.epoch = []

    def record(self, epoch, logs):
        self.epoch.append(epoch)
        for key, value in logs.items():
            self.history.setdefault(key, []).append(value)

    def __repr__(self):
        return f"History(epochs={len(self.epoch)}, keys={list(self.history)})"


def _format_logs(logs):
    return " - ".join(f"{k}: {v:.4f}" for k, v in logs.items())


class ProgressPrinter:
    """verbose=1: a progress bar redrawn per batch (at most 10 times a second);
    verbose=2: one line per epoch; verbose=0: silent."""

    def __init__(self, verbose, epochs, steps, stream=None):
        self.verbose, self.epochs, self.steps = verbose, epochs, steps
        self.stream = stream or sys.stdout
        self._last_draw = 0.0

    def epoch_begin(self, epoch):
        self._epoch = epoch
        self._start = time.perf_counter()
        if self.verbose == 1:
            print(f"Epoch {epoch + 1}/{self.epochs}", file=self.stream)

    def batch_end(self, step, logs):
        if self.verbose != 1:
            return
        now = time.perf_counter()
        if step + 1 < self.steps and now - self._last_draw < 0.1:
            return
        self._last_draw = now
        done = int(30 * (step + 1) / self.steps)
        bar = "=" * max(done - 1, 0) + (">" if done < 30 else "=") + "." * (30 - done)
        elapsed = now - self._start
        eta = elapsed / (step + 1) * (self.steps - step - 1)
        width = len(str(self.steps))
        self.stream.write(f"\r{step + 1:>{width}}/{self.steps} [{bar}] - ETA {eta:4.1f}s - "
                          f"{_format_logs(logs)}")
        self.stream.flush()

    def epoch_end(self, logs):
        elapsed = time.perf_counter() - self._start
        if self.verbose == 1:
            self.stream.write(f"\r{self.steps}/{self.steps} [{'=' * 30}] - {elapsed:.2f}s - "
                              f"{_format_logs(logs)}\n")
        elif self.verbose == 2:
            self.stream.write(f"Epoch {self._epoch + 1}/{self.epochs} - {elapsed:.2f}s - "
                              f"{_format_logs(logs)}\n")
        self.stream.flush()
