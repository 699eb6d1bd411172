"""The shapes of FHIR elements, from fhir.resources' models of R5 and R4 (its R4B models).

A typed read of NDJSON needs to know, for each element a view reads, whether it repeats,
whether its data type has elements of its own and, for a primitive, whether JSON writes it as a string. An element whose shape the two versions do not
agree on, or that neither model knows, has no shape here: it is read as JSON.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from decimal import Decimal
from functools import cache

from fhir.resources import get_fhir_model_class as r5_model
from fhir.resources.R4B import get_fhir_model_class as r4_model
from fhir_core.types import FhirBase

MODELS = (r5_model, r4_model)
OPEN_TYPES = {"Resource", "DomainResource"}  # a contained resource: any type, so no fixed shape
NOT_TEXT = (bool, int, float, Decimal)  # primitives JSON writes as booleans and numbers


@dataclass(frozen=True)
class Shape:
    repeats: bool
    data_type: str | None  # the complex data type's name; None for a primitive
    text: bool = False  # a primitive written as a JSON string (string, code, dateTime, …)


@cache
def shape(resource_type: str, path: tuple[str, ...]) -> Shape | None:
    """The shape of the element at ``path`` (element names) in ``resource_type``, when the versions agree."""
    found = {_shape(model, resource_type, path) for model in MODELS} - {None}
    return found.pop() if len(found) == 1 else None


def _shape(model: typing.Callable, resource_type: str, path: tuple[str, ...]) -> Shape | None:
    try:
        cls = model(resource_type)
    except (KeyError, ValueError):
        return None
    found = None
    for name in path:
        if found is not None:
            if found.data_type is None:
                return None
            cls = model(found.data_type)
        found = _field_shape(cls, name)
        if found is None:
            return None
    return found


def _field_shape(cls: type, name: str) -> Shape | None:
    field = next((f for key, f in cls.model_fields.items() if (f.alias or key) == name), None)
    if field is None:
        return None
    annotation, repeats = field.annotation, False
    while typing.get_origin(annotation) in (typing.Union, types.UnionType, list):
        repeats = repeats or typing.get_origin(annotation) is list
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if isinstance(annotation, type) and issubclass(annotation, FhirBase):
        data_type = annotation.__name__.removesuffix("Type")
        return Shape(repeats, None if data_type in OPEN_TYPES else data_type)
    return Shape(repeats, None, text=isinstance(annotation, type) and not issubclass(annotation, NOT_TEXT))
