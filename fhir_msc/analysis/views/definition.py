"""SQL-on-FHIR v2 ViewDefinitions: loaded, checked against the specification's structure, and their columns.

A ViewDefinition (https://sql-on-fhir.org/ig/StructureDefinition-ViewDefinition.html) names one
resource type, optional ``constant``s and ``where`` filters, and a tree of ``select``s with
``column``s, ``forEach``/``forEachOrNull``/``repeat`` and ``unionAll``. Loading checks what the
specification requires before any resource is read (structure, names, one iteration per select,
unionAll branches with the same columns, FHIRPath syntax, constants that exist) and raises one
``ViewDefinitionError`` whose message starts with the JSON path of the problem.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import ViewDefinitionError

SQL_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")  # the spec's sql-name invariant
VIEW_KEYS = {"resourceType", "id", "meta", "url", "identifier", "name", "title", "version", "status", "experimental",
             "date", "publisher", "contact", "description", "useContext", "copyright", "resource", "profile",
             "fhirVersion", "constant", "select", "where", "text", "extension", "modifierExtension", "jurisdiction",
             "purpose", "copyrightLabel", "versionAlgorithmString", "versionAlgorithmCoding", "language",
             "implicitRules", "contained"}
SELECT_KEYS = {"column", "select", "forEach", "forEachOrNull", "repeat", "unionAll", "extension", "modifierExtension"}
COLUMN_KEYS = {"name", "path", "description", "collection", "type", "tag", "tags", "extension", "modifierExtension"}
CONSTANT_TYPES = ("base64Binary", "boolean", "canonical", "code", "date", "dateTime", "decimal", "id", "instant",
                  "integer", "integer64", "oid", "string", "positiveInt", "time", "unsignedInt", "uri", "url", "uuid")
# %names FHIRPath and SQL-on-FHIR define themselves; any other %name must be a constant of the view.
BUILT_IN_VARIABLES = {"context", "resource", "rootResource", "ucum", "sct", "loinc", "rowIndex"}
_STRING_LITERAL = re.compile(r"'(?:[^'\\]|\\.)*'|`(?:[^`\\]|\\.)*`")
_VARIABLE = re.compile(r"%([A-Za-z_][A-Za-z0-9_]*)")
_R5_VERSION = re.compile(r"5\.")


@dataclass(frozen=True)
class Column:
    """One column of a view's output: its name, FHIR type (None: not given) and whether it holds a list."""

    name: str
    type: str | None
    collection: bool
    path: str = field(compare=False)


@dataclass(frozen=True)
class Constant:
    """A constant of the view (``%name`` in its FHIRPath), with the FHIR type of its ``value[x]``."""

    name: str
    type: str
    value: Any


@dataclass(frozen=True)
class ViewDefinition:
    """A checked ViewDefinition: the JSON as given, and what the engines need from it."""

    resource: str
    columns: tuple[Column, ...]
    constants: tuple[Constant, ...]
    where: tuple[str, ...]
    select: tuple[Mapping[str, Any], ...]
    fhir_version: str  # "r4" or "r5": the FHIRPath model used for types (choice elements, ofType)
    name: str | None = None
    json: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def column_names(self) -> list[str]:
        return [column.name for column in self.columns]


