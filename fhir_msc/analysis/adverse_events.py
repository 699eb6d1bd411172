"""Adverse-event incidence by arm, from FHIR AdverseEvents.

For each comparison of the analysis plan (an arm, or arms pooled, against another): subjects with at least one
adverse event — any, serious (AESER = ``adverse_events.serious_event``), and each AEDECOD term the study file
declares — out of the subjects of each side (as treated: ResearchSubject's actual arm), as n/N and %, with Fisher's
exact p. Every AdverseEvent read is counted or skipped under a reason. A published entry on adverse events
(``published[].adverse_event``) is checked against the same counts as a binary comparison.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass

import pandas as pd

from ..account import Account
from ..fhir.unmapping import read_adverse_event_records
from ..store.source import ResourceSource
from ..study.definition import PublishedResult, Study, arm_codes, arm_label
from .engine_events import NOT_COMPARED, EventCounts, event_counts
from .export import account_json, number
from .frame import Comparison, Pair, binary_estimates
from .report import format_p
from .stats import compare_binary, fisher_p

ANY, SERIOUS = "any adverse event", "serious adverse event"


@dataclass(frozen=True, kw_only=True)
class Incidence:
    """Subjects with ≥1 event of one kind per side (treatment first), and Fisher's exact p."""

    label: str  # ANY, SERIOUS, or the AEDECOD term
    subjects: tuple[int, int]
    n: tuple[int, int]
    fisher_p: float

    @property
    def percent(self) -> tuple[float | None, float | None]:
        return tuple(100 * s / n if n else None for s, n in zip(self.subjects, self.n))  # type: ignore[return-value]


@dataclass(frozen=True, kw_only=True)
class ComparedIncidence:
    """The incidence rows (any, serious, then each term) of one comparison: treatment and control arm codes."""

    groups: Pair
    arm_names: tuple[str, str]  # pooled arms' names joined by " + "
    rows: list[Incidence]

    @property
    def arms(self) -> tuple[str, str]:
        """The two sides as results name them: an arm code, or pooled codes joined by '+'."""
        return arm_label(self.groups[0]), arm_label(self.groups[1])


@dataclass(frozen=True, kw_only=True)
class AdverseEventIncidence:
    """The incidence of each comparison, from the counts per arm, and the account of the AdverseEvents read."""

    comparisons: list[ComparedIncidence]
    counts: EventCounts

    @property
    def account(self) -> Account:
        return self.counts.account

    def comparison(self, study: Study, result: PublishedResult) -> Comparison | None:
        """The binary comparison a published adverse-event entry is checked against (events: subjects with ≥1
        event of its kind); None when a side has fewer than 2 subjects."""
        plan = study.analysis
        assert plan is not None and result.adverse_event is not None  # an entry of the plan
        pair = _pair(study, result)
        label = {"any": ANY, "serious": SERIOUS}.get(result.adverse_event, result.adverse_event)
        subjects, n = (tuple(sum(counts[arm] for arm in side) for side in pair)
                       for counts in (_kinds(self.counts)[label], self.counts.n))
        if min(n) < 2:
            return None
        key = plan.adverse_event_effect(result.effect)
        summary = compare_binary(subjects, n, plan.alpha, exact=key == "exact-odds-ratio")  # type: ignore[arg-type]
        return Comparison(outcome=label, display=label, visit="", kind="binary", arms=(arm_label(pair[0]), arm_label(pair[1])),
                          effect=binary_estimates(summary)[key], summary=summary, key=key, groups=pair)


def _pair(study: Study, result: PublishedResult) -> Pair:
    """The arms a published entry compares: its treatment and control, else the plan's one pair."""
    if result.treatment is not None and result.control is not None:
        return arm_codes(result.treatment), arm_codes(result.control)
    return study.analysis.pairs([a.code for a in study.arms])[0]  # type: ignore[union-attr]


def _kinds(counts: EventCounts) -> dict[str, dict[str, int]]:
    """Subjects with ≥1 event per arm, by kind: any, serious, then each term."""
    return {ANY: counts.any, SERIOUS: counts.serious, **counts.terms}


