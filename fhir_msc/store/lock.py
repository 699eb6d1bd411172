"""One writer per store, and spool directories that a later run can tell from a live job's.

``store_lock`` holds an ``fcntl.flock`` on ``STORE/.fhir-msc.lock`` for a whole job (read
what is there, then write), so two jobs writing one store never interleave: the second
refuses at once with exit 9. The lock goes with the process: a killed job never leaves a
stale lock behind.

``spool_dir`` makes a temporary directory and holds a lock on it while it lives, so
``sweep_debris`` removes only the spools of jobs that were killed, never a live one's.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import NoAccess, SyncLocked
from .files import DIR_MODE, private_dir, private_open

LOCK_FILE = ".fhir-msc.lock"

_held: dict[Path, tuple[int, int]] = {}  # store → (thread holding it, nesting depth) in this process
_held_guard = threading.Lock()


@contextmanager
def store_lock(store: Path) -> Iterator[bool]:
    """Hold the write lock of ``store`` (created 0700 if missing) for the duration.

    Yields True for the outermost holder in this process, False when nested (a job that
    holds the lock calling another job, or ``Store.write``, on the same store). Raises
    ``SyncLocked`` (exit 9) if another process or thread holds it.
    """
    key = private_dir(store).resolve()
    me = threading.get_ident()
    with _held_guard:
        owner, depth = _held.get(key, (me, 0))
        if owner != me:
            raise SyncLocked(_locked_message(store, os.getpid()))
        if depth:
            _held[key] = (me, depth + 1)
    if depth:
        try:
            yield False
        finally:
            with _held_guard:
                _held[key] = (me, depth)
        return
    try:
        opened = private_open(key / LOCK_FILE, "a+")
    except OSError as error:
        raise NoAccess.of(error, store) or error from None
    with opened as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip()
            raise SyncLocked(_locked_message(store, int(holder) if holder.isdigit() else None)) from None
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        with _held_guard:
            _held[key] = (me, 1)
        try:
            yield True
        finally:
            with _held_guard:
                del _held[key]
            handle.truncate(0)
            fcntl.flock(handle, fcntl.LOCK_UN)


def _locked_message(store: Path, pid: int | None) -> str:
    who = f"pid {pid}" if pid else "pid unknown"
    return (f"another job is writing {store} ({who}); wait for it to finish and run this again "
            "(a job that was killed releases the lock with its process)")


@contextmanager
def spool_dir(parent: Path, prefix: str) -> Iterator[Path]:
    """A new 0700 directory ``parent/<prefix>XXXXXXXX``, locked while in use and removed afterwards.

    The caller may rename it away (e.g. publish it as the rejects directory); what is left
    at ``path`` when the block ends is removed.
    """
    private_dir(parent)
    while True:
        try:
            path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        except OSError as error:
            raise NoAccess.of(error, parent) or error from None
        os.chmod(path, DIR_MODE)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:  # a sweep did not take it before we locked it
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        os.close(fd)


def sweep_debris(parent: Path, prefix: str, *, dry_run: bool = False) -> list[Path]:
    """Remove the ``prefix*`` spool directories in ``parent`` that no live job holds; returns them.

    With ``dry_run`` only says which ones.
    """
    removed = []
    for path in sorted(parent.glob(f"{prefix}*")) if parent.is_dir() else []:
        if path.is_symlink() or not path.is_dir():
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue  # a live job's
        try:
            if not dry_run:
                shutil.rmtree(path)
            removed.append(path)
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)
    return removed
