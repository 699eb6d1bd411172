"""The analysis frame with Spark computing the shipped views: ``analyze --engine spark``.

The four shipped ViewDefinitions (patients, subjects, visits, observations) are run by the Spark
engine over the store's NDJSON files, each row with its resource's line number; the view tables
are collected to Arrow and joined with DuckDB by exactly the SQL of :mod:`engine_frame` (the
same checks in the same order), so the frame and the Account are those of ``--engine duckdb``
and ``--engine python``. The views are the scale-out part; the join works on their (much
smaller) flat tables on the driver.
"""

from __future__ import annotations

from collections.abc import Collection

import pandas as pd
import pyarrow as pa

from ..account import Account
from ..errors import InputError
from ..fhir.unmapping import ResourceSource
from ..store.ndjson import Store
from ..study.definition import Study
from . import engine_frame
from .derived import add_derived, visits_needed
from .views.definition import load_view
from .views.duckdb_engine import connect
from .views.python_engine import arrow_schema
from .views.tables import shipped_view


def frame_and_account(study: Study, source: ResourceSource, visits: Collection[str] | None = None,
                      master: str | None = None) -> tuple[pd.DataFrame, Account]:
    """The frame and Observations' account of :func:`engine_frame.frame_and_account`, the views run by Spark."""
    from .views.spark_engine import run_view_on_paths, spark_session

    if visits is not None:
        unknown = [code for code in visits if code not in study.visit_by_code]
        if unknown:
            raise InputError(f"unknown visit {', '.join(unknown)}: use one of {', '.join(study.visit_by_code)}")
    visits = visits_needed(study, visits)
    session = spark_session(master)
    with engine_frame._as_store(source) as store, connect() as con:
        for name, resource_type in engine_frame.VIEWS.items():
            view = load_view(shipped_view(name, study))
            held = store.current_file(resource_type)
            table = (run_view_on_paths(session, view, [str(held)], ordinal=engine_frame.LINE) if held is not None
                     else pa.schema([*arrow_schema(view), pa.field(engine_frame.LINE, pa.int64())]).empty_table())
            con.register(f"{name}_rows", table)
            con.execute(f"CREATE TEMP TABLE {name} AS SELECT * FROM {name}_rows")
            con.unregister(f"{name}_rows")
        lines = isinstance(getattr(source, "store", source), Store)
        con.execute(f"CREATE TEMP TABLE placed AS {engine_frame._placed_sql(study, visits, lines)}")
        return add_derived(study, engine_frame._frame(study, con)), engine_frame._account(con)
