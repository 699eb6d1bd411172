"""FHIRPath for ViewDefinitions: fhirpathpy's parser and evaluator, with the functions SQL on FHIR adds.

fhirpathpy does the FHIRPath; this module adds what a view runner needs around it: syntax errors
that are reported instead of silently recovered, evaluation that keeps typed nodes (so ``ofType``
works inside ``forEach``), ``%rowIndex`` and the view's constants as variables, and the functions
fhirpathpy lacks: ``getResourceKey()``, ``getReferenceKey([type])``, ``lowBoundary()`` and
``highBoundary()`` (for decimal, date, dateTime and time values).
"""

from __future__ import annotations

import base64
import calendar
import re
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

from antlr4 import CommonTokenStream, InputStream, Token
from antlr4.error.ErrorListener import ErrorListener
from antlr4.error.Errors import RecognitionException
from antlr4.tree.Tree import ParseTreeWalker
from fhirpathpy.engine import do_eval
from fhirpathpy.engine.invocations.constants import constants as _now_constants
from fhirpathpy.engine.nodes import FP_Type, ResourceNode
from fhirpathpy.engine.util import arraify, get_data
from fhirpathpy.models import models
from fhirpathpy.parser.ASTPathListener import ASTPathListener
from fhirpathpy.parser.generated.FHIRPathLexer import FHIRPathLexer
from fhirpathpy.parser.generated.FHIRPathParser import FHIRPathParser

Evaluator = Callable[[Any, Mapping[str, Any]], list]


class _Raising(ErrorListener):
    def syntaxError(self, recognizer, offendingSymbol, line, column, msg, e):
        raise SyntaxError(f"column {column + 1}: {msg}")


def parse(expression: str) -> dict:
    """fhirpathpy's AST of an expression; SyntaxError naming the column if it is not FHIRPath."""
    lexer = FHIRPathLexer(InputStream(expression))
    lexer.removeErrorListeners()
    lexer.addErrorListener(_Raising())
    tokens = CommonTokenStream(lexer)
    parser = FHIRPathParser(tokens)
    parser.removeErrorListeners()
    parser.addErrorListener(_Raising())
    listener = ASTPathListener()
    try:
        tree = parser.expression()
    except RecognitionException as error:  # what the listener does not turn into a SyntaxError
        raise SyntaxError(str(error)) from None
    if tokens.LA(1) != Token.EOF:
        raise SyntaxError(f"unexpected {tokens.LT(1).text!r} at column {tokens.LT(1).column + 1}")
    ParseTreeWalker().walk(listener, tree)
    return listener.parentStack[0]


def parse_error(expression: str) -> str | None:
    """Why an expression is not FHIRPath, or None when it parses."""
    try:
        parse(expression)
    except SyntaxError as error:
        return str(error)
    return None


def compile_path(expression: str, version: str) -> Evaluator:
    """A function of (node, variables) giving the expression's result as nodes (ResourceNode or values)."""
    ast = parse(expression)["children"][0]
    model = models[version]

    def evaluate(node: Any, variables: Mapping[str, Any]) -> list:
        _now_constants.reset()
        root = arraify(node)
        ctx = {"dataRoot": root, "$this": root, "vars": {"ucum": "http://unitsofmeasure.org", **variables},
               "model": model, "userInvocationTable": FUNCTIONS}
        return arraify(do_eval(ctx, root, ast))

    return evaluate


def plain(value: Any) -> Any:
    """A result item as plain JSON-like Python: dicts, lists, str, bool, int, Decimal."""
    data = get_data(value)
    if isinstance(data, FP_Type):
        return str(data)
    if isinstance(data, Mapping):
        return {key: plain(item) for key, item in data.items()}
    if isinstance(data, list):
        return [plain(item) for item in data]
    return data


def node_for(resource: Mapping[str, Any]) -> ResourceNode:
    return ResourceNode.create_node(resource, resource.get("resourceType"))


# --- getResourceKey() and getReferenceKey([type]): the resource id, and the id of a relative reference

def _resource_key(ctx, inputs):
    return [data["id"] for data in map(get_data, inputs) if isinstance(data, Mapping) and "id" in data]


_RELATIVE_REFERENCE = re.compile(r"(?:.*/)?([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?")


