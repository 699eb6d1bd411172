"""Trial tables → FHIR resources.

Every resource gets a deterministic id (a UUID5 of its business identifier), so mapping
the same tables twice gives identical resources, and a business identifier a server
can match on for conditional updates.

Resource model (R4 names; see versions.py for R5):
  ResearchStudy      the study, its arms, the enrollment Group
  Group              every enrolled Patient
  Patient            pseudonymous: subject id, gender, birth year (year of RFSTDTC − AGE), country
  ResearchSubject    subject ↔ study, assigned/actual arm, status, period (RFSTDTC–RFENDTC)
  MedicationAdministration  one per infusion (EX row): product, dose, route, date
  Encounter          one per subject × visit, spanning that visit's finding dates; an unscheduled visit
                     (fractional VISITNUM) has the study's unscheduled code as its type, VISIT as the type's
                     text, and its VISITNUM at the end of its identifier (SUBJECT/UNSCHEDULED-3.1)
  Observation        one per finding row, linked to Patient, Encounter and ResearchStudy; a row not done
                     (--STAT NOT DONE) has no value but dataAbsentReason not-performed, --REASND as its text.
                     value[x] by outcome type (the same in R4 and R5): valueQuantity, valueCodeableConcept
                     (coded; ordinal with its rank in the Coding's ordinalValue (R4) / itemWeight (R5)
                     extension), valueInteger, valueBoolean (Y/N), valueDateTime, valueString
  AdverseEvent       one per AE row (adverse_events.py)
"""

from __future__ import annotations

import hashlib
import uuid
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property, lru_cache, partial
from pathlib import Path
from typing import Any

import numpy as np

from ..study.definition import Outcome, Study
from ..tables.ae import read_adverse_events
from ..tables.ae import reject_key as ae_reject_key
from ..tables.formats import find_table
from ..tables.reading import SPANNED, key_hashes, read_rows
from ..tables.rejects import FileAccount, Rejection, RejectLog
from ..tables.sdtm import (
    Dataset,
    DoseRecord,
    FindingColumns,
    FindingRecord,
    RowError,
    SubjectRecord,
    UnknownSubject,
    boolean_value,
    parse_dose,
    parse_finding,
    parse_subject,
    read_dataset,
    split_comparator,
    visit_number,
)
from .adverse_events import adverse_event
from .changes import ResourceChanges
from .versions import FhirVersion

UCUM = "http://unitsofmeasure.org"
CATEGORY_SYSTEM = "http://terminology.hl7.org/CodeSystem/observation-category"
PHASE_SYSTEM = "http://terminology.hl7.org/CodeSystem/research-study-phase"
STUDY_EXTENSION = "http://hl7.org/fhir/StructureDefinition/workflow-researchStudy"
NOT_PERFORMED = {"system": "http://terminology.hl7.org/CodeSystem/data-absent-reason", "code": "not-performed",
                 "display": "Not Performed"}
SYNTHETIC_TAG = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "HTEST",
                 "display": "test health data"}

Resource = dict[str, Any]


def tagged_synthetic(resource: Resource) -> bool:
    """Whether the resource's meta.tag holds SYNTHETIC_TAG (HTEST, test health data)."""
    meta = resource.get("meta")
    tags = meta.get("tag") if isinstance(meta, dict) else None
    return isinstance(tags, list) and any(
        isinstance(t, dict) and t.get("system") == SYNTHETIC_TAG["system"] and t.get("code") == SYNTHETIC_TAG["code"]
        for t in tags)
OPTIONAL_SUFFIXES = ("test", "status", "reason")  # findings columns a table may leave out
PROGRESS_EVERY = 1000  # findings between progress callbacks


_NAMESPACE = uuid.NAMESPACE_URL.bytes


