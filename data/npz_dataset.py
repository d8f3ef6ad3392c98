"""Your own dataset: ``-d path/to/data.npz`` holding ``x_train``, ``y_train``,
``x_test``, ``y_test`` (and optionally ``layout``, "NCHW" or "NHWC").

Images are uint8 (scaled to [0, 1]) or float (used as they are), (N, H, W)
for one channel or 4-D: NCHW, or NHWC when ``layout`` says so or, without it,
when the last axis is shorter than the second (e.g. (N, 32, 32, 3)). Labels
are integers 0..K-1; the class count K is the largest label plus one. The
file is read without pickle (:mod:`fxnn.data.npz`), each image array at most
:func:`limit_bytes` as float32.
"""
import os

import numpy as np

from .dataset import DataError, Dataset, check_labels
from .npz import limit_from_env, read_npz

KEYS = ("x_train", "y_train", "x_test", "y_test")
MAX_CLASSES = 10000
LIMIT_ENV = "FXNN_NPZ_LIMIT_MB"
DEFAULT_LIMIT_MB = 8192
FORMAT = "an .npz with x_train, y_train, x_test, y_test (docs/data.md)"


def limit_bytes():
    return limit_from_env(LIMIT_ENV, DEFAULT_LIMIT_MB)


def as_nchw(x, layout, path, key, fix):
    """float32 NCHW of the image array ``x``."""
    if x.dtype.kind not in "uf" or (x.dtype.kind == "u" and x.dtype != np.uint8):
        raise DataError(f"{path}: {key} must hold uint8 or float images, got {x.dtype}; {fix}")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4:
        if layout == "NHWC" or (layout is None and x.shape[3] < x.shape[1]):
            x = x.transpose(0, 3, 1, 2)
    else:
        raise DataError(f"{path}: {key} must be 3-D (N, H, W) or 4-D (NCHW or NHWC), got shape "
                        f"{'x'.join(map(str, x.shape))}; {fix}")
    if len(x) == 0 or 0 in x.shape:
        raise DataError(f"{path}: {key} holds no images (shape {'x'.join(map(str, x.shape))}); {fix}")
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x, dtype=np.float32) / np.float32(255)
    out = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(out).all():
        raise DataError(f"{path}: {key} holds NaN or infinite values (or values beyond float32); {fix}")
    return out


def read_layout(arrays, path, fix):
    if "layout" not in arrays:
        return None
    value = arrays["layout"]
    layout = str(value.reshape(())) if value.size == 1 and value.dtype.kind in "US" else None
    if layout in ("b'NCHW'", "b'NHWC'"):
        layout = layout[2:-1]
    if layout not in ("NCHW", "NHWC"):
        raise DataError(f"{path}: layout must be the string NCHW or NHWC; {fix}")
    return layout


def load(path):
    fix = f"make it {FORMAT}"
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file; {fix}")
    arrays = read_npz(path, KEYS, fix, limit_bytes() // 4, optional=("layout",))
    layout = read_layout(arrays, path, fix)
    x = {split: as_nchw(arrays[f"x_{split}"], layout, path, f"x_{split}", fix) for split in ("train", "test")}
    if x["train"].shape[1:] != x["test"].shape[1:]:
        raise DataError(f"{path}: x_train images are {'x'.join(map(str, x['train'].shape[1:]))} (CxHxW) but x_test "
                        f"images {'x'.join(map(str, x['test'].shape[1:]))}; {fix}")
    y = {split: check_labels(arrays[f"y_{split}"], len(x[split]), f"{path}: y_{split}", fix, MAX_CLASSES)
         for split in ("train", "test")}
    num_classes = int(max(y["train"].max(), y["test"].max())) + 1
    if num_classes < 2:
        raise DataError(f"{path}: the labels hold a single class; {fix}")
    c, h, w = x["train"].shape[1:]
    name = os.path.splitext(os.path.basename(path))[0]
    return Dataset(name, x["train"], y["train"], x["test"], y["test"],
                   source=f"{path}: {len(x['train']):,} training and {len(x['test']):,} test images of "
                          f"{c}x{h}x{w}, {num_classes} classes",
                   files=[os.path.abspath(path)], num_classes=num_classes)