def _reference_key(ctx, inputs, resource_type=None):
    wanted = getattr(resource_type, "name", None)
    keys = []
    for data in map(get_data, inputs):
        reference = data.get("reference") if isinstance(data, Mapping) else None
        match = _RELATIVE_REFERENCE.fullmatch(reference) if isinstance(reference, str) else None
        if match and (wanted is None or match.group(1) == wanted):
            keys.append(match.group(2))
    return keys


# --- lowBoundary() and highBoundary(): the least and greatest values an imprecise value may stand for

_DATE = re.compile(r"(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?")
_DATETIME = re.compile(r"(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?(?:T(\d{2})(?::(\d{2})(?::(\d{2})(?:\.(\d+))?)?)?)?"
                       r"(Z|[+-]\d{2}:\d{2})?")
_TIME = re.compile(r"(\d{2})(?::(\d{2})(?::(\d{2})(?:\.(\d+))?)?)?")


def _type_of(value: Any) -> str | None:
    if isinstance(value, ResourceNode):
        info = value.get_type_info()
        name = info.name if info else None
        if name in ("decimal", "integer", "date", "dateTime", "time", "instant"):
            return name
        value = value.data
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float, Decimal)):
        return "decimal"
    if isinstance(value, FP_Type):
        text = str(value)
        return "time" if _TIME.fullmatch(text) else "dateTime"
    return None


def _decimal_boundary(value: Any, high: bool) -> Decimal:
    number = Decimal(str(value))
    places = max(-number.as_tuple().exponent, 0)  # digits after the point, as given
    half = Decimal(5) / Decimal(10) ** (places + 1)
    return number + half if high else number - half


def _date_boundary(text: str, high: bool) -> str | None:
    match = _DATE.fullmatch(text)
    if not match:
        return None
    year, month, day = match.groups()
    month = month or ("12" if high else "01")
    day = day or (f"{calendar.monthrange(int(year), int(month))[1]:02d}" if high else "01")
    return f"{year}-{month}-{day}"


def _datetime_boundary(text: str, high: bool) -> str | None:
    match = _DATETIME.fullmatch(text)
    if not match:
        return None
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    date = _date_boundary("-".join(part for part in (year, month, day) if part), high)
    hour = hour or ("23" if high else "00")
    minute = minute or ("59" if high else "00")
    second = second or ("59" if high else "00")
    fraction = (fraction or "").ljust(3, "9" if high else "0")[:max(3, len(fraction or ""))]
    zone = zone or ("-12:00" if high else "+14:00")  # an unknown zone may be any from +14:00 to -12:00
    return f"{date}T{hour}:{minute}:{second}.{fraction}{zone}"


def _time_boundary(text: str, high: bool) -> str | None:
    match = _TIME.fullmatch(text)
    if not match:
        return None
    hour, minute, second, fraction = match.groups()
    minute = minute or ("59" if high else "00")
    second = second or ("59" if high else "00")
    fraction = (fraction or "").ljust(3, "9" if high else "0")
    return f"{hour}:{minute}:{second}.{fraction}"


def _boundary(high: bool):
    def boundary(ctx, inputs):
        results = []
        for value in inputs:
            kind, data = _type_of(value), get_data(value)
            if kind in ("decimal", "integer"):
                results.append(_decimal_boundary(data, high))
            elif kind == "date":
                results.append(_date_boundary(str(data), high))
            elif kind in ("dateTime", "instant"):
                results.append(_datetime_boundary(str(data), high))
            elif kind == "time":
                results.append(_time_boundary(str(data), high))
        return [result for result in results if result is not None]

    return boundary


def _join(ctx, inputs, separator=""):
    """join() of FHIRPath N1: the strings joined; an empty collection joins to ''."""
    return [(separator or "").join(str(get_data(item)) for item in inputs)]


FUNCTIONS = {
    "join": {"fn": _join, "arity": {0: [], 1: ["String"]}},
    "getResourceKey": {"fn": _resource_key},
    "getReferenceKey": {"fn": _reference_key, "arity": {0: [], 1: ["TypeSpecifier"]}},
    "lowBoundary": {"fn": _boundary(False)},
    "highBoundary": {"fn": _boundary(True)},
}


def constant_value(kind: str, value: Any) -> Any:
    """A constant's value[x] as FHIRPath sees it (%name)."""
    if kind == "decimal":
        return Decimal(str(value))
    if kind == "base64Binary":
        return base64.b64encode(base64.b64decode(value)).decode()
    return value