@lru_cache(maxsize=65536)  # references repeat (the subject's Patient, the visit's Encounter, the study)
def resource_id(resource_type: str, system: str, value: str) -> str:
    """The deterministic logical id (a UUID, unique across types) of the resource with this identifier.

    It is ``uuid.uuid5(NAMESPACE_URL, "Type|system|value")``, computed without building a UUID object.
    """
    digest = bytearray(hashlib.sha1(_NAMESPACE + f"{resource_type}|{system}|{value}".encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    text = digest.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


@dataclass(frozen=True)
class FhirBuilder:
    """Builds the resources of one study in one FHIR version."""

    study: Study
    version: FhirVersion
    synthetic: bool = False

    # --- references and identifiers ---------------------------------------------------
    # Constant parts (systems, the study extension, each outcome's codes) are built once
    # and shared by every resource that carries them: treat yielded resources as read-only.

    @cached_property
    def _systems(self) -> dict[str, str]:
        return {kind: self.study.system(kind) for kind in
                ("study", "group", "subject", "administration", "visit", "observation", "adverse-event")}

    def _identified(self, resource_type: str, kind: str, value: str) -> Resource:
        system = self._systems[kind]
        resource: Resource = {"resourceType": resource_type, "id": resource_id(resource_type, system, value)}
        if self.synthetic:
            resource["meta"] = {"tag": [SYNTHETIC_TAG]}
        resource["identifier"] = [{"system": system, "value": value}]
        return resource

    def ref(self, resource_type: str, kind: str, value: str) -> str:
        return f"{resource_type}/{resource_id(resource_type, self._systems[kind], value)}"

    @property
    def study_ref(self) -> str:
        return self.ref("ResearchStudy", "study", self.study.study.identifier.value)

    @cached_property
    def _study_extension(self) -> list[dict[str, Any]]:
        return [{"url": STUDY_EXTENSION, "valueReference": {"reference": self.study_ref}}]

    def _study_code(self, code: str, display: str) -> dict[str, str]:
        return {"system": self.study.study.codesystem, "code": code, "display": display}

    @cached_property
    def _outcome_parts(self) -> dict[str, tuple[list, list, dict[str, dict]]]:
        """Per outcome code: Observation.category, Observation.code.coding, valueCodeableConcept per answer."""
        return {o.code: ([{"coding": [{"system": CATEGORY_SYSTEM, "code": o.category}]}],
                         [*(c.as_fhir() for c in o.standard), self._study_code(o.code, o.display)],
                         {key: {"coding": [self._answer(o, key)], "text": key} for key in o.answers})
                for o in self.study.outcomes}

    def _answer(self, outcome: Outcome, key: str) -> dict[str, Any]:
        """An answer's Coding; an ordinal one carries its rank (1 = lowest) in the version's ordinal extension."""
        coding = outcome.answers[key].as_fhir()
        if outcome.type == "ordinal":
            return {"extension": [self.version.ordinal_weight(outcome.rank(key))], **coding}
        return coding

    # --- resources --------------------------------------------------------------------

    def research_study(self) -> Resource:
        info = self.study.study
        resource = self._identified("ResearchStudy", "study", info.identifier.value)
        resource["identifier"].append(info.identifier.model_dump())
        resource["title"] = " ".join(info.title.split())
        resource.update(self.version.study_status(info.status))
        if info.phase:
            resource["phase"] = {"coding": [{"system": PHASE_SYSTEM, "code": info.phase}]}
        if info.condition:  # FHIR JSON has no empty arrays
            resource["condition"] = [{"coding": [c.as_fhir()]} for c in info.condition]
        if info.citations:
            resource["relatedArtifact"] = [{"type": "citation", "citation": text} for text in info.citations]
        resource["description"] = " ".join(info.description.split())
        resource.update(self.version.study_enrollment(self.ref("Group", "group", info.identifier.value)))
        resource["period"] = info.period.model_dump(exclude_none=True)
        resource.update(self.version.study_arms([arm.model_dump() for arm in self.study.arms]))
        return resource

    def enrollment_group(self, subjects: list[str]) -> Resource:
        """The Group of every enrolled Patient, members in subject-id order (however the subjects were loaded)."""
        subjects = sorted(subjects)
        value = self.study.study.identifier.value
        resource = self._identified("Group", "group", value)
        resource.update({"type": "person", **self.version.group_elements(),
                         "name": f"Participants of {value}", "quantity": len(subjects),
                         "member": [{"entity": {"reference": self.ref("Patient", "subject", s)}} for s in subjects]})
        return resource

    def patient(self, record: SubjectRecord) -> Resource:
        resource = self._identified("Patient", "subject", record.subject)
        resource["gender"] = self.study.terms.sex[record.sex]
        resource["birthDate"] = f"{int(record.start[:4]) - record.age:04d}"
        if record.country:
            resource["address"] = [{"country": record.country}]
        return resource

    def research_subject(self, record: SubjectRecord) -> Resource:
        resource = self._identified("ResearchSubject", "subject", record.subject)
        period = {"start": record.start, **({"end": record.end} if record.end else {})}
        assigned, actual = self.study.arm_by_code[record.arm_code], self.study.arm_by_code[record.actual_arm_code]
        resource.update(self.version.subject_elements(
            state=self.study.study.subject_status, patient_reference=self.ref("Patient", "subject", record.subject),
            assigned=(assigned.code, assigned.name), actual=(actual.code, actual.name), period=period))
        resource["study"] = {"reference": self.study_ref}
        return resource

    def administration(self, record: DoseRecord) -> Resource:
        key, intervention = self.study.intervention_by_treatment[record.treatment]
        resource = self._identified("MedicationAdministration", "administration", f"{record.subject}/{record.date}")
        resource["extension"] = self._study_extension
        resource["status"] = "completed"
        medication = {"coding": [self._study_code(record.treatment, intervention.display)]}
        resource.update(self.version.administration_elements(medication, record.date))
        resource["subject"] = {"reference": self.ref("Patient", "subject", record.subject)}
        unit = self.study.terms.dose_unit[record.dose_unit]
        resource["dosage"] = {"route": {"coding": [self.study.terms.route[record.route].as_fhir()]},
                              "dose": {"value": record.dose, "unit": unit, "system": UCUM, "code": unit}}
        return resource

    def encounter(self, subject: str, visitnum: int | float, first: str, last: str, name: str = "") -> Resource:
        """The Encounter of a visit; ``name`` is VISIT of an unscheduled one (its type says unscheduled)."""
        visit = self.study.visit_by_num.get(visitnum)
        resource = self._identified("Encounter", "visit", f"{subject}/{self.study.visit_key(visitnum)}")
        resource["extension"] = self._study_extension
        resource.update(self.version.encounter_elements({"start": first, "end": last}))
        if visit is not None:
            resource["type"] = [{"coding": [self._study_code(visit.code, visit.name)]}]
        else:
            unscheduled = self.study.unscheduled
            resource["type"] = [{"coding": [self._study_code(unscheduled.code, unscheduled.display)], "text": name}]
        resource["subject"] = {"reference": self.ref("Patient", "subject", subject)}
        return resource

    def observation(self, record: FindingRecord) -> Resource:
        category, coding, answers = self._outcome_parts[record.testcd]
        subject, visit = record.subject, self.study.visit_key(record.visitnum)
        resource = self._identified("Observation", "observation", f"{subject}/{visit}/{record.testcd}")
        resource["extension"] = self._study_extension
        resource["status"] = "final"
        resource["category"] = category
        resource["code"] = {"coding": coding, "text": record.test}
        resource["subject"] = {"reference": self.ref("Patient", "subject", subject)}
        resource["encounter"] = {"reference": self.ref("Encounter", "visit", f"{subject}/{visit}")}
        resource["effectiveDateTime"] = record.date
        if record.not_done:  # SDTM --STAT NOT DONE: no value, the reason it is absent instead (obs-6)
            resource["dataAbsentReason"] = {"coding": [NOT_PERFORMED], **({"text": record.reason} if record.reason else {})}
        elif answers:
            resource["valueCodeableConcept"] = answers[record.result]
        else:
            kind = self._types[record.testcd]
            if kind == "quantity":
                unit = record.unit
                comparator, number = split_comparator(record.result)
                if comparator:  # a censored result (<0.5): FHIR keeps the comparator beside the limit
                    resource["valueQuantity"] = {"value": float(number), "comparator": comparator, "unit": unit,
                                                 "system": UCUM, "code": unit}
                else:
                    resource["valueQuantity"] = {"value": float(number), "unit": unit, "system": UCUM, "code": unit}
            elif kind == "integer":
                resource["valueInteger"] = int(record.result)
            elif kind == "boolean":
                resource["valueBoolean"] = boolean_value(record.result)
            elif kind == "datetime":
                resource["valueDateTime"] = record.result
            else:  # text
                resource["valueString"] = record.result
        return resource

    @cached_property
    def _types(self) -> dict[str, str]:
        return {o.code: o.type for o in self.study.outcomes}


# --- the mapping job ---------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class MapResult:
    """What a mapping run read, produced and rejected.

    ``accounts`` has one entry per input file: rows read = rows mapped + rows rejected.
    ``changes`` (store targets only) says, per resource type, how many resources were
    created, updated or left unchanged in the store.
    """

    counts: dict[str, int]
    changes: dict[str, ResourceChanges]
    accounts: list[FileAccount]
    rejections: list[Rejection]
    rejects_files: list[Path]
    notes: list[str]
    synthetic: bool
    recovered: tuple[str, ...] = ()  # what was left by killed jobs and completed or removed first

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def rows_rejected(self) -> int:
        return sum(a.rejected for a in self.accounts)

    @property
    def unusable_files(self) -> list[str]:
        return [a.file for a in self.accounts if a.unusable is not None]


def reject_keys(study: Study) -> dict[str, list[str]]:
    """Per table file name, the columns that identify a row (see tables.rejects)."""
    dm, ex, findings = study.tables.dm.columns, study.tables.ex.columns, study.tables.findings
    keys = {study.tables.dm.file: [dm["subject"]], study.tables.ex.file: [ex["subject"], ex["date"]]}
    for domain, name in findings.files.items():
        col = FindingColumns.of(study, domain)
        keys[name] = [col.subject, col.visitnum, col.testcd]
    if study.adverse_events:
        keys[study.adverse_events.file] = ae_reject_key(study)
    return keys


def tables_to_fhir(study: Study, source: Path, version: FhirVersion, log: RejectLog,
               known_subjects: dict[str, SubjectRecord] | None = None,
               progress: Callable[[int], None] | None = None) -> Iterator[Resource]:
    """Yield the FHIR resources for the tables in ``source``; bad rows go to ``log``.

    ``known_subjects`` are subjects already mapped (e.g. read from the target store), so
    a rejects file holding only findings can be replayed on its own; a DM row of a known
    subject updates it.
    """
    dataset: Dataset = read_dataset(source)
    build = FhirBuilder(study, version, dataset.synthetic)
    subjects = dict(known_subjects or {})
    keys = reject_keys(study)
    rejected: dict[str, str] = {}  # subjects whose DM row was rejected, and where: their other rows name it
    parse = partial(_parse, dm_rejected=rejected)
    new_subjects = list(_read_subjects(study, find_table(source, study.tables.dm.file), log, subjects, keys, rejected))
    tick = progress or (lambda n: None)
    if new_subjects:
        yield build.research_study()
        yield build.enrollment_group(list(subjects))
        for record in new_subjects:
            yield build.patient(record)
            yield build.research_subject(record)
        tick(len(new_subjects))
    for record in _read_doses(study, find_table(source, study.tables.ex.file), log, subjects, keys, parse):
        yield build.administration(record)
        tick(1)
    spans = VisitSpans(study)
    observation = build.observation
    count = 0
    for record in _read_findings(study, source, log, subjects, keys, parse):
        count += 1
        spans.add(record.subject, record.visitnum, record.date, record.visit)
        yield observation(record)
        if not count % PROGRESS_EVERY:
            tick(PROGRESS_EVERY)
    tick(count % PROGRESS_EVERY)
    for subject, visitnum, first, last, name in spans:
        yield build.encounter(subject, visitnum, first, last, name)
    if study.adverse_events:
        path = find_table(source, study.adverse_events.file)
        for event in read_adverse_events(study, path, log, subjects, parse):
            yield adverse_event(build, event, treatment_of(study, subjects[event.subject]))
            tick(1)


def treatment_of(study: Study, subject: SubjectRecord) -> str:
    """The study treatment (EXTRT) of the subject's actual arm: the suspect of its adverse events."""
    return study.interventions[study.arm_by_code[subject.actual_arm_code].intervention].treatment


class VisitSpans:
    """The first and last finding date of every subject's visits (each becomes an Encounter period).

    Compact, as a cohort has many subject-visits: per subject one array of date numbers,
    two per study visit; each distinct date string is kept once. Unscheduled visits (few) are
    kept apart, with their VISIT; the first row's VISIT names the visit.
    """

    def __init__(self, study: Study):
        self._slot = {visit.visitnum: 2 * index for index, visit in enumerate(study.visits)}
        self._dates: list[str] = []
        self._date_number: dict[str, int] = {}
        self._spans: dict[str, array] = {}
        self._unscheduled: dict[tuple[str, int | float], list[str]] = {}  # (subject, VISITNUM) -> first, last, VISIT

    def add(self, subject: str, visitnum: int | float, date: str, name: str = "") -> None:
        if visitnum not in self._slot:
            span = self._unscheduled.setdefault((subject, visitnum), [date, date, name])
            span[0], span[1] = min(span[0], date), max(span[1], date)
            return
        number = self._date_number.get(date)
        if number is None:
            number = self._date_number[date] = len(self._dates)
            self._dates.append(date)
        spans = self._spans.get(subject)
        if spans is None:
            spans = self._spans[subject] = array("i", [-1]) * (2 * len(self._slot))
        slot = self._slot[visitnum]
        if spans[slot] < 0:
            spans[slot] = spans[slot + 1] = number
        elif date < self._dates[spans[slot]]:
            spans[slot] = number
        elif date > self._dates[spans[slot + 1]]:
            spans[slot + 1] = number

    def __iter__(self) -> Iterator[tuple[str, int | float, str, str, str]]:
        """(subject, visit number, first date, last date, VISIT if unscheduled else ""), subjects in order of
        appearance, visits in study order; then the unscheduled visits in order of appearance."""
        for subject, spans in self._spans.items():
            for visitnum, slot in self._slot.items():
                if spans[slot] >= 0:
                    yield subject, visitnum, self._dates[spans[slot]], self._dates[spans[slot + 1]], ""
        for (subject, visitnum), (first, last, name) in self._unscheduled.items():
            yield subject, visitnum, first, last, name


def _read_subjects(study: Study, path: Path, log: RejectLog, subjects: dict[str, SubjectRecord],
                   keys: dict[str, list[str]], rejected: dict[str, str]) -> Iterator[SubjectRecord]:
    """The valid DM rows; each rejected one is noted in ``rejected`` (subject → where), so only that subject's
    other rows follow it into the rejects."""
    if not path.exists() and subjects:
        return  # replaying findings against subjects already in the store
    columns = list(study.tables.dm.columns.values())
    required = [c for key, c in study.tables.dm.columns.items() if key not in ("end", "country")]
    seen: set[str] = set()  # subjects of this input: a subject already in the store is updated, not a duplicate
    name = study.tables.dm.file
    subject_column = study.tables.dm.columns["subject"]
    for number, row, header, raw in read_rows(path, required, log, used=columns, key_columns=keys[name], table=name):
        record = _parse(log, path, number, header, raw, row, lambda: parse_subject(study, {c: row.get(c, "") for c in columns}))
        if record is None:
            if row.get(subject_column) and row[subject_column] not in subjects:
                column = log.rejections[-1].column
                rejected.setdefault(row[subject_column], f"{path.name}, row {number}" + (f", column {column}" if column else ""))
            continue
        if record.subject in seen:
            log.reject(Rejection(file=str(path), row=number, column=study.tables.dm.columns["subject"], value=record.subject,
                                 problem="duplicate subject: this USUBJID is on an earlier row of this file; "
                                         "remove or renumber this row"),
                       header, raw)
            continue
        seen.add(record.subject)
        subjects[record.subject] = record
        log.mapped(str(path))
        yield record


def _read_doses(study: Study, path: Path, log: RejectLog, subjects: dict[str, SubjectRecord],
                keys: dict[str, list[str]], parse: Callable[..., Any]) -> Iterator[DoseRecord]:
    if not path.exists() and subjects:
        return
    required = list(study.tables.ex.columns.values())
    seen: set[tuple[str, str]] = set()
    name = study.tables.ex.file
    for number, row, header, raw in read_rows(path, required, log, key_columns=keys[name], table=name):
        record = parse(log, path, number, header, raw, row, lambda: parse_dose(study, subjects, row))
        if record is None:
            continue
        if (record.subject, record.date) in seen:
            log.reject(Rejection(file=str(path), row=number, column=study.tables.ex.columns["date"], value=record.date,
                                 problem="duplicate infusion: this subject already has one on this date"), header, raw)
            continue
        seen.add((record.subject, record.date))
        log.mapped(str(path))
        yield record


def _read_findings(study: Study, source: Path, log: RejectLog, subjects: dict[str, SubjectRecord],
                   keys: dict[str, list[str]], parse: Callable[..., Any]) -> Iterator[FindingRecord]:
    for domain, name in study.tables.findings.files.items():
        path = find_table(source, name)
        if not path.exists():
            continue  # a domain with no data this time is normal (e.g. a replayed rejects folder)
        col = FindingColumns.of(study, domain)
        suffixes = study.tables.findings.suffixes
        required = [*study.tables.findings.columns.values(), *(domain + s for k, s in suffixes.items() if k not in OPTIONAL_SUFFIXES)]
        repeated = _repeated_finding_keys(path, required, keys[name])
        seen: set[tuple[str, int, str]] = set()  # only keys that occur more than once in the file
        optional = [c for c in (col.test, col.status, col.reason) if c]
        for number, row, header, raw in read_rows(path, required, log, used=[*required, *optional], key_columns=keys[name],
                                                  table=name):
            record = parse(log, path, number, header, raw, row, lambda: parse_finding(study, col, subjects, row))
            if record is None:
                continue
            key = (record.subject, record.visitnum, record.testcd)
            if hash(key) in repeated:
                if key in seen:
                    log.reject(Rejection(file=str(path), row=number, column=col.testcd, value=record.testcd,
                                         problem="duplicate finding: this subject already has this test at this visit"), header, raw)
                    continue
                seen.add(key)
            log.mapped(str(path))
            yield record


def _repeated_finding_keys(path: Path, required: list[str], key_columns: list[str]) -> set[int]:
    """Hashes of the (subject, visit number, test code) keys on more than one row of a findings file.

    A quick first pass over the file (8 bytes per row, then numpy), so that the duplicate
    check keeps in memory only the keys that repeat, not one per finding of the cohort.
    """
    hashes = array("q", key_hashes(path, required, key_columns, lambda k: (k[0], visit_number(k[1]), k[2])))
    keys = np.frombuffer(hashes, dtype=np.int64)  # a view of the array: sorted in place, no copy
    keys.sort()
    return set(np.unique(keys[1:][keys[1:] == keys[:-1]]).tolist())


def _parse(log: RejectLog, path: Path, number: int, header: list[str], raw: list[str], row: dict[str, str],
           parse: Callable[[], Any], dm_rejected: dict[str, str] | None = None) -> Any:
    """``parse()``, or None with the row rejected; a row of a subject whose DM row was rejected says which row."""
    try:
        return parse()
    except RowError as err:
        problem = err.problem
        if isinstance(err, UnknownSubject) and dm_rejected and err.value in dm_rejected:
            problem = (f"the subject's DM row was rejected ({dm_rejected[err.value]}): fix that row; "
                       "it is in the rejects with this one, replay them together")
        problem += row.get(SPANNED, "")
        log.reject(Rejection(file=str(path), row=number, column=err.column, value=err.value, problem=problem), header, raw)
        return None
