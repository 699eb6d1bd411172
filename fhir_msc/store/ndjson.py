"""The embedded store: a directory of FHIR NDJSON files, one per resource type.

This is the FHIR Bulk Data layout (``Patient.ndjson``, ``Observation.ndjson``, …), so a
store can be handed to any bulk-data tool. Reading and writing stream one resource at a
time; memory does not grow with the cohort. Writing upserts by logical id.

A write of several resource types is all-or-nothing across a kill: every type's new file is
prepared beside the old one (``.Patient.ndjson.ready``), then a manifest
(``.write-manifest.json``) names them, then they are renamed into place. A write killed
before the manifest leaves the old store (and debris the next writer removes); one killed
after it is read as all-new and completed by the next writer (``Store.writing``).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import orjson

from ..errors import InputError
from .files import private_open
from .lock import spool_dir, store_lock, sweep_debris
from .study_record import forget_study

Resource = dict[str, Any]
Prefilter = Callable[[bytes], bool]
SUFFIX = ".ndjson"
NEW_DIGEST = 8  # bytes of blake2b per id for a new file: only repeats are looked for, and confirmed
MERGE_DIGEST = 16  # when merging: a collision would drop an old resource, so as unlikely as UUID collisions
MERGE_BATCH = 65536  # old lines compared with the new ids per numpy call
T = TypeVar("T")
MANIFEST = ".write-manifest.json"
READY = ".ready"  # prepared files: .<Type>.ndjson.ready
SPOOL_PREFIX = ".spool-"
REJECTS_PREFIX = ".rejects-"  # rejected rows of a map in progress (see fhir_msc.jobs.map_tables)
# A FHIR resource type name (letters only) and the FHIR id pattern: checked before either names a file.
RESOURCE_TYPE = re.compile(r"[A-Z][A-Za-z]{1,63}")
FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


class Store:
    """A directory of ``<ResourceType>.ndjson`` files."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"

    def resource_types(self) -> list[str]:
        if not self.path.is_dir():
            return []
        names = {p.name[: -len(SUFFIX)] for p in self.path.glob(f"*{SUFFIX}")} | set(self._pending())
        return sorted(name for name in names if RESOURCE_TYPE.fullmatch(name))

    def read(self, resource_type: str, prefilter: Prefilter | None = None) -> Iterator[Resource]:
        """Stream the resources of one type (none if the file does not exist).

        ``prefilter`` sees each raw NDJSON line first; lines it returns False for are
        skipped without being parsed. It must only reject lines the caller would discard
        anyway: it is a shortcut, and sources without raw lines ignore it. A line that is
        not JSON, or is JSON but not an object, is an InputError naming the file and line.
        """
        path = self._current(resource_type)
        if path is None:
            return
        with path.open("rb") as handle:
            for number, line in enumerate(handle, start=1):
                if prefilter is not None and not prefilter(line):
                    continue
                if line.isspace():
                    continue
                resource = _load_line(path, number, line)
                if not isinstance(resource, dict):
                    raise InputError(f"{path}, line {number}: not a FHIR resource (a JSON {_json_kind(resource)}, "
                                     f"not an object); run `fhir-msc repair {path.parent}` to drop it, or fix the line")
                yield resource

    def read_all(self) -> Iterator[Resource]:
        for resource_type in self.resource_types():
            yield from self.read(resource_type)

    def current_file(self, resource_type: str) -> Path | None:
        """The NDJSON file that holds one type now (None if the store has none of it), for engines that read
        the files themselves and for the columnar projection's stamps."""
        return self._current(resource_type)

    def counts(self) -> dict[str, int]:
        counts = {}
        for resource_type in self.resource_types():
            path = self._current(resource_type)
            if path is None:
                continue
            with path.open("rb") as handle:
                counts[resource_type] = sum(1 for line in handle if line.strip())
        return counts

    @contextmanager
    def writing(self, *, recover: bool = True) -> Iterator[list[str]]:
        """Hold the store's write lock for a whole job; ``SyncLocked`` (exit 9) if another job has it.

        The outermost holder first completes a write that a killed job had committed and
        removes what killed jobs left behind (unless ``recover`` is false); the yielded
        list says what was done, one line each.
        """
        with store_lock(self.path) as outermost:
            yield self.recover() if outermost and recover else []

    def recover(self, *, dry_run: bool = False) -> list[str]:
        """Complete an interrupted write and remove debris of killed jobs (hold ``writing`` first)."""
        committed = {self._ready(t) for t in self._pending()}
        notes = self._roll_forward(dry_run=dry_run)
        verb = "would remove" if dry_run else "removed"
        for prefix in (SPOOL_PREFIX, REJECTS_PREFIX):
            notes += [f"{verb} {path}: left by a killed job" for path in sweep_debris(self.path, prefix, dry_run=dry_run)]
        uncommitted = [p for p in sorted(self.path.glob(f".*{SUFFIX}{READY}")) if p not in committed]
        for path in uncommitted + sorted(self.path.glob(f"{MANIFEST}.*")):
            notes.append(f"{verb} {path}: an uncommitted write of a killed job")
            if not dry_run:
                path.unlink()
        return notes

    def write(self, resources: Iterable[Resource]) -> dict[str, int]:
        """Upsert resources by id; returns how many of each type were written.

        New resources are spooled to temporary files first, then each type's new file is
        prepared (old lines whose id was not rewritten, then the new lines) and all of
        them are renamed into place under a manifest. Memory holds a digest of each new id
        (8 bytes for a new file, 16 when merging), not the resources or ids. A resource
        whose type or id is not a FHIR name is refused and nothing is written.
        """
        with self.writing(), spool_dir(self.path, SPOOL_PREFIX) as tmp:
            self._roll_forward()  # an earlier write of this job may have failed after its commit
            spool: dict[str, Any] = {}
            digests: dict[str, bytearray] = {}
            sizes: dict[str, int] = {}
            try:
                for resource in resources:
                    resource_type, id_ = _checked(resource)
                    if resource_type not in spool:
                        spool[resource_type] = private_open(tmp / f"{resource_type}{SUFFIX}", "wb")
                        digests[resource_type] = bytearray()
                        sizes[resource_type] = MERGE_DIGEST if self._file(resource_type).exists() else NEW_DIGEST
                    digests[resource_type] += _digest(id_, sizes[resource_type])
                    spool[resource_type].write(orjson.dumps(resource, option=orjson.OPT_APPEND_NEWLINE))
            finally:
                for handle in spool.values():
                    handle.close()
            new_ids = {t: _sorted_unique(t, d, sizes[t], tmp / f"{t}{SUFFIX}") for t, d in digests.items()}
            for resource_type, ids in new_ids.items():
                self._prepare(resource_type, tmp / f"{resource_type}{SUFFIX}", ids)
            self._commit(list(new_ids))
        return {t: len(ids) for t, ids in new_ids.items()}

    def _file(self, resource_type: str) -> Path:
        if not RESOURCE_TYPE.fullmatch(resource_type):
            raise InputError(f"{_shown(resource_type)} is not a FHIR resource type name (letters only, e.g. Observation)")
        return self.path / f"{resource_type}{SUFFIX}"

    def _ready(self, resource_type: str) -> Path:
        """Where a write prepares the new file of one type before renaming it into place."""
        return self.path / f".{self._file(resource_type).name}{READY}"

    def _pending(self) -> list[str]:
        """The types of a committed write whose renames may not all have happened (a killed job).

        The manifest is written only once every prepared file is complete, so if it cannot
        be read (cut off by a crash of the machine) every prepared file there is committed.
        """
        try:
            types = orjson.loads((self.path / MANIFEST).read_bytes())["types"]
        except FileNotFoundError:
            return []
        except (orjson.JSONDecodeError, TypeError, KeyError):
            types = [p.name[1: -len(SUFFIX + READY)] for p in self.path.glob(f".*{SUFFIX}{READY}")]
        return [t for t in types if isinstance(t, str) and RESOURCE_TYPE.fullmatch(t)]

    def _current(self, resource_type: str) -> Path | None:
        """The file that holds a type now: a committed write's prepared file, else the type's file."""
        target = self._file(resource_type)
        if resource_type in self._pending() and (ready := self._ready(resource_type)).exists():
            return ready
        return target if target.exists() else None

    def _prepare(self, resource_type: str, spooled: Path, new_ids: np.ndarray) -> None:
        target, ready = self._file(resource_type), self._ready(resource_type)
        if not target.exists():
            os.replace(spooled, ready)
            return
        with private_open(ready, "wb") as out:
            size = new_ids.dtype.itemsize
            for batch in _batches(_lines_with_ids(target), MERGE_BATCH):
                old = np.frombuffer(b"".join(_digest(id_, size) for _, id_ in batch), dtype=new_ids.dtype)
                out.writelines(line for (line, _), rewritten in zip(batch, _contains(new_ids, old)) if not rewritten)
            with open(spooled, "rb") as new:
                shutil.copyfileobj(new, out)

    def _commit(self, types: list[str]) -> None:
        """Rename every prepared file into place; the manifest makes it all or nothing across a kill."""
        manifest = self.path / MANIFEST
        staged = manifest.with_name(f"{MANIFEST}.new")
        with private_open(staged, "wb") as out:
            out.write(orjson.dumps({"types": types}))
        os.replace(staged, manifest)  # the commit point: from here on the new files are the store
        for resource_type in types:
            os.replace(self._ready(resource_type), self._file(resource_type))
        manifest.unlink()

    def _roll_forward(self, *, dry_run: bool = False) -> list[str]:
        """Finish the renames of a committed write (hold the lock)."""
        pending = [t for t in self._pending() if self._ready(t).exists()]
        if (self.path / MANIFEST).exists() and not dry_run:
            for resource_type in pending:
                os.replace(self._ready(resource_type), self._file(resource_type))
            (self.path / MANIFEST).unlink()
        if not pending:
            return []
        verb = "would complete" if dry_run else "completed"
        return [f"{verb} a write of {', '.join(pending)} that a killed job had committed in {self.path}"]

    def remove(self, resource_type: str, ids: Iterable[str]) -> int:
        """Remove the resources of one type with these ids (the file is rewritten once, under the lock); returns how many."""
        gone, target = set(ids), self._file(resource_type)
        if not gone or not target.exists():
            return 0
        removed = 0
        with self.writing(), spool_dir(self.path, SPOOL_PREFIX) as tmp:
            rewritten = tmp / target.name
            with private_open(rewritten, "wb") as out:
                for line, id_ in _lines_with_ids(target):
                    if id_ in gone:
                        removed += 1
                    else:
                        out.write(line)
            os.replace(rewritten, target)
        return removed

    def clear(self) -> None:
        """Remove every resource, and the study definition recorded with them (``study_record``)."""
        with self.writing():
            for resource_type in self.resource_types():
                self._file(resource_type).unlink()
            forget_study(self.path)


