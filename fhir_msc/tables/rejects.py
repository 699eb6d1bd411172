"""Rejected rows: named one line each, kept verbatim for the user to fix and replay, and counted.

A run writes its rejected rows to a spool directory; :func:`publish_rejects` then merges
them into the user's rejects directory without deleting anything it did not handle:

- replaying that directory (it is the source) replaces each table file it read with the
  rows rejected again (the file goes when none are);
- any other run keeps the rows already waiting there, except those whose business key
  (subject; subject and date; subject, visit and test) it read again, and adds its own.

Every file written is owner-only (trial data), and nothing but the study's table files
and ``dataset.yaml`` is ever written or removed there.
"""

from __future__ import annotations

import codecs
import csv
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..store.files import private_dir, private_open

REJECT_COLUMN = "REJECT_REASON"
DATASET_FILE = "dataset.yaml"
KEEP_BYTES = "fhir-msc-keep-bytes"  # codec error handler: undecodable bytes round-trip as U+DC00+byte
Key = tuple[str, ...]


def _keep_bytes(exc: UnicodeError) -> tuple[str | bytes, int]:
    """Decoding: each undecodable byte becomes U+DC00+byte; encoding: those code points become the bytes again."""
    if isinstance(exc, UnicodeDecodeError):
        return "".join(chr(0xDC00 + b) for b in exc.object[exc.start:exc.end]), exc.end
    if isinstance(exc, UnicodeEncodeError):
        text = exc.object[exc.start:exc.end]
        if all(0xDC00 <= ord(c) <= 0xDCFF for c in text):
            return bytes(ord(c) - 0xDC00 for c in text), exc.end
    raise exc


codecs.register_error(KEEP_BYTES, _keep_bytes)


@dataclass(frozen=True, kw_only=True)
class Rejection:
    """One input problem: where it is, what was found, and what to do."""

    file: str
    row: int | None
    column: str | None
    value: str | None
    problem: str

    def __str__(self) -> str:
        where = self.file if self.row is None else f"{self.file}, row {self.row}"
        if self.column is not None:
            where += f", column {self.column}"
            if self.value is not None:
                where += f" = {_shown(self.value)!r}"
        return f"{where}: {self.problem}"


def _shown(value: str, limit: int = 80) -> str:
    """A value as printed: undecodable bytes as \\x escapes, long values cut with their length."""
    text = value.encode("utf-8", KEEP_BYTES).decode("utf-8", "backslashreplace") if _has_raw_bytes(value) else value
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text):,} characters)"


def _has_raw_bytes(text: str) -> bool:
    return any(0xDC00 <= ord(c) <= 0xDCFF for c in text)


@dataclass(frozen=True, kw_only=True)
class FileAccount:
    """The rows of one input file: read = mapped + rejected.

    Rows are CSV records (a quoted field may span lines); lines with every field empty are
    not rows. ``unusable`` says why the whole file was rejected, if it was;
    ``unread_columns`` names the columns the study definition does not read, each with how
    many rows hold a value there.
    """

    file: str
    read: int
    mapped: int
    rejected: int
    unusable: str | None = None
    unread_columns: dict[str, int] = field(default_factory=dict)

    @property
    def balanced(self) -> bool:
        return self.read == self.mapped + self.rejected


@dataclass
class _Tally:
    read: int = 0
    mapped: int = 0
    rejected: int = 0
    unusable: str | None = None
    unread_columns: dict[str, int] = field(default_factory=dict)


