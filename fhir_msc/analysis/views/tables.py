"""Views as tables, the same from every engine: the shipped analysis views, DuckDB's result in the reference schema, spooling.

Every engine gives a view's rows as an Arrow table in ``python_engine.arrow_schema(view)``: the
FHIR type mapping is one (``python_engine.ARROW_TYPES``), and an untyped column is text
(``python_engine.as_text``), so the python, duckdb and spark engines give identical tables.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from importlib.resources import files
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow as pa

from ...errors import BadUsage
from ...store.files import private_open
from ...store.ndjson import SUFFIX, Store
from ...study.definition import Study
from . import duckdb_engine
from .definition import ViewDefinition, load_view
from .python_engine import ViewRun, arrow_schema, as_text

SHIPPED = ("patients", "subjects", "visits", "observations", "adverse_events")  # the analysis views shipped in this package


def shipped_view(name: str, study: Study) -> dict:
    """A shipped analysis view with the study's constants (its study CodeSystem, subject and visit identifier
    systems, and the code of its unscheduled visits: UNSCHEDULED when it declares none)."""
    view = json.loads(files("fhir_msc.analysis.views").joinpath(f"{name}.json").read_text(encoding="utf-8"))
    values = {"studyCodeSystem": study.study.codesystem, "subjectSystem": study.system("subject"),
              "visitSystem": study.system("visit"),
              "unscheduledCode": study.unscheduled.code if study.unscheduled else "UNSCHEDULED"}
    constants = [{"name": c["name"], kind: values[c["name"]]} for c in view.get("constant", [])
                 for kind in c if kind.startswith("value")]
    return {**view, "constant": constants}


def conformed(table: pa.Table, view: ViewDefinition) -> pa.Table:
    """DuckDB's table of ``view`` in the reference schema: untyped columns as text, types as ARROW_TYPES."""
    schema = arrow_schema(view)
    arrays = []
    for column, field in zip(view.columns, schema):
        array = table[column.name]
        if column.type is None:
            shape = (lambda v: [None if x is None else as_text(x) for x in v]) if column.collection else \
                (lambda v: None if v is None else as_text(v))
            array = pa.array([None if v is None else shape(v) for v in array.to_pylist()], field.type)
        arrays.append(array.cast(field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def duckdb_table(view: ViewDefinition, store: Store, run: ViewRun | None = None) -> pa.Table:
    """The view over the store's file of its resource type, by DuckDB, counted like the other engines.

    ``run`` receives the resources read (the file's lines) and those the view's ``where`` left out.
    """
    table = conformed(duckdb_engine.run_view(dict(view.json), store), view)
    if run is not None:
        held = _resources_held(store, view.resource)
        if held:
            run.read[view.resource] = run.read.get(view.resource, 0) + held
            kept = resources_kept(view, store) if view.json.get("where") else held
            if held > kept:
                run.skipped["where not true"] = run.skipped.get("where not true", 0) + held - kept
        run.rows = table.num_rows
    return table


def _resources_held(store: Store, resource_type: str) -> int:
    """The lines holding something in the store's file of one type (as ``Store.counts``, that file only)."""
    path = store.current_file(resource_type)
    if path is None:
        return 0
    with path.open("rb") as handle:
        return sum(1 for line in handle if line.strip())


def resources_kept(view: ViewDefinition, store: Store, connection: duckdb.DuckDBPyConnection | None = None) -> int:
    """Resources of the store that the view's ``where`` keeps (one row each in a view of their id)."""
    keys = {"resource": view.resource, "where": view.json["where"], "constant": view.json.get("constant", []),
            "select": [{"column": [{"name": "key", "path": "getResourceKey()"}]}]}
    return duckdb_engine.run_view(keys, store, connection=connection).num_rows


@contextmanager
def spooled(resources: Iterable[Mapping[str, Any]]) -> Iterator[Store]:
    """The resources in an owner-only temporary store (one NDJSON file per type), removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="fhir-msc-views-") as tmp:
        handles: dict[str, Any] = {}
        try:
            for resource in resources:
                kind = str(resource.get("resourceType"))
                if not kind.isalnum():  # not a file name of a store: no resource of a view's type either
                    continue
                if kind not in handles:
                    handles[kind] = private_open(Path(tmp) / f"{kind}{SUFFIX}", "wb")
                handles[kind].write(orjson.dumps(resource) + b"\n")
        finally:
            for handle in handles.values():
                handle.close()
        yield Store(tmp)


def named_views(study: Study, extra: Iterable[Path | Mapping[str, Any]] = ()) -> dict[str, ViewDefinition]:
    """The shipped analysis views, then the ``extra`` ViewDefinitions, checked, by name (unique, SQL names).

    An extra view needs a ``name`` (the spec's sql-name: letters, digits and _, from a letter)
    that no other view has: it names the view's file and table.
    """
    views = {name: load_view(shipped_view(name, study)) for name in SHIPPED}
    for source in extra:
        view = load_view(source)
        where = f"{source}: " if isinstance(source, Path) else ""
        if not view.name:
            raise BadUsage(f"{where}the ViewDefinition has no name: give it one (it names the table)")
        if view.name.lower() in {name.lower() for name in views}:  # SQL names ignore case
            raise BadUsage(f"{where}a view named {view.name!r} is already there (shipped views: "
                           f"{', '.join(SHIPPED)}): rename it")
        views[view.name] = view
    return views
