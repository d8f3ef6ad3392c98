"""Loading pickles from outside with a restricted unpickler.

A pickle can name any importable callable and call it while loading; that is
how a malicious file runs code. This unpickler resolves only the globals in
``allowed`` and refuses every other one before anything is called.
"""
import importlib
import pickle

from .dataset import DataError

#: What a numpy array needs to be rebuilt from a pickle, and nothing more
#: (``_codecs.encode`` turns text into bytes; Python 3 writes bytes that way
#: in protocol 2).
NUMPY_ARRAY = {
    ("_codecs", "encode"): ("_codecs", "encode"),
    ("numpy.core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"): ("numpy", "ndarray"),
    ("numpy", "dtype"): ("numpy", "dtype"),
}


class UntrustedPickle(pickle.UnpicklingError):
    pass


class RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, allowed, **kwargs):
        super().__init__(file, **kwargs)
        self.allowed = allowed

    def find_class(self, module, name):
        target = self.allowed.get((module, name))
        if target is None:
            raise UntrustedPickle(f"it asks for {module}.{name}, which a data file never needs")
        return getattr(importlib.import_module(target[0]), target[1])


def load(path, allowed=NUMPY_ARRAY, fix="replace it with a genuine copy"):
    """Unpickle ``path`` (Python 2 strings as bytes); DataError if it is
    unreadable, truncated or asks for anything outside ``allowed``."""
    try:
        with open(path, "rb") as f:
            return RestrictedUnpickler(f, allowed, encoding="bytes").load()
    except UntrustedPickle as e:
        raise DataError(f"{path}: refused as untrusted: {e}; {fix}") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read it ({e.strerror or e}); {fix}") from None
    except Exception as e:  # truncated or garbled pickles raise many kinds
        raise DataError(f"{path}: not a readable pickle ({type(e).__name__}: {e}); {fix}") from None
