"""The scale-out engine: a ViewDefinition over NDJSON files with PySpark, each partition flattened by DuckDB.

Spark reads the NDJSON text files (any path or glob Spark reads: local directories, ``hdfs://``,
``s3a://`` with the cluster's connectors) and hands each partition's lines, as Arrow batches
(``mapInArrow``), to a Python worker. The worker writes the lines holding a resource of the view's
type into an owner-only temporary NDJSON file and runs the view's DuckDB query over it
(``duckdb_engine.compile_view``, the query of ``--engine duckdb``), so every engine gives the same
rows. A view DuckDB does not translate (a FHIRPath function or operator it lacks) is applied to each
resource of the partition by the reference engine (``python_engine.CompiledView``) instead.

``run_view_on_paths`` collects the rows to Arrow for the same contract as
``python_engine.run_view``; ``view_dataframe`` keeps them in Spark for work that stays there. The
workers need fhir-msc, DuckDB and PyArrow installed (on a cluster: on every executor).

The session is local (``local[*]``) unless a master URL is given; it binds to 127.0.0.1, has its
web UI off, and downloads no packages. Spark needs Java (17 or 21 for Spark 4). The JVM's output (its
log, and the Python workers' it starts) goes to an owner-only temporary file, not to this process's
stderr, unless fhir-msc logs (``--verbose``): an error in a partition reaches the user as the one line
of the view's own error.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ...errors import BadUsage, InputError, ViewDefinitionError
from ...store.files import private_open
from ...store.ndjson import SUFFIX, Store
from .definition import ViewDefinition, load_view
from .duckdb_engine import compile_view, connect, run_view
from .output import write_batches
from .python_engine import CompiledView, ViewRun, arrow_schema, rows_to_table
from .tables import conformed, resources_kept

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

T_ = TypeVar("T_")
log = logging.getLogger(__name__)
_ERROR = re.compile(r"(ViewDefinitionError|InputError): (.*)")
PARTITION_LINES = 2**32  # ordinal = partition number × this + the line's number in its partition
# Each line of a partition: its resource type (kind), or why it holds no resource (skip); blank lines neither.
# The type is read by one JSON parse; only a line without one is checked further.
_BLANK = "trim(value, E' \\t\\r\\n') = ''"
_OBJECT = "starts_with(ltrim(value, E' \\t\\r\\n'), '{')"
_KINDS = f"""
SELECT CASE WHEN kind IS NOT NULL THEN kind WHEN {_BLANK} OR NOT json_valid(value) OR NOT {_OBJECT} THEN NULL
            ELSE 'None' END AS kind,
       CASE WHEN kind IS NOT NULL OR {_BLANK} THEN NULL WHEN NOT json_valid(value) THEN 'not JSON'
            WHEN NOT {_OBJECT} THEN 'not a resource' END AS skip
FROM (SELECT value, try(value ->> 'resourceType') AS kind FROM lines)"""


class EngineUnavailable(BadUsage):
    """The engine asked for cannot run here (a package or Java is missing); the message says what to install."""


def spark_session(master: str | None = None) -> SparkSession:
    """A Spark session on loopback, UI off, no package downloads: the running one, or one on ``master`` (local[*]).

    A running session of this process on another master than ``master`` is stopped first.
    """
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
    log_config = files("fhir_msc.analysis.views").joinpath("log4j2.properties")
    builder = builder.config("spark.driver.extraJavaOptions", f"-Dlog4j2.configurationFile=file:{log_config}")
    if master is None or master.startswith("local"):
        builder = builder.config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # every service of a local session on loopback
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # local workers: this interpreter and its packages
    with _jvm_output(shown=log.isEnabledFor(logging.INFO)) as jvm_said:
        try:
            session = builder.getOrCreate()
            if master is not None and session.sparkContext.master != master:
                session.stop()
                session = builder.getOrCreate()
        except Exception as error:  # noqa: BLE001 (the JVM did not start: Java missing or too old, or no such master)
            said = jvm_said()
            raise EngineUnavailable(f"Spark did not start ({str(error).splitlines()[0][:200]}"
                                    f"{f'; the JVM said: {said[:200]}' if said else ''}); check Java 17/21 "
                                    "and --spark-master") from None
    session.sparkContext.setLogLevel("ERROR")
    return session


@contextmanager
def _jvm_output(shown: bool) -> Iterator[Callable[[], str]]:
    """While a JVM may be started: its stdout and stderr (inherited for its life, and by the Python workers it
    starts) go to an owner-only temporary file unless ``shown``; yields what gives the file's last line."""
    if shown:
        yield lambda: ""
        return
    sys.stdout.flush()
    sys.stderr.flush()
    with tempfile.TemporaryFile(prefix="fhir-msc-spark-") as held:
        saved = [os.dup(1), os.dup(2)]
        try:
            os.dup2(held.fileno(), 1)
            os.dup2(held.fileno(), 2)
            yield lambda: next((line for line in reversed(_read_from_start(held).splitlines()) if line.strip()), "")
        finally:
            for fd, copy in zip((1, 2), saved):
                os.dup2(copy, fd)
                os.close(copy)


