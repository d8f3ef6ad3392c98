"""Loading pickles from outside with a restricted, bounded unpickler.

A pickle can name any importable callable and call it while loading; that is
how a malicious file runs code. This unpickler resolves only the globals in
``allowed`` and refuses every other one before anything is called. It also
refuses what would crash or exhaust the process without running code:

* **nesting**: tuples and frozensets (the containers Python hashes, as dict
  keys, recursively in C) nested deeper than ``max_depth`` while loading, and
  any structure nested deeper once loaded;
* **expansion**: a pickle names an object once and refers to it again for two
  bytes, so a small file can hold a list of a million references to one
  large string, or lists of lists that expand to billions of elements when
  a loader turns them into an array. The loaded structure is walked counting
  every reference as a copy, up to ``max_objects`` objects and
  ``max_bytes`` bytes (as numpy would store them: 4 per character of a str);
  by default 1,000,000 objects plus one per byte of the file and 64 MiB plus
  8 bytes per byte of the file, far above what any genuine data file expands
  to (CIFAR-10's batches: about 1x);
* **numpy arrays without data**: an array is rebuilt only as numpy pickles it,
  ``_reconstruct`` then its state with a bytes buffer of exactly the array's
  size; ``numpy.ndarray`` itself cannot be called (it would hand out
  uninitialised memory), arrays of Python objects and dtypes with fields are
  refused, as is an array whose state never came;
* **dict keys** that are bytes but not UTF-8 text;
* **lengths past the end**: a string or bytes object declaring more bytes
  than the file has left is refused before anything is allocated for it.

Every refusal is a :class:`~fxnn.data.dataset.DataError` of one line.
"""
import os
import pickle
import struct

import numpy as np
from numpy._core.multiarray import _reconstruct  # this path exists from numpy 1.26 on

from .dataset import DataError, one_line

MAX_DEPTH = 100


class UntrustedPickle(pickle.UnpicklingError):
    pass


def _latin1_bytes(text, encoding):
    """Stands in for ``_codecs.encode``, which Python 3 protocol-2 pickles call
    as ``encode(text, "latin1")`` to rebuild bytes; any other use is refused."""
    if not isinstance(text, str) or encoding != "latin1":
        raise UntrustedPickle(f"it calls _codecs.encode with {encoding!r}, not as a bytes literal")
    return text.encode("latin1")


class _NdarrayName:
    """What ``numpy.ndarray`` resolves to: the array type as ``_reconstruct``'s
    argument, never a callable (``ndarray(shape)`` is uninitialised memory)."""

    def __call__(self, *args, **kwargs):
        raise UntrustedPickle("it calls numpy.ndarray directly, which makes an array without data")


NDARRAY = _NdarrayName()


def _array(subtype, shape, typecode):
    """``_reconstruct`` as numpy's own pickles call it: an empty array whose
    shape, dtype and data the following state sets."""
    if subtype is not NDARRAY or shape != (0,) or typecode not in (b"b", "b"):
        raise UntrustedPickle(f"it calls numpy's _reconstruct with {one_line(repr((subtype, shape, typecode)))[:80]}, "
                              "not as numpy pickles an array")
    return _reconstruct(np.ndarray, shape, typecode)


def _dtype(spec, align=False, copy=True):
    """``numpy.dtype`` for a plain type name only (no fields, no objects)."""
    if isinstance(spec, bytes):
        spec = spec.decode("ascii", "replace")
    if not isinstance(spec, str) or len(spec) > 8:
        raise UntrustedPickle("it builds a numpy dtype from something other than a type name")
    dtype = np.dtype(spec, align=bool(align), copy=bool(copy))
    if dtype.hasobject or dtype.names is not None or dtype.subdtype is not None:
        raise UntrustedPickle(f"it builds the numpy dtype {spec!r}, which a data file never needs")
    return dtype


