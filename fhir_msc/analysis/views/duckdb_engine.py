"""Run a SQL-on-FHIR v2 ViewDefinition as ONE DuckDB query over the store's NDJSON files.

The view is compiled, not interpreted: each FHIRPath expression is parsed by ``fhirpathpy``'s
parser and its syntax tree translated into a DuckDB expression whose value is a FHIRPath
collection (a ``JSON[]`` list); each ``select`` becomes a list of rows (``JSON[][]``) built
with list lambdas (``forEach``/``forEachOrNull``/``repeat`` iterate, nested selects are
cross-joined, ``unionAll`` concatenates), and the query unnests the rows of every resource
that passes the view's ``where``. Columns come out typed from their FHIR ``type``.

A view of one row per resource whose paths the fast path covers also gets a typed query (``_Typed``):
the elements it reads come from ``read_json`` as STRUCTs shaped by the FHIR models (``shapes``), and
the cells are struct field access, list indexing and ``list_filter`` instead of JSON functions. It
raises where a resource has another shape than it expects; the general query then reads the file.

``repeat`` follows its paths at most ``REPEAT_DEPTH`` levels deep; a deeper resource is an
error, not a silently shorter table. DuckDB never downloads an extension here: json and
parquet are built into the wheels, and autoinstall is off.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import orjson
import pyarrow as pa
from antlr4.error.Errors import RecognitionException
from fhirpathpy.parser import parse

from ...errors import InputError, ViewDefinitionError
from ...store.ndjson import Store
from .shapes import shape

REPEAT_DEPTH = 12
MAX_RESOURCE_BYTES = 64 * 2**20  # one NDJSON line (resource) at most; DuckDB's read buffers are sized by it
COLUMN_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_SINGLE = re.compile(r"\[(v\d+)\]")
_CONSTANT = re.compile(r"\[CAST\(('(?:[^']|'')*') AS JSON\)\]")
T = TypeVar("T")
ROOT = "__ROOT__"  # placeholder for the resource itself as a collection, filled in once its fields are known

# FHIR primitive type -> (DuckDB type, Arrow type); every other type name (or none) is read as text.
_INTEGER = ("BIGINT", pa.int64())
_DECIMAL = ("DOUBLE", pa.float64())
TYPES: dict[str, tuple[str, pa.DataType]] = {
    "boolean": ("BOOLEAN", pa.bool_()), "integer": _INTEGER, "positiveInt": _INTEGER, "unsignedInt": _INTEGER,
    "integer64": _INTEGER, "decimal": _DECIMAL,
}
_TEXT = ("VARCHAR", pa.string())

MACROS = [
    # A JSON value as a FHIRPath collection: an array's items (JSON nulls dropped), nothing for null/missing.
    ("fp_arr(j) AS CASE coalesce(json_type(j), 'NULL') WHEN 'ARRAY' THEN "
     "list_filter(CAST(j AS JSON[]), lambda e: coalesce(json_type(e), 'NULL') <> 'NULL') "
     "WHEN 'NULL' THEN []::JSON[] ELSE [j] END"),
    "fp_num(j) AS coalesce(json_type(j) IN ('BIGINT', 'UBIGINT', 'DOUBLE'), false)",
    "fp_int(j) AS coalesce(json_type(j) IN ('BIGINT', 'UBIGINT'), false)",
    # A collection in a boolean context: empty -> NULL, a boolean -> itself, any other single item -> true.
    ("fp_bool(c) AS CASE WHEN len(c) = 0 THEN NULL WHEN json_type(c[1]) = 'BOOLEAN' THEN CAST(c[1] AS BOOLEAN) "
     "ELSE true END"),
    "fp_of_bool(b) AS CASE WHEN b IS NULL THEN []::JSON[] ELSE [to_json(b)] END",
    ("fp_eq1(x, y) AS CASE WHEN fp_num(x) AND fp_num(y) THEN CAST(x AS DOUBLE) = CAST(y AS DOUBLE) "
     "ELSE CAST(x AS VARCHAR) = CAST(y AS VARCHAR) END"),
    "fp_text(j) AS CASE WHEN json_type(j) = 'VARCHAR' THEN j ->> '$' ELSE CAST(j AS VARCHAR) END",
    # A JSON leaf of the typed read (SQL NULL for null or missing) that is no array: one item, or none.
    "fp_one(j) AS coalesce(NOT starts_with(CAST(j AS VARCHAR), '['), true)",
    # Decimal arithmetic as FHIRPath's, exact on the numbers as written: a JSON number's decimal places (NULL when it
    # is written with an exponent), the larger of two numbers' places, the number × 10^k as a whole number read from
    # its digits (k at least its places), whether that has at most ``digits`` digits, and n × 10^-k as the double
    # nearest it (read from text, which rounds once). So 66.21 - 36.21 is 30 and 0.1 + 0.2 is 0.3, as in Python's
    # decimal; a number with more digits falls back to DOUBLE arithmetic.
    ("fp_places(j) AS CASE WHEN contains(lower(CAST(j AS VARCHAR)), 'e') THEN NULL "
     "ELSE length(split_part(CAST(j AS VARCHAR) || '.', '.', 2)) END"),
    ("fp_places2(x, y) AS CASE WHEN fp_places(x) IS NULL OR fp_places(y) IS NULL THEN NULL "
     "ELSE greatest(fp_places(x), fp_places(y)) END"),
    "fp_whole(j, k) AS CAST(replace(CAST(j AS VARCHAR), '.', '') || repeat('0', k - fp_places(j)) AS HUGEINT)",
    ("fp_fits(j, k, digits) AS coalesce(k - fp_places(j) + length(regexp_replace(CAST(j AS VARCHAR), '[-.]', '', 'g')) "
     "<= digits, false)"),
    "fp_decimal(n, k) AS CAST(CAST(n AS VARCHAR) || 'e-' || CAST(k AS VARCHAR) AS DOUBLE)",
    # a / b of two whole numbers (HUGEINT, at most 18 digits) to 38 - digits(a) more places, as the double nearest it
    ("fp_quotient(a, b) AS fp_decimal((a * CAST('1' || repeat('0', 38 - length(CAST(abs(a) AS VARCHAR))) AS HUGEINT)) "
     "// b, 38 - length(CAST(abs(a) AS VARCHAR)))"),
]


def connect(threads: int | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB that never downloads an extension, with the FHIRPath macros defined."""
    config: dict[str, Any] = {"autoinstall_known_extensions": False, "autoload_known_extensions": False}
    if threads:
        config["threads"] = threads
    connection = duckdb.connect(config=config)
    connection.execute("SET enable_progress_bar = false")  # fhir-msc reports progress itself, on stderr
    for macro in MACROS:
        connection.execute(f"CREATE OR REPLACE MACRO {macro}")
    return connection


def run_view(view: dict, source: Store | str | Path, *, connection: duckdb.DuckDBPyConnection | None = None,
             ordinal: str | None = None) -> pa.Table:
    """The rows of ``view`` over the resources of the store ``source``, as an Arrow table (``ordinal``: an extra
    last column of that name, each row's resource's line in the file, see :func:`compile_view`)."""
    compiled = compile_view(view, source, ordinal=ordinal)
    con = connection or connect()
    try:
        table = compiled.run(lambda sql: con.sql(sql).to_arrow_table())
    except duckdb.Error as error:
        if ERROR_MARK in str(error):  # the view does not apply to a resource: named, as the reference engine names it
            raise ViewDefinitionError(_reason(error)) from None
        raise InputError(f"view {view.get('name', view.get('resource'))!r} cannot be run: {_reason(error)}") from None
    return compiled.finish(table)


ERROR_MARK = "fhir-msc: "  # begins the message of an error() the compiled query raises


def _reason(error: duckdb.Error) -> str:
    text = str(error)
    return text[text.index(ERROR_MARK) + len(ERROR_MARK):].splitlines()[0] if ERROR_MARK in text else text.splitlines()[0]


@dataclass(frozen=True)
class Column:
    name: str
    type: str | None
    collection: bool


