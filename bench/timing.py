"""Timing helpers shared by the CPU benchmarks."""
import time

import numpy as np


def alternated(fns, repeats, warmup=2, clock=time.perf_counter):
    """{name: [seconds per call]} of the callables ``fns`` timed in turn, one
    call each per round, so that a machine that speeds up or slows down
    during the run shifts every contender alike and their ratios stay
    comparable. Each round starts one contender further on, so that none
    always runs right after the same other one (a bf16 contender's matrix
    unit warm-up or a cache another one filled). ``clock``: the wall clock,
    or ``time.process_time`` for the CPU time, which other processes
    loading the cores do not lengthen."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    names = list(fns)
    times = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = clock()
            fns[name]()
            times[name].append(clock() - start)
    return times


def alternated_ms(fns, repeats, warmup=2):
    """{name: median ms} of :func:`alternated`."""
    return {name: 1000 * float(np.median(t)) for name, t in alternated(fns, repeats, warmup).items()}
