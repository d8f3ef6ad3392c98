"""The run's state after each record, saved atomically, for ``--resume``.

A checkpoint holds everything the rest of the run depends on: the engine's
parameters, optimizer state and dropout generator (``engine.get_state()``),
the batch sampler's generator, the curves so far (with the size and CRC-32 of
every snapshot in the spool, :mod:`fxnn.training.recorder`), the flags that must
match on resume and the identity of the data it trained on. It is one
``.npz`` written to a temporary file and renamed, so a kill at any moment
leaves either the previous checkpoint or the new one; the zip format
carries each array's size and CRC-32, so damage after the fact is found when
it is read. Its folder and file are never reached through a link
(:mod:`fxnn.files.nofollow`). Damaged state is refused with :class:`DamagedState` (one line:
what is damaged and how to recover), never patched up.
"""
import hashlib
import json
import os
import zipfile
import zlib
from collections import namedtuple

import numpy as np

from fxnn.files.atomic import atomic_path
from fxnn.files.nofollow import UnsafePath, make_folder, open_stream
from fxnn.data.dataset import one_line

FILE = "checkpoint.npz"
#: Flags a resumed run must share with the run it continues.
MUST_MATCH = ("model", "dataset", "filter_size", "batch_size", "dropout_prob", "num_records",
              "iters_per_record", "learn_rate", "learn_decay", "optimizer", "engine", "seed",
              "record_params", "valid_split", "conv_lr_scale", "arch", "width", "depth", "kernel_init",
              "memory_format")
#: The value a flag added later had before it existed, for checkpoints saved without it
#: (--width and --depth: none in runs of --arch original).
ADDED_FLAGS = {"conv_lr_scale": 1.0, "arch": "original", "width": None, "depth": None, "kernel_init": "model",
               "memory_format": "auto"}
CURVES = ("tloss", "terate", "vloss", "verate", "yprob", "sec_per_record")
RECOVER = "start the run over with --force instead of --resume (its progress is lost)"


class DamagedState(Exception):
    """A checkpoint or spool that cannot be trusted; the message is one line."""


def save(run_dir, record, engine_state, sampler, recorder_state, flags):
    arrays = {f"engine/{k}": v for k, v in engine_state.items()}
    arrays.update({f"curves/{k}": v for k, v in recorder_state.items()})
    arrays["record"] = np.asarray(record)
    arrays["sampler"] = np.asarray(json.dumps(sampler.bit_generator.state))
    arrays["flags"] = np.asarray(json.dumps(flags))
    needed = sum(np.asarray(a).nbytes for a in arrays.values())
    make_folder(run_dir, "the run's folder")
    with atomic_path(os.path.join(run_dir, FILE), needed) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


Checkpoint = namedtuple("Checkpoint", "record engine_state sampler curves flags")


def exists(run_dir):
    return os.path.exists(os.path.join(run_dir, FILE))


def load(run_dir):
    """The :data:`Checkpoint` saved in ``run_dir``: records done, engine state,
    the batch sampler's Generator, the curves and the run's flags;
    :class:`DamagedState` if it is unreadable, truncated or incomplete."""
    path = os.path.join(run_dir, FILE)
    try:
        with open_stream(path, "rb", "the run's checkpoint") as f, np.load(f, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}  # reads every member: checks each one's CRC-32
        engine_state = {k[len("engine/"):]: v for k, v in arrays.items() if k.startswith("engine/")}
        curves = {k[len("curves/"):]: v for k, v in arrays.items() if k.startswith("curves/")}
        missing = [k for k in ("record", "sampler", "flags") if k not in arrays]
        missing += [f"curves/{k}" for k in CURVES if k not in curves] + ([] if engine_state else ["engine/*"])
        if missing:
            raise ValueError(f"no {', '.join(missing)}")
        sampler = np.random.default_rng()
        sampler.bit_generator.state = json.loads(str(arrays["sampler"]))
        record, flags = int(arrays["record"]), json.loads(str(arrays["flags"]))
        if len(curves["vloss"]) != record + 1 or len(curves["tloss"]) != record * flags["iters_per_record"]:
            raise ValueError(f"its curves do not have {record} records")
    except UnsafePath:
        raise
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise DamagedState(f"cannot resume: {path} is damaged ({type(e).__name__}: {one_line(e)}); "
                           f"{RECOVER}") from None
    return Checkpoint(record, engine_state, sampler, curves, flags)


def restore(resumed, engine, recorder):
    """Put the checkpoint's state into ``engine`` and ``recorder`` (which
    checks the spool); :class:`DamagedState` if they do not fit it."""
    try:
        engine.set_state(resumed.engine_state)
    except (KeyError, ValueError, RuntimeError, TypeError) as e:
        raise DamagedState(f"cannot resume: the engine state in the checkpoint does not fit the network "
                           f"({type(e).__name__}: {one_line(e)}); {RECOVER}") from None
    recorder.restore(resumed.curves, engine.snapshot())


def mismatches(saved_flags, flags):
    """Names of the flags that differ between a checkpoint and this run."""
    return [k for k in MUST_MATCH if saved_flags.get(k, ADDED_FLAGS.get(k)) != flags.get(k)]


def precision_mismatch(saved_flags, precision, out, run_dir):
    """One line if the interrupted run trained in another ``--precision``
    (a checkpoint from before the flag: fp32), else None."""
    saved = saved_flags.get("precision", "fp32")
    if saved == precision:
        return None
    return (f"cannot resume {out}: its checkpoint {os.path.join(run_dir, FILE)} was trained with --precision "
            f"{saved}, and this run asks for --precision {precision}; resume with --precision {saved}, or start "
            f"over in {precision} with --force")


def data_identity(dataset):
    """What identifies the data a run trains on, whichever loader read it:
    the SHA-256 of the training and test images and labels as loaded
    (dtype, shape and bytes of each), and the loader's one-line source."""
    digest = hashlib.sha256()
    for name in ("train_x", "train_y", "test_x", "test_y"):
        array = np.ascontiguousarray(getattr(dataset, name))
        digest.update(f"{name} {array.dtype.str} {array.shape}\n".encode())
        digest.update(array.reshape(-1).view(np.uint8))
    return {"sha256": digest.hexdigest(), "source": dataset.source}


def data_mismatch(saved_flags, identity, out):
    """One line if the data differ from the interrupted run's, else None."""
    saved = saved_flags.get("data")
    if saved is None:
        return None  # a checkpoint from before data identities: nothing to compare
    if saved["sha256"] != identity["sha256"]:
        return (f"cannot resume {out}: the data differ from the interrupted run's (run: {saved['source']}, "
                f"sha256 {saved['sha256'][:12]}; now: {identity['source']}, sha256 {identity['sha256'][:12]}); "
                f"resume with the run's data (same --data-dir and files), or start over with --force")
    return None
