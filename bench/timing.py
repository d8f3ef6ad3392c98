"""Timing helper shared by the CPU benchmarks."""
import time

import numpy as np


def median_ms(fn, repeats, warmup=3):
    """Median wall time of ``fn()`` in milliseconds, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))
