"""Between-arm statistics that state their method.

Every estimate is an :class:`Estimate` naming its method, the function that computed it,
alpha, estimate, SE, CI and p-value. Ratios get their CI on the log scale. A ratio that the
data cannot estimate (no events, or only events, in both arms) has estimate and CI None and
a note saying why: never a number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from .ptests import chi2_yates_p, likelihood_ratio_p, wilcoxon_rank_sum_p

Z = stats.norm.ppf


@dataclass(frozen=True, kw_only=True)
class Estimate:
    """One effect estimate with its interval, and how it was computed."""

    effect: str
    method: str
    function: str
    alpha: float
    estimate: float | None  # None: not estimable (the note says why)
    se: float | None
    lower: float | None
    upper: float | None
    p_value: float | None
    note: str = ""
    likelihood_ratio_p: float | None = None  # a fitted model's likelihood-ratio test of treatment (None: not fitted)

    @property
    def estimable(self) -> bool:
        return self.estimate is not None


@dataclass(frozen=True, kw_only=True)
class BinarySummary:
    """Events / n per arm (treatment first) and the tests on the 2×2 table."""

    events: tuple[int, int]
    n: tuple[int, int]
    odds_ratio: Estimate
    exact_odds_ratio: Estimate
    relative_risk: Estimate
    risk_difference: Estimate
    risk_difference_newcombe: Estimate
    fisher_p: float
    chi2_p: float
    chi2_yates_p: float | None = None  # None: a margin of the table is empty
    likelihood_ratio_p: float | None = None

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
    wilcoxon_p: float | None = None  # rank-sum, normal approximation; None when every value is tied


def _not_estimable(a: int, b: int, c: int, d: int) -> str:
    """Why no ratio can be estimated from [[a, b], [c, d]] (events first), or "" when one can."""
    if a + c == 0:
        return "not estimable: no events in either arm"
    if b + d == 0:
        return "not estimable: every subject in both arms had the event"
    return ""


def _unestimable(effect: str, method: str, function: str, alpha: float, why: str) -> Estimate:
    return Estimate(effect=effect, method=method, function=function, alpha=alpha, estimate=None, se=None,
                    lower=None, upper=None, p_value=None, note=why)


def odds_ratio_woolf(a: int, b: int, c: int, d: int, alpha: float = 0.05) -> Estimate:
    """OR of the 2×2 table [[a, b], [c, d]] (events first) with Woolf's logit CI.

    With a zero cell, 0.5 is added to every cell (Haldane-Anscombe) and the note says so.
    Not estimable (None, with a note) when neither arm, or both arms entirely, had the event.
    """
    method, function = "Woolf (logit) CI, Wald z test on log OR", f"{__name__}.odds_ratio_woolf"
    if why := _not_estimable(a, b, c, d):
        return _unestimable("odds ratio", method, function, alpha, why)
    note = ""
    if 0 in (a, b, c, d):
        a, b, c, d = (x + 0.5 for x in (a, b, c, d))
        note = "Haldane-Anscombe correction: 0.5 added to every cell (a cell was zero)"
    log_or = math.log(a * d / (b * c))
    se = math.sqrt(1 / a + 1 / b + 1 / c + 1 / d)
    z = Z(1 - alpha / 2)
    p = 2 * stats.norm.sf(abs(log_or / se))
    return Estimate(effect="odds ratio", method=method, function=function,
                    alpha=alpha, estimate=math.exp(log_or), se=se, lower=math.exp(log_or - z * se),
                    upper=math.exp(log_or + z * se), p_value=p, note=note)


EXACT_METHOD = "conditional MLE, exact (Cornfield) CI, Fisher exact test"
EXACT_FUNCTION = 'scipy.stats.contingency.odds_ratio(kind="conditional"); p from scipy.stats.fisher_exact'
EXACT_NOT_ASKED = ("not computed (its exact CI takes seconds at 10,000 subjects per arm, over a minute at 100,000): "
                   "set analysis.effects.binary to exact-odds-ratio, or run analyze --exact-odds-ratio")


def odds_ratio_exact(a: int, b: int, c: int, d: int, alpha: float = 0.05) -> Estimate:
    """Conditional maximum-likelihood OR of [[a, b], [c, d]] with the exact (Cornfield) CI and Fisher's exact p.

    The CI inverts the two one-sided tests of the noncentral hypergeometric distribution, each
    at alpha/2 (``scipy.stats.contingency.odds_ratio(kind="conditional")``). A zero cell needs
    no correction: the estimate is then 0 or infinity with a one-sided CI, and the note says so.
    Not estimable (None) when neither arm, or both arms entirely, had the event.
    """
    from scipy.stats.contingency import odds_ratio

    if why := _not_estimable(a, b, c, d):
        return _unestimable("odds ratio (exact conditional)", EXACT_METHOD, EXACT_FUNCTION, alpha, why)
    result = odds_ratio([[a, b], [c, d]], kind="conditional")
    ci = result.confidence_interval(confidence_level=1 - alpha)
    note = ("a zero cell: the conditional MLE is on the boundary and the exact CI is open on that side"
            if 0 in (a, b, c, d) else "")
    return Estimate(effect="odds ratio (exact conditional)", method=EXACT_METHOD, function=EXACT_FUNCTION, alpha=alpha,
                    estimate=float(result.statistic), se=None, lower=float(ci.low), upper=float(ci.high),
                    p_value=fisher_p(a, b, c, d), note=note)


def odds_ratio_exact_not_asked(a: int, b: int, c: int, d: int, alpha: float = 0.05) -> Estimate:
    """The exact conditional OR left uncomputed: no numbers, and a note saying why (``EXACT_NOT_ASKED``,
    or "not estimable" when no ratio can be estimated from these data)."""
    return _unestimable("odds ratio (exact conditional)", EXACT_METHOD, EXACT_FUNCTION, alpha,
                        _not_estimable(a, b, c, d) or EXACT_NOT_ASKED)


def fisher_p(a: int, b: int, c: int, d: int) -> float:
    """Fisher's exact test of [[a, b], [c, d]], two-sided (``scipy.stats.fisher_exact``)."""
    return float(stats.fisher_exact([[a, b], [c, d]]).pvalue)