#: What a numpy array needs to be rebuilt from a pickle, and nothing more.
#: CIFAR-10's own batches (written by Python 2) use only the numpy names;
#: batches re-saved by Python 3 with protocol 2 also spell bytes via _codecs.
NUMPY_ARRAY = {
    ("numpy.core.multiarray", "_reconstruct"): _array,  # as numpy 1.x names it
    ("numpy._core.multiarray", "_reconstruct"): _array,  # as numpy 2 names it
    ("numpy", "ndarray"): NDARRAY,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _latin1_bytes,
}

_BASE = pickle._Unpickler.dispatch
_HASHED = (pickle.TUPLE, pickle.TUPLE1, pickle.TUPLE2, pickle.TUPLE3, pickle.FROZENSET)


class RestrictedUnpickler(pickle._Unpickler):
    """The pure-Python unpickler (its steps can be checked one by one), with
    ``find_class`` restricted to ``allowed`` and the checks above."""

    dispatch = pickle._Unpickler.dispatch.copy()

    def __init__(self, file, allowed, max_depth=MAX_DEPTH, **kwargs):
        super().__init__(file, **kwargs)
        self.allowed, self.max_depth = allowed, max_depth
        self.file_size = file.size
        self._depth = {}      # id -> (tuple or frozenset, its nesting depth); keeps them alive
        self._unbuilt = {}    # id -> array from _reconstruct still waiting for its state

    def find_class(self, module, name):
        target = self.allowed.get((module, name))
        if target is None:
            raise UntrustedPickle(f"it asks for {one_line(module)}.{one_line(name)}, "
                                 "which a data file never needs")
        return target

    def _hashed(self, opcode):
        """Run a tuple- or frozenset-building opcode, then bound its depth."""
        _BASE[opcode[0]](self)
        made = self.stack[-1]
        depth = 1 + max((self._depth.get(id(item), (None, 0))[1] for item in made), default=0)
        if depth > self.max_depth:
            raise UntrustedPickle(f"its tuples are nested more than {self.max_depth} deep")
        self._depth[id(made)] = (made, depth)

    for _op in _HASHED:
        dispatch[_op[0]] = (lambda op: lambda self: self._hashed(op))(_op)
    del _op

    def load_reduce(self):
        pickle._Unpickler.load_reduce(self)
        made = self.stack[-1]
        if isinstance(made, np.ndarray):
            self._unbuilt[id(made)] = made

    dispatch[pickle.REDUCE[0]] = load_reduce

    def load_build(self):
        state, inst = self.stack[-1], self.stack[-2]
        if isinstance(inst, np.ndarray) and id(inst) in self._unbuilt:
            if not (isinstance(state, tuple) and len(state) == 5 and isinstance(state[2], np.dtype)
                    and isinstance(state[4], (bytes, bytearray))):
                raise UntrustedPickle("it sets an array's contents from something other than a bytes buffer")
            del self._unbuilt[id(inst)]
        elif isinstance(inst, np.dtype):
            if not (isinstance(state, tuple) and len(state) == 8 and state[2:5] == (None, None, None)):
                raise UntrustedPickle("it gives a numpy dtype fields or a sub-array")
        else:
            raise UntrustedPickle(f"it sets the state of a {type(inst).__name__}, which a data file never needs")
        pickle._Unpickler.load_build(self)

    dispatch[pickle.BUILD[0]] = load_build

    def load_bytearray8(self):
        """BYTEARRAY8 as pickle's, but the declared length is checked against
        the file before the bytearray is allocated (pickle allocates first)."""
        size, = struct.unpack("<Q", self.read(8))
        if size > self.file_size:
            raise TruncatedPickle(f"it declares an object of {size:,} bytes in a file of {self.file_size:,}")
        data = bytearray(size)
        self.readinto(data)
        self.append(data)

    dispatch[pickle.BYTEARRAY8[0]] = load_bytearray8

    def load(self):
        obj = super().load()
        if self._unbuilt:
            raise UntrustedPickle("it makes a numpy array whose contents it never gives")
        return obj


