"""FHIR resources → trial tables: the inverse of mapping.py.

Reads R4 or R5 resources from any source that can list resources by type (the
embedded store, a bundle, a server pull) and writes the study's tables. References
are followed by logical id, so it works on server-assigned ids as well as ours.
Every resource read is accounted for (fhir_msc.account): used for a table row (or, for
Patients and Encounters, for the rows that refer to them), or skipped under a reason
(an Observation with no study code, say, or an answer code the study does not define),
never silently dropped.
"""

from __future__ import annotations

from array import array
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..account import Account, Tally
from ..store.ndjson import Prefilter
from ..store.source import ResourceSource
from ..study.definition import Study
from ..tables.ae import AdverseEventRecord, write_adverse_event
from ..tables.sdtm import (
    COMPARATORS,
    Dataset,
    DoseRecord,
    FindingRecord,
    SubjectRecord,
    TableWriter,
    boolean_answer,
    check_date,
    format_number,
    visit_number,
)
from .adverse_events import read_adverse_event
from .mapping import NOT_PERFORMED, tagged_synthetic
from .versions import (
    administration_date,
    administration_medication,
    subject_arm_names,
    subject_patient_reference,
)

Resource = dict[str, Any]
NOT_ASKED = "at a visit not asked for"
MALFORMED = (AttributeError, TypeError, KeyError, ValueError, IndexError)  # raised reading elements of the wrong JSON shape
NOT_READABLE = "elements of the wrong JSON shape (`fhir-msc validate` names them): not readable"
NO_ID = "no id (or one that is not a JSON string): nothing can refer to it"
REPEATED_ID = "same id as a resource read before it: the first is used"
NOT_READ = {"ResearchStudy": "not a table row: the study definition describes the study",
            "Group": "not a table row: DM lists the enrolled subjects"}


@dataclass(frozen=True, kw_only=True)
class UnmapResult:
    """Rows written per table file, the account of every resource read (by type), and input holding no resource."""

    rows: dict[str, int]
    accounts: dict[str, Account]
    synthetic: bool = False
    not_used: list[str] = field(default_factory=list)  # e.g. bundle entries without a resource

    @property
    def read(self) -> int:
        return sum(a.read for a in self.accounts.values())

    @property
    def skipped(self) -> int:
        return sum(sum(a.skipped.values()) for a in self.accounts.values())


def ref_id(reference: str) -> str:
    """The logical id in ``Type/id``, ``http://…/Type/id`` or ``urn:uuid:id``."""
    return reference.rsplit("/", 1)[-1].rsplit(":", 1)[-1]


def _identifier(resource: Resource, system: str) -> str | None:
    for identifier in resource.get("identifier", []):
        if identifier.get("system") == system:
            return identifier.get("value")
    return None


def _study_code(concept: dict, codesystem: str) -> str | None:
    for coding in concept.get("coding", []):
        if coding.get("system") == codesystem:
            return coding.get("code")
    return None


@dataclass
class _Context:
    """What earlier resource types tell later ones: who each Patient is, what visit each Encounter is."""

    study: Study
    patients: dict[str, tuple[str, str, str, str]] = field(default_factory=dict)  # id -> subject, sex, birth year, country
    enrolled: set[str] = field(default_factory=set)  # Patient ids a study ResearchSubject refers to
    visits: dict[str, int | float] = field(default_factory=dict)  # Encounter id -> visitnum (of the visits asked for)
    unscheduled: dict[str, str] = field(default_factory=dict)  # Encounter id -> VISIT of an unscheduled visit
    other_visits: np.ndarray | None = None  # sorted hashes of study-visit Encounter ids not asked for
    tallies: dict[str, Tally] = field(default_factory=dict)
    synthetic: bool = False

    def note(self, resource: Resource) -> None:
        if not self.synthetic:
            self.synthetic = tagged_synthetic(resource)

    def tally(self, resource_type: str) -> Tally:
        return self.tallies.setdefault(resource_type, Tally())

    def subject_of(self, resource: Resource, key: str = "subject") -> str | None:
        entry = self.patients.get(ref_id(resource.get(key, {}).get("reference", "")))
        return entry[0] if entry else None

    def not_asked(self, encounter: str) -> bool:
        """Whether ``encounter`` is a study visit left out by the caller's choice of visits."""
        if self.other_visits is None or not len(self.other_visits):
            return False
        key = hash(encounter)
        index = int(np.searchsorted(self.other_visits, key))
        return index < len(self.other_visits) and int(self.other_visits[index]) == key


