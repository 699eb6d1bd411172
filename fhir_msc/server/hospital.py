"""Hospital pull: a hospital's own Observations become study findings at the right visit.

Given an enrollment file (study subject id ↔ hospital patient identifier), each enrolled
patient is found on the hospital server by identifier and all their Observations are
fetched. A listing that falls short of its Bundle.total (a server that caps its pages) is never
taken as all there is: a patient's Observations are then asked for by the study's codes, those
with other codes counted as not fetched; a code whose search still falls short is named in
``missed`` and its results counted, not used. Each is accounted for: used, or not used under a reason — not final, a code the
study does not use (counted by code), no value or date, a unit that cannot be converted,
out of range, outside the windows of the visits where its outcome is scheduled, superseded
by a result closer to the visit day, the same as the study's value, or in conflict with it.

Study data are never overwritten behind the user's back: a hospital value for a subject,
outcome and visit the trial already holds is a conflict, kept apart with both values and
not used, unless the caller prefers the hospital's values. Censored results
(``valueQuantity.comparator``, e.g. ``<0.5``) keep their comparator. Results are placed by
their date (``effectiveDateTime``, ``effectiveInstant`` or ``effectivePeriod.start``); a
partial date (``2023-05``) is placed when every day it may mean lies in one visit window.

By bulk export (``Patient/$export``, or system level, with ``_type=Patient,Observation`` and a
``_typeFilter`` per study code), the patients are matched by identifier in the exported
Patients and their Observations go through the same placement and account as the paged
ones; Observations with other codes are not exported, so they are not in that account (unless
the server did not apply the ``_typeFilter``: then every Observation is exported and accounted
for, as in the paged pull). An export without a Patient file is an error (ExportFailed), never
"no patient found". The
export's results are placed as they stream from its files and spooled under the state
directory with the study's values, in parts of at least 1,000 subjects; the result closest to
each visit day is then chosen part by part, so memory does not grow with the number of
patients (only the findings and conflicts returned do). Results, accounts (examples included)
and conflicts are the same as in memory.
"""

from __future__ import annotations

import calendar
import csv
import dataclasses
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import orjson

from ..account import MAX_EXAMPLES, Account, Tally
from ..errors import InputError
from ..fhir.unmapping import ref_id
from ..progress import NO_PROGRESS, Progress
from ..store.files import private_open
from ..store.lock import spool_dir
from ..study.definition import Outcome, Study, Visit
from ..tables.sdtm import COMPARATORS, FindingRecord, SubjectRecord, format_number
from . import bulk
from .client import FhirClient
from .options import HOSPITAL_PREFER as PREFER

USABLE_STATUSES = frozenset({"final", "amended", "corrected"})
CONFLICT = "conflicts with the study value (the study's kept; see the conflicts file)"
SAME = "same as the study value (nothing to change)"
SUPERSEDED = "superseded by a result closer to the visit day"
UNUSED_CODE = "code not used by the study"
OTHER_CODE_NOT_FETCHED = "code not used by the study, not fetched (asked for by the study's codes: the server's pages fell short)"
PARTLY_LISTED = "the server listed only part of the patient's results with this code (one closer to the visit day may be missing)"
NOT_LISTED = "not listed by the server (its pages fell short of Bundle.total)"

Key = tuple[str, int | float, str]  # (subject, visitnum, testcd)
StudyValues = Mapping[Key, tuple[str, str]] | Iterable[tuple[Key, tuple[str, str]]]  # key -> (result, date); pairs: last wins
SUBJECTS_PER_PART = 1000  # the bulk path's results are chosen this many subjects at a time (at least) ...
MAX_PARTS = 200  # ... in at most this many parts (files open at once while spooling)


@dataclass(frozen=True, kw_only=True)
class Enrollment:
    subject: str
    system: str
    value: str


@dataclass(frozen=True, kw_only=True)
class Conflict:
    """A hospital value for a subject, outcome and visit the trial already holds, and which one was kept."""

    subject: str
    testcd: str
    visitnum: int
    unit: str
    study_result: str
    study_date: str
    hospital_result: str
    hospital_date: str
    hospital_observation: str  # Observation/<id> on the hospital server
    kept: str  # "study" or "hospital"


