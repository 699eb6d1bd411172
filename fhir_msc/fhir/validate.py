"""Validation of FHIR resources against the fhir.resources models of their version.

R5 uses fhir.resources' default (R5) models; R4 uses its R4B models, which are the same
for every resource type fhir-msc writes (ResearchStudy, ResearchSubject, Observation,
Patient, Group, Encounter, MedicationAdministration).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from types import UnionType
from typing import Any, List, Union, get_args, get_origin

from pydantic import TypeAdapter, ValidationError

from .versions import FhirVersion

MAX_REPORTED = 50


@dataclass(frozen=True)
class Problem:
    """One problem with one resource: which resource, where in it, and what is wrong."""

    resource: str  # Type/id
    path: str  # the element, dotted (code.coding.0.system); "(resource)" for the resource as a whole
    message: str

    def __str__(self) -> str:
        return f"{self.resource}: {self.path}: {self.message}"


@dataclass(frozen=True, kw_only=True)
class ValidationReport:
    """How many resources of each type were checked, and the first MAX_REPORTED problems found."""

    version: str
    checked: dict[str, int]
    error_count: int
    errors: list[Problem]

    @property
    def ok(self) -> bool:
        return self.error_count == 0


def validate_resource(resource: dict[str, Any], version: FhirVersion) -> list[Problem]:
    """Problems with one resource (empty if valid); each prints as ``Type/id: path: message``."""
    return _model_check(resource, version)[0]


def _model_check(resource: dict[str, Any], version: FhirVersion) -> tuple[list[Problem], Any]:
    """(problems, the validated model instance or None): the fhir.resources model's verdict."""
    label = f"{resource.get('resourceType')}/{resource.get('id')}"
    try:
        model = version.models().get_fhir_model_class(resource.get("resourceType", ""))
    except (KeyError, ValueError, AttributeError):
        return [Problem(label, "resourceType", f"not a FHIR {version.name} resource type")], None
    try:
        return [], model.model_validate(resource)
    except ValidationError as exc:
        return [Problem(label, ".".join(str(p) for p in err["loc"]) or "(resource)", err["msg"])
                for err in exc.errors()], None


class ShapeValidator:
    """The model's verdict, computed once per resource *shape* instead of once per resource.

    A shape is a resource's keys, nesting, list lengths and value types, without the
    values. The first resource of each shape is validated by its fhir.resources model
    (structure, cardinality, choice types, unknown elements, primitive formats); the
    others only have each primitive value checked against the same field type of the
    same model (a pydantic TypeAdapter), and values already seen valid are not rechecked.
    A resource failing that check is validated by the model again, so the errors reported
    are the model's own.
    """

    MAX_REMEMBERED = 200_000  # valid (field type, value) pairs kept between resources

    def __init__(self, version: FhirVersion):
        self.version = version
        self._plans: dict[tuple, list[TypeAdapter | None]] = {}
        self._valid: set[tuple[int, type, Any]] = set()

    def problems(self, resource: dict[str, Any]) -> list[Problem]:
        leaves: list[Any] = []
        shape = _shape(resource, leaves)
        plan = self._plans.get(shape)
        if plan is None:
            problems, instance = _model_check(resource, self.version)
            if instance is not None:
                self._plans[shape] = plan = []
                _plan(resource, instance, plan)
            return problems
        valid = self._valid
        for adapter, value in zip(plan, leaves):
            if adapter is None:
                continue
            key = (id(adapter), type(value), value)
            if key in valid:
                continue
            try:
                adapter.validate_python(value)
            except ValidationError:
                return validate_resource(resource, self.version)
            if len(valid) >= self.MAX_REMEMBERED:
                valid.clear()
            valid.add(key)
        return []


def _shape(value: Any, leaves: list[Any]) -> Any:
    """The shape of a JSON value; primitive values are appended to ``leaves`` in walk order."""
    kind = type(value)
    if kind is dict:
        parts: list[Any] = ["{"]
        for key, item in value.items():
            parts.append(key)
            parts.append(item if key == "resourceType" else _shape(item, leaves))
        return tuple(parts)
    if kind is list:
        return ("[", *[_shape(item, leaves) for item in value])
    leaves.append(value)
    return kind


def _plan(data: dict[str, Any], instance: Any, plan: list[TypeAdapter | None]) -> None:
    """Append the field type of each primitive in ``data`` (in _shape's walk order) to ``plan``."""
    model = type(instance)
    fields = _fields_by_json_key(model)
    for key, value in data.items():
        if key == "resourceType":
            continue
        name = fields[key]
        _plan_value(model.model_fields[name].annotation, value, getattr(instance, name), plan)


def _plan_value(annotation: Any, value: Any, attribute: Any, plan: list[TypeAdapter | None]) -> None:
    if isinstance(value, dict):
        _plan(value, attribute, plan)
    elif isinstance(value, list):
        for item, item_attribute in zip(value, attribute):
            _plan_value(annotation, item, item_attribute, plan)
    else:
        plan.append(None if value is None else _primitive_adapter(annotation))


@lru_cache(maxsize=None)
def _fields_by_json_key(model: type) -> dict[str, str]:
    return {field.alias or name: name for name, field in model.model_fields.items()}


_ADAPTERS: dict[int, TypeAdapter] = {}


def _primitive_adapter(annotation: Any) -> TypeAdapter:
    """A validator for one value of a primitive field (``Optional[List[X]]`` → X), one per field type."""
    adapter = _ADAPTERS.get(id(annotation))
    if adapter is None:
        inner = annotation
        while get_origin(inner) in (Union, UnionType, list, List):
            inner = next(arg for arg in get_args(inner) if arg is not type(None))
        adapter = _ADAPTERS[id(annotation)] = TypeAdapter(inner)
    return adapter


def validate_resources(resources: Iterable[dict[str, Any]], version: FhirVersion,
                       progress: Callable[[int], None] | None = None) -> ValidationReport:
    """Validate every resource (the model's verdict, computed per shape: see ShapeValidator)."""
    validator = ShapeValidator(version)
    checked: Counter[str] = Counter()
    errors: list[Problem] = []
    error_count = 0
    for resource in resources:
        checked[resource.get("resourceType", "?")] += 1
        problems = validator.problems(resource)
        error_count += len(problems)
        errors.extend(problems[: max(0, MAX_REPORTED - len(errors))])
        if progress:
            progress(1)
    return ValidationReport(version=version.name, checked=dict(checked), error_count=error_count, errors=errors)
