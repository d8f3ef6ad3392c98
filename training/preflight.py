"""Why a run must not start, found before any training: each check returns
one line saying what is wrong and the fix, or None.

* :func:`claim_output`: the record's folder, the lock on the record
  (:mod:`fxnn.training.runlock`), an earlier record or checkpoint, paths that are
  folders where files go or files where folders go, and links or special
  files (FIFOs, devices, sockets) where the run would write
  (:mod:`fxnn.files.nofollow`).
* :func:`check_resources`: a batch or filter size the network cannot have:
  taps that never reach the image, or more memory than the machine has.
* :func:`check_disk`: more records than the output folder's disk can hold.
"""
import os
import sys

import numpy as np

from fxnn.files.atomic import remove_stale_temporaries
from fxnn.files.nofollow import UnsafePath, check, target_kind

from . import checkpoint, runlock
from .record_size import megabytes, snapshot_bytes
from .recorder import ROLE_FOLDER


def claim_output(out, run_dir, resume, force):
    """Checks the record path ``out`` and its run folder and locks the record
    for this process (so the existence checks cannot race another run)."""
    directory = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(directory):
        return f"cannot write the record {out}: folder {directory} does not exist"
    if not os.access(directory, os.W_OK):
        return f"cannot write the record {out}: folder {directory} is not writable"
    found = target_kind(out)
    if found:
        return (f"cannot write the record {out}: it is {found}, not a regular file, which fxnn never replaces "
                f"(--force or not); name a file with -o")
    try:
        check_run_folder(run_dir)
        runlock.acquire(out)
    except (runlock.LockHeld, UnsafePath) as e:
        return str(e)
    except OSError as e:
        if e.errno not in runlock.UNSUPPORTED:
            return f"cannot lock the record {out}: {e.strerror or e} ({out}.lock)"
        print(f"fxnn: warning: the filesystem of {out} has no locks ({e.strerror}); make sure no other run "
              f"writes this record", file=sys.stderr)
    remove_stale_temporaries(directory)
    remove_stale_temporaries(run_dir)
    if resume:
        if not checkpoint.exists(run_dir):
            if os.path.exists(out):
                return (f"nothing to resume: {out} is a finished run (a run's checkpoint goes when it ends); "
                        f"to run more records, start a new run with -o, or without --resume and with --force to "
                        f"redo it")
            return f"nothing to resume: no checkpoint in {run_dir} (start a new run without --resume)"
    elif not force:
        if checkpoint.exists(run_dir):
            return (f"an interrupted run left a checkpoint in {run_dir}: add --resume to continue it, "
                    f"or --force to start over")
        if os.path.exists(out):
            return f"{out} exists: add --force to overwrite it, or -o to write elsewhere"
    return None


def check_run_folder(run_dir):
    """:class:`UnsafePath` unless ``run_dir`` is absent or a plain folder
    whose entries are plain files (a link planted there is refused)."""
    check(run_dir, ROLE_FOLDER, "folder")
    for name in os.listdir(run_dir) if os.path.lexists(run_dir) else []:
        check(os.path.join(run_dir, name), "a file of the run's state")


#: (limit, usage) files of the process's cgroup, v2 then v1.
CGROUP_MEMORY = (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                 ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"))


def _available_memory():
    """Bytes the system can still give this process: MemAvailable plus free
    swap, or less where its cgroup's limit leaves less; None where
    /proc/meminfo is unreadable."""
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f if len(line.split()) >= 2}
        available = info["MemAvailable"] + info.get("SwapFree", 0)
    except (OSError, KeyError, ValueError, IndexError):
        return None
    for limit_file, usage_file in CGROUP_MEMORY:
        try:
            with open(limit_file) as limit, open(usage_file) as usage:
                available = min(available, int(limit.read()) - int(usage.read()))
            break
        except (OSError, ValueError):  # no such cgroup file, or "max"
            continue
    return available


def keeps_fixed_stage(network, fxnn_path):
    """Whether a step may keep fxnn layers' 5M-channel fixed stages: on the
    fixed path, or under ``auto``, which may measure it fastest."""
    return fxnn_path in ("auto", "fixed") and any(conv.fxnn_paths for conv in network.convs)