def load_view(source: Mapping[str, Any] | str | Path) -> ViewDefinition:
    """A ViewDefinition from a JSON object or a JSON file; ViewDefinitionError if it breaks the specification."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            raise ViewDefinitionError(f"{path}: cannot read the ViewDefinition ({error.strerror or error})") from None
        try:
            view = json.loads(text)
        except json.JSONDecodeError as error:
            raise ViewDefinitionError(f"{path}: not JSON ({error.msg} at line {error.lineno}, column {error.colno}); "
                                      "fix the file") from None
        return _checked(view, f"{path}: ")
    return _checked(source, "")


def _checked(view: Any, where: str) -> ViewDefinition:
    def fail(path: str, problem: str) -> ViewDefinitionError:
        return ViewDefinitionError(f"{where}{path}: {problem}" if path else f"{where}{problem}")

    if not isinstance(view, Mapping):
        raise fail("", f"a ViewDefinition is a JSON object, not {_kind(view)}")
    if view.get("resourceType", "ViewDefinition") != "ViewDefinition":
        raise fail("resourceType", f"is {view['resourceType']!r}; a ViewDefinition has resourceType 'ViewDefinition'")
    unknown = sorted(set(view) - VIEW_KEYS)
    if unknown:
        raise fail(unknown[0], "is not an element of ViewDefinition; remove it or check its spelling")
    version = _fhir_version(view, fail)
    resource = view.get("resource")
    if not isinstance(resource, str) or not resource:
        raise fail("resource", "missing: name the FHIR resource type the view reads, e.g. \"resource\": \"Patient\"")
    if resource not in _resource_types(version):
        raise fail("resource", f"{resource!r} is not a FHIR {version.upper()} resource type; check its spelling")
    name = view.get("name")
    if name is not None and not (isinstance(name, str) and SQL_NAME.fullmatch(name)):
        raise fail("name", f"{name!r} is not a usable name: letters, digits and _ only, starting with a letter")
    constants = _constants(view.get("constant", []), fail)
    known = BUILT_IN_VARIABLES | {constant.name for constant in constants}
    wheres = []
    for i, item in enumerate(_array(view.get("where", []), "where", fail)):
        if not isinstance(item, Mapping) or not isinstance(item.get("path"), str):
            raise fail(f"where[{i}].path", "missing: each where needs a FHIRPath \"path\" that returns true or false")
        wheres.append(_fhirpath(item["path"], f"where[{i}].path", known, fail))
    selects = _array(view.get("select"), "select", fail)
    if not selects:
        raise fail("select", "missing: a view needs at least one select with columns")
    columns: list[Column] = []
    for i, select in enumerate(selects):
        columns.extend(_select_columns(select, f"select[{i}]", known, fail))
    seen: set[str] = set()
    for column in columns:
        if column.name in seen:
            raise fail("select", f"column {column.name!r} is defined twice; every column name must be unique "
                                 "(rename one)")
        seen.add(column.name)
    return ViewDefinition(resource=resource, columns=tuple(columns), constants=constants, where=tuple(wheres),
                          select=tuple(selects), fhir_version=version, name=name, json=view)


def _select_columns(select: Any, path: str, known: set[str], fail) -> list[Column]:
    """The columns one select produces, in the specification's order (own, nested selects, then unionAll)."""
    if not isinstance(select, Mapping):
        raise fail(path, f"a select is a JSON object, not {_kind(select)}")
    unknown = sorted(set(select) - SELECT_KEYS)
    if unknown:
        raise fail(f"{path}.{unknown[0]}", "is not an element of a select (column, select, forEach, forEachOrNull, "
                                           "repeat, unionAll); remove it or check its spelling")
    iterations = [key for key in ("forEach", "forEachOrNull", "repeat") if key in select]
    if len(iterations) > 1:
        raise fail(path, f"has both {iterations[0]} and {iterations[1]}; a select may have at most one of forEach, "
                         "forEachOrNull and repeat (nest a select for the other)")
    for key in ("forEach", "forEachOrNull"):
        if key in select:
            if not isinstance(select[key], str):
                raise fail(f"{path}.{key}", f"must be a FHIRPath string, not {_kind(select[key])}")
            _fhirpath(select[key], f"{path}.{key}", known, fail)
    if "repeat" in select:
        repeat = _array(select["repeat"], f"{path}.repeat", fail)
        if not repeat:
            raise fail(f"{path}.repeat", "is empty; give at least one FHIRPath to follow, e.g. [\"item\"]")
        for i, expression in enumerate(repeat):
            if not isinstance(expression, str):
                raise fail(f"{path}.repeat[{i}]", f"must be a FHIRPath string, not {_kind(expression)}")
            _fhirpath(expression, f"{path}.repeat[{i}]", known, fail)
    columns = [_column(column, f"{path}.column[{i}]", known, fail)
               for i, column in enumerate(_array(select.get("column", []), f"{path}.column", fail))]
    for i, nested in enumerate(_array(select.get("select", []), f"{path}.select", fail)):
        columns.extend(_select_columns(nested, f"{path}.select[{i}]", known, fail))
    branches = _array(select.get("unionAll", []), f"{path}.unionAll", fail)
    if branches:
        first = _select_columns(branches[0], f"{path}.unionAll[0]", known, fail)
        for i, branch in enumerate(branches[1:], start=1):
            other = _select_columns(branch, f"{path}.unionAll[{i}]", known, fail)
            if [c.name for c in other] != [c.name for c in first]:
                raise fail(f"{path}.unionAll[{i}]", f"has columns {[c.name for c in other]} but unionAll[0] has "
                                                    f"{[c.name for c in first]}; every branch needs the same columns "
                                                    "in the same order")
            for mine, theirs in zip(other, first):
                if (mine.type, mine.collection) != (theirs.type, theirs.collection):
                    raise fail(f"{path}.unionAll[{i}]", f"column {mine.name!r} has type {mine.type} "
                                                        f"(collection: {mine.collection}) but {theirs.type} "
                                                        f"(collection: {theirs.collection}) in unionAll[0]; "
                                                        "give both the same type")
        columns.extend(first)
    return columns


