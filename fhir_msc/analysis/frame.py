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
from dataclasses import dataclass, field, replace
from sys import intern
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..account import MAX_EXAMPLES, Account, Tally
from ..errors import InputError, StudyDefinitionError
from ..fhir.unmapping import NOT_ASKED, ResourceSource, read_records
from ..study.definition import DM_COVARIATES, AnalysisPlan, Outcome, PublishedResult, Study, arm_codes, arm_label
from ..tables.sdtm import FindingRecord
from .derived import add_derived, visits_needed
from .published import FieldCheck
from .published import check as check_fields
from .models import adjusted_mean_difference, adjusted_odds_ratio, mann_whitney, proportional_odds, rate_ratio
from .multiplicity import AdjustedP, adjust, family
from .stats import (
    BinarySummary,
    ContinuousSummary,
    Estimate,
    compare_binary,
    compare_continuous,
    mantel_haenszel,
)
from .survival import TimeToEventSummary, summarize
from .windows import WindowChooser, study_day

if TYPE_CHECKING:
    from .adverse_events import AdverseEventIncidence

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


def check_visits(study: Study, visits: Collection[str] | None) -> None:
    """InputError naming the visits asked for that the study does not have, and the ones it has."""
    unknown = [code for code in visits or () if code not in study.visit_by_code]
    if unknown:
        raise InputError(f"unknown visit {', '.join(unknown)}: use one of {', '.join(study.visit_by_code)}")


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
    check_visits(study, visits)
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
    """One outcome at one visit, treatment vs control (each one arm or several pooled)."""

    outcome: str
    display: str
    visit: str
    kind: str  # "binary", "continuous" or "time-to-event" (visit "": over the whole follow-up)
    arms: tuple[str, str]  # labels: an arm code, or pooled codes joined by '+'
    effect: Estimate
    summary: BinarySummary | ContinuousSummary | TimeToEventSummary
    key: str = ""  # the effect's key in the study definition
    groups: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())  # the arm codes of treatment and control
    excluded: dict[str, tuple[str, ...]] = field(default_factory=dict)  # reason -> subjects left out of the effect
    baseline_balance: bool = False  # at the plan's baseline visit: a test of balance, not a treatment effect
    adjusted: AdjustedP | None = None  # the effect's p adjusted in its family (analysis.multiplicity)

    @property
    def n(self) -> tuple[int, int]:
        return self.summary.n

    def arm_summary(self, index: int) -> str:
        s = self.summary
        if isinstance(s, BinarySummary):
            return f"{s.events[index]}/{s.n[index]} ({s.percent[index]:.2f}%)"
        if isinstance(s, TimeToEventSummary):
            median = s.medians[index].median
            return f"{s.events[index]} events/{s.n[index]}; KM median {'not reached' if median is None else f'{median:g}'} d"
        return (f"{s.mean[index]:.2f} ± {s.sd[index]:.2f}; median {s.median[index]:.1f} "
                f"({s.q1[index]:.1f}–{s.q3[index]:.1f})")


def _plan(study: Study) -> AnalysisPlan:
    if study.analysis is None:
        raise StudyDefinitionError("the study definition has no 'analysis' section: add treatment and control arms")
    return study.analysis


Pair = tuple[tuple[str, ...], tuple[str, ...]]