@dataclass(frozen=True)
class CompiledView:
    """One DuckDB query and what turns its result into the view's table.

    ``typed_sql``, when the view can be read typed (see ``_Typed``), gives the same rows faster; it raises
    where a resource has a shape it does not expect, and then ``sql`` (the general query) is run. Where
    a value cannot be cast to its column's type, ``checked_sql`` (the general query checking each typed
    value first) is run to raise the error naming the resource and the column's place in the view.
    """

    sql: str
    columns: list[Column]
    checked_sql: str
    typed_sql: str | None = None

    def run(self, execute: Callable[[str], T]) -> T:
        """``execute(typed_sql)``, or ``execute(sql)`` when there is no typed query or it meets another shape."""
        if self.typed_sql is not None:
            try:
                return execute(self.typed_sql)
            except (duckdb.InvalidInputException, duckdb.ConversionException):  # FALLBACK, or a JSON transform error
                pass
        try:
            return execute(self.sql)
        except (duckdb.InvalidInputException, duckdb.ConversionException) as error:
            if ERROR_MARK in str(error):
                raise
            execute(self.checked_sql)  # raises the error naming the resource and the column
            raise

    def finish(self, table: pa.Table) -> pa.Table:
        """Untyped columns (no FHIR ``type``) get the Arrow type of their JSON values."""
        arrays = []
        for column, array in zip(self.columns, table.columns):
            if column.type is None:
                values = [None if v is None else orjson.loads(v) for v in array.to_pylist()]
                array = pa.array(values)
            arrays.append(array)
        extra = table.column_names[len(self.columns):]  # the ordinal, if asked for
        return pa.table(arrays + [table[name] for name in extra], names=[c.name for c in self.columns] + extra)


def compile_view(view: dict, source: Store | str | Path, ordinal: str | None = None) -> CompiledView:
    """The query of ``view`` over the store ``source`` (see :func:`run_view`).

    ``ordinal`` names an extra last column (not in the view): the resource's line number in its file, from 1.
    """
    resource = view.get("resource")
    if not isinstance(resource, str) or not isinstance(view.get("select"), list) or not view["select"]:
        raise InputError("a ViewDefinition needs a resource type (resource) and at least one select")
    path = _file(source, resource)
    line = f", r.ordinality AS {_quote(ordinal)}" if ordinal else ""
    compiler, sql, columns, flat = _general_query(view, path, line, ordinal, check_types=False)
    checked_sql = _general_query(view, path, line, ordinal, check_types=True)[1]
    typed = None if flat is None or path is None or view.get("where") else _typed_query(compiler, flat, columns, path, line)
    return CompiledView(sql=sql, columns=columns, checked_sql=checked_sql, typed_sql=typed)


def _general_query(view: dict, path: Path | None, line: str, ordinal: str | None, check_types: bool
                   ) -> tuple[_Compiler, str, list[Column], list[dict] | None]:
    """The compiler, the general query of ``view`` over the file ``path``, its columns, and its columns when it
    gives one row per resource (else None). ``check_types``: each typed value is checked before its cast (see
    :meth:`_Compiler.typed`)."""
    resource = view["resource"]
    compiler = _Compiler(resource, _constants(view.get("constant", [])), {
        c["name"]: next(v for k, v in c.items() if k.startswith("value")) for c in view.get("constant", [])},
        check_types=check_types)
    scope = _Scope(this=ROOT, row_index="0")
    placed = _flat_columns(view["select"])
    flat = None if placed is None else [column for column, _ in placed]
    if placed is None:
        rows = compiler.node_rows({"select": view["select"]}, ROOT, scope, "")
    else:  # one row per resource: the cells are the columns, no list of rows to unnest
        rows = "\x00".join(compiler.cell(column, ROOT, scope, at) for column, at in placed)
    columns = compiler.columns({"select": view["select"]})
    names = [c.name for c in columns]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InputError(f"column name {', '.join(repeated)} is used more than once in the view")
    conditions = [_condition(compiler, w.get("path", ""), scope, f"where[{i}].path")
                  for i, w in enumerate(view.get("where", []))]
    whole = ROOT in rows or any(ROOT in c for c in conditions)  # the resource itself as a value
    fields = sorted(compiler.fields | {"id"} | (compiler.names if whole else set()))
    root = "[json_object(" + ", ".join(f"'{f}', r.{_quote(f)}" for f in fields) + ")]"
    rows = rows.replace(ROOT, root)
    conditions = [c.replace(ROOT, root) for c in conditions]
    where = " AND ".join(conditions) or "true"
    if flat is not None:
        cells = rows.split("\x00")
        selected = ", ".join(f"{_typed(c, cell)} AS {_quote(c.name)}" for c, cell in zip(columns, cells))
        return (compiler, f"SELECT {selected}{line} FROM {_read(path, dict.fromkeys(fields, 'JSON'))} AS r "
                          f"WHERE {where}", columns, flat)
    selected = ", ".join(f"{_typed(c, f'row[{i}]')} AS {_quote(c.name)}" for i, c in enumerate(columns, start=1))
    selected += f", {_quote(ordinal)}" if ordinal else ""
    sql = (f"SELECT {selected} FROM (SELECT unnest({rows}) AS row{line} "
           f"FROM {_read(path, dict.fromkeys(fields, 'JSON'))} AS r WHERE {where})")
    return compiler, sql, columns, None


def _decimal_arithmetic(op: str, x: str, y: str) -> str:
    """``x op y`` of two JSON numbers as a DOUBLE: exact on their decimals as written when each has at most 18
    digits (see the ``fp_`` macros; a quotient to 20 significant digits or more, then the double nearest it), in
    DOUBLE otherwise."""
    double = f"CAST({x} AS DOUBLE) {op} CAST({y} AS DOUBLE)"
    if op == "*":
        px, py = f"fp_places({x})", f"fp_places({y})"
        exact = f"fp_decimal(fp_whole({x}, {px}) * fp_whole({y}, {py}), {px} + {py})"
        fits = f"fp_fits({x}, {px}, 18) AND fp_fits({y}, {py}, 18)"
    else:
        k = f"fp_places2({x}, {y})"
        exact = (f"fp_quotient(fp_whole({x}, {k}), fp_whole({y}, {k}))" if op == "/"
                 else f"fp_decimal(fp_whole({x}, {k}) {op} fp_whole({y}, {k}), {k})")
        fits = f"fp_fits({x}, {k}, 18) AND fp_fits({y}, {k}, 18)"
    return f"CASE WHEN {fits} THEN {exact} ELSE {double} END"


def _typed_query(compiler: _Compiler, flat: list[dict], columns: list[Column], path: Path, line: str) -> str | None:
    """The query of a flat view over typed columns (see ``_Typed``), or None when a column is not read typed.

    A first compilation collects the elements the columns read; the second reads them as STRUCTs.
    """
    collecting = _Typed(compiler.resource, compiler.raw_constants, None)
    if any(collecting.cell(column) is None for column in flat):
        return None
    typed = _Typed(compiler.resource, compiler.raw_constants, frozenset(collecting.reads), collecting.json_leaves)
    cells = [typed.cell(column) for column in flat]
    if None in cells:
        return None
    types = {name: typed.read_type((name,)) for name in sorted({p[0] for p in typed.reads})}
    selected = ", ".join(f"{cell} AS {_quote(c.name)}" for c, cell in zip(columns, cells))
    return f"SELECT {selected}{line} FROM {_read(path, types)} AS r"


def _condition(compiler: _Compiler, path: str, scope: _Scope, at: str) -> str:
    """A view's ``where`` path: true keeps the resource; a path giving anything but one boolean is an error
    naming ``at`` (its place in the view) and the resource, as the reference engine's."""
    return compiler.let(compiler.expr(path, ROOT, scope), lambda v: (
        f"CASE WHEN len({v}) > 1 OR (len({v}) = 1 AND json_type({v}[1]) <> 'BOOLEAN') THEN "
        + compiler.error(f"{at}: gives ", _shown(v), " for ", compiler.named,
                         ", not true or false; make the expression end in a test (e.g. exists(), = 'x')")
        + f" ELSE coalesce(fp_bool({v}), false) END"))


def _shown(values: str) -> str:
    """SQL text of the first three values of a JSON list as the reference engine shows them ('text', 5, true)."""
    item, quote = "shown", _literal("'")
    return (f"array_to_string(list_transform({values}[1:3], lambda {item}: CASE WHEN json_type({item}) = 'VARCHAR' "
            f"THEN {quote} || ({item} ->> '$') || {quote} ELSE CAST({item} AS VARCHAR) END), ', ') "
            f"|| CASE WHEN len({values}) > 3 THEN ' …' ELSE '' END")


def _flat_columns(selects: list[dict], at: str = "") -> list[tuple[dict, str]] | None:
    """The columns of selects that give exactly one row per resource (no forEach, repeat or unionAll), in order,
    each with its place in the view (``select[0].column[1]``)."""
    found = []
    for i, select in enumerate(selects):
        if any(key in select for key in ("forEach", "forEachOrNull", "repeat", "unionAll")):
            return None
        inner = _flat_columns(select.get("select", []), f"{at}select[{i}].")
        if inner is None:
            return None
        found += [(column, f"{at}select[{i}].column[{j}]") for j, column in enumerate(select.get("column", []))] + inner
    return found


def _file(source: Store | str | Path, resource_type: str) -> Path | None:
    store = source if isinstance(source, Store) else Store(source)
    return store._current(resource_type)  # the committed file, or one a killed write left ready