def _read_from_start(held) -> str:
    held.seek(0)
    return held.read().decode("utf-8", "replace")


def spark_schema(view: ViewDefinition):
    """The view's columns as a Spark StructType (the Arrow types of python_engine.arrow_schema)."""
    from pyspark.sql import types as T

    def spark_type(arrow: pa.DataType):
        if pa.types.is_list(arrow):
            return T.ArrayType(spark_type(arrow.value_type), containsNull=True)
        return {pa.bool_(): T.BooleanType(), pa.int32(): T.IntegerType(), pa.int64(): T.LongType(),
                pa.float64(): T.DoubleType()}.get(arrow, T.StringType())

    return T.StructType([T.StructField(f.name, spark_type(f.type), nullable=True) for f in arrow_schema(view)])


@dataclass(frozen=True)
class RowFilter:
    """Which rows of each partition's view table to keep (``keep(table)``: a boolean mask); the others are skipped as ``reason``."""

    reason: str
    keep: Callable[[pa.Table], pa.Array]


@dataclass(frozen=True)
class Partition:
    """One partition's view rows, resources read per type, and lines or resources skipped by reason."""

    table: pa.Table
    read: dict[str, int]
    skipped: dict[str, int]


def partition_rows(view: ViewDefinition, batches: Iterable[pa.RecordBatch], *, first: int = 0,
                   ordinal: str | None = None, keep: RowFilter | None = None, by_duckdb: bool = True) -> Partition:
    """The view over one partition's NDJSON lines (the first column of ``batches``), by DuckDB or the reference engine.

    ``ordinal`` names an extra last column: ``first`` + each row's resource's line number in the partition (from 1).
    """
    found = (_by_duckdb if by_duckdb else _by_reference)(view, batches, first, ordinal)
    if keep is None:
        return found
    mask = pc.fill_null(keep.keep(found.table), False)
    left_out = len(mask) - pc.sum(mask).as_py() if len(mask) else 0
    skipped = {**found.skipped, keep.reason: found.skipped.get(keep.reason, 0) + left_out} if left_out else found.skipped
    return Partition(found.table.filter(mask), found.read, skipped)