def _checked(resource: Any) -> tuple[str, str]:
    """(resourceType, id) of a resource to store; refused unless both are FHIR names (they name files)."""
    resource_type = resource.get("resourceType") if isinstance(resource, dict) else None
    if not isinstance(resource_type, str) or not RESOURCE_TYPE.fullmatch(resource_type):
        raise InputError(f"refused to store a resource with resourceType {_shown(resource_type)}: not a FHIR resource "
                         "type name (letters only, e.g. Observation); nothing of this write was stored")
    id_ = resource.get("id")
    if not isinstance(id_, str) or not FHIR_ID.fullmatch(id_):
        raise InputError(f"refused to store {resource_type} with id {_shown(id_)}: not a FHIR id (1-64 letters, digits, "
                         "'-' or '.'); nothing of this write was stored")
    return resource_type, id_


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "…"


def _lines_with_ids(path: Path) -> Iterator[tuple[bytes, str]]:
    """(line ending in a newline, resource id) for each non-blank line; bad JSON is named by line."""
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            if line.isspace():
                continue
            resource = _load_line(path, number, line)
            if not isinstance(resource, dict) or "id" not in resource:
                raise InputError(f"{path}, line {number}: not a FHIR resource with an id; "
                                 f"run `fhir-msc repair {path.parent}` to drop it, or fix the line")
            yield (line if line.endswith(b"\n") else line + b"\n"), resource["id"]