@dataclass(frozen=True, kw_only=True)
class HospitalPullResult:
    """Findings made from hospital data, the conflicts with study data, and where everything else went.

    ``patients``: enrolled subjects = found at the hospital + not, by reason. ``observations``:
    the Observations of the patients found = used (``findings``) + not used, by reason (those a
    search could not fetch included). ``missed``: searches whose answers fell short of their
    Bundle.total even when narrowed (then not ``ok``).
    """

    enrolled: int
    patients: Account
    observations: Account
    findings: list[FindingRecord]
    conflicts: list[Conflict]
    unused_codes: dict[str, int]  # system|code the study does not use -> Observations with it
    prefer: str
    method: str = "search"  # or "bulk" (one Bulk Data export)
    notes: list[str] = field(default_factory=list)  # e.g. what a killed job left and this one cleaned up
    missed: list[str] = field(default_factory=list)  # searches that fell short of their Bundle.total even when narrowed

    @property
    def ok(self) -> bool:
        return not self.missed


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


def hospital_outcomes(study: Study) -> dict[tuple[str, str], Outcome]:
    """The study's outcomes by their standard codes (system, code): what a hospital result can be."""
    return {(c.system, c.code): o for o in study.outcomes for c in o.standard}


@dataclass(frozen=True)
class _Placed:
    distance: int
    record: FindingRecord
    observation: str


def pull_hospital(client: FhirClient, study: Study, enrollment: list[Enrollment], subjects: dict[str, SubjectRecord],
                  study_values: StudyValues, prefer: str = "study", progress: Progress = NO_PROGRESS, *,
                  bulk_state: Path | None = None, policy: bulk.BulkPolicy = bulk.BulkPolicy()) -> HospitalPullResult:
    """Fetch, place and account for the enrolled patients' results; see the module docstring.

    With ``bulk_state`` (where an export's journal and files are kept), by Bulk Data export when
    the server declares one, else by paged search (and a note says so).
    """
    by_code = hospital_outcomes(study)
    if not by_code:
        raise InputError("no outcome in the study definition has a standard code: nothing to look for at the hospital")
    notes = []
    if bulk_state is not None:
        levels = bulk.export_levels(client)
        if levels:
            return _by_export(client, study, by_code, enrollment, subjects, study_values, prefer, progress,
                              "Patient" if "Patient" in levels else "system", bulk_state, policy)
        notes.append(f"{client.base_url} declares no $export: pulled by paged search")
    patients = Tally()
    missed: list[str] = []
    progress.start(f"finding enrolled patients on {client.base_url}", len(enrollment), "patients")
    found = _found(enrollment, subjects, patients, lambda person: _patients_with(client, person, missed), progress)
    search = _ObservationSearch(client, by_code, missed)

    def observations() -> Iterator[tuple[str, dict]]:
        progress.start(f"fetching hospital results from {client.base_url}", len(found), "patients")
        for patient_id in progress.each(list(found)):
            for observation in search.of(patient_id, len(found[patient_id])):
                yield patient_id, observation

    result = _account(study, by_code, len(enrollment), patients, found, observations(), dict(_pairs(study_values)), prefer,
                      tally=search.tally)
    return dataclasses.replace(result, notes=[*notes, *search.notes()], missed=missed)


def _patients_with(client: FhirClient, person: Enrollment, missed: list[str]) -> tuple[list[str], int]:
    """The ids of the hospital Patients the server lists with this person's identifier, and how many it says hold it
    (its Bundle.total); one it counts but does not list is named in ``missed``."""
    identifier = f"{person.system}|{person.value}"
    listing = client.listing("Patient", {"identifier": identifier})
    ids = sorted(listing.ids("Patient"))
    holding = max(listing.total or 0, len(ids))
    if holding == 1 and not ids:
        missed.append(f"Patient {identifier}: {listing.shortfall}")
    return ids, holding


