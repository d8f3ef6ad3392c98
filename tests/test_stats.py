"""The statistics of fxnn-summary against independent references: scipy's
Welch test, the interval-inclusion form of the two one-sided tests, Holm's
procedure worked by hand, and interpolation checked on constructed curves."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import stats as scipy_stats

from fxnn.analysis.stats import equivalence, holm, iterations_to, welch_difference, welch_p

SAMPLES = [
    ([0.051, 0.048, 0.050], [0.061, 0.058, 0.066]),
    ([0.10, 0.12, 0.11, 0.13, 0.09], [0.11, 0.10, 0.12]),
    ([1.0, 2.0], [1.5, 1.7, 1.2, 1.9]),
]


@pytest.mark.parametrize("a, b", SAMPLES)
def test_welch_p_equals_scipys_unequal_variance_t_test(a, b):
    assert welch_p(a, b) == pytest.approx(scipy_stats.ttest_ind(a, b, equal_var=False).pvalue, rel=1e-10)


@pytest.mark.parametrize("a, b", SAMPLES)
@pytest.mark.parametrize("margin", [0.001, 0.01, 0.05, 0.5])
def test_tost_is_equivalent_exactly_when_the_90_interval_lies_inside_the_margin(a, b, margin):
    e = equivalence(a, b, margin)
    ci = welch_difference(a, b, level=0.90)
    assert e.equivalent(0.05) == (-margin < ci.low and ci.high < margin)
    # each one-sided p is scipy's one-sided Welch test against the shifted mean
    shifted_low = scipy_stats.ttest_ind(np.add(a, margin), b, equal_var=False, alternative="greater").pvalue
    shifted_high = scipy_stats.ttest_ind(np.subtract(a, margin), b, equal_var=False, alternative="less").pvalue
    assert e.p == pytest.approx(max(shifted_low, shifted_high), rel=1e-9)


def test_tost_needs_two_values_a_side_and_a_positive_margin():
    assert math.isnan(equivalence([0.1], [0.1, 0.2], 0.01).p)
    with pytest.raises(ValueError, match="margin must be positive"):
        equivalence([0.1, 0.2], [0.1, 0.2], 0)


def test_holm_worked_by_hand_and_nans_kept_out_of_the_family():
    # sorted 0.01, 0.02, 0.03, 0.04 with m = 4: 0.04, max(0.06, .04), max(0.06, .06), max(0.04, .06)
    assert holm([0.03, 0.01, 0.04, 0.02]) == pytest.approx([0.06, 0.04, 0.06, 0.06])
    adjusted = holm([0.5, math.nan, 0.01])
    assert math.isnan(adjusted[1]) and adjusted[[0, 2]] == pytest.approx([0.5, 0.02])
    assert holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])   # capped at 1, monotone


def test_holm_controls_the_family_wise_error_under_the_null():
    rng = np.random.default_rng(0)
    false_rejections = sum(bool((holm(rng.uniform(size=10)) < 0.05).any()) for _ in range(4000))
    assert false_rejections / 4000 <= 0.05 + 0.01


def _run(verate, ipr=100):
    return SimpleNamespace(verate=np.asarray(verate), record_iterations=ipr * np.arange(1, len(verate) + 1))


def test_iterations_to_target_interpolates_between_the_records_around_the_crossing():
    run = _run([0.5, 0.3, 0.1, 0.05])
    assert iterations_to(run, 0.2) == 300                                # first record at or below
    assert iterations_to(run, 0.2, interpolate=True) == pytest.approx(250)  # halfway from 0.3 to 0.1
    assert iterations_to(run, 0.1, interpolate=True) == pytest.approx(300)
    assert iterations_to(run, 0.6, interpolate=True) == 100              # reached at the first record
    assert math.isnan(iterations_to(run, 0.01, interpolate=True))
