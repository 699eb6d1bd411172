"""Validation of FHIR resources against the fhir.resources models of their version.

R5 uses fhir.resources' default (R5) models; R4 uses its R4B models, which are the same
for every resource type fhir-msc writes (ResearchStudy, ResearchSubject, Observation,
Patient, Group, Encounter, MedicationAdministration).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from .versions import FhirVersion

MAX_REPORTED = 50


@dataclass(frozen=True, kw_only=True)
class ValidationReport:
    """How many resources of each type were checked, and the first problems found."""

    version: str
    checked: dict[str, int]
    error_count: int
    errors: list[str]

    @property
    def ok(self) -> bool:
        return self.error_count == 0


def validate_resource(resource: dict[str, Any], version: FhirVersion) -> list[str]:
    """Problems with one resource, as ``Type/id: path: message`` lines (empty if valid)."""
    label = f"{resource.get('resourceType')}/{resource.get('id')}"
    try:
        model = version.models().get_fhir_model_class(resource.get("resourceType", ""))
    except (KeyError, ValueError, AttributeError):
        return [f"{label}: unknown resourceType for FHIR {version.name}"]
    try:
        model.model_validate(resource)
    except ValidationError as exc:
        return [f"{label}: {'.'.join(str(p) for p in err['loc']) or '(resource)'}: {err['msg']}" for err in exc.errors()]
    return []


def validate_resources(resources: Iterable[dict[str, Any]], version: FhirVersion,
                       progress: Callable[[int], None] | None = None) -> ValidationReport:
    checked: Counter[str] = Counter()
    errors: list[str] = []
    error_count = 0
    for resource in resources:
        checked[resource.get("resourceType", "?")] += 1
        problems = validate_resource(resource, version)
        error_count += len(problems)
        errors.extend(problems[: max(0, MAX_REPORTED - len(errors))])
        if progress:
            progress(1)
    return ValidationReport(version=version.name, checked=dict(checked), error_count=error_count, errors=errors)