class _ObservationSearch:
    """Every Observation of one patient at a time: one search; where its pages fall short of Bundle.total, one search
    per study code instead. Observations it cannot list are counted in ``tally`` (per subject enrolled as the
    patient, as the account counts): with other codes (not fetched), or not listed at all; and those listed of a code
    whose search still falls short are not used (the one closest to a visit day may be among those not listed), that
    search named in ``missed``."""

    def __init__(self, client: FhirClient, by_code: Mapping[tuple[str, str], Outcome], missed: list[str]):
        self.client, self.codes, self.missed = client, sorted(by_code), missed
        self.tally = Tally()
        self.narrowed = self.other_codes = 0  # patients searched by code; Observations with other codes not fetched

    def of(self, patient_id: str, subjects: int) -> list[dict]:
        """The patient's Observations to place (``subjects``: how many study subjects are enrolled as the patient)."""
        query = {"subject": f"Patient/{patient_id}"}
        listing = self.client.listing("Observation", query)
        if listing.complete:
            return listing.resources
        self.narrowed += 1
        fetched = {_key(o): o for o in listing.resources}
        short = set()
        for system, code in self.codes:
            by_code = self.client.listing("Observation", {**query, "code": f"{system}|{code}"})
            fetched.update((_key(o), o) for o in by_code.resources)
            if not by_code.complete:
                short.add((system, code))
                self.missed.append(f"Observation {system}|{code} of Patient/{patient_id}: {by_code.shortfall}")
        unlisted = max(0, (listing.total or 0) - len(fetched))
        if short:
            self._skip(NOT_LISTED, unlisted * subjects)
        else:
            self.other_codes += unlisted
            self._skip(OTHER_CODE_NOT_FETCHED, unlisted * subjects)
        usable = []
        for observation in fetched.values():
            if {(c.get("system"), c.get("code")) for c in (observation.get("code") or {}).get("coding", [])} & short:
                self._skip(PARTLY_LISTED, subjects, f"Observation/{observation.get('id')}")
            else:
                usable.append(observation)
        return usable

    def _skip(self, reason: str, count: int, example: str | None = None) -> None:
        if count:
            self.tally.read += count
            self.tally.skip(reason, example, count)

    def notes(self) -> list[str]:
        """How searches that fell short were made up for, in one line (none if none did)."""
        if not self.narrowed:
            return []
        return [f"the server listed only part of the Observations of {self.narrowed} patient(s) (their Bundle.total says "
                f"more): those were asked for by the study's {len(self.codes)} code(s) instead, and {self.other_codes} "
                "with other codes were not fetched (counted in the account)"]


def _key(resource: dict) -> tuple[str, str]:
    """(type, id); a resource without an id is keyed by itself (each kept, and found unusable later)."""
    id_ = resource.get("id")
    return (str(resource.get("resourceType")), id_ if isinstance(id_, str) else f"#{id(resource)}")


def _by_export(client: FhirClient, study: Study, by_code: dict[tuple[str, str], Outcome], enrollment: list[Enrollment],
               subjects: dict[str, SubjectRecord], study_values: StudyValues, prefer: str, progress: Progress, level: str,
               state_dir: Path, policy: bulk.BulkPolicy) -> HospitalPullResult:
    """One export of Patients and of the Observations with the study's codes (``_typeFilter``), then the same account."""
    filters = [bulk.type_filter("Observation", {"code": f"{system}|{code}"}) for system, code in sorted(by_code)]
    done = bulk.export(client, level, state_dir, types=("Patient", "Observation"), type_filters=filters,
                       policy=policy, progress=progress)
    if enrollment:
        bulk.require_patients(client, done, f"{level} level",
                              f"the {len(enrollment)} enrolled patients cannot be looked up in it")
    wanted = {(person.system, person.value) for person in enrollment}
    holders: dict[tuple[str, str], list[str]] = {}
    for patient in done.resources("Patient"):
        for key in {(i.get("system"), i.get("value")) for i in patient.get("identifier", [])} & wanted:
            holders.setdefault(key, []).append(patient["id"])
    patients = Tally()
    found = _found(enrollment, subjects, patients, lambda person: _listed(holders.get((person.system, person.value), [])),
                   progress)
    observations = ((patient_id, o) for o in done.resources("Observation", as_exported=True)  # other codes: counted as such
                    if (patient_id := ref_id((o.get("subject") or {}).get("reference", ""))) in found)
    result = _account_out_of_core(study, by_code, len(enrollment), patients, found, observations, study_values, prefer,
                                  state_dir)
    left = bulk.finish(client, done)
    which = ("every Observation of the patients found was exported, those with other codes counted in the account"
             if "Observation" in done.unfiltered else "only Observations with the study's codes were exported (_typeFilter), "
             "so those with other codes are not in the account")
    notes = [f"pulled by bulk export ({level} level, {done.downloaded} files"
             f"{f', {done.reused} already downloaded' if done.reused else ''}); {which}",
             *done.notes(), *(f"export error: {issue}" for issue in done.errors), *left]
    return dataclasses.replace(result, method="bulk", notes=notes)


