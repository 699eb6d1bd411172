"""Multiple comparisons: which comparisons are adjusted together, and their adjusted p-values.

A comparison at the plan's baseline visit (``analysis.baseline``) is *baseline balance*: a test of chance
imbalance after randomization, not a treatment effect, and in no family. The others are grouped into the
families of ``analysis.multiplicity`` (:class:`~fhir_msc.study.definition.Multiplicity`): the comparisons at
one visit (over the whole follow-up for a time-to-event entry), every pair of arms, of one named list of
outcomes, or of every outcome when none is named. Within a family each comparison's effect p is adjusted by
Holm's step-down, Bonferroni's or Benjamini-Hochberg's step-up method; a comparison without a p (not
estimable) is not counted in its family.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from ..study.definition import AnalysisPlan

if TYPE_CHECKING:
    from .frame import Comparison

METHODS = {"holm": "Holm", "bonferroni": "Bonferroni", "benjamini-hochberg": "Benjamini-Hochberg"}
FOLLOW_UP = "follow-up"  # the "visit" of time-to-event comparisons in a family's name


@dataclass(frozen=True, kw_only=True)
class AdjustedP:
    """A comparison's effect p adjusted within its family."""

    method: str  # holm, bonferroni, benjamini-hochberg
    family: str  # "M36" (every outcome at M36), "primary · M36" (a named family), "follow-up"
    size: int  # comparisons with a p in the family
    p: float

    def describe(self) -> str:
        """For people: ``Holm, 13 in M36``."""
        return f"{METHODS[self.method]}, {self.size} in {self.family}"


def adjusted_p_values(p_values: Sequence[float], method: str) -> list[float]:
    """Each p adjusted for the ``len(p_values)`` comparisons of one family, in the order given.

    ``bonferroni``: min(1, m·p). ``holm``: the i-th smallest p becomes the running maximum of min(1, (m − i + 1)·p).
    ``benjamini-hochberg`` (false discovery rate): the i-th smallest becomes the running minimum, from the largest
    down, of min(1, m·p / i).
    """
    m = len(p_values)
    if method == "bonferroni":
        return [min(1.0, m * p) for p in p_values]
    order = sorted(range(m), key=lambda i: p_values[i])
    result = [0.0] * m
    if method == "holm":
        running = 0.0
        for rank, index in enumerate(order):
            running = max(running, min(1.0, (m - rank) * p_values[index]))
            result[index] = running
    elif method == "benjamini-hochberg":
        running = 1.0
        for rank in reversed(range(m)):
            running = min(running, m * p_values[order[rank]] / (rank + 1))
            result[order[rank]] = running
    else:
        raise ValueError(f"unknown multiplicity adjustment {method!r}: use one of {', '.join(METHODS)}")
    return result


def family(plan: AnalysisPlan, comparison: Comparison) -> str | None:
    """The name of the family the comparison's p is adjusted in; None when it is in none (no adjustment planned,
    baseline balance, or an outcome in no named family)."""
    if plan.multiplicity is None or comparison.baseline_balance:
        return None
    name = plan.multiplicity.family(comparison.outcome)
    if name is None:
        return None
    visit = comparison.visit or FOLLOW_UP
    return f"{name} · {visit}" if name else visit


def adjust(plan: AnalysisPlan, comparisons: list[Comparison]) -> list[Comparison]:
    """The comparisons in their order, each one of a family with a p carrying its adjusted p (``adjusted``)."""
    if plan.multiplicity is None:
        return comparisons
    members: dict[str, list[int]] = {}
    for index, comparison in enumerate(comparisons):
        name, p = family(plan, comparison), comparison.effect.p_value
        if name is not None and p is not None and math.isfinite(p):
            members.setdefault(name, []).append(index)
    found = list(comparisons)
    method = plan.multiplicity.method
    for name, indices in members.items():
        values = adjusted_p_values([comparisons[i].effect.p_value for i in indices], method)  # type: ignore[misc]
        for index, value in zip(indices, values):
            found[index] = replace(comparisons[index],
                                   adjusted=AdjustedP(method=method, family=name, size=len(indices), p=value))
    return found
