#!/usr/bin/env python3
"""Whole training runs: ``fxnn.py -m fxnn`` against ``fxnn.py -m cnn`` on the
same engine, whole-process wall time, alternated, with the machine.

Every run is a fresh process (start-up, data loading, every validation and
the record included), on the bundled MNIST sample unless other flags say
otherwise; the runs alternate fxnn, cnn, fxnn, cnn, ... so that a machine
that speeds up or slows down shifts both alike. One untimed fxnn run first
lets ``auto`` measure and cache its paths, as it would on a user's first run.

    python3 -m bench.bench_run                          # torch, -nrec 5 -ipr 100, 3 rounds
    python3 -m bench.bench_run --engine pytensor --rounds 2
    python3 -m bench.bench_run -- -nrec 100             # the default run's length
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

from .machine import banner, describe  # noqa: E402

DEFAULT_FLAGS = ["-nrec", "5", "-ipr", "100", "--no-download", "--record-params", "none", "--seed", "1"]


def run(model, engine, flags, folder):
    """Seconds of one whole ``fxnn.py`` process."""
    cmd = [sys.executable, os.path.join(ROOT, "fxnn.py"), "-m", model, "--engine", engine, "--force",
           "-o", os.path.join(folder, f"rec-{model}.mat")] + flags
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"bench_run: {' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return seconds


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="flags after -- go to every fxnn.py run (default: "
                                       + " ".join(DEFAULT_FLAGS) + ")")
    p.add_argument("--engine", default="torch", choices=("torch", "pytensor"))
    p.add_argument("--rounds", type=int, default=3, help="timed (fxnn, cnn) pairs")
    p.add_argument("--json", help="also write the figures to this file")
    args, rest = p.parse_known_args()
    flags = [f for f in rest if f != "--"] or DEFAULT_FLAGS
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info = describe(threads)
    print(banner(info))
    print(f"fxnn.py --engine {args.engine} {' '.join(flags)}; whole-process wall time, {args.rounds} alternated rounds")
    times = {"fxnn": [], "cnn": []}
    with tempfile.TemporaryDirectory() as folder:
        run("fxnn", args.engine, flags, folder)  # auto measures and caches its paths
        for r in range(args.rounds):
            for model in times:
                times[model].append(run(model, args.engine, flags, folder))
            print(f"round {r + 1}: fxnn {times['fxnn'][-1]:.1f} s, cnn {times['cnn'][-1]:.1f} s", flush=True)
    fx, cnn = (float(np.median(times[m])) for m in ("fxnn", "cnn"))
    print(f"median: fxnn {fx:.1f} s, cnn {cnn:.1f} s, fxnn/cnn {fx / cnn:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "engine": args.engine, "flags": flags, "seconds": times,
                       "ratio": fx / cnn}, f, indent=2)


if __name__ == "__main__":
    main()