def step_memory(network, batch_size, device="cpu", fxnn_path="auto"):
    """The host bytes one training step needs at least: the parameters and
    their gradients, and the batch's input and (on the CPU) the activations
    the backward pass keeps (float32), the fixed stages included where
    :func:`keeps_fixed_stage`."""
    params = sum(int(np.prod(s)) for s in network.param_shapes().values())
    if device == "cuda":  # the activations live on the GPU
        return 4 * (2 * params + batch_size * int(np.prod(network.input_shape)))
    kept = network.activations_per_sample(fixed_stage=keeps_fixed_stage(network, fxnn_path))
    return 4 * (2 * params + batch_size * kept)


def check_resources(network, batch_size, filter_size, model, device="cpu", available=None, fxnn_path="auto"):
    """The filter must fit the images (every tap can reach a pixel), and a
    training step (on ``fxnn_path``) must fit in the memory the machine has left."""
    c, h, w = network.input_shape
    if model == "cnn" and filter_size > 2 * min(h, w) - 1:
        return (f"-fsize {filter_size} is larger than {h}x{w} images allow (at most {2 * min(h, w) - 1}, "
                f"where every tap can reach a pixel); use a smaller -fsize")
    available = _available_memory() if available is None else available
    needed = step_memory(network, batch_size, device, fxnn_path)
    if available is not None and needed > available:
        flags = f"-bsize {batch_size}" + (f" with -fsize {filter_size}" if model == "cnn" else "")
        sizes = ["-bsize"] + (["-fsize"] if model == "cnn" else []) + (["--width"] if network.arch == "resnet" else [])
        smallest, batch = step_memory(network, 1, device, fxnn_path), batch_size
        if smallest > available:  # no batch size fits: the network itself is too large
            flags, needed, sizes, batch = "the network, even at -bsize 1,", smallest, sizes[1:], 1
        hint = f"use a smaller {' or '.join(sizes)}" if sizes else "run it on a machine with more memory"
        if device != "cuda" and keeps_fixed_stage(network, fxnn_path):
            lean = step_memory(network, batch, device, "fused")
            hint += (f" (with --fxnn-path fused or folded, which keep no 5M-channel fixed stages, it needs at "
                     f"least {lean / 2**30:,.1f} GiB)")
        return (f"{flags} needs at least {needed / 2**30:,.1f} GiB of memory for one training step, "
                f"and this machine has {available / 2**30:,.1f} GiB available; {hint}")
    return None


#: Bytes per training iteration in the record and in the checkpoint: tloss and terate, float64 each.
CURVE_BYTES = 16


def disk_needed(param_shapes, num_records, iters_per_record, record_params, done=0):
    """A lower bound on the bytes a run still writes to its output folder's
    disk, with (first) and without (second) its parameter snapshots: the
    record (curves and snapshots), the spool of the snapshots not yet taken
    (``done`` records were), and one checkpoint (curves and parameters)."""
    curves = CURVE_BYTES * num_records * iters_per_record
    kept = {"all": num_records + 1, "last": 1, "none": 0}[record_params]
    spooled = max(0, num_records + 1 - done) if record_params == "all" else kept
    snapshots = snapshot_bytes(param_shapes, kept + spooled)
    without = 2 * curves + snapshot_bytes(param_shapes, 1)
    return without + snapshots, without


def check_disk(out, param_shapes, num_records, iters_per_record, record_params, done=0, free=None):
    """The run must fit in the free space of the disk ``out`` is on (a
    filesystem that does not say what is free is not checked)."""
    folder = os.path.dirname(os.path.abspath(out))
    if free is None:
        try:
            stats = os.statvfs(folder)
        except OSError:
            return None
        free = stats.f_bavail * stats.f_frsize
    needed, without = disk_needed(param_shapes, num_records, iters_per_record, record_params, done)
    if needed <= free:
        return None
    if without <= free:
        fix = ("use --record-params last (the final parameters only) or none, or fewer -nrec"
               if record_params == "all" else "use --record-params none")
    else:
        fix = "use a smaller -nrec or -ipr"
    return (f"-nrec {num_records} -ipr {iters_per_record} with --record-params {record_params} needs at least "
            f"{megabytes(needed)} on the disk of {folder} (the record, its snapshot spool and checkpoint), and "
            f"{megabytes(free)} is free there; {fix}, or free some space")
