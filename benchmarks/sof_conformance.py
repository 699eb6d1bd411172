"""The official SQL-on-FHIR v2 test suite, run on fhir-msc's view engines and on fhir4ds as a peer.

Export the suite's JSON files from https://github.com/FHIR/sql-on-fhir-v2 (``tests/*.json``) and run::

    python -m benchmarks.sof_conformance --tests DIR [--engine python|duckdb|spark|fhir4ds]

Each test is passed as the suite's own runner (sof-js ``tests/compliance.test.js``) passes it: the
rows equal the expected ones in any order (``expect``), the column names equal ``expectColumns``
in order, or the view is refused (``expectError``). Rows are compared exactly, as JSON text: each
row as fhir-msc's ``view run`` writes it in NDJSON (``output.ndjson_line``) against the expected
row as the suite writes it, so a decimal 5 written ``5.0`` fails, as would ``true`` for ``1``.
Prints pass/fail per file and the total.

fhir4ds 0.5.1 runs ``INSTALL json`` on every connection, which downloads a DuckDB extension; the
harness hands it a connection on which that statement is skipped (DuckDB's wheels have json built
in), so nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

Runner = Callable[[dict, list[dict]], tuple[list[str], list[dict]]]


def python_runner() -> Runner:
    from fhir_msc.analysis.views.python_engine import run_view

    def run(view: dict, resources: list[dict]) -> tuple[list[str], list[dict]]:
        table = run_view(view, resources)
        return table.column_names, _written(table)

    return run


def duckdb_runner() -> Runner:
    """fhir-msc's DuckDB engine: each test's resources spooled into a temporary store, the table as every engine gives it."""
    from fhir_msc.analysis.views.definition import load_view
    from fhir_msc.analysis.views.tables import duckdb_table, spooled

    def run(view: dict, resources: list[dict]) -> tuple[list[str], list[dict]]:
        with spooled(resources) as store:
            table = duckdb_table(load_view(view), store)
        return table.column_names, _written(table)

    return run


def spark_runner(master: str | None = None) -> Runner:
    from fhir_msc.analysis.views.spark_engine import (
        run_view_on_resources,
        spark_session,
    )

    session = spark_session(master)

    def run(view: dict, resources: list[dict]) -> tuple[list[str], list[dict]]:
        table = run_view_on_resources(session, view, resources)
        return table.column_names, _written(table)

    return run


def _written(table) -> list[dict]:
    """The table's rows as ``view run`` writes them in NDJSON, read back."""
    from fhir_msc.analysis.views.output import ndjson_line

    return [json.loads(ndjson_line(row)) for row in table.to_pylist()]


class _NoInstall:
    """A DuckDB connection on which ``INSTALL …`` statements do nothing (no extension is downloaded)."""

    def __init__(self, connection):
        self._connection = connection

    def execute(self, sql, *args, **kwargs):
        if sql.strip().upper().startswith("INSTALL"):
            sql = ";".join(part for part in sql.split(";") if not part.strip().upper().startswith("INSTALL")) or "SELECT 1"
        return self._connection.execute(sql, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._connection, name)


def fhir4ds_runner() -> Runner:
    import logging

    import duckdb
    from fhir4ds.datastore import FHIRDataStore
    from fhir4ds.dialects import DuckDBDialect

    logging.getLogger("fhir4ds").setLevel(logging.CRITICAL)

    def run(view: dict, resources: list[dict]) -> tuple[list[str], list[dict]]:
        connection = duckdb.connect(":memory:", config={"autoinstall_known_extensions": False,
                                                        "autoload_known_extensions": True})
        store = FHIRDataStore(dialect=DuckDBDialect(connection=_NoInstall(connection)))
        if resources:
            store.load_resources(resources)
        result = store.view_runner().execute_view_definition(view)
        rows = result.fetchall()
        names = [column[0] for column in result.description]
        return names, [dict(zip(names, _decoded(row))) for row in rows]

    return run


def _decoded(row: tuple) -> list:
    """fhir4ds returns some JSON values as JSON text (lists, booleans); decode those as its own tests do."""
    values = []
    for value in row:
        if isinstance(value, str) and value[:1] in "[{" :
            try:
                value = json.loads(value)
            except ValueError:
                pass
        values.append(value)
    return values


def _key(row: dict) -> str:
    return json.dumps(row, sort_keys=True, default=_number)


def _number(value: Any) -> Any:
    """A value of a peer's row that is no JSON type: a DuckDB DECIMAL as the number it holds (its digits, as
    written), anything else (a date) as its text."""
    return json.loads(str(value)) if isinstance(value, Decimal) else str(value)


def passes(run: Runner, test: dict, resources: list[dict]) -> tuple[bool, str]:
    try:
        names, rows = run(test["view"], resources)
    except Exception as error:  # noqa: BLE001 (any refusal passes an expectError test)
        if test.get("expectError"):
            return True, ""
        return False, f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:160]
    if test.get("expectError"):
        return False, "ran, but the view should have been refused"
    if "expectColumns" in test:
        return names == test["expectColumns"], f"columns {names}"
    got = sorted(_key(row) for row in rows)
    want = sorted(_key(row) for row in test["expect"])
    if got == want:
        return True, ""
    return False, f"rows {got[:3]} … expected {want[:3]} …"[:300]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tests", type=Path, required=True, help="Directory of the suite's JSON files.")
    parser.add_argument("--engine", choices=["python", "duckdb", "spark", "fhir4ds"], default="python",
                        help="Engine to run the suite on.")
    parser.add_argument("--spark-master", default=None, help="Spark master URL (default: local).")
    parser.add_argument("-v", "--verbose", action="store_true", help="Print each failing test and why.")
    args = parser.parse_args(argv)
    run = {"python": python_runner, "duckdb": duckdb_runner, "fhir4ds": fhir4ds_runner,
           "spark": lambda: spark_runner(args.spark_master)}[args.engine]()
    total = passed = 0
    for path in sorted(args.tests.glob("*.json")):
        suite = json.loads(path.read_text(encoding="utf-8"))
        file_passed = 0
        for test in suite["tests"]:
            ok, why = passes(run, test, suite.get("resources", []))
            file_passed += ok
            if not ok and args.verbose:
                print(f"  FAIL {path.name} :: {test['title']}: {why}")
        total += len(suite["tests"])
        passed += file_passed
        print(f"{path.name:24} {file_passed:3}/{len(suite['tests']):<3}")
    print(f"{'total (' + args.engine + ')':24} {passed:3}/{total:<3}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