def _named(resource: Resource) -> str:
    return f"{resource.get('resourceType')}/{resource.get('id')}"


def fhir_to_tables(study: Study, source: ResourceSource, out: Path, fmt: str = "csv") -> UnmapResult:
    """Write the study's tables for the resources in ``source`` into directory ``out`` (as csv, xpt or json)."""
    ctx = _Context(study)
    _index_patients(ctx, source)
    _index_encounters(ctx, source)
    with TableWriter(study, out, fmt) as writer:
        for record in _subjects(ctx, source):
            writer.subject(record)
        for dose in _doses(ctx, source):
            writer.dose(dose)
        for finding in _findings(ctx, source):
            writer.finding(finding)
        for event in _adverse_events(ctx, source):
            write_adverse_event(writer, event)
        writer.dataset(Dataset(synthetic=ctx.synthetic))
    _account_patients(ctx)
    _account_other_types(ctx, source)
    return UnmapResult(rows=dict(writer.rows), accounts={t: tally.account() for t, tally in ctx.tallies.items()},
                       synthetic=ctx.synthetic)


def _account_patients(ctx: _Context) -> None:
    """A study Patient is used when a ResearchSubject of the study refers to it (its DM row)."""
    tally = ctx.tally("Patient")
    for patient_id in ctx.patients:
        if patient_id in ctx.enrolled:
            tally.used += 1
        else:
            tally.skip("no ResearchSubject of this study refers to it", f"Patient/{patient_id}")


def _account_other_types(ctx: _Context, source: ResourceSource) -> None:
    """Resource types no table is made from are read and counted too, so every type is in the account."""
    for resource_type in getattr(source, "resource_types", lambda: [])():
        if resource_type in ctx.tallies:
            continue
        tally = ctx.tally(resource_type)
        reason = NOT_READ.get(resource_type, "no table of this study is made from this resource type")
        for resource in source.read(resource_type):
            tally.read += 1
            ctx.note(resource)
            tally.skip(reason, _named(resource))


def _index_patients(ctx: _Context, source: ResourceSource) -> None:
    gender_to_sex = {gender: sex for sex, gender in ctx.study.terms.sex.items()}
    system = ctx.study.system("subject")
    tally = ctx.tally("Patient")
    for patient in source.read("Patient"):
        tally.read += 1
        ctx.note(patient)
        if not isinstance(patient.get("id"), str):
            tally.skip(NO_ID, _named(patient))
            continue
        if patient["id"] in ctx.patients:
            tally.skip(REPEATED_ID, _named(patient))
            continue
        try:
            subject = _identifier(patient, system)
            if subject is None:  # a patient of another study or system: not ours to unmap
                tally.skip("no study subject identifier (a patient of another study or system)", _named(patient))
                continue
            country = (patient.get("address") or [{}])[0].get("country", "")
            ctx.patients[patient["id"]] = (subject, gender_to_sex.get(patient.get("gender", ""), ""),
                                           patient.get("birthDate", "")[:4], country)
        except MALFORMED:
            tally.skip(NOT_READABLE, _named(patient))