def _load_line(path: Path, number: int, line: bytes) -> Any:
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise InputError(f"{path}, line {number}: not valid JSON ({exc}); "
                         f"run `fhir-msc repair {path.parent}` to drop it, or fix the line") from None


def _json_kind(value: Any) -> str:
    return {list: "array", str: "string", bool: "boolean", int: "number", float: "number"}.get(type(value), "null")


def _digest(id_: str, size: int) -> bytes:
    return hashlib.blake2b(id_.encode(), digest_size=size).digest()


def id_digest(id_: str) -> bytes:
    """An id's 8-byte digest, for finding repeated ids among many without holding the ids (see ``repeated``)."""
    return _digest(id_, NEW_DIGEST)


def repeated(digests: bytearray, size: int = NEW_DIGEST) -> set[bytes]:
    """The digests that occur more than once in ``digests`` (concatenated, ``size`` bytes each); sorts it in place.

    Equal digests may be a collision of two different ids: callers confirm against the ids.
    """
    ids = np.frombuffer(digests, dtype=f"S{size}")  # a view of the bytearray: sorted in place, no copy
    ids.sort()
    twice = np.unique(ids[1:][ids[1:] == ids[:-1]]).tobytes()  # whole digests (a bytes_ scalar drops trailing NULs)
    return {twice[i:i + size] for i in range(0, len(twice), size)}


def _sorted_unique(resource_type: str, digests: bytearray, size: int, spooled: Path) -> np.ndarray:
    """The sorted digests of one write's ids; an id written twice is an error naming it.

    Equal digests are confirmed against the spooled ids, so a collision of two different
    ids (possible with 8 bytes) is not mistaken for a repeat.
    """
    suspects = repeated(digests, size)
    ids = np.frombuffer(digests, dtype=f"S{size}")
    if suspects:
        seen: set[str] = set()
        with open(spooled, "rb") as handle:
            for id_ in (orjson.loads(line)["id"] for line in handle):
                if _digest(id_, size) in suspects:
                    if id_ in seen:
                        raise InputError(f"{resource_type}/{id_} was produced twice in one write")
                    seen.add(id_)
    return ids


def _contains(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """For each of ``ids``, whether it is in ``sorted_ids``."""
    if not len(sorted_ids):
        return np.zeros(len(ids), dtype=bool)
    at = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
    return sorted_ids[at] == ids


def _batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
