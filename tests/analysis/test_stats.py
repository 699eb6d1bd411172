"""Each statistic against an independent reference: hand formulas, scipy or statsmodels on the same arrays."""

import math

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.contingency_tables import Table2x2

from fhir_msc.analysis.stats import (
    compare_binary,
    hodges_lehmann,
    mantel_haenszel,
    mean_difference,
    odds_ratio_woolf,
    pairwise_difference,
    risk_difference,
)


def test_woolf_or_matches_the_hand_computation_in_study_md():
    # Reinfection: OR = 26*9/(23*19); SE = sqrt(1/26+1/23+1/19+1/9)
    est = odds_ratio_woolf(26, 23, 19, 9)
    se = math.sqrt(1 / 26 + 1 / 23 + 1 / 19 + 1 / 9)
    assert est.estimate == pytest.approx(26 * 9 / (23 * 19))
    assert est.se == pytest.approx(se)
    assert (round(est.lower, 2), round(est.upper, 2)) == (0.20, 1.41)
    assert est.method.startswith("Woolf") and est.note == ""


def test_woolf_or_agrees_with_statsmodels():
    table = Table2x2(np.array([[23, 26], [10, 19]]))
    est = odds_ratio_woolf(23, 26, 10, 19)
    assert est.estimate == pytest.approx(table.oddsratio)
    assert (est.lower, est.upper) == pytest.approx(table.oddsratio_confint())
    assert est.p_value == pytest.approx(table.oddsratio_pvalue())


def test_zero_cell_gets_haldane_anscombe_and_says_so():
    est = odds_ratio_woolf(0, 10, 5, 5)
    assert est.estimate == pytest.approx((0.5 * 5.5) / (10.5 * 5.5))
    assert "Haldane-Anscombe" in est.note
    assert math.isfinite(est.lower) and math.isfinite(est.upper)


def test_binary_tests_match_scipy():
    summary = compare_binary((23, 10), (49, 29))
    assert summary.fisher_p == pytest.approx(stats.fisher_exact([[23, 26], [10, 19]]).pvalue)
    assert summary.chi2_p == pytest.approx(stats.chi2_contingency([[23, 26], [10, 19]], correction=False).pvalue)
    assert summary.percent == pytest.approx((46.94, 34.48), abs=0.005)


def test_risk_difference_wald():
    est = risk_difference((23, 10), (49, 29))
    p1, p2 = 23 / 49, 10 / 29
    se = math.sqrt(p1 * (1 - p1) / 49 + p2 * (1 - p2) / 29)
    assert est.estimate == pytest.approx(p1 - p2)
    assert est.upper - est.estimate == pytest.approx(1.959964 * se, rel=1e-5)


def test_mantel_haenszel_matches_hand_formula():
    tables = [[[10, 5], [6, 9]], [[8, 7], [4, 11]]]
    mh = sum(a * d / (a + b + c + d) for (a, b), (c, d) in tables) / sum(b * c / (a + b + c + d) for (a, b), (c, d) in tables)
    est = mantel_haenszel(tables)
    assert est.estimate == pytest.approx(mh)
    assert est.lower < mh < est.upper and "Mantel-Haenszel" in est.method


def test_mean_difference_pooled_and_welch_match_hand_formulas():
    x, y = np.array([10, 12, 14, 16, 18, 20, 22, 24.0]), np.array([15, 17, 19, 21, 23, 25.0])
    pooled = mean_difference(x, y, pooled=True)
    sp = math.sqrt((168 + 70) / 12)
    half = stats.t.ppf(0.975, 12) * sp * math.sqrt(1 / 8 + 1 / 6)
    assert (pooled.estimate, pooled.lower, pooled.upper) == pytest.approx((-3, -3 - half, -3 + half))
    welch = mean_difference(x, y, pooled=False)
    se = math.sqrt(x.var(ddof=1) / 8 + y.var(ddof=1) / 6)
    df = se ** 4 / ((x.var(ddof=1) / 8) ** 2 / 7 + (y.var(ddof=1) / 6) ** 2 / 5)
    assert welch.upper - welch.estimate == pytest.approx(stats.t.ppf(0.975, df) * se)
    assert welch.method == "Welch t" and pooled.method == "pooled-variance t"


@pytest.mark.parametrize("window", [1, 50, 1_000_000])
@pytest.mark.parametrize("data", ["continuous", "integer scores", "one-decimal scores"])
def test_pairwise_difference_selects_exactly_what_sorting_all_differences_gives(window, data):
    rng = np.random.default_rng(7)
    x, y = {"continuous": (rng.normal(60, 20, 40), rng.normal(50, 20, 31)),
            "integer scores": (rng.integers(0, 6, 40).astype(float), rng.integers(0, 6, 31).astype(float)),
            "one-decimal scores": (np.round(rng.uniform(0, 3, 40), 1), np.round(rng.uniform(0, 3, 31), 1))}[data]
    xs, ys = np.sort(x), np.sort(y)
    every = np.sort(np.subtract.outer(xs, ys).ravel())
    for rank in (0, 1, 300, 620, 621, len(every) - 2, len(every) - 1):
        assert pairwise_difference(xs, ys, rank, window) == every[rank]


def test_hodges_lehmann_is_the_median_pairwise_difference():
    x, y = np.array([1.0, 2, 3, 4, 5, 6, 7, 8, 9, 10]), np.array([3.0, 4, 5, 6, 7, 8, 9, 10, 11, 12])
    est = hodges_lehmann(x, y)
    assert est.estimate == pytest.approx(-2.0)
    assert est.lower < -2 < est.upper
    assert est.p_value == pytest.approx(stats.mannwhitneyu(x, y).pvalue)
