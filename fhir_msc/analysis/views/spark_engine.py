"""The scale-out engine: a ViewDefinition over NDJSON files with PySpark, each line through the reference engine.

Spark reads the NDJSON text files (any path or glob Spark reads: local directories, ``hdfs://``,
``s3a://`` with the cluster's connectors), each partition applies the view with the Python engine's
``CompiledView`` (so both engines give the same rows), and the rows become a Spark DataFrame with
the view's schema. ``run_view_on_paths`` collects it to Arrow for the same contract as
``python_engine.run_view``; ``view_dataframe`` keeps it in Spark for work that stays there.

The session is local (``local[*]``) unless a master URL is given; it binds to 127.0.0.1, has its
web UI off, and downloads no packages. Spark needs Java (17 or 21 for Spark 4).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from ...errors import BadUsage, InputError, ViewDefinitionError
from .definition import ViewDefinition, load_view
from .python_engine import ViewRun, arrow_schema

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

_VIEW_ERROR = re.compile(r"ViewDefinitionError: (.*)")


class EngineUnavailable(BadUsage):
    """The engine asked for cannot run here (a package or Java is missing); the message says what to install."""


def spark_session(master: str | None = None) -> SparkSession:
    """A Spark session on loopback (local[*] unless ``master`` is given), UI off, no package downloads."""
    if not os.environ.get("JAVA_HOME") and shutil.which("java") is None:
        raise EngineUnavailable("--engine spark needs Java 17 or 21 and none was found: install a JDK "
                                "(e.g. `apt-get install openjdk-17-jre-headless`) or set JAVA_HOME")
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise EngineUnavailable("--engine spark needs PySpark: pip install 'fhir-msc[spark]'") from None
    builder = (SparkSession.builder.master(master or "local[*]").appName("fhir-msc")
               .config("spark.ui.enabled", "false")
               .config("spark.ui.showConsoleProgress", "false")
               .config("spark.sql.session.timeZone", "UTC")
               .config("spark.sql.execution.arrow.pyspark.enabled", "true"))
    if master is None or master.startswith("local"):
        builder = builder.config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # local workers: this interpreter and its packages
    try:
        session = builder.getOrCreate()
    except Exception as error:  # noqa: BLE001 (the JVM did not start: Java missing or too old, or no such master)
        raise EngineUnavailable(f"Spark did not start ({str(error).splitlines()[0][:200]}); check Java 17/21 "
                                "and --spark-master") from None
    session.sparkContext.setLogLevel("ERROR")
    return session


def spark_schema(view: ViewDefinition):
    """The view's columns as a Spark StructType (the Arrow types of python_engine.arrow_schema)."""
    from pyspark.sql import types as T

    def spark_type(arrow: pa.DataType):
        if pa.types.is_list(arrow):
            return T.ArrayType(spark_type(arrow.value_type), containsNull=True)
        return {pa.bool_(): T.BooleanType(), pa.int32(): T.IntegerType(), pa.int64(): T.LongType(),
                pa.float64(): T.DoubleType()}.get(arrow, T.StringType())

    return T.StructType([T.StructField(f.name, spark_type(f.type), nullable=True) for f in arrow_schema(view)])


class SparkCounts:
    """Resources read per type and skipped by reason, counted by the partitions (valid once computed)."""

    def __init__(self, session: SparkSession):
        from pyspark.accumulators import AccumulatorParam

        class Counts(AccumulatorParam):
            def zero(self, value):
                return {}

            def addInPlace(self, first, second):
                for key, count in second.items():
                    first[key] = first.get(key, 0) + count
                return first

        self.read = session.sparkContext.accumulator({}, Counts())
        self.skipped = session.sparkContext.accumulator({}, Counts())

    def into(self, run: ViewRun, rows: int) -> None:
        run.read.update(self.read.value)
        run.skipped.update(self.skipped.value)
        run.rows = rows


