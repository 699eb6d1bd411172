"""Hospital pull: a hospital's own Observations become study findings at the right visit.

Given an enrollment file (study subject id ↔ hospital patient identifier), each enrolled
patient is found on the hospital server by identifier, their Observations are fetched by
the standard codes (LOINC) the study definition gives its outcomes, and each usable
result is placed at the visit whose window (days from RFSTDTC, in the study definition)
contains it. What is not used is counted by reason, never silently dropped: results that
are not final, in a unit that cannot be converted, out of range, outside every visit
window, or superseded by a result closer to the visit day.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from ..errors import InputError
from ..progress import NO_PROGRESS, Progress
from ..study.definition import Outcome, Study, Visit
from ..tables.sdtm import FindingRecord, SubjectRecord, format_number
from .client import FhirClient

USABLE_STATUSES = frozenset({"final", "amended", "corrected"})


@dataclass(frozen=True, kw_only=True)
class Enrollment:
    subject: str
    system: str
    value: str


@dataclass(frozen=True, kw_only=True)
class HospitalPullResult:
    """Findings made from hospital data, and why the rest was not used."""

    enrolled: int
    patients_found: int
    findings: list[FindingRecord]
    skipped: dict[str, int]
    notes: list[str]


def read_enrollment(path: Path) -> list[Enrollment]:
    """``USUBJID,PATIENT_IDENTIFIER`` rows, the identifier written ``system|value``."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            rows = list(csv.DictReader(handle))
    except FileNotFoundError:
        raise InputError(f"{path}: enrollment file not found") from None
    enrollment = []
    for number, row in enumerate(rows, start=2):
        identifier = (row.get("PATIENT_IDENTIFIER") or "").strip()
        if not row.get("USUBJID") or "|" not in identifier:
            raise InputError(f"{path}, row {number}: need USUBJID and PATIENT_IDENTIFIER as system|value "
                             f"(got {row.get('USUBJID')!r}, {identifier!r})")
        system, value = identifier.split("|", 1)
        enrollment.append(Enrollment(subject=row["USUBJID"].strip(), system=system, value=value))
    return enrollment


def _outcomes_by_code(study: Study) -> dict[tuple[str, str], Outcome]:
    return {(c.system, c.code): o for o in study.outcomes for c in o.standard}


def _visit_for(study: Study, outcome: Outcome, day: int) -> Visit | None:
    candidates = [v for v in study.visits if v.window[0] <= day <= v.window[1]]
    scheduled = [v for v in candidates if v.code in outcome.visits]
    return (scheduled or candidates or [None])[0]


def pull_hospital(client: FhirClient, study: Study, enrollment: list[Enrollment],
                  subjects: dict[str, SubjectRecord], progress: Progress = NO_PROGRESS) -> HospitalPullResult:
    """Fetch and place the enrolled patients' results; see the module docstring."""
    by_code = _outcomes_by_code(study)
    if not by_code:
        raise InputError("no outcome in the study definition has a standard code: nothing to look for at the hospital")
    codes = ",".join(f"{system}|{code}" for system, code in by_code)
    skipped: Counter[str] = Counter()
    notes: list[str] = []
    best: dict[tuple[str, int, str], tuple[int, FindingRecord]] = {}
    found = 0
    progress.start(f"fetching hospital results from {client.base_url}", len(enrollment), "patients")
    for person in progress.each(enrollment):
        subject = subjects.get(person.subject)
        if subject is None:
            notes.append(f"{person.subject}: not a subject of this study's store; map DM first")
            continue
        patients = list(client.search("Patient", {"identifier": f"{person.system}|{person.value}"}))
        if len(patients) != 1:
            notes.append(f"{person.subject}: {len(patients)} hospital patients have identifier {person.value}; skipped")
            skipped["patient not found or ambiguous"] += 1
            continue
        found += 1
        start = date.fromisoformat(subject.start[:10])
        for observation in client.search("Observation", {"subject": f"Patient/{patients[0]['id']}", "code": codes}):
            placed = _place(study, by_code, observation, person.subject, start, skipped)
            if placed is None:
                continue
            distance, record = placed
            key = (record.subject, record.visitnum, record.testcd)
            if key in best:
                skipped["superseded by a result closer to the visit day"] += 1
                if best[key][0] <= distance:
                    continue
            best[key] = placed
    findings = sorted((record for _, record in best.values()), key=lambda r: (r.subject, r.visitnum, r.testcd))
    return HospitalPullResult(enrolled=len(enrollment), patients_found=found, findings=findings,
                              skipped=dict(skipped), notes=notes)


def _place(study: Study, by_code: dict, observation: dict, subject: str, start: date,
           skipped: Counter[str]) -> tuple[int, FindingRecord] | None:
    if observation.get("status") not in USABLE_STATUSES:
        skipped[f"status {observation.get('status')}"] += 1
        return None
    outcome = next((by_code[(c.get("system"), c.get("code"))] for c in observation.get("code", {}).get("coding", [])
                    if (c.get("system"), c.get("code")) in by_code), None)
    quantity = observation.get("valueQuantity", {})
    when = observation.get("effectiveDateTime") or observation.get("effectivePeriod", {}).get("start", "")
    if outcome is None or "value" not in quantity or len(when) < 10:
        skipped["no study code, value or date"] += 1
        return None
    unit = quantity.get("code") or quantity.get("unit")
    factor = outcome.factor_from(unit)
    if factor is None:
        skipped[f"unit {unit} not convertible to {outcome.unit}"] += 1
        return None
    value = round(quantity["value"] * factor, 6)
    if not outcome.in_range(value):
        skipped["out of plausible range"] += 1
        return None
    day = (date.fromisoformat(when[:10]) - start).days
    visit = _visit_for(study, outcome, day)
    if visit is None:
        skipped["outside every visit window"] += 1
        return None
    return abs(day - visit.day), FindingRecord(subject=subject, domain=outcome.domain, testcd=outcome.code,
                                                test=outcome.display, result=format_number(value), unit=outcome.unit,
                                                visitnum=visit.visitnum, date=when[:10])
