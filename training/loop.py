"""One training run, top to bottom: records of iterations, validation, recording.

The schedule is the original's: ``nrec`` records of ``ipr`` iterations; each
iteration trains on ``bsize`` samples drawn uniformly at random (with
replacement); the learn rate during record i is ``lr * ld**(i/(nrec-1))``;
after each record the whole validation set (the test set, or a split held out
of the training set) is evaluated in batches of ``HYP.valid_batch``
(:mod:`fxnn.models.hyperparameters`). Each record's training
time, wall (``time.perf_counter``) and this process's CPU
(``time.process_time``), is measured around its iterations only, so the
recorder's clocks leave validation and recording out.

:func:`train` returns how the run ended: "complete", "interrupted" (Ctrl-C),
"terminated" (SIGTERM or SIGHUP, see :mod:`fxnn.files.signals`) or
"diverged" (a non-finite training loss). Whatever happened, the recorder holds everything
recorded so far.
"""
import math
import time
from dataclasses import dataclass

import numpy as np

from fxnn.files.progress import Progress, duration
from fxnn.files.signals import Terminated
from fxnn.models.hyperparameters import HYP

from .console import record_line

NUM_SAMPLES = 10  # test images whose predictions are recorded each record


@dataclass
class Schedule:
    num_records: int
    iters_per_record: int
    batch_size: int
    learn_rate: float
    learn_decay: float

    @property
    def total_iterations(self):
        return self.num_records * self.iters_per_record

    def learn_rate_at(self, record):
        """Exponential decay from lr at the first record to lr*ld at the last."""
        if self.num_records == 1:
            return self.learn_rate
        return self.learn_rate * self.learn_decay ** (record / (self.num_records - 1))


def validate(engine, x, y, batch=HYP.valid_batch, progress=None):
    """Mean loss and error rate over the whole of (x, y); any size works;
    ``progress`` (a :class:`Progress`) shows the images done."""
    loss = errors = 0.0
    if progress:
        progress.start()
    for start in range(0, len(x), batch):
        xb, yb = x[start:start + batch], y[start:start + batch]
        bl, be, _ = engine.evaluate(xb, yb)
        loss += bl * len(xb)
        errors += be * len(xb)
        if progress:
            progress.update(start + len(xb), len(x), "valid")
    return loss / len(x), errors / len(x)


def record_label(record, num_records, seconds_per_record=None):
    """The progress bar's label while record ``record`` (0-based) trains: which
    record of how many, and the time left for the run at the rate so far."""
    label = f"record {record + 1}/{num_records}"
    if seconds_per_record is None:
        return label
    return f"{label}, {duration(seconds_per_record * (num_records - record))} left"


def train(engine, dataset, schedule, recorder, sampler, start_record=0, on_record=None,
          print_line=print, progress=None):
    """Train records ``start_record``..nrec-1 (record 0's validation first on a
    fresh run), calling ``on_record(done)`` after each; returns the outcome.
    The progress bar (terminals only) names the record and, from the second
    one this process trains, the time the run has left."""
    progress = progress or Progress()
    total = schedule.total_iterations
    on_record = on_record or (lambda done: None)

    def record(done, tloss, terate, seconds, cpu_seconds):
        vloss, verate = validate(engine, *dataset.validation(), progress=progress)
        _, _, probs = engine.evaluate(recorder.sample_x, recorder.sample_y)
        recorder.add_record(vloss, verate, engine.snapshot(), probs, seconds, cpu_seconds)
        progress.clear()
        print_line(record_line(done * schedule.iters_per_record, total, tloss, terate, vloss, verate))
        on_record(done)

    try:
        with np.errstate(over="ignore", invalid="ignore"):  # divergence is checked below
            if recorder.records == 0:
                record(0, None, None, 0.0, 0.0)
            n_train = len(dataset.train_x)
            first = time.perf_counter()
            for r in range(start_record, schedule.num_records):
                lr = schedule.learn_rate_at(r)
                start, cpu_start = time.perf_counter(), time.process_time()
                per_record = (start - first) / (r - start_record) if r > start_record else None
                label = record_label(r, schedule.num_records, per_record)
                progress.start()
                losses, erates = [], []
                for i in range(schedule.iters_per_record):
                    idx = sampler.integers(0, n_train, schedule.batch_size)
                    loss, erate = engine.train_step(dataset.train_x[idx], dataset.train_y[idx], lr)
                    recorder.add_iteration(loss, erate)
                    if not math.isfinite(loss):
                        progress.clear()
                        return "diverged"
                    losses.append(loss)
                    erates.append(erate)
                    progress.update(i + 1, schedule.iters_per_record, label)
                record(r + 1, float(np.mean(losses)), float(np.mean(erates)), time.perf_counter() - start,
                       time.process_time() - cpu_start)
    except KeyboardInterrupt:
        progress.clear()
        return "interrupted"
    except Terminated:
        progress.clear()
        return "terminated"
    return "complete"
