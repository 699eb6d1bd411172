"""The p-values added for verify (Yates χ², likelihood ratio, Wilcoxon rank-sum) against independent implementations."""

import numpy as np
import pytest
import statsmodels.api as sm
from scipy import stats

from fhir_msc.analysis.ptests import chi2_yates_p, likelihood_ratio_p, wilcoxon_rank_sum_p

TABLES = [((23, 49), (10, 29)), ((26, 49), (19, 28)), ((0, 7), (4, 6)), ((1, 3), (3, 3)), ((5, 10), (5, 10)),
          ((40, 200), (60, 210))]


@pytest.mark.parametrize(("events", "n"), [((a, b), (c, d)) for (a, c), (b, d) in TABLES])
def test_yates_chi2_agrees_with_scipy(events, n):
    table = [[events[0], n[0] - events[0]], [events[1], n[1] - events[1]]]
    assert chi2_yates_p(events, n) == pytest.approx(stats.chi2_contingency(table, correction=True).pvalue, rel=1e-12)


def test_yates_chi2_by_hand():
    # [[10, 20], [20, 10]]: every E is 15, |O − E| = 5, χ² = 4 · 4.5² / 15 = 5.4
    assert chi2_yates_p((10, 20), (30, 30)) == pytest.approx(stats.chi2.sf(5.4, 1), rel=1e-12)


@pytest.mark.parametrize(("events", "n"), [((a, b), (c, d)) for (a, c), (b, d) in TABLES])
def test_likelihood_ratio_is_the_logistic_regression_deviance_difference(events, n):
    arm = np.repeat([1.0, 0.0], n)
    outcome = np.concatenate([np.repeat([1.0, 0.0], [events[0], n[0] - events[0]]),
                              np.repeat([1.0, 0.0], [events[1], n[1] - events[1]])])
    full = sm.GLM(outcome, sm.add_constant(arm), family=sm.families.Binomial()).fit()
    null = sm.GLM(outcome, np.ones((len(outcome), 1)), family=sm.families.Binomial()).fit()
    expected = stats.chi2.sf(null.deviance - full.deviance, 1)
    assert likelihood_ratio_p(events, n) == pytest.approx(expected, rel=1e-6, abs=1e-12)


def test_likelihood_ratio_agrees_with_scipy_g_test():
    table = [[23, 26], [10, 19]]
    g = stats.chi2_contingency(table, correction=False, lambda_="log-likelihood")
    assert likelihood_ratio_p((23, 10), (49, 29)) == pytest.approx(g.pvalue, rel=1e-12)


def test_tests_of_a_table_with_an_empty_margin_are_none():
    assert chi2_yates_p((0, 0), (5, 4)) is None and likelihood_ratio_p((5, 4), (5, 4)) is None


@pytest.mark.parametrize("seed", range(5))
def test_wilcoxon_rank_sum_agrees_with_scipy_asymptotic_mann_whitney(seed):
    rng = np.random.default_rng(seed)
    x, y = rng.integers(0, 12, size=14 + seed), rng.integers(2, 14, size=9 + 2 * seed)  # many ties
    expected = stats.mannwhitneyu(x, y, alternative="two-sided", method="asymptotic", use_continuity=True).pvalue
    assert wilcoxon_rank_sum_p(x, y) == pytest.approx(expected, rel=1e-10)


def test_wilcoxon_rank_sum_by_hand():
    # x = 1, 2, 3; y = 4, 5: W = 6, E(W) = 9, Var = 3·2·6/12 = 3, z = (3 − 0.5)/√3
    assert wilcoxon_rank_sum_p([1, 2, 3], [4, 5]) == pytest.approx(2 * stats.norm.sf(2.5 / 3 ** 0.5), rel=1e-12)
    assert wilcoxon_rank_sum_p([2, 2], [2, 2, 2]) is None
