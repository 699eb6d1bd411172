"""The study definition a store holds data of: a copy of its YAML file, kept in the store.

``map`` and ``pull`` record the definition they used in ``STORE/.fhir-msc/``: ``study.yaml``
(the file's bytes, unchanged, so its SHA-256 is the original's) and ``study.yaml.sha256``
(that digest as ``sha256sum`` writes it: ``sha256sum -c`` checks the copy). Later commands
on the store read the copy instead of a ``--study`` option. Both files are owner-only (a
study file may name sites and investigators) and each is replaced whole, never
half-written; neither ends in ``.json`` or ``.ndjson``, so tools that read a store's
resources never take them for one. What a definition means is the study layer's business:
here it is bytes and a digest.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from .files import private_dir, private_open

DIRECTORY = ".fhir-msc"  # the store's own files, beside its NDJSON files
COPY = "study.yaml"
DIGEST = f"{COPY}.sha256"


@dataclass(frozen=True, kw_only=True)
class RecordedStudy:
    """The copy of the definition a store was mapped or pulled with."""

    path: Path  # the copy: a YAML file load_study reads
    sha256: str  # of the copy's bytes, the same as of the file it was copied from


def recorded_study(store: Path) -> RecordedStudy | None:
    """The definition recorded in ``store``; None for a store without one (older stores, a bundle file)."""
    copy = store / DIRECTORY / COPY
    if not copy.is_file():
        return None
    return RecordedStudy(path=copy, sha256=hashlib.sha256(copy.read_bytes()).hexdigest())


def record_study(store: Path, definition: Path) -> RecordedStudy:
    """Copy the definition file ``definition`` into ``store`` (hold the store's write lock)."""
    data = definition.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    directory = private_dir(store / DIRECTORY)
    _replace(directory / COPY, data)
    _replace(directory / DIGEST, f"{digest}  {COPY}\n".encode())
    return RecordedStudy(path=directory / COPY, sha256=digest)


def forget_study(store: Path) -> None:
    """Remove the recorded definition (a store emptied to start afresh)."""
    for name in (COPY, DIGEST):
        (store / DIRECTORY / name).unlink(missing_ok=True)


def _replace(path: Path, data: bytes) -> None:
    """Write ``path`` whole through a temporary file beside it, owner-only."""
    staged = path.with_name(f".{path.name}.new")
    with private_open(staged, "wb") as handle:
        handle.write(data)
    os.replace(staged, path)
