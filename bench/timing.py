"""Timing helpers shared by the CPU benchmarks."""
import time

import numpy as np


def alternated_ms(fns, repeats, warmup=2):
    """{name: median ms} of the callables ``fns`` timed in turn, one call each
    per round, so that a machine that speeds up or slows down during the run
    shifts every contender alike and their ratios stay comparable."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: 1000 * float(np.median(t)) for name, t in times.items()}