# Reading strategy: read_json with the view's top-level fields as explicit JSON columns parses each
# line once and hands over each field already cut out; read_ndjson_objects + json_extract re-parses
# the whole line for every field the view reads. The shipped observations view over 955,400
# Observations (1.0 GB of NDJSON, 2 threads) took 27 s of CPU with read_json and 104 s with
# read_ndjson_objects + json_extract (same rows, same sums). With the typed read (``_Typed``) a process
# building the four shipped views' Parquet tables over that store used 5.0-5.7 s of user CPU (17.9-19.9 s
# with JSON columns, same minutes, a loaded machine).
def _read(path: Path | None, types: dict[str, str]) -> str:
    """The resources as rows with one column per top-level field the view reads, of the DuckDB type given."""
    if path is None:
        return "(SELECT " + ", ".join(f"NULL::{t} AS {_quote(f)}" for f, t in types.items()) + ", 0 AS ordinality WHERE false)"
    columns = "{" + ", ".join(f"{_literal(f)}: {_literal(t)}" for f, t in types.items()) + "}"
    return (f"read_json({_literal(str(path))}, format='newline_delimited', columns={columns}, "
            f"maximum_object_size={MAX_RESOURCE_BYTES}) WITH ORDINALITY")


def _typed(column: Column, cell: str) -> str:
    sql_type = (TYPES.get(column.type or "") or _TEXT)[0]
    if column.type is None:
        return cell
    if column.collection:
        return f"list_transform(CAST({cell} AS JSON[]), lambda e: {_cast('e', sql_type)})"
    return _cast(cell, sql_type)


def _cast(cell: str, sql_type: str) -> str:
    return f"({cell} ->> '$')" if sql_type == "VARCHAR" else f"CAST({cell} AS {sql_type})"


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _json_literal(value: Any) -> str:
    return f"CAST({_literal(orjson.dumps(value).decode())} AS JSON)"


def _constants(constants: list[dict]) -> dict[str, str]:
    found = {}
    for constant in constants:
        values = [v for k, v in constant.items() if k.startswith("value")]
        if not isinstance(constant.get("name"), str) or len(values) != 1:
            raise InputError(f"constant {constant.get('name')!r} needs a name and exactly one value[x]")
        found[constant["name"]] = f"[{_json_literal(values[0])}]"
    return found


@dataclass(frozen=True)
class _Scope:
    this: str  # the focus collection (SQL JSON[], or ROOT)
    row_index: str  # SQL integer: index of the focus in the closest forEach/forEachOrNull/repeat
    kind: str | None = None  # the FHIR type of the column being computed (lowBoundary() needs it)


