"""A columnar projection of the store: Parquet files of flat tables, kept beside the NDJSON.

The store does not know what the tables are. A caller (the analysis) names a table, the
resource types it is computed from, a key for how it is computed (e.g. a digest of the
ViewDefinition), and a function that builds it as an Arrow table. The file
``.columnar/<name>.parquet`` carries a stamp in its Parquet metadata: the key and, for each
NDJSON file it was built from, its size, modification time and inode. A table whose stamp
no longer matches the store is stale and is rebuilt when next asked for; every store write
renames new files into place, so a write changes the inode of each type it touched.

A build happens in a spool directory (``.columnar/.build-*``) and is renamed into place, so
readers see the old table or the new one, never half of one; what a killed build left is
removed by the next one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from .files import FILE_MODE, private_dir, private_open
from .lock import spool_dir, sweep_debris
from .ndjson import Store

DIRECTORY = ".columnar"
BUILD_PREFIX = ".build-"
STAMP = b"fhir-msc.stamp"


@dataclass(frozen=True)
class Projection:
    """One table of the projection: its Parquet file, and whether this call (re)built it."""

    name: str
    path: Path
    rows: int
    rebuilt: bool


class ColumnarProjection:
    """The Parquet tables kept for one store (in ``Store.path / .columnar`` unless told another directory)."""

    def __init__(self, store: Store, directory: Path | None = None):
        self.store = store
        self.directory = directory or store.path / DIRECTORY  # elsewhere: e.g. for a read-only store

    def path(self, name: str) -> Path:
        return self.directory / f"{name}.parquet"

    def stamp(self, resource_types: Iterable[str], key: str) -> dict[str, object]:
        """What a table computed by ``key`` from these types' NDJSON files now would be stamped with."""
        files: dict[str, list[int] | None] = {}
        for resource_type in sorted(set(resource_types)):
            current = self.store.current_file(resource_type)
            if current is None:
                files[resource_type] = None
                continue
            info = current.stat()
            files[resource_type] = [info.st_size, info.st_mtime_ns, info.st_ino]
        return {"key": key, "files": files}

    def stored_stamp(self, name: str) -> dict[str, object] | None:
        """The stamp the table was built with (None when there is no readable table)."""
        try:
            metadata = pq.read_schema(self.path(name)).metadata or {}
        except (FileNotFoundError, pa.ArrowInvalid, OSError):
            return None
        raw = metadata.get(STAMP)
        return orjson.loads(raw) if raw else None

    def is_fresh(self, name: str, resource_types: Iterable[str], key: str) -> bool:
        return self.stored_stamp(name) == self.stamp(resource_types, key)

    def table(self, name: str, resource_types: Iterable[str], key: str,
              build: Callable[[], pa.Table]) -> Projection:
        """The fresh table ``name``: the kept Parquet file, or ``build()`` written there first."""
        def write(path: Path, metadata: dict[bytes, bytes]) -> None:
            table = build()
            with private_open(path, "wb") as out:
                pq.write_table(table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata}), out)
        return self.table_written(name, resource_types, key, write)

    def table_written(self, name: str, resource_types: Iterable[str], key: str,
                      write: Callable[[Path, dict[bytes, bytes]], None]) -> Projection:
        """As :meth:`table`, built by ``write(path, metadata)``: a Parquet file at ``path`` carrying ``metadata``.

        ``write`` may stream (an engine writing Parquet itself); the file is made owner-only before it is
        renamed into place.
        """
        types = list(resource_types)
        if self.is_fresh(name, types, key):
            return Projection(name, self.path(name), pq.read_metadata(self.path(name)).num_rows, rebuilt=False)
        stamp = self.stamp(types, key)  # taken before the build: a write meanwhile leaves the table stale
        private_dir(self.directory)
        sweep_debris(self.directory, BUILD_PREFIX)
        with spool_dir(self.directory, BUILD_PREFIX) as spool:
            built = spool / f"{name}.parquet"
            write(built, {STAMP: orjson.dumps(stamp)})
            os.chmod(built, FILE_MODE)
            rows = pq.read_metadata(built).num_rows
            os.replace(built, self.path(name))
        return Projection(name, self.path(name), rows, rebuilt=True)

    def names(self) -> list[str]:
        """The tables kept now (fresh or not)."""
        if not self.directory.is_dir():
            return []
        return sorted(p.stem for p in self.directory.glob("*.parquet"))
