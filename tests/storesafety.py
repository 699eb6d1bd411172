"""Helpers for the store-safety tests: another process holding a store's lock, modes of what was written."""

from __future__ import annotations

import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import fhir_msc

_HOLD = """
import sys, types
from pathlib import Path
package = types.ModuleType("fhir_msc")  # the store layer alone, without the package's heavy __init__
package.__path__ = [sys.argv[2]]
sys.modules["fhir_msc"] = package
from fhir_msc.store.lock import store_lock
with store_lock(Path(sys.argv[1])):
    print("held", flush=True)
    sys.stdin.read()
"""


@contextmanager
def lock_held_elsewhere(store: Path) -> Iterator[int]:
    """Another process holds ``store``'s write lock until the block ends; yields its pid."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(store), str(Path(fhir_msc.__file__).parent)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        yield holder.pid
    finally:
        holder.stdin.close()
        assert holder.wait(timeout=30) == 0


def not_owner_only(*roots: Path) -> list[str]:
    """Every file not 0600 and directory not 0700 at or under ``roots``, with its mode."""
    wrong = []
    for root in roots:
        for path in [root, *root.rglob("*")]:
            mode = stat.S_IMODE(path.lstat().st_mode)
            expected = 0o700 if path.is_dir() else 0o600
            if mode != expected:
                wrong.append(f"{path}: {oct(mode)}")
    return wrong
