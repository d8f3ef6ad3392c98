"""One progress line on a terminal, for every long wait (training records,
validation, downloads).

Drawn on a stream (stderr by default) only when it is a terminal, redrawn
in place at most every ``interval`` seconds and erased before the next
line of output, so logs redirected to a file never see it."""
import sys
import time


class Progress:
    """``update(done, total, label)`` redraws ``label [####....] done/total
    rate/s`` (without a known total, ``label done``); ``clear()`` erases it.
    ``scale`` and ``unit`` show counts in other units (1e6 and " MB" for bytes)."""

    def __init__(self, stream=None, interval=0.1, scale=1, unit=""):
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.interval, self.scale, self.unit = interval, scale, unit
        self._start = time.monotonic()
        self._last = 0.0

    def start(self):
        self._start = time.monotonic()

    def _count(self, n):
        return f"{n}" if self.scale == 1 else f"{n / self.scale:.1f}"

    def update(self, done, total, label="train"):
        now = time.monotonic()
        finished = bool(total) and done >= total  # always drawn, so the bar ends full
        if not self.enabled or (now - self._last < self.interval and not finished):
            return
        self._last = now
        if total:
            filled = int(30 * min(done, total) / total)
            rate = done / self.scale / max(now - self._start, 1e-9)
            text = (f"{label} [{'#' * filled}{'.' * (30 - filled)}] {self._count(done)}/{self._count(total)}"
                    f"{self.unit} {rate:6.1f}{self.unit}/s")
        else:
            text = f"{label} {self._count(done)}{self.unit}"
        self.stream.write(f"\r  {text} ")
        self.stream.flush()

    def clear(self):
        if self.enabled:
            self.stream.write("\r\033[K")
            self.stream.flush()


def duration(seconds):
    """A rough length of time for a person: "under a minute", "about 12 min", "about 3 h 05 min"."""
    minutes = round(seconds / 60)
    if minutes < 1:
        return "under a minute"
    return f"about {minutes} min" if minutes < 60 else f"about {minutes // 60} h {minutes % 60:02d} min"
