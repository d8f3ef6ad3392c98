"""Datasets for fxnn: MNIST (downloaded, or the bundled sample) and CIFAR-10.

``load_dataset(name, data_dir)`` returns a :class:`Dataset` of float32 NCHW
images in [0, 1] and int32 labels, or raises :class:`DataError` with one
line naming the file and the fix.
"""
import os

from . import cifar10, mnist
from .dataset import DataError, Dataset
from .download import DownloadError, download_mnist

__all__ = ["DataError", "Dataset", "load_dataset"]


def load_mnist(data_dir, download=True, log=print):
    """MNIST from ``<data_dir>/mnist/``; downloaded there when absent; the
    bundled sample when that is impossible or ``download`` is False."""
    folder = os.path.join(data_dir, "mnist")
    try:
        return mnist.load_folder(folder)
    except mnist.MissingData:
        pass
    if download:
        try:
            download_mnist(folder, log=log)
            return mnist.load_folder(folder)
        except DownloadError as e:
            reason = f"download failed: {e}"
    else:
        reason = "downloading is off"
    sample = mnist.load_sample()
    log(f"MNIST not found in {folder} ({reason}). Using the {sample.source}; "
        f"for full MNIST put its four files in {folder} or run once online.")
    return sample


def load_dataset(name, data_dir, download=True, log=print):
    if name == "MNIST":
        return load_mnist(data_dir, download, log)
    if name == "CIFAR10":
        return cifar10.load(data_dir)
    raise ValueError(f"unknown dataset {name!r}")
