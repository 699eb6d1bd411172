"""Published results checked field by field, each at the precision the paper writes it with.

A ``published`` entry of the study definition may give an estimate and CI (a risk difference in percentage points
with ``unit``), a p with its test or without one, a relative risk reduction and a number needed to treat, n, counts,
proportions or percents per arm, means, SDs, medians and IQRs per arm (see :class:`PublishedResult`). Each field
given becomes one :class:`FieldCheck`: the value as written, the recomputed value rounded to the same decimals (half
up), and whether they match. An estimate, CI bound or NNT written "not estimable" matches a recomputation without a
finite value, with the reason; a p without its test matches when a test of the entry's effect gives it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING

from ..study.definition import EFFECT_TESTS, NOT_ESTIMABLE, Estimated, PublishedResult, Stated
from .stats import BinarySummary, ContinuousSummary
from .survival import TimeToEventSummary

if TYPE_CHECKING:
    from .frame import Comparison

FITTED = ("adjusted-odds-ratio", "adjusted-mean-difference", "proportional-odds", "cox-hazard-ratio")  # their own LR test
OWN_TESTS = ("wald", "cochran-mantel-haenszel", "exact-poisson")  # a test that is the effect's own p
NO_FAMILY = ("not computable: the comparison is in no multiplicity family (its arms are no pair of the analysis plan, "
             "or its effect has no p)")


@dataclass(frozen=True, kw_only=True)
class FieldCheck:
    """One published field next to its recomputation at the published decimals."""

    field: str  # estimate, lower, upper, p, p_adjusted, relative_risk_reduction, number_needed_to_treat, n, events,
    # proportion, percent, mean, sd, median, q1, q3
    arm: str | None  # arm code for per-arm fields
    expected: str  # as the paper writes it
    got: str | None  # recomputed, at the published precision; None: not computable (note says why)
    decimals: int
    matches: bool
    test: str | None = None  # for p: the test named, or those of the effect that give it when the paper names none
    note: str = ""

    def describe(self) -> str:
        """For people: ``MSC percent: expected 46.94, got 46.90 (2 decimals)``."""
        name = " ".join(part for part in (self.arm, self.field, f"({self.test})" if self.test else None) if part)
        if self.got is None:
            return f"{name}: expected {self.expected}, {self.note}"
        if NOT_ESTIMABLE in (self.expected, self.got):
            return f"{name}: expected {self.expected}, got {self.got}" + (f" ({self.note})" if self.note else "")
        return f"{name}: expected {self.expected}, got {self.got} ({self.decimals} decimals)"


def at(value: float, decimals: int) -> str:
    """``value`` rounded half up to ``decimals`` (from its shortest repr, as a person rounds what they see)."""
    return str(Decimal(repr(float(value))).quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_UP))


def _number_check(field: str, arm: str | None, stated: Stated, got: float | None, decimals: int | None = None,
                  test: str | None = None, note: str = "") -> FieldCheck:
    if isinstance(stated, Estimated) and stated.value is None:
        return _not_estimable_check(field, got, note)
    places = stated.decimals if decimals is None else decimals
    expected = f"{stated.comparator}{at(stated.value, places)}"
    if got is None or got != got:  # None or NaN
        return FieldCheck(field=field, arm=arm, expected=expected, got=None, decimals=places, matches=False,
                          test=test, note=note or "not computable from these data")
    if math.isinf(got):
        return FieldCheck(field=field, arm=arm, expected=expected, got="∞" if got > 0 else "-∞", decimals=places,
                          matches=False, test=test, note=note)
    if stated.comparator:  # "<0.001": the recomputed value must be on that side
        matches = got < stated.value if stated.comparator == "<" else got > stated.value
        shown = at(got, max(places + 2, 4)) if got >= 10 ** -(places + 2) else f"{got:.2e}"
        return FieldCheck(field=field, arm=arm, expected=expected, got=shown, decimals=places, matches=matches, test=test)
    shown = at(got, places)
    return FieldCheck(field=field, arm=arm, expected=expected, got=shown, decimals=places,
                      matches=Decimal(shown) == Decimal(at(stated.value, places)), test=test)


def _not_estimable_check(field: str, got: float | None, note: str) -> FieldCheck:
    """A field the paper gives as not estimable: it matches when the recomputation has no finite value either (an
    estimate that cannot be computed, or an open side of a CI); the note says why."""
    if got is not None and math.isinf(got):
        note = "unbounded: the CI is open on this side" if field in ("lower", "upper") else "infinite"
    estimable = got is not None and math.isfinite(got)
    return FieldCheck(field=field, arm=None, expected=NOT_ESTIMABLE, got=f"{got:.4g}" if estimable else NOT_ESTIMABLE,
                      decimals=0, matches=not estimable, note="" if estimable else note)


def _count_check(field: str, arm: str, expected: int, got: int) -> FieldCheck:
    return FieldCheck(field=field, arm=arm, expected=str(expected), got=str(got), decimals=0, matches=expected == got)


def p_value(comparison: Comparison, test: str) -> tuple[float | None, str]:
    """The p of the named test (one of ``EFFECT_TESTS`` of the comparison's effect), or None and why it is not
    computable. The effect's own tests come from its estimate, the unadjusted ones from the summary of the arms."""
    s, effect, key = comparison.summary, comparison.effect, comparison.key
    empty = "not computable: a margin of the table is empty or every value is tied"
    if test in OWN_TESTS or (test == "mann-whitney" and key == "mann-whitney"):
        value, why = effect.p_value, effect.note or "not computable from these data"
    elif test == "likelihood-ratio" and key in FITTED:
        value, why = effect.likelihood_ratio_p, effect.note or "not computable from these data"
    elif isinstance(s, TimeToEventSummary):
        value, why = (s.log_rank_p, "not computable: no events") if test == "log-rank" else (None, "")
    elif isinstance(s, BinarySummary):
        value, why = {"fisher": s.fisher_p, "pearson-chi2": s.chi2_p, "pearson-chi2-yates": s.chi2_yates_p,
                      "likelihood-ratio": s.likelihood_ratio_p}.get(test), empty
    else:
        value, why = {"t-pooled": s.mean_difference.p_value, "t-welch": s.mean_difference_welch.p_value,
                      "mann-whitney": s.mann_whitney_p, "wilcoxon": s.wilcoxon_p}.get(test), empty
    if test not in EFFECT_TESTS.get(key, ()):
        return None, f"not computable: {test} is not a test of {key} (use {', '.join(EFFECT_TESTS.get(key, ()))})"
    return (None, why) if value is None or value != value else (value, "")


def _p_check(stated: Stated, test: str | None, comparison: Comparison) -> FieldCheck:
    """The published p against the named test; without one, against every test of the entry's effect, naming
    those that give it at the published precision (and each test's p)."""
    if test is not None:
        got, why = p_value(comparison, test)
        return _number_check("p", None, stated, got, test=test, note=why)
    values = {name: p_value(comparison, name)[0] for name in EFFECT_TESTS[comparison.key]}
    found = {name: _number_check("p", None, stated, value) for name, value in values.items()}
    matching = [name for name, check in found.items() if check.matches]
    each = "; ".join(_listed(name, value, stated.decimals) for name, value in values.items())
    first = found[matching[0]] if matching else next(iter(found.values()))
    if matching:
        return FieldCheck(field="p", arm=None, expected=first.expected, got=first.got, decimals=first.decimals,
                          matches=True, test=", ".join(matching), note=f"tests of {comparison.key}: {each}")
    return FieldCheck(field="p", arm=None, expected=first.expected, got=None, decimals=first.decimals, matches=False,
                      note=f"no test of {comparison.key} gives it: {each}")


def _listed(test: str, value: float | None, places: int) -> str:
    """One test's p in a list: at the published decimals, or in scientific notation when smaller."""
    if value is None or value != value:
        return f"{test} not computable"
    return f"{test} {at(value, places) if value >= 10 ** -places else f'{value:.2e}'}"


def _binary_checks(target: PublishedResult, s: BinarySummary) -> list[FieldCheck]:
    """The relative risk reduction (1 − RR, in percent) and the number needed to treat (1 / |risk difference|, rounded
    up when written as a whole number, as NNTs are), from the proportions of events."""
    checks = []
    (a, c), (n1, n2) = s.events, s.n
    if target.relative_risk_reduction is not None:
        got = 100 * (1 - (a / n1) / (c / n2)) if c else None
        checks.append(_number_check("relative_risk_reduction", None, target.relative_risk_reduction, got,
                                    note="not computable: no events in the control arm"))
    stated = target.number_needed_to_treat
    if stated is not None:
        difference = abs(a / n1 - c / n2)
        nnt = 1 / difference if difference else None
        if nnt is not None and stated.value is not None and stated.decimals == 0:
            nnt = math.ceil(round(nnt, 9))
        checks.append(_number_check("number_needed_to_treat", None, stated, nnt,
                                    note="not estimable: the risk difference is 0"))
    return checks


def check(target: PublishedResult, comparison: Comparison) -> list[FieldCheck]:
    """Every field the published entry gives, checked against the comparison."""
    checks = []
    effect = comparison.effect
    scale = 100 if target.unit == "percentage-points" else 1
    for name in ("estimate", "lower", "upper"):
        stated = getattr(target, name)
        if stated is not None:
            got = getattr(effect, name)
            note = effect.note if not effect.estimable else ""
            checks.append(_number_check(name, None, stated, None if got is None else scale * got, target.decimals,
                                        note=note))
    if target.p is not None:
        checks.append(_p_check(target.p.value, target.p.test, comparison))
    if target.p_adjusted is not None:
        adjusted = comparison.adjusted
        checks.append(_number_check("p_adjusted", None, target.p_adjusted, adjusted.p if adjusted else None,
                                    test=adjusted.method if adjusted else None, note=NO_FAMILY))
    s = comparison.summary
    if isinstance(s, BinarySummary):
        checks += _binary_checks(target, s)
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
