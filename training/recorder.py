"""What a run records, kept on disk as it goes so memory does not grow with
the number of records.

Per iteration: training loss ``tloss`` and error rate ``terate``. Per record
(record 0 is the untrained network, then one after each ``ipr`` iterations):
validation ``vloss``/``verate``, the class probabilities ``yprob`` (records,
10, classes) of ten fixed test images ``x`` with labels ``y``, the seconds the
record's training took (wall and CPU; the ``.mat`` holds their running sums
``twall``/``tcpu``, the training clock to each record), and
(``--record-params all``) a snapshot of every parameter.

Snapshots are appended to a spool, one raw file per parameter in a run
folder beside the output; the ``.mat`` is written from it at the end
(:mod:`fxnn.training.matfile`). Curves are small and stay in memory; they travel in
the checkpoint through :meth:`Recorder.state` / :meth:`Recorder.restore`, with
the CRC-32 of every snapshot in the spool, so that a resumed run checks the
spool's size and contents instead of trusting them. The run folder and the
spools are never reached through a link (:mod:`fxnn.files.nofollow`).
"""
import math
import os
import zlib

import numpy as np

from fxnn.files.atomic import room_for
from fxnn.files.nofollow import make_folder, open_stream

from .checkpoint import RECOVER, DamagedState
from .matfile import SnapshotSource, write_mat

RECORD_PARAMS = ("all", "last", "none")
ROLE_FOLDER, ROLE_SPOOL = "the run's folder", "a snapshot spool of the run"