def relative_risk(events: tuple[int, int], n: tuple[int, int], alpha: float = 0.05) -> Estimate:
    """Risk ratio (treatment / control) with the Katz log CI and a Wald z test on log RR.

    When an arm has no events, 0.5 is added to every cell (Haldane-Anscombe; the note says so).
    Not estimable (None) when neither arm, or both arms entirely, had the event.
    """
    method, function = "Katz log CI, Wald z test on log RR", f"{__name__}.relative_risk"
    (a, c), (n1, n2) = events, n
    if why := _not_estimable(a, n1 - a, c, n2 - c):
        return _unestimable("relative risk", method, function, alpha, why)
    note = ""
    if 0 in (a, c):
        a, c, n1, n2 = a + 0.5, c + 0.5, n1 + 1, n2 + 1
        note = "Haldane-Anscombe correction: 0.5 added to every cell (an arm had no events)"
    log_rr = math.log((a / n1) / (c / n2))
    se = math.sqrt(1 / a - 1 / n1 + 1 / c - 1 / n2)
    z = Z(1 - alpha / 2)
    p = 2 * stats.norm.sf(abs(log_rr / se)) if se > 0 else float("nan")
    return Estimate(effect="relative risk", method=method, function=function, alpha=alpha,
                    estimate=math.exp(log_rr), se=se, lower=math.exp(log_rr - z * se),
                    upper=math.exp(log_rr + z * se), p_value=p, note=note)


def risk_difference(events: tuple[int, int], n: tuple[int, int], alpha: float = 0.05) -> Estimate:
    """Difference of proportions (treatment − control) with the Wald CI."""
    p1, p2 = events[0] / n[0], events[1] / n[1]
    se = math.sqrt(p1 * (1 - p1) / n[0] + p2 * (1 - p2) / n[1])
    z = Z(1 - alpha / 2)
    diff = p1 - p2
    p = 2 * stats.norm.sf(abs(diff / se)) if se > 0 else float("nan")
    return Estimate(effect="risk difference", method="Wald CI", function=f"{__name__}.risk_difference",
                    alpha=alpha, estimate=diff, se=se, lower=diff - z * se, upper=diff + z * se, p_value=p)


