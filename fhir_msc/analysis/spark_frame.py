"""The analysis frame with Spark computing the shipped views: ``analyze --engine spark``.

The four shipped ViewDefinitions (patients, subjects, visits, observations) are run by the Spark
engine over the store's NDJSON files, each row with its resource's place in its file; the view
tables are collected to Arrow and joined with DuckDB by exactly the SQL of :mod:`engine_frame` (the
same checks in the same order), so the frame and the Account are those of ``--engine duckdb``
and ``--engine python``. The views are the scale-out part; the join works on their (much
smaller) flat tables on the driver. With a visit selection, the Observations referring plainly
to an Encounter of no visit asked for stay in Spark, only counted (as the prefilter of
``engine_frame`` counts them), so only what the analysis uses reaches the driver.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ..account import Account, by_count
from ..fhir.unmapping import NOT_ASKED, ResourceSource
from ..store.ndjson import Store
from ..study.definition import Study
from . import engine_frame
from .derived import add_derived, visits_needed
from .frame import check_visits
from .views.definition import load_view
from .views.duckdb_engine import connect
from .views.python_engine import ViewRun, arrow_schema
from .views.spark_engine import RowFilter, run_view_on_paths, spark_session
from .views.tables import shipped_view


def frame_and_account(study: Study, source: ResourceSource, visits: Collection[str] | None = None,
                      master: str | None = None) -> tuple[pd.DataFrame, Account]:
    """The frame and Observations' account of :func:`engine_frame.frame_and_account`, the views run by Spark on ``master``."""
    check_visits(study, visits)
    visits = visits_needed(study, visits)
    session = spark_session(master)
    lines = isinstance(getattr(source, "store", source), Store)
    windowed = bool(study.analysis and study.analysis.windows)  # then a finding of any visit may count
    asked_only = visits is not None and lines and not windowed
    unasked = 0
    with engine_frame._as_store(source) as store, connect() as con:
        for name, resource_type in engine_frame.VIEWS.items():
            view = load_view(shipped_view(name, study))
            held = store.current_file(resource_type)
            keep = _asked(study, visits, con) if name == "observations" and asked_only else None
            run = ViewRun()
            table = (run_view_on_paths(session, view, [str(held)], run, ordinal=engine_frame.LINE, keep=keep)
                     if held is not None
                     else pa.schema([*arrow_schema(view), pa.field(engine_frame.LINE, pa.int64())]).empty_table())
            unasked += run.skipped.get(NOT_ASKED, 0)
            con.register(f"{name}_rows", table)
            con.execute(f"CREATE TEMP TABLE {name} AS SELECT * FROM {name}_rows")
            con.unregister(f"{name}_rows")
            del table
        con.execute(f"CREATE TEMP TABLE placed AS {engine_frame._placed_sql(study, visits, lines)}")
        return add_derived(study, engine_frame._frame(study, con)), _with_unasked(engine_frame._account(con), unasked)


def _asked(study: Study, visits: Collection[str], con: duckdb.DuckDBPyConnection) -> RowFilter:
    """Observations not referring plainly (``Encounter/<id>``) to an Encounter that may be of ``visits`` (in the
    ``visits`` table, made before the observations: ``engine_frame.VIEWS`` order).

    An Encounter with any of the visits' codes among its types may be: a superset of the Encounters
    ``engine_frame``'s prefilter keeps, so what Spark leaves out that prefilter leaves out too.
    """
    codes = [visit.code for visit in study.visits if visit.code in set(visits)]
    wanted = con.sql("SELECT DISTINCT 'Encounter/' || id FROM visits WHERE id IS NOT NULL "
                     "AND list_has_any(type_codes, ?::VARCHAR[])", params=[codes]).to_arrow_table().column(0)
    wanted = wanted.combine_chunks()
    return RowFilter(NOT_ASKED, lambda table: _not_elsewhere(table["encounter"], wanted))


def _not_elsewhere(encounter: pa.ChunkedArray, wanted: pa.Array) -> pa.ChunkedArray:
    elsewhere = pc.and_(pc.starts_with(encounter, "Encounter/"), pc.invert(pc.is_in(encounter, value_set=wanted)))
    return pc.invert(pc.fill_null(elsewhere, False))


def _with_unasked(account: Account, unasked: int) -> Account:
    """``account`` with ``unasked`` more Observations read and skipped as not asked."""
    if not unasked:
        return account
    skipped = {**account.skipped, NOT_ASKED: account.skipped.get(NOT_ASKED, 0) + unasked}
    return dataclasses.replace(account, read=account.read + unasked,
                               skipped=by_count(skipped))
