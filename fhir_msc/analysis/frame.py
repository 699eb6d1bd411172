"""FHIR → analysis DataFrame → between-arm comparisons, as the study definition plans them.

Nothing here knows the MSC trial: arms, outcomes, visits, effects and published targets
all come from the study definition's ``analysis`` section.

Every Observation read is accounted for: a row of the frame, or dropped under a reason
(no study outcome code, unknown subject or visit, unknown answer code, a censored result, a test not done,
a duplicate of one business identifier, a visit not asked for, free text, an unscheduled visit or a finding
outside the analysis windows: see analysis.windows). Censored results (``<0.5``) are not used in the
continuous statistics: they are counted, not guessed at.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Collection
from dataclasses import dataclass, replace
from sys import intern
from typing import Any

import numpy as np
import pandas as pd

from ..account import MAX_EXAMPLES, Account, Tally
from ..errors import InputError, StudyDefinitionError
from ..fhir.unmapping import NOT_ASKED, ResourceSource, read_records
from ..study.definition import AnalysisPlan, Outcome, PublishedResult, Study
from ..tables.sdtm import FindingRecord
from .derived import add_derived, visits_needed
from .published import FieldCheck
from .published import check as check_fields
from .stats import (
    BinarySummary,
    ContinuousSummary,
    Estimate,
    compare_binary,
    compare_continuous,
    mantel_haenszel,
)
from .windows import WindowChooser, study_day

FRAME_COLUMNS = ["subject", "arm", "sex", "age", "visit", "visitnum", "outcome", "value", "answer", "unit", "date"]


NOT_RANDOMIZED = "subject not randomized (no ResearchSubject of this study)"
CENSORED = "censored result (<, <=, >=, >): not used in continuous statistics"
NOT_DONE = "not done (no value: dataAbsentReason not-performed, SDTM --STAT NOT DONE)"
FREE_TEXT = "free text (valueString): mapped and round-tripped, not analysed"
UNSCHEDULED = "unscheduled visit: analysed only in a declared analysis window (analysis.windows)"
DUPLICATE = "duplicate business identifier (same subject, visit and outcome under another id): counted once"


def analysis_frame(study: Study, source: ResourceSource, visits: Collection[str] | None = None) -> pd.DataFrame:
    """One row per subject × visit × outcome (see :func:`frame_and_account`)."""
    return frame_and_account(study, source, visits)[0]


def frame_and_account(study: Study, source: ResourceSource,
                      visits: Collection[str] | None = None) -> tuple[pd.DataFrame, Account]:
    """One row per subject × visit × outcome: arm from ResearchSubject, value and unit from the Observation;
    and the account of the Observations read (read = rows of the frame + dropped, by reason).

    Coded columns (arm, sex, visit, outcome, answer, unit) are categoricals whose categories
    come from the study definition, in its order. ``visits`` (visit codes) limits the frame to
    those visits; Observations at other visits are then skipped before they are parsed.
    Of several Observations of one subject, visit and outcome (one business identifier under
    several ids), the first read is kept. The study's derived endpoints are computed from the
    frame and appended as rows (``derived.add_derived``); the visits their sources are at are read
    too when ``visits`` asks for the visit of one. The account counts Observations, not derived rows.
    """
    if visits is not None:
        unknown = [code for code in visits if code not in study.visit_by_code]
        if unknown:
            raise InputError(f"unknown visit {', '.join(unknown)}: use one of {', '.join(study.visit_by_code)}")
    windowed = bool(study.analysis and study.analysis.windows)
    needed = visits_needed(study, visits)  # the visits asked for and those their derived endpoints need
    # with windows, a finding of any visit may count for an asked visit: all are read, then filtered
    subjects, findings, tally = read_records(study, source, None if windowed else needed)
    categories = frame_categories(study)
    code_of = {name: {value: code for code, value in enumerate(values)} for name, values in categories.items()}
    names = sorted(subjects)  # a subject is kept as its place in this list
    by_subject = {key: (code_of["arm"].get(subjects[key].arm_code, -1), code_of["sex"].get(subjects[key].sex, -1),
                        subjects[key].age, number, subjects[key].start) for number, key in enumerate(names)}
    by_outcome = {o.code: (code_of["outcome"][o.code], code_of["unit"].get(o.unit, -1), o) for o in study.outcomes}
    visit_code = {visit.code: code_of["visit"][visit.code] for visit in study.visits}
    answer_code = code_of["answer"]
    coded = {name: array("h") for name in categories}  # category codes, -1 for missing
    ages, visitnums = array("q"), array("d")
    subject_numbers = array("i")
    dates: list[str] = []
    values = array("d")
    arm_, sex_, visit_, outcome_, answer_, unit_ = (coded[name].append for name in
                                                    ("arm", "sex", "visit", "outcome", "answer", "unit"))
    age_, visitnum_, value_, subject_, date_ = (ages.append, visitnums.append, values.append, subject_numbers.append,
                                                dates.append)
    chooser = WindowChooser(study, tally)
    asked = None if needed is None else set(needed)

    def add(finding: FindingRecord, subject: tuple, visit: str, value: float, answer: str | None) -> None:
        outcome, unit, kind = by_outcome[finding.testcd]
        arm_(subject[0])
        sex_(subject[1])
        age_(subject[2])
        visit_(visit_code[visit])
        visitnum_(finding.visitnum)
        outcome_(outcome)
        unit_(unit if kind.type == "quantity" else -1)
        answer_(-1 if answer is None else answer_code.get(answer, -1))
        value_(value)
        subject_(subject[3])
        date_(intern(finding.date))

    held: dict[tuple[str, str, str], tuple[float, str | None]] = {}  # windowed findings' values until chosen
    nominal = {v.visitnum: v.code for v in study.visits if v.code not in chooser.windowed}  # analysed at their visit
    for finding in findings:
        subject = by_subject.get(finding.subject)
        if subject is None:
            tally.skip(NOT_RANDOMIZED, finding.subject)
            continue
        if finding.not_done:
            tally.skip(NOT_DONE, _label(study, finding))
            continue
        kind = by_outcome[finding.testcd][2]
        if kind.type == "quantity":
            try:
                value, answer = float(finding.result), None
            except ValueError:  # a censored result: the comparator comes first (<0.5)
                tally.skip(CENSORED, f"{_label(study, finding)} {finding.result}")
                continue
        elif kind.type == "text":
            tally.skip(FREE_TEXT, _label(study, finding))
            continue
        else:
            value, answer = finding_value(kind, finding.result, subject[4])
        visit = nominal.get(finding.visitnum)
        if visit is None:  # an unscheduled visit, or one with an analysis window: placed by its date
            if not windowed:
                tally.skip(UNSCHEDULED, _label(study, finding))
                continue
            key = (finding.subject, study.visit_key(finding.visitnum), finding.testcd)
            if key in held:
                tally.skip(DUPLICATE, "/".join(key))
                continue
            held[key] = (value, answer)
            chooser.offer(finding, subject[4])
        elif asked is not None and visit not in asked:
            tally.skip(NOT_ASKED, _label(study, finding))
        else:
            add(finding, subject, visit, value, answer)
    for finding, visit in chooser.chosen():
        value, answer = held[(finding.subject, study.visit_key(finding.visitnum), finding.testcd)]
        if asked is not None and visit not in asked:
            tally.skip(NOT_ASKED, f"{finding.subject}/{visit}/{finding.testcd}")
            continue
        add(finding, by_subject[finding.subject], visit, value, answer)
    del by_subject, subjects, findings, held
    whole = bool(np.all(np.mod(np.frombuffer(visitnums, dtype=float), 1) == 0))
    raw: dict[str, Any] = {**coded, "age": ages, "visitnum": visitnums, "subject": subject_numbers, "value": values,
                           "date": dates}
    del coded, ages, visitnums, subject_numbers, values, dates  # _sorted_frame frees each column once it is in order
    frame = _sorted_frame(categories, np.array(names, dtype=object), raw, tally)
    if whole:  # VISITNUM stays a whole number where every visit has one (3.1 makes the column decimal)
        frame["visitnum"] = frame["visitnum"].astype(np.int64)
    return add_derived(study, frame), replace(tally.account(), used=len(frame))


def _label(study: Study, finding: FindingRecord) -> str:
    return f"{finding.subject}/{study.visit_key(finding.visitnum)}/{finding.testcd}"


def finding_value(outcome: Outcome, result: str, start: str) -> tuple[float, str | None]:
    """A finding's ``value`` and ``answer`` in the frame, by outcome type.

    quantity and integer: the number; coded: the answer (value NaN); ordinal: the answer and its rank
    (1 = lowest); boolean: Y/N and 1/0; datetime: days from RFSTDTC (``start``, day 0) to the date
    (NaN for a partial date).
    """
    kind = outcome.type
    if kind in ("quantity", "integer"):
        return float(result), None
    if kind == "ordinal":
        return float(outcome.rank(result)), result
    if kind == "boolean":
        return (1.0 if result == "Y" else 0.0), result
    if kind == "datetime":
        day = study_day(result, start)
        return (math.nan if day is None else float(day)), None
    return math.nan, result


def _sorted_frame(categories: dict[str, list[str]], names: np.ndarray, raw: dict[str, Any], tally: Tally) -> pd.DataFrame:
    """The frame in (outcome, visit number, subject) order from ``raw`` columns, emptied as it goes.

    Subjects come as numbers into ``names`` (sorted). Each column is put in order once and its
    unordered form dropped, so the frame is never held twice (as sorting a built frame would).
    Rows repeating the subject, visit and outcome of an earlier row are left out (``tally``).
    """
    dtypes = {"age": np.int64, "visitnum": float, "value": float}
    subject = np.frombuffer(raw.pop("subject"), dtype=np.int32)
    outcome, visit = (np.frombuffer(raw[name], dtype=np.int16) for name in ("outcome", "visit"))
    order = np.lexsort((subject, np.frombuffer(raw["visitnum"], dtype=float), outcome))  # stable: first read first
    order = _first_of_each(order, (subject, visit, outcome), names, categories, tally)
    columns: dict[str, Any] = {"subject": names[subject[order]], "date": np.array(raw.pop("date"), dtype=object)[order]}
    del subject, outcome, visit
    for name in list(raw):
        column = raw.pop(name)
        if name in categories:
            columns[name] = pd.Categorical.from_codes(np.frombuffer(column, dtype=np.int16)[order], categories=categories[name])
        else:
            columns[name] = np.frombuffer(column, dtype=dtypes[name])[order]
        del column
    return pd.DataFrame(columns, columns=FRAME_COLUMNS, copy=False)


def _first_of_each(order: np.ndarray, keys: tuple[np.ndarray, np.ndarray, np.ndarray], names: np.ndarray,
                   categories: dict[str, list[str]], tally: Tally) -> np.ndarray:
    """``order`` without the rows whose (subject, visit, outcome) equals the row before; those are tallied."""
    if len(order) < 2:
        return order
    repeat = np.ones(len(order) - 1, dtype=bool)
    for key in keys:  # one ordered key at a time, so only one is held
        ordered = key[order]
        repeat &= ordered[1:] == ordered[:-1]
        del ordered
    count = int(repeat.sum())
    if not count:
        return order
    dropped = order[1:][repeat]
    subject, visit, outcome = keys
    for row in dropped[:MAX_EXAMPLES].tolist():
        tally.skip(DUPLICATE, f"{names[subject[row]]}/{categories['visit'][visit[row]]}/{categories['outcome'][outcome[row]]}")
    if count > MAX_EXAMPLES:
        tally.skip(DUPLICATE, count=count - MAX_EXAMPLES)
    return np.concatenate((order[:1], order[1:][~repeat]))


def frame_categories(study: Study) -> dict[str, list[str]]:
    """The categories of the frame's coded columns, from the study definition (in its order)."""
    answers = list(dict.fromkeys(answer for outcome in study.outcomes for answer in outcome.answer_keys))
    units = list(dict.fromkeys(outcome.unit for outcome in study.outcomes if outcome.unit))
    return {"arm": [arm.code for arm in study.arms], "sex": list(study.terms.sex),
            "visit": [visit.code for visit in study.visits], "outcome": [outcome.code for outcome in study.outcomes],
            "answer": answers, "unit": units}


