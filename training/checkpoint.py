"""The run's state after each record, saved atomically, for ``--resume``.

A checkpoint holds everything the rest of the run depends on: the engine's
parameters, optimizer state and dropout generator (``engine.get_state()``),
the batch sampler's generator, the curves so far, and the flags that must
match on resume. It is one ``.npz`` written to a temporary file and renamed,
so a kill at any moment leaves either the previous checkpoint or the new one.
"""
import json
import os
from collections import namedtuple

import numpy as np

from data.atomic import atomic_path

FILE = "checkpoint.npz"
#: Flags a resumed run must share with the run it continues.
MUST_MATCH = ("model", "dataset", "filter_size", "batch_size", "dropout_prob", "num_records",
              "iters_per_record", "learn_rate", "learn_decay", "optimizer", "engine", "seed",
              "record_params", "valid_split")


def save(run_dir, record, engine_state, sampler, recorder_state, flags):
    arrays = {f"engine/{k}": v for k, v in engine_state.items()}
    arrays.update({f"curves/{k}": v for k, v in recorder_state.items()})
    arrays["record"] = np.asarray(record)
    arrays["sampler"] = np.asarray(json.dumps(sampler.bit_generator.state))
    arrays["flags"] = np.asarray(json.dumps(flags))
    with atomic_path(os.path.join(run_dir, FILE)) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


Checkpoint = namedtuple("Checkpoint", "record engine_state sampler curves flags")


def exists(run_dir):
    return os.path.exists(os.path.join(run_dir, FILE))


def load(run_dir):
    """The :data:`Checkpoint` saved in ``run_dir``: records done, engine state,
    the batch sampler's Generator, the curves and the run's flags."""
    with np.load(os.path.join(run_dir, FILE), allow_pickle=False) as z:
        engine_state = {k[len("engine/"):]: z[k] for k in z.files if k.startswith("engine/")}
        curves = {k[len("curves/"):]: z[k] for k in z.files if k.startswith("curves/")}
        sampler = np.random.default_rng()
        sampler.bit_generator.state = json.loads(str(z["sampler"]))
        return Checkpoint(int(z["record"]), engine_state, sampler, curves, json.loads(str(z["flags"])))


def mismatches(saved_flags, flags):
    """Names of the flags that differ between a checkpoint and this run."""
    return [k for k in MUST_MATCH if saved_flags.get(k) != flags.get(k)]
