"""Published results checked field by field, each at the precision the paper writes it with.

A ``published`` entry of the study definition may give an estimate and CI, a p with its test,
n, counts, proportions or percents per arm, means, SDs, medians and IQRs per arm (see
:class:`PublishedResult`). Each field given becomes one :class:`FieldCheck`: the value as
written, the recomputed value rounded to the same decimals (half up), and whether they match.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING

from ..study.definition import PublishedResult, Stated
from .stats import BinarySummary, ContinuousSummary
from .survival import TimeToEventSummary

if TYPE_CHECKING:
    from .frame import Comparison

WALD_EFFECTS = ("odds-ratio", "relative-risk", "risk-difference")  # effects whose p is a Wald z test
LOG_RANK = "not computable for this outcome: the log-rank test needs a time-to-event outcome"
NO_FAMILY = ("not computable: the comparison is in no multiplicity family (its arms are no pair of the analysis plan, "
             "or its effect has no p)")


@dataclass(frozen=True, kw_only=True)
class FieldCheck:
    """One published field next to its recomputation at the published decimals."""

    field: str  # estimate, lower, upper, p, p_adjusted, n, events, proportion, percent, mean, sd, median, q1, q3
    arm: str | None  # arm code for per-arm fields
    expected: str  # as the paper writes it
    got: str | None  # recomputed, at the published precision; None: not computable (note says why)
    decimals: int
    matches: bool
    test: str | None = None  # for p: the test named
    note: str = ""

    def describe(self) -> str:
        """For people: ``MSC percent: expected 46.94, got 46.90 (2 decimals)``."""
        name = " ".join(part for part in (self.arm, self.field, f"({self.test})" if self.test else None) if part)
        if self.got is None:
            return f"{name}: expected {self.expected}, {self.note}"
        return f"{name}: expected {self.expected}, got {self.got} ({self.decimals} decimals)"


def at(value: float, decimals: int) -> str:
    """``value`` rounded half up to ``decimals`` (from its shortest repr, as a person rounds what they see)."""
    return str(Decimal(repr(float(value))).quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_UP))


def _number_check(field: str, arm: str | None, stated: Stated, got: float | None, decimals: int | None = None,
                  test: str | None = None, note: str = "") -> FieldCheck:
    places = stated.decimals if decimals is None else decimals
    expected = f"{stated.comparator}{at(stated.value, places)}"
    if got is None or got != got:  # None or NaN
        return FieldCheck(field=field, arm=arm, expected=expected, got=None, decimals=places, matches=False,
                          test=test, note=note or "not computable from these data")
    if stated.comparator:  # "<0.001": the recomputed value must be on that side
        matches = got < stated.value if stated.comparator == "<" else got > stated.value
        shown = at(got, max(places + 2, 4)) if got >= 10 ** -(places + 2) else f"{got:.2e}"
        return FieldCheck(field=field, arm=arm, expected=expected, got=shown, decimals=places, matches=matches, test=test)
    shown = at(got, places)
    return FieldCheck(field=field, arm=arm, expected=expected, got=shown, decimals=places,
                      matches=Decimal(shown) == Decimal(at(stated.value, places)), test=test)


def _count_check(field: str, arm: str, expected: int, got: int) -> FieldCheck:
    return FieldCheck(field=field, arm=arm, expected=str(expected), got=str(got), decimals=0, matches=expected == got)


def p_value(comparison: Comparison, test: str) -> tuple[float | None, str]:
    """The p of the named test for this comparison, or None and why it is not computable."""
    s = comparison.summary
    if isinstance(s, TimeToEventSummary):
        if test != "log-rank":
            return None, f"not computable for this outcome: {test} does not apply to a time-to-event comparison"
        return (s.log_rank_p, "") if s.log_rank_p is not None else (None, "not computable: no events")
    if test == "log-rank":
        return None, LOG_RANK
    if isinstance(s, BinarySummary):
        if test == "wald":
            key = next((k for k in WALD_EFFECTS if comparison.effect is getattr(s, k.replace("-", "_"))), None)
            if key is None:
                return None, f"not computable: the effect {comparison.effect.effect} has no Wald test (declare one of {', '.join(WALD_EFFECTS)})"
            return comparison.effect.p_value, ""
        found = {"fisher": s.fisher_p, "pearson-chi2": s.chi2_p, "pearson-chi2-yates": s.chi2_yates_p,
                 "likelihood-ratio": s.likelihood_ratio_p}
    elif isinstance(s, ContinuousSummary):
        found = {"t-pooled": s.mean_difference.p_value, "t-welch": s.mean_difference_welch.p_value,
                 "mann-whitney": s.mann_whitney_p, "wilcoxon": s.wilcoxon_p}
    else:
        found = {}
    if test not in found:
        return None, f"not computable for this outcome: {test} does not apply to a {comparison.kind} comparison"
    value = found[test]
    return (None, "not computable: a margin of the table is empty or every value is tied") if value is None or value != value else (value, "")


def check(target: PublishedResult, comparison: Comparison) -> list[FieldCheck]:
    """Every field the published entry gives, checked against the comparison."""
    checks = []
    effect = comparison.effect
    for name in ("estimate", "lower", "upper"):
        stated = getattr(target, name)
        if stated is not None:
            note = effect.note if not effect.estimable else ""
            checks.append(_number_check(name, None, stated, getattr(effect, name), target.decimals, note=note))
    if target.p is not None:
        got, why = p_value(comparison, target.p.test)
        checks.append(_number_check("p", None, target.p.value, got, test=target.p.test, note=why))
    if target.p_adjusted is not None:
        adjusted = comparison.adjusted
        checks.append(_number_check("p_adjusted", None, target.p_adjusted, adjusted.p if adjusted else None,
                                    test=adjusted.method if adjusted else None, note=NO_FAMILY))
    s = comparison.summary
    for index, arm in enumerate(comparison.arms):
        if target.n and arm in target.n:
            checks.append(_count_check("n", arm, target.n[arm], s.n[index]))
        if isinstance(s, BinarySummary):
            if target.counts and arm in target.counts:
                events, n = target.counts[arm]
                checks += [_count_check("events", arm, events, s.events[index]), _count_check("n", arm, n, s.n[index])]
            share = s.events[index] / s.n[index] if s.n[index] else None
            if target.proportions and arm in target.proportions:
                checks.append(_number_check("proportion", arm, target.proportions[arm], share))
            if target.percents and arm in target.percents:
                checks.append(_number_check("percent", arm, target.percents[arm], None if share is None else 100 * share))
        elif isinstance(s, TimeToEventSummary):
            if target.counts and arm in target.counts:
                events, n = target.counts[arm]
                checks += [_count_check("events", arm, events, s.events[index]), _count_check("n", arm, n, s.n[index])]
            if target.medians and arm in target.medians:
                checks.append(_number_check("median", arm, target.medians[arm], s.medians[index].median,
                                            note="not computable: the Kaplan-Meier median is not reached"))
        elif isinstance(s, ContinuousSummary):
            for name, given, got in (("mean", target.means, s.mean), ("sd", target.sds, s.sd), ("median", target.medians, s.median)):
                if given and arm in given:
                    checks.append(_number_check(name, arm, given[arm], got[index]))
            if target.iqrs and arm in target.iqrs:
                first, third = target.iqrs[arm]
                checks += [_number_check("q1", arm, first, s.q1[index]), _number_check("q3", arm, third, s.q3[index])]
    return checks
