"""Record files (``rec-*.mat``) read back as curves for plots and summaries."""
import os
from dataclasses import dataclass, field

import numpy as np


class RecordError(Exception):
    """A file that cannot be read as an fxnn record; the message is one line."""


@dataclass
class Run:
    """The curves and identity of one finished (or interrupted) run."""
    path: str
    model: str
    engine: str
    dataset: str
    data_source: str
    seed: int
    status: str
    iters_per_record: int
    tloss: np.ndarray   # per iteration
    terate: np.ndarray
    vloss: np.ndarray   # per record; row 0 is the untrained network
    verate: np.ndarray
    flags: dict = field(default_factory=dict)  # every flag of the run, as fxnn.py stored them

    @property
    def record_iterations(self):
        """The iteration at which each validation row was taken."""
        return np.arange(len(self.verate)) * self.iters_per_record

    @property
    def label(self):
        return f"{self.model} ({self.engine})"


def load_run(path):
    """The :class:`Run` in the record file at ``path``."""
    from scipy.io.matlab import MatReadError

    from training.matfile import read_mat

    if not os.path.isfile(path):
        raise RecordError(f"{path}: no such record file")
    try:
        r = read_mat(path)
        meta, flags = r["meta"], r["meta"]["flags"]
        return Run(path=path, model=meta["model"], engine=meta["engine"], dataset=meta["dataset"],
                   data_source=meta["data_source"], seed=int(meta["seed"]), status=meta["status"],
                   iters_per_record=int(flags["iters_per_record"]),
                   tloss=np.atleast_1d(r["tloss"]).astype(float), terate=np.atleast_1d(r["terate"]).astype(float),
                   vloss=np.atleast_1d(r["vloss"]).astype(float), verate=np.atleast_1d(r["verate"]).astype(float),
                   flags=dict(flags))
    except (KeyError, TypeError, ValueError, OSError, MatReadError) as e:
        raise RecordError(f"{path}: not an fxnn record file ({type(e).__name__}: {e}); "
                          f"records are written by fxnn.py") from None


def group_by_label(runs):
    """{label: [runs]} in first-seen order."""
    groups = {}
    for run in runs:
        groups.setdefault(run.label, []).append(run)
    return groups