def view_dataframe(session: SparkSession, view: ViewDefinition | Mapping[str, Any], lines,
                   ordinal: str | None = None) -> tuple[DataFrame, SparkCounts]:
    """The view over an RDD of NDJSON lines, as a Spark DataFrame with the view's schema, and its counts.

    ``ordinal`` names an extra last column (not in the view): each row's resource's line number in
    the RDD, from 1 (as ``duckdb_engine.compile_view`` gives it).
    """
    checked = view if isinstance(view, ViewDefinition) else load_view(view)
    source = dict(checked.json)
    counts = SparkCounts(session)
    read, skipped = counts.read, counts.skipped

    def partition(rows: Iterable[Any]) -> Iterator[tuple]:
        from .python_engine import CompiledView

        compiled = CompiledView(source)
        seen: dict[str, int] = {}
        dropped: dict[str, int] = {}
        for row in rows:
            line, number = row if ordinal else (row, None)
            if not line.strip():
                continue
            try:
                resource = json.loads(line)
            except ValueError:
                dropped["not JSON"] = dropped.get("not JSON", 0) + 1
                continue
            if not isinstance(resource, dict):
                dropped["not a resource"] = dropped.get("not a resource", 0) + 1
                continue
            kind = str(resource.get("resourceType"))
            seen[kind] = seen.get(kind, 0) + 1
            reason = compiled.kept(resource)
            if reason is not None:
                label = f"not {compiled.view.resource}" if reason == "type" else "where not true"
                dropped[label] = dropped.get(label, 0) + 1
                continue
            if ordinal:
                yield from (tuple(values) + (number + 1,) for values in compiled.rows(resource, checked=True))
            else:
                yield from compiled.rows(resource, checked=True)
        read.add(seen)
        skipped.add(dropped)

    schema = spark_schema(checked)
    if ordinal:
        from pyspark.sql import types as T

        schema = schema.add(T.StructField(ordinal, T.LongType(), nullable=False))
        lines = lines.zipWithIndex()
    frame = session.createDataFrame(lines.mapPartitions(partition), schema=schema, verifySchema=False)
    return frame, counts


def _collected(frame: DataFrame, counts: SparkCounts, view: ViewDefinition, run: ViewRun | None) -> pa.Table:
    try:
        table = frame.toArrow()
    except Exception as error:  # an error in a partition comes back wrapped in Spark's exception
        found = _VIEW_ERROR.search(str(error))
        if found:
            raise ViewDefinitionError(found.group(1).strip()) from None
        raise
    if run is not None:
        counts.into(run, table.num_rows)
    schema = arrow_schema(view)
    extra = [pa.field(name, pa.int64()) for name in table.column_names[len(schema):]]  # the ordinal, if asked for
    return table.cast(pa.schema([*schema, *extra]))


def run_view_on_paths(session: SparkSession, view: ViewDefinition | Mapping[str, Any], paths: list[str],
                      run: ViewRun | None = None, ordinal: str | None = None) -> pa.Table:
    """The view over NDJSON files (paths or globs Spark reads), collected to an Arrow table (``ordinal``: see view_dataframe)."""
    checked = view if isinstance(view, ViewDefinition) else load_view(view)
    if not paths:
        raise InputError(f"no NDJSON files to read for {checked.resource}")
    frame, counts = view_dataframe(session, checked, session.sparkContext.textFile(",".join(paths)), ordinal)
    return _collected(frame, counts, checked, run)


def run_view_on_resources(session: SparkSession, view: ViewDefinition | Mapping[str, Any],
                          resources: Iterable[Mapping[str, Any]], run: ViewRun | None = None) -> pa.Table:
    """The view over resources held in the driver (e.g. pulled from a server), run in Spark."""
    checked = view if isinstance(view, ViewDefinition) else load_view(view)
    lines = [json.dumps(resource) for resource in resources]
    lines = session.sparkContext.parallelize(lines, max(1, min(len(lines) // 10_000, session.sparkContext.defaultParallelism)))
    frame, counts = view_dataframe(session, checked, lines)
    return _collected(frame, counts, checked, run)