def compare(study: Study, frame: pd.DataFrame, outcome: Outcome, visit: str, effect: str | None = None, *,
            pair: Pair | None = None, covariates: list[str] | None = None,
            stratum: str | None = None, exact_odds_ratio: bool = False) -> Comparison | None:
    """Compare treatment and control for one outcome at one visit; None when an arm has fewer than 2 values,
    for an outcome type no between-arm effect here applies to (datetime, text), and for an ordinal outcome
    unless ``effect`` is one for ordered scales (proportional-odds, mann-whitney: on its ranks).

    ``pair`` (treatment and control arm codes) defaults to the plan's first comparison,
    ``covariates`` to the plan's for the outcome (``AnalysisPlan.covariates_for``), ``stratum`` to the plan's. Subjects an adjusted or stratified effect
    leaves out for a missing covariate or stratum are named in ``excluded`` and the effect's note.
    A covariate or stratum that is the outcome itself at this visit (``baseline`` at the baseline visit)
    is not used, and the note says so: no model adjusts an outcome for itself.
    At the plan's baseline visit the comparison is ``baseline_balance``.
    The exact conditional OR of a binary outcome is computed when it is the effect or ``exact_odds_ratio``
    asks for it; otherwise its note says it was not computed (``stats.compare_binary``).
    """
    plan = _plan(study)
    if outcome.type not in ("coded", "boolean", "quantity", "integer", "ordinal") or (
            outcome.type == "ordinal" and effect not in ("proportional-odds", "mann-whitney")):
        return None
    pair = pair or plan.pairs([a.code for a in study.arms])[0]
    cell = _rows_of(frame, outcome.code, visit)
    groups = [cell[_holds(frame["arm"], codes, cell)] for codes in pair]  # positions, treatment first
    if min(len(g) for g in groups) < 2:
        return None
    excluded: dict[str, tuple[str, ...]] = {}
    if outcome.type in ("coded", "boolean"):
        counts = tuple(int(_holds(frame["answer"], (outcome.event_answer,), g).sum()) for g in groups)
        chosen = effect or plan.effects.binary
        exact = exact_odds_ratio or chosen == "exact-odds-ratio"
        summary: BinarySummary | ContinuousSummary = compare_binary(counts, tuple(len(g) for g in groups), plan.alpha, exact=exact)  # type: ignore[arg-type]
        estimates: dict[str, Estimate] = binary_estimates(summary)  # type: ignore[arg-type]
        kind = "binary"
    else:
        values = frame["value"].to_numpy()
        summary = compare_continuous(values[groups[0]], values[groups[1]], plan.alpha)
        chosen = effect or plan.effects.continuous
        estimates = continuous_estimates(summary)
        kind = "continuous"
    if chosen in MODEL_EFFECTS or chosen == "odds-ratio-mh":
        both = frame.iloc[np.concatenate(groups)]
        treated = np.r_[np.ones(len(groups[0])), np.zeros(len(groups[1]))]
    if chosen in MODEL_EFFECTS:
        names = plan.covariates_for(outcome.code) if covariates is None else covariates
        itself = [name for name in names if is_itself(study, outcome, visit, name)]
        estimate, excluded = _modelled(study, frame, outcome, chosen, both, treated,
                                       [name for name in names if name not in itself], plan)
        estimate = _not_itself(estimate, "covariate", itself, outcome, visit)
    elif chosen == "odds-ratio-mh":
        estimate, excluded = _stratified(study, frame, plan, both, outcome, visit, pair, stratum or plan.stratum)
    else:
        estimate = estimates.get(chosen)  # type: ignore[assignment]
    if estimate is None:
        raise StudyDefinitionError(f"effect {chosen!r} does not apply to {kind} outcome {outcome.code}")
    return Comparison(outcome=outcome.code, display=outcome.display, visit=visit, kind=kind,
                      arms=(arm_label(pair[0]), arm_label(pair[1])), effect=estimate, summary=summary, key=chosen,
                      groups=pair, excluded=excluded, baseline_balance=visit == plan.baseline)


def is_itself(study: Study, outcome: Outcome, visit: str, name: str) -> bool:
    """Whether covariate or stratum ``name`` is ``outcome`` at ``visit`` (``baseline`` at the baseline visit)."""
    return covariate_source(study, outcome, name) == (outcome.code, visit)


def _not_itself(estimate: Estimate, what: str, names: list[str], outcome: Outcome, visit: str) -> Estimate:
    """The estimate, its note saying which covariates (or stratum) were not used for being the outcome itself."""
    if not names:
        return estimate
    return _noted(estimate, f"{what} {', '.join(names)} not used: at {visit} it is {outcome.code} itself "
                            "(an outcome is never adjusted for itself)")


def _noted(estimate: Estimate, note: str) -> Estimate:
    return replace(estimate, note=f"{estimate.note}; {note}" if estimate.note else note)


def _rows_of(frame: pd.DataFrame, outcome: str, visit: str) -> np.ndarray:
    """Positions of the frame's rows of ``outcome`` at ``visit``, in frame order."""
    rows = np.flatnonzero(_holds(frame["outcome"], (outcome,)))
    return rows[_holds(frame["visit"], (visit,), rows)]


def _holds(column: pd.Series, values: Collection[str], rows: np.ndarray | None = None) -> np.ndarray:
    """``column.isin(values)`` for a categorical ``column`` (at the positions ``rows``, if given), on its codes."""
    codes = column.cat.codes.to_numpy()
    if rows is not None:
        codes = codes[rows]
    found = np.zeros(len(codes), dtype=bool)
    for code in column.cat.categories.get_indexer(list(values)):
        if code >= 0:
            found |= codes == code
    return found


