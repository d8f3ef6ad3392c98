#!/usr/bin/env python3
"""Peak memory of fxnn.py refusing hostile CIFAR-10 batches, against loading
genuine ones (issue: harden every way in).

Writes full-size genuine CIFAR-10-shaped batches (5 x 10,000 training and
10,000 test images of random pixels, in the site's pickle format) and runs
``fxnn.py -d CIFAR10`` on them up to the start of training (``--engine
pytensor -nrec 1 -ipr 1``, stopped by an impossible ``-bsize``, so the
figure is the load alone); then, for each hostile batch of
``tests/test_hostile_pickles.py``, the same with that batch as
``data_batch_1`` (the first one read, so the figure is the hostile load
alone). Each run is its own process; peak RSS from the kernel's
``wait4``; the first row is the process refusing a missing dataset, what
fxnn.py takes before it reads any data.

    PYTHONPATH=tests python3 -m bench.bench_refused_loads [--json out.json]

(tests/ on the path: the hostile batches and the child run are the tests' own.)
"""
import argparse
import json
import os
import tempfile

import numpy as np

from fxnn.data.cifar import TEST, TRAIN, write_batch  # noqa: E402
from test_hostile_pickles import HOSTILE, run_fxnn  # noqa: E402  (PYTHONPATH=tests)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        code, _, err, peak = run_fxnn(tmp, os.path.join(tmp, "r.mat"))  # no CIFAR-10 there: refused at once
        rows.append(("none (the process without data)", 0, code, peak, err.strip()[-60:]))
        folder = os.path.join(tmp, "cifar10")
        os.makedirs(folder)
        for name in TRAIN + (TEST,):
            write_batch(os.path.join(folder, name), rng.integers(0, 256, (10_000, 3072), dtype=np.uint8),
                        rng.integers(0, 10, 10_000))
        genuine = open(os.path.join(folder, "data_batch_1"), "rb").read()
        code, _, err, peak = run_fxnn(tmp, os.path.join(tmp, "r.mat"), "-bsize", str(10**9))
        rows.append(("genuine CIFAR-10 (60,000 images)", len(genuine), code, peak, err.strip()[-60:]))
        for case in sorted(HOSTILE):
            with open(os.path.join(folder, "data_batch_1"), "wb") as f:
                f.write(HOSTILE[case][0])
            code, _, err, peak = run_fxnn(tmp, os.path.join(tmp, "r.mat"))
            rows.append((case, len(HOSTILE[case][0]), code, peak, err.strip()[-60:]))
    print(f"{'batch':36} {'file':>10} {'exit':>5} {'peak RSS':>10}")
    for case, size, code, peak, _ in rows:
        print(f"{case:36} {size / 2**20:8.2f} MiB {code:5d} {peak:6.0f} MiB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([dict(zip(("batch", "file_bytes", "exit", "peak_rss_mib", "message_end"), r)) for r in rows],
                      f, indent=1)


if __name__ == "__main__":
    main()
