"""The sync journal: what reached which server, so jobs are incremental and resumable.

A SQLite file (one per state directory) records, per target server, each pushed
resource's local id, the id the server gave it, and a hash of its content; and per
source server the high-water mark of the last successful pull and the ids the server
held for the study then, each with a hash of the version fetched (so a later pull can
tell what was deleted there, and what was changed here since). A job killed
mid-way loses at most the bundle in flight; the rerun skips everything recorded.
The journal is only what fhir-msc believes: push checks the server against it.
"""

from __future__ import annotations

import fcntl
import hashlib
import sqlite3
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Iterator

import orjson

from ..errors import SyncLocked
from ..store.files import private_dir, private_open

_SCHEMA = """
create table if not exists pushed (
    target text not null, resource_type text not null, local_id text not null,
    server_id text not null, hash text not null, primary key (target, resource_type, local_id));
create table if not exists pulled (source text not null, study text not null, high_water text not null,
    primary key (source, study));
create table if not exists pulled_ids (source text not null, study text not null, resource_type text not null,
    id text not null, hash text, primary key (source, study, resource_type, id));
"""


def content_hash(resource: dict) -> str:
    """Hash of a resource without id and meta (what the server may rewrite)."""
    body = {k: v for k, v in resource.items() if k not in ("id", "meta")}
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


def value_hash(resource: dict) -> str:
    """``content_hash`` with numbers taken by value: 103.0 and 103 alike (servers written in JavaScript
    send back 103 for 103.0), for telling whether a store's version of a resource is the server's."""
    return content_hash(_by_value(resource))


def _by_value(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _by_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_by_value(v) for v in value]
    return value


class Journal:
    """Push and pull records in ``state_dir/journal.sqlite``."""

    def __init__(self, state_dir: Path):
        private_dir(state_dir)
        self.path = state_dir / "journal.sqlite"
        private_open(self.path, "ab").close()  # 0600 before SQLite opens it (its side files take the same mode)
        self._db = sqlite3.connect(self.path)
        self._db.executescript(_SCHEMA)
        if "hash" not in {row[1] for row in self._db.execute("pragma table_info(pulled_ids)")}:  # an older journal
            self._db.execute("alter table pulled_ids add column hash text")

    def close(self) -> None:
        self._db.close()

    def pushed(self, target: str, resource_type: str, local_id: str) -> tuple[str, str] | None:
        """(server id, content hash) of the last successful push, if any."""
        row = self._db.execute("select server_id, hash from pushed where target=? and resource_type=? and local_id=?",
                               (target, resource_type, local_id)).fetchone()
        return (row[0], row[1]) if row else None

    def record_push(self, target: str, rows: list[tuple[str, str, str, str]]) -> None:
        """Record (resource type, local id, server id, hash) rows in one commit."""
        with self._db:
            self._db.executemany("insert or replace into pushed values (?, ?, ?, ?, ?)", [(target, *r) for r in rows])

    def forget_push(self, target: str, keys: list[tuple[str, str]]) -> None:
        """Drop the records of (resource type, local id) pairs: the server no longer holds them."""
        with self._db:
            self._db.executemany("delete from pushed where target=? and resource_type=? and local_id=?",
                                 [(target, *k) for k in keys])

    def pulled(self, source: str, study: str) -> dict[str, dict[str, str | None]]:
        """Per resource type, the ids the server held for the study at the last pull, each with the ``value_hash``
        of the server's version last fetched (None in journals written before hashes were kept)."""
        held: dict[str, dict[str, str | None]] = {}
        for resource_type, id_, digest in self._db.execute(
                "select resource_type, id, hash from pulled_ids where source=? and study=?", (source, study)):
            held.setdefault(resource_type, {})[id_] = digest
        return held

    def record_pulled(self, source: str, study: str, held: dict[str, dict[str, str | None]]) -> None:
        """Replace the ids (and hashes) recorded for the study on this server in one commit."""
        with self._db:
            self._db.execute("delete from pulled_ids where source=? and study=?", (source, study))
            self._db.executemany("insert into pulled_ids (source, study, resource_type, id, hash) values (?, ?, ?, ?, ?)",
                                 [(source, study, t, i, h) for t, ids in held.items() for i, h in ids.items()])

    def high_water(self, source: str, study: str) -> str | None:
        row = self._db.execute("select high_water from pulled where source=? and study=?", (source, study)).fetchone()
        return row[0] if row else None

    def record_pull(self, source: str, study: str, high_water: str) -> None:
        with self._db:
            self._db.execute("insert or replace into pulled values (?, ?, ?)", (source, study, high_water))


@contextmanager
def exclusive(state_dir: Path) -> Iterator[None]:
    """Hold the state directory's lock for the duration; fail fast if another job has it."""
    private_dir(state_dir)
    with private_open(state_dir / "sync.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SyncLocked(f"another fhir-msc job holds {state_dir / 'sync.lock'}: wait for it to finish") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def open_journal(state_dir: Path, *, lock: bool = True) -> Iterator[Journal]:
    """The journal in ``state_dir``, closed afterwards; held under the sync lock unless ``lock`` is false."""
    with exclusive(state_dir) if lock else nullcontext():
        journal = Journal(state_dir)
        try:
            yield journal
        finally:
            journal.close()
