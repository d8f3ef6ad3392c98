"""Datasets for fxnn: MNIST (downloaded, or the bundled sample), Fashion-MNIST,
CIFAR-10 and CIFAR-100 (downloaded), and your own ``.npz``.

``load_dataset(name, data_dir)`` returns a :class:`Dataset` of float32 NCHW
images and int32 labels, or raises :class:`DataError` with one line naming
the file and the fix. ``dataset_arg`` turns a ``-d`` value into a built-in
name or an ``.npz`` path.
"""
import os

from . import cifar, mnist, npz_dataset
from .dataset import DataError, Dataset
from .download import DETAIL_ENV, DownloadError, download_files, mirrors

__all__ = ["DATASETS", "DataError", "Dataset", "dataset_arg", "dataset_label", "load_dataset"]

#: The built-in datasets, as records name them (``-d`` is case-insensitive).
DATASETS = ("MNIST", "FashionMNIST", "CIFAR10", "CIFAR100")


def dataset_arg(text):
    """A built-in name (any case) or the path of an existing ``.npz``;
    ValueError naming both otherwise."""
    for name in DATASETS:
        if text.upper() == name.upper():
            return name
    if os.path.isfile(text):
        return text
    if os.path.isdir(text):
        raise ValueError(f"{text!r} is a folder, not a dataset: give a built-in dataset ({', '.join(DATASETS)}) "
                         f"and the folder that holds its files as --data-dir {text}, or your own .npz file")
    raise ValueError(f"{text!r} is neither a built-in dataset ({', '.join(DATASETS)}) nor an existing file "
                     f"(your own data: {npz_dataset.FORMAT})")


def dataset_label(dataset):
    """The short name of a ``-d`` value, for file names: a built-in name, or
    the ``.npz`` file's name without its extension."""
    return dataset if dataset in DATASETS else os.path.splitext(os.path.basename(dataset))[0]


def load_idx_dataset(source, data_dir, download, log):
    """MNIST or Fashion-MNIST from ``<data_dir>/<folder>/``, else the system
    package's folder; files missing there are downloaded."""
    folder = os.path.join(data_dir, source.folder)
    try:
        return mnist.load_folder(folder, source)
    except mnist.MissingData as e:
        missing = e
    if missing.none:
        for system in source.system_folders:
            if mnist.has_files(system):
                return mnist.load_folder(system, source)
    if not download:
        raise missing
    download_files(folder, source.remote, mirrors(source.mirrors_env, source.mirrors), log)
    return mnist.load_folder(folder, source)


def load_mnist(data_dir, download=True, log=print):
    """MNIST from ``<data_dir>/mnist/``; files missing there are downloaded;
    the bundled sample when the folder has none and that is impossible or
    ``download`` is False (said in one short line)."""
    folder = os.path.join(data_dir, "mnist")
    try:
        return load_idx_dataset(mnist.MNIST, data_dir, download, log)
    except DownloadError as e:
        if mnist.locate(folder):  # some files are there: the user meant this data, not the sample
            raise DataError(f"{folder}: {e}; put the missing files there") from None
        detail = f": {e}" if os.environ.get(DETAIL_ENV) == "1" else f" ({DETAIL_ENV}=1 says why)"
        reason = f"the download failed{detail}"
    except mnist.MissingData as e:
        if not e.none:
            raise
        reason = "downloading is off"
    sample = mnist.load_sample()
    log(f"MNIST not in {folder} and {reason}; using the bundled sample of {len(sample.train_x):,} training images, "
        f"not full MNIST.")
    return sample


def load_dataset(name, data_dir, download=True, log=print):
    """The dataset ``name`` (a DATASETS name or an .npz path); DataError when
    it cannot be had or has no training or no test images."""
    dataset = _load(name, data_dir, download, log)
    for split, x in (("training", dataset.train_x), ("test", dataset.test_x)):
        if len(x) == 0:
            raise DataError(f"{'; '.join(dataset.files)}: no {split} images; put a complete copy of "
                            f"{dataset.name} there")
    return dataset


def _load(name, data_dir, download, log):
    if name == "MNIST":
        return load_mnist(data_dir, download, log)
    if name == "FashionMNIST":
        try:
            return load_idx_dataset(mnist.FASHION_MNIST, data_dir, download, log)
        except mnist.MissingData as e:
            raise DataError(f"{e} (downloading is off: run without --no-download to download it)") from None
        except DownloadError as e:
            folder = os.path.join(data_dir, mnist.FASHION_MNIST.folder)
            raise DataError(f"Fashion-MNIST not found in {folder} and the download failed ({e}); put its four "
                            f"files there (Debian: apt install dataset-fashion-mnist)") from None
    if name == "CIFAR10":
        return cifar.load(data_dir, cifar.CIFAR10, download, log)
    if name == "CIFAR100":
        return cifar.load(data_dir, cifar.CIFAR100, download, log)
    return npz_dataset.load(name)
