"""Keeping a long run's memory flat.

A run allocates and frees multi-megabyte arrays at every record (parameter
snapshots, checkpoint copies). glibc's malloc keeps freed blocks of that size
in its heap, which fragments and grows over a long run: +160 MiB over 1,000
CIFAR-10 records in bench/bench_record_memory.py. Trimming the heap once per
record hands the free memory back; it costs well under a millisecond and
leaves the allocator's behaviour inside the training loop alone.
"""
import ctypes
import ctypes.util

_libc = None


def release_free_memory():
    """Return free heap memory to the system (glibc's malloc_trim); a no-op
    where the C library is not glibc."""
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c"))
            _libc.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError, TypeError):
            _libc = False
    if _libc:
        _libc.malloc_trim(0)
