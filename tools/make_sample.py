#!/usr/bin/env python3
"""Rebuild the bundled MNIST sample (data/image/mnist-sample/) from shared data.

    python3 -m tools.make_sample [SHARED_DATA] [--out DIR]    (from the repository root)

A maintenance script of the checkout, not part of the installed package.
SHARED_DATA defaults to ../shared/data beside the repository. Copies the
official test set (SHARED_DATA/mnist-test/) and the genuine 5,000-image
training subset (SHARED_DATA/mnist-5k-train/); if SHARED_DATA/mnist/ holds
the full training set, takes 10,000 training images from it instead, the
first 1,000 of each class.
"""
import argparse
import os
import shutil
import sys

import numpy as np

from fxnn.data.dataset import DataError
from fxnn.data.idx import IMAGES_MAGIC, LABELS_MAGIC, read_idx, write_idx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "data", "image", "mnist-sample")
PER_CLASS = 1000
TEST = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
TRAIN = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")


def rebuild(shared, out):
    """Write the sample into ``out`` from ``shared``; returns what it took, in words."""
    sources = [os.path.join(shared, "mnist-test", name) for name in TEST]
    full = os.path.join(shared, "mnist")
    from_full = os.path.isfile(os.path.join(full, TRAIN[0]))
    sources += [os.path.join(full if from_full else os.path.join(shared, "mnist-5k-train"), name) for name in TRAIN]
    missing = [path for path in sources if not os.path.isfile(path)]
    if missing:
        raise DataError(f"{missing[0]} not found; give the shared data folder that holds mnist-test/ and "
                        f"mnist-5k-train/ (or mnist/) as the first argument")
    os.makedirs(out, exist_ok=True)
    for path in sources[:2]:
        shutil.copyfile(path, os.path.join(out, os.path.basename(path)))
    if not from_full:
        for path in sources[2:]:
            shutil.copyfile(path, os.path.join(out, os.path.basename(path)))
        return "the 5,000-image genuine training subset"
    fix = "check the shared data folder"
    x = read_idx(sources[2], IMAGES_MAGIC, fix)
    y = read_idx(sources[3], LABELS_MAGIC, fix)
    pick = np.concatenate([np.flatnonzero(y == c)[:PER_CLASS] for c in range(10)])
    write_idx(os.path.join(out, TRAIN[0]), x[pick])
    write_idx(os.path.join(out, TRAIN[1]), y[pick])
    return f"{len(pick):,} training images from the full set in {full}"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python3 -m tools.make_sample", description=__doc__.split("\n\n")[0])
    parser.add_argument("shared", nargs="?", default=os.path.join(ROOT, "..", "shared", "data"),
                        help="the shared data folder (default: ../shared/data beside the repository)")
    parser.add_argument("--out", default=OUT, help="where to write the sample (default: data/image/mnist-sample)")
    args = parser.parse_args(argv)
    try:
        print(f"Sample: {rebuild(args.shared, args.out)}")
    except (DataError, OSError) as e:
        print(f"make_sample: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
