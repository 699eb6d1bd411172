"""The embedded store: a directory of FHIR NDJSON files, one per resource type.

This is the FHIR Bulk Data layout (``Patient.ndjson``, ``Observation.ndjson``, …), so a
store can be handed to any bulk-data tool. Reading and writing stream one resource at a
time; memory does not grow with the cohort. Writing upserts by logical id.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import orjson

from ..errors import InputError

Resource = dict[str, Any]
Prefilter = Callable[[bytes], bool]
SUFFIX = ".ndjson"
NEW_DIGEST = 8  # bytes of blake2b per id for a new file: only repeats are looked for, and confirmed
MERGE_DIGEST = 16  # when merging: a collision would drop an old resource, so as unlikely as UUID collisions
MERGE_BATCH = 65536  # old lines compared with the new ids per numpy call
T = TypeVar("T")


class Store:
    """A directory of ``<ResourceType>.ndjson`` files."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"

    def resource_types(self) -> list[str]:
        if not self.path.is_dir():
            return []
        return sorted(p.name[: -len(SUFFIX)] for p in self.path.glob(f"*{SUFFIX}"))

    def read(self, resource_type: str, prefilter: Prefilter | None = None) -> Iterator[Resource]:
        """Stream the resources of one type (none if the file does not exist).

        ``prefilter`` sees each raw NDJSON line first; lines it returns False for are
        skipped without being parsed. It must only reject lines the caller would discard
        anyway: it is a shortcut, and sources without raw lines ignore it.
        """
        path = self._file(resource_type)
        if not path.exists():
            return
        with open(path, "rb") as handle:
            for number, line in enumerate(handle, start=1):
                if prefilter is not None and not prefilter(line):
                    continue
                if line.isspace():
                    continue
                yield _load_line(path, number, line)

    def read_all(self) -> Iterator[Resource]:
        for resource_type in self.resource_types():
            yield from self.read(resource_type)

    def counts(self) -> dict[str, int]:
        counts = {}
        for resource_type in self.resource_types():
            with open(self.path / f"{resource_type}{SUFFIX}", "rb") as handle:
                counts[resource_type] = sum(1 for line in handle if line.strip())
        return counts

    def write(self, resources: Iterable[Resource]) -> dict[str, int]:
        """Upsert resources by id; returns how many of each type were written.

        New resources are spooled to temporary files first, then each type's file is
        rewritten once: old lines whose id was not rewritten, then the new lines. Memory
        holds a digest of each new id (8 bytes for a new file, 16 when merging), not the
        resources or ids.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        spool: dict[str, Any] = {}
        digests: dict[str, bytearray] = {}
        sizes: dict[str, int] = {}
        with tempfile.TemporaryDirectory(dir=self.path, prefix=".spool-") as tmp:
            try:
                for resource in resources:
                    resource_type = resource["resourceType"]
                    if resource_type not in spool:
                        spool[resource_type] = open(Path(tmp) / f"{resource_type}{SUFFIX}", "wb")
                        digests[resource_type] = bytearray()
                        sizes[resource_type] = MERGE_DIGEST if self._file(resource_type).exists() else NEW_DIGEST
                    digests[resource_type] += _digest(resource["id"], sizes[resource_type])
                    spool[resource_type].write(orjson.dumps(resource, option=orjson.OPT_APPEND_NEWLINE))
            finally:
                for handle in spool.values():
                    handle.close()
            new_ids = {t: _sorted_unique(t, d, sizes[t], Path(tmp) / f"{t}{SUFFIX}") for t, d in digests.items()}
            for resource_type, ids in new_ids.items():
                self._merge(resource_type, Path(tmp) / f"{resource_type}{SUFFIX}", ids)
        return {t: len(ids) for t, ids in new_ids.items()}

    def _file(self, resource_type: str) -> Path:
        return self.path / f"{resource_type}{SUFFIX}"

    def _merge(self, resource_type: str, spooled: Path, new_ids: np.ndarray) -> None:
        target = self._file(resource_type)
        if not target.exists():
            os.replace(spooled, target)
            return
        merged = spooled.with_suffix(".merged")
        with open(merged, "wb") as out:
            size = new_ids.dtype.itemsize
            for batch in _batches(_lines_with_ids(target), MERGE_BATCH):
                old = np.frombuffer(b"".join(_digest(id_, size) for _, id_ in batch), dtype=new_ids.dtype)
                out.writelines(line for (line, _), rewritten in zip(batch, _contains(new_ids, old)) if not rewritten)
            with open(spooled, "rb") as new:
                shutil.copyfileobj(new, out)
        os.replace(merged, target)

    def remove(self, resource_type: str, ids: Iterable[str]) -> int:
        """Remove the resources of one type with these ids (the file is rewritten once); returns how many."""
        gone, target = set(ids), self._file(resource_type)
        if not gone or not target.exists():
            return 0
        removed = 0
        with tempfile.NamedTemporaryFile(dir=self.path, prefix=".spool-", suffix=SUFFIX, delete=False) as out:
            try:
                for line, id_ in _lines_with_ids(target):
                    if id_ in gone:
                        removed += 1
                    else:
                        out.write(line)
            except BaseException:
                os.unlink(out.name)
                raise
        os.replace(out.name, target)
        return removed

    def clear(self) -> None:
        for resource_type in self.resource_types():
            (self.path / f"{resource_type}{SUFFIX}").unlink()


def _lines_with_ids(path: Path) -> Iterator[tuple[bytes, str]]:
    """(line ending in a newline, resource id) for each non-blank line; bad JSON is named by line."""
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            if line.isspace():
                continue
            resource = _load_line(path, number, line)
            if not isinstance(resource, dict) or "id" not in resource:
                raise InputError(f"{path}, line {number}: not a FHIR resource with an id; fix or remove the line")
            yield (line if line.endswith(b"\n") else line + b"\n"), resource["id"]


def _load_line(path: Path, number: int, line: bytes) -> Any:
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise InputError(f"{path}, line {number}: not valid JSON ({exc}); fix or remove the line") from None


def _digest(id_: str, size: int) -> bytes:
    return hashlib.blake2b(id_.encode(), digest_size=size).digest()


def _sorted_unique(resource_type: str, digests: bytearray, size: int, spooled: Path) -> np.ndarray:
    """The sorted digests of one write's ids; an id written twice is an error naming it.

    Equal digests are confirmed against the spooled ids, so a collision of two different
    ids (possible with 8 bytes) is not mistaken for a repeat.
    """
    ids = np.frombuffer(digests, dtype=f"S{size}")  # a view of the bytearray: sorted in place, no copy
    ids.sort()
    repeated = np.unique(ids[1:][ids[1:] == ids[:-1]]).tobytes()  # whole digests (a bytes_ scalar drops trailing NULs)
    suspects = {repeated[i:i + size] for i in range(0, len(repeated), size)}
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