@dataclass
class RejectLog:
    """Collects rejections, counts every row read, and writes rejected rows to ``directory/<file name>``.

    ``waiting`` holds the keys of rows already in the rejects directory, per file name;
    :meth:`read` notes which of them this run read again (see :func:`publish_rejects`).
    """

    directory: Path | None
    waiting: dict[str, set[Key]] = field(default_factory=dict)
    rejections: list[Rejection] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    handled: dict[str, set[Key]] = field(default_factory=dict)
    _tallies: dict[str, _Tally] = field(default_factory=dict)
    _tables: dict[str, str] = field(default_factory=dict)  # file read -> name of its table (and rejects file)
    _writers: dict[str, tuple[object, csv.writer]] = field(default_factory=dict)

    def _tally(self, file: str) -> _Tally:
        return self._tallies.setdefault(file, _Tally())

    def opened(self, file: str, table: str | None = None) -> None:
        """Start the account of ``file`` (so a file with no rows still has one).

        ``table`` is the study's name for it when it differs (``dm.csv`` read from ``dm.xpt``):
        its rejected rows go to a CSV file of that name.
        """
        self._tally(file)
        if table is not None:
            self._tables[file] = table

    def table(self, file: str) -> str:
        """The name of the rejects file for rows of ``file``."""
        return self._tables.get(file) or Path(file).name

    def read(self, file: str, key: Key | None = None) -> None:
        """One row of ``file`` was read; ``key`` is its business key, if it has one."""
        self._tally(file).read += 1
        if key is not None:
            waiting = self.waiting.get(self.table(file))
            if waiting and key in waiting:
                self.handled.setdefault(self.table(file), set()).add(key)

    def mapped(self, file: str) -> None:
        self._tally(file).mapped += 1

    def unread(self, file: str, columns: dict[str, int]) -> None:
        """Columns of ``file`` the study does not read, each with its count of non-empty values."""
        self._tally(file).unread_columns.update(columns)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def reject(self, rejection: Rejection, header: list[str] | None = None, row: list[str] | None = None) -> None:
        """Report a problem; with ``row``, that row is rejected (counted, and kept in the rejects)."""
        self.rejections.append(rejection)
        tally = self._tally(rejection.file)
        if row is not None:
            tally.rejected += 1
            self._keep(rejection.file, header or [], row, str(rejection))

    def reject_file(self, rejection: Rejection, header: list[str], rows: Iterable[list[str]]) -> None:
        """The whole file is unusable: one line for it, every row kept with its reason."""
        self.rejections.append(rejection)
        tally = self._tally(rejection.file)
        tally.unusable = rejection.problem
        for row in rows:
            tally.rejected += 1
            self._keep(rejection.file, header, row, str(rejection))

    def _keep(self, file: str, header: list[str], row: list[str], reason: str) -> None:
        if self.directory is None:
            return
        name = self.table(file)
        if name not in self._writers:
            private_dir(self.directory)
            handle = private_open(self.directory / name, "w", encoding="utf-8", errors=KEEP_BYTES, newline="")
            writer = csv.writer(handle)
            writer.writerow([*header, REJECT_COLUMN])
            self._writers[name] = (handle, writer)
        self._writers[name][1].writerow([*row, *[""] * (len(header) - len(row)), reason])

    @property
    def accounts(self) -> list[FileAccount]:
        return [FileAccount(file=file, read=t.read, mapped=t.mapped, rejected=t.rejected, unusable=t.unusable,
                            unread_columns=dict(t.unread_columns)) for file, t in self._tallies.items()]

    def close(self) -> None:
        for handle, _ in self._writers.values():
            handle.close()  # type: ignore[attr-defined]
        self._writers.clear()


# --- the rejects directory ------------------------------------------------------------

@dataclass(frozen=True)
class _RejectsFile:
    header: list[str]
    rows: list[list[str]]  # each ending with its REJECT_REASON


