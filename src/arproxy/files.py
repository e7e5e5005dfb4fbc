"""Writing a file so that a reader sees the old contents or the new, never half."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_atomically(
    target: Path, data: bytes, mode: int, *, keep_owner: bool = False, create_parents: bool = False
) -> None:
    """Write `data` to a temporary file with `mode` beside `target`, fsync, rename it
    over `target`, and fsync the directory so the rename itself is durable.

    With `keep_owner`, an existing file's owner and group are kept (possible only
    as root), so `sudo arproxy passwd` leaves the file readable by the daemon's user.
    Missing directories are made only with `create_parents`. Raises OSError.
    """
    if create_parents:
        target.parent.mkdir(parents=True, exist_ok=True)
    owner = target.stat() if keep_owner and target.exists() else None
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), mode)
            if owner is not None:
                with contextlib.suppress(PermissionError):
                    os.fchown(file.fileno(), owner.st_uid, owner.st_gid)
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)  # only still there if something failed
    directory = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
