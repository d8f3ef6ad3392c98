"""Writing and reading the ``.mat`` record, streaming the big variables.

Two layouts, both loaded by MATLAB and GNU Octave:

* **v5** (``scipy.io.savemat``'s format) whenever every variable is under
  2 GiB, MATLAB's limit for that format. Small variables and the ``meta``
  struct go through scipy; the parameter snapshots, which grow with the
  number of records, are appended as further v5 data elements streamed from
  disk in slabs, so memory never holds a whole snapshot stack.
* **v7.3** (HDF5 with MATLAB's 512-byte header, via h5py) when a snapshot
  stack is larger. MATLAB reads HDF5 dimensions reversed, so each array is
  stored transposed, which is again a straight stream of the same bytes.

Both layouts need the snapshot stack of shape (R, *shape) in column-major
(Fortran) order, where the record index varies fastest. The spool
(:mod:`fxnn.training.recorder`) stores each record's array in Fortran order, one
record after another; a slab of the output is therefore a strided read of
the spool followed by a transpose of a few MB.
"""
import os
import struct
import time

import numpy as np
import scipy.io

from fxnn.files.atomic import atomic_path
from fxnn.files.nofollow import open_file

V5_MAX_VARIABLE_BYTES = 2**31 - 1
SLAB_BYTES = 8 * 2**20

_MI_INT8, _MI_INT32, _MI_UINT32, _MI_SINGLE, _MI_DOUBLE, _MI_MATRIX = 1, 5, 6, 7, 9, 14
_MX_CLASS = {np.dtype(np.float32): (7, _MI_SINGLE), np.dtype(np.float64): (6, _MI_DOUBLE)}


