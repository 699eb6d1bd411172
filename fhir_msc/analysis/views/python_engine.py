"""The reference engine: a ViewDefinition applied to resources one at a time, in Python, into an Arrow table.

It follows the specification's "Process a Resource" algorithm
(https://sql-on-fhir.org/ig/StructureDefinition-ViewDefinition.html#processing-algorithm-model):
``where`` filters, then each select's ``forEach``/``forEachOrNull``/``repeat`` foci, columns,
nested selects (cross-joined) and ``unionAll`` branches (concatenated), with ``%rowIndex`` set
per iteration level. Resources are streamed; only the output rows are held.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from itertools import product
from typing import Any

import pyarrow as pa

from ...errors import ViewDefinitionError
from .definition import Column, ViewDefinition, load_view
from .fhirpath import Evaluator, compile_path, constant_value, node_for, plain

INTEGER_TYPES = ("integer", "positiveInt", "unsignedInt")
# FHIR primitive type → Arrow type, the same for every engine (duckdb_engine.TYPES; a test checks):
# every integer type as int64 (the spec's BIGINT, which holds integer64 too); decimal as float64 (the
# spec's default is text, kept for lossless exchange; numbers are what the analysis needs); dates,
# times and instants as the FHIR text (partial dates and time zones survive); anything else, untyped
# columns and complex types (as JSON) as text, as the spec allows.
ARROW_TYPES: dict[str, pa.DataType] = {
    "boolean": pa.bool_(), "integer": pa.int64(), "positiveInt": pa.int64(), "unsignedInt": pa.int64(),
    "integer64": pa.int64(), "decimal": pa.float64(),
}


def arrow_type(column: Column) -> pa.DataType:
    base = ARROW_TYPES.get(column.type or "", pa.string())
    return pa.list_(base) if column.collection else base


def arrow_schema(view: ViewDefinition) -> pa.Schema:
    return pa.schema([pa.field(column.name, arrow_type(column)) for column in view.columns])


@dataclass
class ViewRun:
    """Counts of one run: resources read per type, and those skipped with the reason."""

    read: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    rows: int = 0


class CompiledView:
    """A checked view with every FHIRPath parsed once; ``rows(resource)`` applies it to one resource."""

    def __init__(self, view: ViewDefinition | Mapping[str, Any]):
        self.view = view if isinstance(view, ViewDefinition) else load_view(view)
        version = self.view.fhir_version
        self._paths: dict[str, Evaluator] = {}
        self._version = version
        self._constants = {c.name: constant_value(c.type, c.value) for c in self.view.constants}
        self._where = [(i, self._compiled(path)) for i, path in enumerate(self.view.where)]
        self._select = [_Select.build(select, self._compiled, f"select[{i}]") for i, select in
                        enumerate(self.view.select)]
        self._columns = self.view.columns

    def _compiled(self, expression: str) -> Evaluator:
        if expression not in self._paths:
            self._paths[expression] = compile_path(expression, self._version)
        return self._paths[expression]

    def kept(self, resource: Mapping[str, Any]) -> str | None:
        """None when the view applies to the resource, else why not ("type", "where")."""
        if resource.get("resourceType") != self.view.resource:
            return "type"
        root = node_for(resource)
        for i, where in self._where:
            result = self._run(where, root, resource, 0, f"where[{i}].path")
            if not result:
                return "where"
            if len(result) > 1 or not isinstance(plain(result[0]), bool):
                raise ViewDefinitionError(f"where[{i}].path: gives {_shown(result)} for {_named(resource)}, "
                                          "not true or false; make the expression end in a test "
                                          "(e.g. exists(), = 'x')")
            if plain(result[0]) is not True:
                return "where"
        return None

    def rows(self, resource: Mapping[str, Any], *, checked: bool = False) -> Iterator[tuple]:
        """The view's rows for one resource in column order (none if its type or a where does not match).

        ``checked``: the caller has already seen ``kept(resource)`` return None.
        """
        if not checked and self.kept(resource) is not None:
            return
        root = node_for(resource)
        names = [column.name for column in self._columns]
        for partial in self._process_all(self._select, root, resource, 0):
            yield tuple(partial.get(name) for name in names)

    def _process_all(self, selects: list[_Select], node: Any, resource: Mapping, row_index: int) -> Iterator[dict]:
        parts = [list(self._process(select, node, resource, row_index)) for select in selects]
        for combination in product(*parts):
            row: dict = {}
            for partial in combination:
                row.update(partial)
            yield row

    def _process(self, select: _Select, node: Any, resource: Mapping, row_index: int) -> Iterator[dict]:
        if select.repeat:
            foci = list(self._traverse(select, node, resource, row_index))
        elif select.for_each is not None:
            foci = self._run(select.for_each, node, resource, row_index, select.for_each_at)
        else:
            foci = None
        if foci is None:
            iterations = [(node, row_index)]
        else:
            iterations = [(focus, i) for i, focus in enumerate(foci) if not _is_empty_node(focus)]
        for focus, index in iterations:
            parts: list[list[dict]] = [[{column.name: self._value(column, evaluator, focus, resource, index, at)
                                         for column, evaluator, at in select.columns}]]
            parts.extend(list(self._process(nested, focus, resource, index)) for nested in select.select)
            if select.union_all:
                parts.append([row for branch in select.union_all
                              for row in self._process(branch, focus, resource, index)])
            for combination in product(*parts):
                row: dict = {}
                for partial in combination:
                    row.update(partial)
                yield row
        if foci is not None and not iterations and select.or_null:
            yield {name: 0 if name in select.row_index_names else None for name in select.names}

    def _traverse(self, select: _Select, node: Any, resource: Mapping, row_index: int) -> Iterator[Any]:
        for evaluator, at in select.repeat:
            for child in self._run(evaluator, node, resource, row_index, at):
                if isinstance(plain(child), Mapping):
                    yield child
                    yield from self._traverse(select, child, resource, row_index)

    def _value(self, column: Column, evaluator: Evaluator, focus: Any, resource: Mapping, row_index: int,
               at: str) -> Any:
        result = [item for item in self._run(evaluator, focus, resource, row_index, at) if not _is_empty_node(item)]
        if column.collection:
            return [_typed(column, plain(item), at, resource) for item in result]
        if not result:
            return None
        if len(result) > 1:
            raise ViewDefinitionError(f"{at}: {column.path!r} gives {len(result)} values for {_named(resource)} "
                                      f"but column {column.name!r} holds one; set \"collection\": true or narrow "
                                      "the path (e.g. first())")
        return _typed(column, plain(result[0]), at, resource)

    def _run(self, evaluator: Evaluator, node: Any, resource: Mapping, row_index: int, at: str) -> list:
        variables = {**self._constants, "rowIndex": row_index, "resource": resource, "rootResource": resource,
                     "context": resource}
        try:
            return evaluator(node, variables)
        except ViewDefinitionError:
            raise
        except Exception as error:  # noqa: BLE001 (fhirpathpy raises plain exceptions for errors at run time)
            raise ViewDefinitionError(f"{at}: cannot be evaluated on {_named(resource)} ({error}); "
                                      "fix the expression") from None


@dataclass
class _Select:
    """A select with its FHIRPath compiled, and the JSON path of each expression for messages."""

    columns: list[tuple[Column, Evaluator, str]]
    select: list[_Select]
    union_all: list[_Select]
    for_each: Evaluator | None
    for_each_at: str
    or_null: bool
    repeat: list[tuple[Evaluator, str]]
    names: list[str]
    row_index_names: set[str]  # columns that are just %rowIndex: 0, not null, in a forEachOrNull's empty row

    @classmethod
    def build(cls, select: Mapping[str, Any], compiled, at: str) -> _Select:
        columns = []
        for i, column in enumerate(_list(select, "column")):
            checked = Column(name=column["name"], type=_short_type(column.get("type")),
                             collection=column.get("collection", False), path=column["path"])
            columns.append((checked, compiled(column["path"]), f"{at}.column[{i}].path"))
        key = "forEach" if "forEach" in select else "forEachOrNull" if "forEachOrNull" in select else None
        return cls(columns=columns,
                   select=[cls.build(s, compiled, f"{at}.select[{i}]") for i, s in enumerate(_list(select, "select"))],
                   union_all=[cls.build(s, compiled, f"{at}.unionAll[{i}]")
                              for i, s in enumerate(_list(select, "unionAll"))],
                   for_each=compiled(select[key]) if key else None, for_each_at=f"{at}.{key}",
                   or_null=key == "forEachOrNull",
                   repeat=[(compiled(p), f"{at}.repeat[{i}]") for i, p in enumerate(select.get("repeat", []))],
                   names=_names(select), row_index_names=set(_names(select, row_index=True)))


def _names(select: Mapping[str, Any], *, row_index: bool = False) -> list[str]:
    """The names of the columns a select produces (``row_index``: only those whose path is ``%rowIndex``)."""
    names = [column["name"] for column in _list(select, "column")
             if not row_index or column["path"].strip() == "%rowIndex"]
    for nested in _list(select, "select"):
        names.extend(_names(nested, row_index=row_index))
    branches = _list(select, "unionAll")
    if branches:
        names.extend(_names(branches[0], row_index=row_index))
    return names


def _list(select: Mapping[str, Any], key: str) -> list:
    value = select.get(key, [])
    return [value] if isinstance(value, Mapping) else value


def _short_type(kind: str | None) -> str | None:
    return kind.rsplit("/", 1)[1] if kind and kind.startswith("http://hl7.org/fhir/StructureDefinition/") else kind


def _is_empty_node(item: Any) -> bool:
    """fhirpathpy's stand-in for a primitive that has only an extension (``_given``): not a value."""
    data = plain(item)
    return isinstance(data, Mapping) and set(data) == {"extension"} and not isinstance(item, Mapping)