def _listed(ids: list[str]) -> tuple[list[str], int]:
    return ids, len(ids)


def _found(enrollment: list[Enrollment], subjects: dict[str, SubjectRecord], patients: Tally,
           holders: Callable[[Enrollment], tuple[list[str], int]], progress: Progress) -> dict[str, list[tuple[str, date]]]:
    """Hospital patient id → the (subject, start date) enrolled as that patient; each enrolled subject counted.

    ``holders``: the ids of the hospital patients listed with a person's identifier, and how many hold it."""
    found: dict[str, list[tuple[str, date]]] = {}
    for person in progress.each(enrollment):
        patients.read += 1
        subject = subjects.get(person.subject)
        if subject is None:
            patients.skip("not a subject of this study's store (map DM first)", person.subject)
            continue
        ids, holding = holders(person)
        if holding != 1 or len(ids) != 1:
            patients.skip("no hospital patient has this identifier" if not holding else
                          "several hospital patients have this identifier" if holding > 1 else
                          "the server counts one hospital patient with this identifier but does not list it",
                          f"{person.subject} ({person.value})")
            continue
        patients.used += 1
        found.setdefault(ids[0], []).append((person.subject, date.fromisoformat(subject.start[:10])))
    return found


def _account(study: Study, by_code: dict[tuple[str, str], Outcome], enrolled: int, patients: Tally,
             found: dict[str, list[tuple[str, date]]], observations: Iterable[tuple[str, dict]],
             study_values: StudyValues, prefer: str, *, tally: Tally | None = None) -> HospitalPullResult:
    """Place every (patient id, Observation) of the patients found, keep the result closest to each visit day
    (ties: the first Observation by reference), and account for each one: used, or not used by reason
    (``tally``: the account of the Observations so far, e.g. those the search could not fetch)."""
    tally = tally or Tally()
    unused: Counter[str] = Counter()
    best: dict[Key, _Placed] = {}
    for _, placed in _placed_results(study, by_code, found, observations, tally, unused):
        key = (placed.record.subject, placed.record.visitnum, placed.record.testcd)
        earlier = best.get(key)
        if earlier is not None:
            loser = placed if (earlier.distance, earlier.observation) <= (placed.distance, placed.observation) else earlier
            tally.skip(SUPERSEDED, loser.observation)
            if loser is placed:
                continue
        best[key] = placed
    chosen = ((placed.record, placed.observation, study_values.get(key)) for key, placed in sorted(best.items()))
    findings, conflicts = _judge(chosen, tally, prefer)
    return HospitalPullResult(enrolled=enrolled, patients=patients.account(), observations=tally.account(),
                              findings=findings, conflicts=conflicts, unused_codes=dict(unused.most_common()),
                              prefer=prefer)


def _placed_results(study: Study, by_code: dict[tuple[str, str], Outcome], found: dict[str, list[tuple[str, date]]],
                    observations: Iterable[tuple[str, dict]], tally: Tally, unused: Counter[str]
                    ) -> Iterator[tuple[str, _Placed]]:
    """Each (patient id, Observation) placed for every study subject enrolled as that patient, as (subject,
    placed result); each is counted as read, and one that cannot be placed is skipped under its reason."""
    for patient_id, observation in observations:
        for subject, start in found[patient_id]:
            tally.read += 1
            placed = _place(study, by_code, observation, subject, start, unused)
            if isinstance(placed, str):
                tally.skip(placed, f"Observation/{observation.get('id')}")
                continue
            yield subject, placed


