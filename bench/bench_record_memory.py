#!/usr/bin/env python3
"""Peak memory of a record-heavy run against a short one (issue: never lose a run).

Builds CIFAR-10-shaped synthetic data in the python-batch format (random
pixels: the point is the size of the network and its records, not accuracy),
then runs ``fxnn.py -d CIFAR10`` with ``-nrec 1000 -ipr 1`` and with
``-nrec 10 -ipr 100`` (each in its own process): the same 1000 training
iterations, 100 times the records (validations, snapshots, checkpoints).
Prints each one's peak resident memory, wall time and record size, and their
ratio. Goal: peak memory within 10%. (Both runs train equally long so that
the comparison measures records, not the allocator's high-water mark over
more training steps.)

    python3 -m bench.bench_record_memory [--records 1000] [--model fxnn] [--json out.json]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from fxnn.data.cifar import TEST, TRAIN, write_batch  # noqa: E402


def write_cifar(folder, train_per_batch=1000, test=200, seed=0):
    """Five training batches and a test batch of random pixels."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    for name in TRAIN + (TEST,):
        n = test if name == TEST else train_per_batch
        write_batch(os.path.join(folder, name), rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                    rng.integers(0, 10, n))


def measure(args, data_dir, records, iters_per_record, out):
    """(peak RSS in MiB, seconds, record file MiB) of one run in a child process."""
    cmd = [sys.executable, os.path.join(ROOT, "fxnn.py"), "-d", "CIFAR10", "-m", args.model,
           "-nrec", str(records), "-ipr", str(iters_per_record), "--data-dir", data_dir, "-o", out, "--seed", "0",
           "--engine", args.engine, "--force"]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.monotonic() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"bench: run with -nrec {records} failed: {proc.stderr.read().decode().strip()}")
    return usage.ru_maxrss / 1024, seconds, os.path.getsize(out) / 2**20


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, default=1000,
                   help="records of the long run (a multiple of 10); both runs train this many iterations")
    p.add_argument("--model", default="fxnn", choices=("fxnn", "cnn"))
    p.add_argument("--engine", default="pytensor", choices=("pytensor", "torch"))
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args()
    if args.records < 10 or args.records % 10:
        p.error("--records must be a positive multiple of 10")
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
        write_cifar(os.path.join(tmp, "cifar10"))
        rows = {}
        for records in (10, args.records):
            ipr = args.records // records
            rows[records] = measure(args, tmp, records, ipr, os.path.join(tmp, f"rec-{records}.mat"))
            print(f"-nrec {records:5d} -ipr {ipr:4d}: peak RSS {rows[records][0]:8.1f} MiB, "
                  f"{rows[records][1]:7.1f} s, record {rows[records][2]:9.1f} MiB", flush=True)
    ratio = rows[args.records][0] / rows[10][0]
    print(f"peak RSS ratio -nrec {args.records} / -nrec 10: {ratio:.3f} (goal: within 10%, "
          f"{'met' if abs(ratio - 1) <= 0.10 else 'NOT met'})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "engine": args.engine, "ratio": ratio,
                       "runs": {str(k): dict(zip(("peak_rss_mib", "seconds", "record_mib"), v))
                                for k, v in rows.items()}}, f, indent=2)


if __name__ == "__main__":
    main()