@dataclass(frozen=True, kw_only=True)
class Comparison:
    """One outcome at one visit, treatment vs control."""

    outcome: str
    display: str
    visit: str
    kind: str  # "binary" or "continuous"
    arms: tuple[str, str]
    effect: Estimate
    summary: BinarySummary | ContinuousSummary

    @property
    def n(self) -> tuple[int, int]:
        return self.summary.n

    def arm_summary(self, index: int) -> str:
        s = self.summary
        if isinstance(s, BinarySummary):
            return f"{s.events[index]}/{s.n[index]} ({s.percent[index]:.2f}%)"
        return (f"{s.mean[index]:.2f} ± {s.sd[index]:.2f}; median {s.median[index]:.1f} "
                f"({s.q1[index]:.1f}–{s.q3[index]:.1f})")


def _plan(study: Study) -> AnalysisPlan:
    if study.analysis is None:
        raise StudyDefinitionError("the study definition has no 'analysis' section: add treatment and control arms")
    return study.analysis


def compare(study: Study, frame: pd.DataFrame, outcome: Outcome, visit: str, effect: str | None = None) -> Comparison | None:
    """Compare the arms for one outcome at one visit; None when an arm has fewer than 2 values, or for an
    outcome type no between-arm effect here applies to (ordinal, datetime, text)."""
    plan = _plan(study)
    if outcome.type not in ("coded", "boolean", "quantity", "integer"):
        return None
    rows = frame[(frame["outcome"] == outcome.code) & (frame["visit"] == visit)]
    arms = (plan.treatment, plan.control)
    groups = [rows[rows["arm"] == arm] for arm in arms]
    if min(len(g) for g in groups) < 2:
        return None
    if outcome.type in ("coded", "boolean"):
        event = outcome.event_answer
        counts = tuple(int((g["answer"] == event).sum()) for g in groups)
        summary = compare_binary(counts, tuple(len(g) for g in groups), plan.alpha)  # type: ignore[arg-type]
        chosen = effect or plan.effects.binary
        estimate = binary_estimates(summary).get(chosen)
        if chosen == "odds-ratio-mh":
            estimate = _stratified(plan, rows, event, arms)
        kind = "binary"
    else:
        summary = compare_continuous(groups[0]["value"].to_numpy(), groups[1]["value"].to_numpy(), plan.alpha)
        chosen = effect or plan.effects.continuous
        estimate = continuous_estimates(summary).get(chosen)
        kind = "continuous"
    if estimate is None:
        raise StudyDefinitionError(f"effect {chosen!r} does not apply to {kind} outcome {outcome.code}")
    return Comparison(outcome=outcome.code, display=outcome.display, visit=visit, kind=kind, arms=arms,
                      effect=estimate, summary=summary)