def _index_encounters(ctx: _Context, source: ResourceSource, visits: Collection[str] | None = None) -> None:
    """Map each study-visit Encounter's id to its visit number (only ``visits``, by code, if given).

    Encounters of the other study visits are kept as 8-byte hashes only, to tell their
    Observations ("not asked for") from those of an unknown visit.
    """
    codesystem = ctx.study.study.codesystem
    by_code = ctx.study.visit_by_code
    wanted = None if visits is None else set(visits)
    others = array("q")
    tally = ctx.tally("Encounter")
    unscheduled = ctx.study.unscheduled.code if ctx.study.unscheduled else None
    for encounter in source.read("Encounter"):
        tally.read += 1
        try:
            codes = [_study_code(t, codesystem) for t in encounter.get("type", [])]
            visit = next((by_code[c] for c in codes if c in by_code), None)
            if visit is None and unscheduled is not None and unscheduled in codes:
                if _unscheduled_visit(ctx, encounter, unscheduled, wanted, tally):
                    others.append(hash(encounter["id"]))
                continue
        except MALFORMED:
            tally.skip(NOT_READABLE, _named(encounter))
            continue
        if not isinstance(encounter.get("id"), str):
            tally.skip(NO_ID, _named(encounter))
        elif visit is None:
            tally.skip("not a study visit (no visit code of this study)", _named(encounter))
        elif wanted is None or visit.code in wanted:
            ctx.visits[encounter["id"]] = visit.visitnum
            tally.used += 1
        else:
            others.append(hash(encounter["id"]))
            tally.skip(NOT_ASKED)
    if wanted is not None:
        ctx.other_visits = np.frombuffer(others, dtype=np.int64)  # a view: sorted in place, no copy
        ctx.other_visits.sort()


def _unscheduled_visit(ctx: _Context, encounter: Resource, code: str, wanted: set[str] | None, tally: Tally) -> bool:
    """Index an unscheduled-visit Encounter: VISITNUM from its identifier (…/UNSCHEDULED-3.1), VISIT from its
    type's text. True when it is a study visit the caller did not ask for (only scheduled visits are asked for)."""
    value = _identifier(encounter, ctx.study.system("visit")) or ""
    number = visit_number(value.rpartition(f"/{code}-")[2]) if f"/{code}-" in value else ""
    name = next((t.get("text") for t in encounter["type"] if _study_code(t, ctx.study.study.codesystem) == code), None)
    if not isinstance(encounter.get("id"), str):
        tally.skip(NO_ID, _named(encounter))
    elif not isinstance(number, float) or number in ctx.study.visit_by_num or not isinstance(name, str) or not name:
        tally.skip("unscheduled visit without its VISITNUM (identifier …/" + code + "-3.1) or VISIT (type text)",
                   _named(encounter))
    elif wanted is not None:
        tally.skip(NOT_ASKED)
        return True
    else:
        ctx.visits[encounter["id"]] = number
        ctx.unscheduled[encounter["id"]] = name
        tally.used += 1
    return False


def _subjects(ctx: _Context, source: ResourceSource) -> Iterator[SubjectRecord]:
    arm_name_by_code = {arm.code: arm.name for arm in ctx.study.arms}
    tally = ctx.tally("ResearchSubject")
    yield from _records(ctx, tally, source.read("ResearchSubject"), _subject, tally, arm_name_by_code)


def _subject(ctx: _Context, rs: Resource, tally: Tally, arm_name_by_code: dict[str, str]) -> SubjectRecord | None:
    patient_id = ref_id(subject_patient_reference(rs))
    patient = ctx.patients.get(patient_id)
    if patient is None:
        tally.skip("its Patient is missing or has no study subject identifier", _named(rs))
        return None
    subject, sex, birth_year, country = patient
    assigned, actual = subject_arm_names(rs, arm_name_by_code)
    arms = ctx.study.arm_by_name
    if assigned not in arms or actual not in arms:
        tally.skip("arm is not an arm of this study", f"{_named(rs)} ({assigned!r}/{actual!r})")
        return None
    period = rs.get("period", {})
    start = period.get("start", "")
    age = int(start[:4]) - int(birth_year) if start[:4].isdigit() and birth_year.isdigit() else 0
    if not _strings(start, period.get("end", "")):
        tally.skip(NOT_READABLE, _named(rs))
        return None
    record = SubjectRecord(subject=subject, age=age, sex=sex, country=country, arm_code=arms[assigned].code,
                           actual_arm_code=arms[actual].code, start=start, end=period.get("end", ""))
    ctx.enrolled.add(patient_id)
    return record


