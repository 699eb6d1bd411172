"""Between-arm statistics that state their method.

Every estimate is an :class:`Estimate` naming its method, the function that computed it,
alpha, estimate, SE, CI and p-value. Ratios get their CI on the log scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

Z = stats.norm.ppf


@dataclass(frozen=True, kw_only=True)
class Estimate:
    """One effect estimate with its interval, and how it was computed."""

    effect: str
    method: str
    function: str
    alpha: float
    estimate: float
    se: float | None
    lower: float
    upper: float
    p_value: float | None
    note: str = ""


@dataclass(frozen=True, kw_only=True)
class BinarySummary:
    """Events / n per arm (treatment first) and the tests on the 2×2 table."""

    events: tuple[int, int]
    n: tuple[int, int]
    odds_ratio: Estimate
    risk_difference: Estimate
    fisher_p: float
    chi2_p: float

    @property
    def percent(self) -> tuple[float, float]:
        return tuple(100 * e / n if n else float("nan") for e, n in zip(self.events, self.n))  # type: ignore[return-value]


@dataclass(frozen=True, kw_only=True)
class ContinuousSummary:
    """Descriptives per arm (treatment first) and the two-sample estimates."""

    n: tuple[int, int]
    mean: tuple[float, float]
    sd: tuple[float, float]
    median: tuple[float, float]
    q1: tuple[float, float]
    q3: tuple[float, float]
    mean_difference: Estimate
    mean_difference_welch: Estimate
    hodges_lehmann: Estimate
    mann_whitney_p: float


def odds_ratio_woolf(a: int, b: int, c: int, d: int, alpha: float = 0.05) -> Estimate:
    """OR of the 2×2 table [[a, b], [c, d]] with Woolf's logit CI.

    With a zero cell, 0.5 is added to every cell (Haldane-Anscombe) and the note says so.
    """
    note = ""
    if 0 in (a, b, c, d):
        a, b, c, d = (x + 0.5 for x in (a, b, c, d))
        note = "Haldane-Anscombe correction: 0.5 added to every cell (a cell was zero)"
    log_or = math.log(a * d / (b * c))
    se = math.sqrt(1 / a + 1 / b + 1 / c + 1 / d)
    z = Z(1 - alpha / 2)
    p = 2 * stats.norm.sf(abs(log_or / se))
    return Estimate(effect="odds ratio", method="Woolf (logit) CI, Wald z test on log OR", function=f"{__name__}.odds_ratio_woolf",
                    alpha=alpha, estimate=math.exp(log_or), se=se, lower=math.exp(log_or - z * se),
                    upper=math.exp(log_or + z * se), p_value=p, note=note)


def risk_difference(events: tuple[int, int], n: tuple[int, int], alpha: float = 0.05) -> Estimate:
    """Difference of proportions (treatment − control) with the Wald CI."""
    p1, p2 = events[0] / n[0], events[1] / n[1]
    se = math.sqrt(p1 * (1 - p1) / n[0] + p2 * (1 - p2) / n[1])
    z = Z(1 - alpha / 2)
    diff = p1 - p2
    p = 2 * stats.norm.sf(abs(diff / se)) if se > 0 else float("nan")
    return Estimate(effect="risk difference", method="Wald CI", function=f"{__name__}.risk_difference",
                    alpha=alpha, estimate=diff, se=se, lower=diff - z * se, upper=diff + z * se, p_value=p)


def compare_binary(events: tuple[int, int], n: tuple[int, int], alpha: float = 0.05) -> BinarySummary:
    a, c = events
    b, d = n[0] - a, n[1] - c
    table = [[a, b], [c, d]]
    chi2_p = float(stats.chi2_contingency(table, correction=False).pvalue) if min(a + c, b + d) > 0 else float("nan")
    return BinarySummary(events=events, n=n, odds_ratio=odds_ratio_woolf(a, b, c, d, alpha),
                         risk_difference=risk_difference(events, n, alpha),
                         fisher_p=float(stats.fisher_exact(table).pvalue), chi2_p=chi2_p)


def mantel_haenszel(tables: list[list[list[int]]], alpha: float = 0.05) -> Estimate:
    """Stratified (Mantel-Haenszel) OR over 2×2 tables, Robins-Breslow-Greenland CI (statsmodels)."""
    from statsmodels.stats.contingency_tables import StratifiedTable

    stratified = StratifiedTable([np.asarray(t, dtype=float) for t in tables])
    lower, upper = stratified.oddsratio_pooled_confint(alpha=alpha)
    return Estimate(effect="odds ratio (Mantel-Haenszel)", method="Mantel-Haenszel pooled OR, RBG CI, MH test",
                    function="statsmodels StratifiedTable.oddsratio_pooled_confint / test_null_odds",
                    alpha=alpha, estimate=float(stratified.oddsratio_pooled), se=float(stratified.logodds_pooled_se),
                    lower=float(lower), upper=float(upper), p_value=float(stratified.test_null_odds().pvalue))


def mean_difference(x: np.ndarray, y: np.ndarray, *, pooled: bool, alpha: float = 0.05) -> Estimate:
    """Difference of means (x − y) with the Student (pooled) or Welch t interval (scipy ttest_ind)."""
    result = stats.ttest_ind(x, y, equal_var=pooled)
    ci = result.confidence_interval(confidence_level=1 - alpha)
    diff = float(np.mean(x) - np.mean(y))
    return Estimate(effect="difference of means", method="pooled-variance t" if pooled else "Welch t",
                    function=f"scipy.stats.ttest_ind(equal_var={pooled})", alpha=alpha, estimate=diff,
                    se=float(diff / result.statistic) if result.statistic else None,
                    lower=float(ci.low), upper=float(ci.high), p_value=float(result.pvalue))


def hodges_lehmann(x: np.ndarray, y: np.ndarray, alpha: float = 0.05) -> Estimate:
    """Hodges-Lehmann shift (median of all x−y differences) with the distribution-free CI.

    The CI takes the k-th smallest and largest pairwise differences, k from the normal
    approximation to the Mann-Whitney null distribution (Hollander & Wolfe). Order
    statistics of the differences are selected without forming all n1·n2 of them.
    """
    xs, ys = np.sort(np.asarray(x, float)), np.sort(np.asarray(y, float))
    n1, n2 = len(xs), len(ys)
    total = n1 * n2
    k = int(math.floor(total / 2 - Z(1 - alpha / 2) * math.sqrt(total * (n1 + n2 + 1) / 12)))
    k = max(k, 1)
    middle = [(total - 1) // 2, total // 2]  # the median is the mean of these two order statistics
    median = float(np.mean([pairwise_difference(xs, ys, rank) for rank in middle]))
    p = float(stats.mannwhitneyu(xs, ys, alternative="two-sided").pvalue)
    return Estimate(effect="median difference (Hodges-Lehmann)", method="distribution-free CI from Mann-Whitney critical value",
                    function=f"{__name__}.hodges_lehmann; p from scipy.stats.mannwhitneyu", alpha=alpha,
                    estimate=median, se=None, lower=pairwise_difference(xs, ys, k - 1),
                    upper=pairwise_difference(xs, ys, total - k), p_value=p)


def pairwise_difference(xs: np.ndarray, ys: np.ndarray, rank: int, window: int = 1_000_000) -> float:
    """The ``rank``-th smallest (from 0) of all differences x − y, for sorted ``xs`` and ``ys``.

    With few distinct values, each distinct difference is weighed by how often it occurs.
    Otherwise bisects on the value until at most ``window`` differences lie between the
    bounds (counting them with searchsorted), then selects exactly among those: memory is
    O(n1 + n2 + window), not O(n1·n2).
    """
    x_values, x_counts = np.unique(xs, return_counts=True)
    y_values, y_counts = np.unique(ys, return_counts=True)
    if len(x_values) * len(y_values) <= window:  # few distinct values (scores): weigh each distinct difference
        differences = np.subtract.outer(x_values, y_values).ravel()
        order = np.argsort(differences, kind="stable")
        weights = np.outer(x_counts, y_counts).ravel()[order]
        return float(differences[order][np.searchsorted(np.cumsum(weights), rank, side="right")])
    m = len(ys)
    lo, hi = float(xs[0] - ys[-1]), float(xs[-1] - ys[0])  # every difference is in [lo, hi]

    def at_most(t: float) -> int:  # how many differences are <= t
        return int(m * len(xs) - np.searchsorted(ys, xs - t, side="left").sum())
    count_lo, count_hi = at_most(lo), at_most(hi)
    while count_hi - count_lo > window:
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            break  # the bounds are adjacent floats: the window is all ties
        count_mid = at_most(mid)
        if count_mid > rank:
            hi, count_hi = mid, count_mid
        else:
            lo, count_lo = mid, count_mid
    margin = 1e-9 * max(1.0, abs(lo), abs(hi))  # far wider than rounding in xs - t
    start = np.searchsorted(ys, xs - (hi + margin), side="left")
    stop = np.searchsorted(ys, xs - (lo - margin), side="right")
    below = int((m - stop).sum())  # differences smaller than the window
    if int((stop - start).sum()) <= window:
        differences = _differences(xs, ys, start, stop)
        return float(np.partition(differences, rank - below)[rank - below])
    # Ties: more pairs than the window share a few values. Count each value chunk by chunk.
    values, counts = _tally(xs, ys, start, stop, window)
    return float(values[np.searchsorted(np.cumsum(counts), rank - below, side="right")])


def _differences(xs: np.ndarray, ys: np.ndarray, start: np.ndarray, stop: np.ndarray) -> np.ndarray:
    """x[i] − ys[start[i]:stop[i]] for every i, as one array."""
    counts = stop - start
    rows = np.repeat(np.arange(len(xs)), counts)
    position_in_row = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
    return xs[rows] - ys[np.repeat(start, counts) + position_in_row]


def _tally(xs: np.ndarray, ys: np.ndarray, start: np.ndarray, stop: np.ndarray, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """The distinct differences x[i] − ys[start[i]:stop[i]] and how often each occurs, ``chunk`` pairs at a time."""
    cut = np.searchsorted(np.cumsum(stop - start), np.arange(chunk, int((stop - start).sum()), chunk))
    values, counts = np.array([]), np.array([], dtype=np.int64)
    for rows in np.split(np.arange(len(xs)), np.unique(cut)):
        part = np.unique(_differences(xs[rows], ys, start[rows], stop[rows]), return_counts=True)
        merged = np.concatenate([values, part[0]])
        values, inverse = np.unique(merged, return_inverse=True)
        counts = np.bincount(inverse, weights=np.concatenate([counts, part[1]]), minlength=len(values)).astype(np.int64)
    return values, counts


def compare_continuous(x: np.ndarray, y: np.ndarray, alpha: float = 0.05) -> ContinuousSummary:
    x, y = np.asarray(x, float), np.asarray(y, float)
    q = [np.percentile(v, [25, 50, 75]) for v in (x, y)]
    return ContinuousSummary(
        n=(len(x), len(y)), mean=(float(x.mean()), float(y.mean())),
        sd=(float(x.std(ddof=1)), float(y.std(ddof=1))), median=(float(q[0][1]), float(q[1][1])),
        q1=(float(q[0][0]), float(q[1][0])), q3=(float(q[0][2]), float(q[1][2])),
        mean_difference=mean_difference(x, y, pooled=True, alpha=alpha),
        mean_difference_welch=mean_difference(x, y, pooled=False, alpha=alpha),
        hodges_lehmann=hodges_lehmann(x, y, alpha),
        mann_whitney_p=float(stats.mannwhitneyu(x, y, alternative="two-sided").pvalue))
