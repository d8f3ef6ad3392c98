"""CIFAR-10 and CIFAR-100, the python versions: pickled batches, each a dict
with ``data`` (N x 3072 uint8; the R, G, B 32x32 planes one after another)
and the labels (``labels``; CIFAR-100: ``fine_labels``), in
``<data_dir>/cifar10/`` (``cifar100/``) or its tarball's subfolder. When
missing they are downloaded as the published tarball, MD5-checked, and
unpacked safely (:mod:`fxnn.data.tarball`). Batches load only with a restricted
unpickler, and only when no larger than a genuine one."""
import os
import pickle
from dataclasses import dataclass

import numpy as np

from . import safe_pickle
from .dataset import DataError, Dataset, check_labels, to_float_images
from .download import DownloadError, RemoteFile, download_files, file_md5, matches, mirrors
from .tarball import extract

PAGE = "https://www.cs.toronto.edu/~kriz/cifar.html"
MIRRORS_ENV = "FXNN_CIFAR_MIRRORS"
MIRRORS = ("https://www.cs.toronto.edu/~kriz/",)
PIXELS = 3072
#: The most file bytes a batch needs per image: the pixels (twice: a batch re-saved by Python 3
#: with protocol 2 spells them as UTF-8 text, which takes up to 2 bytes a byte), label, file name.
PER_IMAGE_BYTES = 2 * PIXELS + 128


@dataclass(frozen=True)
class CifarSource:
    name: str
    title: str
    folder: str          # its subfolder of the data directory
    subfolder: str       # the tarball's folder
    train: tuple         # batch file names
    test: str
    label_key: str
    num_classes: int
    batch_images: dict   # the most images a batch of each kind holds
    remote: RemoteFile

    def max_file_bytes(self, name):
        count = self.batch_images["test" if name == self.test else "train"]
        return count * PER_IMAGE_BYTES + (1 << 20)


CIFAR10 = CifarSource("CIFAR10", "CIFAR-10", "cifar10", "cifar-10-batches-py",
                      tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "labels", 10,
                      {"train": 10000, "test": 10000},
                      RemoteFile("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a", 200_000_000))
CIFAR100 = CifarSource("CIFAR100", "CIFAR-100", "cifar100", "cifar-100-python", ("train",), "test",
                       "fine_labels", 100, {"train": 50000, "test": 10000},
                       RemoteFile("cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85", 200_000_000))
# CIFAR-10's names, as earlier versions of this module had them
TRAIN, TEST = CIFAR10.train, CIFAR10.test


def find_folder(base, source):
    """The folder under ``base`` holding the batches, or None."""
    for folder in (base, os.path.join(base, source.subfolder)):
        if os.path.isfile(os.path.join(folder, source.train[0])):
            return folder
    return None


def read_batch(path, source=CIFAR10):
    """(uint8 images (N, 3, 32, 32), int32 labels) of one batch file."""
    fix = f"delete it and run again to unpack or download it again (the python version at {PAGE})"
    if not os.path.isfile(path):
        raise DataError(f"{path}: missing; {fix}")
    limit = source.max_file_bytes(os.path.basename(path))
    if os.path.getsize(path) > limit:
        raise DataError(f"{path}: {os.path.getsize(path):,} bytes, more than the {limit:,} of a genuine "
                        f"{source.title} batch; {fix}")
    batch = safe_pickle.load(path, fix=fix)
    if not isinstance(batch, dict):
        raise DataError(f"{path}: not a {source.title} batch (a {type(batch).__name__}, not a dict); {fix}")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    missing = [k for k in ("data", source.label_key) if k not in batch]
    if missing:
        raise DataError(f"{path}: not a {source.title} batch (no {' or '.join(missing)} key); {fix}")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != PIXELS:
        shape = getattr(data, "shape", type(data).__name__)
        raise DataError(f"{path}: data must be uint8 N x 3072 (32x32 RGB planes), got {shape}; {fix}")
    labels = check_labels(batch[source.label_key], len(data), path, fix, source.num_classes)
    return data.reshape(-1, 3, 32, 32), labels


def fetch_and_unpack(base, source, download, log):
    """Unpack ``source``'s tarball into ``base``, downloading it first when it
    is not there; DataError with the fix when that is impossible."""
    tar = os.path.join(base, source.remote.name)
    by_hand = (f"or download the python version ({source.remote.name}) from {PAGE} into {base}")
    if not os.path.isfile(tar):
        if not download:
            raise DataError(f"{source.title} not found in {base}: run without --no-download to download it, "
                            f"{by_hand}")
        try:
            download_files(base, [source.remote], mirrors(MIRRORS_ENV, MIRRORS), log)
        except DownloadError as e:
            raise DataError(f"{source.title} not found in {base} and the download failed ({e}); "
                            f"{by_hand}") from None
    else:
        md5 = file_md5(tar)
        if not matches(tar, md5, source.remote):
            raise DataError(f"{tar}: MD5 {md5} is not the published {source.remote.md5}; "
                            f"delete it and run again to download it")
    log(f"Unpacking {tar} ...")
    names = source.train + (source.test,)
    largest = max(source.max_file_bytes(n) for n in names)
    extract(tar, base, max_member=largest, max_total=sum(source.max_file_bytes(n) for n in names) + largest,
            fix=f"delete it and run again to download it, {by_hand}")


def load(data_dir, source=CIFAR10, download=True, log=print):
    base = os.path.join(data_dir, source.folder)
    names = source.train + (source.test,)
    folder = find_folder(base, source)
    if folder is None or not all(os.path.isfile(os.path.join(folder, n)) for n in names):
        fetch_and_unpack(base, source, download, log)
        folder = find_folder(base, source)
        if folder is None:
            raise DataError(f"{os.path.join(base, source.remote.name)}: holds no {source.train[0]}; "
                            f"delete it and run again, or download the python version from {PAGE}")
    paths = [os.path.join(folder, name) for name in names]
    batches = [read_batch(p, source) for p in paths]
    train_x = np.concatenate([b[0] for b in batches[:-1]])
    train_y = np.concatenate([b[1] for b in batches[:-1]])
    test_x, test_y = batches[-1]
    return Dataset(source.name, to_float_images(train_x), train_y, to_float_images(test_x), test_y,
                   source=f"{source.title} from {folder}: {len(train_x):,} training and {len(test_x):,} "
                          f"test images", files=paths, num_classes=source.num_classes)


def write_batch(path, data, labels, label_key="labels"):
    """Write one batch in the site's format (pickle protocol 2, bytes keys);
    for tests and benchmarks, which have no CIFAR offline."""
    batch = {b"batch_label": os.path.basename(path).encode(), label_key.encode(): [int(v) for v in labels],
             b"data": np.ascontiguousarray(data, dtype=np.uint8), b"filenames": [b"img.png"] * len(labels)}
    if label_key == "fine_labels":
        batch[b"coarse_labels"] = [int(v) // 5 for v in labels]
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)
