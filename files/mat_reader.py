"""Reading ``.mat`` files from outside, bounded, in both layouts a record
can have (MATLAB v5 and v7.3, which is HDF5).

A file may declare anything: a compressed v5 variable of a few MB may
inflate to gigabytes, a v7.3 dataset of a few kB may declare gigabytes that
were never written, groups may link to themselves or to other files. So the
file is checked before its data is read:

* only the variables asked for are read; the others (a record's parameter
  snapshots) are skipped unread;
* a variable's declared size (elements times the size of its class) must be
  at most ``max_bytes`` before any of its data is read, and a compressed one
  is inflated only up to that many bytes;
* every element's size must fit in the element holding it (v5) and a
  numeric array's data must be exactly its declared size;
* nesting is at most :data:`MAX_DEPTH` deep and a variable holds at most
  :data:`MAX_ELEMENTS` elements (structs, cells, fields, datasets), so
  nothing recurses without bound and a self-link or a hard-link loop ends;
* only the classes a record holds are accepted (numbers, logicals, char,
  struct, cell); sparse arrays, objects, function handles, complex numbers,
  HDF5 references, variable-length or compound types are refused;
* HDF5 soft and external links, datasets stored in external files and
  virtual datasets are refused, never followed.

Every refusal is a :class:`MatError` whose message is one line (without the
file's name, which the caller adds). This module imports nothing of fxnn.
"""
import io
import struct
import warnings
import zlib

import numpy as np

MAX_DEPTH = 32
MAX_ELEMENTS = 100_000
#: A v5 variable, compressed or not, is at most this large (MATLAB's own
#: limit for the format): the bound of a read that names no ``max_bytes``.
V5_MAX_BYTES = 2**31 - 1
_HEADER = 128

_MI_INT8, _MI_UINT8, _MI_INT16, _MI_UINT16, _MI_INT32, _MI_UINT32 = 1, 2, 3, 4, 5, 6
_MI_SINGLE, _MI_DOUBLE, _MI_INT64, _MI_UINT64, _MI_MATRIX, _MI_COMPRESSED = 7, 9, 12, 13, 14, 15
_MI_UTF8, _MI_UTF16, _MI_UTF32 = 16, 17, 18
_MI_SIZE = {_MI_INT8: 1, _MI_UINT8: 1, _MI_INT16: 2, _MI_UINT16: 2, _MI_INT32: 4, _MI_UINT32: 4, _MI_SINGLE: 4,
            _MI_DOUBLE: 8, _MI_INT64: 8, _MI_UINT64: 8}
_MX_CELL, _MX_STRUCT, _MX_OBJECT, _MX_CHAR, _MX_SPARSE = 1, 2, 3, 4, 5
#: numeric classes: double, single, int8, uint8, int16, uint16, int32, uint32, int64, uint64
_MX_SIZE = {6: 8, 7: 4, 8: 1, 9: 1, 10: 2, 11: 2, 12: 4, 13: 4, 14: 8, 15: 8}
_MX_NAME = {_MX_CELL: "a cell array", _MX_STRUCT: "a struct", _MX_OBJECT: "an object", _MX_CHAR: "text",
            _MX_SPARSE: "a sparse array", 16: "a function handle", 17: "an opaque object"}
_CHAR_SIZE = {_MI_UINT16: 2, _MI_UTF16: 2, _MI_UINT8: 1, _MI_INT8: 1, _MI_UTF32: 4, _MI_UINT32: 4}


class MatError(ValueError):
    """A ``.mat`` file that is refused; the message is one line."""


def _size(n):
    return f"{n:,} bytes"


def layout(path):
    """"v5", "v7.3" or None (neither) from the 128-byte header."""
    with open(path, "rb") as f:
        head = f.read(_HEADER)
    if len(head) < _HEADER:
        return None
    if head[124:126] == struct.pack("<H", 0x0200) and head[126:128] == b"IM":
        return "v7.3"
    if head[126:128] in (b"IM", b"MI") and head[124:126] in (b"\x00\x01", b"\x01\x00"):
        return "v5"
    return None