MODEL_EFFECTS = {"adjusted-odds-ratio", "adjusted-mean-difference", "proportional-odds", "mann-whitney", "rate-ratio"}


def _modelled(study: Study, frame: pd.DataFrame, outcome: Outcome, effect: str, rows: pd.DataFrame,
              treated: np.ndarray, names: list[str], plan: AnalysisPlan) -> tuple[Estimate, dict[str, tuple[str, ...]]]:
    """An effect of :mod:`.models` on the compared rows (treatment's first), with the subjects it left out."""
    if effect == "rate-ratio":
        values = rows["value"].to_numpy()
        if outcome.type != "quantity" or np.any(values < 0) or np.any(values != np.round(values)):
            raise StudyDefinitionError(f"effect 'rate-ratio' needs counts (whole numbers ≥ 0): outcome {outcome.code} "
                                       "has other values")
        first = treated == 1
        return rate_ratio((int(values[first].sum()), int(values[~first].sum())),
                          (float(first.sum()), float((~first).sum())), plan.alpha), {}
    if outcome.type != "coded":
        level = rows["value"].to_numpy()
    elif effect == "adjusted-odds-ratio":
        level = (rows["answer"] == outcome.event_answer).to_numpy(float)
    else:  # proportional-odds, mann-whitney: the answers' YAML order is the scale
        order = {answer: place for place, answer in enumerate(outcome.answers)}
        level = np.array([order[answer] for answer in rows["answer"]])
    if effect == "mann-whitney":
        first = treated == 1
        return mann_whitney(level[first], level[~first], plan.alpha), {}
    covariates, keep, excluded = covariate_table(study, frame, outcome, rows, names)
    function = {"adjusted-odds-ratio": adjusted_odds_ratio, "adjusted-mean-difference": adjusted_mean_difference,
                "proportional-odds": proportional_odds}[effect]
    if min(int((treated[keep] == side).sum()) for side in (0, 1)) < 2:
        estimate = Estimate(effect=effect, method=f"{effect} on covariates {', '.join(names)}",
                            function=function.__module__ + "." + function.__name__, alpha=plan.alpha, estimate=None,
                            se=None, lower=None, upper=None, p_value=None,
                            note="not estimable: fewer than 2 subjects in an arm have every covariate")
        return _with_exclusions(estimate, excluded), excluded
    estimate = function(level[keep], treated[keep], covariates, plan.alpha)
    return _with_exclusions(estimate, excluded), excluded


def _with_exclusions(estimate: Estimate, excluded: dict[str, tuple[str, ...]]) -> Estimate:
    if not excluded:
        return estimate
    count = len({s for subjects in excluded.values() for s in subjects})
    named = "; ".join(f"{reason}: {', '.join(subjects[:MAX_EXAMPLES])}"
                      f"{f' and {len(subjects) - MAX_EXAMPLES} more' if len(subjects) > MAX_EXAMPLES else ''}"
                      for reason, subjects in excluded.items())
    return _noted(estimate, f"{count} subject(s) left out ({named})")


def covariate_values(study: Study, frame: pd.DataFrame, outcome: Outcome, rows: pd.DataFrame, name: str) -> pd.Series:
    """One covariate for the compared ``rows``, by row (NaN where the subject has none).

    ``age``; ``sex`` (0/1: the first sex of ``terms.sex`` is 0); ``baseline`` (this outcome at the
    plan's baseline visit); an outcome code (at the baseline visit) or ``OUTCOME@VISIT``. A coded
    finding is 1 when its answer is the outcome's event (or first answer), else 0.
    """
    if name == "age":
        return rows["age"].astype(float)
    if name == "sex":
        return pd.Series(np.where(rows["sex"].isna(), np.nan, (rows["sex"].cat.codes > 0).astype(float)), index=rows.index)
    code, visit = covariate_source(study, outcome, name)  # type: ignore[misc]
    source = study.outcome_by_code[code]
    found = frame.iloc[_rows_of(frame, code, visit)]
    if source.type == "coded":
        values = (found["answer"] == source.event_answer).astype(float)
        values[found["answer"].isna().to_numpy()] = np.nan
    else:
        values = found["value"]
    return rows["subject"].map(dict(zip(found["subject"], values))).astype(float)


