"""Keeping a long run's memory flat.

A run allocates and frees multi-megabyte arrays at every record (parameter
snapshots, checkpoint copies). glibc's malloc raises its mmap threshold each
time such a block is freed and from then on serves blocks that size from the
heap, which fragments and grows: +160 MiB over 1,000 CIFAR-10 records in
bench/bench_record_memory.py. Pinning the threshold (which also turns that
adjustment off) returns every large block to the system when it is freed.
"""
import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3  # mallopt parameter number, from glibc's malloc.h
THRESHOLD = 128 * 1024  # glibc's initial default


def pin_mmap_threshold():
    """Pin glibc's mmap threshold; does nothing where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt(M_MMAP_THRESHOLD, THRESHOLD)
    except (OSError, AttributeError, TypeError):
        pass