def read(path, names=None, max_bytes=None):
    """{name: raw value} of the variables ``names`` (None: all) of the
    ``.mat`` file ``path``, as ``scipy.io.loadmat`` (v5, structs as
    ``mat_struct``) or as dicts and arrays (v7.3: structs as dicts, char as
    str, arrays in MATLAB's shape); names missing from the file are absent.
    ``max_bytes`` bounds each variable (None: what the file holds, or 2 GiB
    inflated). MatError if the file is refused."""
    kind = layout(path)
    if kind == "v7.3":
        return _read_v73(path, names, max_bytes)
    if kind == "v5":
        try:
            return _read_v5(path, names, max_bytes)
        except (zlib.error, struct.error, UnicodeError, RecursionError) as e:
            raise MatError(f"unreadable ({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    raise MatError("not a MATLAB v5 or v7.3 file (no MAT-file header)")


# ---- v5 ----------------------------------------------------------------------

class _V5:
    """Checks one variable (a miMATRIX element, uncompressed, in memory)."""

    def __init__(self, buf, order, max_bytes, name):
        self.buf, self.order, self.max_bytes, self.name = buf, order, max_bytes, name
        self.elements = 0

    def tag(self, pos, end):
        """(type, data start, data end, next element) of the element at ``pos``."""
        if end - pos < 8:
            raise MatError(f"{self.name} is truncated (an element tag runs past its end)")
        first, second = struct.unpack_from(self.order + "II", self.buf, pos)
        if first >> 16:  # small data element: type and size in the first 4 bytes
            size = first >> 16
            if size > 4:
                raise MatError(f"{self.name} has a small element of {size} bytes (at most 4)")
            return first & 0xFFFF, pos + 4, pos + 4 + size, pos + 8
        if second > end - pos - 8:
            raise MatError(f"{self.name} is truncated (an element declares {_size(second)}, more than "
                           f"the {_size(end - pos - 8)} left)")
        stop = pos + 8 + second
        return first, pos + 8, stop, min(end, stop + (-second % 8))

    def matrix(self, pos, end, depth):
        """Check the miMATRIX whose data is buf[pos:end]; returns its name."""
        self.elements += 1
        if self.elements > MAX_ELEMENTS:
            raise MatError(f"{self.name} holds more than {MAX_ELEMENTS:,} elements")
        if depth > MAX_DEPTH:
            raise MatError(f"{self.name} is nested more than {MAX_DEPTH} deep")
        if pos == end:
            return ""  # an empty array, as MATLAB writes empty cells
        kind, start, stop, pos = self.tag(pos, end)
        if kind != _MI_UINT32 or stop - start != 8:
            raise MatError(f"{self.name} has an array without its flags")
        flags = struct.unpack_from(self.order + "I", self.buf, start)[0]
        cls, is_complex = flags & 0xFF, bool(flags & 0x800)
        kind, start, stop, pos = self.tag(pos, end)
        if kind != _MI_INT32 or (stop - start) % 4 or not 2 <= (stop - start) // 4 <= MAX_DEPTH:
            raise MatError(f"{self.name} has an array whose dimensions are not 2 to {MAX_DEPTH} int32 values")
        dims = struct.unpack_from(f"{self.order}{(stop - start) // 4}i", self.buf, start)
        if min(dims) < 0:
            raise MatError(f"{self.name} has an array of negative size {'x'.join(map(str, dims))}")
        count = 1
        for d in dims:
            count *= d
        kind, start, stop, pos = self.tag(pos, end)
        if kind not in (_MI_INT8, _MI_UINT8, _MI_UTF8) or stop - start > 64:
            raise MatError(f"{self.name} has an array name that is not text of at most 64 bytes")
        name = bytes(self.buf[start:stop]).decode("latin1")
        shape = "x".join(map(str, dims))
        if cls in _MX_SIZE or cls == _MX_CHAR:
            if is_complex:
                raise MatError(f"{self.name} holds complex numbers, which a record never has")
            declared = count * (_MX_SIZE[cls] if cls in _MX_SIZE else 4)
            if self.max_bytes is not None and declared > self.max_bytes:
                raise MatError(f"{self.name} declares {shape} values = {_size(declared)}, more than the "
                               f"{_size(self.max_bytes)} it may hold")
            kind, start, stop, pos = self.tag(pos, end)
            sizes = _MI_SIZE if cls in _MX_SIZE else _CHAR_SIZE
            if kind == _MI_UTF8 and cls == _MX_CHAR:
                if not count <= stop - start <= 4 * count:
                    raise MatError(f"{self.name} has text of {shape} characters in {_size(stop - start)}")
            elif kind not in sizes or stop - start != count * sizes[kind]:
                raise MatError(f"{self.name} has {shape} values in {_size(stop - start)} (data type {kind}), "
                               f"not what its size needs")
            return name
        if cls == _MX_CELL:
            if count > (end - pos) // 8 + 1:
                raise MatError(f"{self.name} declares a {shape} cell array in {_size(end - pos)}")
            for _ in range(count):
                pos = self.child(pos, end, depth)
            return name
        if cls == _MX_STRUCT:
            kind, start, stop, pos = self.tag(pos, end)
            if kind != _MI_INT32 or stop - start != 4:
                raise MatError(f"{self.name} has a struct without its field name length")
            length = struct.unpack_from(self.order + "i", self.buf, start)[0]
            if not 1 <= length <= 64:
                raise MatError(f"{self.name} has a struct whose field names are {length} bytes long (1 to 64)")
            kind, start, stop, pos = self.tag(pos, end)
            if kind not in (_MI_INT8, _MI_UINT8) or (stop - start) % length:
                raise MatError(f"{self.name} has a struct whose field names are not text")
            fields = [bytes(self.buf[i:i + length]).split(b"\0")[0] for i in range(start, stop, length)]
            if len(set(fields)) != len(fields) or not all(fields):
                raise MatError(f"{self.name} has a struct with an empty or repeated field name")
            if count * max(1, len(fields)) > (end - pos) // 8 + 1:
                raise MatError(f"{self.name} declares a {shape} struct of {len(fields)} fields in {_size(end - pos)}")
            self.elements += count
            for _ in range(count * len(fields)):
                pos = self.child(pos, end, depth)
            return name
        raise MatError(f"{self.name} holds {_MX_NAME.get(cls, f'an array of class {cls}')}, which a record never has")

    def child(self, pos, end, depth):
        kind, start, stop, nxt = self.tag(pos, end)
        if kind != _MI_MATRIX:
            raise MatError(f"{self.name} has an element of type {kind} where an array belongs")
        self.matrix(start, stop, depth + 1)
        return nxt


def _inflate(f, size, limit, what):
    """The data of a compressed element of ``size`` bytes at ``f``'s
    position, inflated to at most ``limit`` bytes."""
    out, inflater, left = [], zlib.decompressobj(), size
    got = 0
    while left and not inflater.eof:
        chunk = f.read(min(left, 1 << 16))
        if not chunk:
            raise MatError(f"{what} is truncated")
        left -= len(chunk)
        data = chunk
        while data and not inflater.eof:
            part = inflater.decompress(data, limit + 1 - got)
            got += len(part)
            out.append(part)
            if got > limit:
                raise MatError(f"{what} inflates to more than the {_size(limit)} its element says")
            data = inflater.unconsumed_tail
    return b"".join(out)


def _peek_inflated(f, size, want):
    """The first ``want`` bytes of a compressed element (for its name)."""
    inflater, out = zlib.decompressobj(), b""
    left = size
    while left and len(out) < want and not inflater.eof:
        chunk = f.read(min(left, 4096))
        if not chunk:
            break
        left -= len(chunk)
        out += inflater.decompress(chunk, want - len(out))
    return out


def _name_of(head, order):
    """(name, class, element count) of the miMATRIX element whose first
    bytes (its tag, flags, dimensions and name) are ``head``, or None when
    they do not say."""
    try:
        if len(head) < 8 or struct.unpack_from(order + "I", head)[0] != _MI_MATRIX:
            return None
        v = _V5(head, order, None, "a variable")
        _, start, _, pos = v.tag(8, len(head))
        cls = struct.unpack_from(order + "I", head, start)[0] & 0xFF
        _, start, stop, pos = v.tag(pos, len(head))
        count = 1
        for d in struct.unpack_from(f"{order}{(stop - start) // 4}i", head, start):
            count *= max(d, 0)
        _, start, stop, _ = v.tag(pos, len(head))
        return bytes(head[start:stop]).decode("latin1"), cls, count
    except (MatError, struct.error):
        return None


def _read_v5(path, names, max_bytes):
    import scipy.io

    wanted = None if names is None else set(names)
    limit = V5_MAX_BYTES if max_bytes is None else max_bytes
    found = {}
    with open(path, "rb") as f:
        header = f.read(_HEADER)
        order = "<" if header[126:128] == b"IM" else ">"
        file_size = f.seek(0, 2)
        pos, count = _HEADER, 0
        while pos + 8 <= file_size:
            count += 1
            if count > MAX_ELEMENTS:
                raise MatError(f"more than {MAX_ELEMENTS:,} variables")
            f.seek(pos)
            kind, size = struct.unpack(order + "II", f.read(8))
            if size > file_size - pos - 8:
                raise MatError(f"truncated (a variable at byte {pos:,} declares {_size(size)}, more than the "
                               f"{_size(file_size - pos - 8)} left)")
            nxt = pos + 8 + size + (0 if kind == _MI_COMPRESSED else -size % 8)
            if kind not in (_MI_MATRIX, _MI_COMPRESSED):
                raise MatError(f"an element of type {kind} at byte {pos:,} where a variable belongs")
            if kind == _MI_COMPRESSED:
                head = _peek_inflated(f, size, 8 + 8 + 16 + 8 + 4 * MAX_DEPTH + 8 + 64)
                about = _name_of(head, order)
            else:
                about = _name_of(struct.pack(order + "II", kind, size) + f.read(min(size, 16 + 8 + 4 * MAX_DEPTH + 72)),
                                order)
            if about is None:
                raise MatError(f"the variable at byte {pos:,} is malformed (no name)")
            name, cls, elements = about
            if wanted is None or name in wanted:
                declared = elements * _MX_SIZE.get(cls, 4 if cls == _MX_CHAR else 0)
                if declared > limit:
                    raise MatError(f"variable {name!r} declares {_size(declared)}, more than the {_size(limit)} "
                                   f"it may hold")
                if name in found:
                    raise MatError(f"holds the variable {name!r} twice")
                what = f"variable {name!r}"
                f.seek(pos + 8)
                if kind == _MI_COMPRESSED:
                    inner_size = struct.unpack_from(order + "I", head, 4)[0]
                    overhead = 16 * MAX_DEPTH + 512 + 8 * MAX_ELEMENTS
                    if max_bytes is not None and inner_size > max_bytes + overhead:
                        raise MatError(f"{what} is {_size(inner_size)}, more than the {_size(max_bytes)} it may hold")
                    inner = _inflate(f, size, 8 + inner_size + 7, what)
                    if len(inner) < 8 + inner_size:
                        raise MatError(f"{what} is truncated once inflated")
                    element = inner[:8 + inner_size]
                else:
                    if max_bytes is not None and size > max_bytes + 16 * MAX_DEPTH + 512 + 8 * MAX_ELEMENTS:
                        raise MatError(f"{what} is {_size(size)}, more than the {_size(max_bytes)} it may hold")
                    element = struct.pack(order + "II", kind, size) + f.read(size)
                _V5(element, order, limit, what).matrix(8, len(element), 0)
                found[name] = element + b"\0" * (-len(element) % 8)
            pos = nxt
    if not found:
        return {}
    data = io.BytesIO(header + b"".join(found.values()))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # scipy's warnings about a file are refusals, not lines on stderr
            return {k: v for k, v in scipy.io.loadmat(data, struct_as_record=False, chars_as_strings=True).items()
                    if not k.startswith("__")}
    except MatError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, OverflowError, AttributeError, struct.error, zlib.error,
            MemoryError, NotImplementedError, Warning) as e:
        raise MatError(f"unreadable ({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None


# ---- v7.3 (HDF5) ---------------------------------------------------------------

def _read_v73(path, names, max_bytes):
    import os

    import h5py

    limit = max(os.path.getsize(path), V5_MAX_BYTES) if max_bytes is None else max_bytes
    state = {"elements": 0}

    def link_of(group, key, where):
        link = group.get(key, getlink=True)
        if isinstance(link, h5py.SoftLink):
            raise MatError(f"{where} is a soft link ({link.path[:80]!r}), which a record never has")
        if isinstance(link, h5py.ExternalLink):
            raise MatError(f"{where} is a link to another file ({link.filename[:80]!r}), which is never followed")
        if not isinstance(link, h5py.HardLink):
            raise MatError(f"{where} is a link of an unknown kind")

    def attr(obj, name, where, kinds="S"):
        if name not in obj.attrs:
            return None
        aid = obj.attrs.get_id(name)
        text = kinds == "S" and h5py.check_string_dtype(aid.dtype) is not None
        if (aid.dtype.kind not in kinds and not text) or aid.shape not in ((), (1,)) or aid.dtype.itemsize > 64:
            raise MatError(f"{where} has a {name} attribute of type {aid.dtype} and shape {aid.shape}, "
                           f"not a short scalar")
        value = obj.attrs[name]
        return value.reshape(()).item() if isinstance(value, np.ndarray) else value

    def convert(obj, where, depth):
        state["elements"] += 1
        if state["elements"] > MAX_ELEMENTS:
            raise MatError(f"holds more than {MAX_ELEMENTS:,} elements")
        if depth > MAX_DEPTH:
            raise MatError(f"{where} is nested more than {MAX_DEPTH} deep")
        cls = attr(obj, "MATLAB_class", where)
        cls = cls.decode("latin1") if isinstance(cls, bytes) else cls
        if isinstance(obj, h5py.Group):
            if cls != "struct":
                raise MatError(f"{where} is a group of MATLAB_class {str(cls)[:40]!r}, not a struct")
            out = {}
            for key in obj:
                state["elements"] += 1
                if state["elements"] > MAX_ELEMENTS:
                    raise MatError(f"holds more than {MAX_ELEMENTS:,} elements")
                link_of(obj, key, f"{where}.{key}")
                out[key] = convert(obj[key], f"{where}.{key}", depth + 1)
            return out
        if not isinstance(obj, h5py.Dataset):
            raise MatError(f"{where} is neither a dataset nor a group")
        if obj.is_virtual or obj.id.get_create_plist().get_external_count():
            raise MatError(f"{where} keeps its data in other files, which are never read")
        if obj.dtype.kind not in "biuf" or obj.dtype.itemsize > 8:
            raise MatError(f"{where} holds values of type {obj.dtype}, not numbers")
        shape = obj.shape if obj.shape is not None else ()
        declared = int(np.prod(shape, dtype=object)) * obj.dtype.itemsize
        chunk = int(np.prod(obj.chunks, dtype=object)) * obj.dtype.itemsize if obj.chunks else 0
        if max(declared, chunk) > limit:
            raise MatError(f"{where} declares {'x'.join(map(str, shape))} {obj.dtype} values = "
                           f"{_size(max(declared, chunk))}, more than the {_size(limit)} it may hold")
        if cls == "char":
            if attr(obj, "MATLAB_empty", where, "biu"):
                return ""
            codes = np.ascontiguousarray(obj[()].T).astype(np.uint16)
            try:
                return codes.tobytes().decode("utf-16-le")
            except UnicodeDecodeError:
                raise MatError(f"{where} is not valid text") from None
        if cls not in ("double", "single", "logical", "int8", "uint8", "int16", "uint16", "int32", "uint32",
                       "int64", "uint64"):
            raise MatError(f"{where} has MATLAB_class {str(cls)[:40]!r}, not a class a record holds")
        return np.ascontiguousarray(obj[()].T)

    try:
        with h5py.File(path, "r") as f:
            out = {}
            present = []
            for key in f:
                state["elements"] += 1
                if state["elements"] > MAX_ELEMENTS:
                    raise MatError(f"holds more than {MAX_ELEMENTS:,} variables")
                present.append(key)
            for key in (present if names is None else [n for n in names if n in present]):
                if names is None and key.startswith("#"):
                    continue  # MATLAB's own bookkeeping (#refs#, #subsystem#)
                link_of(f, key, key)
                out[key] = convert(f[key], key, 0)
            return out
    except MatError:
        raise
    except (OSError, ValueError, TypeError, KeyError, RuntimeError, MemoryError, RecursionError) as e:
        raise MatError(f"unreadable HDF5 ({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