def covariate_source(study: Study, outcome: Outcome, name: str) -> tuple[str, str] | None:
    """The outcome code and visit a covariate or stratum ``name`` reads; None for a DM column (age, sex)."""
    if name in DM_COVARIATES:
        return None
    code, _, visit = (outcome.code if name == "baseline" else name).partition("@")
    return code, visit or _plan(study).baseline or ""


def covariate_table(study: Study, frame: pd.DataFrame, outcome: Outcome, rows: pd.DataFrame,
                    names: list[str]) -> tuple[pd.DataFrame, np.ndarray, dict[str, tuple[str, ...]]]:
    """The covariates of the subjects that have them all, which rows those are, and who lacks which."""
    table = pd.DataFrame({name: covariate_values(study, frame, outcome, rows, name).to_numpy() for name in names},
                         index=range(len(rows)))
    missing = table.isna().to_numpy()
    subjects = rows["subject"].to_numpy()
    excluded = {f"no {name}": tuple(subjects[missing[:, i]]) for i, name in enumerate(names) if missing[:, i].any()}
    keep = ~missing.any(axis=1) if names else np.ones(len(rows), bool)
    return table[keep].reset_index(drop=True), keep, excluded


def binary_estimates(summary: BinarySummary) -> dict[str, Estimate]:
    """The binary estimates every comparison computes, by their effect key in the study definition."""
    return {"odds-ratio": summary.odds_ratio, "exact-odds-ratio": summary.exact_odds_ratio,
            "relative-risk": summary.relative_risk, "risk-difference": summary.risk_difference,
            "risk-difference-newcombe": summary.risk_difference_newcombe}


def continuous_estimates(summary: ContinuousSummary) -> dict[str, Estimate]:
    """The continuous estimates every comparison computes, by their effect key in the study definition."""
    return {"mean-difference": summary.mean_difference, "mean-difference-welch": summary.mean_difference_welch,
            "hodges-lehmann": summary.hodges_lehmann}


def _stratified(study: Study, frame: pd.DataFrame, plan: AnalysisPlan, rows: pd.DataFrame, outcome: Outcome,
                visit: str, pair: Pair, stratum: str | None) -> tuple[Estimate, dict[str, tuple[str, ...]]]:
    """Mantel-Haenszel OR over the strata of ``stratum`` (sex, or a coded finding's answer at a visit);
    one stratum when ``stratum`` is the outcome itself at ``visit`` (the note says so)."""
    if stratum is None:
        raise StudyDefinitionError("effect odds-ratio-mh needs analysis.stratum in the study definition")
    event = outcome.event or next(iter(outcome.answers))
    itself = is_itself(study, outcome, visit, stratum)
    if stratum == "sex":
        strata = rows["sex"].astype(object)
    elif itself:
        strata = pd.Series("all", index=rows.index, dtype=object)
    else:
        code, at = covariate_source(study, outcome, stratum)  # type: ignore[misc]
        found = frame.iloc[_rows_of(frame, code, at)]
        strata = rows["subject"].map(dict(zip(found["subject"], found["answer"].astype(object))))
    lacking = strata.isna().to_numpy()
    excluded = {f"no {stratum}": tuple(rows["subject"].to_numpy()[lacking])} if lacking.any() else {}
    tables = []
    for _, group in rows[~lacking].groupby(strata[~lacking].to_numpy()):
        table = [[int((group["arm"].isin(codes) & (group["answer"] == event)).sum()),
                  int((group["arm"].isin(codes) & (group["answer"] != event)).sum())] for codes in pair]
        if all(sum(r) > 0 for r in table):
            tables.append(table)
    estimate = _not_itself(mantel_haenszel(tables, plan.alpha), "stratum", [stratum] if itself else [], outcome, visit)
    return _with_exclusions(estimate, excluded), excluded


def analyze(study: Study, frame: pd.DataFrame, visits: list[str] | None = None,
            outcomes: list[str] | None = None, events: dict[str, pd.DataFrame] | None = None, *,
            exact_odds_ratio: bool = False) -> list[Comparison]:
    """Every outcome at every visit (optionally filtered), for every pair of arms the plan compares; derived endpoints
    too; then each time_to_event entry whose table is in ``events`` (code -> ``outcomes.time_to_event``).
    ``exact_odds_ratio``: compute the exact conditional OR of every binary comparison (see :func:`compare`).

    With ``analysis.multiplicity`` each p is adjusted in its family (:mod:`.multiplicity`); an outcome asked
    for is compared with the rest of its family, so its adjusted p is the one of the whole analysis.
    """
    plan = _plan(study)
    found = adjust(plan, _compare_each(study, frame, visits or None, _with_family(plan, outcomes), events,
                                       exact_odds_ratio))
    return [c for c in found if not outcomes or c.outcome in outcomes]


