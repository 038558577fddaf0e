"""Training progress output of fit: a tqdm bar per epoch where tqdm is installed, else the
plain ProgressPrinter (verbose=1 a bar, verbose=2 one line per epoch)."""
import sys
import time


def _format_logs(logs):
    return " - ".join(f"{k}: {v:.4f}" for k, v in logs.items())


class TqdmProgress:
    """verbose=1 with tqdm: one bar per epoch, with loss and metrics as its postfix
    (tqdm adds rate and ETA)."""

    def __init__(self, tqdm, epochs, steps, stream=None):
        self._tqdm, self.epochs, self.steps = tqdm, epochs, steps
        self.stream = stream or sys.stdout
        self._bar = None

    def epoch_begin(self, epoch):
        self.close()
        self._bar = self._tqdm(total=self.steps, desc=f"Epoch {epoch + 1}/{self.epochs}",
                               unit="batch", file=self.stream, leave=True, mininterval=0.1)

    def batch_end(self, step, logs):
        self._bar.set_postfix_str(_format_logs(logs), refresh=False)
        self._bar.update(1)

    def epoch_end(self, logs):
        self._bar.set_postfix_str(_format_logs(logs), refresh=False)
        self.close()

    def close(self):
        if self._bar is not None:
            self._bar.close()
            self._bar = None


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

    def close(self):
        pass
