"""Trial tables as submitted: SAS XPORT v5 (``.xpt``) and CDISC Dataset-JSON v1.1 (``.json``) beside CSV.

The study names each table as a CSV file (``dm.csv``); :func:`find_table` also accepts
the same table as ``dm.xpt`` or ``dm.json`` in the directory, its name in any case
(``DM.CSV``), exactly one of them. The
format is recognised from the file's first bytes (an XPORT library header, a JSON
object), not trusted from its name. Values come out as the strings a CSV holds: numbers
in their shortest form (``40``, ``0.5``), SAS dates as ISO dates, missing values (``.``,
``.A``-``.Z``, ``null``) as empty strings.

XPORT files are read and written with pyreadstat (ReadStat); Dataset-JSON is plain JSON,
read and written here after the v1.1 specification (``columns`` with ``itemOID``,
``name``, ``label``, ``dataType``; ``rows`` as arrays).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from datetime import date, datetime, time, timezone
from pathlib import Path

import orjson

from ..errors import InputError
from ..store.files import private_open

FORMATS = {"csv": "CSV", "xpt": "SAS XPORT v5", "json": "Dataset-JSON v1.1"}
XPORT_V5 = b"HEADER RECORD*******LIBRARY HEADER RECORD!!!!!!!"
XPORT_V8 = b"HEADER RECORD*******LIBV8 HEADER RECORD!!!!!!!"
DATASET_JSON_VERSION = "1.1.0"
XPORT_NAME, XPORT_LABEL, XPORT_TEXT = 8, 40, 200  # XPORT v5 limits: name and label characters, text bytes
_CHUNK = 50_000  # XPORT records read at a time


class TableFormatError(ValueError):
    """A table file that is not what its name or content says; the message says what to do."""


SUFFIXES = tuple(f".{kind}" for kind in FORMATS)  # of a file that holds a table


def table_names(name: str) -> set[str]:
    """The names (lower case) a file holding the table the study calls ``name`` may have: ``dm.csv``, ``dm.xpt``,
    ``dm.json``, in any case (``DM.CSV``, ``QS.csv``)."""
    stem = Path(name).stem.lower()
    return {name.lower(), *(stem + suffix for suffix in SUFFIXES)}


def find_table(directory: Path, name: str) -> Path:
    """The file holding the table the study calls ``name``: itself, or its ``.xpt`` / ``.json`` twin, in any case.

    The path ``directory / name`` is returned when none exists (so "file not found" names the
    file the study asks for); more than one (``dm.csv`` and ``DM.CSV``, ``dm.csv`` and
    ``dm.xpt``) is an :class:`InputError`.
    """
    names = table_names(name)
    found = sorted(p for p in directory.iterdir() if p.name.lower() in names and p.is_file()) if directory.is_dir() else []
    if len(found) > 1:
        raise InputError(f"{directory}: the table {name} is there {len(found)} times "
                         f"({', '.join(p.name for p in found)}): keep one of them and run again")
    return found[0] if found else directory / name


def other_tables(directory: Path, names: list[str]) -> list[Path]:
    """Files of ``directory`` that look like tables (``.csv``, ``.xpt``, ``.json``) but hold none of ``names``."""
    known = set().union(*map(table_names, names))
    return sorted(p for p in directory.iterdir()
                  if p.suffix.lower() in SUFFIXES and p.name.lower() not in known and p.is_file())


def detect_format(path: Path) -> str:
    """``csv``, ``xpt`` or ``json``, from the file's first bytes; a ``.xpt``/``.json`` name that lies is an error."""
    with open(path, "rb") as handle:
        head = handle.read(80)
    if head.startswith(XPORT_V5):
        return "xpt"
    if head.startswith(XPORT_V8):
        raise TableFormatError("a SAS XPORT version 8 file: fhir-msc reads version 5 transport files "
                               "(the FDA's submission format); export it as XPORT v5")
    suffix = path.suffix.lower()
    if suffix == ".xpt":
        raise TableFormatError("named .xpt but not a SAS XPORT v5 transport file (no library header): "
                               "export it again with SAS XPORT v5, or give the table as CSV")
    if suffix == ".json":
        if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{"):
            return "json"
        raise TableFormatError("named .json but not a JSON object: give a Dataset-JSON v1.1 file, or the table as CSV")
    return "csv"


def number_text(value: float) -> str:
    """A number as a CSV writes it: 40 not 40.0, 0.5, the shortest text that reads back to the same number."""
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _text(value: object) -> str:
    """One value as the string a CSV would hold."""
    if value is None or isinstance(value, str):
        return value or ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "" if math.isnan(value) else number_text(value)
    if isinstance(value, (date, datetime, time)):
        return value.isoformat()
    return str(value)


# --- reading -----------------------------------------------------------------------------------

def read_table(path: Path, fmt: str) -> tuple[list[str], Iterator[list[str]], str]:
    """(column names, rows as strings, how it was read) of an ``xpt`` or ``json`` table."""
    if fmt == "xpt":
        return _read_xport(path)
    return _read_dataset_json(path)


def _read_xport(path: Path) -> tuple[list[str], Iterator[list[str]], str]:
    import pyreadstat  # imported when an XPORT file is read: it loads pandas

    try:
        _, meta = pyreadstat.read_xport(path, metadataonly=True)
    except pyreadstat.ReadstatError as exc:
        raise TableFormatError(f"not readable as SAS XPORT v5 ({exc}): export it again") from None

    def rows() -> Iterator[list[str]]:
        offset = 0
        while True:  # XPORT v5 has no record count: chunks until one comes back empty
            frame, _ = pyreadstat.read_xport(path, row_offset=offset, row_limit=_CHUNK, output_format="dict")
            columns = [frame[c] for c in meta.column_names]
            size = len(columns[0]) if columns else 0
            for index in range(size):
                yield [_text(_plain(column[index])) for column in columns]
            if size < _CHUNK:
                return
            offset += size

    return list(meta.column_names), rows(), f"{FORMATS['xpt']}, dataset {meta.table_name}"


def _plain(value: object) -> object:
    """A numpy scalar as the Python value it holds."""
    return value.item() if hasattr(value, "item") and not isinstance(value, (date, datetime, time)) else value


def _read_dataset_json(path: Path) -> tuple[list[str], Iterator[list[str]], str]:
    try:
        data = orjson.loads(path.read_bytes().removeprefix(b"\xef\xbb\xbf"))
    except orjson.JSONDecodeError as exc:
        raise TableFormatError(f"not valid JSON ({exc}): fix the file or export it again") from None
    version = str(data.get("datasetJSONVersion", "")) if isinstance(data, dict) else ""
    if not version.startswith("1.1"):
        found = f"datasetJSONVersion {version!r}" if version else "no datasetJSONVersion"
        raise TableFormatError(f"not a Dataset-JSON v1.1 file ({found}): export it as Dataset-JSON 1.1")
    columns, rows = data.get("columns"), data.get("rows", [])
    if not isinstance(columns, list) or not all(isinstance(c, dict) and isinstance(c.get("name"), str) for c in columns):
        raise TableFormatError("Dataset-JSON without a 'columns' array of objects with a 'name': export it again")
    if not isinstance(rows, list) or not all(isinstance(r, list) for r in rows):
        raise TableFormatError("Dataset-JSON 'rows' is not an array of arrays: export it again")
    header = [c["name"] for c in columns]
    return header, ([_text(v) for v in row] for row in rows), f"{FORMATS['json']}, dataset {data.get('name', '?')}"


def count_records(path: Path) -> int | None:
    """Data rows of an ``xpt`` or ``json`` table without reading them (for progress); None for CSV, 0 if unreadable."""
    try:
        kind = detect_format(path)
        if kind == "xpt":
            import pyreadstat

            frame, _ = pyreadstat.read_xport(path, output_format="dict")  # v5 headers hold no record count
            return len(next(iter(frame.values()), []))
        if kind == "json":
            return int(orjson.loads(path.read_bytes().removeprefix(b"\xef\xbb\xbf")).get("records", 0))
        return None
    except Exception:  # noqa: BLE001 - a count for the progress bar; the reading itself reports the problem
        return 0


# --- writing -----------------------------------------------------------------------------------

def convert_csv(source: Path, target: Path, *, numeric: set[str], dataset: str) -> int:
    """Write the CSV table ``source`` as ``target`` (``.xpt`` or ``.json``, by its suffix); return its rows.

    Columns in ``numeric`` are written as numbers (empty: missing), the others as text.
    """
    with open(source, encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, [])
        rows = [row for row in reader if "".join(row).strip()]
    write_table(target, header, rows, numeric=numeric, dataset=dataset)
    return len(rows)


def write_table(path: Path, header: list[str], rows: list[list[str]], *, numeric: set[str], dataset: str) -> None:
    """Write a table as SAS XPORT v5 (``.xpt``) or Dataset-JSON v1.1 (``.json``), owner-only."""
    values = [[_number(h, v, path) if h in numeric else v for h, v in zip(header, row)] for row in rows]
    if path.suffix.lower() == ".xpt":
        _write_xport(path, header, values, numeric, dataset)
    elif path.suffix.lower() == ".json":
        _write_dataset_json(path, header, values, numeric, dataset)
    else:
        raise ValueError(f"{path}: no writer for {path.suffix!r}")


def _number(column: str, text: str, path: Path) -> float | int | None:
    if not text.strip():
        return None
    try:
        number = float(text)
    except ValueError:
        raise InputError(f"{path.name}: column {column} = {text!r} is not a number; "
                         "it cannot be written as a numeric variable") from None
    return int(number) if number.is_integer() and abs(number) < 1e15 else number


def _write_xport(path: Path, header: list[str], rows: list[list[object]], numeric: set[str], dataset: str) -> None:
    import pandas as pd
    import pyreadstat

    too_long = [h for h in [dataset, *header] if len(h) > XPORT_NAME or not h.isascii()]
    if too_long:
        raise InputError(f"{path.name}: SAS XPORT v5 names are at most {XPORT_NAME} ASCII characters: "
                         f"{', '.join(too_long)}; write the tables as csv or json")
    for row in rows:
        for column, value in zip(header, row):
            if isinstance(value, str) and len(value.encode("utf-8")) > XPORT_TEXT:
                raise InputError(f"{path.name}: column {column} has a value of {len(value.encode('utf-8'))} bytes; "
                                 f"SAS XPORT v5 holds at most {XPORT_TEXT}: write the tables as csv or json")
    frame = pd.DataFrame({h: pd.Series([r[i] for r in rows], dtype="float64" if h in numeric else "object")
                          for i, h in enumerate(header)})
    with private_open(path, "wb"):
        pass  # created owner-only before pyreadstat writes into it
    pyreadstat.write_xport(frame, path, file_format_version=5, table_name=dataset.upper(),
                           column_labels=[h[:XPORT_LABEL] for h in header])


def _write_dataset_json(path: Path, header: list[str], rows: list[list[object]], numeric: set[str],
                        dataset: str) -> None:
    name = dataset.upper()
    columns = []
    for i, h in enumerate(header):
        column = {"itemOID": f"IT.{name}.{h}", "name": h, "label": h}
        if h in numeric:
            whole = all(isinstance(r[i], int) for r in rows if r[i] is not None)
            column["dataType"] = "integer" if whole else "double"
        else:
            column["dataType"] = "string"
            column["length"] = max([1, *(len(r[i]) for r in rows if isinstance(r[i], str))])
        columns.append(column)
    document = {"datasetJSONCreationDateTime": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
                "datasetJSONVersion": DATASET_JSON_VERSION, "sourceSystem": {"name": "fhir-msc", "version": _version()},
                "itemGroupOID": f"IG.{name}", "records": len(rows), "name": name, "label": name,
                "columns": columns, "rows": rows}
    with private_open(path, "wb") as handle:
        handle.write(orjson.dumps(document))


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fhir-msc")
    except PackageNotFoundError:
        return "0"
