"""The MNIST idx file format: big-endian header (magic, dimensions), then
uint8 data. Files may be gzipped (``.gz``).

Reading is bounded: the header is read first and checked against what a
legitimate file of the dataset can hold (``max_shape``), and then exactly the
bytes it declares (and one more, to notice a longer file) are read, so a
header declaring a billion images or a gzip that inflates to gigabytes is
refused without reading it.
"""
import gzip
import hashlib
import zlib

import numpy as np

from .dataset import DataError, one_line

IMAGES_MAGIC = 2051  # 0x00000803: uint8, 3 dimensions
LABELS_MAGIC = 2049  # 0x00000801: uint8, 1 dimension
#: The largest idx file of MNIST and Fashion-MNIST: 60,000 images of 28x28.
MNIST_SHAPES = {IMAGES_MAGIC: (60000, 28, 28), LABELS_MAGIC: (60000,)}


def _read_exactly(f, size, path, what, fix):
    data = f.read(size)
    if len(data) < size:
        raise DataError(f"{path}: truncated {what}; {fix}")
    return data


def read_idx_raw(path, magic, fix, max_shape=None):
    """(array, MD5 of the decompressed bytes) of an idx file; ``max_shape``
    (default :data:`MNIST_SHAPES` for the magic) bounds the first dimension
    and fixes the others."""
    max_shape = tuple(max_shape or MNIST_SHAPES[magic])
    kind = "image" if magic == IMAGES_MAGIC else "label"
    try:
        opener = gzip.open if str(path).endswith(".gz") else open
        with opener(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4:
                raise DataError(f"{path}: truncated idx file ({len(head)} bytes); {fix}")
            found = int.from_bytes(head, "big")
            if found != magic:
                raise DataError(f"{path}: not an idx {kind} file (magic number {found}, expected {magic}); {fix}")
            dims_raw = _read_exactly(f, 4 * head[3], path, "idx header", fix)
            dims = tuple(int.from_bytes(dims_raw[4 * i:4 * i + 4], "big") for i in range(head[3]))
            shape_text = "x".join(map(str, dims))
            if len(dims) != len(max_shape) or dims[1:] != max_shape[1:]:
                expected = "x".join(["N"] + [str(d) for d in max_shape[1:]])
                raise DataError(f"{path}: header says {shape_text}, expected {expected}; {fix}")
            if dims[0] > max_shape[0]:
                raise DataError(f"{path}: header declares {dims[0]:,} {kind}s, more than the {max_shape[0]:,} "
                                f"this dataset has; {fix}")
            expected = int(np.prod(dims))
            data = f.read(expected + 1)
    except DataError:
        raise
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataError(f"{path}: corrupt or truncated gzip file ({one_line(e)}); {fix}") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read it ({e.strerror or e}); {fix}") from None
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "longer than its header says"
        raise DataError(f"{path}: {what} (header says {shape_text} = {expected} bytes of data); {fix}")
    digest = hashlib.md5(head + dims_raw + data).hexdigest()
    return np.frombuffer(data, dtype=np.uint8).reshape(dims), digest


def read_idx(path, magic, fix, max_shape=None):
    """The array in the idx file ``path``; ``magic`` is the expected magic number."""
    return read_idx_raw(path, magic, fix, max_shape)[0]


def write_idx(path, array):
    """Write a uint8 array as an idx file, gzipped when the name ends in .gz
    (for the bundled sample's script and for tests)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())
