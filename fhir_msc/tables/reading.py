"""Trial tables as they really come: their encoding, delimiter and header found, then each row read.

- Encoding: UTF-8 (with or without BOM); UTF-16 and UTF-32 are recognised by their
  byte-order mark (or, for UTF-16 without one, by its zero bytes) and read as such, with
  a note. Bytes that are not valid in the encoding are kept as they are (see
  ``KEEP_BYTES``), so the row holding them is rejected and written back unchanged.
- Delimiter: comma, unless the header has the study's columns only when split by ``;``,
  tab or ``|`` (a spreadsheet's export in a locale with a decimal comma, say): then that
  one, with a note.
- Header: a required column missing, or a column the study reads appearing twice, makes
  the whole file unusable: one line showing the header found, every row kept in the rejects.
  Columns the study does not read are counted (rows holding a value) for the account.
- Values: a value of a column the study reads holding a character no FHIR string can (below
  U+0020 but tab, CR and LF, e.g. NUL) rejects its row, naming the column and the character.
- Rows: fields of any length (csv's default limit is 131,072 characters); a row that a
  quote made span several physical lines says which lines, so a stray quote that swallowed
  the rest of the file is named with the count of lines it took, and they are kept.
- Other formats: a table given as SAS XPORT v5 or Dataset-JSON v1.1 (see ``formats``) is
  read into the same strings, with a note saying which file and format; its rows are
  numbered by record (the first record is row 1), and rejected ones are kept as CSV.
"""

from __future__ import annotations

import codecs
import csv
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from ..study.fhir_codes import CONTROL_CHARACTER, string_problem
from .formats import TableFormatError, detect_format, read_table
from .rejects import KEEP_BYTES, REJECT_COLUMN, Key, Rejection, RejectLog, row_key

FIELD_LIMIT = 1 << 28  # characters; a longer field is reported, not read
DELIMITERS = {",": "comma", ";": "semicolon", "\t": "tab", "|": "vertical bar"}
_RAW_BYTE = re.compile("[\udc00-\udcff]")
_HEAD = 65536  # bytes looked at to recognise the encoding

csv.field_size_limit(FIELD_LIMIT)


@dataclass(frozen=True)
class TableFormat:
    """How a table file is read: its encoding, its delimiter and the header found."""

    encoding: str
    encoding_name: str  # as told to the user
    delimiter: str
    header: list[str]  # stripped, without REJECT_REASON
    reject_index: int | None  # where a REJECT_REASON column is (ignored on replay); -1: the last field of each row
    header_text: str  # the header line as found, for messages

    @property
    def described(self) -> str:
        return f"{self.encoding_name}, {DELIMITERS[self.delimiter]}-delimited"


