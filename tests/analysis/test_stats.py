"""Each statistic against an independent reference: hand formulas, scipy or statsmodels on the same arrays."""

import math
from dataclasses import replace

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats import proportion
from statsmodels.stats.contingency_tables import StratifiedTable, Table2x2
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

from fhir_msc.analysis.stats import (
    EXACT_NOT_ASKED,
    compare_binary,
    compare_continuous,
    exact_mann_whitney_rank,
    hodges_lehmann,
    mann_whitney_null_counts,
    mantel_haenszel,
    mean_difference,
    odds_ratio_exact,
    odds_ratio_woolf,
    pairwise_differences,
    relative_risk,
    risk_difference,
    risk_difference_newcombe,
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


def test_the_exact_or_is_computed_only_when_asked_for_and_otherwise_says_why():
    skipped, asked = compare_binary((23, 10), (49, 29)), compare_binary((23, 10), (49, 29), exact=True)
    left = skipped.exact_odds_ratio
    assert (left.estimate, left.se, left.lower, left.upper, left.p_value) == (None,) * 5
    assert left.note == EXACT_NOT_ASKED and left.note.startswith("not computed") and "--exact-odds-ratio" in left.note
    assert (left.effect, left.method, left.function) == (asked.exact_odds_ratio.effect, asked.exact_odds_ratio.method,
                                                         asked.exact_odds_ratio.function)
    assert asked.exact_odds_ratio == odds_ratio_exact(23, 26, 10, 19) and asked.exact_odds_ratio.estimable
    assert replace(skipped, exact_odds_ratio=asked.exact_odds_ratio) == asked  # nothing else depends on it
    assert compare_binary((0, 0), (10, 12)).exact_odds_ratio.note == "not estimable: no events in either arm"


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
def test_pairwise_differences_select_exactly_what_sorting_all_differences_gives(window, data):
    rng = np.random.default_rng(7)
    x, y = {"continuous": (rng.normal(60, 20, 40), rng.normal(50, 20, 31)),
            "integer scores": (rng.integers(0, 6, 40).astype(float), rng.integers(0, 6, 31).astype(float)),
            "one-decimal scores": (np.round(rng.uniform(0, 3, 40), 1), np.round(rng.uniform(0, 3, 31), 1))}[data]
    xs, ys = np.sort(x), np.sort(y)
    every = np.sort(np.subtract.outer(xs, ys).ravel())
    ranks = [0, 1, 300, 620, 621, len(every) - 2, len(every) - 1, 300]
    assert pairwise_differences(xs, ys, ranks, window) == [every[rank] for rank in ranks]


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
def test_small_sample_hodges_lehmann_ci_is_the_exact_mann_whitney_inversion(m, n):
    rng = np.random.default_rng(m * 100 + n)
    x, y = rng.normal(1, 1, m), rng.normal(0, 1.3, n)
    differences = np.sort(np.subtract.outer(x, y).ravel())  # all m·n of them, sorted
    est = hodges_lehmann(x, y)
    assert est.estimate == pytest.approx(np.median(differences))
    assert (est.lower, est.upper) == _mann_whitney_exact_interval(x, y, 0.05)
    assert est.method.startswith("exact") and est.p_value == pytest.approx(stats.mannwhitneyu(x, y, method="exact").pvalue)


def test_large_sample_hodges_lehmann_ci_uses_the_normal_approximation_rank():
    rng = np.random.default_rng(5)
    m, n = 50, 55
    x, y = rng.normal(1, 1, m), rng.normal(0, 1.3, n)
    differences = np.sort(np.subtract.outer(x, y).ravel())
    est = hodges_lehmann(x, y)
    k = math.floor(m * n / 2 - stats.norm.ppf(0.975) * math.sqrt(m * n * (m + n + 1) / 12))
    assert (est.lower, est.upper) == (differences[k - 1], differences[m * n - k])
    assert "normal approximation" in est.method


def test_tied_values_fall_back_to_the_normal_approximation():
    est = hodges_lehmann(np.array([1.0, 2, 3, 4, 5]), np.array([3.0, 4, 6, 7]))
    assert "normal approximation" in est.method


def test_exact_mann_whitney_null_counts_match_enumerating_every_ranking():
    from itertools import combinations

    m, n = 5, 6
    counts = [0] * (m * n + 1)
    for ranks in combinations(range(m + n), m):  # the ranks of the first sample among all m + n values
        counts[sum(ranks) - m * (m - 1) // 2] += 1
    assert mann_whitney_null_counts(m, n) == counts
    # k for alpha 0.05: the textbook two-sided critical values of U (lower tail ≤ 0.025) are 2 for 5/5, 23 for 10/10
    assert (exact_mann_whitney_rank(5, 5, 0.05), exact_mann_whitney_rank(10, 10, 0.05)) == (3, 24)


def test_hodges_lehmann_of_arms_too_small_for_the_coverage_is_unbounded_and_says_so():
    est = hodges_lehmann(np.array([1.0, 2.5]), np.array([0.2, 0.7]))  # 2 vs 2: P(U = 0) = 1/6 > 0.025
    assert (est.lower, est.upper) == (-math.inf, math.inf) and "unbounded" in est.note


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


# --- exact OR, relative risk, Newcombe risk difference, zero cells -----------------------------------------

def _noncentral_pmf(a: int, b: int, c: int, d: int, psi: float) -> dict[int, float]:
    """The distribution of the top-left cell given the margins, at odds ratio psi (Fisher's noncentral hypergeometric)."""
    row, col, n = a + b, a + c, a + b + c + d
    support = range(max(0, row + col - n), min(row, col) + 1)
    logs = {x: math.log(math.comb(row, x) * math.comb(n - row, col - x)) + x * math.log(psi) for x in support}
    top = max(logs.values())
    total = sum(math.exp(v - top) for v in logs.values())
    return {x: math.exp(v - top) / total for x, v in logs.items()}


def _cornfield(a: int, b: int, c: int, d: int, alpha: float) -> tuple[float, float, float]:
    """Conditional MLE and exact CI solved from the noncentral hypergeometric by root finding."""
    from scipy.optimize import brentq

    def mean(psi: float) -> float:
        return sum(x * p for x, p in _noncentral_pmf(a, b, c, d, psi).items())
    def upper_tail(psi: float) -> float:
        return sum(p for x, p in _noncentral_pmf(a, b, c, d, psi).items() if x >= a)
    def lower_tail(psi: float) -> float:
        return sum(p for x, p in _noncentral_pmf(a, b, c, d, psi).items() if x <= a)
    log = lambda f, target: math.exp(brentq(lambda t: f(math.exp(t)) - target, -20, 20, xtol=1e-12))
    mle = 0.0 if a == 0 else log(mean, a)
    low = 0.0 if a == 0 else log(upper_tail, alpha / 2)
    return mle, low, log(lower_tail, alpha / 2)


@pytest.mark.parametrize("a, b, c, d", [*TABLES, (0, 10, 5, 5), (2, 9, 8, 3)])
def test_exact_conditional_or_agrees_with_the_noncentral_hypergeometric_solved_here(a, b, c, d):
    est = odds_ratio_exact(a, b, c, d)
    mle, low, high = _cornfield(a, b, c, d, 0.05)
    assert (est.estimate, est.lower, est.upper) == pytest.approx((mle, low, high), rel=1e-5, abs=1e-12)
    assert est.p_value == pytest.approx(_fisher_two_sided(a, b, c, d))
    assert ("zero cell" in est.note) == (0 in (a, b, c, d)) and "exact" in est.method


@pytest.mark.parametrize("a, b, c, d", TABLES)
def test_relative_risk_and_katz_ci_agree_with_statsmodels_and_scipy(a, b, c, d):
    from scipy.stats.contingency import relative_risk as scipy_rr

    table = Table2x2(np.array([[a, b], [c, d]]))
    est = relative_risk((a, c), (a + b, c + d), alpha=0.1)
    assert (est.estimate, est.lower, est.upper) == pytest.approx((table.riskratio, *table.riskratio_confint(alpha=0.1)))
    assert est.p_value == pytest.approx(table.riskratio_pvalue()) and est.note == ""
    ci = scipy_rr(a, a + b, c, c + d).confidence_interval(0.9)
    assert (est.lower, est.upper) == pytest.approx((ci.low, ci.high))


def test_relative_risk_with_no_events_in_one_arm_is_corrected_and_says_so():
    table = Table2x2(np.array([[0.5, 12.5], [5.5, 7.5]]))  # 0.5 added to every cell of [[0, 12], [5, 7]]
    est = relative_risk((0, 5), (12, 12))
    assert (est.estimate, est.lower, est.upper) == pytest.approx((table.riskratio, *table.riskratio_confint()))
    assert "Haldane-Anscombe" in est.note


def test_relative_risk_with_all_events_in_one_arm_needs_no_correction():
    est = relative_risk((10, 6), (10, 12))
    se = math.sqrt(1 / 10 - 1 / 10 + 1 / 6 - 1 / 12)
    assert est.estimate == pytest.approx(2.0) and est.se == pytest.approx(se) and est.note == ""


@pytest.mark.parametrize("events, n", [((0, 0), (10, 12)), ((10, 12), (10, 12))])
def test_ratios_are_not_estimable_when_both_arms_have_no_events_or_only_events(events, n):
    (a, c), (n1, n2) = events, n
    summary = compare_binary(events, n)
    for est in (odds_ratio_woolf(a, n1 - a, c, n2 - c), odds_ratio_exact(a, n1 - a, c, n2 - c), relative_risk(events, n),
                summary.odds_ratio, summary.exact_odds_ratio, summary.relative_risk):
        assert (est.estimate, est.lower, est.upper, est.p_value) == (None, None, None, None)
        assert est.note.startswith("not estimable") and not est.estimable
    assert summary.risk_difference_newcombe.estimate == 0.0  # a difference of 0 is a number: it stays


@pytest.mark.parametrize("events, n", [((23, 10), (49, 29)), ((3, 12), (43, 42)), ((0, 5), (10, 12)),
                                       ((0, 0), (10, 12)), ((10, 3), (10, 12)), ((1, 1), (2, 2))])
def test_newcombe_risk_difference_agrees_with_statsmodels_including_zero_cells(events, n):
    for alpha in (0.05, 0.1):
        est = risk_difference_newcombe(events, n, alpha)
        lower, upper = proportion.confint_proportions_2indep(events[0], n[0], events[1], n[1], method="newcomb",
                                                             compare="diff", alpha=alpha)
        assert (est.lower, est.upper) == pytest.approx((lower, upper))
        assert est.estimate == pytest.approx(events[0] / n[0] - events[1] / n[1]) and "Newcombe" in est.method


def test_newcombe_p_is_pearsons_chi2():
    est = risk_difference_newcombe((23, 10), (49, 29))
    assert est.p_value == pytest.approx(stats.chi2_contingency([[23, 26], [10, 19]], correction=False).pvalue)
