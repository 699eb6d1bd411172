"""FHIR resources → trial tables: the inverse of mapping.py.

Reads R4 or R5 resources from any source that can list resources by type (the
embedded store, a bundle, a server pull) and writes the study's tables. References
are followed by logical id, so it works on server-assigned ids as well as ours.
Resources it cannot place (an Observation with no study code, say) are counted and
described in the result, never silently dropped.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..store.ndjson import Prefilter
from ..store.source import ResourceSource
from ..study.definition import Study
from ..tables.sdtm import (
    Dataset,
    DoseRecord,
    FindingRecord,
    SubjectRecord,
    TableWriter,
    format_number,
)
from .mapping import SYNTHETIC_TAG
from .versions import (
    administration_date,
    administration_medication,
    subject_arm_names,
    subject_patient_reference,
)

Resource = dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class UnmapResult:
    """Rows written per table file, resources that could not be placed, and input holding no resource."""

    rows: dict[str, int]
    skipped: list[str] = field(default_factory=list)
    synthetic: bool = False
    not_used: list[str] = field(default_factory=list)  # e.g. bundle entries without a resource


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
    visits: dict[str, int] = field(default_factory=dict)  # Encounter id -> visitnum
    skipped: list[str] = field(default_factory=list)
    synthetic: bool = False

    def note(self, resource: Resource) -> None:
        if not self.synthetic:
            tags = resource.get("meta", {}).get("tag", [])
            self.synthetic = any(t.get("system") == SYNTHETIC_TAG["system"] and t.get("code") == SYNTHETIC_TAG["code"] for t in tags)

    def skip(self, resource: Resource, why: str) -> None:
        self.skipped.append(f"{resource.get('resourceType')}/{resource.get('id')}: {why}")

    def subject_of(self, resource: Resource, key: str = "subject") -> str | None:
        entry = self.patients.get(ref_id(resource.get(key, {}).get("reference", "")))
        return entry[0] if entry else None


def fhir_to_tables(study: Study, source: ResourceSource, out: Path) -> UnmapResult:
    """Write the study's tables for the resources in ``source`` into directory ``out``."""
    ctx = _Context(study)
    _index_patients(ctx, source)
    _index_encounters(ctx, source)
    with TableWriter(study, out) as writer:
        for record in _subjects(ctx, source):
            writer.subject(record)
        for dose in _doses(ctx, source):
            writer.dose(dose)
        for finding in _findings(ctx, source):
            writer.finding(finding)
        writer.dataset(Dataset(synthetic=ctx.synthetic))
    return UnmapResult(rows=dict(writer.rows), skipped=ctx.skipped, synthetic=ctx.synthetic)


def _index_patients(ctx: _Context, source: ResourceSource) -> None:
    gender_to_sex = {gender: sex for sex, gender in ctx.study.terms.sex.items()}
    system = ctx.study.system("subject")
    for patient in source.read("Patient"):
        ctx.note(patient)
        subject = _identifier(patient, system)
        if subject is None:
            continue  # a patient of another study or system: not ours to unmap
        country = (patient.get("address") or [{}])[0].get("country", "")
        ctx.patients[patient["id"]] = (subject, gender_to_sex.get(patient.get("gender", ""), ""),
                                       patient.get("birthDate", "")[:4], country)


def _index_encounters(ctx: _Context, source: ResourceSource, visits: Collection[str] | None = None) -> None:
    """Map each study-visit Encounter's id to its visit number (only ``visits``, by code, if given)."""
    codesystem = ctx.study.study.codesystem
    wanted = ctx.study.visit_by_code if visits is None else {c: ctx.study.visit_by_code[c] for c in visits}
    for encounter in source.read("Encounter"):
        codes = [_study_code(t, codesystem) for t in encounter.get("type", [])]
        visit = next((wanted[c] for c in codes if c in wanted), None)
        if visit is not None:
            ctx.visits[encounter["id"]] = visit.visitnum


def _subjects(ctx: _Context, source: ResourceSource) -> Iterator[SubjectRecord]:
    arm_name_by_code = {arm.code: arm.name for arm in ctx.study.arms}
    for rs in source.read("ResearchSubject"):
        ctx.note(rs)
        patient = ctx.patients.get(ref_id(subject_patient_reference(rs)))
        if patient is None:
            ctx.skip(rs, "its Patient is missing or has no study subject identifier")
            continue
        subject, sex, birth_year, country = patient
        assigned, actual = subject_arm_names(rs, arm_name_by_code)
        arms = ctx.study.arm_by_name
        if assigned not in arms or actual not in arms:
            ctx.skip(rs, f"arm {assigned!r}/{actual!r} is not an arm of this study")
            continue
        period = rs.get("period", {})
        start = period.get("start", "")
        age = int(start[:4]) - int(birth_year) if start[:4].isdigit() and birth_year.isdigit() else 0
        yield SubjectRecord(subject=subject, age=age, sex=sex, country=country, arm_code=arms[assigned].code,
                            actual_arm_code=arms[actual].code, start=start, end=period.get("end", ""))


