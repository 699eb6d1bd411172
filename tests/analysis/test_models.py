"""Adjusted, ordinal and count effects against independent computations (hand formulas, scipy, numpy)."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import optimize, stats

from fhir_msc.analysis.models import (
    adjusted_mean_difference,
    adjusted_odds_ratio,
    mann_whitney,
    proportional_odds,
    rate_ratio,
)
from fhir_msc.analysis.stats import mean_difference, odds_ratio_woolf


def _table_rows(a: int, b: int, c: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    event = np.r_[np.ones(a), np.zeros(b), np.ones(c), np.zeros(d)]
    treated = np.r_[np.ones(a + b), np.zeros(c + d)]
    return event, treated


def test_an_unadjusted_logistic_odds_ratio_is_the_woolf_odds_ratio():
    event, treated = _table_rows(12, 8, 5, 15)
    fitted, woolf = adjusted_odds_ratio(event, treated), odds_ratio_woolf(12, 8, 5, 15)
    for name in ("estimate", "se", "lower", "upper", "p_value"):
        assert getattr(fitted, name) == pytest.approx(getattr(woolf, name), rel=1e-6)


def test_the_adjusted_odds_ratio_is_the_maximum_likelihood_of_the_logistic_model():
    rng = np.random.default_rng(3)
    age, sex, treated = rng.normal(50, 10, 200), rng.integers(0, 2, 200), np.r_[np.ones(100), np.zeros(100)]
    event = (rng.random(200) < 1 / (1 + np.exp(-(-2 + 0.8 * treated + 0.03 * age - 0.5 * sex)))).astype(float)
    x = np.column_stack([np.ones(200), treated, age, sex])

    def minus_log_likelihood(beta):  # by hand, maximised with scipy
        eta = x @ beta
        return -np.sum(event * eta - np.logaddexp(0, eta))
    beta = optimize.minimize(minus_log_likelihood, np.zeros(4), method="BFGS", options={"gtol": 1e-9}).x
    p = 1 / (1 + np.exp(-x @ beta))
    se = math.sqrt(np.linalg.inv(x.T @ (x * (p * (1 - p))[:, None]))[1, 1])  # inverse Fisher information
    got = adjusted_odds_ratio(event, treated, pd.DataFrame({"age": age, "sex": sex}))
    assert got.estimate == pytest.approx(math.exp(beta[1]), rel=1e-4)
    assert got.se == pytest.approx(se, rel=1e-3)
    assert got.lower == pytest.approx(math.exp(beta[1] - 1.959964 * se), rel=1e-3)
    assert "age, sex" in got.method


def test_an_adjusted_odds_ratio_with_separation_is_not_estimable():
    event, treated = _table_rows(10, 0, 0, 10)
    got = adjusted_odds_ratio(event, treated)
    assert got.estimate is None and got.lower is None and "not estimable" in got.note


def test_ancova_is_least_squares_and_without_covariates_the_pooled_t():
    rng = np.random.default_rng(5)
    baseline, treated = rng.normal(20, 5, 40), np.r_[np.ones(20), np.zeros(20)]
    value = 3 + 0.6 * baseline - 2 * treated + rng.normal(0, 2, 40)
    x = np.column_stack([np.ones(40), treated, baseline])
    beta, residual, *_ = np.linalg.lstsq(x, value, rcond=None)
    sigma2 = residual[0] / (40 - 3)
    se = math.sqrt(sigma2 * np.linalg.inv(x.T @ x)[1, 1])
    got = adjusted_mean_difference(value, treated, pd.DataFrame({"baseline": baseline}))
    assert got.estimate == pytest.approx(beta[1]) and got.se == pytest.approx(se)
    assert got.upper == pytest.approx(beta[1] + stats.t.ppf(0.975, 37) * se)
    plain = adjusted_mean_difference(value, treated)
    t = mean_difference(value[:20], value[20:], pooled=True)
    assert (plain.estimate, plain.lower, plain.p_value) == pytest.approx((t.estimate, t.lower, t.p_value))


def test_proportional_odds_on_two_levels_is_the_odds_ratio():
    event, treated = _table_rows(12, 8, 5, 15)
    got, woolf = proportional_odds(event.astype(int), treated), odds_ratio_woolf(12, 8, 5, 15)
    assert got.estimate == pytest.approx(woolf.estimate, rel=1e-4)
    assert got.se == pytest.approx(woolf.se, rel=1e-3)


def test_proportional_odds_is_the_maximum_likelihood_of_the_cumulative_logit_model():
    level = np.r_[[0] * 3 + [1] * 5 + [2] * 7 + [3] * 5, [0] * 7 + [1] * 6 + [2] * 4 + [3] * 3]
    treated = np.r_[np.ones(20), np.zeros(20)]

    def minus_log_likelihood(theta):  # P(Y <= j) = expit(c_j − b·treated), by hand
        cuts, b = np.cumsum(np.r_[theta[0], np.exp(theta[1:3])]), theta[3]
        upper = np.r_[cuts, np.inf][level] - b * treated
        lower = np.r_[-np.inf, cuts][level] - b * treated
        return -np.sum(np.log(stats.logistic.cdf(upper) - stats.logistic.cdf(lower)))
    fit = optimize.minimize(minus_log_likelihood, np.zeros(4), method="BFGS", options={"gtol": 1e-9})
    got = proportional_odds(level, treated)
    assert got.estimate == pytest.approx(math.exp(fit.x[3]), rel=1e-4)
    assert got.estimate > 1  # treatment is shifted to higher levels


def test_the_mann_whitney_probability_counts_pairs():
    x, y = np.array([3, 4, 4, 5, 2]), np.array([1, 2, 4, 3])
    by_hand = sum((a > b) + 0.5 * (a == b) for a in x for b in y) / (len(x) * len(y))
    got = mann_whitney(x, y)
    assert got.estimate == pytest.approx(by_hand)
    assert got.p_value == pytest.approx(stats.mannwhitneyu(x, y).pvalue)


def test_the_rate_ratio_inverts_the_exact_conditional_binomial_test():
    from statsmodels.stats.rates import test_poisson_2indep

    events, exposure = (30, 15), (1000.0, 1200.0)
    got = rate_ratio(events, exposure)
    assert got.estimate == pytest.approx((30 / 1000) / (15 / 1200))
    assert got.p_value == pytest.approx(test_poisson_2indep(30, 1000, 15, 1200, method="exact-cond").pvalue, rel=1e-6)

    def share(ratio):  # the treatment's share of the events under a rate ratio
        return ratio * 1000 / (ratio * 1000 + 1200)
    assert stats.binom.sf(29, 45, share(got.lower)) == pytest.approx(0.025, rel=1e-6)  # P(X >= 30) at the lower bound
    assert stats.binom.cdf(30, 45, share(got.upper)) == pytest.approx(0.025, rel=1e-6)


def test_rate_ratios_without_events_are_not_numbers():
    assert rate_ratio((0, 0), (10.0, 10.0)).estimate is None
    one_sided = rate_ratio((0, 4), (10.0, 10.0))
    assert one_sided.estimate == 0 and one_sided.lower == 0 and one_sided.upper < math.inf and one_sided.note