def _by_duckdb(view: ViewDefinition, batches: Iterable[pa.RecordBatch], first: int, ordinal: str | None) -> Partition:
    read: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    places: list[pa.Array] = []  # each line of the temporary file: its line's index in the partition
    seen = 0
    with tempfile.TemporaryDirectory(prefix="fhir-msc-spark-") as tmp, connect(threads=1) as con:
        with private_open(Path(tmp) / f"{view.resource}{SUFFIX}", "wb") as handle:
            for batch in batches:
                lines = batch.column(0)
                con.register("lines", pa.table({"value": lines}))
                kinds = con.sql(_KINDS).to_arrow_table()
                con.unregister("lines")
                for counts, found in ((read, kinds["kind"]), (skipped, kinds["skip"])):
                    counts.update({c["values"]: c["counts"] for c in pc.value_counts(found).to_pylist() if c["values"]})
                mask = pc.fill_null(pc.equal(kinds["kind"], view.resource), False)
                kept = pc.filter(lines, mask).to_pylist()
                if kept:
                    handle.write(("\n".join(kept) + "\n").encode())
                places.append(pc.add(pc.indices_nonzero(mask).cast(pa.int64()), seen))
                seen += len(lines)
        other = sum(n for kind, n in read.items() if kind != view.resource)
        if other:
            skipped[f"not {view.resource}"] += other
        table = _duckdb_rows(view, Store(tmp), con, ordinal)
        if view.json.get("where") and read[view.resource]:
            skipped["where not true"] += read[view.resource] - resources_kept(view, Store(tmp), con)
    if ordinal:
        index = pc.subtract(table[ordinal], 1)
        lines_at = pc.take(pa.concat_arrays(places) if places else pa.array([], pa.int64()), index)
        table = table.set_column(table.num_columns - 1, ordinal, pc.add(lines_at, first + 1))
    return Partition(table, dict(read), {reason: n for reason, n in skipped.items() if n})


def _duckdb_rows(view: ViewDefinition, store: Store, con: duckdb.DuckDBPyConnection, ordinal: str | None) -> pa.Table:
    """The view over the store's file of its type by ``duckdb_engine.run_view`` (``ordinal``: the file's line numbers)."""
    table = run_view(dict(view.json), store, connection=con, ordinal=ordinal)
    rows = conformed(table, view)
    return rows.append_column(ordinal, table[ordinal].cast(pa.int64())) if ordinal else rows


def _by_reference(view: ViewDefinition, batches: Iterable[pa.RecordBatch], first: int, ordinal: str | None) -> Partition:
    compiled = CompiledView(view)
    read: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    rows: list[tuple] = []
    number = first
    for batch in batches:
        for line in batch.column(0).to_pylist():
            number += 1
            if not line.strip():
                continue
            try:
                resource = json.loads(line)
            except ValueError:
                skipped["not JSON"] += 1
                continue
            if not isinstance(resource, dict):
                skipped["not a resource"] += 1
                continue
            read[str(resource.get("resourceType"))] += 1
            reason = compiled.kept(resource)
            if reason is not None:
                skipped[f"not {view.resource}" if reason == "type" else "where not true"] += 1
                continue
            rows.extend((*values, number) for values in compiled.rows(resource, checked=True))
    table = rows_to_table(view, rows)
    if ordinal:
        table = table.append_column(ordinal, pa.array([row[-1] for row in rows], pa.int64()))
    return Partition(table, dict(read), dict(skipped))


def duckdb_translates(view: ViewDefinition) -> bool:
    """Whether DuckDB compiles the view (else the partitions apply the reference engine)."""
    with tempfile.TemporaryDirectory(prefix="fhir-msc-spark-") as empty:
        try:
            compile_view(dict(view.json), Store(empty))
        except InputError:
            return False
    return True


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


def view_dataframe(session: SparkSession, view: ViewDefinition | Mapping[str, Any], lines: DataFrame,
                   ordinal: str | None = None, keep: RowFilter | None = None) -> tuple[DataFrame, SparkCounts]:
    """The view over a DataFrame of NDJSON lines (its first column), as a Spark DataFrame with the view's schema.

    ``ordinal`` names an extra last column (not in the view), increasing with each resource's line
    in the input: partition number × ``PARTITION_LINES`` + the line's number in its partition (a
    single file's partitions are its splits in order). ``keep`` leaves rows out in the partitions.
    """
    checked = view if isinstance(view, ViewDefinition) else load_view(view)
    source, by_duckdb = dict(checked.json), duckdb_translates(checked)
    counts = SparkCounts(session)
    read, skipped = counts.read, counts.skipped

    def partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        first = TaskContext.get().partitionId() * PARTITION_LINES
        found = partition_rows(load_view(source), batches, first=first, ordinal=ordinal, keep=keep, by_duckdb=by_duckdb)
        read.add(found.read)
        skipped.add(found.skipped)
        yield from found.table.to_batches()

    schema = spark_schema(checked)
    if ordinal:
        from pyspark.sql import types as T

        schema = schema.add(T.StructField(ordinal, T.LongType(), nullable=False))
    return lines.mapInArrow(partition, schema), counts


