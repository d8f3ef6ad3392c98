"""A run's curves and flags for TensorBoard (``fxnn.py --tensorboard DIR``),
written as the run goes.

Scalars, with the training iteration as step: ``train/loss`` and
``train/error_pct`` at every iteration, ``valid/loss`` and ``valid/error_pct``
at every record (step 0: the untrained network), ``learn_rate`` at the first
iteration of each record; as text at step 0, ``flags`` (every flag) and
``provenance`` (the record's meta about versions and machine). Error rates are
percentages, as on the console. Events are written with TensorBoard's own
writer and flushed after every record, so ``tensorboard --logdir`` shows a
run while it goes. Each run starts a new event file with a restart mark at
its first new step, so TensorBoard drops what an interrupted run had logged
past its last checkpoint (``--resume``), or what an earlier run had logged in
the same folder (which a new run takes only with ``--force``).

The ``tensorboard`` package is an optional extra (``pip install
"fxnn[tensorboard]"``); :func:`check` says so in one line before training.
"""
import importlib
import os
import time

INSTALL = "pip install 'fxnn[tensorboard]' (or: pip install tensorboard)"


def event_files(logdir):
    return sorted(name for name in os.listdir(logdir) if "tfevents" in name) if os.path.isdir(logdir) else []


def check(logdir, resume=False, force=False):
    """Why ``--tensorboard logdir`` cannot work (one line), or None. A new
    run (not ``resume``) refuses a folder that holds another run's events
    unless ``force``, as fxnn.py refuses to overwrite a record."""
    try:
        importlib.import_module("tensorboard.summary.writer.event_file_writer")
    except ImportError:
        return f"--tensorboard needs the tensorboard package, which is not installed: {INSTALL}"
    if not logdir:
        return "--tensorboard needs a folder for the event files, e.g. --tensorboard tb/fxnn"
    existing = os.path.abspath(logdir)
    while not os.path.isdir(existing):  # the nearest folder it would be made in; none of the way a file
        if os.path.lexists(existing):
            return f"--tensorboard {logdir}: {existing} is a file, not a folder; give a folder for the event files"
        existing = os.path.dirname(existing)
    if not os.access(existing, os.W_OK):
        return f"--tensorboard {logdir}: folder {existing} is not writable; give another folder"
    if event_files(logdir) and not (resume or force):
        return (f"--tensorboard {logdir} holds the events of an earlier run: give another folder, or --force to log "
                f"this run there too (TensorBoard then shows this run only; the earlier files stay)")
    return None


def _text(tag, markdown):
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.compat.proto.tensor_pb2 import TensorProto
    from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
    from tensorboard.plugins.text.metadata import create_summary_metadata

    tensor = TensorProto(dtype="DT_STRING", string_val=[markdown.encode()],
                         tensor_shape=TensorShapeProto(dim=[TensorShapeProto.Dim(size=1)]))
    return Summary.Value(tag=tag, metadata=create_summary_metadata(display_name=tag, description=""), tensor=tensor)


def table(mapping):
    """A two-column markdown table of ``mapping``, as TensorBoard's text tab shows it."""
    rows = "\n".join(f"| {key} | {'' if value is None else value} |" for key, value in mapping.items())
    return "| name | value |\n|---|---|\n" + rows


class TensorBoardLog:
    """Writes what ``recorder`` (a :class:`fxnn.training.recorder.Recorder`) holds
    and has not been written yet, on each :meth:`update`."""

    def __init__(self, logdir, recorder, schedule, flags, provenance):
        from tensorboard.compat.proto import event_pb2
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self._event_pb2, self.schedule = event_pb2, schedule
        self.writer = EventFileWriter(logdir, flush_secs=60)
        self.iterations, self.records = len(recorder.tloss), recorder.records  # already logged (a resume)
        # TensorBoard drops the events it read before this mark from its step on: what an interrupted
        # run logged past its checkpoint, or (step 0) an earlier run's events in this folder
        self.writer.add_event(event_pb2.Event(wall_time=time.time(), step=self.iterations + 1 if self.records else 0,
                                              session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))
        self._write(0, [_text("flags", table(flags)), _text("provenance", table(provenance))])
        self.writer.flush()

    def _write(self, step, values):
        from tensorboard.compat.proto.summary_pb2 import Summary
        event = self._event_pb2.Event(wall_time=time.time(), step=int(step), summary=Summary(value=values))
        self.writer.add_event(event)

    def _scalars(self, step, scalars):
        from tensorboard.compat.proto.summary_pb2 import Summary
        self._write(step, [Summary.Value(tag=tag, simple_value=float(value)) for tag, value in scalars.items()])

    def update(self, recorder):
        """Write the iterations and records added since the last call; flush."""
        ipr = self.schedule.iters_per_record
        for i in range(self.iterations, len(recorder.tloss)):
            step = i + 1
            if i % ipr == 0:
                self._scalars(step, {"learn_rate": self.schedule.learn_rate_at(i // ipr)})
            self._scalars(step, {"train/loss": recorder.tloss[i], "train/error_pct": 100 * recorder.terate[i]})
        for r in range(self.records, recorder.records):
            self._scalars(r * ipr, {"valid/loss": recorder.vloss[r], "valid/error_pct": 100 * recorder.verate[r]})
        self.iterations, self.records = len(recorder.tloss), recorder.records
        self.writer.flush()

    def close(self, recorder):
        """Write what is left (the iterations of an unfinished record too) and close."""
        self.update(recorder)
        self.writer.close()