class _Compiler:
    """Translates one view's selects and FHIRPath expressions into DuckDB SQL."""

    def __init__(self, resource: str, constants: dict[str, str], raw_constants: dict[str, Any] | None = None,
                 check_types: bool = False):
        self.resource = resource
        self.constants = constants
        self.raw_constants = raw_constants or {}  # the constants' values, for the fast path
        self.check_types = check_types  # each typed value checked before its cast (see typed)
        self.fields: set[str] = set()  # top-level fields of the resource read
        self.names: set[str] = set()  # every element name the view reads, at any depth
        self.count = 0

    def var(self) -> str:
        self.count += 1
        return f"v{self.count}"

    # --- selects -------------------------------------------------------------------------------------

    def columns(self, node: dict) -> list[Column]:
        """The columns ``node`` yields, in the spec's order: its columns, nested selects, then unionAll."""
        found = []
        for column in node.get("column", []):
            name = column.get("name")
            if not isinstance(name, str) or not COLUMN_NAME.fullmatch(name):
                raise InputError(f"column name {name!r} is not a valid name (letters, digits and _, from a letter)")
            found.append(Column(name=name, type=column.get("type"), collection=bool(column.get("collection"))))
        for select in node.get("select", []):
            found += self.columns(select)
        branches = [self.columns(u) for u in node.get("unionAll", [])]
        if branches:
            names = [c.name for c in branches[0]]
            if any([c.name for c in b] != names for b in branches[1:]):
                raise InputError("the selects of a unionAll must have the same columns in the same order")
            found += branches[0]
        return found

    def select_rows(self, node: dict, focus: str, scope: _Scope, at: str) -> str:
        """The rows (``JSON[][]``) of one select node (at ``at`` in the view) over ``focus``, iterating if it asks to."""
        iterate = [k for k in ("forEach", "forEachOrNull", "repeat") if k in node]
        if len(iterate) > 1:
            raise InputError(f"a select may have only one of forEach, forEachOrNull and repeat, not {iterate}")
        if not iterate:
            return self.node_rows(node, focus, scope, at)
        if iterate[0] == "repeat":
            items = self.repeat(node["repeat"], focus, scope, f"{at}.repeat")
        else:
            items = self.expr(node[iterate[0]], focus, scope)
        item, index = self.var(), self.var()
        each = self.node_rows(node, f"[{item}]", replace(scope, row_index=f"({index} - 1)"), at)
        rows = f"flatten(list_transform({{items}}, lambda {item}, {index}: {each}))"
        if iterate[0] != "forEachOrNull":
            return rows.format(items=items)
        bound = self.var()
        empty = self.node_rows(node, "[]::JSON[]", replace(scope, row_index="0"), at)
        return self.let(items, lambda v: f"CASE WHEN len({v}) = 0 THEN {empty} ELSE {rows.format(items=v)} END", bound)

    def node_rows(self, node: dict, focus: str, scope: _Scope, at: str) -> str:
        """The rows of a node's columns × nested selects × unionAll, over one focus (``at``: the node's place in
        the view, "" for the view itself)."""
        within = f"{at}." if at else ""
        parts = []
        if node.get("column"):
            parts.append("[[" + ", ".join(self.cell(c, focus, scope, f"{within}column[{j}]")
                                          for j, c in enumerate(node["column"])) + "]]")
        parts += [self.select_rows(s, focus, scope, f"{within}select[{i}]") for i, s in enumerate(node.get("select", []))]
        if node.get("unionAll"):
            union = [self.select_rows(u, focus, scope, f"{within}unionAll[{i}]") for i, u in enumerate(node["unionAll"])]
            combined = union[0]
            for branch in union[1:]:
                combined = f"list_concat({combined}, {branch})"
            parts.append(combined)
        if not parts:
            return "[[]::JSON[]]"
        rows = parts[0]
        for part in parts[1:]:
            a, b = self.var(), self.var()
            rows = f"flatten(list_transform({rows}, lambda {a}: list_transform({part}, lambda {b}: list_concat({a}, {b}))))"
        return rows

    def cell(self, column: dict, focus: str, scope: _Scope, at: str) -> str:
        """The JSON value of ``column`` (at ``at`` in the view) over ``focus``; a value that is not of the column's
        type, or several values in a column that holds one, is an error naming ``at`` and the resource."""
        values = self.expr(column.get("path", ""), focus, replace(scope, kind=column.get("type")))
        if column.get("collection"):
            fast_list = self.selected(column["path"], scope) if focus == ROOT else None
            general_list = f"to_json({values})"
            return self.typed(general_list if fast_list is None else
                              f"CASE WHEN {fast_list[1]} THEN {fast_list[0]} ELSE {general_list} END", column, at)
        general = self.let(values, lambda v: (
            f"CASE WHEN len({v}) > 1 THEN "
            + self.error(f"{at}.path: {column['path']!r} gives ", f"CAST(len({v}) AS VARCHAR)", " values for ",
                         self.named, f" but column {column.get('name')!r} holds one; set \"collection\": true or "
                         "narrow the path (e.g. first())")
            + f" ELSE {v}[1] END"))
        fast = self.scalar(column["path"], scope) if focus == ROOT else None
        return self.typed(general if fast is None else f"CASE WHEN {fast[1]} THEN {fast[0]} ELSE {general} END",
                          column, at)

    def typed(self, cell: str, column: dict, at: str) -> str:
        """``cell`` (a JSON value, or a JSON array for a collection); with ``check_types``, an error naming ``at``
        and the resource where a value is not of the column's number or boolean type (its cast would fail)."""
        sql_type = (TYPES.get(column.get("type") or "") or _TEXT)[0]
        if not self.check_types or column.get("type") is None or sql_type == "VARCHAR":
            return cell

        def wrong(value: str) -> str:
            return f"(coalesce(json_type({value}), 'NULL') <> 'NULL' AND TRY_CAST({value} AS {sql_type}) IS NULL)"

        def refused(value: str) -> str:
            return self.error(f"{at}.path: gives ", _shown(f"[{value}]"), " for ", self.named,
                              f", which is not a FHIR {column['type']}; fix the path or set the column's \"type\"")
        if not column.get("collection"):
            return self.let(cell, lambda c: f"CASE WHEN {wrong(c)} THEN {refused(c)} ELSE {c} END")
        item = self.var()
        return self.let(cell, lambda c: self.let(
            f"list_filter(CAST({c} AS JSON[]), lambda {item}: {wrong(item)})",
            lambda bad: f"CASE WHEN len({bad}) > 0 THEN {refused(f'{bad}[1]')} ELSE {c} END"))

    @property
    def named(self) -> str:
        """SQL: the resource as the messages name it (``Patient/p1``)."""
        return f"{_literal(self.resource + '/')} || coalesce(fp_text(r.\"id\"), '(no id)')"

    @staticmethod
    def error(*parts: str) -> str:
        """SQL raising the message made of ``parts``: text at even places, SQL text values at odd ones."""
        joined = " || ".join(_literal(part) if i % 2 == 0 else f"({part})" for i, part in enumerate(parts))
        return f"error({_literal(ERROR_MARK)} || {joined})"

    # --- the fast path: one JSON value per resource ----------------------------------------------------

    def selected(self, path: str, scope: _Scope) -> tuple[str, str] | None:
        """(value, guard) of a collection column ``chain.select(expression)``: the chain read as by
        :meth:`scalar` up to an array, each of its items mapped by an expression :meth:`scalar` reads."""
        tree = parse(path)["children"][0]
        if tree["type"] != "InvocationExpression" or tree["children"][1]["type"] != "FunctionInvocation" \
                or _function_name(tree["children"][1]) != "select" or len(_params(tree["children"][1])) != 1:
            return None
        chain = self.scalar(tree["children"][0], scope, array=True)
        if chain is None:
            return None
        item = self.var()
        body = self.scalar(_params(tree["children"][1])[0], scope, start=item)
        if body is None:
            return None
        items = f"CAST({chain[0]} AS JSON[])"
        mapped = f"list_transform({items}, lambda {item}: CASE WHEN coalesce(json_type({item}), 'NULL') = 'NULL' THEN NULL ELSE {body[0]} END)"
        each = f"coalesce(list_bool_and(list_transform({items}, lambda {item}: coalesce(json_type({item}), 'NULL') = 'NULL' OR ({body[1]}))), true)"
        return (f"to_json(coalesce(list_filter({mapped}, lambda v: v IS NOT NULL), []::JSON[]))",
                f"{chain[1]} AND ({chain[0]} IS NULL OR json_type({chain[0]}) = 'ARRAY') AND {each}")

    def scalar(self, path: str | dict, scope: _Scope, start: str | None = None, array: bool = False
               ) -> tuple[str, str] | None:
        """(value, guard): the cell of a column whose ``path`` is a chain from the resource of members,
        ``first()``, ``where(…)``, ``ofType(T)``, ``exists()`` and ``join()``, as ONE JSON value (or SQL NULL)
        computed without lists of JSON; ``guard`` is true where that value is the general one (each
        element on the way has the expected shape: no array where one item is read, no JSON null).
        None for any other path: the general translation alone is used."""
        tree = parse(path)["children"][0] if isinstance(path, str) else path
        if tree["type"] == "AdditiveExpression" and tree["terminalNodeText"][0] == "&":
            parts = [self.scalar(k, scope, start) for k in tree["children"]]
            if None in parts or array:
                return None
            (a, ga), (b, gb) = parts  # type: ignore[misc]
            return f"to_json(concat(coalesce(fp_text({a}), ''), coalesce(fp_text({b}), '')))", f"({ga}) AND ({gb})"
        if tree["type"] == "TermExpression" and tree["children"][0]["type"] == "LiteralTerm" and not array \
                and tree["children"][0]["children"][0]["type"] == "StringLiteral":
            return _json_literal(_unescape(tree["children"][0]["children"][0]["text"][1:-1])), "true"
        members = None if start or array else _union_exists(tree)
        if members:  # (a | b | …).exists() over the resource's own elements
            values = [self.member_field(m) for m in members]
            guard = " AND ".join(f"coalesce(json_type({v}), 'NULL') <> 'ARRAY'" for v in values)
            return "to_json(" + " OR ".join(f"coalesce(json_type({v}), 'NULL') <> 'NULL'" for v in values) + ")", guard
        steps = _steps(tree)
        if not steps or steps[0][0] not in ("member", "choice") or steps[0][1] == self.resource:
            return None
        guards: list[str] = []
        cur, is_list = "", False  # the value so far: one JSON value (or SQL NULL), or a JSON[] after where()

        def single(value: str) -> None:  # reading one item from ``value``: it must not be an array
            guards.append(f"coalesce(json_type({value}), 'NULL') <> 'ARRAY'")

        for index, step in enumerate(steps):
            kind = step[0]
            if (is_list and kind not in ("first", "exists")) or (kind in ("exists", "join") and index < len(steps) - 1) \
                    or (array and kind in ("exists", "join")):
                return None
            if kind in ("member", "choice"):
                name = step[1]
                base = cur if index else start
                get = (lambda n: self.member_field(n)) if base is None else (lambda n, c=base: self.json_member(c, n))
                if index:
                    single(cur)
                if kind == "member" or step[2][:1].isupper():
                    cur = get(name if kind == "member" else name + step[2][:1].upper() + step[2][1:])
                    continue
                choice, plain = get(name + step[2][:1].upper() + step[2][1:]), get(name)
                guards += [f"(coalesce(json_type({plain}), 'NULL') = 'NULL' OR coalesce(json_type({choice}), 'NULL') = 'NULL')"]
                single(choice)
                single(plain)
                cur = f"CASE WHEN coalesce(json_type({plain}), 'NULL') = 'NULL' THEN {choice} ELSE {self.of_type_one(plain, step[2])} END"
            elif kind == "first":
                if is_list:
                    cur, is_list = f"{cur}[1]", False
                else:
                    guards.append(f"coalesce(json_type({cur}, '$[0]'), '') <> 'NULL'")
                    cur = f"CASE WHEN json_type({cur}) = 'ARRAY' THEN json_extract({cur}, '$[0]') ELSE {cur} END"
            elif kind == "where":
                guards.append(f"({cur} IS NULL OR json_type({cur}) = 'ARRAY')")
                item = self.var()
                test = self.test(step[1], item, scope)
                cur, is_list = f"list_filter(CAST({cur} AS JSON[]), lambda {item}: coalesce(json_type({item}), 'NULL') <> 'NULL' AND {test})", True
            elif kind == "exists":
                if is_list:
                    return f"to_json(coalesce(len({cur}), 0) > 0)", " AND ".join(guards) or "true"
                single(cur)
                return f"to_json(coalesce(json_type({cur}), 'NULL') <> 'NULL')", " AND ".join(guards) or "true"
            elif kind == "join":
                guards.append(f"coalesce(json_type({cur}), 'MISSING') NOT IN ('ARRAY', 'NULL')")
                return f"to_json(coalesce(fp_text({cur}), ''))", " AND ".join(guards)
        if is_list:
            return None
        if array:  # the caller reads the items of this value
            return cur, " AND ".join(guards) or "true"
        guards.append(f"coalesce(json_type({cur}), 'MISSING') NOT IN ('ARRAY', 'NULL')")
        return cur, " AND ".join(guards)

    def test(self, n: dict, item: str, scope: _Scope) -> str:
        """A where() criterion on one JSON ``item`` as a SQL boolean; ``member = 'text'`` (or a string constant)
        and ``and`` of such compare JSON texts directly, where the member is not an array."""
        if n["type"] == "AndExpression" and n["terminalNodeText"][0] == "and":
            return " AND ".join(f"({self.test(k, item, scope)})" for k in n["children"])
        general = f"coalesce(fp_bool({self.node(n, replace(scope, this=f'[{item}]'))}), false)"
        text = _member_equals_text(n, self.raw_constants)
        if text is None:
            return general
        value = self.json_member(item, text[0])
        return (f"CASE WHEN json_type({value}) = 'ARRAY' THEN {general} "
                f"ELSE coalesce(CAST({value} AS VARCHAR) = {_literal(orjson.dumps(text[1]).decode())}, false) END")

    def member_field(self, name: str) -> str:
        self.names.add(name)
        self.fields.add(name)
        return f"r.{_quote(name)}"

    def json_member(self, value: str, name: str) -> str:
        self.names.add(name)
        return f"json_extract({value}, {_literal(f'$.{_quote(name)}')})"

    @staticmethod
    def of_type_one(value: str, type_name: str) -> str:
        """``value`` (one JSON value) if ``ofType(type_name)`` keeps it, as the general ofType() decides."""
        json_types = {"string": "'VARCHAR'", "boolean": "'BOOLEAN'", "integer": "'BIGINT', 'UBIGINT'",
                      "decimal": "'DOUBLE', 'BIGINT', 'UBIGINT'"}.get(type_name)
        keep = (f"json_type({value}) IN ({json_types})" if json_types
                else f"({value} ->> 'resourceType') = {_literal(type_name)}")
        return f"CASE WHEN {keep} THEN {value} END"

    def repeat(self, paths: list[str], focus: str, scope: _Scope, at: str) -> str:
        """The items reached from ``focus`` by following ``paths`` (``at`` in the view) again and again, depth first."""
        def children(of: str) -> str:
            found = [self.expr(p, of, scope) for p in paths]
            combined = found[0]
            for more in found[1:]:
                combined = f"list_concat({combined}, {more})"
            return combined

        def below(items: str, depth: int) -> str:
            if depth == REPEAT_DEPTH:
                return (f"CASE WHEN len({items}) > 0 THEN "
                        + self.error(f"{at}: goes deeper than {REPEAT_DEPTH} levels in ", self.named, "")
                        + " ELSE []::JSON[] END")
            item = self.var()
            return (f"flatten(list_transform({items}, lambda {item}: "
                    f"list_concat([{item}], {below(children(f'[{item}]'), depth + 1)})))")
        return below(children(focus), 0)

    def let(self, sql: str, body: Callable[[str], str], name: str | None = None) -> str:
        """``body`` over ``sql`` evaluated once (bound to a lambda variable)."""
        if sql == ROOT:
            return body(sql)
        v = name or self.var()
        return f"list_transform([{sql}], lambda {v}: {body(v)})[1]"

    # --- FHIRPath ------------------------------------------------------------------------------------

    def expr(self, path: str, focus: str, scope: _Scope) -> str:
        if not isinstance(path, str) or not path.strip():
            raise InputError(f"path {path!r} is not a FHIRPath expression")
        try:
            tree = parse(path)
        except RecognitionException as error:  # ANTLR's, for text its lexer cannot read
            raise InputError(f"path {path!r} is not a FHIRPath expression: {error}") from None
        return self.node(tree["children"][0], replace(scope, this=focus))

    def node(self, n: dict, scope: _Scope) -> str:
        kind = n["type"]
        kids = n.get("children", [])
        if kind == "TermExpression":
            return self.term(kids[0], scope)
        if kind == "InvocationExpression":
            return self.invoke(kids[1], kids[0], scope)
        if kind == "IndexerExpression":
            index = self.node(kids[1], scope)
            return self.let(self.node(kids[0], scope), lambda v: self.let(
                index, lambda i: f"CASE WHEN len({i}) = 0 THEN []::JSON[] ELSE "
                                 f"list_slice({v}, CAST({i}[1] AS BIGINT) + 1, CAST({i}[1] AS BIGINT) + 1) END"))
        if kind == "PolarityExpression":
            operand = self.node(kids[0], scope)
            if n["terminalNodeText"][0] == "+":
                return operand
            return f"list_transform({operand}, lambda x: to_json(CASE WHEN fp_int(x) THEN -CAST(x AS BIGINT) ELSE -CAST(x AS DOUBLE) END))"
        if kind in ("AndExpression", "OrExpression", "ImpliesExpression"):
            a, b = (f"fp_bool({self.node(k, scope)})" for k in kids)
            op = n["terminalNodeText"][0]
            logic = {"and": f"({a} AND {b})", "or": f"({a} OR {b})", "xor": f"({a} <> {b})",
                     "implies": f"((NOT {a}) OR {b})"}[op]
            return f"fp_of_bool({logic})"
        if kind in ("EqualityExpression", "InequalityExpression", "AdditiveExpression", "MultiplicativeExpression"):
            return self.binary(n["terminalNodeText"][0], self.node(kids[0], scope), self.node(kids[1], scope))
        if kind == "UnionExpression":
            both = f"list_concat({self.node(kids[0], scope)}, {self.node(kids[1], scope)})"
            return self.let(both, lambda v: f"list_filter({v}, lambda x, i: list_position({v}, x) = i)")
        raise InputError(f"FHIRPath {kind.replace('Expression', '').lower()} expressions are not supported")

    def binary(self, op: str, left: str, right: str) -> str:
        if op == "&":
            return (f"[to_json(concat(coalesce(fp_text({left}[1]), ''), coalesce(fp_text({right}[1]), '')))]")

        def singletons(body: Callable[[str, str], str]) -> str:
            return self.let(left, lambda a: self.let(right, lambda b: (
                f"CASE WHEN len({a}) = 0 OR len({b}) = 0 THEN []::JSON[] ELSE {body(f'{a}[1]', f'{b}[1]')} END")))
        if op in ("=", "!="):
            negate = "NOT " if op == "!=" else ""
            constant = _CONSTANT.fullmatch(right)
            if constant and constant.group(1).startswith("'\""):  # a string: its JSON text compared
                return self.let(left, lambda a: (
                    f"CASE WHEN len({a}) = 0 THEN []::JSON[] ELSE [to_json({negate}(len({a}) = 1 AND "
                    f"coalesce(CAST({a}[1] AS VARCHAR) = {constant.group(1)}, false)))] END"))
            return self.let(left, lambda a: self.let(right, lambda b: (
                f"CASE WHEN len({a}) = 0 OR len({b}) = 0 THEN []::JSON[] WHEN len({a}) <> len({b}) "
                f"THEN [to_json({negate}false)] ELSE [to_json({negate}list_bool_and(list_transform({a}, "
                f"lambda x, i: fp_eq1(x, {b}[i]))))] END")))
        if op in ("<", ">", "<=", ">="):
            return singletons(lambda x, y: (
                f"[to_json(CASE WHEN fp_num({x}) AND fp_num({y}) THEN CAST({x} AS DOUBLE) {op} CAST({y} AS DOUBLE) "
                f"ELSE fp_text({x}) {op} fp_text({y}) END)]"))
        if op in ("+", "-", "*"):
            text = "to_json(concat(fp_text(x), fp_text(y)))" if op == "+" else "NULL"
            return singletons(lambda x, y: (
                f"[CASE WHEN fp_int({x}) AND fp_int({y}) THEN to_json(CAST({x} AS HUGEINT) {op} CAST({y} AS HUGEINT)) "
                f"WHEN fp_num({x}) AND fp_num({y}) THEN to_json({_decimal_arithmetic(op, x, y)}) "
                f"ELSE {text.replace('(x)', f'({x})').replace('(y)', f'({y})')} END]"))
        if op in ("/", "div", "mod"):  # by zero: empty, as FHIRPath says
            whole = "//" if op == "div" else "%"
            return singletons(lambda x, y: (
                f"CASE WHEN CAST({y} AS DOUBLE) = 0 THEN []::JSON[] ELSE [to_json("
                + (_decimal_arithmetic(op, x, y) if op == "/" else f"CAST({x} AS BIGINT) {whole} CAST({y} AS BIGINT)")
                + ")] END"))
        raise InputError(f"FHIRPath operator {op} is not supported")

    def term(self, n: dict, scope: _Scope) -> str:
        kind = n["type"]
        kids = n.get("children", [])
        if kind == "LiteralTerm":
            return self.literal(kids[0])
        if kind == "ParenthesizedTerm":
            return self.node(kids[0], scope)
        if kind == "ExternalConstantTerm":
            name = _identifier(kids[0]["children"][0])
            if name == "rowIndex":
                return f"[to_json({scope.row_index})]"
            if name in ("resource", "rootResource", "context"):
                return ROOT
            if name not in self.constants:
                raise InputError(f"constant %{name} is not defined in the view's constant list")
            return self.constants[name]
        if kind == "InvocationTerm":
            invocation = kids[0]
            if invocation["type"] == "MemberInvocation" and scope.this == ROOT and \
                    _identifier(invocation["children"][0]) == self.resource:
                return ROOT  # Patient.name: the resource type names the resource itself
            return self.apply(invocation, scope.this, scope)
        raise InputError(f"FHIRPath {kind} is not supported")

    def literal(self, n: dict) -> str:
        kind, text = n["type"], n["text"]
        if kind == "StringLiteral":
            return f"[{_json_literal(_unescape(text[1:-1]))}]"
        if kind == "NumberLiteral":
            return f"[{_json_literal(int(text) if text.isdigit() else float(text))}]"
        if kind == "BooleanLiteral":
            return f"[{_json_literal(text == 'true')}]"
        if kind == "NullLiteral":
            return "[]::JSON[]"
        if kind in ("DateTimeLiteral", "TimeLiteral"):
            return f"[{_json_literal(text[1:].removeprefix('T') if kind == 'TimeLiteral' else text[1:])}]"
        raise InputError(f"FHIRPath {kind} literals are not supported")

    def invoke(self, invocation: dict, left: dict, scope: _Scope) -> str:
        """``left.invocation``; ``value.ofType(Quantity)`` reads the choice element ``valueQuantity``."""
        if invocation["type"] == "FunctionInvocation" and _function_name(invocation) == "ofType":
            member = _last_member(left)
            if member is not None:
                base, name = member
                type_name = _type_name(invocation)
                inner = scope.this if base is None else self.node(base, scope)
                choice = self.member(inner, name + type_name[:1].upper() + type_name[1:])
                if type_name[:1].isupper():
                    return choice
                # a primitive: the choice element (valueString), or an element of that JSON type (Quantity.value)
                return f"list_concat({choice}, {self.function(invocation, self.member(inner, name), scope)})"
        return self.apply(invocation, self.node(left, scope), scope)

    def apply(self, invocation: dict, items: str, scope: _Scope) -> str:
        kind = invocation["type"]
        if kind == "MemberInvocation":
            return self.member(items, _identifier(invocation["children"][0]))
        if kind == "ThisInvocation":
            return scope.this
        if kind == "FunctionInvocation":
            return self.function(invocation, items, scope)
        raise InputError(f"FHIRPath {kind} is not supported")

    def member(self, items: str, name: str) -> str:
        self.names.add(name)
        if items == ROOT:
            self.fields.add(name)
            return f"fp_arr(r.{_quote(name)})"
        path = _literal(f"$.{_quote(name)}")
        single = _SINGLE.fullmatch(items)
        if single:  # one item (a lambda variable): no list to map over
            return f"fp_arr(json_extract({single.group(1)}, {path}))"
        item = self.var()
        return f"flatten(list_transform({items}, lambda {item}: fp_arr(json_extract({item}, {path}))))"

    def function(self, invocation: dict, items: str, scope: _Scope) -> str:
        name = _function_name(invocation)
        params = _params(invocation)
        items_sql = items
        if name == "getResourceKey":
            return self.member(items, "id")
        if name == "where" or (name == "exists" and params):
            item = self.var()
            test = self.node(params[0], replace(scope, this=f"[{item}]"))
            filtered = f"list_filter({items_sql}, lambda {item}: coalesce(fp_bool({test}), false))"
            return filtered if name == "where" else f"[to_json(len({filtered}) > 0)]"
        if name == "select":
            item = self.var()
            return f"flatten(list_transform({items_sql}, lambda {item}: {self.node(params[0], replace(scope, this=f'[{item}]'))}))"
        if name == "first":
            return f"list_slice({items_sql}, 1, 1)"
        if name == "last":
            return self.let(items_sql, lambda v: f"list_slice({v}, len({v}), len({v}))")
        if name == "exists":
            return f"[to_json(len({items_sql}) > 0)]"
        if name == "empty":
            return f"[to_json(len({items_sql}) = 0)]"
        if name == "count":
            return f"[to_json(len({items_sql}))]"
        if name == "hasValue":
            return f"[to_json(len({items_sql}) = 1)]"
        if name == "not":
            return f"fp_of_bool(NOT fp_bool({items_sql}))"
        if name == "join":
            separator = f"coalesce(fp_text({self.node(params[0], scope)}[1]), '')" if params else "''"
            item = self.var()
            return f"[to_json(array_to_string(list_transform({items_sql}, lambda {item}: fp_text({item})), {separator}))]"
        if name == "extension":
            url = f"fp_text({self.node(params[0], scope)}[1])"
            item = self.var()
            return f"list_filter({self.member(items, 'extension')}, lambda {item}: ({item} ->> 'url') = {url})"
        if name == "getReferenceKey":
            wanted = _type_name(invocation) if params else None
            item = self.var()
            pattern = _literal(r"(?:^|/)([A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")
            reference = f"({item} ->> 'reference')"
            keep = f"regexp_matches({reference}, {pattern})"
            if wanted:
                keep += f" AND regexp_extract({reference}, {pattern}, 1) = {_literal(wanted)}"
            kept = f"list_filter({items_sql}, lambda {item}: coalesce({keep}, false))"
            other = self.var()
            return (f"list_transform({kept}, lambda {other}: "
                    f"to_json(regexp_extract({other} ->> 'reference', {pattern}, 2)))")
        if name == "ofType":
            json_types = {"string": "'VARCHAR'", "boolean": "'BOOLEAN'", "integer": "'BIGINT', 'UBIGINT'",
                          "decimal": "'DOUBLE', 'BIGINT', 'UBIGINT'"}.get(_type_name(invocation))
            item = self.var()
            if json_types is None:
                return f"list_filter({items_sql}, lambda {item}: ({item} ->> 'resourceType') = {_literal(_type_name(invocation))})"
            return f"list_filter({items_sql}, lambda {item}: json_type({item}) IN ({json_types}))"
        if name in ("lowBoundary", "highBoundary"):
            return self.boundary(name == "lowBoundary", items_sql, scope.kind)
        raise InputError(f"FHIRPath function {name}() is not supported")

    def boundary(self, low: bool, items: str, kind: str | None) -> str:
        """lowBoundary()/highBoundary(): decimals by their written precision; dates, dateTimes and times
        (told apart by the column's type) to their first or last instant."""
        item = self.var()
        text = f"fp_text({item})"
        if kind in ("date", "dateTime", "instant"):
            month = f"{text} || '-01'" if low else f"strftime(last_day(CAST({text} || '-01' AS DATE)), '%Y-%m-%d')"
            year = f"{text} || '{'-01-01' if low else '-12-31'}'"
            day = f"CASE length({text}) WHEN 4 THEN {year} WHEN 7 THEN {month} ELSE left({text}, 10) END"
            value = day if kind == "date" else (
                f"CASE WHEN length({text}) <= 10 THEN {day} || '{'T00:00:00.000+14:00' if low else 'T23:59:59.999-12:00'}' "
                f"ELSE {self.instant(text, low)} END")
        elif kind == "time":
            pad = "00:00:00.000" if low else "59:59:59.999"
            value = f"CASE WHEN length({text}) < 12 THEN {text} || right({_literal(pad)}, 12 - length({text})) ELSE {text} END"
        else:
            digits = (f"CASE WHEN contains(CAST({item} AS VARCHAR), '.') "
                      f"THEN length(split_part(CAST({item} AS VARCHAR), '.', 2)) ELSE 0 END")
            return (f"list_transform(list_filter({items}, lambda {item}: fp_num({item})), lambda {item}: "
                    f"to_json(round(CAST({item} AS DOUBLE) {'-' if low else '+'} 0.5 * pow(10, -({digits})), CAST(({digits}) + 1 AS INTEGER))))")
        return f"list_transform(list_filter({items}, lambda {item}: json_type({item}) = 'VARCHAR'), lambda {item}: to_json({value}))"

    def instant(self, text: str, low: bool) -> str:
        """A dateTime with a time to its first or last millisecond (seconds, fraction, zone filled in)."""
        pattern = _literal(r"^(\d{4}-\d{2}-\d{2}T\d{2})(?::(\d{2})(?::(\d{2})(?:\.(\d+))?)?)?(Z|[+-]\d{2}:\d{2})?$")

        def part(group: int, default: str) -> str:
            return f"coalesce(nullif(regexp_extract({text}, {pattern}, {group}), ''), '{default}')"
        fraction = f"regexp_extract({text}, {pattern}, 4)"
        fraction = f"CASE WHEN length({fraction}) >= 3 THEN {fraction} ELSE rpad({fraction}, 3, '{'0' if low else '9'}') END"
        filled = (f"regexp_extract({text}, {pattern}, 1) || ':' || {part(2, '00' if low else '59')} || ':' || "
                  f"{part(3, '00' if low else '59')} || '.' || {fraction} || {part(5, '+14:00' if low else '-12:00')}")
        return f"CASE WHEN regexp_matches({text}, {pattern}) THEN {filled} ELSE {text} END"


