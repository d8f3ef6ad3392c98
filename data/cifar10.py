"""CIFAR-10, the python version: ``data_batch_1..5`` and ``test_batch``, each a
pickled dict with ``data`` (N x 3072 uint8; the R, G, B 32x32 planes one after
another) and ``labels``, in ``<data_dir>/cifar10/`` or its
``cifar-10-batches-py/`` subfolder. Loaded only with a restricted unpickler."""
import os
import pickle

import numpy as np

from . import safe_pickle
from .dataset import DataError, Dataset, check_labels, to_float_images

TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST = "test_batch"
URL = "https://www.cs.toronto.edu/~kriz/cifar.html"


def find_folder(data_dir):
    base = os.path.join(data_dir, "cifar10")
    for folder in (base, os.path.join(base, "cifar-10-batches-py")):
        if os.path.isfile(os.path.join(folder, TRAIN[0])):
            return folder
    raise DataError(f"CIFAR-10 not found in {base}: download the python version from {URL} and "
                    f"unpack it there (data_batch_1..5 and test_batch)")


def read_batch(path):
    """(uint8 images (N, 3, 32, 32), int32 labels) of one batch file."""
    fix = f"replace it with the file from the python version at {URL}"
    if not os.path.isfile(path):
        raise DataError(f"{path}: missing; {fix}")
    batch = safe_pickle.load(path, fix=fix)
    if not isinstance(batch, dict):
        raise DataError(f"{path}: not a CIFAR-10 batch (a {type(batch).__name__}, not a dict); {fix}")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    missing = [k for k in ("data", "labels") if k not in batch]
    if missing:
        raise DataError(f"{path}: not a CIFAR-10 batch (no {' or '.join(missing)} key); {fix}")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", type(data).__name__)
        raise DataError(f"{path}: data must be uint8 N x 3072 (32x32 RGB planes), got {shape}; {fix}")
    labels = check_labels(batch["labels"], len(data), path, fix)
    return data.reshape(-1, 3, 32, 32), labels


def load(data_dir):
    folder = find_folder(data_dir)
    paths = [os.path.join(folder, name) for name in TRAIN + (TEST,)]
    batches = [read_batch(p) for p in paths]
    train_x = np.concatenate([b[0] for b in batches[:-1]])
    train_y = np.concatenate([b[1] for b in batches[:-1]])
    test_x, test_y = batches[-1]
    return Dataset("CIFAR10", to_float_images(train_x), train_y, to_float_images(test_x), test_y,
                   source=f"CIFAR-10 from {folder}: {len(train_x):,} training and {len(test_x):,} test images",
                   files=paths)


def write_batch(path, data, labels):
    """Write one batch in the site's format (pickle protocol 2, bytes keys);
    for tests and benchmarks, which have no CIFAR-10 offline."""
    batch = {b"batch_label": os.path.basename(path).encode(), b"labels": [int(v) for v in labels],
             b"data": np.ascontiguousarray(data, dtype=np.uint8), b"filenames": [b"img.png"] * len(labels)}
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)
