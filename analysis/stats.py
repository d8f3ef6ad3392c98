"""Summary statistics over seeds: validation error at chosen iterations,
iterations to reach a target error, and the difference between two models
with a Welch confidence interval (the seeds of two models are independent
samples with possibly different spreads)."""
import math
from dataclasses import dataclass

import numpy as np
from scipy import stats


def error_at(run, iteration):
    """Validation error of ``run`` at ``iteration``, which must be a record
    iteration (a multiple of -ipr up to nrec*ipr)."""
    iters = run.record_iterations
    hit = np.flatnonzero(iters == iteration)
    if not hit.size:
        raise ValueError(f"{run.path}: no validation at iteration {iteration} "
                         f"(records every {run.iters_per_record} up to {iters[-1]})")
    return float(run.verate[hit[0]])


def iterations_to(run, target):
    """The first record iteration at which the validation error is at most
    ``target``, or NaN if the run never got there."""
    reached = np.flatnonzero(run.verate <= target)
    return float(run.record_iterations[reached[0]]) if reached.size else math.nan


@dataclass
class Spread:
    """Mean and sample standard deviation of ``n`` values; ``missing`` counts
    values left out because they are NaN (a target never reached)."""
    mean: float
    std: float
    n: int
    missing: int = 0

    @classmethod
    def of(cls, values):
        values = np.asarray(values, dtype=float)
        kept = values[~np.isnan(values)]
        if not kept.size:
            return cls(math.nan, math.nan, 0, len(values))
        std = float(np.std(kept, ddof=1)) if kept.size > 1 else math.nan
        return cls(float(np.mean(kept)), std, int(kept.size), int(len(values) - kept.size))


@dataclass
class Difference:
    """mean(a) - mean(b) with its two-sided confidence interval."""
    diff: float
    low: float
    high: float
    level: float


def mean_interval(values, level=0.95):
    """Student's t interval for the mean of ``values`` (NaNs left out), as a
    :class:`Difference` from zero; NaN bounds with fewer than two values."""
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    mean = float(np.mean(values)) if values.size else math.nan
    if values.size < 2:
        return Difference(mean, math.nan, math.nan, level)
    half = t_factor(values.size, level) * float(np.std(values, ddof=1))
    return Difference(mean, mean - half, mean + half, level)


def t_factor(n, level=0.95):
    """How many standard deviations either side of the mean the t interval
    of ``n`` values reaches: t(level, n-1) / sqrt(n)."""
    return float(stats.t.ppf(0.5 + level / 2, n - 1)) / math.sqrt(n)


def clipped(d, low, high):
    """``d`` with its bounds kept within [low, high], what the quantity can be
    (an error rate lies in [0, 1], a difference of two in [-1, 1])."""
    return Difference(d.diff, min(max(d.low, low), high), min(max(d.high, low), high), d.level)  # NaN stays NaN


def welch_difference(a, b, level=0.95):
    """Welch's t interval for mean(a) - mean(b); NaN bounds with fewer than
    two values on a side, where no spread can be estimated."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    diff = float(np.mean(a) - np.mean(b)) if a.size and b.size else math.nan
    if a.size < 2 or b.size < 2:
        return Difference(diff, math.nan, math.nan, level)
    va, vb = np.var(a, ddof=1) / a.size, np.var(b, ddof=1) / b.size
    se = math.sqrt(va + vb)
    if se == 0:
        return Difference(diff, diff, diff, level)
    dof = (va + vb) ** 2 / (va ** 2 / (a.size - 1) + vb ** 2 / (b.size - 1))
    half = stats.t.ppf(0.5 + level / 2, dof) * se
    return Difference(diff, diff - half, diff + half, level)