def detect_encoding(head: bytes) -> tuple[str, str]:
    """(codec, name for the user) from a file's first bytes."""
    if head.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        return "utf-32", "UTF-32 (byte-order mark)"
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8-sig", "UTF-8"
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16", "UTF-16 (byte-order mark)"
    sample = head[: len(head) // 2 * 2]
    if len(sample) >= 8:
        even, odd = sample[0::2], sample[1::2]
        if odd.count(0) >= 0.9 * len(odd) and even.count(0) == 0:
            return "utf-16-le", "UTF-16 little-endian (no byte-order mark; found from its zero bytes)"
        if even.count(0) >= 0.9 * len(even) and odd.count(0) == 0:
            return "utf-16-be", "UTF-16 big-endian (no byte-order mark; found from its zero bytes)"
    return "utf-8", "UTF-8"


def open_text(path: Path, encoding: str):
    return open(path, encoding=encoding, errors=KEEP_BYTES, newline="")


def inspect_table(path: Path, required: list[str], used: list[str]) -> tuple[TableFormat, HeaderProblem | None]:
    """The file's format, and what makes its header unusable (None if nothing)."""
    with open(path, "rb") as handle:
        head = handle.read(_HEAD)
    encoding, encoding_name = detect_encoding(head)
    with open_text(path, encoding) as handle:
        first = handle.readline()
    line = first.rstrip("\r\n").lstrip("\ufeff")  # a byte-order mark saved twice is still no part of a name
    delimiter = _delimiter(line, required)
    header = [h.strip() for h in next(csv.reader([line], delimiter=delimiter), [])]
    reject_index = header.index(REJECT_COLUMN) if REJECT_COLUMN in header else None
    if reject_index is not None:
        header = header[:reject_index] + header[reject_index + 1:]
        if reject_index == len(header):
            reject_index = -1  # as fhir-msc writes it: after every field, also of a row longer than the header
    fmt = TableFormat(encoding, encoding_name, delimiter, header, reject_index, line)
    return fmt, _header_problem(fmt, required, used)


def _delimiter(line: str, required: list[str]) -> str:
    def found(delimiter: str) -> int:
        columns = {h.strip() for h in next(csv.reader([line], delimiter=delimiter), [])}
        return sum(c in columns for c in required)
    best = max(DELIMITERS, key=found)  # the first (comma) wins ties
    return best if found(best) > found(",") else ","


class HeaderProblem(NamedTuple):
    column: str | None
    problem: str


def _header_problem(fmt: TableFormat, required: list[str], used: list[str]) -> HeaderProblem | None:
    if not any(fmt.header):
        return HeaderProblem(None, f"file is empty: expected a header row with {', '.join(required)}")
    shown = f"header found ({fmt.described}): {_cut(fmt.header_text)!r}"
    if _RAW_BYTE.search(fmt.header_text):
        return HeaderProblem(None, f"the header is not valid {fmt.encoding_name}; {shown}: "
                                   "save the file as UTF-8 and replay the rejects file")
    if missing := [c for c in required if c not in fmt.header]:
        return HeaderProblem(", ".join(missing), f"required column missing from the header; {shown}: add it "
                                                 "(comma-delimited UTF-8, one header row) and replay the rejects file")
    if repeated := list(dict.fromkeys(c for c in used if fmt.header.count(c) > 1)):
        where = "; ".join(f"columns {', '.join(str(i + 1) for i, h in enumerate(fmt.header) if h == c)}"
                          for c in repeated)
        return HeaderProblem(", ".join(repeated), f"column named more than once in the header ({where}); {shown}: "
                                                  "keep one of each and replay the rejects file")
    return None


def _columns_problem(header: list[str], required: list[str], used: list[str]) -> HeaderProblem | None:
    """What makes the columns of an XPORT or Dataset-JSON table unusable (None if nothing)."""
    shown = f"columns found: {_cut(', '.join(header))}"
    if missing := [c for c in required if c not in header]:
        return HeaderProblem(", ".join(missing), f"required column missing; {shown}: add it and replay the rejects "
                                                 "file (kept as CSV), or export the table again")
    if repeated := list(dict.fromkeys(c for c in used if header.count(c) > 1)):
        return HeaderProblem(", ".join(repeated), f"column named more than once; {shown}: keep one of each "
                                                  "and export the table again")
    return None


def _cut(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else f"{text[:limit]}…"


class RawRow(NamedTuple):
    """One CSV record: its row number (header = 1), the physical lines it spans, its fields.

    A NamedTuple: one is built per row of the cohort.
    """

    number: int
    first_line: int
    last_line: int
    fields: list[str]
    error: str | None = None  # the csv module could not read it


def raw_rows(path: Path, fmt: TableFormat) -> Iterator[RawRow]:
    """Every non-empty record after the header line, with REJECT_REASON left out.

    The header is the first physical line, whatever its quotes: a quote left open there
    makes the header unusable, it does not swallow the rows.
    """
    with open_text(path, fmt.encoding) as handle:
        handle.readline()
        reader = csv.reader(handle, delimiter=fmt.delimiter)
        number, last = 1, 1
        while True:
            try:
                raw = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                number += 1
                yield RawRow(number, last + 1, reader.line_num + 1, [], error=str(exc))
                last = reader.line_num + 1
                continue
            first, last = last + 1, reader.line_num + 1
            joined = "".join(raw)
            if not joined or joined.isspace():
                continue
            number += 1
            if fmt.reject_index == -1:
                raw = raw[:-1]
            elif fmt.reject_index is not None and len(raw) > fmt.reject_index:
                raw = raw[:fmt.reject_index] + raw[fmt.reject_index + 1:]
            yield RawRow(number, first, last, raw)


def read_rows(path: Path, required: list[str], log: RejectLog, *, used: list[str] | None = None,
              key_columns: list[str] | None = None,
              table: str | None = None) -> Iterator[tuple[int, dict[str, str], list[str], list[str]]]:
    """Yield (row number, {column: value}, header, raw row) for each readable data row.

    Every row is counted in ``log``; the rows not yielded are rejected there with one line
    each, or, when the header is unusable, all of them with one line for the file.
    ``table`` is the study's name for the file (``dm.csv`` when ``path`` is ``dm.xpt``).
    """
    display = str(path)
    log.opened(display, table if table != path.name else None)
    if not path.is_file():
        log.reject(Rejection(file=display, row=None, column=None, value=None,
                             problem="file not found: export it from the trial database or fix the path"))
        return
    try:
        kind = detect_format(path)
        if kind != "csv":
            yield from _read_structured(path, kind, required, used or required, log, key_columns or [])
            return
    except TableFormatError as exc:
        log.reject_file(Rejection(file=display, row=None, column=None, value=None, problem=str(exc)), [], [])
        return
    fmt, problem = inspect_table(path, required, used or required)
    if fmt.encoding_name != "UTF-8" or fmt.delimiter != ",":
        log.note(f"{display}: read as {fmt.described}; the rejects file is written as comma-delimited UTF-8")
    key_columns = key_columns or []
    if problem is not None:
        rows = []
        for row in raw_rows(path, fmt):
            log.read(display, row_key(fmt.header, row.fields, key_columns))
            rows.append(row.fields or [_joined_lines(path, fmt, row)])
        text = problem.problem.replace("file is empty", "row 1 is empty") if rows else problem.problem
        kept = f" (all {len(rows)} row(s) of this file are in the rejects)" if rows else ""
        log.reject_file(Rejection(file=display, row=1, column=problem.column, value=None, problem=text + kept),
                        fmt.header, rows)
        return
    header, width, strip = fmt.header, len(fmt.header), str.strip
    checked = used or required
    keyed = bool(key_columns and log.waiting.get(log.table(display)))  # keys matter only against rows waiting in the rejects
    unread = UnreadColumns(header, checked)
    for row in raw_rows(path, fmt):
        raw = row.fields
        log.read(display, row_key(header, raw, key_columns) if keyed else None)
        if row.error is not None:
            log.reject(Rejection(file=display, row=row.number, column=None, value=None,
                                 problem=f"not readable as CSV ({row.error}) in lines {row.first_line}-{row.last_line}: "
                                         "check quoting and replay the rejects file"),
                       header, [_joined_lines(path, fmt, row)])
            continue
        joined = "".join(raw)
        if _RAW_BYTE.search(joined):
            column, value, as_latin = _undecodable(header, raw)
            log.reject(Rejection(file=display, row=row.number, column=column, value=value,
                                 problem=f"not valid {fmt.encoding_name}{as_latin}: save the file as UTF-8 "
                                         "and replay the rejects file"),
                       header, raw)
            continue
        if len(raw) != width:
            log.reject(Rejection(file=display, row=row.number, column=None, value=None,
                                 problem=f"row has {len(raw)} fields but the header has {width}{_spanned(row, raw)}: "
                                         "check quoting and delimiters, fix the row and replay the rejects file"),
                       header, raw)
            continue
        values = dict(zip(header, map(strip, raw)))
        if CONTROL_CHARACTER.search(joined) and (control := _control_character(display, row.number, values, checked)):
            log.reject(control, header, raw)
            continue
        if row.last_line > row.first_line:
            values[SPANNED] = _spanned(row, raw)
        unread.count(raw)
        yield row.number, values, header, raw
    log.unread(display, unread.counts)


def _read_structured(path: Path, kind: str, required: list[str], used: list[str], log: RejectLog,
                     key_columns: list[str]) -> Iterator[tuple[int, dict[str, str], list[str], list[str]]]:
    """The rows of an XPORT or Dataset-JSON table, checked and yielded as a CSV's are."""
    display = str(path)
    header, rows, described = read_table(path, kind)
    log.note(f"{display}: read as {described}; rejected rows are kept as CSV")
    problem = _columns_problem(header, required, used)
    if problem is not None:
        kept = list(rows)
        for row in kept:
            log.read(display, row_key(header, row, key_columns))
        text = problem.problem + (f" (all {len(kept)} row(s) of this file are in the rejects)" if kept else "")
        log.reject_file(Rejection(file=display, row=None, column=problem.column, value=None, problem=text), header, kept)
        return
    width, strip = len(header), str.strip
    keyed = bool(key_columns and log.waiting.get(log.table(display)))
    unread = UnreadColumns(header, used)
    for number, raw in enumerate(rows, start=1):
        log.read(display, row_key(header, raw, key_columns) if keyed else None)
        if len(raw) != width:
            log.reject(Rejection(file=display, row=number, column=None, value=None,
                                 problem=f"row has {len(raw)} values but there are {width} columns: "
                                         "export the file again"), header, raw)
            continue
        values = dict(zip(header, map(strip, raw)))
        if CONTROL_CHARACTER.search("".join(raw)) and (control := _control_character(display, number, values, used)):
            log.reject(control, header, raw)
            continue
        unread.count(raw)
        yield number, values, header, raw
    log.unread(display, unread.counts)


def _control_character(file: str, row: int, values: dict[str, str], columns: list[str]) -> Rejection | None:
    """The rejection of a row whose value in one of ``columns`` (the study's) holds a character FHIR strings cannot."""
    for column in columns:
        value = values.get(column, "")
        if problem := string_problem(value):
            return Rejection(file=file, row=row, column=column, value=value,
                             problem=f"{problem}: remove it and replay the rejects file")
    return None


class UnreadColumns:
    """The columns of a table the study does not read, each with how many rows hold a value there."""

    def __init__(self, header: list[str], used: list[str]):
        wanted = set(used)
        self._index = {i: name or f"column {i + 1} (no name)" for i, name in enumerate(header) if name not in wanted}
        self.counts = dict.fromkeys(self._index.values(), 0)

    def count(self, raw: list[str]) -> None:
        for index, name in self._index.items():
            if raw[index].strip():
                self.counts[name] += 1


SPANNED = "\0spanned"  # a key of a row's values: how the row spans physical lines, for messages


def _spanned(row: RawRow, raw: list[str]) -> str:
    """Where a row spans several physical lines: which lines, and the quoted column that took them."""
    if row.last_line == row.first_line:
        return ""
    column = next((i + 1 for i, v in enumerate(raw) if "\n" in v or "\r" in v), None)
    inside = f" inside the quoted field {column}" if column else ""
    return (f"; it spans physical lines {row.first_line}-{row.last_line}: a quote opened in line {row.first_line} "
            f"swallowed {row.last_line - row.first_line} line(s){inside} (kept in the rejects file)")


def _joined_lines(path: Path, fmt: TableFormat, row: RawRow) -> str:
    """The physical lines of a row the csv module could not split, as one value."""
    with open_text(path, fmt.encoding) as handle:
        return "".join(line for number, line in enumerate(handle, start=1) if row.first_line <= number <= row.last_line)


def _undecodable(header: list[str], raw: list[str]) -> tuple[str | None, str, str]:
    """The column and value of the first cell with bytes not in the encoding, and how it reads as Latin-1."""
    index, cell = next((i, v) for i, v in enumerate(raw) if _RAW_BYTE.search(v))
    column = header[index] if index < len(header) else None
    data = cell.encode("utf-8", KEEP_BYTES)
    try:
        latin = data.decode("cp1252")
    except UnicodeDecodeError:
        latin = data.decode("latin-1")
    return column, cell, f" (read as Latin-1/Windows-1252 it says {latin!r})"


def key_hashes(path: Path, required: list[str], key_columns: list[str],
               normalise: Callable[[Key], object]) -> Iterator[int]:
    """hash() of each readable row's normalised business key (for a duplicate pre-pass); none if the header is unusable."""
    try:
        kind = detect_format(path)
        if kind != "csv":
            header, rows, _ = read_table(path, kind)
            if all(c in header for c in [*required, *key_columns]):
                index = [header.index(c) for c in key_columns]
                for row in rows:
                    if len(row) == len(header):
                        yield hash(normalise(tuple(row[i].strip() for i in index)))
            return
    except TableFormatError:
        return
    fmt, problem = inspect_table(path, required, required)
    if problem is not None:
        return
    index, width = [fmt.header.index(c) for c in key_columns], len(fmt.header)
    for row in raw_rows(path, fmt):
        if row.error is None and len(row.fields) == width:
            yield hash(normalise(tuple(row.fields[i].strip() for i in index)))

