"""Validation of FHIR resources: the fhir.resources models of their version, plus FHIR's JSON rules.

R5 uses fhir.resources' default (R5) models; R4 uses its R4B models, which are the same
for every resource type fhir-msc writes (ResearchStudy, ResearchSubject, Observation,
Patient, Group, Encounter, MedicationAdministration).

The models check structure, cardinality, choice types, unknown elements and primitive
formats, but parse values leniently (pydantic's lax mode turns ``"6.3"`` into a decimal) and
know no invariants. On top of the model, each resource is checked for what FHIR's JSON
format and core invariants require:

- each primitive has the JSON type of its FHIR type: a number for decimal and the integer
  types, ``true``/``false`` for boolean, a string for every other type (integer64 included);
- no empty object, array or string, and no ``null`` except as a placeholder in an array of
  primitives whose ``_element`` array holds the extension at that position (ele-1, JSON rules);
- a string (of any type: string, code, id, uri, dateTime, …) holds no character below U+0020 but
  tab, CR and LF (FHIR's string rule);
- an ``id`` (the id datatype) has at most 64 characters;
- a ``code`` element with a required binding has a code of its value set (the codes come from
  fhir.resources' ``enum_values`` of the field, completed by ``MISSING_CODES``; elements without
  such a list (Quantity.comparator) or whose list ends in ``+`` and is not completed (none of
  them written by fhir-msc) are not checked);
- Observation: obs-6 (dataAbsentReason only without value[x]) and obs-7 (no value[x] when a
  component has the Observation's own code).

Other FHIRPath invariants of the specification are not evaluated.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from types import UnionType
from typing import Any, List, Union, get_args, get_origin

from fhir_core import types as fhir_types
from pydantic import TypeAdapter, ValidationError

from ..study.fhir_codes import CONTROL_CHARACTER, string_problem
from .versions import FhirVersion

MAX_REPORTED = 50
CODES_SHOWN = 6  # codes of a value set listed in a message
# Codes of a required value set that fhir.resources' enum_values lack (its list ends in "+", or the
# specification's short text it is made from leaves them out), per FHIR version and model field.
# tests/fhir/test_validate.py checks every required binding against the specification's packages.
MISSING_CODES: dict[tuple[str, str, str], tuple[str, ...]] = {
    ("R4", "Observation", "status"): ("corrected", "cancelled", "entered-in-error", "unknown"),
    ("R4", "Encounter", "status"): ("entered-in-error", "unknown"),
    ("R4", "EncounterStatusHistory", "status"): ("entered-in-error", "unknown"),
    ("R5", "Observation", "status"): ("corrected", "cancelled", "entered-in-error", "unknown"),
    ("R5", "BundleEntrySearch", "mode"): ("outcome",),
    ("R5", "ElementDefinitionSlicingDiscriminator", "type"): ("pattern",),
}
ID_MAX_LENGTH = 64  # the id datatype: [A-Za-z0-9\-\.]{1,64}, in R4 and R5

Path = tuple[str | int, ...]


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
    """How many resources of each type were checked, the first MAX_REPORTED problems found, and input not checked."""

    version: str
    checked: dict[str, int]
    error_count: int
    errors: list[Problem]
    not_used: list[str] = field(default_factory=list)  # e.g. bundle entries without a resource

    @property
    def ok(self) -> bool:
        return self.error_count == 0


def validate_resource(resource: dict[str, Any], version: FhirVersion) -> list[Problem]:
    """Problems with one resource (empty if valid); each prints as ``Type/id: path: message``."""
    return _check(resource, version)[0]


def _check(resource: dict[str, Any], version: FhirVersion) -> tuple[list[Problem], list[_Leaf | None] | None]:
    """(problems, the checks of its primitives in walk order if it is valid and they suffice for its shape).

    The problems are the fhir.resources model's, then those of FHIR's JSON rules and invariants
    (see the module docstring) at paths the model did not already report.
    """
    label = f"{resource.get('resourceType')}/{resource.get('id')}"
    try:
        model = version.models().get_fhir_model_class(str(resource.get("resourceType", "")))
    except (KeyError, ValueError, AttributeError):
        return [Problem(label, "resourceType", f"not a FHIR {version.name} resource type")], None
    found: list[tuple[Path, str]] = []
    try:
        instance = model.model_validate(resource)
    except ValidationError as exc:
        instance = None
        found = [(err["loc"], err["msg"]) for err in exc.errors()]
    except TypeError as exc:  # fhir.resources meeting e.g. a contained resourceType that is no string
        instance = None
        found = [((), f"not readable as a FHIR {model.__name__} ({exc}): check each resourceType")]
    reported = {loc for loc, _ in found}
    walk = _Walk(version.name)
    walk.object(resource, instance, ())
    found += [(path, message) for path, message in walk.problems if path not in reported]
    problems = [Problem(label, ".".join(str(p) for p in loc) or "(resource)", message) for loc, message in found]
    return problems, (walk.plan if not problems and walk.typed and not walk.per_resource else None)


class ShapeValidator:
    """The verdict of :func:`validate_resource`, computed once per resource *shape* instead of once per resource.

    A shape is a resource's keys, nesting, list lengths and JSON value types, without the
    values. The first resource of each shape is checked in full (its fhir.resources model,
    then FHIR's JSON rules and invariants); as the shape fixes each primitive's JSON type and
    which elements are present, the others of that shape only have each primitive value
    checked against the same field type of the same model (a pydantic TypeAdapter), not
    empty, and an id not over 64 characters; values already seen valid are not rechecked.
    A resource failing that check is checked in full again, so the errors reported are the
    same. Shapes whose invariants depend on values (obs-7) are checked in full every time.
    """

    MAX_REMEMBERED = 200_000  # valid (leaf check, value) pairs kept between resources

    def __init__(self, version: FhirVersion):
        self.version = version
        self._plans: dict[tuple, list[_Leaf | None]] = {}
        self._valid: set[tuple[int, type, Any]] = set()

    def problems(self, resource: dict[str, Any]) -> list[Problem]:
        leaves: list[Any] = []
        shape = _shape(resource, leaves)
        plan = self._plans.get(shape)
        if plan is None:
            problems, plan = _check(resource, self.version)
            if plan is not None:
                self._plans[shape] = plan
            return problems
        valid = self._valid
        for leaf, value in zip(plan, leaves):
            if leaf is None:
                continue
            key = (id(leaf), type(value), value)
            if key in valid:
                continue
            if not leaf.accepts(value):
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
            if key == "resourceType":
                parts.append(item if type(item) is str else repr(item))
            else:
                parts.append(_shape(item, leaves))
        return tuple(parts)
    if kind is list:
        return ("[", *[_shape(item, leaves) for item in value])
    leaves.append(value)
    return kind


# --- FHIR's JSON rules, per primitive field type -------------------------------------------------

_NUMBER, _INTEGER, _BOOLEAN, _STRING = (int, float), (int,), (bool,), (str,)
_JSON_NAMES = {str: "string", int: "number", float: "number", bool: "boolean"}
_HOW = {_NUMBER: "a JSON number, without quotes", _INTEGER: "a JSON number without a fraction, without quotes",
        _BOOLEAN: "true or false, without quotes", _STRING: "a JSON string, in quotes"}


class _Leaf:
    """How one primitive value of a field type is checked: its JSON type, then the model's field type."""

    __slots__ = ("fhir_type", "json_types", "max_length", "adapter", "codes", "codes_text")

    def __init__(self, inner: Any, codes: tuple[str, ...] | None = None):
        metadata = next(iter(getattr(inner, "__metadata__", ())), None)
        if inner is bool:
            self.fhir_type, self.json_types = "boolean", _BOOLEAN
        elif metadata is None:
            self.fhir_type, self.json_types = "string", _STRING
        else:
            name = type(metadata).__name__
            self.fhir_type = name[0].lower() + name[1:]
            self.json_types = (_NUMBER if isinstance(metadata, fhir_types.Decimal)
                               else _INTEGER if isinstance(metadata, fhir_types.Integer)  # also unsignedInt, positiveInt
                               else _STRING)  # integer64 too: a JSON string
        self.max_length = ID_MAX_LENGTH if isinstance(metadata, fhir_types.Id) else None
        self.adapter = TypeAdapter(inner)
        self.codes = frozenset(codes) if codes else None
        self.codes_text = (", ".join(codes[:CODES_SHOWN]) + (", …" if len(codes) > CODES_SHOWN else "")) if codes else ""

    def binding_problem(self, value: Any) -> str | None:
        """What is wrong with a code of a required binding (None if nothing or no such binding)."""
        if self.codes is None or value in self.codes:
            return None
        return f"{value!r} is not in the required value set ({self.codes_text}): use one of its codes"

    def json_problem(self, value: Any) -> str | None:
        """What is wrong with the value's JSON type or length (None if nothing)."""
        if type(value) not in self.json_types:
            return (f"a FHIR {self.fhir_type} is written as {_HOW[self.json_types]}, not as the JSON "
                    f"{_JSON_NAMES.get(type(value), type(value).__name__)} {value!r}")
        if self.max_length is not None and len(value) > self.max_length:
            return f"an id has at most {self.max_length} characters, this one has {len(value)}: shorten it"
        return None

    def accepts(self, value: Any) -> bool:
        """Whether a value of a JSON type already found right is valid (not empty, not too long, no control
        character, the model's type)."""
        if value == "" or (self.max_length is not None and len(value) > self.max_length):
            return False
        if type(value) is str and CONTROL_CHARACTER.search(value):
            return False
        if self.codes is not None and value not in self.codes:
            return False
        try:
            self.adapter.validate_python(value)
        except ValidationError:
            return False
        return True


_LEAVES: dict[tuple[int, tuple[str, ...] | None], _Leaf] = {}


def _leaf(annotation: Any, codes: tuple[str, ...] | None = None) -> _Leaf:
    """The check of one value of a primitive field (``Optional[List[X]]`` → X), one per field type and value set."""
    leaf = _LEAVES.get((id(annotation), codes))
    if leaf is None:
        inner = annotation
        while get_origin(inner) in (Union, UnionType, list, List):
            inner = next(arg for arg in get_args(inner) if arg is not type(None))
        leaf = _LEAVES[(id(annotation), codes)] = _Leaf(inner, codes)
    return leaf


@lru_cache(maxsize=None)
def required_codes(model: type, name: str, version: str) -> tuple[str, ...] | None:
    """The codes of the required value set bound to a ``code`` field of a model (None: none known).

    ``version`` is "R4" (fhir.resources' R4B models) or "R5". The codes are fhir.resources'
    ``enum_values`` of the field and those ``MISSING_CODES`` adds; a list ending in ``+`` that
    ``MISSING_CODES`` does not complete is not used.
    """
    extra = model.model_fields[name].json_schema_extra
    codes = extra.get("enum_values") if isinstance(extra, dict) else None
    if not codes:
        return None
    missing = MISSING_CODES.get((version, model.__name__, name))
    if "+" in codes and missing is None:
        return None
    return tuple(c for c in codes if c != "+") + (missing or ())


@lru_cache(maxsize=None)
def _fields_by_json_key(model: type) -> dict[str, str]:
    return {field.alias or name: name for name, field in model.model_fields.items()}


EMPTY_OBJECT = "empty object: an element must have a value or children (ele-1); remove it"
EMPTY_ARRAY = "empty array: leave the element out instead"
EMPTY_STRING = "empty string: a FHIR string is never empty; leave the element out instead"
NULL = "null: leave the element out instead (null only stands for a missing value in an array of primitives whose _element array has an extension there)"


class _Walk:
    """One walk over a resource's JSON: FHIR's JSON rules and invariants, and the check of each primitive.

    The walk goes along the validated model instance, which gives each primitive its field
    type (JSON type, id length); without one (the model rejected the resource) only the rules
    that need no type are checked, and ``typed`` ends False.
    """

    def __init__(self, version: str) -> None:
        self.version = version  # "R4" or "R5": which value sets the codes are checked against
        self.typed = True  # every primitive had its field type
        self.problems: list[tuple[Path, str]] = []
        self.plan: list[_Leaf | None] = []  # per primitive, in _shape's walk order
        self.per_resource = False  # an invariant depends on values, not only on the shape

    def object(self, data: dict[str, Any], instance: Any, path: Path) -> None:
        if not data:
            self.problems.append((path, EMPTY_OBJECT))
        resource_type = data.get("resourceType")
        for invariant in INVARIANTS.get(resource_type, ()) if type(resource_type) is str else ():
            invariant(self, data, path)
        model = type(instance)
        fields = _fields_by_json_key(model) if instance is not None else {}
        for key, value in data.items():
            if key == "resourceType":
                continue
            name = fields.get(key)
            if name is not None:
                self.value(value, model.model_fields[name].annotation, getattr(instance, name), (*path, key),
                           required_codes(model, name, self.version))
            else:
                self.value(value, None, None, (*path, key))
            if type(value) is list:
                self._nulls(data, key, value, path)

    def value(self, value: Any, annotation: Any, attribute: Any, path: Path,
              codes: tuple[str, ...] | None = None) -> None:
        kind = type(value)
        if kind is dict:
            self.object(value, attribute, path)
        elif kind is list:
            if not value:
                self.problems.append((path, EMPTY_ARRAY))
            for index, item in enumerate(value):
                if item is None:
                    self.plan.append(None)  # placement checked by _nulls
                else:
                    self.value(item, annotation, None if attribute is None else attribute[index], (*path, index),
                               codes)
        elif value is None:
            self.plan.append(None)
            self.problems.append((path, NULL))
        else:
            leaf = None if annotation is None else _leaf(annotation, codes)
            self.typed = self.typed and leaf is not None
            self.plan.append(leaf)
            problem = (EMPTY_STRING if value == "" else
                       (leaf.json_problem(value) or leaf.binding_problem(value)) if leaf else None)
            if problem is None and kind is str and (control := string_problem(value)):
                problem = f"the string {control}; remove it"
            if problem:
                self.problems.append((path, problem))

    def _nulls(self, data: dict[str, Any], key: str, items: list[Any], path: Path) -> None:
        """A null in a primitive array must be matched by a value in the same place of its pair (``given``/``_given``)."""
        pair = data.get(key[1:] if key.startswith("_") else f"_{key}")
        for index, item in enumerate(items):
            if item is None and not (type(pair) is list and index < len(pair) and pair[index] is not None):
                self.problems.append(((*path, key, index), NULL))


# --- core invariants (FHIRPath in the specification, explicit here) -------------------------------

def _has_value_x(data: dict[str, Any]) -> bool:
    return any(k.lstrip("_").startswith("value") and k.lstrip("_")[5:6].isupper() for k in data)


def _obs_6(walk: _Walk, observation: dict[str, Any], path: Path) -> None:
    """obs-6: dataAbsentReason.empty() or value.empty()."""
    if "dataAbsentReason" in observation and _has_value_x(observation):
        walk.problems.append(((*path, "dataAbsentReason"), "obs-6: dataAbsentReason SHALL only be present if "
                              "value[x] is not present: keep the value or the reason it is absent, not both"))


def _obs_7(walk: _Walk, observation: dict[str, Any], path: Path) -> None:
    """obs-7: value.empty() or component.code.where(coding.intersect(%resource.code.coding).exists()).empty()."""
    components = observation.get("component")
    if type(components) is not list or not _has_value_x(observation):
        return
    walk.per_resource = True
    own = _codings(observation.get("code"))
    for index, component in enumerate(components):
        if any(coding in own for coding in _codings(component.get("code") if type(component) is dict else None)):
            walk.problems.append(((*path, "component", index, "code"), "obs-7: a component has the Observation's own "
                                  "code, so the Observation SHALL NOT have value[x]: put the value in that component"))


def _codings(concept: Any) -> list[Any]:
    codings = concept.get("coding") if type(concept) is dict else None
    return codings if type(codings) is list else []


INVARIANTS: dict[str, tuple[Callable[[_Walk, dict[str, Any], Path], None], ...]] = {"Observation": (_obs_6, _obs_7)}


def validate_resources(resources: Iterable[dict[str, Any]], version: FhirVersion,
                       progress: Callable[[int], None] | None = None) -> ValidationReport:
    """Validate every resource (the model and FHIR's JSON rules, computed per shape: see ShapeValidator)."""
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