# --- the typed read: flat views over STRUCT columns -------------------------------------------------------

FALLBACK = "fhir-msc: a resource of another shape than the typed read expects"


@dataclass(frozen=True)
class _Value:
    """SQL for what the typed query reads or computes. ``kind``: "struct" (one item), "list" (``STRUCT[]``,
    NULL items for JSON nulls), "items" (a list without NULLs, from where()), "text" (a primitive JSON writes as a string, read as VARCHAR), "json" (any
    other leaf: a number, a boolean, an element of no agreed shape) or "bool" (a computed SQL boolean)."""

    sql: str
    kind: str
    path: tuple[str, ...] = ()


Cell = tuple[_Value, list[str]]  # a value and the guards (SQL booleans) that it is the general path's


class _Typed:
    """Compiles the columns of a flat view against columns read as STRUCTs of the elements the view reads
    (their leaves VARCHAR or JSON, see ``_Value``). Where a guard fails (a row of another shape: an array
    where one item is read, a JSON null in a list) the query raises ``FALLBACK`` and the general query runs.
    ``structured`` holds the element paths read; None while they are being collected. ``json_leaves``: the
    text elements read as JSON all the same (``valueString.ofType(string)`` must see a JSON string)."""

    def __init__(self, resource: str, raw_constants: dict[str, Any], structured: frozenset | None,
                 json_leaves: set[tuple[str, ...]] | None = None):
        self.resource = resource
        self.raw_constants = raw_constants
        self.parents = None if structured is None else {p[:i] for p in structured for i in range(1, len(p))}
        self.reads: set[tuple[str, ...]] = set()
        self.json_leaves = set(json_leaves or ())
        self.count = 0

    def var(self) -> str:
        self.count += 1
        return f"t{self.count}"

    def kind(self, path: tuple[str, ...]) -> str:
        found = shape(self.resource, path)
        if found is None or path in self.json_leaves:
            return "json"
        if found.data_type is None:
            return "text" if found.text and not found.repeats else "json"
        if self.parents is not None and path not in self.parents:
            return "json"
        return "list" if found.repeats else "struct"

    def read_type(self, path: tuple[str, ...]) -> str:
        """The DuckDB type ``path`` is read as: a STRUCT of the elements read below it (a list of them if
        it repeats), VARCHAR or JSON."""
        kind = self.kind(path)
        if kind in ("json", "text"):
            return "JSON" if kind == "json" else "VARCHAR"
        names = sorted({p[len(path)] for p in self.reads if len(p) > len(path) and p[:len(path)] == path})
        struct = "STRUCT(" + ", ".join(f"{_quote(n)} {self.read_type(path + (n,))}" for n in names) + ")"
        return struct + ("[]" if kind == "list" else "")

    def cell(self, column: dict) -> str | None:
        """The cell of ``column`` in its SQL type (as ``_typed`` gives the general one), or None when it is not
        read typed."""
        tree = parse(column.get("path", ""))["children"][0]
        sql_type = (TYPES.get(column.get("type") or "") or _TEXT)[0]
        if column.get("collection"):
            found = self.selected(tree, sql_type)
        else:
            cell = self.scalar(tree)
            found = None if cell is None else (self.output(cell[0], column.get("type"), sql_type), cell[1])
        if found is None or found[0] is None:
            return None
        value, guards = found
        return f"CASE WHEN {' AND '.join(guards) or 'true'} THEN {value} ELSE error({_literal(FALLBACK)}) END"

    @staticmethod
    def output(value: _Value, fhir_type: str | None, sql_type: str) -> str | None:
        """``value`` as the column's SQL type, or None where it could differ from the general cell."""
        if value.kind == "json":
            return value.sql if fhir_type is None else _cast(value.sql, sql_type)
        if value.kind == "text" and fhir_type is not None and sql_type == "VARCHAR":
            return value.sql
        return value.sql if value.kind == "bool" and sql_type == "BOOLEAN" and fhir_type else None

    def selected(self, tree: dict, sql_type: str) -> tuple[str, list[str]] | None:
        """A collection ``chain.select(expression)``: the items of a repeating element, each mapped."""
        if tree["type"] != "InvocationExpression" or tree["children"][1]["type"] != "FunctionInvocation" \
                or _function_name(tree["children"][1]) != "select" or len(_params(tree["children"][1])) != 1:
            return None
        chain = self.chain(tree["children"][0], None)
        if chain is None or chain[0].kind not in ("list", "items"):
            return None
        (items, guards), item = chain, self.var()
        body = self.scalar(_params(tree["children"][1])[0], _Value(item, "struct", items.path))
        if body is None or body[0].kind not in ("text", "json") or (body[0].kind == "text" and sql_type != "VARCHAR"):
            return None
        mapped = f"list_transform({items.sql}, lambda {item}: CASE WHEN {item} IS NULL THEN NULL ELSE {body[0].sql} END)"
        values = f"coalesce(list_filter({mapped}, lambda v: v IS NOT NULL), [])"
        if body[0].kind == "json":
            values = f"list_transform({values}, lambda e: {_cast('e', sql_type)})"
        each = f"list_bool_and(list_transform({items.sql}, lambda {item}: {item} IS NULL OR ({' AND '.join(body[1]) or 'true'})))"
        return values, guards + [f"coalesce({each}, true)"]

    def scalar(self, tree: dict, start: _Value | None = None) -> Cell | None:
        """One value: ``a & b``, a string literal, ``(a | b | …).exists()`` or a chain (see ``chain``) ending
        in a leaf, ``exists()`` or ``join()``."""
        if tree["type"] == "AdditiveExpression" and tree["terminalNodeText"][0] == "&":
            parts = [self.scalar(k, start) for k in tree["children"]]
            if any(p is None or p[0].kind not in ("text", "json") for p in parts):
                return None
            texts = [p[0].sql if p[0].kind == "text" else f"fp_text({p[0].sql})" for p in parts]  # type: ignore[index]
            return _Value(f"concat(coalesce({texts[0]}, ''), coalesce({texts[1]}, ''))", "text"), \
                parts[0][1] + parts[1][1]  # type: ignore[index]
        if tree["type"] == "TermExpression" and tree["children"][0]["type"] == "LiteralTerm" \
                and tree["children"][0]["children"][0]["type"] == "StringLiteral":
            return _Value(_literal(_unescape(tree["children"][0]["children"][0]["text"][1:-1])), "text"), []
        members = None if start else _union_exists(tree)
        if members:
            found = [self.exists(self.member(None, m), []) for m in members]
            return _Value(" OR ".join(f"({v.sql})" for v, _ in found), "bool"), [g for _, gs in found for g in gs]
        steps = _steps(tree)
        if steps and steps[-1][0] in ("exists", "join"):
            chain = self.chain(steps[:-1], start)
            return None if chain is None else (self.exists if steps[-1][0] == "exists" else self.join)(*chain)
        chain = self.chain(tree, start)
        if chain is None or chain[0].kind not in ("text", "json"):
            return None
        value, guards = chain
        return value, guards + [f"fp_one({value.sql})"]

    def chain(self, tree: dict | list, start: _Value | None) -> Cell | None:
        """The element reached from ``start`` (the resource when None) by members, ``first()``, ``where(…)``
        and ``ofType(T)``, with the guards that it is the general one."""
        steps = _steps(tree) if isinstance(tree, dict) else tree
        if not steps or steps[0][0] not in ("member", "choice") or steps[0][1] == self.resource:
            return None
        cur: _Value | None = start
        guards: list[str] = []
        for step in steps:
            if step[0] == "member":
                cur = self.member(cur, step[1])
            elif step[0] == "choice":
                cur = self.choice(cur, step[1], step[2], guards)
            elif step[0] == "first" and cur is not None:
                cur = self.first(cur, guards)
            elif step[0] == "where" and cur is not None:
                cur = self.where(cur, step[1], guards)
            else:
                return None
            if cur is None:
                return None
        return (cur, guards) if cur is not None else None

    def member(self, base: _Value | None, name: str) -> _Value | None:
        if base is not None and base.kind != "struct":
            return None
        path = base.path + (name,) if base else (name,)
        self.reads.add(path)
        sql = f"r.{_quote(name)}" if base is None else f"struct_extract({base.sql}, {_literal(name)})"
        return _Value(sql, self.kind(path), path)

    def choice(self, base: _Value | None, name: str, type_name: str, guards: list[str]) -> _Value | None:
        """``name.ofType(type_name)``: the element ``name<Type>``; for a primitive type also the element
        ``name`` itself, kept as the general ofType() keeps it (only one of them may be there)."""
        choice = self.member(base, name + type_name[:1].upper() + type_name[1:])
        if choice is None or type_name[:1].isupper():
            return choice
        self.json_leaves.add((base.path if base else ()) + (name,))  # ofType() of a primitive tests its JSON type
        plain = self.member(base, name)
        if plain is None or plain.kind != "json" or choice.kind not in ("json", "text"):
            return None
        guards += [f"fp_one({choice.sql})", f"fp_one({plain.sql})", f"({plain.sql} IS NULL OR {choice.sql} IS NULL)"]
        if choice.kind == "text":  # the general ofType() of a JSON leaf gives JSON: read typed only without one
            guards.append(f"{plain.sql} IS NULL")
            return choice
        kept = _Compiler.of_type_one(plain.sql, type_name)
        return _Value(f"CASE WHEN {plain.sql} IS NULL THEN {choice.sql} ELSE {kept} END", "json", choice.path)

    @staticmethod
    def first(cur: _Value, guards: list[str]) -> _Value:
        if cur.kind in ("list", "items"):
            if cur.kind == "list":  # a JSON null first would be skipped by the general path
                guards.append(f"coalesce(len({cur.sql}) = 0 OR {cur.sql}[1] IS NOT NULL, true)")
            return _Value(f"{cur.sql}[1]", "struct", cur.path)
        if cur.kind in ("json", "text"):
            guards.append(f"fp_one({cur.sql})")
        return cur

    def where(self, cur: _Value, criteria: dict, guards: list[str]) -> _Value | None:
        """``where(member = 'text' and …)`` over a repeating element: its items whose members match."""
        if cur.kind not in ("list", "items"):
            return None
        item = self.var()
        tests = self.tests(criteria, _Value(item, "struct", cur.path))
        if tests is None:
            return None
        leaves = " AND ".join(f"fp_one({leaf})" for leaf, _, _ in tests)
        leaves = " AND ".join([leaves, *(g for _, _, item_guards in tests for g in item_guards)])
        guards.append(f"coalesce(list_bool_and(list_transform({cur.sql}, lambda {item}: {item} IS NULL OR ({leaves}))), true)")
        test = " AND ".join(f"coalesce({leaf} = {text}, false)" for leaf, text, _ in tests)
        return _Value(f"list_filter({cur.sql}, lambda {item}: {item} IS NOT NULL AND {test})", "items", cur.path)

    def tests(self, n: dict, item: _Value) -> list[tuple[str, str, list[str]]] | None:
        """(leaf, SQL text it must equal, guards on the item) of each ``chain = 'text'`` in an ``and`` of them,
        the chain read from the item as :meth:`chain` reads (``code``, ``coding.where(…).first().code``); None
        for other criteria. A JSON leaf is compared by its JSON text; a VARCHAR leaf only with text no other
        JSON value reads as (a number, true, an object … read as VARCHAR would)."""
        if n["type"] == "AndExpression" and n["terminalNodeText"][0] == "and":
            parts = [self.tests(k, item) for k in n["children"]]
            return None if None in parts else [t for p in parts for t in p]  # type: ignore[union-attr]
        found = _equals_text(n, self.raw_constants)
        steps = None if found is None else _steps(found[0])
        cell = None if not steps else self.chain(steps, item)
        if cell is None or cell[0].kind not in ("json", "text"):
            return None
        (leaf, guards), text = cell, found[1]  # type: ignore[index]
        if leaf.kind == "json":
            return [(leaf.sql, _literal(orjson.dumps(text).decode()), guards)]
        return [(leaf.sql, _literal(text), guards)] if _only_text(text) else None

    @staticmethod
    def exists(cur: _Value | None, guards: list[str]) -> Cell | None:
        if cur is None:
            return None
        if cur.kind in ("list", "items"):
            items = cur.sql if cur.kind == "items" else f"list_filter({cur.sql}, lambda e: e IS NOT NULL)"
            return _Value(f"coalesce(len({items}) > 0, false)", "bool"), guards
        if cur.kind in ("json", "text"):
            guards = guards + [f"fp_one({cur.sql})"]
        return _Value(f"({cur.sql} IS NOT NULL)", "bool"), guards

    @staticmethod
    def join(cur: _Value, guards: list[str]) -> Cell | None:
        if cur.kind not in ("json", "text"):
            return None
        text = cur.sql if cur.kind == "text" else f"fp_text({cur.sql})"
        return _Value(f"coalesce({text}, '')", "text"), guards + [f"fp_one({cur.sql})"]


