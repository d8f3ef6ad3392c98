"""MNIST and Fashion-MNIST, which share a format: the four idx files of
:data:`FILES` (gzipped or not) in a folder, or for MNIST the fast
``mnist.npz`` made by ``mnist_pickler.py`` when present."""
import os
from dataclasses import dataclass

import numpy as np

from .dataset import DataError, Dataset, check_labels, to_float_images
from .download import RemoteFile
from .idx import IMAGES_MAGIC, LABELS_MAGIC, MNIST_SHAPES, read_idx_raw
from .npz import read_npz

#: (key, idx file name, magic) of the four standard files.
FILES = (
    ("train_x", "train-images-idx3-ubyte", IMAGES_MAGIC),
    ("train_y", "train-labels-idx1-ubyte", LABELS_MAGIC),
    ("test_x", "t10k-images-idx3-ubyte", IMAGES_MAGIC),
    ("test_y", "t10k-labels-idx1-ubyte", LABELS_MAGIC),
)
NPZ = "mnist.npz"
IMAGE_SHAPE = (28, 28)
#: The most images a file of either dataset holds.
MAX_COUNT = {"train": 60000, "test": 10000}
SAMPLE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "image", "mnist-sample")


@dataclass(frozen=True)
class IdxSource:
    """Where an idx dataset lives and where it is downloaded from."""
    name: str             # the dataset's name in records and on the command line
    title: str            # for humans
    folder: str           # its subfolder of the data directory
    mirrors_env: str      # environment variable replacing ``mirrors``
    mirrors: tuple        # base URLs, tried in order
    remote: tuple         # a RemoteFile per file, in the order of FILES
    system_folders: tuple = ()  # where a system package installs it, looked in when the folder has none


def _remote(name, md5, size, raw_md5="", raw_size=0):
    return RemoteFile(name, md5, 2 * size, raw_md5, raw_size)


MNIST = IdxSource("MNIST", "MNIST", "mnist", "FXNN_MNIST_MIRRORS", (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
), (
    _remote("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873", 9912422),
    _remote("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432", 28881),
    _remote("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3", 1648877),
    _remote("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c", 4542),
))
#: The published files' MD5s (Zalando's README), and those of their
#: decompressed bytes, which Debian's recompressed copy shares.
FASHION_MNIST = IdxSource("FashionMNIST", "Fashion-MNIST", "fashion-mnist", "FXNN_FASHION_MNIST_MIRRORS", (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
), (
    _remote("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d", 26421880,
            "f4a8712d7a061bf5bd6d2ca38dc4d50a", 47040016),
    _remote("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe", 29515,
            "9018921c3c673c538a1fc5bad174d6f9", 60008),
    _remote("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79", 4422102,
            "8181f5470baa50b63fa0f6fddb340f0a", 7840016),
    _remote("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310", 5148,
            "15d484375f8d13e6eb1aabb0c3f46965", 10008),
), system_folders=("/usr/share/datasets/fashion-mnist",))  # Debian's package dataset-fashion-mnist


class MissingData(DataError):
    """Some of the dataset's files are not there (as opposed to broken ones);
    ``none`` is True when not one of them is."""

    def __init__(self, message, none):
        super().__init__(message)
        self.none = none


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


def has_files(folder):
    return bool(locate(folder)) or os.path.isfile(os.path.join(folder, NPZ))


def max_shape(key, magic):
    count = MAX_COUNT[key.split("_")[0]]
    return (count,) + MNIST_SHAPES[magic][1:]


def read_idx_files(folder, fix, title="MNIST"):
    """({key: uint8 array}, [paths], {key: MD5 of the decompressed file}) of
    the four idx files; MissingData when any is absent."""
    paths = locate(folder)
    if not paths:
        raise MissingData(f"no {title} idx files in {folder}; {fix}", none=True)
    missing = [name for key, name, _ in FILES if key not in paths]
    if missing:
        raise MissingData(f"{folder}: {', '.join(missing)} (or .gz) missing; {fix}", none=False)
    arrays, digests = {}, {}
    for key, _, magic in FILES:
        arrays[key], digests[key] = read_idx_raw(paths[key], magic, fix, max_shape(key, magic))
    return arrays, [paths[key] for key, _, _ in FILES], digests


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


def load_folder(folder, source=None):
    """``source``'s dataset (default MNIST) from ``folder``; raises MissingData when files are absent."""
    source = source or MNIST
    npz = os.path.join(folder, NPZ)
    verified = ""
    if source is MNIST and os.path.isfile(npz):
        fix = f"delete {npz} and run mnist_pickler.py again"
        limit = MAX_COUNT["train"] * 28 * 28
        arrays = read_npz(npz, [key for key, _, _ in FILES], fix, limit)
        names, files = {key: npz for key, _, _ in FILES}, [npz]
    else:
        fix = f"delete it and run again to download it, or put a good copy in {folder}"
        arrays, files, digests = read_idx_files(folder, fix, source.title)
        names = dict(zip((key for key, _, _ in FILES), files))
        if all(r.raw_md5 and r.raw_md5 == digests[key] for (key, _, _), r in zip(FILES, source.remote)):
            verified = " (the published files, by the MD5s of their decompressed bytes)"
    fields = validate(arrays, names, fix)
    n_train, n_test = len(fields["train_x"]), len(fields["test_x"])
    return Dataset(source.name, source=f"{source.title} from {folder}: {n_train:,} training and "
                   f"{n_test:,} test images{verified}", files=files, **fields)


def load_sample():
    """The bundled sample, its source line counting what it holds."""
    ds = load_folder(SAMPLE_DIR)
    ds.source = (f"bundled sample: {len(ds.train_x):,} genuine MNIST training images, "
                 f"full {len(ds.test_x):,}-image test set")
    return ds