def _strings(*values: Any) -> bool:
    """Whether every value is a JSON string (what the table cells are made of)."""
    return all(isinstance(value, str) for value in values)


def _records(ctx: _Context, tally: Tally, resources: Iterable[Resource], read: Any, *args: Any) -> Iterator[Any]:
    """``read(ctx, resource, *args)`` for each resource: each counted as read, each record made as used.

    ``read`` returns None for a resource it skips (having counted why); one whose elements have
    the wrong JSON shape is skipped here as not readable.
    """
    for resource in resources:
        tally.read += 1
        ctx.note(resource)
        try:
            record = read(ctx, resource, *args)
        except MALFORMED:
            tally.skip(NOT_READABLE, _named(resource))
            continue
        if record is not None:
            tally.used += 1
            yield record


def _doses(ctx: _Context, source: ResourceSource) -> Iterator[DoseRecord]:
    unit_to_term = {ucum: term for term, ucum in ctx.study.terms.dose_unit.items()}
    route_to_term = {coding.code: term for term, coding in ctx.study.terms.route.items()}
    codesystem = ctx.study.study.codesystem
    tally = ctx.tally("MedicationAdministration")
    yield from _records(ctx, tally, source.read("MedicationAdministration"), _dose, tally, unit_to_term, route_to_term,
                        codesystem)


def _dose(ctx: _Context, administration: Resource, tally: Tally, unit_to_term: dict[str, str],
          route_to_term: dict[str, str], codesystem: str) -> DoseRecord | None:
    subject = ctx.subject_of(administration)
    treatment = _study_code(administration_medication(administration), codesystem)
    if subject is None:
        tally.skip("unknown subject", _named(administration))
        return None
    if treatment not in ctx.study.intervention_by_treatment:
        tally.skip("unknown treatment", _named(administration))
        return None
    dosage = administration.get("dosage", {})
    route_code = next((c.get("code") for c in dosage.get("route", {}).get("coding", [])), "")
    dose = dosage.get("dose", {})
    if not _is_number(dose.get("value", 0)):
        tally.skip(NOT_A_NUMBER, _named(administration))
        return None
    return DoseRecord(subject=subject, treatment=treatment, dose=float(dose.get("value", 0)),
                      dose_unit=unit_to_term.get(dose.get("code", ""), dose.get("unit", "")),
                      route=route_to_term.get(route_code, route_code), date=administration_date(administration))


NOT_A_NUMBER = "value is not a JSON number (a FHIR decimal): `fhir-msc validate` names it; write it without quotes"


def _is_number(value: object) -> bool:
    """A JSON number (what FHIR JSON requires for a decimal), not a string or boolean."""
    return type(value) in (int, float)


def _findings(ctx: _Context, source: ResourceSource, visits_only: bool = False) -> Iterator[FindingRecord]:
    """The study findings among the Observations; ``visits_only`` skips those of other visits unparsed."""
    codesystem = ctx.study.study.codesystem
    tally = ctx.tally("Observation")
    skip = tally.skip
    rejected = [0]
    prefilter = encounter_prefilter(ctx.visits.keys(), rejected) if visits_only else None
    yield from _records(ctx, tally, source.read("Observation", prefilter), _finding, skip, codesystem)
    if rejected[0]:
        tally.read += rejected[0]
        skip(NOT_ASKED, count=rejected[0])


DERIVED = "a derived endpoint's value (fhir-msc derive): recomputed from its sources, not read"


