"""Sources of resources readable by type: the Store, or resources held in memory."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from .ndjson import Prefilter, Resource


class ResourceSource(Protocol):
    """Anything that streams resources by type (Store, BundleSource, a server pull).

    ``prefilter`` is a shortcut for sources that hold raw NDJSON lines (see Store.read).
    """

    def read(self, resource_type: str, prefilter: Prefilter | None = None) -> Iterator[Resource]: ...


class BundleSource:
    """Resources of an in-memory list, readable by type.

    ``not_used`` holds one line per part of the input that held no resource (e.g. a Bundle's
    DELETE and GET entries), for the jobs to report.
    """

    def __init__(self, resources: list[Resource], not_used: list[str] | None = None):
        self.not_used = list(not_used or [])
        self._by_type: dict[str, list[Resource]] = {}
        for resource in resources:
            self._by_type.setdefault(resource["resourceType"], []).append(resource)

    def read(self, resource_type: str, prefilter: Prefilter | None = None) -> Iterator[Resource]:
        """The resources of one type; ``prefilter`` is ignored (there are no raw lines to skip)."""
        return iter(self._by_type.get(resource_type, []))

    def resource_types(self) -> list[str]:
        return sorted(self._by_type)

    def read_all(self) -> Iterator[Resource]:
        for resource_type in sorted(self._by_type):
            yield from self._by_type[resource_type]
