"""Read-only SQL over views: DuckDB with each view's table registered by its name, and nothing else reachable.

The views are computed first (by the DuckDB engine, over the store's NDJSON files) into tables of
an in-memory database; then the connection is shut off from everything outside it
(``enable_external_access = false``, which stops file readers, COPY, ATTACH and extension
loading, with the configuration locked so no query can turn it back on), and only one SELECT
statement is run. DuckDB spills to a temporary directory of its own, never to the store.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Mapping

import duckdb
import pyarrow as pa

from ...errors import BadUsage, InputError
from ...store.ndjson import Store
from . import duckdb_engine
from .definition import ViewDefinition
from .tables import duckdb_table


def query(text: str, views: Mapping[str, ViewDefinition], store: Store) -> pa.Table:
    """The result of one SELECT statement over the views' tables (named by the keys of ``views``).

    Only the views whose names the query mentions are computed.

    BadUsage for anything but a single SELECT (COPY, ATTACH, INSTALL, LOAD, SET, CREATE, …);
    InputError, in one line, for a query DuckDB cannot run.
    """
    with tempfile.TemporaryDirectory(prefix="fhir-msc-sql-") as spill, duckdb_engine.connect() as con:
        _check_statements(con, text)
        con.execute(f"SET temp_directory = '{spill.replace(chr(39), chr(39) * 2)}'")
        for name, view in views.items():
            if not re.search(rf"\b{re.escape(name)}\b", text, re.IGNORECASE):
                continue  # a view the query does not name is not computed
            table = duckdb_table(view, store)
            con.register("fhir_msc_view", table)
            con.execute(f'CREATE TABLE "{name}" AS SELECT * FROM fhir_msc_view')
            con.unregister("fhir_msc_view")
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        try:
            return con.sql(text).to_arrow_table()
        except duckdb.Error as error:
            raise InputError(f"the query cannot be run: {_first_line(error)}") from None


def _check_statements(con: duckdb.DuckDBPyConnection, text: str) -> None:
    try:
        statements = con.extract_statements(text)
    except duckdb.Error as error:
        raise InputError(f"the query is not SQL DuckDB reads: {_first_line(error)}") from None
    if len(statements) != 1:
        raise BadUsage(f"give one SELECT statement, not {len(statements)}")
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        raise BadUsage(f"only a SELECT statement is run, not {kind.name}: the store and the files around it are "
                       "read-only here (to write a view's table, use `fhir-msc export`)")


def _first_line(error: duckdb.Error) -> str:
    return str(error).strip().splitlines()[0]