class TruncatedPickle(EOFError):
    pass


class _BoundedFile:
    """The pickle file, refusing any read of more bytes than it has left: a
    length field of the pickle (a string's or bytes' size) may say anything,
    and reading that many would first allocate it."""

    def __init__(self, f, size):
        self._f, self._left, self.size = f, size, size

    def read(self, n=-1):
        if n is None or n < 0:
            n = self._left
        if n > self._left:
            raise TruncatedPickle(f"it declares an object of {n:,} bytes with only {self._left:,} left in the file")
        data = self._f.read(n)
        self._left -= len(data)
        return data

    def readinto(self, buffer):
        if len(buffer) > self._left:
            raise TruncatedPickle(f"it declares a buffer of {len(buffer):,} bytes with only {self._left:,} left "
                                  "in the file")
        got = self._f.readinto(buffer)
        self._left -= got
        return got

    def readline(self):
        line = self._f.readline(self._left)
        self._left -= len(line)
        return line


def check_expansion(obj, max_depth, max_objects, max_bytes):
    """Walk ``obj`` counting every reference as a copy; UntrustedPickle when it
    is nested deeper than ``max_depth``, expands past ``max_objects`` objects
    or ``max_bytes`` bytes, or has a bytes dict key that is not UTF-8."""
    objects = size = 0
    stack = [(obj, 1)]
    while stack:
        item, depth = stack.pop()
        objects += 1
        if depth > max_depth:
            raise UntrustedPickle(f"it is nested more than {max_depth} deep")
        if objects > max_objects:
            raise UntrustedPickle(f"it expands to more than {max_objects:,} objects (references repeat one object)")
        if isinstance(item, dict):
            for key in item:
                if isinstance(key, bytes):
                    try:
                        key.decode("utf-8")
                    except UnicodeDecodeError:
                        raise UntrustedPickle(f"it has a dict key that is not UTF-8 text ({key[:20]!r})") from None
            stack.extend((child, depth + 1) for pair in item.items() for child in pair)
            size += 8 * len(item)
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend((child, depth + 1) for child in item)
            size += 8 * len(item)
        elif isinstance(item, np.ndarray):
            if item.dtype.hasobject:
                raise UntrustedPickle("it holds a numpy array of Python objects")
            size += item.nbytes
        elif isinstance(item, str):
            size += 4 * len(item)
        elif isinstance(item, (bytes, bytearray)):
            size += len(item)
        else:
            size += 8
        if size > max_bytes:
            raise UntrustedPickle(f"it expands to more than {max_bytes / 2**20:,.1f} MiB "
                                 "(references repeat one object)")


def load(path, allowed=NUMPY_ARRAY, fix="replace it with a genuine copy", max_depth=MAX_DEPTH,
         max_objects=None, max_bytes=None):
    """Unpickle ``path`` (Python 2 strings as bytes); DataError if it is
    unreadable, truncated, asks for anything outside ``allowed`` or breaks a
    bound (``max_objects``/``max_bytes``: None for the defaults above)."""
    try:
        size = os.path.getsize(path)
        max_objects = 1_000_000 + size if max_objects is None else max_objects
        max_bytes = 64 * 2**20 + 8 * size if max_bytes is None else max_bytes
        with open(path, "rb") as f:
            obj = RestrictedUnpickler(_BoundedFile(f, size), allowed, max_depth, encoding="bytes").load()
        check_expansion(obj, max_depth, max_objects, max_bytes)
        return obj
    except UntrustedPickle as e:
        raise DataError(f"{path}: refused as untrusted: {one_line(e)}; {fix}") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read it ({e.strerror or e}); {fix}") from None
    except RecursionError:
        raise DataError(f"{path}: refused as untrusted: it is nested too deeply; {fix}") from None
    except Exception as e:  # truncated or garbled pickles raise many kinds
        raise DataError(f"{path}: not a readable pickle ({type(e).__name__}: {one_line(e)}); {fix}") from None