def binary_estimates(summary: BinarySummary) -> dict[str, Estimate]:
    """The binary estimates every comparison computes, by their effect key in the study definition."""
    return {"odds-ratio": summary.odds_ratio, "exact-odds-ratio": summary.exact_odds_ratio,
            "relative-risk": summary.relative_risk, "risk-difference": summary.risk_difference,
            "risk-difference-newcombe": summary.risk_difference_newcombe}


def continuous_estimates(summary: ContinuousSummary) -> dict[str, Estimate]:
    """The continuous estimates every comparison computes, by their effect key in the study definition."""
    return {"mean-difference": summary.mean_difference, "mean-difference-welch": summary.mean_difference_welch,
            "hodges-lehmann": summary.hodges_lehmann}


def _stratified(plan: AnalysisPlan, rows: pd.DataFrame, event: str, arms: tuple[str, str]) -> Estimate:
    if plan.stratum is None:
        raise StudyDefinitionError("effect odds-ratio-mh needs analysis.stratum in the study definition")
    tables = []
    for _, stratum in rows.groupby(plan.stratum):
        table = [[int(((stratum["arm"] == arm) & (stratum["answer"] == event)).sum()),
                  int(((stratum["arm"] == arm) & (stratum["answer"] != event)).sum())] for arm in arms]
        if all(sum(r) > 0 for r in table):
            tables.append(table)
    return mantel_haenszel(tables, plan.alpha)


