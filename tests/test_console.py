"""Console lines exactly as the original fxnn printed them (from its README)."""
import io

import numpy as np

from fxnn.files.progress import Progress
from fxnn.training.console import record_line


def test_record_lines_match_the_original_output():
    assert (record_line(0, 10000, None, None, 0.455130, 0.8715)
            == "Iter 00000/10000: loss|erate --------|------% valid loss|erate 0.455130| 87.15%")
    assert (record_line(100, 10000, 0.125169, 0.3905, 0.053871, 0.1681)
            == "Iter 00100/10000: loss|erate 0.125169| 39.05% valid loss|erate 0.053871| 16.81%")
    assert (record_line(400, 10000, 0.040513, 0.1314, 0.029721, 0.0954)
            == "Iter 00400/10000: loss|erate 0.040513| 13.14% valid loss|erate 0.029721|  9.54%")


def test_iteration_field_widens_for_long_runs():
    assert record_line(250, 250000, 1.0, 1.0, 0.1, 0.05).startswith("Iter 000250/250000: loss|erate 1.000000|100.00%")


def test_progress_bar_is_silent_when_not_a_terminal():
    stream = io.StringIO()  # isatty() is False, as for a log file
    bar = Progress(stream)
    bar.update(5, 10)
    bar.clear()
    assert stream.getvalue() == ""


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_draws_and_erases_on_a_terminal():
    stream = FakeTTY()
    bar = Progress(stream)
    bar.update(10, 10)
    bar.clear()
    assert "10/10" in stream.getvalue() and stream.getvalue().endswith("\r\033[K")


class CountingEngine:
    """evaluate() of a fake engine: each batch's loss is its size."""

    def evaluate(self, x, y):
        return float(len(x)), 0.5, None


def test_validation_shows_its_progress_on_a_terminal_only():
    from fxnn.training.loop import validate
    x, y = np.zeros((250, 1, 2, 2), np.float32), np.zeros(250, np.int32)
    terminal = FakeTTY()
    assert validate(CountingEngine(), x, y, batch=100, progress=Progress(terminal)) == ((100 * 100 * 2 + 50 * 50) / 250, 0.5)
    drawn = terminal.getvalue()
    assert "valid [" in drawn and drawn.rstrip().split("\r")[-1].split()[2] == "250/250"
    log = io.StringIO()
    validate(CountingEngine(), x, y, batch=100, progress=Progress(log))
    assert log.getvalue() == ""


def test_download_progress_counts_in_megabytes_with_or_without_a_total():
    stream = FakeTTY()
    bar = Progress(stream, interval=0, scale=1e6, unit=" MB")
    bar.update(2_500_000, 5_000_000, "download")
    assert "download [###############...............] 2.5/5.0 MB" in stream.getvalue()
    bar.update(7_250_000, 0, "download")
    assert stream.getvalue().endswith("\r  download 7.2 MB ")


def test_lengths_of_time_read_as_a_person_would_say_them():
    from fxnn.files.progress import duration
    assert [duration(s) for s in (0, 29, 31, 90, 59 * 60, 3600, 3 * 3600 + 5 * 60 + 10)] == [
        "under a minute", "under a minute", "about 1 min", "about 2 min", "about 59 min", "about 1 h 00 min",
        "about 3 h 05 min"]


class FakeEngine:
    """Training steps that count themselves; a loss that never changes."""

    def __init__(self, clock):
        self.clock = clock

    def train_step(self, x, y, lr):
        self.clock[0] += 1.0  # each iteration takes one second
        return 0.5, 0.25

    def evaluate(self, x, y):
        return 0.5, 0.25, np.zeros((len(x), 10), np.float32)

    def snapshot(self):
        return {}


class FakeRecorder:
    records = 0
    sample_x, sample_y = np.zeros((1, 1, 2, 2), np.float32), np.zeros(1, np.int32)

    def add_iteration(self, loss, erate):
        pass

    def add_record(self, *args):
        self.records += 1


class FakeData:
    train_x, train_y = np.zeros((4, 1, 2, 2), np.float32), np.zeros(4, np.int32)

    def validation(self):
        return self.train_x, self.train_y


def test_the_training_bar_names_the_record_and_the_time_the_run_has_left(monkeypatch):
    from fxnn.training import loop
    clock = [0.0]
    monkeypatch.setattr(loop.time, "perf_counter", lambda: clock[0])
    terminal = FakeTTY()
    schedule = loop.Schedule(num_records=4, iters_per_record=30, batch_size=2, learn_rate=0.1, learn_decay=1.0)
    lines = []
    outcome = loop.train(FakeEngine(clock), FakeData(), schedule, FakeRecorder(), np.random.default_rng(0),
                         start_record=1, print_line=lines.append, progress=Progress(terminal, interval=0))
    assert outcome == "complete" and len(lines) == 4  # record 0's validation, then records 2-4
    bars = [part.strip() for part in terminal.getvalue().split("\r") if part.strip()]
    training = [bar.split(" [")[0] for bar in bars if "record" in bar]
    # record 2 is this process's first: no estimate; then 30 s a record, for 2 and 1 records left
    assert sorted(set(training)) == ["record 2/4", "record 3/4, about 1 min left", "record 4/4, under a minute left"]
