"""MNIST from a folder: the fast ``mnist.npz`` made by ``mnist_pickler.py``
when present, otherwise the four standard idx files (gzipped or not)."""
import os
import zipfile
import zlib

import numpy as np

from .dataset import DataError, Dataset, check_labels, one_line, to_float_images
from .idx import IMAGES_MAGIC, LABELS_MAGIC, read_idx

#: (key, idx file name, magic) of the four standard files.
FILES = (
    ("train_x", "train-images-idx3-ubyte", IMAGES_MAGIC),
    ("train_y", "train-labels-idx1-ubyte", LABELS_MAGIC),
    ("test_x", "t10k-images-idx3-ubyte", IMAGES_MAGIC),
    ("test_y", "t10k-labels-idx1-ubyte", LABELS_MAGIC),
)
NPZ = "mnist.npz"
IMAGE_SHAPE = (28, 28)
SAMPLE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "image", "mnist-sample")


class MissingData(DataError):
    """None of the dataset's files are there (as opposed to broken ones)."""


def locate(folder):
    """{key: path} of the idx files in ``folder``; a .gz is used when both exist."""
    found = {}
    for key, name, _ in FILES:
        for candidate in (name + ".gz", name):
            path = os.path.join(folder, candidate)
            if os.path.isfile(path):
                found[key] = path
                break
    return found


def read_idx_files(folder, fix):
    """{key: uint8 array} from the four idx files; MissingData when none exist."""
    paths = locate(folder)
    if not paths:
        raise MissingData(f"no MNIST idx files in {folder}; {fix}")
    missing = [name for key, name, _ in FILES if key not in paths]
    if missing:
        raise DataError(f"{folder}: {', '.join(missing)} (or .gz) missing; {fix}")
    arrays = {key: read_idx(paths[key], magic, fix) for key, _, magic in FILES}
    return arrays, [paths[key] for key, _, _ in FILES]


def validate(arrays, names, fix):
    """Shapes, sizes and labels of the four arrays; returns them as a Dataset's fields."""
    out = {}
    for split in ("train", "test"):
        x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if x.ndim != 3 or x.shape[1:] != IMAGE_SHAPE or x.dtype != np.uint8:
            raise DataError(f"{names[split + '_x']}: images must be uint8 28x28, got {x.dtype} "
                            f"{'x'.join(map(str, x.shape))}; {fix}")
        out[f"{split}_x"] = to_float_images(x)
        out[f"{split}_y"] = check_labels(y, len(x), names[f"{split}_y"], fix)
    return out


def load_folder(folder):
    """MNIST from ``folder``; raises MissingData when it holds nothing."""
    npz = os.path.join(folder, NPZ)
    if os.path.isfile(npz):
        fix = f"delete {npz} and run mnist_pickler.py again"
        try:
            with np.load(npz, allow_pickle=False) as z:
                arrays = {key: z[key] for key, _, _ in FILES}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            raise DataError(f"{npz}: unreadable ({one_line(e)}); {fix}") from None
        names, files = {key: npz for key, _, _ in FILES}, [npz]
    else:
        fix = f"delete it and run again to download it, or put a good copy in {folder}"
        arrays, files = read_idx_files(folder, fix)
        names = dict(zip((key for key, _, _ in FILES), files))
    fields = validate(arrays, names, fix)
    n_train, n_test = len(fields["train_x"]), len(fields["test_x"])
    return Dataset("MNIST", source=f"MNIST from {folder}: {n_train:,} training and "
                   f"{n_test:,} test images", files=files, **fields)


def load_sample():
    """The bundled sample, its source line counting what it holds."""
    ds = load_folder(SAMPLE_DIR)
    ds.source = (f"bundled sample: {len(ds.train_x):,} genuine MNIST training images, "
                 f"full {len(ds.test_x):,}-image test set")
    return ds