def _doses(ctx: _Context, source: ResourceSource) -> Iterator[DoseRecord]:
    unit_to_term = {ucum: term for term, ucum in ctx.study.terms.dose_unit.items()}
    route_to_term = {coding.code: term for term, coding in ctx.study.terms.route.items()}
    codesystem = ctx.study.study.codesystem
    for administration in source.read("MedicationAdministration"):
        ctx.note(administration)
        subject = ctx.subject_of(administration)
        treatment = _study_code(administration_medication(administration), codesystem)
        if subject is None or treatment not in ctx.study.intervention_by_treatment:
            ctx.skip(administration, "unknown subject or treatment")
            continue
        dosage = administration.get("dosage", {})
        route_code = next((c.get("code") for c in dosage.get("route", {}).get("coding", [])), "")
        dose = dosage.get("dose", {})
        if not _is_number(dose.get("value", 0)):
            ctx.skip(administration, f"dosage.dose.value {dose['value']!r} is not a JSON number (FHIR decimal): "
                                     "`fhir-msc validate` names it; write it without quotes")
            continue
        yield DoseRecord(subject=subject, treatment=treatment, dose=float(dose.get("value", 0)),
                         dose_unit=unit_to_term.get(dose.get("code", ""), dose.get("unit", "")),
                         route=route_to_term.get(route_code, route_code), date=administration_date(administration))


def _is_number(value: object) -> bool:
    """A JSON number (what FHIR JSON requires for a decimal), not a string or boolean."""
    return type(value) in (int, float)


def _findings(ctx: _Context, source: ResourceSource, prefilter: Prefilter | None = None) -> Iterator[FindingRecord]:
    codesystem = ctx.study.study.codesystem
    for observation in source.read("Observation", prefilter):
        ctx.note(observation)
        outcome = ctx.study.outcome_by_code.get(_study_code(observation.get("code", {}), codesystem) or "")
        subject = ctx.subject_of(observation)
        visitnum = ctx.visits.get(ref_id(observation.get("encounter", {}).get("reference", "")))
        if outcome is None or subject is None or visitnum is None:
            ctx.skip(observation, "no study outcome code, study subject or study visit")
            continue
        if outcome.type == "coded":
            concept = observation.get("valueCodeableConcept", {})
            codes = {(c.get("system"), c.get("code")) for c in concept.get("coding", [])}
            result = next((key for key, a in outcome.answers.items() if (a.system, a.code) in codes), None)
            unit = ""
        else:
            quantity = observation.get("valueQuantity", {})
            unit_code = quantity.get("code") or quantity.get("unit")
            factor = outcome.factor_from(unit_code)
            value = quantity.get("value")
            if value is not None and not _is_number(value):
                ctx.skip(observation, f"valueQuantity.value {value!r} is not a JSON number (FHIR decimal): "
                                      "`fhir-msc validate` names it; write it without quotes")
                continue
            result = None if factor is None or value is None else format_number(value * factor)
            unit = outcome.unit
        if result is None:
            ctx.skip(observation, f"value not interpretable for {outcome.code}")
            continue
        yield FindingRecord(subject=subject, domain=outcome.domain, testcd=outcome.code,
                            test=observation["code"].get("text", outcome.display), result=result, unit=unit,
                            visitnum=visitnum, date=observation.get("effectiveDateTime", ""))


def subjects_in(study: Study, source: ResourceSource) -> dict[str, SubjectRecord]:
    """The study subjects already present in ``source`` (for replaying findings alone)."""
    ctx = _Context(study)
    _index_patients(ctx, source)
    return {record.subject: record for record in _subjects(ctx, source)}


def read_records(study: Study, source: ResourceSource,
                 visits: Collection[str] | None = None) -> tuple[dict[str, SubjectRecord], Iterator[FindingRecord]]:
    """The study's subjects, and a stream of its findings (only at ``visits``, by code, if given)."""
    ctx = _Context(study)
    _index_patients(ctx, source)
    _index_encounters(ctx, source, visits)
    subjects = {record.subject: record for record in _subjects(ctx, source)}
    prefilter = None if visits is None else encounter_prefilter(ctx.visits.keys())
    return subjects, _findings(ctx, source, prefilter)


_ENCOUNTER_KEY = b'"encounter":{"reference":"'


def encounter_prefilter(encounters: Collection[str]) -> Prefilter:
    """A line prefilter passing Observations whose encounter is one of ``encounters`` (logical ids).

    It rejects a line only when its one ``"encounter":{"reference":"Encounter/…"}`` is a plain
    (unescaped) reference to another Encounter; anything else is left to the parser.
    """
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
        return not (reference.startswith(b"Encounter/") and b"\\" not in reference and line.find(key, end) < 0)
    return passes
