#!/usr/bin/env python3
"""Rebuild the bundled MNIST sample (data/image/mnist-sample/) from shared data.

    python3 data/make_sample.py [SHARED_DATA]    (default: ../shared/data beside the repo)

Copies the genuine 5,000-image training subset and the official test set.
If SHARED_DATA/mnist/ holds the full training set, takes 10,000 training
images from it instead, the first 1,000 of each class.
"""
import os
import shutil
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from data.idx import IMAGES_MAGIC, LABELS_MAGIC, read_idx, write_idx  # noqa: E402

OUT = os.path.join(HERE, "image", "mnist-sample")
PER_CLASS = 1000


def main(argv):
    shared = argv[1] if len(argv) > 1 else os.path.join(os.path.dirname(HERE), "..", "shared", "data")
    test = os.path.join(shared, "mnist-test")
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copyfile(os.path.join(test, name), os.path.join(OUT, name))
    full = os.path.join(shared, "mnist")
    if os.path.isfile(os.path.join(full, "train-images-idx3-ubyte.gz")):
        fix = "check the shared data folder"
        x = read_idx(os.path.join(full, "train-images-idx3-ubyte.gz"), IMAGES_MAGIC, fix)
        y = read_idx(os.path.join(full, "train-labels-idx1-ubyte.gz"), LABELS_MAGIC, fix)
        pick = np.concatenate([np.flatnonzero(y == c)[:PER_CLASS] for c in range(10)])
        write_idx(os.path.join(OUT, "train-images-idx3-ubyte.gz"), x[pick])
        write_idx(os.path.join(OUT, "train-labels-idx1-ubyte.gz"), y[pick])
        print(f"Sample: {len(pick):,} training images from the full set in {full}")
    else:
        for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
            shutil.copyfile(os.path.join(shared, "mnist-5k-train", name), os.path.join(OUT, name))
        print("Sample: the 5,000-image genuine training subset")


if __name__ == "__main__":
    main(sys.argv)