def _only_text(text: str) -> bool:
    """Whether only a JSON string reads into VARCHAR as ``text`` (no number, boolean, null, object or array)."""
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError:
        return not text.startswith(("{", "["))
    return False

def _steps(n: dict) -> list[tuple] | None:
    """A path as a chain of steps (see ``_Compiler.scalar``), or None when it is not one."""
    if n["type"] == "TermExpression":
        term = n["children"][0]
        if term["type"] != "InvocationTerm":
            return None
        step = _step(term["children"][0])
        return None if step is None or step[0] not in ("member",) else [step]
    if n["type"] != "InvocationExpression":
        return None
    left = _steps(n["children"][0])
    step = _step(n["children"][1])
    if left is None or step is None:
        return None
    if step[0] == "ofType":
        if left[-1][0] != "member" or len(left[-1]) > 2:
            return None
        return left[:-1] + [("choice", left[-1][1], step[1])]
    return left + [step]


def _union_exists(n: dict) -> list[str] | None:
    """The member names of ``(a | b | …).exists()``, or None for any other path."""
    if n["type"] != "InvocationExpression" or _step(n["children"][1]) != ("exists",):
        return None
    term = n["children"][0]
    if term["type"] != "TermExpression" or term["children"][0]["type"] != "ParenthesizedTerm":
        return None

    def names(u: dict) -> list[str] | None:
        if u["type"] == "UnionExpression":
            left, right = (names(k) for k in u["children"])
            return None if left is None or right is None else left + right
        steps = _steps(u)
        return [steps[0][1]] if steps and len(steps) == 1 and len(steps[0]) == 2 and steps[0][0] == "member" else None
    found = names(term["children"][0]["children"][0])
    return found if found and len(found) > 1 else None


