"""fhir-msc's own view cases (tests/analysis/views/cases/*.json, in the official SQL-on-FHIR test format) on every engine.

Each case is one behaviour, run on every engine (python, the reference; duckdb; spark), and each
engine's table must be identical to the reference engine's (schema and rows). A case passes as in the official suite's runner: the rows equal
``expect`` in any order, the column names equal ``expectColumns`` in order, or the view is refused
(``expectError``) with a ViewDefinitionError. Rows are compared exactly, as JSON text: each row as
``view run`` writes it in NDJSON (``output.ndjson_line``) against the expected row as the case writes
it, so true is not 1, "1" is not 1, and a decimal 5 written 5.0 is not 5. Add an engine by adding
it to ENGINES and to ``_runner``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fhir_msc.analysis.views.definition import load_view
from fhir_msc.analysis.views.output import ndjson_line
from fhir_msc.analysis.views.python_engine import arrow_schema, run_view
from fhir_msc.errors import InputError, ViewDefinitionError

CASES = Path(__file__).parent / "cases"
ENGINES = ["python", "duckdb", "spark"]


def _runner(engine: str, request):
    if engine == "python":
        return lambda view, resources: run_view(view, resources)
    if engine == "duckdb":
        from fhir_msc.analysis.views.tables import duckdb_table, spooled

        def duckdb_run(view, resources):
            with spooled(resources) as store:
                return duckdb_table(load_view(view), store)
        return duckdb_run
    if engine == "spark":
        from fhir_msc.analysis.views.spark_engine import run_view_on_resources, spark_session

        request.getfixturevalue("spark")
        return lambda view, resources: run_view_on_resources(spark_session(), view, resources)
    raise AssertionError(f"no runner for engine {engine}")


def _cases() -> list[tuple[str, dict, list[dict]]]:
    cases = []
    for path in sorted(CASES.glob("*.json")):
        suite = json.loads(path.read_text(encoding="utf-8"))
        cases.extend((f"{path.name}: {test['title']}", test, suite["resources"]) for test in suite["tests"])
    return cases


def _key(row: dict) -> str:
    return json.dumps(row, sort_keys=True)


def _written(table) -> list[str]:
    """The table's rows as ``view run`` writes them in NDJSON, each as a key to compare."""
    return sorted(_key(json.loads(ndjson_line(row))) for row in table.to_pylist())


def _failure(run, test: dict, resources: list[dict]) -> str | None:
    try:
        table = run(test["view"], resources)
    except (ViewDefinitionError, InputError) as error:  # DuckDB meets a bad row in its query: InputError
        return None if test.get("expectError") else f"refused: {error}"
    if test.get("expectError"):
        return "ran, but should have been refused"
    reference = run_view(test["view"], resources)
    if table.schema != reference.schema or table.schema != arrow_schema(load_view(test["view"])):
        return f"schema {table.schema} is not the view's and the reference engine's {reference.schema}"
    got = _written(table)
    if got != _written(reference):  # identical tables: the reference engine's rows
        return f"rows {got}, the reference engine's {_written(reference)}"
    if "expectColumns" in test:
        return None if table.column_names == test["expectColumns"] else f"columns {table.column_names}"
    want = sorted(map(_key, test["expect"]))
    return None if got == want else f"rows {got}, expected {want}"


def test_there_are_cases_of_every_kind():
    tests = [test for _, test, _ in _cases()]
    assert len(tests) >= 30
    assert {kind for test in tests for kind in ("expect", "expectError", "expectColumns") if kind in test} == {
        "expect", "expectError", "expectColumns"}


@pytest.mark.parametrize("engine", ENGINES)
def test_view_cases(engine, request):
    run = _runner(engine, request)
    failures = [f"{name}: {why}" for name, test, resources in _cases()
                if (why := _failure(run, test, resources)) is not None]
    assert failures == []