def _with_family(plan: AnalysisPlan, outcomes: list[str] | None) -> list[str] | None:
    """``outcomes`` and the other outcomes of their multiplicity families (None: every outcome)."""
    if not outcomes or plan.multiplicity is None:
        return outcomes
    names = {plan.multiplicity.family(code) for code in outcomes}
    if "" in names:  # no family named: every outcome is in the one family of its visit
        return None
    return [*outcomes, *(code for name in names if name for code in plan.multiplicity.families[name])]


def _compare_each(study: Study, frame: pd.DataFrame, visits: Collection[str] | None, outcomes: list[str] | None,
                  events: dict[str, pd.DataFrame] | None, exact_odds_ratio: bool) -> list[Comparison]:
    """:func:`analyze`'s comparisons before any adjustment; ``visits`` None: every visit."""
    results = []
    plan = _plan(study)
    pairs = plan.pairs([a.code for a in study.arms])
    for outcome in study.analysed_outcomes:
        if outcomes and outcome.code not in outcomes:
            continue
        effect = plan.effects.ordinal if outcome.type == "ordinal" else None
        for visit in study.visits:
            if visits is not None and visit.code not in visits:
                continue
            for pair in pairs:
                comparison = compare(study, frame, outcome, visit.code, effect, pair=pair,
                                     exact_odds_ratio=exact_odds_ratio)
                if comparison is not None:
                    results.append(comparison)
    for code, table in (events or {}).items():
        if outcomes and code not in outcomes:
            continue
        results += [c for pair in pairs if (c := compare_time_to_event(study, table, code, pair=pair)) is not None]
    return results


def compare_time_to_event(study: Study, table: pd.DataFrame, code: str, effect: str | None = None, *,
                          pair: Pair | None = None) -> Comparison | None:
    """Treatment vs control on a time_to_event entry over the whole follow-up (``table``: its
    ``outcomes.time_to_event`` rows); None when an arm has fewer than 2 subjects.

    ``effect``: cox-hazard-ratio, log-rank or km-median (default ``analysis.effects.time_to_event``);
    every one is computed (``summary``), with each arm's Kaplan-Meier median.
    """
    plan = _plan(study)
    outcome = study.time_to_event_outcome(code)
    if outcome is None:
        raise StudyDefinitionError(f"no time_to_event entry {code!r} in the study definition")
    pair = pair or plan.pairs([a.code for a in study.arms])[0]
    groups = [table[table["arm"].isin(codes)] for codes in pair]
    if min(len(g) for g in groups) < 2:
        return None
    arms = [(g["duration_days"].to_numpy(float), g["event"].to_numpy(bool)) for g in groups]
    summary = summarize(arms[0], arms[1], plan.alpha)
    chosen = effect or plan.effects.time_to_event
    estimate = {"cox-hazard-ratio": summary.cox_hazard_ratio, "log-rank": summary.log_rank,
                "km-median": summary.km_median}[chosen]
    return Comparison(outcome=code, display=outcome.display, visit="", kind="time-to-event",
                      arms=(arm_label(pair[0]), arm_label(pair[1])), effect=estimate, summary=summary, key=chosen,
                      groups=pair)


def not_compared(study: Study, outcomes: list[str] | None = None) -> list[tuple[str, str, str]]:
    """The outcomes ``analyze`` compares at no visit, as (code, type, why): never left out silently."""
    plan = _plan(study)
    why = {"datetime": "an event date: declare a time_to_event entry on it to compare the arms",
           "text": "free text: mapped and round-tripped, not analysed"}
    if plan.effects.ordinal is None:
        why["ordinal"] = ("ordinal: set analysis.effects.ordinal (proportional-odds or mann-whitney) to compare it "
                          "(a published entry may name either)")
    entries = {t.event: t.code for t in study.time_to_event}
    return [(o.code, o.type, f"an event date: compared as time_to_event {entries[o.code]}"
             if o.type == "datetime" and o.code in entries else why[o.type]) for o in study.outcomes
            if o.type in why and (not outcomes or o.code in outcomes)]


