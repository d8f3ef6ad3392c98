"""Loading pickles from outside with a restricted unpickler.

A pickle can name any importable callable and call it while loading; that is
how a malicious file runs code. This unpickler resolves only the globals in
``allowed`` and refuses every other one before anything is called.
"""
import pickle

import numpy as np
from numpy._core.multiarray import _reconstruct  # this path exists from numpy 1.26 on

from .dataset import DataError, one_line


class UntrustedPickle(pickle.UnpicklingError):
    pass


def _latin1_bytes(text, encoding):
    """Stands in for ``_codecs.encode``, which Python 3 protocol-2 pickles call
    as ``encode(text, "latin1")`` to rebuild bytes; any other use is refused."""
    if not isinstance(text, str) or encoding != "latin1":
        raise UntrustedPickle(f"it calls _codecs.encode with {encoding!r}, not as a bytes literal")
    return text.encode("latin1")


#: What a numpy array needs to be rebuilt from a pickle, and nothing more.
#: CIFAR-10's own batches (written by Python 2) use only the numpy names;
#: batches re-saved by Python 3 with protocol 2 also spell bytes via _codecs.
NUMPY_ARRAY = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,  # as numpy 1.x names it
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,  # as numpy 2 names it
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_bytes,
}


class RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, allowed, **kwargs):
        super().__init__(file, **kwargs)
        self.allowed = allowed

    def find_class(self, module, name):
        target = self.allowed.get((module, name))
        if target is None:
            raise UntrustedPickle(f"it asks for {one_line(module)}.{one_line(name)}, "
                                 "which a data file never needs")
        return target


def load(path, allowed=NUMPY_ARRAY, fix="replace it with a genuine copy"):
    """Unpickle ``path`` (Python 2 strings as bytes); DataError if it is
    unreadable, truncated or asks for anything outside ``allowed``."""
    try:
        with open(path, "rb") as f:
            return RestrictedUnpickler(f, allowed, encoding="bytes").load()
    except UntrustedPickle as e:
        raise DataError(f"{path}: refused as untrusted: {one_line(e)}; {fix}") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read it ({e.strerror or e}); {fix}") from None
    except Exception as e:  # truncated or garbled pickles raise many kinds
        raise DataError(f"{path}: not a readable pickle ({type(e).__name__}: {one_line(e)}); {fix}") from None
