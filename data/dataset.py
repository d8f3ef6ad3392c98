"""What a loader returns, and the one error every data problem raises."""
from dataclasses import dataclass, field

import numpy as np


class DataError(Exception):
    """A data file is missing, corrupt or untrusted. The message is one line
    naming the file, what is wrong and the fix."""


@dataclass
class Dataset:
    name: str              # "MNIST" or "CIFAR10"
    train_x: np.ndarray    # float32 (N, C, H, W) in [0, 1]
    train_y: np.ndarray    # int32 (N,), 0..9
    test_x: np.ndarray
    test_y: np.ndarray
    source: str            # one line for humans: which data this is
    files: list = field(default_factory=list)  # the files actually read


def one_line(text):
    """``text`` (often a quoted exception) on one line, to go inside a DataError."""
    return " ".join(str(text).split())


def to_float_images(images):
    """uint8 (N, H, W) or (N, C, H, W) -> float32 NCHW in [0, 1]."""
    x = images if images.ndim == 4 else images[:, None]
    return np.ascontiguousarray(x, dtype=np.float32) / np.float32(255)


def check_labels(labels, count, path, fix):
    """Labels must be integers, one per image, within 0..9."""
    try:
        labels = np.asarray(labels)
        found = f"{labels.dtype} of shape {labels.shape}"
    except (ValueError, TypeError):
        labels, found = None, "nested sequences of different lengths"
    if labels is None or labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DataError(f"{path}: labels must be a 1-D sequence of integers, got {found}; {fix}")
    if len(labels) != count:
        raise DataError(f"{path}: {len(labels)} labels for {count} images; {fix}")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{path}: labels must be 0..9, found {labels.min()}..{labels.max()}; {fix}")
    return labels.astype(np.int32)
