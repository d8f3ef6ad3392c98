"""Summary statistics over seeds: validation error at chosen iterations,
iterations and training seconds to reach a target error, and the difference
between two models with a Welch confidence interval (the seeds of two models
are independent samples with possibly different spreads), or between two
settings of one model paired by seed (a seed gives both the same
initialisation and data order, so the per-seed differences are the sample)."""
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


def reached_at(run, target, along, interpolate=False):
    """``along`` (one value per record: its iteration, a clock) at the first
    record whose validation error is at most ``target``, or NaN if the run
    never got there. ``interpolate``: where the straight line between that
    record and the one before it crosses ``target``, the same fraction of the
    way along (validation is only seen at the records, so the record count
    alone moves in steps of -ipr and gives ties)."""
    reached = np.flatnonzero(run.verate <= target)
    if not reached.size:
        return math.nan
    i = reached[0]
    if not interpolate or i == 0:
        return float(along[i])
    before, after = float(run.verate[i - 1]), float(run.verate[i])
    return float(along[i - 1] + (along[i] - along[i - 1]) * (before - target) / (before - after))


def iterations_to(run, target, interpolate=False):
    """The iteration at which the validation error first reaches ``target``
    (:func:`reached_at`)."""
    return reached_at(run, target, run.record_iterations, interpolate)


#: The training clocks of a record: wall and CPU seconds (validation and recording left out).
CLOCKS = {"wall": "twall", "cpu": "tcpu"}


def seconds_to(run, target, clock="wall"):
    """The training seconds (``clock`` "wall" or "cpu") at which the validation
    error first reaches ``target``, interpolated between records as
    :func:`reached_at`; ValueError for a record without training clocks."""
    times = getattr(run, CLOCKS[clock])
    if times is None:
        raise ValueError(f"{run.path}: no training clocks (twall, tcpu): it was written by an fxnn from before "
                         f"they were recorded; rerun it to time it, or leave out --time")
    return reached_at(run, target, times, interpolate=True)


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
    return _t_interval(diff, *_welch_se_dof(a, b), level)


def welch_p(a, b):
    """Two-sided p-value of Welch's t test of mean(a) = mean(b); NaN with
    fewer than two values on a side."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.size < 2 or b.size < 2:
        return math.nan
    return _t_p(float(np.mean(a) - np.mean(b)), *_welch_se_dof(a, b))


def _welch_se_dof(a, b):
    va, vb = np.var(a, ddof=1) / a.size, np.var(b, ddof=1) / b.size
    se = math.sqrt(va + vb)
    dof = (va + vb) ** 2 / (va ** 2 / (a.size - 1) + vb ** 2 / (b.size - 1)) if se else math.inf
    return se, dof


def paired_difference(a, b, level=0.95):
    """The mean of the paired differences a[i] - b[i] with its t interval
    (pairs with a NaN left out; NaN bounds with fewer than two pairs)."""
    return mean_interval(_paired(a, b), level)


def paired_p(a, b):
    """Two-sided p-value of the paired t test of mean(a - b) = 0 (pairs with
    a NaN left out); NaN with fewer than two pairs."""
    d = _paired(a, b)
    return _t_p(*_mean_se_dof(d)) if d.size > 1 else math.nan


def _paired(a, b):
    """The differences a[i] - b[i] of the pairs without a NaN."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired values come in pairs: got {a.size} and {b.size} values")
    d = a - b
    return d[~np.isnan(d)]


def _mean_se_dof(d):
    """Mean, standard error and degrees of freedom of one sample's mean."""
    return float(np.mean(d)), float(np.std(d, ddof=1)) / math.sqrt(d.size), d.size - 1


def _t_interval(diff, se, dof, level):
    if se == 0:
        return Difference(diff, diff, diff, level)
    half = stats.t.ppf(0.5 + level / 2, dof) * se
    return Difference(diff, diff - half, diff + half, level)


def _t_p(diff, se, dof):
    """Two-sided p of the t test of ``diff`` = 0 (no spread: 1 if it is 0, else 0)."""
    if se == 0:
        return 1.0 if diff == 0 else 0.0
    return float(2 * stats.t.sf(abs(diff) / se, dof))


def _tost_p(diff, se, dof, margin):
    """The larger p of the two one-sided t tests of -margin < ``diff`` < margin."""
    if se == 0:
        return 0.0 if abs(diff) < margin else 1.0
    p_above = stats.t.sf((diff + margin) / se, dof)    # H0: diff <= -margin
    p_below = stats.t.cdf((diff - margin) / se, dof)   # H0: diff >= margin
    return float(max(p_above, p_below))


@dataclass
class Equivalence:
    """Two one-sided t tests (TOST, Welch's or paired) of |difference| <
    ``margin``: ``p`` is the larger of the two one-sided p-values; the
    difference is shown equivalent at level ``alpha`` when p < alpha, which
    is when the (1 - 2 alpha) interval lies inside (-margin, margin)."""
    diff: float
    margin: float
    p: float

    def equivalent(self, alpha=0.05):
        return self.p < alpha


def _check_margin(margin):
    if not margin > 0:
        raise ValueError(f"an equivalence margin must be positive, got {margin}")


def equivalence(a, b, margin):
    """:class:`Equivalence` of the means of ``a`` and ``b`` within
    ``margin`` > 0 by Welch's tests (NaN p with fewer than two values on a
    side: nothing can be shown)."""
    _check_margin(margin)
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    diff = float(np.mean(a) - np.mean(b)) if a.size and b.size else math.nan
    if a.size < 2 or b.size < 2:
        return Equivalence(diff, margin, math.nan)
    return Equivalence(diff, margin, _tost_p(diff, *_welch_se_dof(a, b), margin))


def paired_equivalence(a, b, margin):
    """:class:`Equivalence` of the mean paired difference a[i] - b[i] with
    zero within ``margin`` > 0 by two one-sided paired t tests (NaN p with
    fewer than two pairs)."""
    _check_margin(margin)
    d = _paired(a, b)
    if d.size < 2:
        return Equivalence(float(np.mean(d)) if d.size else math.nan, margin, math.nan)
    diff, se, dof = _mean_se_dof(d)
    return Equivalence(diff, margin, _tost_p(diff, se, dof, margin))


def holm(pvalues):
    """Holm's step-down adjustment of a family of p-values (NaNs left out of
    the family and returned as NaN): reject hypothesis i at level alpha when
    its adjusted p-value is below alpha; controls the family-wise error rate."""
    p = np.asarray(pvalues, dtype=float)
    adjusted = np.full(p.shape, math.nan)
    present = np.flatnonzero(~np.isnan(p))
    order = present[np.argsort(p[present], kind="stable")]
    m, running = len(order), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted
