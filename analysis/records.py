"""Record files (``rec-*.mat``) read back as curves for plots and summaries,
and what makes two runs the same experiment."""

import functools
import math
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
    # per record: the training seconds to it, wall and CPU (None in records written before fxnn kept them)
    twall: np.ndarray = None
    tcpu: np.ndarray = None
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
        data, every flag a resumed run must keep (training/checkpoint.py)
        bar the seed and which parameters are recorded, and the precision."""
        return (("model", self.model), ("engine", self.engine), ("data", self.data_source)) + tuple(
            (k, _plain(self.flags.get(k, ADDED_FLAGS.get(k)))) for k in EXPERIMENT_FLAGS)


#: The variables of a record the analysis reads (the parameter snapshots are never read).
RECORD_VARIABLES = ("meta", "tloss", "terate", "vloss", "verate", "test_erate", "twall", "tcpu")
#: The most bytes any one of them may take: 8M iterations of a curve, 30 times the longest run the
#: README shows (-nrec 1000 -ipr 250). A file declaring more is refused before it is read.
MAX_VARIABLE_BYTES = 64 << 20
#: The largest -nrec and -ipr a record may state (fxnn.py's curves stay within MAX_VARIABLE_BYTES).
MAX_COUNT = 10**9
FIX = "records are written by fxnn.py"


def check_outputs(outputs, records):
    """RecordError unless each of ``outputs`` (None skipped), a file an
    analysis command is about to write, is neither one of the ``records``
    it reads nor any other MATLAB file: records are fxnn.py's to write, and
    a CSV or a plot written over one would destroy the run; nor "-", which
    would make a file of that name where standard output was meant."""
    if "-" in outputs:
        raise RecordError("-: names a file to write here, not standard output; give a file name")
    for out in (o for o in outputs if o is not None and os.path.exists(o)):
        if any(os.path.exists(r) and os.path.samefile(out, r) for r in records):
            raise RecordError(f"{out}: it is one of the records read; name another file to write")
        try:
            with open(out, "rb") as f:
                matlab = f.read(6) == b"MATLAB"  # the header of v5 and of v7.3 (HDF5 with a user block) alike
        except OSError:
            continue  # not readable: its writer says what stops it
        if matlab:
            raise RecordError(f"{out}: it is a MATLAB file (a record?), which the analysis commands never write "
                              f"over; name another file to write")


def load_run(path):
    """The :class:`Run` in the record file at ``path``: read bounded (only
    :data:`RECORD_VARIABLES`, each at most :data:`MAX_VARIABLE_BYTES`) and
    checked field by field (:func:`check_record`); RecordError otherwise."""
    from fxnn.files.mat_reader import MatError
    from fxnn.training.matfile import read_mat

    if os.path.isdir(path):
        raise RecordError(f"{path}: a folder, not a record file; give the records in it "
                          f"({os.path.join(path, '*.mat')})")
    if not os.path.exists(path):
        raise RecordError(f"{path}: no such record file")
    if not os.path.isfile(path):
        raise RecordError(f"{path}: not a plain file (a device or a pipe); {FIX}")
    try:
        r = read_mat(path, RECORD_VARIABLES, MAX_VARIABLE_BYTES)
    except MatError as e:
        reason = str(e)[len(path) + 2:] if str(e).startswith(f"{path}: ") else str(e)
        raise RecordError(f"{path}: not an fxnn record file ({_one_line(reason)}); {FIX}") from None
    except OSError as e:
        raise RecordError(f"{path}: cannot read it ({_one_line(e.strerror or e)})") from None
    return check_record(path, r)


def _one_line(text):
    return " ".join(str(text).split())


def _integer(value, low, high):
    """``value`` as an int when it is a number (or 1-element array) holding an
    integer in low..high, else None."""
    if isinstance(value, np.ndarray) and value.size == 1 and value.dtype.kind in "biuf":
        value = value.reshape(())[()]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    value = float(value)
    return int(value) if math.isfinite(value) and value.is_integer() and low <= value <= high else None


def _text(value):
    return value if isinstance(value, str) else None


def _curve(value):
    """A 1-D float array of a recorded curve, or None."""
    if isinstance(value, (float, int)) and not isinstance(value, bool):
        return np.array([float(value)])
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf" and value.ndim <= 1:
        return np.atleast_1d(value).astype(float)
    return None


def _flag(value):
    """A recorded flag as a plain value (str, float, or a tuple of floats for
    a list flag), or None when it is none of these."""
    if isinstance(value, str):
        return value
    if isinstance(value, (float, int)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf" and value.ndim <= 1:
        return tuple(float(v) for v in value)
    return None


def _what(value):
    if isinstance(value, np.ndarray):
        return f"an array of shape {'x'.join(map(str, value.shape))} ({value.dtype})"
    if isinstance(value, dict):
        return "a struct"
    if isinstance(value, float):
        return repr(value)
    return f"a {type(value).__name__}"


def record_problems(record):
    """(problems, fields): per malformed field of a record read by read_mat,
    ``"field: what is wrong"``; and the fields as a Run needs them."""
    problems, out = [], {}
    meta = record.get("meta")
    if not isinstance(meta, dict):
        return ["meta: missing or not a struct"], out
    flags = meta.get("flags")
    if not isinstance(flags, dict):
        problems.append(f"meta.flags: {'missing' if flags is None else _what(flags)}, not a struct")
        flags = {}
    for name in ("model", "engine", "dataset", "data_source", "status"):
        out[name] = _text(meta.get(name))
        if out[name] is None:
            problems.append(f"meta.{name}: {'missing' if name not in meta else _what(meta[name])}, not text")
    out["seed"] = _integer(meta.get("seed"), 0, 2**64 - 1)
    if out["seed"] is None:
        problems.append(f"meta.seed: {'missing' if 'seed' not in meta else _what(meta['seed'])}, "
                        f"not a non-negative integer")
    out["iters_per_record"] = _integer(flags.get("iters_per_record"), 1, MAX_COUNT)
    if out["iters_per_record"] is None:
        found = "missing" if "iters_per_record" not in flags else _what(flags["iters_per_record"])
        problems.append(f"meta.flags.iters_per_record: {found}, not an integer from 1 to {MAX_COUNT:,}")
    plain = {}
    for key, value in flags.items():
        plain[key] = _flag(value)
        if plain[key] is None:
            problems.append(f"meta.flags.{key}: {_what(value)}, not a number, text or list of numbers")
    if "num_records" in flags and _integer(flags["num_records"], 1, MAX_COUNT) is None:
        problems.append(f"meta.flags.num_records: {_what(flags['num_records'])}, not an integer from 1 to "
                        f"{MAX_COUNT:,}")
    for key in ("learn_rate", "learn_decay"):
        if key in flags and not (isinstance(plain[key], float) and math.isfinite(plain[key])):
            problems.append(f"meta.flags.{key}: {_what(flags[key])}, not a finite number")
    out["flags"] = plain
    for name in ("tloss", "terate", "vloss", "verate"):
        out[name] = _curve(record.get(name))
        if out[name] is None:
            problems.append(f"{name}: {'missing' if name not in record else _what(record[name])}, not a curve "
                            f"(a vector of numbers)")
    if all(out.get(n) is not None for n in ("tloss", "terate", "vloss", "verate")):
        if len(out["verate"]) == 0:
            problems.append("verate: empty (a record holds at least the untrained network's validation)")
        if len(out["vloss"]) != len(out["verate"]):
            problems.append(f"vloss: {len(out['vloss'])} values for the {len(out['verate'])} of verate")
        if len(out["terate"]) != len(out["tloss"]):
            problems.append(f"terate: {len(out['terate'])} values for the {len(out['tloss'])} of tloss")
        ipr = out.get("iters_per_record")
        if ipr and len(out["verate"]) and (len(out["verate"]) - 1) * ipr > len(out["tloss"]):
            problems.append(f"verate: {len(out['verate'])} records of {ipr:,} iterations, more than the "
                            f"{len(out['tloss']):,} iterations of tloss")
    for name in ("twall", "tcpu"):  # optional: records written before them lack them
        out[name] = _curve(record[name]) if name in record else None
        if name in record and (out[name] is None or out.get("verate") is not None
                               and len(out[name]) != len(out["verate"])):
            problems.append(f"{name}: {_what(record[name])}, not one number per record (as verate)")
    out["test_erate"] = (float("nan"), float("nan"))
    if "test_erate" in record:
        test = _curve(record["test_erate"])
        if test is None or len(test) != 2:
            problems.append(f"test_erate: {_what(record['test_erate'])}, not two numbers")
        else:
            out["test_erate"] = (float(test[0]), float(test[1]))
    return problems, out


def check_record(path, record):
    """The :class:`Run` of a record read by read_mat; RecordError, one line
    naming the file and the first malformed field (and how many more), if
    any field is not as fxnn.py writes it."""
    problems, f = record_problems(record)
    if problems:
        more = f" (and {len(problems) - 1} more: {', '.join(p.split(':')[0] for p in problems[1:])})" \
            if len(problems) > 1 else ""
        raise RecordError(f"{path}: not an fxnn record file ({_one_line(problems[0])}){more}; {FIX}")
    return Run(path=path, model=f["model"], engine=f["engine"], dataset=f["dataset"], data_source=f["data_source"],
               seed=f["seed"], status=f["status"], iters_per_record=f["iters_per_record"], tloss=f["tloss"],
               terate=f["terate"], vloss=f["vloss"], verate=f["verate"], twall=f["twall"], tcpu=f["tcpu"],
               flags=f["flags"], test_erate=f["test_erate"])


def distinct_runs(runs, by_experiment=True):
    """(runs, notes): ``runs`` with each run counted once, and one line per
    run left out: the same file given twice (also under another name or a
    link), or (``by_experiment``) the same data, flags and seed as a run
    before it, which is the same run again."""
    kept, notes, seen_files, seen_runs = [], [], {}, {}
    for run in runs:
        try:
            st = os.stat(run.path)
            file_key = (st.st_dev, st.st_ino)
        except OSError:
            file_key = os.path.realpath(run.path)
        if file_key in seen_files:
            notes.append(f"NOTE: counted once: {run.path} is the same file as {seen_files[file_key].path}")
            continue
        seen_files[file_key] = run
        run_key = (run.experiment, run.seed)
        if by_experiment and run_key in seen_runs:
            notes.append(f"NOTE: counted once: {run.path} is the same run as {seen_runs[run_key].path} "
                         f"(the same data, flags and seed {run.seed})")
            continue
        seen_runs[run_key] = run
        kept.append(run)
    return kept, notes


def group_by_label(runs):
    """{label: [runs]} in first-seen order."""
    groups = {}
    for run in runs:
        groups.setdefault(run.label, []).append(run)
    return groups


def _experiment_flags():
    # --precision too: a resume checks it apart (checkpoint.precision_mismatch), and it changes the curves;
    # not --memory-format, which like the engine changes only the rounding
    from fxnn.training.checkpoint import ADDED_FLAGS, MUST_MATCH
    flags = tuple(k for k in MUST_MATCH if k not in ("model", "engine", "seed", "record_params", "memory_format")) \
        + ("precision",)
    return flags, dict(ADDED_FLAGS, precision="fp32")


#: The flags besides model and engine that make runs different experiments, and the value of
#: those added later in records written before them.
EXPERIMENT_FLAGS, ADDED_FLAGS = _experiment_flags()


def _plain(value):
    """A recorded flag as a plain, comparable value (records keep numbers as floats)."""
    value = value.item() if isinstance(value, np.generic) else value
    return int(value) if isinstance(value, float) and value.is_integer() else value


@functools.lru_cache(maxsize=None)
def option_flag(name):
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
    differences = [[("data", data.index(key["data"]) + 1) if k == "data" else (option_flag(k), key[k]) for k in differ]
                   for key in keys]
    return differences, [option_flag(k) for k in differ]


def tag_experiments(runs):
    """(runs, differ): copies of ``runs`` whose labels also name the flags
    in which their experiments differ (e.g. ``fxnn (torch) -lr 0.1``), so
    that runs differing in anything but the seed are never one group, and
    the names of those flags. Model and engine are in every label already."""
    differences, options = experiment_differences(runs)
    tags = [" ".join(f"{option} {value}" for option, value in pairs) for pairs in differences]
    return [replace(r, tag=tag) for r, tag in zip(runs, tags)], options