def _finding(ctx: _Context, observation: Resource, skip: Any, codesystem: str) -> FindingRecord | None:
    code = _study_code(observation.get("code", {}), codesystem) or ""
    outcome = ctx.study.outcome_by_code.get(code)
    if outcome is None:
        derived = code in ctx.study.analysed_outcome_by_code  # written by `fhir-msc derive`
        skip(DERIVED if derived else "no outcome code of this study", _named(observation))
        return None
    subject = ctx.subject_of(observation)
    if subject is None:
        skip("unknown subject", _named(observation))
        return None
    encounter = ref_id(observation.get("encounter", {}).get("reference", ""))
    visitnum = ctx.visits.get(encounter)
    if visitnum is None:
        if ctx.not_asked(encounter):
            skip(NOT_ASKED)
        else:
            skip("unknown visit", _named(observation))
        return None
    not_done = _not_performed(observation)
    if not_done:
        result = unit = ""
    elif outcome.type not in ("quantity", "coded", "ordinal"):
        result, unit = _plain_value(outcome.type, observation), ""
        if result is None:
            skip(f"value not interpretable as {outcome.type} (value{VALUE_ELEMENT[outcome.type]} expected)",
                 _named(observation))
            return None
    elif outcome.type in ("coded", "ordinal"):
        concept = observation.get("valueCodeableConcept", {})
        codes = {(c.get("system"), c.get("code")) for c in concept.get("coding", [])}
        result = next((key for key, a in outcome.answers.items() if (a.system, a.code) in codes), None)
        if result is None:
            skip("unknown answer code", f"{_named(observation)} ({outcome.code}: "
                                        f"{', '.join(f'{s}|{c}' for s, c in sorted(codes, key=str)) or 'no coding'})")
            return None
        unit = ""
    else:
        quantity = observation.get("valueQuantity", {})
        unit_code = quantity.get("code") or quantity.get("unit")
        factor = outcome.factor_from(unit_code)
        comparator = quantity.get("comparator", "")
        if "value" in quantity and not _is_number(quantity["value"]):
            skip(NOT_A_NUMBER, _named(observation))
            return None
        if factor is None or "value" not in quantity or (comparator and comparator not in COMPARATORS):
            skip("value not interpretable (no value, unit not convertible or comparator unknown)",
                 f"{_named(observation)} ({outcome.code}: {comparator}{quantity.get('value', '')} {unit_code})")
            return None
        result = comparator + format_number(quantity["value"] * factor)
        unit = outcome.unit
    test, date = observation["code"].get("text", outcome.display), observation.get("effectiveDateTime", "")
    absent = observation.get("dataAbsentReason", {})  # --REASND
    reason = absent.get("text", "") if not_done else ""
    if not _strings(test, date, reason):
        skip(NOT_READABLE, _named(observation))
        return None
    return FindingRecord(subject=subject, domain=outcome.domain, testcd=outcome.code, test=test, result=result,
                         unit=unit, visitnum=visitnum, date=date, not_done=not_done, reason=reason,
                         visit=ctx.unscheduled.get(encounter, ""))


VALUE_ELEMENT = {"integer": "Integer", "boolean": "Boolean", "datetime": "DateTime", "text": "String"}


def _plain_value(kind: str, observation: Resource) -> str | None:
    """The table result of an integer, boolean, datetime or text outcome's value[x]; None if it has not that type."""
    value = observation.get("value" + VALUE_ELEMENT[kind])
    if kind == "integer":
        return str(value) if type(value) is int else None
    if kind == "boolean":
        return boolean_answer(value) if type(value) is bool else None
    if not isinstance(value, str) or not value:
        return None
    if kind == "datetime":
        try:
            check_date("valueDateTime", value)
        except ValueError:
            return None
    return value


def _not_performed(observation: Resource) -> bool:
    """An Observation without a value whose dataAbsentReason is not-performed: an SDTM row NOT DONE."""
    if _has_value(observation):
        return False
    codings = observation.get("dataAbsentReason", {}).get("coding", [])
    return any(c.get("system") == NOT_PERFORMED["system"] and c.get("code") == NOT_PERFORMED["code"] for c in codings)