def _judge(chosen: Iterable[tuple[FindingRecord, str, tuple[str, str] | None]], tally: Tally, prefer: str
           ) -> tuple[list[FindingRecord], list[Conflict]]:
    """The findings and conflicts of the results chosen (each with its Observation and the study's value, if any)."""
    findings, conflicts = [], []
    for record, observation, held in chosen:
        if held is not None and held[0] == record.result:
            tally.skip(SAME, observation)
            continue
        if held is not None:
            conflicts.append(Conflict(subject=record.subject, testcd=record.testcd, visitnum=record.visitnum,
                                      unit=record.unit, study_result=held[0], study_date=held[1],
                                      hospital_result=record.result, hospital_date=record.date,
                                      hospital_observation=observation, kept=prefer))
            if prefer != "hospital":
                tally.skip(CONFLICT, observation)
                continue
        tally.used += 1
        findings.append(record)
    return findings, conflicts


def _pairs(study_values: StudyValues) -> Iterable[tuple[Key, tuple[str, str]]]:
    return study_values.items() if isinstance(study_values, Mapping) else study_values


def _account_out_of_core(study: Study, by_code: dict[tuple[str, str], Outcome], enrolled: int, patients: Tally,
                         found: dict[str, list[tuple[str, date]]], observations: Iterable[tuple[str, dict]],
                         study_values: StudyValues, prefer: str, work: Path) -> HospitalPullResult:
    """:func:`_account` with the placed results and the study's values spooled to disk (a spool directory
    under ``work``) in parts of at least SUBJECTS_PER_PART subjects in their sorted order, then chosen
    part by part: memory holds one part, and the result, account and conflicts are the same."""
    subjects = sorted({subject for enrolled_as in found.values() for subject, _ in enrolled_as})
    size = max(SUBJECTS_PER_PART, -(-len(subjects) // MAX_PARTS))
    part_of = {subject: n // size for n, subject in enumerate(subjects)}
    parts = -(-len(subjects) // size)
    visit_index = {visit.visitnum: n for n, visit in enumerate(study.visits)}
    tally = Tally()
    unused: Counter[str] = Counter()
    with spool_dir(work, ".hospital-") as spool:
        with ExitStack() as stack:
            placed = [stack.enter_context(private_open(spool / f"placed-{n}.ndjson", "wb")) for n in range(parts)]
            results = _placed_results(study, by_code, found, observations, tally, unused)
            for seq, (subject, result) in enumerate(results):
                r = result.record
                placed[part_of[subject]].write(orjson.dumps(
                    [seq, visit_index[r.visitnum], r.testcd, result.distance, result.observation, r.result, r.date, subject],
                    option=orjson.OPT_APPEND_NEWLINE))
        with ExitStack() as stack:
            held = [stack.enter_context(private_open(spool / f"held-{n}.ndjson", "wb")) for n in range(parts)]
            for (subject, visitnum, testcd), value in _pairs(study_values):
                if subject in part_of:
                    held[part_of[subject]].write(orjson.dumps([subject, visitnum, testcd, *value],
                                                              option=orjson.OPT_APPEND_NEWLINE))
        first_losers: list[tuple[int, str]] = []  # (when, Observation) of the earliest superseded results
        chosen = (row for n in range(parts) for row in _chosen_in_part(study, by_code, spool, n, tally, first_losers))
        findings, conflicts = _judge(chosen, tally, prefer)
    for _, observation in sorted(first_losers)[:MAX_EXAMPLES]:
        tally.skip(SUPERSEDED, observation, count=0)  # counted part by part; named here in the order they came
    return HospitalPullResult(enrolled=enrolled, patients=patients.account(), observations=tally.account(),
                              findings=findings, conflicts=conflicts, unused_codes=dict(unused.most_common()),
                              prefer=prefer)


def _chosen_in_part(study: Study, by_code: dict[tuple[str, str], Outcome], spool: Path, part: int, tally: Tally,
                    first_losers: list[tuple[int, str]]) -> Iterator[tuple[FindingRecord, str, tuple[str, str] | None]]:
    """One part's results closest to their visit day (as :func:`_account` chooses them), in key order, each
    with its Observation and the study's value; superseded ones are counted (the first few noted)."""
    outcomes = {outcome.code: outcome for outcome in by_code.values()}
    with open(spool / f"held-{part}.ndjson", "rb") as handle:
        held = {(s, v, t): (result, when) for s, v, t, result, when in map(orjson.loads, handle)}
    best: dict[Key, tuple[int, str, int, list]] = {}  # key -> (distance, Observation, seq, row)
    losers = 0
    with open(spool / f"placed-{part}.ndjson", "rb") as handle:
        for row in map(orjson.loads, handle):
            seq, visit, testcd, distance, observation = row[:5]
            key = (row[7], study.visits[visit].visitnum, testcd)
            earlier = best.get(key)
            if earlier is not None:
                superseded = earlier[:2] <= (distance, observation)  # ties: the earlier stays
                tally.skip(SUPERSEDED)
                if losers < MAX_EXAMPLES:
                    first_losers.append((seq, observation if superseded else earlier[1]))
                    losers += 1
                if superseded:
                    continue
            best[key] = (distance, observation, seq, row)
    for key in sorted(best):
        _, observation, _, (_, visit, testcd, _, _, result, when, subject) = best[key]
        outcome = outcomes[testcd]
        record = FindingRecord(subject=subject, domain=outcome.domain, testcd=testcd, test=outcome.display, result=result,
                               unit=outcome.unit, visitnum=study.visits[visit].visitnum, date=when)
        yield record, observation, held.get(key)


def _place(study: Study, by_code: dict[tuple[str, str], Outcome], observation: dict, subject: str, start: date,
           unused: Counter[str]) -> _Placed | str:
    """The finding an Observation makes, at its visit; or why it makes none."""
    if observation.get("status") not in USABLE_STATUSES:
        return f"status {observation.get('status')}"
    codings = observation.get("code", {}).get("coding", [])
    outcome = next((by_code[(c.get("system"), c.get("code"))] for c in codings if (c.get("system"), c.get("code")) in by_code), None)
    if outcome is None:
        unused[next((f"{c.get('system')}|{c.get('code')}" for c in codings), observation.get("code", {}).get("text", "no code"))] += 1
        return UNUSED_CODE
    quantity = observation.get("valueQuantity", {})
    if not isinstance(quantity.get("value"), (int, float)):
        return "no valueQuantity value"
    comparator = quantity.get("comparator", "")
    if comparator and comparator not in COMPARATORS:
        return f"comparator {comparator} is not a bound (<, <=, >=, >)"
    unit = quantity.get("code") or quantity.get("unit")
    factor = outcome.factor_from(unit)
    if factor is None:
        return f"unit {unit} not convertible to {outcome.unit}"
    value = round(quantity["value"] * factor, 6)
    if not outcome.in_range(value):
        return "out of plausible range"
    when = (observation.get("effectiveDateTime") or observation.get("effectiveInstant")
            or observation.get("effectivePeriod", {}).get("start") or "")
    days = _days(when, start)
    if days is None:
        return "no effective date, or not a calendar date"
    visit, reason = _visit_for(study, outcome, days)
    if visit is None:
        return reason
    middle = (days[0] + days[1]) // 2
    record = FindingRecord(subject=subject, domain=outcome.domain, testcd=outcome.code, test=outcome.display,
                           result=comparator + format_number(value), unit=outcome.unit, visitnum=visit.visitnum,
                           date=when[:10])
    return _Placed(abs(middle - visit.day), record, f"Observation/{observation.get('id')}")


def _days(when: str, start: date) -> tuple[int, int] | None:
    """First and last study day a (possibly partial) FHIR date or dateTime may mean; None if it is none."""
    try:
        if len(when) >= 10:
            day = (date.fromisoformat(when[:10]) - start).days
            return day, day
        if len(when) == 7:
            year, month = int(when[:4]), int(when[5:7])
            first, last = date(year, month, 1), date(year, month, calendar.monthrange(year, month)[1])
        elif len(when) == 4:
            first, last = date(int(when), 1, 1), date(int(when), 12, 31)
        else:
            return None
    except ValueError:
        return None
    return (first - start).days, (last - start).days


def _visit_for(study: Study, outcome: Outcome, days: tuple[int, int]) -> tuple[Visit | None, str]:
    """The visit where ``outcome`` is scheduled whose window holds every day in ``days``; else why none."""
    low, high = days
    for visit in study.visits:
        if visit.window[0] <= low and high <= visit.window[1]:
            if visit.code in outcome.visits:
                return visit, ""
            return None, "in the window of a visit where its outcome is not scheduled"
    if any(visit.window[0] <= high and low <= visit.window[1] for visit in study.visits):
        return None, "partial date not within one visit window"
    return None, "outside every visit window"
