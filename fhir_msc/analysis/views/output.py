"""A view's Arrow table written as Parquet, CSV or NDJSON (chosen by the file's suffix), owner-only."""

from __future__ import annotations

import json
import os
from pathlib import Path

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
    """Write the table to ``out`` (through a temporary file beside it, then renamed: never half-written).

    CSV has no lists: collection columns are written as JSON arrays there. NDJSON has one JSON
    object per row, with the view's columns in order.
    """
    suffix = output_format(out)
    partial = out.with_name(f".{out.name}.partial")
    try:
        with private_open(partial, "wb") as handle:
            if suffix == ".parquet":
                pq.write_table(table, handle)
            elif suffix == ".csv":
                pa_csv.write_csv(_lists_as_json(table), handle)
            else:
                for row in table.to_pylist():
                    handle.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")).encode() + b"\n")
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)


def _lists_as_json(table: pa.Table) -> pa.Table:
    columns = []
    for column in table.columns:
        if pa.types.is_list(column.type):
            column = pa.array([None if v is None else json.dumps(v) for v in column.to_pylist()], pa.string())
        columns.append(column)
    return pa.Table.from_arrays(columns, names=table.column_names)