def _member_equals_text(n: dict, constants: dict[str, Any]) -> tuple[str, str] | None:
    """(member, text) for ``member = 'text'`` or ``member = %constant`` holding a string, else None."""
    found = _equals_text(n, constants)
    left = None if found is None else _steps(found[0])
    if not left or len(left) != 1 or len(left[0]) != 2 or left[0][0] != "member":
        return None
    return left[0][1], found[1]  # type: ignore[index]


def _equals_text(n: dict, constants: dict[str, Any]) -> tuple[dict, str] | None:
    """(left expression, text) for ``left = 'text'`` or ``left = %constant`` holding a string, else None."""
    if n["type"] != "EqualityExpression" or n["terminalNodeText"][0] != "=":
        return None
    right = n["children"][1]
    if right["type"] != "TermExpression":
        return None
    term = right["children"][0]
    if term["type"] == "LiteralTerm" and term["children"][0]["type"] == "StringLiteral":
        return n["children"][0], _unescape(term["children"][0]["text"][1:-1])
    if term["type"] == "ExternalConstantTerm":
        value = constants.get(_identifier(term["children"][0]["children"][0]))
        return (n["children"][0], value) if isinstance(value, str) else None
    return None


def _step(invocation: dict) -> tuple | None:
    if invocation["type"] == "MemberInvocation":
        return ("member", _identifier(invocation["children"][0]))
    if invocation["type"] != "FunctionInvocation":
        return None
    name, params = _function_name(invocation), _params(invocation)
    if name == "getResourceKey" and not params:
        return ("member", "id", "key")  # read as the member id, but no choice element: ofType() applies to it
    if name in ("first", "exists") and not params:
        return (name,)
    if name == "where" and len(params) == 1:
        return ("where", params[0])
    if name == "ofType" and len(params) == 1:
        return ("ofType", _type_name(invocation))
    if name == "join" and (not params or (len(params) == 1 and params[0]["type"] == "TermExpression"
                                          and params[0]["children"][0]["type"] == "LiteralTerm")):
        return ("join",)
    return None