def analyze(study: Study, frame: pd.DataFrame, visits: list[str] | None = None,
            outcomes: list[str] | None = None) -> list[Comparison]:
    """Every outcome and derived endpoint at every visit (optionally filtered) with the plan's primary effect."""
    results = []
    for outcome in study.analysed_outcomes:
        if outcomes and outcome.code not in outcomes:
            continue
        for visit in study.visits:
            if visits and visit.code not in visits:
                continue
            comparison = compare(study, frame, outcome, visit.code)
            if comparison is not None:
                results.append(comparison)
    return results


@dataclass(frozen=True, kw_only=True)
class Verification:
    """A published result next to its recomputation, field by field at the paper's precision."""

    published: PublishedResult
    reproduced: Comparison | None
    mismatches: list[str]
    fields: tuple[FieldCheck, ...] = ()

    @property
    def matches(self) -> bool:
        return self.reproduced is not None and not self.mismatches


def verify(study: Study, frame: pd.DataFrame) -> list[Verification]:
    """Recompute every published result of the plan and check each field it gives (see ``published.check``)."""
    checks = []
    for target in _plan(study).published:
        comparison = compare(study, frame, study.analysed_outcome_by_code[target.outcome], target.visit, target.effect)
        if comparison is None:
            checks.append(Verification(published=target, reproduced=None, mismatches=["no data"]))
            continue
        fields = tuple(check_fields(target, comparison))
        checks.append(Verification(published=target, reproduced=comparison, fields=fields,
                                   mismatches=[field.describe() for field in fields if not field.matches]))
    return checks
