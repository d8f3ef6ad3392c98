"""Reading ``.npz`` files from outside, bounded: the zip's directory is
checked (at most :data:`MAX_MEMBERS` entries, no encrypted member), each
array's header is read and checked (plain numeric dtype, no pickled objects,
every dimension a non-negative integer, size within a limit) before any of
its data, and then exactly the bytes it declares are read, so a header
declaring billions (or a negative number) of elements or a member that
inflates to gigabytes is refused with one line and little memory."""
import os
import struct
import zipfile
import zlib

import numpy as np

from .dataset import DataError, one_line

#: The most entries a data file's zip directory may list (zipfile reads the
#: whole directory into memory before anything else).
MAX_MEMBERS = 1000


def _header(f):
    try:
        return _parse_header(f)
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error, RuntimeError, NotImplementedError):
        raise
    except Exception as e:  # numpy parses the header dict with ast and tokenize, which raise many kinds
        raise ValueError(f"its npy header is malformed ({type(e).__name__}: {one_line(e)[:120]})") from None


def _parse_header(f):
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(f)
    raise ValueError(f"npy format version {version} is not supported")


def declared_size(shape, itemsize):
    """The bytes of an array of ``shape`` and ``itemsize``, computed exactly;
    ValueError naming the fault unless every dimension is a plain
    non-negative integer (``True`` is not one)."""
    if not isinstance(shape, tuple) or len(shape) > 32:
        raise ValueError(f"its shape {one_line(repr(shape))[:80]} is not a tuple of at most 32 dimensions")
    for d in shape:
        if type(d) is not int or d < 0:
            raise ValueError(f"its shape {one_line(repr(shape))[:80]} has a dimension that is not a "
                             f"non-negative integer")
        if d >= 2**62:
            raise ValueError(f"its shape {one_line(repr(shape))[:80]} has a dimension too large for any array")
    count = 1
    for d in shape:
        count *= d
    return count * itemsize


def limit_from_env(name, default_mb):
    """Bytes from the environment variable ``name`` (megabytes, a positive
    number; unset or empty: ``default_mb``); DataError on any other value."""
    text = os.environ.get(name, "").strip()
    if not text:
        return int(default_mb * 2**20)
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (0 < value < 2**40):
        raise DataError(f"{name}={text[:40]!r} is not a size in megabytes; set it to a positive number "
                        f"such as {default_mb} (the default), or unset it")
    return int(value * 2**20)


def read_member(z, key, path, fix, max_bytes):
    """The array ``key`` of the open ZipFile ``z`` (of ``path``)."""
    try:
        info = z.getinfo(key + ".npy")
        if info.flag_bits & 0x1:
            raise DataError(f"{path}: {key} is encrypted (a data file never needs a password); {fix}")
        with z.open(info) as f:
            shape, fortran, dtype = _header(f)
            if dtype.hasobject or dtype.kind not in "biufUS" or dtype.itemsize == 0:
                raise DataError(f"{path}: {key} holds {dtype} values (only numbers are accepted, never "
                                f"pickled objects); {fix}")
            try:
                size = declared_size(shape, dtype.itemsize)
            except ValueError as e:
                raise DataError(f"{path}: {key}: {e}; {fix}") from None
            if size > max_bytes:
                raise DataError(f"{path}: {key} declares {'x'.join(map(str, shape))} {dtype} = {size:,} bytes, "
                                f"over the limit of {max_bytes:,}; {fix}")
            data = f.read(size + 1)
    except DataError:
        raise
    except KeyError:
        raise DataError(f"{path}: has no array {key}; {fix}") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError,
            SyntaxError, TypeError, MemoryError) as e:
        raise DataError(f"{path}: unreadable ({key}: {one_line(e)}); {fix}") from None
    if len(data) != size:
        what = "truncated" if len(data) < size else "longer than its header says"
        raise DataError(f"{path}: unreadable ({key} is {what}); {fix}")
    return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")


def _check_directory(path, fix):
    """Refuse a zip whose directory lists more than MAX_MEMBERS entries
    before zipfile reads it whole."""
    find = getattr(zipfile, "_EndRecData", None)
    if find is None:
        return
    with open(path, "rb") as f:
        end = find(f)
    if end is None:
        raise zipfile.BadZipFile("File is not a zip file")
    entries = end[zipfile._ECD_ENTRIES_TOTAL]
    if entries > MAX_MEMBERS or end[zipfile._ECD_SIZE] > MAX_MEMBERS * 1024:
        raise DataError(f"{path}: its zip directory lists {entries:,} entries ({end[zipfile._ECD_SIZE]:,} bytes), "
                        f"more than the {MAX_MEMBERS} a data file may hold; {fix}")


def read_npz(path, keys, fix, max_bytes, optional=()):
    """{key: array} of ``keys`` (and those of ``optional`` that exist) from
    ``path``; each array at most ``max_bytes``, the file too."""
    try:
        cap = max_bytes * (len(keys) + len(optional)) + (1 << 20)
        if os.path.getsize(path) > cap:
            raise DataError(f"{path}: {os.path.getsize(path):,} bytes, over the limit of {cap:,}; {fix}")
        _check_directory(path, fix)
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
            wanted = list(keys) + [k for k in optional if k + ".npy" in names]
            return {key: read_member(z, key, path, fix, max_bytes) for key in wanted}
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError,
            struct.error, MemoryError) as e:
        raise DataError(f"{path}: unreadable ({one_line(getattr(e, 'strerror', None) or e)}); {fix}") from None