def _has_value(observation: Resource) -> bool:
    return any(key.startswith("value") and key[5:6].isupper() for key in observation)


def _adverse_events(ctx: _Context, source: ResourceSource) -> Iterator[AdverseEventRecord]:
    """The AE rows among the AdverseEvents (none read when the study file has no adverse_events section)."""
    if ctx.study.adverse_events is None:
        return
    tally = ctx.tally("AdverseEvent")
    yield from _records(ctx, tally, source.read("AdverseEvent"), _adverse_event, tally,
                        ctx.study.system("adverse-event"))


def _adverse_event(ctx: _Context, resource: Resource, tally: Tally, system: str) -> AdverseEventRecord | None:
    identifier = resource.get("identifier", [])  # R4: one Identifier (0..1); R5: a list
    identified = {"identifier": [identifier] if isinstance(identifier, dict) else identifier}
    subject_value, _, seq = (_identifier(identified, system) or "").rpartition("/")
    if not seq.isdigit():
        tally.skip("no adverse-event identifier of this study (USUBJID/AESEQ)", _named(resource))
        return None
    subject = ctx.subject_of(resource)
    if subject is None or subject != subject_value:
        tally.skip("unknown subject", _named(resource))
        return None
    record = read_adverse_event(ctx.study, resource, subject, int(seq))
    if isinstance(record, str):
        tally.skip(record, _named(resource))
        return None
    return record


def read_adverse_event_records(study: Study, source: ResourceSource
                               ) -> tuple[dict[str, SubjectRecord], list[AdverseEventRecord], Tally]:
    """The study's subjects, its adverse events, and the AdverseEvents' tally."""
    ctx = _Context(study)
    _index_patients(ctx, source)
    subjects = {record.subject: record for record in _subjects(ctx, source)}
    return subjects, list(_adverse_events(ctx, source)), ctx.tally("AdverseEvent")


def subjects_in(study: Study, source: ResourceSource) -> dict[str, SubjectRecord]:
    """The study subjects already present in ``source`` (for replaying findings alone)."""
    ctx = _Context(study)
    _index_patients(ctx, source)
    return {record.subject: record for record in _subjects(ctx, source)}


def read_records(study: Study, source: ResourceSource, visits: Collection[str] | None = None
                 ) -> tuple[dict[str, SubjectRecord], Iterator[FindingRecord], Tally]:
    """The study's subjects, a stream of its findings (only at ``visits``, by code, if given), and
    the Observations' tally, complete once the stream is exhausted."""
    ctx = _Context(study)
    _index_patients(ctx, source)
    _index_encounters(ctx, source, visits)
    subjects = {record.subject: record for record in _subjects(ctx, source)}
    return subjects, _findings(ctx, source, visits_only=visits is not None), ctx.tally("Observation")


_ENCOUNTER_KEY = b'"encounter":{"reference":"'


def encounter_prefilter(encounters: Collection[str], rejected: list[int] | None = None) -> Prefilter:
    """A line prefilter passing Observations whose encounter is one of ``encounters`` (logical ids).

    It rejects a line only when its one ``"encounter":{"reference":"Encounter/…"}`` is a plain
    (unescaped) reference to another Encounter; anything else is left to the parser. The lines
    it rejects are counted in ``rejected[0]``.
    """
    rejected = rejected if rejected is not None else [0]
    wanted = {b"Encounter/" + id_.encode() for id_ in encounters}
    key, skip = _ENCOUNTER_KEY, len(_ENCOUNTER_KEY)

    def passes(line: bytes) -> bool:
        start = line.find(key) + skip
        if start < skip:
            return True
        end = line.find(b'"', start)
        reference = line[start:end]
        if reference in wanted:
            return True
        if reference.startswith(b"Encounter/") and b"\\" not in reference and line.find(key, end) < 0:
            rejected[0] += 1
            return False
        return True
    return passes