def visits_to_read(study: Study, visits: Collection[str]) -> list[str]:
    """``visits`` and the visits the plan's covariates and strata read (the baseline visit, OUTCOME@VISIT)."""
    plan = _plan(study)
    names = [*plan.covariates, *(name for names in plan.outcome_covariates.values() for name in names),
             plan.stratum or ""]
    for result in plan.published:
        names += [*(result.covariates or []), result.stratum or ""]
    needed = set(visits)
    for name in names:
        code, _, visit = name.partition("@")
        if visit:
            needed.add(visit)
        elif (code == "baseline" or code in study.outcome_by_code) and plan.baseline:
            needed.add(plan.baseline)
    unknown = [code for code in visits if code not in study.visit_by_code]  # left for the frame to refuse
    return unknown + [visit.code for visit in study.visits if visit.code in needed]


def arms_not_compared(study: Study, frame: pd.DataFrame) -> list[str]:
    """Arms with findings in ``frame`` that no comparison of the plan includes (never dropped silently)."""
    compared = {code for pair in _plan(study).pairs([a.code for a in study.arms]) for side in pair for code in side}
    codes = frame["arm"].cat.codes.to_numpy()
    present = set(frame["arm"].cat.categories[np.unique(codes[codes >= 0])])
    return [arm.code for arm in study.arms if arm.code in present and arm.code not in compared]


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


def verify(study: Study, frame: pd.DataFrame, events: dict[str, pd.DataFrame] | None = None,
           adverse_events: AdverseEventIncidence | None = None) -> list[Verification]:
    """Recompute every published result of the plan and check each field it gives (see ``published.check``);
    ``events``: the time_to_event tables by code (``outcomes.time_to_event``), for results on them;
    ``adverse_events``: the incidence of the pairs of the published adverse-event entries, for those.
    A result giving ``p_adjusted`` is adjusted in its family as :func:`analyze` adjusts it (:func:`in_family`)."""
    checks = []
    plan = _plan(study)
    for target in plan.published:
        pair = ((arm_codes(target.treatment), arm_codes(target.control))
                if target.treatment is not None and target.control is not None else None)
        if target.outcome is None:  # adverse events
            if adverse_events is None:
                checks.append(Verification(published=target, reproduced=None,
                                           mismatches=["no data: the source holds no AdverseEvent"]))
                continue
            comparison = adverse_events.comparison(study, target)
        elif target.visit is None:  # a time_to_event entry (the study definition allows no other)
            table = (events or {}).get(target.outcome)
            comparison = None if table is None else compare_time_to_event(study, table, target.outcome, target.effect,
                                                                          pair=pair)
        else:
            outcome = study.analysed_outcome_by_code[target.outcome]
            comparison = compare(study, frame, outcome, target.visit, target.effect or plan.effect_for(outcome.type),
                                 pair=pair, covariates=target.covariates, stratum=target.stratum)
        if comparison is None:
            checks.append(Verification(published=target, reproduced=None, mismatches=["no data"]))
            continue
        if target.p_adjusted is not None:
            comparison = in_family(study, frame, comparison, events)
        fields = tuple(check_fields(target, comparison))
        checks.append(Verification(published=target, reproduced=comparison, fields=fields,
                                   mismatches=[field.describe() for field in fields if not field.matches]))
    return checks


def in_family(study: Study, frame: pd.DataFrame, comparison: Comparison,
              events: dict[str, pd.DataFrame] | None = None) -> Comparison:
    """``comparison`` with its p adjusted in its family: the plan's comparisons of that family at its visit (the
    time_to_event entries in ``events`` for one over the follow-up), with ``comparison`` in place of the plan's own
    of its outcome and arms. Unchanged (``adjusted`` None) when in no family or its arms are no pair of the plan."""
    plan = _plan(study)
    name = family(plan, comparison)
    pairs = {(arm_label(treatment), arm_label(control)) for treatment, control in plan.pairs([a.code for a in study.arms])}
    if name is None or plan.multiplicity is None or comparison.arms not in pairs:
        return comparison
    codes = plan.multiplicity.families.get(plan.multiplicity.family(comparison.outcome) or "")
    others = _compare_each(study, frame, [comparison.visit] if comparison.visit else [], codes,
                           None if comparison.visit else events, False)
    members = [c for c in others if family(plan, c) == name and (c.outcome, c.arms) != (comparison.outcome, comparison.arms)]
    return adjust(plan, [comparison, *members])[0]
