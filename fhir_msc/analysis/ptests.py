"""The p-values a paper may report that :mod:`stats` does not compute on the way to an estimate.

Each is written out from its textbook formula (scipy only for the reference distributions);
tests compare them with independent implementations (scipy's ``chi2_contingency`` and
``mannwhitneyu``, a statsmodels logistic regression, lifelines' likelihood-ratio test).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats


def _table(events: tuple[int, int], n: tuple[int, int]) -> np.ndarray | None:
    """The 2×2 table (events, non-events per arm), or None when a margin is empty (no test exists)."""
    table = np.array([[events[0], n[0] - events[0]], [events[1], n[1] - events[1]]], dtype=float)
    if (table.sum(axis=0) == 0).any() or (table.sum(axis=1) == 0).any():
        return None
    return table


def _expected(table: np.ndarray) -> np.ndarray:
    return np.outer(table.sum(axis=1), table.sum(axis=0)) / table.sum()


def chi2_yates_p(events: tuple[int, int], n: tuple[int, int]) -> float | None:
    """Pearson's χ² with Yates' continuity correction: Σ (|O − E| − ½)² / E on 1 df.

    The correction is never more than |O − E| (as R's chisq.test and scipy do), so a table
    equal to its expectation gives χ² = 0, p = 1. None when a margin is empty.
    """
    table = _table(events, n)
    if table is None:
        return None
    expected = _expected(table)
    deviation = np.abs(table - expected)
    statistic = float((((deviation - np.minimum(0.5, deviation)) ** 2) / expected).sum())
    return float(stats.chi2.sf(statistic, 1))


def likelihood_ratio_p(events: tuple[int, int], n: tuple[int, int]) -> float | None:
    """The likelihood-ratio (G) test of equal proportions: G = 2 Σ O ln(O / E) on 1 df (empty cells add 0).

    It equals the deviance difference of a logistic regression on arm against the null model.
    None when a margin is empty.
    """
    table = _table(events, n)
    if table is None:
        return None
    expected = _expected(table)
    filled = table > 0
    statistic = 2 * float((table[filled] * np.log(table[filled] / expected[filled])).sum())
    return float(stats.chi2.sf(max(statistic, 0.0), 1))


def wilcoxon_rank_sum_p(x: np.ndarray, y: np.ndarray) -> float | None:
    """Wilcoxon rank-sum test, two-sided, by the normal approximation with tie and continuity corrections.

    W is the sum of the ranks of ``x`` in the pooled sample (mid-ranks for ties); its variance is
    n1·n2/12 · (N + 1 − Σ(t³ − t)/(N(N − 1))). This is what SAS NPAR1WAY and R's
    ``wilcox.test(exact = FALSE)`` report; ``mann-whitney`` is exact for small samples without ties.
    None when every value is tied (no variance).
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    n1, n2 = len(x), len(y)
    total = n1 + n2
    ranks = stats.rankdata(np.concatenate([x, y]))
    w = float(ranks[:n1].sum())
    _, ties = np.unique(np.concatenate([x, y]), return_counts=True)
    variance = n1 * n2 / 12 * (total + 1 - float((ties ** 3 - ties).sum()) / (total * (total - 1)))
    if variance <= 0:
        return None
    deviation = abs(w - n1 * (total + 1) / 2)
    z = max(deviation - 0.5, 0.0) / math.sqrt(variance)
    return float(2 * stats.norm.sf(z))


def nested_likelihood_ratio_p(full: float, reduced: float) -> float:
    """The likelihood-ratio test of one parameter: 2 (ℓ_full − ℓ_reduced) on 1 df, from the log-likelihoods of a model
    with and without it (fitted to the same subjects)."""
    return float(stats.chi2.sf(max(2 * (full - reduced), 0.0), 1))