class Recorder:
    def __init__(self, run_dir, param_shapes, sample_x, sample_y, record_params="all", track_best=False):
        if record_params not in RECORD_PARAMS:
            raise ValueError(f"record_params must be one of {RECORD_PARAMS}")
        self.run_dir, self.record_params = run_dir, record_params
        # with a held-out validation set: a copy of the parameters of the
        # record with the lowest validation error (the first of equals)
        self.track_best, self.best_record, self.best_params = track_best, -1, None
        self.param_shapes = dict(param_shapes)
        self.sample_x, self.sample_y = sample_x, sample_y
        self.tloss, self.terate = [], []
        self.vloss, self.verate, self.yprob, self.sec_per_record = [], [], [], []
        self.cpu_per_record = []
        self.last_params = None
        self.spool_crc = []  # per record: the CRC-32 of each parameter's snapshot, in param_shapes order

    def _spool_path(self, name):
        return os.path.join(self.run_dir, f"spool-{name}.f32")

    @property
    def records(self):
        return len(self.vloss)

    def add_iteration(self, loss, erate):
        self.tloss.append(loss)
        self.terate.append(erate)

    def add_record(self, vloss, verate, params, sample_probs, seconds, cpu_seconds=math.nan):
        """Append one record: the snapshots to the spool first, then the
        curves, so a run stopped in between (a signal, a full disk) counts
        only whole records. ``seconds``, ``cpu_seconds``: the wall and CPU
        time of the record's training (NaN: not measured)."""
        if self.record_params == "all":
            make_folder(self.run_dir, ROLE_FOLDER)
            crcs = []
            for name in self.param_shapes:
                raw = np.asarray(params[name], dtype=np.float32).tobytes(order="F")
                with room_for(self._spool_path(name), len(raw)), open_stream(self._spool_path(name), "ab",
                                                                             ROLE_SPOOL) as f:
                    f.write(raw)
                crcs.append(zlib.crc32(raw))
            self.spool_crc.append(crcs)
        self.vloss.append(vloss)
        self.verate.append(verate)
        self.yprob.append(np.asarray(sample_probs, dtype=np.float32))
        self.sec_per_record.append(seconds)
        self.cpu_per_record.append(cpu_seconds)
        self.last_params = params
        if self.track_best and (self.best_record < 0 or verate < self.verate[self.best_record]):
            self.best_record = self.records - 1
            self.best_params = {k: np.array(v, dtype=np.float32) for k, v in params.items()}

    def state(self):
        """The curves so far (and the best record's parameters), as arrays for a checkpoint."""
        state = {"tloss": np.asarray(self.tloss), "terate": np.asarray(self.terate),
                 "vloss": np.asarray(self.vloss), "verate": np.asarray(self.verate),
                 "yprob": np.asarray(self.yprob), "sec_per_record": np.asarray(self.sec_per_record),
                 "cpu_per_record": np.asarray(self.cpu_per_record, dtype=np.float64),
                 "spool_crc": np.asarray(self.spool_crc, dtype=np.uint32).reshape(-1, len(self.param_shapes))}
        if self.track_best and self.best_params is not None:
            state["best_record"] = np.asarray(self.best_record)
            state.update({f"best/{k}": v for k, v in self.best_params.items()})
        return state

    def restore(self, state, params):
        """Continue from a checkpoint's ``state``: the spool must hold its
        record count of snapshots with the checkpoint's checksums (else
        :class:`DamagedState`), and is cut back to that count, dropping a
        snapshot written after the checkpoint. The training clocks go on from
        the checkpoint's: the time between a stop and the resume, and the
        iterations redone, are not counted (a checkpoint from before CPU
        times gives NaN for its records' CPU time)."""
        for key in ("tloss", "terate", "vloss", "verate", "sec_per_record"):
            setattr(self, key, [float(v) for v in state[key]])
        cpu = state.get("cpu_per_record")
        self.cpu_per_record = [math.nan] * self.records if cpu is None else [float(v) for v in cpu]
        self.yprob = list(state["yprob"])
        self.last_params = params
        if self.track_best and "best_record" in state:
            self.best_record = int(state["best_record"])
            self.best_params = {k: np.asarray(state[f"best/{k}"]) for k in self.param_shapes}
        if self.record_params == "all":
            crc = state.get("spool_crc")  # absent in checkpoints from before checksums: sizes only
            self.spool_crc = [] if crc is None else [[int(c) for c in row] for row in crc]
            if crc is not None and len(self.spool_crc) != self.records:
                raise DamagedState(f"cannot resume: the checkpoint has checksums for {len(self.spool_crc)} of "
                                   f"{self.records} snapshots; {RECOVER}")
            sizes = [int(np.prod(shape)) * 4 for shape in self.param_shapes.values()]
            for i, (name, size) in enumerate(zip(self.param_shapes, sizes)):  # all checked before any is cut
                self._check_spool(name, size, None if crc is None else crc[:, i])
            for name, size in zip(self.param_shapes, sizes):
                with open_stream(self._spool_path(name), "r+b", ROLE_SPOOL) as f:
                    f.truncate(self.records * size)

    def _check_spool(self, name, size, crcs):
        path = self._spool_path(name)
        try:
            with open_stream(path, "rb", ROLE_SPOOL) as f:
                found = os.fstat(f.fileno()).st_size
                if found < self.records * size:
                    raise DamagedState(f"cannot resume: {path} is truncated ({found:,} bytes, {self.records} "
                                       f"snapshots need {self.records * size:,}); {RECOVER}")
                for r in range(self.records if crcs is not None else 0):
                    if zlib.crc32(f.read(size)) != crcs[r]:
                        raise DamagedState(f"cannot resume: {path} is corrupt (snapshot {r} does not match its "
                                           f"checksum); {RECOVER}")
        except FileNotFoundError:
            raise DamagedState(f"cannot resume: {path} is missing ({self.records} snapshots); {RECOVER}") from None

    def _sources(self):
        if self.record_params == "none" or self.last_params is None:
            return []
        if self.record_params == "last":
            make_folder(self.run_dir, ROLE_FOLDER)
            for name, value in self.last_params.items():
                raw = np.asarray(value, dtype=np.float32).tobytes(order="F")
                with room_for(self._spool_path(name), len(raw)), open_stream(self._spool_path(name), "wb",
                                                                             ROLE_SPOOL) as f:
                    f.write(raw)
        records = self.records if self.record_params == "all" else 1
        return [SnapshotSource(name, shape, np.float32, records, self._spool_path(name))
                for name, shape in self.param_shapes.items()]

    def save(self, path, meta, extra=None):
        """Write the ``.mat`` atomically, with the variables of ``extra``
        beside the curves and ``meta`` completed by what the recorder knows
        (iterations done, seconds per record, which snapshots); returns the
        layout ("v5" or "v7.3")."""
        small = {
            "tloss": np.asarray(self.tloss, dtype=np.float64),
            "terate": np.asarray(self.terate, dtype=np.float64),
            "vloss": np.asarray(self.vloss, dtype=np.float64),
            "verate": np.asarray(self.verate, dtype=np.float64),
            "x": self.sample_x,
            "y": np.asarray(self.sample_y, dtype=np.float64),
            "yprob": np.asarray(self.yprob, dtype=np.float32),
            "twall": np.cumsum(self.sec_per_record, dtype=np.float64),
            "tcpu": np.cumsum(self.cpu_per_record, dtype=np.float64),
            "meta": dict(meta, iterations_done=len(self.tloss),
                         sec_per_record=np.asarray(self.sec_per_record, dtype=np.float64),
                         record_params=self.record_params),
            **(extra or {}),
        }
        return write_mat(path, small, self._sources())