def incidence(study: Study, source: ResourceSource, engine: str = "python",
              pairs: list[Pair] | None = None) -> AdverseEventIncidence | None:
    """Adverse-event incidence for each of ``pairs`` (default: every comparison of the plan); None when the study file
    has no ``adverse_events`` or ``analysis``, there is no pair, or the source holds no AdverseEvent at all (AE data not
    mapped or not pulled: not "no events").

    ``engine`` "duckdb" or "spark": counted by DuckDB from the shipped views (``engine_events``); "python":
    by the Python reader, the reference. Both give the same rows and account.
    """
    ae, plan = study.adverse_events, study.analysis
    if ae is None or plan is None:
        return None
    pairs = pairs if pairs is not None else plan.pairs([a.code for a in study.arms])
    if not pairs:
        return None
    compared = [a.code for a in study.arms if any(a.code in side for pair in pairs for side in pair)]
    counts = (event_counts if engine in ("duckdb", "spark") else _event_counts)(study, source, compared)
    if counts is None:
        return None
    kinds = _kinds(counts)
    comparisons = []
    for pair in pairs:
        n = _sides(counts.n, pair)
        rows = [Incidence(label=label, subjects=subjects, n=n,
                          fisher_p=fisher_p(subjects[0], n[0] - subjects[0], subjects[1], n[1] - subjects[1]))
                for label, subjects in ((label, _sides(by_arm, pair)) for label, by_arm in kinds.items())]
        names = tuple(" + ".join(study.arm_by_code[code].name for code in side) for side in pair)
        comparisons.append(ComparedIncidence(groups=pair, arm_names=names, rows=rows))  # type: ignore[arg-type]
    return AdverseEventIncidence(comparisons=comparisons, counts=counts)


def _sides(by_arm: dict[str, int], pair: Pair) -> tuple[int, int]:
    """A count per arm summed over each side of a comparison (treatment, control)."""
    return sum(by_arm[code] for code in pair[0]), sum(by_arm[code] for code in pair[1])


def published_pairs(study: Study) -> list[Pair]:
    """The pairs of the plan's published adverse-event entries, each once, in the order they are first named."""
    plan = study.analysis
    found = [_pair(study, result) for result in plan.published if result.adverse_event is not None] if plan else []
    return list(dict.fromkeys(found))


def _event_counts(study: Study, source: ResourceSource, arms: Collection[str]) -> EventCounts | None:
    """The counts of :func:`engine_events.event_counts`, from the Python reader."""
    subjects, events, tally = read_adverse_event_records(study, source)
    if not tally.read:
        return None
    arm_of = {s.subject: s.actual_arm_code for s in subjects.values() if s.actual_arm_code in arms}
    counted = Counter(arm_of.values())
    kinds = {label: {arm: set() for arm in arms} for label in (ANY, SERIOUS, *study.adverse_events.terms)}
    for event in events:
        arm = arm_of.get(event.subject)
        if arm is None:
            tally.used -= 1
            tally.skip(NOT_COMPARED, f"{event.subject}/{event.seq}")
            continue
        kinds[ANY][arm].add(event.subject)
        kinds[event.decod][arm].add(event.subject)
        if event.serious == study.adverse_events.serious_event:
            kinds[SERIOUS][arm].add(event.subject)
    with_event = {label: {arm: len(held) for arm, held in by_arm.items()} for label, by_arm in kinds.items()}
    return EventCounts(n={arm: counted[arm] for arm in arms}, any=with_event.pop(ANY),
                       serious=with_event.pop(SERIOUS), terms=with_event, account=tally.account())


def incidence_table(result: AdverseEventIncidence) -> pd.DataFrame:
    """One row per kind of event: subjects with ≥1 event n/N (%) for each side compared (the treatments, then the
    controls), and Fisher's exact p of each comparison ("Fisher p HIGH vs PBO" when there are several)."""
    several = len(result.comparisons) > 1
    sides = {}  # side name -> (comparison, 0 for its treatment or 1 for its control), treatments first
    for place in (0, 1):
        for compared in result.comparisons:
            sides.setdefault(compared.arm_names[place], (compared, place))
    rows = []
    for index, label in enumerate(row.label for row in result.comparisons[0].rows):
        cells: dict[str, str] = {"adverse events (subjects with ≥1)": label}
        for name, (compared, place) in sides.items():
            row = compared.rows[index]
            s, n, percent = row.subjects[place], row.n[place], row.percent[place]
            cells[name] = f"{s}/{n} ({percent:.1f}%)" if percent is not None else f"{s}/{n}"
        for compared in result.comparisons:
            cells[f"Fisher p {' vs '.join(compared.arms)}" if several else "Fisher p"] = format_p(compared.rows[index].fisher_p)
        rows.append(cells)
    return pd.DataFrame(rows)


def incidence_json(result: AdverseEventIncidence) -> dict:
    """The ``adverse_events`` member of ``analyze --json``."""
    return {"comparisons": [{"arms": {"treatment": compared.arms[0], "control": compared.arms[1]},
                             "rows": [{"label": r.label, "subjects": list(r.subjects), "n": list(r.n),
                                       "percent": [None if p is None else round(p, 4) for p in r.percent],
                                       "fisher_p": number(r.fisher_p)} for r in compared.rows]}
                            for compared in result.comparisons],
            "account": account_json(result.account)}
