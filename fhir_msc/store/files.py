"""Owner-only files and directories: everything fhir-msc writes that holds trial or hospital data.

Files are created 0600 and directories 0700 whatever the process umask, so a store,
its rejects, the sync journal or hospital findings are never readable by other users.
Directories that already exist are left as they are (they are the user's). A directory
that cannot be created for want of permission is a :class:`NoAccess` naming its parent.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Any

from ..errors import InputError, NoAccess

FILE_MODE = 0o600
DIR_MODE = 0o700


def private_dir(path: Path) -> Path:
    """Create ``path`` and any missing parents as 0700 directories; returns ``path``."""
    missing = []
    for directory in (path, *path.parents):
        if directory.is_dir():
            break
        missing.append(directory)
    for directory in reversed(missing):
        try:
            os.mkdir(directory, DIR_MODE)
        except FileExistsError:
            if not directory.is_dir():
                raise InputError(f"{directory}: exists and is not a directory") from None
            continue
        except OSError as error:
            raise NoAccess.of(error, directory.parent) or error from None
        os.chmod(directory, DIR_MODE)  # the umask may have taken bits we asked for
    return path


def _private_opener(path: str, flags: int) -> int:
    fd = os.open(path, flags, FILE_MODE)
    if flags & (os.O_WRONLY | os.O_RDWR):
        os.fchmod(fd, FILE_MODE)
    return fd


def private_open(path: Path, mode: str = "w", **kwargs: Any) -> IO[Any]:
    """``open(path, mode, ...)`` for writing, with the file made 0600 (also when it existed)."""
    return open(path, mode, opener=_private_opener, **kwargs)


def private_write_text(path: Path, text: str, encoding: str = "utf-8") -> None:
    """``Path.write_text`` with the file made 0600."""
    with private_open(path, "w", encoding=encoding) as handle:
        handle.write(text)
