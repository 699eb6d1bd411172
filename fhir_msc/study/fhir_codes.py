"""Checks of the values put into FHIR: required bindings, UCUM units and the characters of a string.

The codes of a required binding are those fhir.resources lists for the model field
(``enum_values``, from the specification); a value must be a code in every FHIR version
where it lands in that ``code`` element. UCUM units are parsed with the grammar of the
ucumvert package (PyPI), which holds UCUM's syntax and its tables of units and prefixes, so
``cells`` is refused where ``{cells}`` is a unit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import import_module
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from lark import Lark
from lark.exceptions import UnexpectedEOF, UnexpectedInput
from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, core_schema

CODES_SHOWN = 6  # codes of a value set listed in a message


@lru_cache(maxsize=None)
def required_codes(package: str, module: str, model: str, field: str) -> tuple[str, ...]:
    """The codes fhir.resources lists for a required-binding ``code`` field, e.g. ("fhir.resources.R4B", "patient", "Patient", "gender")."""
    extra = getattr(import_module(f"{package}.{module}"), model).model_fields[field].json_schema_extra
    codes = tuple(extra["enum_values"])
    if "+" in codes:
        raise ValueError(f"{model}.{field}: fhir.resources lists only part of its value set")
    return codes


def check_code(value: str, element: str, *bindings: tuple[str, str, str, str]) -> str:
    """``value`` if it is a code of each binding's value set, else a ValueError naming the FHIR element."""
    for binding in bindings:
        codes = required_codes(*binding)
        if value not in codes:
            shown = ", ".join(codes[:CODES_SHOWN]) + (", …" if len(codes) > CODES_SHOWN else "")
            raise ValueError(f"{value!r} is not a code of the value set FHIR requires for {element} ({shown}): "
                             "use one of them")
    return value


@dataclass(frozen=True)
class RequiredBinding:
    """A study file value that lands in a FHIR ``code`` element with a required binding (``Annotated[str, …]``).

    Checked on load (``check_code``); in the study file's JSON Schema, the codes of every binding are its enum.
    """

    element: str  # the FHIR element named in messages, e.g. "Patient.gender"
    bindings: tuple[tuple[str, str, str, str], ...]  # arguments of required_codes, one per FHIR version

    def codes(self) -> list[str]:
        """The codes of the first binding that every other binding has too."""
        first, *others = self.bindings
        return [code for code in required_codes(*first) if all(code in required_codes(*other) for other in others)]

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_after_validator_function(lambda v: check_code(v, self.element, *self.bindings),
                                                            handler(source))

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return {**handler(schema), "enum": self.codes()}


# FHIR's string (and every type built on it): no character below U+0020 but tab, CR and LF (the datatypes page;
# R4's regex [ \r\n\t\S]+ already leaves out form feed and vertical tab, and XML cannot hold the others).
CONTROL_CHARACTER = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f]")


def string_problem(text: str) -> str | None:
    """What keeps ``text`` from being a FHIR string's value: its first control character (None if it has none)."""
    found = CONTROL_CHARACTER.search(text)
    if found is None:
        return None
    return (f"holds the control character U+{ord(found.group()):04X} at character {found.start() + 1}, which a FHIR "
            "string cannot hold (none below U+0020 but tab, CR and LF)")


@lru_cache(maxsize=1)
def _ucum_parser() -> Lark:
    """ucumvert's UCUM grammar (its units and prefixes included), read without importing ucumvert's pint support."""
    spec = find_spec("ucumvert")
    if spec is None or spec.origin is None:
        raise ImportError("ucumvert is not installed: pip install ucumvert")
    grammar = (Path(spec.origin).parent / "ucum_grammar.lark").read_text(encoding="utf-8")
    return Lark(grammar, start="main_term", strict=True)


@lru_cache(maxsize=None)
def ucum_problem(unit: str) -> str | None:
    """What makes ``unit`` not a UCUM unit (None if nothing)."""
    try:
        _ucum_parser().parse(unit)
    except UnexpectedEOF:
        where = "is empty" if not unit else "ends where a unit should follow"
    except UnexpectedInput as exc:
        where = f"cannot be read from character {exc.column} ({unit[exc.column - 1:exc.column]!r})"
    else:
        return None
    return (f"{unit!r} is not a UCUM unit: it {where}; write it as UCUM does (case-sensitive), "
            "e.g. mg/dL, 10*9/L, {cells}, %")


def check_ucum(unit: str) -> str:
    """``unit`` if it is a UCUM unit, else a ValueError saying where it is not."""
    if problem := ucum_problem(unit):
        raise ValueError(problem)
    return unit


# Required bindings on CodeableConcept elements (fhir.resources has no enum for them): element ->
# (system, codes), from the R4 specification's value sets (tests/study/test_study_adverse_events.py
# compares them with the CodeSystems of the hl7.fhir.r4.examples package).
REQUIRED_CODINGS = {
    "AdverseEvent.severity (R4)": ("http://terminology.hl7.org/CodeSystem/adverse-event-severity",
                                   ("mild", "moderate", "severe")),
    "AdverseEvent.outcome (R4)": ("http://terminology.hl7.org/CodeSystem/adverse-event-outcome",
                                  ("resolved", "recovering", "ongoing", "resolvedWithSequelae", "fatal", "unknown")),
}


def check_coding(system: str, code: str, element: str) -> None:
    """A ValueError unless ``system|code`` is in the value set FHIR requires for ``element``."""
    required, codes = REQUIRED_CODINGS[element]
    if system != required or code not in codes:
        raise ValueError(f"{system}|{code} is not in the value set FHIR requires for {element} "
                         f"({required}: {', '.join(codes)}): use one of them")
