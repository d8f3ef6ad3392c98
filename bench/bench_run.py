#!/usr/bin/env python3
"""Whole training runs: ``fxnn.py -m fxnn`` against ``fxnn.py -m cnn`` on the
same engine, in fp32 and bf16 (``--precision``, where fxnn.py has it),
whole-process wall time, alternated, with the machine.

Every run is a fresh process (start-up, data loading, every validation and
the record included), on the bundled MNIST sample unless other flags say
otherwise; each round runs every (precision, model) once, in turn (fxnn
fp32, cnn fp32, fxnn bf16, cnn bf16), so that a machine that speeds up or
slows down shifts all alike. One untimed fxnn run per precision first lets
``auto`` measure and cache its paths, as it would on a user's first run.
*The* baseline is the faster cnn (its median); each fxnn precision is
reported against it and against cnn of the same precision. A run that
fails is reported (its error's last lines) and the others go on; the exit
status is then 1.

    python3 -m bench.bench_run                          # torch, fp32 and bf16, -nrec 5 -ipr 100, 3 rounds
    python3 -m bench.bench_run --precisions fp32 --engine pytensor --rounds 2
    python3 -m bench.bench_run --device cuda --json out.json -- -nrec 10 -ipr 100 --no-download
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
MODELS = ("fxnn", "cnn")


def has_precision_flag():
    """Whether this checkout's fxnn.py takes ``--precision``."""
    done = subprocess.run([sys.executable, os.path.join(ROOT, "fxnn.py"), "--help"], cwd=ROOT,
                          capture_output=True, text=True)
    return "--precision" in done.stdout


def command(model, engine, precision, device, flags, folder):
    cmd = [sys.executable, os.path.join(ROOT, "fxnn.py"), "-m", model, "--engine", engine, "--force",
           "-o", os.path.join(folder, f"rec-{model}-{precision}.mat")]
    if device:
        cmd += ["--device", device]
    if precision != "fp32":
        cmd += ["--precision", precision]
    return cmd + flags


def run(cmd):
    """(seconds, None) of one whole ``fxnn.py`` process, or (None, error)."""
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        return None, f"exit {done.returncode}: {done.stderr.strip()[-500:]}"
    return seconds, None


def summarise(times):
    """{"median": {label: s}, "baseline": the fastest cnn, "vs_baseline",
    "fxnn_vs_cnn": {precision: ratio}} of ``times`` {label "model precision":
    [seconds]}."""
    median = {k: float(np.median(v)) for k, v in times.items() if v}
    cnns = {k: v for k, v in median.items() if k.startswith("cnn")}
    baseline = min(cnns, key=cnns.get) if cnns else None
    out = {"median": median, "baseline": baseline,
           "vs_baseline": {k: v / median[baseline] for k, v in median.items()} if baseline else {},
           "fxnn_vs_cnn": {}}
    for k, v in median.items():
        model, precision = k.split()
        if model == "fxnn" and f"cnn {precision}" in median:
            out["fxnn_vs_cnn"][precision] = v / median[f"cnn {precision}"]
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="flags after -- go to every fxnn.py run (default: "
                                       + " ".join(DEFAULT_FLAGS) + ")")
    p.add_argument("--engine", default="torch", choices=("torch", "pytensor"))
    p.add_argument("--device", help="fxnn.py --device (default: fxnn.py's own)")
    p.add_argument("--precisions", default="fp32,bf16",
                   help="fp32 and/or bf16 (bf16: torch engine, and fxnn.py with --precision)")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds (each precision's fxnn and cnn once)")
    p.add_argument("--no-machine", action="store_true", help="skip the machine's description and peaks")
    p.add_argument("--json", help="also write the figures to this file")
    args, rest = p.parse_known_args(argv)
    flags = [f for f in rest if f != "--"] or DEFAULT_FLAGS
    precisions = args.precisions.split(",")
    skipped = {}
    if "bf16" in precisions and args.engine != "torch":
        skipped["bf16"] = "the pytensor engine computes in float32 only"
    elif "bf16" in precisions and not has_precision_flag():
        skipped["bf16"] = "this fxnn.py has no --precision flag"
    precisions = [pr for pr in precisions if pr not in skipped]
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info = {} if args.no_machine else describe(threads)
    if info:
        print(banner(info))
    for pr, why in skipped.items():
        print(f"no {pr} runs: {why}")
    print(f"fxnn.py --engine {args.engine}{f' --device {args.device}' if args.device else ''} {' '.join(flags)}; "
          f"whole-process wall time, {args.rounds} alternated rounds")
    labels = [f"{m} {pr}" for pr in precisions for m in MODELS]
    times, errors = {k: [] for k in labels}, {}
    with tempfile.TemporaryDirectory() as folder:
        for pr in precisions:  # auto measures and caches its paths
            _, error = run(command("fxnn", args.engine, pr, args.device, flags, folder))
            if error:
                errors[f"fxnn {pr} (untimed first run)"] = error
                print(f"fxnn {pr} (untimed first run): failed, {error}", flush=True)
        for r in range(args.rounds):
            for label in labels:
                if label in errors:
                    continue
                model, pr = label.split()
                seconds, error = run(command(model, args.engine, pr, args.device, flags, folder))
                if error:
                    errors[label] = error
                    print(f"{label}: failed, {error}", flush=True)
                else:
                    times[label].append(seconds)
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in times.items()
                                                 if len(v) == r + 1), flush=True)
    figures = summarise(times)
    if figures["median"]:
        print("median: " + ", ".join(f"{k} {v:.1f} s" for k, v in figures["median"].items()))
    if figures["baseline"]:
        print(f"baseline (fastest cnn): {figures['baseline']}; "
              + ", ".join(f"{k} {v:.2f}x" for k, v in figures["vs_baseline"].items() if k.startswith("fxnn"))
              + "; fxnn/cnn same precision: "
              + ", ".join(f"{k} {v:.2f}x" for k, v in figures["fxnn_vs_cnn"].items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "engine": args.engine, "device": args.device, "flags": flags,
                       "rounds": args.rounds, "seconds": times, **figures, "skipped": skipped, "errors": errors,
                       "ratio": figures["fxnn_vs_cnn"].get("fp32")}, f, indent=2)
        print(f"wrote {args.json}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
