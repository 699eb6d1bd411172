"""Adverse-event incidence by arm, from FHIR AdverseEvents.

For the study's treatment and control arm (``analysis``): subjects with at least one adverse
event — any, serious (AESER = ``adverse_events.serious_event``), and each AEDECOD term the study
file declares — out of the subjects of the arm (as treated: ResearchSubject's actual arm), as n/N
and %, with Fisher's exact p. Every AdverseEvent read is counted or skipped under a reason.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pandas as pd

from ..account import Account
from ..fhir.unmapping import read_adverse_event_records
from ..store.source import ResourceSource
from ..study.definition import Study
from .engine_events import NOT_COMPARED, EventCounts, event_counts
from .export import account_json, number
from .report import format_p
from .stats import fisher_p

ANY, SERIOUS = "any adverse event", "serious adverse event"


@dataclass(frozen=True, kw_only=True)
class Incidence:
    """Subjects with ≥1 event of one kind per arm (treatment first), and Fisher's exact p."""

    label: str  # ANY, SERIOUS, or the AEDECOD term
    subjects: tuple[int, int]
    n: tuple[int, int]
    fisher_p: float

    @property
    def percent(self) -> tuple[float | None, float | None]:
        return tuple(100 * s / n if n else None for s, n in zip(self.subjects, self.n))  # type: ignore[return-value]


@dataclass(frozen=True, kw_only=True)
class AdverseEventIncidence:
    """Incidence rows (any, serious, then each term) and the account of the AdverseEvents read."""

    arms: tuple[str, str]  # treatment, control arm codes
    arm_names: tuple[str, str]
    rows: list[Incidence]
    account: Account


def incidence(study: Study, source: ResourceSource, engine: str = "python") -> AdverseEventIncidence | None:
    """Adverse-event incidence by arm; None when the study file has no ``adverse_events`` or ``analysis``, or
    the source holds no AdverseEvent at all (AE data not mapped or not pulled: not "no events").

    ``engine`` "duckdb" or "spark": counted by DuckDB from the shipped views (``engine_events``); "python":
    by the Python reader, the reference. Both give the same rows and account.
    """
    ae, plan = study.adverse_events, study.analysis
    if ae is None or plan is None:
        return None
    arms = (plan.treatment, plan.control)
    counts = (event_counts if engine in ("duckdb", "spark") else _event_counts)(study, source, arms)
    if counts is None:
        return None
    kinds = {ANY: counts.any, SERIOUS: counts.serious, **counts.terms}
    n = counts.n
    rows = [Incidence(label=label, subjects=subjects, n=n,
                      fisher_p=fisher_p(subjects[0], n[0] - subjects[0], subjects[1], n[1] - subjects[1]))
            for label, subjects in kinds.items()]
    names = (study.arm_by_code[arms[0]].name, study.arm_by_code[arms[1]].name)
    return AdverseEventIncidence(arms=arms, arm_names=names, rows=rows, account=counts.account)


def _event_counts(study: Study, source: ResourceSource, arms: tuple[str, str]) -> EventCounts | None:
    """The counts of :func:`engine_events.event_counts`, from the Python reader."""
    subjects, events, tally = read_adverse_event_records(study, source)
    if not tally.read:
        return None
    place = {code: index for index, code in enumerate(arms)}
    side = {s.subject: place[s.actual_arm_code] for s in subjects.values() if s.actual_arm_code in place}
    counted = Counter(side.values())
    kinds: dict[str, tuple[set[str], set[str]]] = {label: (set(), set()) for label in (ANY, SERIOUS, *study.adverse_events.terms)}
    for event in events:
        held = side.get(event.subject)
        if held is None:
            tally.used -= 1
            tally.skip(NOT_COMPARED, f"{event.subject}/{event.seq}")
            continue
        kinds[ANY][held].add(event.subject)
        kinds[event.decod][held].add(event.subject)
        if event.serious == study.adverse_events.serious_event:
            kinds[SERIOUS][held].add(event.subject)
    subjects_with = {label: (len(treated), len(control)) for label, (treated, control) in kinds.items()}
    return EventCounts(n=(counted[0], counted[1]), any=subjects_with.pop(ANY), serious=subjects_with.pop(SERIOUS),
                       terms=subjects_with, account=tally.account())


def incidence_table(result: AdverseEventIncidence) -> pd.DataFrame:
    """One row per kind of event: subjects with ≥1 event n/N (%) per arm, and Fisher's exact p."""
    rows = []
    for row in result.rows:
        cells = {name: f"{s}/{n} ({p:.1f}%)" if p is not None else f"{s}/{n}"
                 for name, s, n, p in zip(result.arm_names, row.subjects, row.n, row.percent)}
        rows.append({"adverse events (subjects with ≥1)": row.label, **cells, "Fisher p": format_p(row.fisher_p)})
    return pd.DataFrame(rows)


def incidence_json(result: AdverseEventIncidence) -> dict:
    """The ``adverse_events`` member of ``analyze --json``."""
    return {"arms": {"treatment": result.arms[0], "control": result.arms[1]},
            "rows": [{"label": r.label, "subjects": list(r.subjects), "n": list(r.n),
                      "percent": [None if p is None else round(p, 4) for p in r.percent],
                      "fisher_p": number(r.fisher_p)} for r in result.rows],
            "account": account_json(result.account)}
