"""The embedded store: a directory of FHIR NDJSON files, one per resource type.

This is the FHIR Bulk Data layout (``Patient.ndjson``, ``Observation.ndjson``, …), so a
store can be handed to any bulk-data tool. Reading and writing stream one resource at a
time; memory does not grow with the cohort. Writing upserts by logical id.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

from .errors import InputError

Resource = dict[str, Any]
Prefilter = Callable[[bytes], bool]
SUFFIX = ".ndjson"


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
        path = self.path / f"{resource_type}{SUFFIX}"
        if not path.exists():
            return
        with open(path, "rb") as handle:
            for number, line in enumerate(handle, start=1):
                if prefilter is not None and not prefilter(line):
                    continue
                if line.isspace():
                    continue
                try:
                    yield orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    raise InputError(f"{path}, line {number}: not valid JSON ({exc}); fix or remove the line") from None

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
        rewritten once: old lines whose id was not rewritten, then the new lines. Only
        the ids of the new resources are held in memory.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        spool: dict[str, Any] = {}
        ids: dict[str, set[str]] = {}
        with tempfile.TemporaryDirectory(dir=self.path, prefix=".spool-") as tmp:
            try:
                for resource in resources:
                    resource_type = resource["resourceType"]
                    if resource_type not in spool:
                        spool[resource_type] = open(Path(tmp) / f"{resource_type}{SUFFIX}", "wb")
                        ids[resource_type] = set()
                    if resource["id"] in ids[resource_type]:
                        raise InputError(f"{resource_type}/{resource['id']} was produced twice in one write")
                    ids[resource_type].add(resource["id"])
                    spool[resource_type].write(orjson.dumps(resource, option=orjson.OPT_APPEND_NEWLINE))
            finally:
                for handle in spool.values():
                    handle.close()
            for resource_type, new_ids in ids.items():
                self._merge(resource_type, Path(tmp) / f"{resource_type}{SUFFIX}", new_ids)
        return {t: len(i) for t, i in ids.items()}

    def _merge(self, resource_type: str, spooled: Path, new_ids: set[str]) -> None:
        target = self.path / f"{resource_type}{SUFFIX}"
        if not target.exists():
            os.replace(spooled, target)
            return
        merged = spooled.with_suffix(".merged")
        with open(merged, "wb") as out:
            for resource in self.read(resource_type):
                if resource["id"] not in new_ids:
                    out.write(orjson.dumps(resource) + b"\n")
            with open(spooled, "rb") as new:
                for line in new:
                    out.write(line)
        os.replace(merged, target)

    def clear(self) -> None:
        for resource_type in self.resource_types():
            (self.path / f"{resource_type}{SUFFIX}").unlink()


def open_resources(path: str | Path):
    """A readable source of resources: a store directory, or a Bundle JSON file."""
    from .bundle import read_bundle
    from .unmapping import BundleSource

    path = Path(path)
    if path.is_dir():
        return Store(path)
    if path.is_file():
        return BundleSource(list(read_bundle(path)))
    raise InputError(f"{path}: no such store directory or bundle file")