def _column(column: Any, path: str, known: set[str], fail) -> Column:
    if not isinstance(column, Mapping):
        raise fail(path, f"a column is a JSON object, not {_kind(column)}")
    unknown = sorted(set(column) - COLUMN_KEYS)
    if unknown:
        raise fail(f"{path}.{unknown[0]}", "is not an element of a column (name, path, type, collection, "
                                           "description, tag); remove it or check its spelling")
    expression = column.get("path")
    if not isinstance(expression, str) or not expression.strip():
        raise fail(f"{path}.path", "missing: each column needs a FHIRPath \"path\"")
    _fhirpath(expression, f"{path}.path", known, fail)
    name = column.get("name")
    if not isinstance(name, str) or not SQL_NAME.fullmatch(name):
        shown = "missing" if name is None else f"{name!r} is not a usable name"
        raise fail(f"{path}.name", f"{shown}: give a name of letters, digits and _ that starts with a letter")
    kind = column.get("type")
    if kind is not None and (not isinstance(kind, str) or not kind):
        raise fail(f"{path}.type", f"must be a FHIR type name such as \"string\" or \"integer\", not {_kind(kind)}")
    collection = column.get("collection", False)
    if not isinstance(collection, bool):
        raise fail(f"{path}.collection", f"must be true or false, not {_kind(collection)}")
    if isinstance(kind, str) and kind.startswith("http://hl7.org/fhir/StructureDefinition/"):
        kind = kind.rsplit("/", 1)[1]
    return Column(name=name, type=kind, collection=collection, path=expression)


def _constants(items: Any, fail) -> tuple[Constant, ...]:
    constants = []
    for i, item in enumerate(_array(items, "constant", fail)):
        path = f"constant[{i}]"
        if not isinstance(item, Mapping):
            raise fail(path, f"a constant is a JSON object, not {_kind(item)}")
        name = item.get("name")
        if not isinstance(name, str) or not SQL_NAME.fullmatch(name):
            raise fail(f"{path}.name", "missing or not a usable name: letters, digits and _, starting with a letter")
        values = [key for key in item if key.startswith("value")]
        if len(values) != 1:
            raise fail(path, f"constant {name!r} needs exactly one value[x] (e.g. \"valueString\"), "
                             f"found {len(values) or 'none'}")
        kind = values[0][len("value"):]
        kind = kind[0].lower() + kind[1:] if kind else kind
        if kind not in CONSTANT_TYPES:
            raise fail(f"{path}.{values[0]}", f"is not a constant type; use one of value{', value'.join(t[0].upper() + t[1:] for t in CONSTANT_TYPES)}")
        constants.append(Constant(name=name, type=kind, value=item[values[0]]))
    names = [constant.name for constant in constants]
    for name in names:
        if names.count(name) > 1:
            raise fail("constant", f"{name!r} is defined twice; give each constant its own name")
    return tuple(constants)


def _fhirpath(expression: str, path: str, known: set[str], fail) -> str:
    """The expression, once it parses as FHIRPath and every %name in it is a constant or built-in variable."""
    from .fhirpath import parse_error

    problem = parse_error(expression)
    if problem:
        raise fail(path, f"{expression!r} is not valid FHIRPath ({problem}); fix the expression")
    for name in _VARIABLE.findall(_STRING_LITERAL.sub("''", expression)):
        if name not in known and not name.startswith("vs-") and not name.startswith("ext-"):
            raise fail(path, f"%{name} is not a constant of this view; add it to \"constant\" or fix the name")
    return expression


def _fhir_version(view: Mapping[str, Any], fail) -> str:
    versions = view.get("fhirVersion", [])
    if isinstance(versions, str):
        versions = [versions]
    if not isinstance(versions, list) or not all(isinstance(v, str) for v in versions):
        raise fail("fhirVersion", "must be a list of FHIR versions such as [\"4.0.1\"]")
    # A view for R4 and R5 alike is read with the R4 model; one for R5 only with R5's.
    return "r5" if versions and all(_R5_VERSION.match(v) for v in versions) else "r4"


def _resource_types(version: str) -> set[str]:
    from fhirpathpy.models import models

    parents = models[version]["type2Parent"]
    return {name for name, parent in parents.items() if parent in ("DomainResource", "Resource")}


def _array(value: Any, path: str, fail) -> list:
    if value is None:
        return []
    if isinstance(value, Mapping):  # a single object where the spec has a list (as in the spec's own prose)
        return [value]
    if not isinstance(value, list):
        raise fail(path, f"must be a JSON array, not {_kind(value)}")
    return value


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array"}.get(
        type(value), "an object" if isinstance(value, Mapping) else type(value).__name__)

