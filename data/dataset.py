"""What a loader returns, and the one error every data problem raises."""
from dataclasses import dataclass, field
from typing import Optional

import numpy as np


class DataError(Exception):
    """A data file is missing, corrupt or untrusted. The message is one line
    naming the file, what is wrong and the fix."""


@dataclass
class Dataset:
    name: str              # "MNIST", "FashionMNIST", "CIFAR10", "CIFAR100" or a .npz file's name
    train_x: np.ndarray    # float32 (N, C, H, W); [0, 1] for uint8 sources
    train_y: np.ndarray    # int32 (N,), 0..num_classes-1
    test_x: np.ndarray
    test_y: np.ndarray
    source: str            # one line for humans: which data this is
    files: list = field(default_factory=list)  # the files actually read
    num_classes: int = 10
    valid_x: Optional[np.ndarray] = None  # a split held out of the training set (data.split)
    valid_y: Optional[np.ndarray] = None
    valid_set: str = "the test set"       # what the validation curves were measured on

    def validation(self):
        """(x, y) the run validates on: the held-out split, else the test set
        (the original's behaviour)."""
        if self.valid_x is None:
            return self.test_x, self.test_y
        return self.valid_x, self.valid_y

    def meta(self):
        """The record's description of this data (docs/records.md)."""
        return {"data_source": self.source, "data_files": "; ".join(self.files),
                "num_classes": self.num_classes, "image_shape": np.asarray(self.train_x.shape[1:], dtype=np.float64),
                "train_images": len(self.train_x), "valid_images": len(self.validation()[0]),
                "test_images": len(self.test_x), "valid_set": self.valid_set}


def one_line(text):
    """``text`` (often a quoted exception) on one line, to go inside a DataError."""
    return " ".join(str(text).split())


def to_float_images(images):
    """uint8 (N, H, W) or (N, C, H, W) -> float32 NCHW in [0, 1]."""
    x = images if images.ndim == 4 else images[:, None]
    return np.ascontiguousarray(x, dtype=np.float32) / np.float32(255)


def check_labels(labels, count, path, fix, num_classes=10):
    """Labels must be integers, one per image, within 0..num_classes-1. A list
    is checked element by element before numpy sees it, so nested lists or
    long strings cannot make numpy build a huge array."""
    if isinstance(labels, (list, tuple)):
        if len(labels) != count:
            raise DataError(f"{path}: {len(labels)} labels for {count} images; {fix}")
        odd = next((v for v in labels if not isinstance(v, (int, np.integer)) or isinstance(v, bool)), None)
        if odd is not None:
            raise DataError(f"{path}: labels must be a 1-D sequence of integers, found a "
                            f"{type(odd).__name__}; {fix}")
        try:
            labels = np.array(labels, dtype=np.int64)
        except OverflowError:
            raise DataError(f"{path}: labels must be 0..{num_classes - 1}, found a huge integer; {fix}") from None
    if not isinstance(labels, np.ndarray) or labels.ndim != 1 or labels.dtype.kind not in "iu":
        found = (f"{labels.dtype} of shape {labels.shape}" if isinstance(labels, np.ndarray)
                 else f"a {type(labels).__name__}")
        raise DataError(f"{path}: labels must be a 1-D sequence of integers, got {found}; {fix}")
    if len(labels) != count:
        raise DataError(f"{path}: {len(labels)} labels for {count} images; {fix}")
    if labels.size and (labels.min() < 0 or labels.max() > num_classes - 1):
        raise DataError(f"{path}: labels must be 0..{num_classes - 1}, found {labels.min()}..{labels.max()}; {fix}")
    return labels.astype(np.int32)