def _read_rejects_file(path: Path) -> _RejectsFile | None:
    if not path.is_file():
        return None
    with open(path, encoding="utf-8", errors=KEEP_BYTES, newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        return None
    header = rows[0]
    if not header or header[-1] != REJECT_COLUMN:
        header = [*header, REJECT_COLUMN]
        rows = [[*r, ""] for r in rows]
    return _RejectsFile(header, [r for r in rows[1:] if "".join(r).strip()])


def row_key(header: list[str], row: list[str], key_columns: list[str]) -> Key:
    """A row's business key: its key columns' values, or the whole row when it lacks them."""
    width = len(header)
    index = [header.index(c) for c in key_columns if c in header]
    if len(index) == len(key_columns) and len(row) >= width:
        return tuple(row[i].strip() for i in index)
    return tuple(v.strip() for v in row[:width])


def waiting_rejects(directory: Path, key_columns: dict[str, list[str]]) -> dict[str, set[Key]]:
    """The keys of the rows waiting in ``directory``, per table file name."""
    waiting = {}
    for name, columns in key_columns.items():
        existing = _read_rejects_file(directory / name)
        if existing:
            header = existing.header[:-1]
            waiting[name] = {row_key(header, row[:-1], columns) for row in existing.rows}
    return waiting


def publish_rejects(spool: Path, target: Path, *, replayed: Iterable[str], handled: dict[str, set[Key]],
                    key_columns: dict[str, list[str]], dataset: Path | None) -> list[Path]:
    """Merge this run's rejects (in ``spool``) into ``target``; return the table files left there.

    ``replayed`` names the files of ``target`` this run read as its source: their rows are
    replaced. Elsewhere, rows whose key is in ``handled`` are replaced, the rest kept.
    ``dataset`` (the source's dataset.yaml) is copied beside the rejects so a replay keeps
    it. The spool is removed.
    """
    replayed = set(replayed)
    names = {p.name for p in spool.glob("*.csv")} | replayed | set(handled)
    try:
        for name in sorted(names):
            new = _read_rejects_file(spool / name)
            old = None if name in replayed else _read_rejects_file(target / name)
            if old is not None and name in handled:
                columns = key_columns.get(name, [])
                old = _RejectsFile(old.header, [r for r in old.rows
                                                if row_key(old.header[:-1], r[:-1], columns) not in handled[name]])
            merged = _merge(old, new)
            if merged is None or not merged.rows:
                if (target / name).is_file() and (name in replayed or old is not None):
                    (target / name).unlink()
                continue
            private_dir(target)
            _write_atomically(target / name, merged)
        tables = sorted(p for p in target.glob("*.csv") if p.name in key_columns) if target.is_dir() else []
        _place_dataset(target, dataset, keep=bool(tables), replayed=bool(replayed))
        return tables
    finally:
        shutil.rmtree(spool, ignore_errors=True)


def _merge(old: _RejectsFile | None, new: _RejectsFile | None) -> _RejectsFile | None:
    if old is None or not old.rows:
        return new
    if new is None:
        return old
    if old.header == new.header:
        return _RejectsFile(old.header, [*old.rows, *new.rows])
    header = [*old.header[:-1], *(c for c in new.header[:-1] if c not in old.header), REJECT_COLUMN]
    return _RejectsFile(header, [*_by_name(old, header), *_by_name(new, header)])


def _by_name(rejects: _RejectsFile, header: list[str]) -> Iterator[list[str]]:
    for row in rejects.rows:
        values = dict(zip(rejects.header[:-1], row[:-1]))
        yield [*(values.get(c, "") for c in header[:-1]), row[-1] if row else ""]


def _write_atomically(path: Path, rejects: _RejectsFile) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with open(fd, "w", encoding="utf-8", errors=KEEP_BYTES, newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(rejects.header)
            writer.writerows(rejects.rows)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _place_dataset(target: Path, dataset: Path | None, *, keep: bool, replayed: bool) -> None:
    """dataset.yaml travels with the rejects; it goes with the last of them (never the directory's other files)."""
    beside = target / DATASET_FILE
    if keep:
        if dataset is not None and dataset.is_file() and not beside.exists():
            fd = os.open(beside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with open(fd, "wb") as handle:
                handle.write(dataset.read_bytes())
        return
    if beside.is_file() and (replayed or (dataset is not None and dataset.is_file()
                                          and dataset.read_bytes() == beside.read_bytes())):
        beside.unlink()
    if target.is_dir() and not any(target.iterdir()):
        target.rmdir()
