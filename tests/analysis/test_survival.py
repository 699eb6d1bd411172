"""Time-to-event effects against statsmodels' survival functions and hand computation."""

import math

import numpy as np
import pytest
from scipy import stats

from fhir_msc.analysis.survival import cox_hazard_ratio, kaplan_meier_median, log_rank, median_difference

T1, E1 = np.array([2, 5, 7, 9, 12, 15, 18, 22, 25, 30.5]), np.array([1, 1, 0, 1, 1, 0, 1, 1, 0, 1], bool)
T2, E2 = np.array([1, 3, 4, 6, 8, 10, 11, 13, 16, 20.5]), np.array([1, 1, 1, 0, 1, 1, 1, 0, 1, 1], bool)


def test_the_kaplan_meier_median_and_its_band():
    from statsmodels.duration.survfunc import SurvfuncRight

    got = kaplan_meier_median(T1, E1)
    assert got.median == pytest.approx(SurvfuncRight(T1, E1).quantile(0.5))
    # by hand: S(t) and Greenwood's variance, the log(−log) band, where it crosses 0.5
    times, s, greenwood, bands = np.unique(T1[E1]), 1.0, 0.0, []
    for t in times:
        n, d = (T1 >= t).sum(), ((T1 == t) & E1).sum()
        s *= 1 - d / n
        greenwood += d / (n * (n - d)) if n > d else 0
        half = 1.959964 * math.sqrt(greenwood) / abs(math.log(s)) if 0 < s < 1 else 0
        bands.append((s ** math.exp(half), s ** math.exp(-half)))  # lower, upper band of S(t)
    assert got.lower == pytest.approx(next(t for t, (low, _) in zip(times, bands) if low <= 0.5))
    assert got.upper == pytest.approx(next(t for t, (_, high) in zip(times, bands) if high <= 0.5))
    assert got.lower < got.median < got.upper


def test_a_median_not_reached_is_none_not_a_number():
    got = kaplan_meier_median(np.array([5, 6, 7, 8.0]), np.array([1, 0, 0, 0], bool))
    assert got.median is None and got.upper is None
    assert median_difference((np.array([5, 6, 7, 8.0]), np.array([1, 0, 0, 0], bool)), (T2, E2)).estimate is None


def test_log_rank_p_is_statsmodels_survdiff_and_the_peto_ratio_by_hand():
    from statsmodels.duration.survfunc import survdiff

    got = log_rank((T1, E1), (T2, E2))
    times, groups = np.r_[T1, T2], np.r_[np.ones(10), np.zeros(10)]
    _, p = survdiff(times, np.r_[E1, E2].astype(int), groups)
    assert got.p_value == pytest.approx(p, rel=1e-6)
    chi2 = stats.chi2.isf(p, 1)  # (O − E)² / V
    assert abs(math.log(got.estimate)) == pytest.approx(math.sqrt(chi2) * got.se, rel=1e-6)
    assert got.estimate < 1  # the first arm has its events later


def test_the_cox_hazard_ratio_is_statsmodels_phreg():
    from statsmodels.duration.hazard_regression import PHReg

    got = cox_hazard_ratio((T1, E1), (T2, E2))
    fit = PHReg(np.r_[T1, T2], np.r_[np.ones(10), np.zeros(10)][:, None], status=np.r_[E1, E2].astype(int),
                ties="efron").fit()
    assert got.estimate == pytest.approx(math.exp(fit.params[0]), rel=1e-4)
    assert got.se == pytest.approx(fit.bse[0], rel=1e-3)
    assert got.p_value == pytest.approx(fit.pvalues[0], rel=1e-3)