def _typed(column: Column, value: Any, at: str, resource: Mapping[str, Any]) -> Any:
    """A value as the column's Arrow type holds it (see ARROW_TYPES); ViewDefinitionError naming ``at`` and the
    resource if it is not of that type."""
    kind = column.type
    if value is None:
        return None
    if kind == "boolean":
        if isinstance(value, bool):
            return value
    elif kind in INTEGER_TYPES or kind == "integer64":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, Decimal) and value == value.to_integral_value():
            return int(value)
        if isinstance(value, str) and kind == "integer64" and value.lstrip("-").isdigit():
            return int(value)
    elif kind == "decimal":
        if isinstance(value, (int, Decimal, float)) and not isinstance(value, bool):
            return float(value)
    else:
        return as_text(value)
    raise ViewDefinitionError(f"{at}: gives {as_text(value)!r} for {_named(resource)}, which is not a FHIR {kind}; "
                              "fix the path or set the column's \"type\"")


def as_text(value: Any) -> str:
    """A value of an untyped or text column as the engines write it (booleans as true/false, JSON for complex values)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, (Mapping, list)):
        return json.dumps(value, default=str, separators=(",", ":"))
    return str(value)


def _named(resource: Mapping[str, Any]) -> str:
    return f"{resource.get('resourceType', 'resource')}/{resource.get('id', '(no id)')}"


def _shown(result: list) -> str:
    return ", ".join(repr(plain(item)) for item in result[:3]) + (" …" if len(result) > 3 else "")


def run_view(view: ViewDefinition | Mapping[str, Any], resources: Iterable[Mapping[str, Any]],
             run: ViewRun | None = None) -> pa.Table:
    """The view over ``resources`` (streamed) as an Arrow table: columns in the view's order, typed by ``type``.

    ``run``, if given, receives the counts: resources read per type and skipped ones by reason.
    """
    compiled = CompiledView(view)
    run = run if run is not None else ViewRun()
    rows: list[tuple] = []
    for resource in resources:
        kind = str(resource.get("resourceType"))
        run.read[kind] = run.read.get(kind, 0) + 1
        reason = compiled.kept(resource)
        if reason is not None:
            label = f"not {compiled.view.resource}" if reason == "type" else "where not true"
            run.skipped[label] = run.skipped.get(label, 0) + 1
            continue
        rows.extend(compiled.rows(resource, checked=True))
    run.rows = len(rows)
    return rows_to_table(compiled.view, rows)


def rows_to_table(view: ViewDefinition, rows: list[tuple]) -> pa.Table:
    schema = arrow_schema(view)
    arrays = [pa.array([row[i] for row in rows], type=field.type) for i, field in enumerate(schema)]
    return pa.Table.from_arrays(arrays, schema=schema)
