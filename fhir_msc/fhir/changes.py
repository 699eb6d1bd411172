"""What a mapping run changes in a store: each resource is created, updated or unchanged.

Resources are compared with the store by id and by content (a digest of their NDJSON
line), in batches with numpy, holding 16 bytes per stored resource of the types written.
Unchanged resources are not passed on, so mapping the same tables again leaves the store
as it was.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from ..errors import InputError
from ..store.ndjson import Store

Resource = dict[str, Any]
BATCH = 4096
_ID = re.compile(rb'^\{"resourceType":"[A-Za-z]+","id":"([^"\\]+)"')


@dataclass(frozen=True, kw_only=True)
class ResourceChanges:
    """Resources of one type a run produced, by what they did to the target store."""

    created: int = 0
    updated: int = 0
    unchanged: int = 0

    @property
    def total(self) -> int:
        return self.created + self.updated + self.unchanged


def _digests(values: Iterable[bytes]) -> np.ndarray:
    return np.frombuffer(b"".join(hashlib.blake2b(v, digest_size=8).digest() for v in values), dtype="<u8")


class ChangeTracker:
    """Sorts resources going into ``store`` into created / updated / unchanged, passing on the first two."""

    def __init__(self, store: Store):
        self.store = store
        self._index: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._counts: dict[str, list[int]] = {}

    @property
    def changes(self) -> dict[str, ResourceChanges]:
        return {t: ResourceChanges(created=c, updated=u, unchanged=n) for t, (c, u, n) in self._counts.items()}

    def changed(self, resources: Iterable[Resource]) -> Iterator[Resource]:
        batch: list[Resource] = []
        for resource in resources:
            batch.append(resource)
            if len(batch) == BATCH:
                yield from self._sort(batch)
                batch = []
        yield from self._sort(batch)

    def _sort(self, batch: list[Resource]) -> Iterator[Resource]:
        by_type: dict[str, list[int]] = {}
        for i, resource in enumerate(batch):
            by_type.setdefault(resource["resourceType"], []).append(i)
        keep = np.ones(len(batch), dtype=bool)
        for resource_type, where in by_type.items():
            counts = self._counts.setdefault(resource_type, [0, 0, 0])
            old_ids, old_contents = self._stored(resource_type)
            if not len(old_ids):
                counts[0] += len(where)
                continue
            ids = _digests(batch[i]["id"].encode() for i in where)
            contents = _digests(orjson.dumps(batch[i]) for i in where)
            at = np.minimum(np.searchsorted(old_ids, ids), len(old_ids) - 1)
            found = old_ids[at] == ids
            same = found & (old_contents[at] == contents)
            counts[0] += int((~found).sum())
            counts[1] += int((found & ~same).sum())
            counts[2] += int(same.sum())
            keep[np.asarray(where)[same]] = False
        return (resource for resource, kept in zip(batch, keep) if kept)

    def _stored(self, resource_type: str) -> tuple[np.ndarray, np.ndarray]:
        """(sorted id digests, content digests in the same order) of the stored resources of one type."""
        if resource_type not in self._index:
            lines: list[bytes] = []

            def collect(line: bytes) -> bool:  # sees every raw line; none is parsed by the store
                if not line.isspace():
                    lines.append(line.rstrip(b"\r\n"))
                return False

            for _ in self.store.read(resource_type, prefilter=collect):
                pass
            ids = _digests(_line_id(self.store, resource_type, n, line).encode() for n, line in enumerate(lines, 1))
            contents = _digests(lines)
            order = np.argsort(ids, kind="stable")
            self._index[resource_type] = (ids[order], contents[order])
        return self._index[resource_type]


def _line_id(store: Store, resource_type: str, number: int, line: bytes) -> str:
    if match := _ID.match(line):
        return match.group(1).decode()
    try:
        resource = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise InputError(f"{store.path}/{resource_type}.ndjson, line {number}: not valid JSON ({exc}); "
                         "fix or remove the line") from None
    if not isinstance(resource, dict) or not isinstance(resource.get("id"), str):
        raise InputError(f"{store.path}/{resource_type}.ndjson, line {number}: not a FHIR resource with an id; "
                         "fix or remove the line")
    return resource["id"]
