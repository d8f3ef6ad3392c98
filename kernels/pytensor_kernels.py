"""What every PyTensor op on the C code of ``kernels/`` shares: the support
code (an ``#include`` of the source it needs; the sources have include
guards, so ops of several sources can share a module), the cache key that
changes with those sources, the thread count, and OpenMP where the compiler
has it (the kernels then run on the OpenMP runtime's thread pool, as
setup.py's build does)."""
import functools
import hashlib
import os

from pytensor.link.c.op import COp

from . import threads

KERNELS_DIR = os.path.dirname(os.path.abspath(__file__))
SOURCES = ("fused_cpu.c", "fused_isa.h", "fixed_cpu.c")


@functools.lru_cache(maxsize=1)
def openmp_flags():
    """["-fopenmp"] where PyTensor's compiler takes it, else []."""
    from pytensor.link.c.cmodule import GCC_compiler
    return ["-fopenmp"] if GCC_compiler.try_flags(["-fopenmp"]) else []


@functools.lru_cache(maxsize=1)
def source_version():
    """A number that changes whenever the C sources do, read once per process."""
    digest = hashlib.sha1()
    for name in SOURCES:
        with open(os.path.join(KERNELS_DIR, name), "rb") as f:
            digest.update(f.read())
    return int(digest.hexdigest()[:12], 16)


def default_threads():
    """The run's thread count (``--threads``; :mod:`fxnn.kernels.threads`)."""
    return threads.count()


class KernelsOp(COp):
    """A COp whose C code calls the functions of ``kernels/`` in ``source``."""
    __props__ = ("threads",)
    source = "fused_cpu.c"

    def __init__(self, threads=None):
        self.threads = int(threads or default_threads())

    def c_header_dirs(self, **kwargs):
        return [KERNELS_DIR]

    def c_support_code(self, **kwargs):
        return f'#include "{self.source}"\n'

    def c_compile_args(self, **kwargs):
        return openmp_flags()

    def c_code_cache_version(self):
        return (4, source_version())
