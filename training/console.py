"""Console output in the original fxnn's format, plus a progress bar on terminals.

The record lines are exactly the original's::

    Iter 00100/10000: loss|erate 0.125169| 39.05% valid loss|erate 0.053871| 16.81%

The progress bar (the iterations of a record, then the images of its
validation) is drawn on stderr only when stderr is a terminal, and is erased
before the next record line, so logs redirected to a file stay clean.
"""
import sys
import time


def record_line(iteration, total, tloss, terate, vloss, verate):
    """One record line; ``tloss``/``terate`` None before any training."""
    width = max(5, len(str(total)))
    train = "--------|------%" if tloss is None else f"{tloss:8.6f}|{terate * 100:6.2f}%"
    return (f"Iter {iteration:0{width}d}/{total:0{width}d}: loss|erate {train} "
            f"valid loss|erate {vloss:8.6f}|{verate * 100:6.2f}%")


class Progress:
    """A one-line progress bar, on a TTY only: ``update(done, total, label)``."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self._start = time.monotonic()
        self._last = 0.0

    def start(self):
        self._start = time.monotonic()

    def update(self, done, total, label="train"):
        now = time.monotonic()
        if not self.enabled or (now - self._last < 0.1 and done < total):
            return
        self._last = now
        filled = int(30 * done / total)
        rate = done / max(now - self._start, 1e-9)
        self.stream.write(f"\r  {label} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total} {rate:6.1f}/s ")
        self.stream.flush()

    def clear(self):
        if self.enabled:
            self.stream.write("\r\033[K")
            self.stream.flush()
