"""FHIR R4 and R5: the elements that differ between versions, in one place.

The mappers build everything version-neutral themselves and ask a :class:`FhirVersion`
for the few elements whose names or shapes changed in R5 (ResearchStudy.arm became
comparisonGroup, ResearchSubject.individual became subject, Encounter.period became
actualPeriod, MedicationAdministration.effective[x] became occurence[x], …).
Readers accept both versions, so a store of either can be unmapped.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal

VersionName = Literal["R4", "R5"]
VERSIONS: tuple[VersionName, ...] = ("R4", "R5")

ARM_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/research-study-arm-type"
SUBJECT_STATE_SYSTEM = "http://terminology.hl7.org/CodeSystem/research-subject-state"
ENCOUNTER_CLASS = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB",
                   "display": "ambulatory"}


@dataclass(frozen=True)
class FhirVersion:
    """Builds and reads the version-specific parts of resources."""

    name: VersionName

    @property
    def is_r5(self) -> bool:
        return self.name == "R5"

    def models(self) -> ModuleType:
        """The fhir.resources package that validates this version (R4 uses R4B)."""
        if self.is_r5:
            import fhir.resources as models
        else:
            import fhir.resources.R4B as models
        return models

    # --- ResearchStudy ------------------------------------------------------------

    def study_status(self, status: str) -> dict[str, Any]:
        if self.is_r5:
            return {"status": "active", "progressStatus": [{"state": {"text": status}, "actual": True}]}
        return {"status": status}

    def study_arms(self, arms: list[dict[str, str]]) -> dict[str, Any]:
        """``arms``: dicts with code, name, type, description."""
        if self.is_r5:
            return {"comparisonGroup": [
                {"linkId": arm["code"], "name": arm["name"], "type": _arm_type(arm["type"]),
                 "description": arm["description"]} for arm in arms]}
        return {"arm": [{"name": arm["name"], "type": _arm_type(arm["type"]),
                         "description": arm["description"]} for arm in arms]}

    def study_enrollment(self, group_reference: str) -> dict[str, Any]:
        if self.is_r5:
            return {"recruitment": {"actualGroup": {"reference": group_reference}}}
        return {"enrollment": [{"reference": group_reference}]}

    # --- ResearchSubject ----------------------------------------------------------

    def subject_elements(self, *, state: str, patient_reference: str, assigned: tuple[str, str],
                         actual: tuple[str, str], period: dict[str, str]) -> dict[str, Any]:
        """``assigned``/``actual``: (arm code, arm name)."""
        if self.is_r5:
            progress = {"subjectState": {"coding": [{"system": SUBJECT_STATE_SYSTEM, "code": state}]},
                        "startDate": period["start"]}
            if "end" in period:
                progress["endDate"] = period["end"]
            return {"status": "active", "progress": [progress], "period": period,
                    "subject": {"reference": patient_reference},
                    "assignedComparisonGroup": assigned[0], "actualComparisonGroup": actual[0]}
        return {"status": state, "period": period, "individual": {"reference": patient_reference},
                "assignedArm": assigned[1], "actualArm": actual[1]}

    # --- Encounter, MedicationAdministration, Group -------------------------------

    def encounter_elements(self, period: dict[str, str]) -> dict[str, Any]:
        if self.is_r5:
            return {"status": "completed", "class": [{"coding": [ENCOUNTER_CLASS]}], "actualPeriod": period}
        return {"status": "finished", "class": ENCOUNTER_CLASS, "period": period}

    def administration_elements(self, medication: dict[str, Any], date: str) -> dict[str, Any]:
        if self.is_r5:
            return {"medication": {"concept": medication}, "occurenceDateTime": date}
        return {"medicationCodeableConcept": medication, "effectiveDateTime": date}

    def group_elements(self) -> dict[str, Any]:
        return {"membership": "enumerated"} if self.is_r5 else {"actual": True}

    def ordinal_weight(self, rank: int) -> dict[str, Any]:
        """The extension giving a Coding its place on an ordinal scale: R4 core ordinalValue, R5 itemWeight
        (the same extension renamed; R5 moved it to the extensions pack)."""
        name = "itemWeight" if self.is_r5 else "ordinalValue"
        return {"url": f"http://hl7.org/fhir/StructureDefinition/{name}", "valueDecimal": rank}


def _arm_type(code: str) -> dict[str, Any]:
    return {"coding": [{"system": ARM_TYPE_SYSTEM, "code": code}]}


def get_version(name: str) -> FhirVersion:
    """The FhirVersion for 'R4' or 'R5' (case-insensitive; '4.0.1' and '5.0.0' work too)."""
    key = name.upper()
    if key.startswith("4"):
        key = "R4"
    elif key.startswith("5"):
        key = "R5"
    if key not in VERSIONS:
        raise ValueError(f"unsupported FHIR version {name!r}: use R4 or R5")
    return FhirVersion(key)  # type: ignore[arg-type]


# --- readers: accept either version -----------------------------------------------

def subject_patient_reference(research_subject: dict) -> str:
    ref = research_subject.get("individual") or research_subject.get("subject") or {}
    return ref.get("reference", "")


# Elements that exist in one version only: (resource type, element) → version.
VERSION_MARKERS: dict[tuple[str, str], str] = {
    ("ResearchSubject", "individual"): "R4", ("ResearchSubject", "subject"): "R5",
    ("ResearchStudy", "arm"): "R4", ("ResearchStudy", "comparisonGroup"): "R5",
    ("Encounter", "period"): "R4", ("Encounter", "actualPeriod"): "R5",
    ("MedicationAdministration", "effectiveDateTime"): "R4", ("MedicationAdministration", "occurenceDateTime"): "R5",
}
MARKED_TYPES = tuple(dict.fromkeys(resource_type for resource_type, _ in VERSION_MARKERS))


def detect_version(resources: Iterable[dict]) -> tuple[FhirVersion, str] | None:
    """The version the first resource with a version-only element is written in, and that element; None if none has one."""
    for resource in resources:
        for element in resource:
            version = VERSION_MARKERS.get((resource.get("resourceType", ""), element))
            if version:
                return get_version(version), f"{resource['resourceType']}.{element}"
    return None


def subject_version(research_subject: dict) -> FhirVersion:
    """R5 if the ResearchSubject uses R5's ``subject``, else R4 (also for an empty store)."""
    return get_version("R5" if "subject" in research_subject else "R4")


def subject_arm_names(research_subject: dict, arm_name_by_code: dict[str, str]) -> tuple[str, str]:
    """(assigned arm name, actual arm name) from an R4 or R5 ResearchSubject."""
    if "assignedComparisonGroup" in research_subject:
        return (arm_name_by_code.get(research_subject["assignedComparisonGroup"], research_subject["assignedComparisonGroup"]),
                arm_name_by_code.get(research_subject.get("actualComparisonGroup", ""), research_subject.get("actualComparisonGroup", "")))
    return research_subject.get("assignedArm", ""), research_subject.get("actualArm", "")


def administration_medication(administration: dict) -> dict:
    if "medication" in administration:
        return administration["medication"].get("concept", {})
    return administration.get("medicationCodeableConcept", {})


def administration_date(administration: dict) -> str:
    return administration.get("occurenceDateTime") or administration.get("effectiveDateTime", "")
