"""Record files (``rec-*.mat``) read back as curves for plots and summaries,
and what makes two runs the same experiment."""

import functools
import os
from dataclasses import dataclass, field, replace

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
    flags: dict = field(default_factory=dict)  # fxnn.py's flags, as recorded
    # test-set error once at the end of a --valid-split run: (final parameters, best validation record)
    test_erate: tuple = (float("nan"), float("nan"))
    tag: str = ""       # what sets this run's experiment apart from others summarised with it

    @property
    def record_iterations(self):
        """The iteration at which each validation row was taken."""
        return np.arange(len(self.verate)) * self.iters_per_record

    @property
    def label(self):
        return f"{self.model} ({self.engine})" + (f" {self.tag}" if self.tag else "")

    @property
    def experiment(self):
        """What the run's curves depend on except its seed: model, engine,
        data and every flag a resumed run must keep (training/checkpoint.py)
        bar the seed and which parameters are recorded."""
        return (("model", self.model), ("engine", self.engine), ("data", self.data_source)) + tuple(
            (k, _plain(self.flags.get(k))) for k in EXPERIMENT_FLAGS)


def load_run(path):
    """The :class:`Run` in the record file at ``path``."""
    from scipy.io.matlab import MatReadError

    from fxnn.training.matfile import read_mat

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
                   flags=dict(flags), test_erate=_test_erate(r))
    except (KeyError, TypeError, ValueError, OSError, MatReadError) as e:
        raise RecordError(f"{path}: not an fxnn record file ({type(e).__name__}: {e}); "
                          f"records are written by fxnn.py") from None


def _test_erate(record):
    """(final, best) test error of a run that validated on a held-out split
    (training/final_test.py), NaNs for one that validated on the test set."""
    if "test_erate" not in record:
        return (float("nan"), float("nan"))
    final, best = np.atleast_1d(record["test_erate"]).astype(float)
    return (float(final), float(best))


def group_by_label(runs):
    """{label: [runs]} in first-seen order."""
    groups = {}
    for run in runs:
        groups.setdefault(run.label, []).append(run)
    return groups


def _experiment_flags():
    from fxnn.training.checkpoint import MUST_MATCH
    return tuple(k for k in MUST_MATCH if k not in ("model", "engine", "seed", "record_params"))


#: The flags besides model and engine that make runs different experiments.
EXPERIMENT_FLAGS = _experiment_flags()


def _plain(value):
    """A recorded flag as a plain, comparable value (records keep numbers as floats)."""
    value = value.item() if isinstance(value, np.generic) else value
    return int(value) if isinstance(value, float) and value.is_integer() else value


@functools.lru_cache(maxsize=None)
def _option(name):
    """The fxnn.py option for a flag name (``learn_rate`` -> ``-lr``)."""
    if name == "data":
        return "data"
    import fxnn
    options = {a.dest: a.option_strings[0] for a in fxnn.build_parser()._actions if a.option_strings}
    return options.get(name, "--" + name.replace("_", "-"))


def experiment_differences(runs):
    """(differences, options): per run, the (option, value) pairs of every
    flag in which the runs' experiments differ, e.g. ``[("-lr", 0.1)]``
    (model and engine aside: every label names them; differing data sources
    are numbered, ``("data", 1)``), and those options."""
    keys = [dict(r.experiment) for r in runs]
    differ = [k for k in keys[0] if k not in ("model", "engine") and len({key[k] for key in keys}) > 1] if keys else []
    data = sorted({key["data"] for key in keys}) if "data" in differ else []
    differences = [[("data", data.index(key["data"]) + 1) if k == "data" else (_option(k), key[k]) for k in differ]
                   for key in keys]
    return differences, [_option(k) for k in differ]


def tag_experiments(runs):
    """(runs, differ): copies of ``runs`` whose labels also name the flags
    in which their experiments differ (e.g. ``fxnn (torch) -lr 0.1``), so
    that runs differing in anything but the seed are never one group, and
    the names of those flags. Model and engine are in every label already."""
    differences, options = experiment_differences(runs)
    tags = [" ".join(f"{option} {value}" for option, value in pairs) for pairs in differences]
    return [replace(r, tag=tag) for r, tag in zip(runs, tags)], options
