"""Reading ``.npz`` files from outside, bounded: each array's header is read
and checked (plain numeric dtype, no pickled objects, size within a limit)
before any of its data, and then exactly the bytes it declares are read, so
a header declaring billions of elements or a member that inflates to
gigabytes is refused with one line and little memory."""
import os
import zipfile
import zlib

import numpy as np

from .dataset import DataError, one_line


def _header(f):
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(f)
    raise ValueError(f"npy format version {version} is not supported")


def read_member(z, key, path, fix, max_bytes):
    """The array ``key`` of the open ZipFile ``z`` (of ``path``)."""
    try:
        with z.open(key + ".npy") as f:
            shape, fortran, dtype = _header(f)
            if dtype.hasobject or dtype.kind not in "biufUS":
                raise DataError(f"{path}: {key} holds {dtype} values (only numbers are accepted, never "
                                f"pickled objects); {fix}")
            size = int(np.prod(shape, dtype=object)) * dtype.itemsize
            if size > max_bytes:
                raise DataError(f"{path}: {key} declares {'x'.join(map(str, shape))} {dtype} = {size:,} bytes, "
                                f"over the limit of {max_bytes:,}; {fix}")
            data = f.read(size + 1)
    except DataError:
        raise
    except KeyError:
        raise DataError(f"{path}: has no array {key}; {fix}") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError) as e:
        raise DataError(f"{path}: unreadable ({key}: {one_line(e)}); {fix}") from None
    if len(data) != size:
        what = "truncated" if len(data) < size else "longer than its header says"
        raise DataError(f"{path}: unreadable ({key} is {what}); {fix}")
    return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")


def read_npz(path, keys, fix, max_bytes, optional=()):
    """{key: array} of ``keys`` (and those of ``optional`` that exist) from
    ``path``; each array at most ``max_bytes``, the file too."""
    try:
        cap = max_bytes * (len(keys) + len(optional)) + (1 << 20)
        if os.path.getsize(path) > cap:
            raise DataError(f"{path}: {os.path.getsize(path):,} bytes, over the limit of {cap:,}; {fix}")
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
            wanted = list(keys) + [k for k in optional if k + ".npy" in names]
            return {key: read_member(z, key, path, fix, max_bytes) for key in wanted}
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise DataError(f"{path}: unreadable ({one_line(getattr(e, 'strerror', None) or e)}); {fix}") from None
