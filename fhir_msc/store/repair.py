"""Repair a store: drop the lines a killed or broken writer left that are not resources of their file.

Only lines that cannot be read as a resource of the file's type with a FHIR id are dropped
(a torn last line, bad JSON, another type, no or a bad id); each is reported with its file,
line number and first bytes. The files are rewritten the way ``Store.write`` writes: all
prepared first, then renamed under the write manifest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import orjson

from .files import private_open
from .ndjson import FHIR_ID, Store

SHOWN_BYTES = 40


@dataclass(frozen=True, kw_only=True)
class BadLine:
    """One line of a store file that is not a resource of that file's type."""

    file: Path
    line: int
    problem: str
    first_bytes: str

    def __str__(self) -> str:
        return f"{self.file}, line {self.line}: {self.problem} (begins {self.first_bytes!r})"


@dataclass(frozen=True, kw_only=True)
class RepairResult:
    """What ``repair`` found and did; ``sound`` tells whether the store reads cleanly now."""

    store: Path
    dry_run: bool
    dropped: list[BadLine]
    recovered: list[str]
    sound: bool


def bad_lines(store: Store, resource_type: str) -> list[BadLine]:
    """The lines of one type's file that ``Store.read`` would refuse or that do not belong there."""
    path = store._current(resource_type)
    if path is None:
        return []
    found = []
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if line.isspace():
                continue
            problem = _problem(resource_type, line)
            if problem:
                found.append(BadLine(file=store._file(resource_type), line=number, problem=problem,
                                     first_bytes=line[:SHOWN_BYTES].decode("utf-8", "backslashreplace").rstrip("\n")))
    return found


def _problem(resource_type: str, line: bytes) -> str | None:
    try:
        resource = orjson.loads(line)
    except orjson.JSONDecodeError:
        if not line.endswith(b"\n"):
            return "torn last line (a write was cut off): not complete JSON"
        return "not valid JSON"
    if not isinstance(resource, dict) or resource.get("resourceType") != resource_type:
        return f"not a {resource_type} resource"
    id_ = resource.get("id")
    if not isinstance(id_, str) or not FHIR_ID.fullmatch(id_):
        return f"{resource_type} without a valid FHIR id"
    return None


def repair(store: Store, *, dry_run: bool = False) -> RepairResult:
    """Complete an interrupted write, remove killed jobs' debris, drop bad lines (hold ``store.writing``)."""
    recovered = store.recover(dry_run=dry_run)
    dropped = {t: bad_lines(store, t) for t in store.resource_types()}
    dropped = {t: lines for t, lines in dropped.items() if lines}
    if dropped and not dry_run:
        for resource_type, lines in dropped.items():
            _prepare_without(store, resource_type, {line.line for line in lines})
        store._commit(list(dropped))
    sound = not dropped if dry_run else not any(bad_lines(store, t) for t in store.resource_types())
    return RepairResult(store=store.path, dry_run=dry_run, dropped=[line for lines in dropped.values() for line in lines],
                        recovered=recovered, sound=sound)


def _prepare_without(store: Store, resource_type: str, numbers: set[int]) -> None:
    """Write the type's prepared file: every line but ``numbers``, each ending in a newline."""
    with store._file(resource_type).open("rb") as source, private_open(store._ready(resource_type), "wb") as out:
        for number, line in enumerate(source, start=1):
            if number not in numbers:
                out.write(line if line.endswith(b"\n") else line + b"\n")