def _collected(frame: DataFrame, counts: SparkCounts, view: ViewDefinition, run: ViewRun | None) -> pa.Table:
    table = _in_spark(frame.toArrow)
    if run is not None:
        counts.into(run, table.num_rows)
    schema = arrow_schema(view)
    extra = [pa.field(name, pa.int64()) for name in table.column_names[len(schema):]]  # the ordinal, if asked for
    return table.cast(pa.schema([*schema, *extra]))


def run_view_on_paths(session: SparkSession, view: ViewDefinition | Mapping[str, Any], paths: list[str],
                      run: ViewRun | None = None, ordinal: str | None = None, keep: RowFilter | None = None) -> pa.Table:
    """The view over NDJSON files (paths or globs Spark reads), collected to an Arrow table (see view_dataframe)."""
    checked = view if isinstance(view, ViewDefinition) else load_view(view)
    frame, counts = view_dataframe(session, checked, _lines(session, checked, paths), ordinal, keep)
    return _collected(frame, counts, checked, run)


def write_view_on_paths(session: SparkSession, view: ViewDefinition | Mapping[str, Any], paths: list[str], out: Path,
                        run: ViewRun | None = None) -> int:
    """The view over NDJSON files written to ``out`` (Parquet, CSV or NDJSON by its suffix) without collecting
    it to the driver: Spark writes Parquet parts into an owner-only temporary directory of this machine
    (so a local master only), streamed into ``out`` in partition order. Returns the rows written."""
    checked = view if isinstance(view, ViewDefinition) else load_view(view)
    frame, counts = view_dataframe(session, checked, _lines(session, checked, paths))
    with tempfile.TemporaryDirectory(prefix="fhir-msc-spark-") as tmp:
        parts = Path(tmp) / "parts"
        _in_spark(lambda: frame.write.parquet(str(parts)))
        files = sorted(parts.glob("part-*.parquet"))
        rows = write_batches((b for part in files for b in pq.ParquetFile(part).iter_batches()), arrow_schema(checked), out)
    if run is not None:
        counts.into(run, rows)
    return rows


def _lines(session: SparkSession, view: ViewDefinition, paths: list[str]) -> DataFrame:
    """The NDJSON files' lines as a DataFrame (InputError when there are none or Spark cannot read them)."""
    from pyspark.errors import AnalysisException

    if not paths:
        raise InputError(f"no NDJSON files to read for {view.resource}")
    try:
        return session.read.text(paths)
    except AnalysisException as error:
        raise InputError(f"{', '.join(paths)}: Spark cannot read it ({str(error).splitlines()[0][:200]})") from None


def _in_spark(action: Callable[[], T_]) -> T_:
    """``action()``, an error in a partition (wrapped in Spark's exception) raised as the view's own error."""
    try:
        return action()
    except Exception as error:  # noqa: BLE001 (Spark wraps the partition's exception in its own)
        found = _ERROR.search(str(error))
        if found:
            raise (ViewDefinitionError if found.group(1) == "ViewDefinitionError" else InputError)(
                found.group(2).strip()) from None
        raise


def run_view_on_resources(session: SparkSession, view: ViewDefinition | Mapping[str, Any],
                          resources: Iterable[Mapping[str, Any]], run: ViewRun | None = None) -> pa.Table:
    """The view over resources held in the driver (e.g. pulled from a server), run in Spark."""
    checked = view if isinstance(view, ViewDefinition) else load_view(view)
    lines = session.createDataFrame(pa.table({"value": pa.array([json.dumps(r) for r in resources], pa.string())}))
    frame, counts = view_dataframe(session, checked, lines)
    return _collected(frame, counts, checked, run)
