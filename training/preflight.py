"""Why a run must not start, found before any training: each check returns
one line saying what is wrong and the fix, or None.

* :func:`claim_output`: the record's folder, the lock on the record
  (:mod:`fxnn.training.runlock`), an earlier record or checkpoint, paths that are
  folders where files go or files where folders go.
* :func:`check_resources`: a batch or filter size the network cannot have:
  taps that never reach the image, or more memory than the machine has.
"""
import os
import sys

import numpy as np

from fxnn.files.atomic import remove_stale_temporaries

from . import checkpoint, runlock


def claim_output(out, run_dir, resume, force):
    """Checks the record path ``out`` and its run folder and locks the record
    for this process (so the existence checks cannot race another run)."""
    directory = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(directory):
        return f"cannot write the record {out}: folder {directory} does not exist"
    if not os.access(directory, os.W_OK):
        return f"cannot write the record {out}: folder {directory} is not writable"
    if os.path.isdir(out):
        return f"cannot write the record {out}: it is a folder; name a file with -o"
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        return f"{run_dir} is a file, where this record keeps its run state: move it away, or use -o"
    try:
        runlock.acquire(out)
    except runlock.LockHeld as e:
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
            return f"nothing to resume: no checkpoint in {run_dir} (start a new run without --resume)"
    elif not force:
        if checkpoint.exists(run_dir):
            return (f"an interrupted run left a checkpoint in {run_dir}: add --resume to continue it, "
                    f"or --force to start over")
        if os.path.exists(out):
            return f"{out} exists: add --force to overwrite it, or -o to write elsewhere"
    return None


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


def step_memory(network, batch_size, device="cpu"):
    """A lower bound on the host bytes one training step needs: the
    parameters and their gradients, and the batch's input and (on the CPU)
    every layer's output, which the backward pass keeps (float32)."""
    params = sum(int(np.prod(s)) for s in network.param_shapes().values())
    c, h, w = network.input_shape
    per_sample = c * h * w
    if device == "cuda":  # the activations live on the GPU
        return 4 * (2 * params + batch_size * per_sample)
    for conv in network.convs:
        per_sample += conv.out_channels * h * w
        h, w = h // 2, w // 2
    per_sample += sum(d.out_features for d in network.denses)
    return 4 * (2 * params + batch_size * per_sample)


def check_resources(network, batch_size, filter_size, model, device="cpu", available=None):
    """The filter must fit the images (every tap can reach a pixel), and a
    training step must fit in the memory the machine has left."""
    c, h, w = network.input_shape
    if model == "cnn" and filter_size > 2 * min(h, w) - 1:
        return (f"-fsize {filter_size} is larger than {h}x{w} images allow (at most {2 * min(h, w) - 1}, "
                f"where every tap can reach a pixel); use a smaller -fsize")
    available = _available_memory() if available is None else available
    needed = step_memory(network, batch_size, device)
    if available is not None and needed > available:
        flags = f"-bsize {batch_size}" + (f" with -fsize {filter_size}" if model == "cnn" else "")
        return (f"{flags} needs at least {needed / 2**30:,.1f} GiB of "
                f"memory for one training step, and this machine has {available / 2**30:,.1f} GiB available; "
                f"use a smaller -bsize" + (" or -fsize" if model == "cnn" else ""))
    return None