class SnapshotSource:
    """A stack of ``records`` arrays of ``shape``, each stored Fortran-ordered
    back to back in a raw file (or an in-memory buffer for tests)."""

    def __init__(self, name, shape, dtype, records, path):
        self.name, self.shape, self.dtype = name, tuple(shape), np.dtype(dtype)
        self.records, self.path = records, path

    @property
    def nbytes(self):
        return self.records * int(np.prod(self.shape)) * self.dtype.itemsize

    @property
    def matlab_shape(self):
        return (self.records,) + self.shape

    def slabs(self):
        """The (R, *shape) stack in Fortran order, as a sequence of
        (start, block): block is (n, R), elements start..start+n of one
        record in Fortran order, for all records. Slabs hold whole slices of
        the last axis, so each one is also a range along HDF5's first axis.
        The spool is read with plain reads into one reused buffer (a memmap
        would map every page it touches into the process, gigabytes at the
        end of a long run)."""
        size = int(np.prod(self.shape))
        if self.records == 0 or size == 0:
            return
        unit = size // self.shape[-1] if self.shape else 1
        step = unit * max(1, SLAB_BYTES // (self.records * self.dtype.itemsize * unit))
        buffer = np.empty((self.records, min(step, size)), dtype=self.dtype)
        with os.fdopen(open_file(self.path, os.O_RDONLY, "a snapshot spool"), "rb", buffering=0) as f:  # no link
            for start in range(0, size, step):
                n = min(step, size - start)
                for r in range(self.records):
                    f.seek((r * size + start) * self.dtype.itemsize)
                    row = buffer[r, :n]
                    if f.readinto(memoryview(row).cast("B")) != row.nbytes:
                        raise OSError(f"{self.path}: spool shorter than {self.records} records")
                yield start, np.ascontiguousarray(buffer[:, :n].T)


def _pad8(n):
    return (8 - n % 8) % 8


def _write_v5_stream(f, source):
    """Append one numeric v5 variable whose data comes from ``source.slabs()``."""
    mx_class, mi_type = _MX_CLASS[source.dtype]
    dims = source.matlab_shape if len(source.matlab_shape) > 1 else source.matlab_shape + (1,)
    name = source.name.encode("ascii")
    parts = [
        struct.pack("<IIII", _MI_UINT32, 8, mx_class, 0),
        struct.pack("<II", _MI_INT32, 4 * len(dims)) + struct.pack(f"<{len(dims)}i", *dims)
        + b"\0" * _pad8(4 * len(dims)),
        struct.pack("<II", _MI_INT8, len(name)) + name + b"\0" * _pad8(len(name)),
    ]
    head = b"".join(parts) + struct.pack("<II", mi_type, source.nbytes)
    f.write(struct.pack("<II", _MI_MATRIX, len(head) + source.nbytes + _pad8(source.nbytes)))
    f.write(head)
    for _, block in source.slabs():
        f.write(block.tobytes())
    f.write(b"\0" * _pad8(source.nbytes))


def needs_v73(sources):
    return any(s.nbytes > V5_MAX_VARIABLE_BYTES for s in sources)


def write_mat(path, small, sources):
    """Write ``small`` ({name: array, str or dict}) and the snapshot ``sources``
    to ``path`` atomically (temporary file beside it, then rename). Returns
    the layout used: "v5" or "v7.3"."""
    layout = "v7.3" if needs_v73(sources) else "v5"
    needed = sum(s.nbytes for s in sources) + sum(np.asarray(v).nbytes for v in small.values()
                                                  if not isinstance(v, dict))
    with atomic_path(path, needed) as tmp:
        if layout == "v7.3":
            _write_v73(tmp, small, sources)
        else:
            with open(tmp, "wb") as f:
                scipy.io.savemat(f, small, oned_as="column")
                for source in sources:
                    _write_v5_stream(f, source)
                f.flush()
                os.fsync(f.fileno())
    return layout


# ---- v7.3 (HDF5) -------------------------------------------------------------

def _v73_header():
    text = (f"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: {time.strftime('%a %b %d %H:%M:%S %Y')} "
            "HDF5 schema 1.00 .").encode("ascii")
    return text.ljust(116, b" ") + b"\0" * 8 + struct.pack("<H", 0x0200) + b"IM"


def _set_class(obj, matlab_class):
    obj.attrs.create("MATLAB_class", np.bytes_(matlab_class))


def _write_v73_value(group, name, value):
    if isinstance(value, dict):
        sub = group.create_group(name)
        _set_class(sub, "struct")
        for key, item in value.items():
            _write_v73_value(sub, key, item)
        return
    if isinstance(value, str):
        codes = np.frombuffer(value.encode("utf-16-le"), dtype=np.uint16)
        if codes.size == 0:  # MATLAB's convention for an empty array: its dims, flagged
            ds = group.create_dataset(name, data=np.array([0, 0], dtype=np.uint64))
            ds.attrs.create("MATLAB_empty", np.uint8(1))
        else:
            ds = group.create_dataset(name, data=codes.reshape(-1, 1))
            ds.attrs.create("MATLAB_int_decode", np.int32(2))
        _set_class(ds, "char")
        return
    array = np.asarray(value)
    if array.dtype.kind in "iub":
        array = array.astype(np.float64)
    if array.ndim < 2:  # column vectors, as in the v5 layout
        array = array.reshape(-1, 1)
    ds = group.create_dataset(name, data=array.T)
    _set_class(ds, "single" if array.dtype == np.float32 else "double")


def _write_v73(path, small, sources):
    import h5py

    with h5py.File(path, "w", userblock_size=512) as f:
        for name, value in small.items():
            _write_v73_value(f, name, value)
        for source in sources:
            h5_shape = source.matlab_shape[::-1]
            ds = f.create_dataset(source.name, shape=h5_shape, dtype=source.dtype)
            _set_class(ds, "single" if source.dtype == np.float32 else "double")
            slice_size = int(np.prod(h5_shape[1:]))
            for start, block in source.slabs():
                first = start * source.records // slice_size
                ds[first:first + block.size // slice_size] = block.reshape((-1,) + h5_shape[1:])
    with open(path, "r+b") as f:
        f.write(_v73_header())


# ---- reading -----------------------------------------------------------------

def read_mat(path, names=None, max_bytes=None):
    """{name: value} of a record file in either layout, the same for both:
    structs as dicts, char arrays as str, column vectors as 1-D arrays,
    1x1 numbers as floats, other arrays with MATLAB's shape. Only the
    variables ``names`` are read (None: all), each at most ``max_bytes``
    (None: what the file holds); the reading is bounded as
    :mod:`fxnn.files.mat_reader` says, and a file it refuses raises its
    MatError, one line starting with the file's name."""
    from fxnn.files.mat_reader import MatError, read

    try:
        raw = read(path, names, max_bytes)
    except MatError as e:
        raise MatError(f"{path}: {e}") from None
    return {k: _simplify(v) for k, v in raw.items() if not k.startswith("__")}


def _simplify(value):
    if isinstance(value, np.ndarray) and value.dtype == object and value.size == 1:
        value = value.item()  # a 1x1 struct from scipy
    if isinstance(value, scipy.io.matlab.mat_struct):
        value = {k: getattr(value, k) for k in value._fieldnames}
    if isinstance(value, dict):
        return {k: _simplify(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "US":
            return (str(value.item()) if value.size == 1 else "") if value.size <= 1 else value
        if value.ndim == 2 and value.shape[1] == 1:
            value = value[:, 0]
        if value.size == 1 and value.ndim <= 1 and value.dtype.kind in "biuf":
            return float(value.reshape(()))
    return value