def _identifier(n: dict) -> str:
    text = n["terminalNodeText"][0] if n.get("terminalNodeText") else n["text"]
    return text[1:-1] if text.startswith("`") else text


def _function_name(invocation: dict) -> str:
    return _identifier(invocation["children"][0]["children"][0])


def _params(invocation: dict) -> list[dict]:
    kids = invocation["children"][0]["children"]
    return kids[1]["children"] if len(kids) > 1 else []


def _type_name(invocation: dict) -> str:
    """The type argument of ofType(T)/getReferenceKey(T), without a ``FHIR.`` namespace."""
    params = _params(invocation)
    if not params:
        raise InputError(f"{_function_name(invocation)}() needs a type name")
    text = params[0].get("text") or ""
    return text.rsplit(".", 1)[-1].strip("`")


def _last_member(left: dict) -> tuple[dict | None, str] | None:
    """(base, name) when ``left`` ends with a member name: ``name`` alone (base None) or ``base.name``."""
    if left["type"] == "TermExpression":
        term = left["children"][0]
        if term["type"] == "InvocationTerm" and term["children"][0]["type"] == "MemberInvocation":
            return None, _identifier(term["children"][0]["children"][0])
        return None
    if left["type"] == "InvocationExpression" and left["children"][1]["type"] == "MemberInvocation":
        return left["children"][0], _identifier(left["children"][1]["children"][0])
    return None


_ESCAPES = {"'": "'", '"': '"', "`": "`", "\\": "\\", "/": "/", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def _unescape(text: str) -> str:
    return re.sub(r"\\(u[0-9a-fA-F]{4}|.)",
                  lambda m: chr(int(m.group(1)[1:], 16)) if len(m.group(1)) == 5 else _ESCAPES.get(m.group(1), m.group(1)),
                  text)

