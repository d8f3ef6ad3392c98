"""The MNIST idx file format: big-endian header (magic, dimensions), then
uint8 data. Files may be gzipped (``.gz``)."""
import gzip
import zlib

import numpy as np

from .dataset import DataError, one_line

IMAGES_MAGIC = 2051  # 0x00000803: uint8, 3 dimensions
LABELS_MAGIC = 2049  # 0x00000801: uint8, 1 dimension


def read_bytes(path, fix):
    """The file's bytes, un-gzipped when the name ends in .gz."""
    try:
        if str(path).endswith(".gz"):
            with gzip.open(path, "rb") as f:
                return f.read()
        with open(path, "rb") as f:
            return f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataError(f"{path}: corrupt or truncated gzip file ({one_line(e)}); {fix}") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read it ({e.strerror or e}); {fix}") from None


def parse_idx(raw, path, magic, fix):
    """The array in idx bytes ``raw``; ``magic`` is the expected magic number."""
    if len(raw) < 4:
        raise DataError(f"{path}: truncated idx file ({len(raw)} bytes); {fix}")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise DataError(f"{path}: not an idx {'image' if magic == IMAGES_MAGIC else 'label'} file "
                        f"(magic number {found}, expected {magic}); {fix}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated idx header; {fix}")
    dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        what = "truncated" if len(raw) - header < expected else "longer than its header says"
        raise DataError(f"{path}: {what} (header says {'x'.join(map(str, dims))} = {expected} bytes of "
                        f"data, file has {len(raw) - header}); {fix}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def read_idx(path, magic, fix):
    return parse_idx(read_bytes(path, fix), path, magic, fix)


def write_idx(path, array):
    """Write a uint8 array as an idx file, gzipped when the name ends in .gz
    (for the bundled sample's script and for tests)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())
