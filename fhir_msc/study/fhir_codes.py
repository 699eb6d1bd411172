"""Checks of the coded values a study file puts into FHIR: required bindings and UCUM syntax.

The codes of a required binding are those fhir.resources lists for the model field
(``enum_values``, from the specification); a value must be a code in every FHIR version
where it lands in that ``code`` element. UCUM units are checked against the syntax of
UCUM's grammar (https://ucum.org/ucum#section-Syntax-Rules), not against its table of units.
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import import_module

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


# UCUM's grammar: mainTerm = ["/"] term; term = component (("." | "/") component)*;
# component = annotatable [annotation] | annotation | factor | "(" term ")";
# annotatable = simpleUnit [exponent]. Symbols are ASCII 33–126 except the characters with a
# meaning in the grammar ("()+-./={}[] and the double quote), square brackets enclosing any of them.
_SYMBOL = r"(?:[!#-'*,0-9:-<>-Z\\^-z|~]|\[[!-Z\\^-~]*\])+"
_EXPONENT = r"[+-]?[0-9]+"
_ANNOTATION = r"\{[!-z|~]*\}"
_COMPONENT = re.compile(rf"(?:{_SYMBOL}(?:{_EXPONENT})?)?(?:{_ANNOTATION})?")


def ucum_problem(unit: str) -> str | None:
    """What makes ``unit`` not a UCUM expression by its syntax (None if nothing)."""
    start = 1 if unit.startswith("/") else 0
    end = _term(unit, start)
    if end == len(unit) and end > start:
        return None
    where = ("is empty" if not unit else "ends where a unit should follow" if unit[end:] in ("", ".", "/")
             else f"cannot be read at character {end + 1} ({unit[end]!r})")
    return f"{unit!r} is not a UCUM unit: it {where}; write it as UCUM does, e.g. mg/dL, 10*9/L, {{score}}, %"


def _term(unit: str, start: int) -> int:
    """Where the term beginning at ``start`` ends (at ``start`` if no component can be read)."""
    position = _component(unit, start)
    if position == start:
        return start
    while position < len(unit) and unit[position] in "./":
        following = _component(unit, position + 1)
        if following == position + 1:
            return position
        position = following
    return position


def _component(unit: str, start: int) -> int:
    if unit.startswith("(", start):
        end = _term(unit, start + 1)
        return end + 1 if end > start + 1 and unit.startswith(")", end) else start
    return _COMPONENT.match(unit, start).end()


def check_ucum(unit: str) -> str:
    """``unit`` if it is UCUM by its syntax, else a ValueError saying where it is not."""
    if problem := ucum_problem(unit):
        raise ValueError(problem)
    return unit