def wilson(events: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval of one proportion."""
    z, p = Z(1 - alpha / 2), events / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def risk_difference_newcombe(events: tuple[int, int], n: tuple[int, int], alpha: float = 0.05) -> Estimate:
    """Difference of proportions (treatment − control) with Newcombe's hybrid score CI (method 10).

    The CI combines the Wilson score intervals of the two proportions (Newcombe 1998); it stays
    inside [−1, 1] and is defined with zero cells. p is Pearson's χ² (the score test of equal
    proportions, no continuity correction); None when a margin of the table is empty.
    """
    p1, p2 = events[0] / n[0], events[1] / n[1]
    (l1, u1), (l2, u2) = wilson(events[0], n[0], alpha), wilson(events[1], n[1], alpha)
    diff = p1 - p2
    lower = diff - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    upper = diff + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return Estimate(effect="risk difference", method="Newcombe hybrid score CI (Wilson, method 10), Pearson χ² p",
                    function=f"{__name__}.risk_difference_newcombe", alpha=alpha, estimate=diff, se=None,
                    lower=lower, upper=upper, p_value=_chi2_p(events, n))


def _chi2_p(events: tuple[int, int], n: tuple[int, int]) -> float | None:
    a, c = events
    b, d = n[0] - a, n[1] - c
    if min(a + c, b + d) == 0:
        return None
    return float(stats.chi2_contingency([[a, b], [c, d]], correction=False).pvalue)


def compare_binary(events: tuple[int, int], n: tuple[int, int], alpha: float = 0.05, *,
                   exact: bool = False) -> BinarySummary:
    """Every estimate and test of the 2×2 table of events / n per arm (treatment first).

    The exact conditional OR (:func:`odds_ratio_exact`) only when ``exact``: its CI takes seconds
    at 10,000 subjects per arm, over a minute at 100,000. Otherwise it has no numbers and its note says why
    (:func:`odds_ratio_exact_not_asked`). Fisher's exact p is always computed.
    """
    a, c = events
    b, d = n[0] - a, n[1] - c
    chi2_p = _chi2_p(events, n)
    exact_or = odds_ratio_exact if exact else odds_ratio_exact_not_asked
    return BinarySummary(events=events, n=n, odds_ratio=odds_ratio_woolf(a, b, c, d, alpha),
                         exact_odds_ratio=exact_or(a, b, c, d, alpha),
                         relative_risk=relative_risk(events, n, alpha),
                         risk_difference=risk_difference(events, n, alpha),
                         risk_difference_newcombe=risk_difference_newcombe(events, n, alpha),
                         fisher_p=fisher_p(a, b, c, d),
                         chi2_p=float("nan") if chi2_p is None else chi2_p,
                         chi2_yates_p=chi2_yates_p(events, n), likelihood_ratio_p=likelihood_ratio_p(events, n))


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


EXACT_BELOW = 50  # Hodges-Lehmann CI from the exact Mann-Whitney distribution when both arms are smaller (as R's wilcox.test)


def hodges_lehmann(x: np.ndarray, y: np.ndarray, alpha: float = 0.05) -> Estimate:
    """Hodges-Lehmann shift (median of all x−y differences) with the distribution-free CI.

    The CI takes the k-th smallest and largest pairwise differences. When both arms have fewer
    than ``EXACT_BELOW`` values and no value is tied, k comes from the exact null distribution of
    the Mann-Whitney U statistic (the CI inverts the exact test, coverage at least 1 − alpha; if
    the samples are too small for that coverage the CI is unbounded and the note says so).
    Otherwise k comes from its normal approximation (Hollander & Wolfe), rounded down. Order
    statistics of the differences are selected without forming all n1·n2 of them.
    """
    xs, ys = np.sort(np.asarray(x, float)), np.sort(np.asarray(y, float))
    n1, n2 = len(xs), len(ys)
    total = n1 * n2
    exact = max(n1, n2) < EXACT_BELOW and len(np.unique(np.concatenate([xs, ys]))) == n1 + n2
    if exact:
        k = exact_mann_whitney_rank(n1, n2, alpha)
        method = "exact distribution-free CI (inverts the exact Mann-Whitney test)"
    else:
        k = max(int(math.floor(total / 2 - Z(1 - alpha / 2) * math.sqrt(total * (n1 + n2 + 1) / 12))), 1)
        method = "distribution-free CI from the normal approximation to the Mann-Whitney critical value"
    middle = [(total - 1) // 2, total // 2]  # the median is the mean of these two order statistics
    limits = [k - 1, total - k] if k >= 1 else []
    found = pairwise_differences(xs, ys, middle + limits)
    median = float(np.mean(found[:2]))
    p = float(stats.mannwhitneyu(xs, ys, alternative="two-sided", method="exact" if exact else "asymptotic").pvalue)
    note, lower, upper = "", -math.inf, math.inf
    if limits:
        lower, upper = found[2:]
    else:
        note = f"arms too small for a {100 * (1 - alpha):g}% exact CI: it is unbounded"
    return Estimate(effect="median difference (Hodges-Lehmann)", method=method,
                    function=f"{__name__}.hodges_lehmann; p from scipy.stats.mannwhitneyu", alpha=alpha,
                    estimate=median, se=None, lower=lower, upper=upper, p_value=p, note=note)


def mann_whitney_null_counts(n1: int, n2: int) -> list[int]:
    """How many of the C(n1+n2, n1) rankings give U = 0, 1, …, n1·n2 (no ties), exactly.

    The generating function of U is the Gaussian binomial coefficient
    ∏_{i=1..n1} (1 − q^(n2+i)) / (1 − q^i), expanded here with integer arithmetic.
    """
    counts = [1]
    for i in range(1, n1 + 1):
        grown = counts + [0] * (n2 + i)
        for j, value in enumerate(counts):  # × (1 − q^(n2+i))
            grown[j + n2 + i] -= value
        for j in range(i, len(grown)):  # ÷ (1 − q^i)
            grown[j] += grown[j - i]
        counts = grown[:len(counts) + n2]
    return counts


def exact_mann_whitney_rank(n1: int, n2: int, alpha: float) -> int:
    """The largest k with P(U ≤ k − 1) ≤ alpha/2 under the exact null; 0 when even P(U = 0) is larger."""
    counts = mann_whitney_null_counts(n1, n2)
    total, k, below = sum(counts), 0, 0
    while 2 * (below + counts[k]) <= alpha * total:  # alpha is a float: compare without dividing big integers
        below += counts[k]
        k += 1
    return k


def pairwise_differences(xs: np.ndarray, ys: np.ndarray, ranks: list[int], window: int = 1_000_000) -> list[float]:
    """The ``ranks``-th smallest (from 0) of all differences x − y, for sorted ``xs`` and ``ys``.

    With few distinct values, each distinct difference is weighed by how often it occurs (one
    table for every rank). Otherwise each rank is selected by :func:`_select`. Memory is
    O(n1 + n2 + window), not O(n1·n2).
    """
    (x_values, x_counts), (y_values, y_counts) = _distinct(xs), _distinct(ys)
    if len(x_values) * len(y_values) <= window:  # few distinct values (scores): weigh each distinct difference
        differences = np.subtract.outer(x_values, y_values).ravel()
        order = np.argsort(differences, kind="stable")
        weights = np.outer(x_counts, y_counts).ravel()[order]
        return differences[order][np.searchsorted(np.cumsum(weights), ranks, side="right")].tolist()
    return [_select(xs, ys, rank, window) for rank in ranks]


def _select(xs: np.ndarray, ys: np.ndarray, rank: int, window: int) -> float:
    """The ``rank``-th smallest of all differences x − y: bisects on the value until at most ``window``
    differences lie between the bounds (counting them with searchsorted), then selects exactly among those."""
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


def _distinct(ordered: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct values of a sorted array and how often each occurs: ``np.unique(..., return_counts=True)``
    without sorting again."""
    if not len(ordered):
        return ordered, np.zeros(0, dtype=np.intp)
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    return ordered[starts], np.diff(np.r_[starts, len(ordered)])


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
    """Descriptives and every two-sample estimate; the Mann-Whitney p is the Hodges-Lehmann estimate's test."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    shift = hodges_lehmann(x, y, alpha)
    q = [np.percentile(v, [25, 50, 75]) for v in (x, y)]
    return ContinuousSummary(
        n=(len(x), len(y)), mean=(float(x.mean()), float(y.mean())),
        sd=(float(x.std(ddof=1)), float(y.std(ddof=1))), median=(float(q[0][1]), float(q[1][1])),
        q1=(float(q[0][0]), float(q[1][0])), q3=(float(q[0][2]), float(q[1][2])),
        mean_difference=mean_difference(x, y, pooled=True, alpha=alpha),
        mean_difference_welch=mean_difference(x, y, pooled=False, alpha=alpha),
        hodges_lehmann=shift, mann_whitney_p=shift.p_value,  # type: ignore[arg-type]
        wilcoxon_p=wilcoxon_rank_sum_p(x, y))
