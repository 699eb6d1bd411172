"""A view's Arrow table written as Parquet, CSV or NDJSON (chosen by the file's suffix), owner-only."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from ...errors import BadUsage
from ...store.files import private_open

FORMATS = (".parquet", ".csv", ".ndjson")


def output_format(out: Path) -> str:
    """The format of an output file by its suffix; BadUsage for any other."""
    suffix = out.suffix.lower()
    if suffix not in FORMATS:
        raise BadUsage(f"--out {out}: name a file ending in {', '.join(FORMATS)} (the suffix picks the format)")
    return suffix


def write_table(table: pa.Table, out: Path) -> None:
    """Write the table to ``out``, as :func:`write_batches` writes."""
    write_batches(table.to_batches(), table.schema, out)


def write_batches(batches: Iterable[pa.RecordBatch], schema: pa.Schema, out: Path) -> int:
    """Write the batches (cast to ``schema``) to ``out`` one by one, through a temporary file beside it, then
    renamed: never half-written, never held whole. Returns the rows written.

    CSV has no lists: collection columns are written as JSON there (see :func:`csv_text`). NDJSON has one JSON
    object per row, with the view's columns in order (see :func:`ndjson_line`).
    """
    suffix = output_format(out)
    partial = out.with_name(f".{out.name}.partial")
    rows = 0
    try:
        with private_open(partial, "wb") as handle:
            if suffix == ".parquet":
                with pq.ParquetWriter(handle, schema) as writer:
                    for batch in batches:
                        writer.write_batch(batch.cast(schema))
                        rows += batch.num_rows
            elif suffix == ".csv":
                with pa_csv.CSVWriter(handle, _collections_as_json(schema.empty_table()).schema) as writer:
                    for batch in batches:
                        writer.write_table(_collections_as_json(pa.Table.from_batches([batch.cast(schema)])))
                        rows += batch.num_rows
            else:
                for batch in batches:
                    for row in batch.cast(schema).to_pylist():
                        handle.write(ndjson_line(row).encode() + b"\n")
                    rows += batch.num_rows
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return rows


def csv_text(table: pa.Table) -> str:
    """The table as the CSV :func:`write_batches` writes: a header line, text quoted, ``true``/``false``, and each
    list or object (a struct or map column) as JSON."""
    sink = pa.BufferOutputStream()
    pa_csv.write_csv(_collections_as_json(table), sink)
    return sink.getvalue().to_pybytes().decode("utf-8")


def ndjson_line(row: dict[str, Any]) -> str:
    """One row as a line of NDJSON: a decimal written as the shortest number that reads back as its value, so a whole
    one without a fraction (``5``, as JSON and the SQL-on-FHIR test suite write it, and as the CSV writer does;
    never ``5.0``): ``json.dumps`` would write a Python float 5.0 as ``5.0``."""
    return json.dumps({name: _json_number(value) for name, value in row.items()}, ensure_ascii=False,
                      separators=(",", ":"))


def _json_number(value: Any) -> Any:
    if type(value) is float and value.is_integer() and abs(value) < 2**53:  # every whole double below 2**53 is exact
        return int(value)
    if type(value) is list:
        return [_json_number(item) for item in value]
    if type(value) is dict:
        return {key: _json_number(item) for key, item in value.items()}
    return value


def _collections_as_json(table: pa.Table) -> pa.Table:
    """The table with each list, struct or map column as JSON text (a value JSON has no type for, a date, as text),
    and a column the CSV writer cannot write (an interval) as the text of its values."""
    columns = []
    for column in table.columns:
        if pa.types.is_nested(column.type):
            column = pa.array([None if v is None else json.dumps(_json_number(v), default=str)
                               for v in column.to_pylist()], pa.string())
        elif not _castable_to_text(column.type):
            column = pa.array([None if v is None else str(v) for v in column.to_pylist()], pa.string())
        columns.append(column)
    return pa.Table.from_arrays(columns, names=table.column_names)


def _castable_to_text(kind: pa.DataType) -> bool:
    try:
        pa.array([], kind).cast(pa.string())
    except pa.ArrowNotImplementedError:
        return False
    return True
