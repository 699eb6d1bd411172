"""Each statistic against an independent reference: hand formulas, scipy or statsmodels on the same arrays."""

import math

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats import proportion
from statsmodels.stats.contingency_tables import StratifiedTable, Table2x2
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

from fhir_msc.analysis.stats import (
    compare_binary,
    compare_continuous,
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


# --- second opinions: each estimator against statsmodels, or a formula computed here from scratch ----------

TABLES = [(23, 26, 10, 19), (26, 23, 19, 9), (3, 40, 12, 30), (50, 2, 45, 9)]  # a, b, c, d; treatment first


@pytest.mark.parametrize("a, b, c, d", TABLES)
def test_woolf_or_ci_and_p_agree_with_statsmodels_table2x2(a, b, c, d):
    table = Table2x2(np.array([[a, b], [c, d]]))
    for alpha in (0.05, 0.10):
        est = odds_ratio_woolf(a, b, c, d, alpha)
        assert (est.estimate, est.lower, est.upper) == pytest.approx((table.oddsratio, *table.oddsratio_confint(alpha)))
        assert est.se == pytest.approx(table.log_oddsratio_se)
        assert est.p_value == pytest.approx(table.oddsratio_pvalue())


@pytest.mark.parametrize("a, b, c, d", TABLES)
def test_wald_risk_difference_agrees_with_statsmodels(a, b, c, d):
    est = risk_difference((a, c), (a + b, c + d))
    lower, upper = proportion.confint_proportions_2indep(a, a + b, c, c + d, method="wald", compare="diff")
    assert (est.lower, est.upper) == pytest.approx((lower, upper))
    test = proportion.test_proportions_2indep(a, a + b, c, c + d, method="wald", compare="diff")
    assert est.estimate == pytest.approx(test.diff)
    assert est.p_value == pytest.approx(test.pvalue)


def _fisher_two_sided(a: int, b: int, c: int, d: int) -> float:
    """Sum of the hypergeometric probabilities of every table with the margins that is no likelier than this one."""
    row, col, n = a + b, a + c, a + b + c + d
    def prob(x: int) -> float:
        return math.comb(col, x) * math.comb(n - col, row - x) / math.comb(n, row)
    observed = prob(a)
    return sum(p for x in range(max(0, row + col - n), min(row, col) + 1) if (p := prob(x)) <= observed * (1 + 1e-7))


@pytest.mark.parametrize("a, b, c, d", TABLES)
def test_fisher_and_chi2_p_agree_with_a_hand_hypergeometric_sum_and_statsmodels(a, b, c, d):
    summary = compare_binary((a, c), (a + b, c + d))
    assert summary.fisher_p == pytest.approx(_fisher_two_sided(a, b, c, d))
    assert summary.chi2_p == pytest.approx(Table2x2(np.array([[a, b], [c, d]])).test_nominal_association().pvalue)


STRATA = [[[10, 5], [6, 9]], [[8, 7], [4, 11]], [[3, 9], [2, 12]]]


def test_mantel_haenszel_ci_and_p_agree_with_the_robins_breslow_greenland_and_cmh_formulas():
    cells = [(a, b, c, d, a + b + c + d) for (a, b), (c, d) in STRATA]
    r = [a * d / n for a, b, c, d, n in cells]
    s = [b * c / n for a, b, c, d, n in cells]
    p = [(a + d) / n for a, b, c, d, n in cells]
    q = [(b + c) / n for a, b, c, d, n in cells]
    big_r, big_s = sum(r), sum(s)
    var = (sum(pi * ri for pi, ri in zip(p, r)) / (2 * big_r ** 2)
           + sum(pi * si + qi * ri for pi, qi, ri, si in zip(p, q, r, s)) / (2 * big_r * big_s)
           + sum(qi * si for qi, si in zip(q, s)) / (2 * big_s ** 2))
    half = stats.norm.ppf(0.975) * math.sqrt(var)
    est = mantel_haenszel(STRATA)
    assert est.estimate == pytest.approx(big_r / big_s)
    assert (est.lower, est.upper) == pytest.approx((big_r / big_s * math.exp(-half), big_r / big_s * math.exp(half)))
    expected = sum((a + b) * (a + c) / n for a, b, c, d, n in cells)
    variance = sum((a + b) * (c + d) * (a + c) * (b + d) / (n ** 2 * (n - 1)) for a, b, c, d, n in cells)
    chi2 = (sum(a for a, *_ in cells) - expected) ** 2 / variance
    assert est.p_value == pytest.approx(stats.chi2.sf(chi2, 1))
    assert est.estimate == pytest.approx(StratifiedTable([np.array(t) for t in STRATA]).oddsratio_pooled)


@pytest.mark.parametrize("seed", [1, 2])
def test_pooled_and_welch_t_intervals_agree_with_statsmodels_comparemeans(seed):
    rng = np.random.default_rng(seed)
    x, y = rng.normal(60, 20, 40), rng.normal(50, 30, 27)
    means = CompareMeans(DescrStatsW(x), DescrStatsW(y))
    for pooled, usevar in ((True, "pooled"), (False, "unequal")):
        est = mean_difference(x, y, pooled=pooled, alpha=0.1)
        assert (est.lower, est.upper) == pytest.approx(means.tconfint_diff(alpha=0.1, usevar=usevar))
        statistic, p_value, _ = means.ttest_ind(usevar=usevar)
        assert est.p_value == pytest.approx(p_value)
        assert est.se == pytest.approx(est.estimate / statistic)


def _mann_whitney_exact_interval(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[float, float]:
    """The shifts the exact two-sided Mann-Whitney test does not reject (test inversion over every difference)."""
    differences = np.sort(np.subtract.outer(x, y).ravel())
    between = (differences[:-1] + differences[1:]) / 2
    kept = np.flatnonzero([stats.mannwhitneyu(x - shift, y, method="exact").pvalue > alpha for shift in between])
    return differences[kept[0]], differences[kept[-1] + 1]


@pytest.mark.parametrize("m, n", [(6, 6), (8, 8), (10, 10), (9, 12), (15, 15), (20, 18)])
def test_hodges_lehmann_against_brute_force_differences_and_the_mann_whitney_interval(m, n):
    rng = np.random.default_rng(m * 100 + n)
    x, y = rng.normal(1, 1, m), rng.normal(0, 1.3, n)
    differences = np.sort(np.subtract.outer(x, y).ravel())  # all m·n of them, sorted
    est = hodges_lehmann(x, y)
    assert est.estimate == pytest.approx(np.median(differences))
    # the documented CI: the k-th smallest and k-th largest difference, k from the normal approximation
    k = math.floor(m * n / 2 - stats.norm.ppf(0.975) * math.sqrt(m * n * (m + n + 1) / 12))
    assert (est.lower, est.upper) == (differences[k - 1], differences[m * n - k])
    # it holds the exact Mann-Whitney inversion, and is at most one order statistic wider on each side
    # (k is rounded down: conservative; equal to the exact interval only for 10/10 and 15/15 here)
    lower, upper = _mann_whitney_exact_interval(x, y, 0.05)
    assert differences[k - 1] <= lower <= differences[k] and differences[m * n - k - 1] <= upper <= differences[m * n - k]
    assert ((est.lower, est.upper) == (lower, upper)) == ((m, n) in [(10, 10), (15, 15)])


def test_mann_whitney_p_with_ties_agrees_with_the_tie_corrected_normal_formula():
    x = np.array([3, 4, 4, 5, 5, 5, 6, 6, 7, 8, 8, 9.0])
    y = np.array([2, 3, 3, 4, 4, 5, 5, 5, 6, 6, 7.0])
    ranks = stats.rankdata(np.concatenate([x, y]))
    m, n = len(x), len(y)
    u = ranks[:m].sum() - m * (m + 1) / 2
    _, ties = np.unique(np.concatenate([x, y]), return_counts=True)
    sigma = math.sqrt(m * n / 12 * ((m + n + 1) - (ties ** 3 - ties).sum() / ((m + n) * (m + n - 1))))
    z = (abs(u - m * n / 2) - 0.5) / sigma
    assert compare_continuous(x, y).mann_whitney_p == pytest.approx(2 * stats.norm.sf(z))


def test_continuous_descriptives_agree_with_the_statistics_module():
    import statistics

    x, y = np.array([12, 15.5, 9, 30, 22, 18, 18, 27.25]), np.array([5, 8, 13, 21, 34, 55.0])
    summary = compare_continuous(x, y)
    for index, values in enumerate((list(x), list(y))):
        q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
        assert (summary.mean[index], summary.sd[index]) == pytest.approx((statistics.mean(values), statistics.stdev(values)))
        assert (summary.q1[index], summary.median[index], summary.q3[index]) == pytest.approx((q1, median, q3))
    assert summary.n == (8, 6)
