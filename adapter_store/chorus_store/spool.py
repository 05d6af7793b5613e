"""Upload spool files that no crash leaves behind. A writer locks its file (`flock`) before it appears under its
name and holds the lock until the file is removed, so a process opening the same directory later (a restart, or
a second server sharing it) removes exactly the files of dead processes and never a live upload in flight."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

logger = logging.getLogger(__name__)

SPOOL_PREFIXES = ("upload-", "s3-upload-")  # the server's uploads, and the S3 store's staging copies
STAGING_GRACE_SECONDS = 60.0  # a file is locked microseconds after its staging name appears


@contextlib.contextmanager
def spool_file(directory: Path, prefix: str, suffix: str) -> Iterator[tuple[Path, BinaryIO]]:
    """A new file `directory/<prefix>…<suffix>` open for writing and locked until the block ends, then removed."""
    fd, staging = tempfile.mkstemp(prefix=f".{prefix}", suffix=f"{suffix}.creating", dir=directory)
    with os.fdopen(fd, "w+b") as out:
        fcntl.flock(out, fcntl.LOCK_EX)  # before the real name: recovery never sees it unlocked
        path = directory / Path(staging).name.removeprefix(".").removesuffix(".creating")
        os.rename(staging, path)
        try:
            yield path, out
        finally:
            path.unlink(missing_ok=True)


def remove_abandoned(directory: Path, now: float | None = None) -> tuple[int, int]:
    """Remove spool files of dead processes (unlocked ones) in `directory`; returns (files, bytes) removed."""
    now = time.time() if now is None else now
    files = size = 0
    try:
        entries = list(directory.iterdir())
    except FileNotFoundError:
        return 0, 0
    for entry in entries:
        staged = entry.name.startswith(tuple(f".{p}" for p in SPOOL_PREFIXES)) and entry.name.endswith(".creating")
        if not (entry.name.startswith(SPOOL_PREFIXES) or staged):
            continue
        with contextlib.suppress(FileNotFoundError, IsADirectoryError), entry.open("rb") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live process's upload
            stat = os.fstat(f.fileno())
            if staged and now - stat.st_mtime < STAGING_GRACE_SECONDS:
                continue  # created this instant, about to be locked by its writer
            entry.unlink()
            files, size = files + 1, size + stat.st_size
    if files:
        logger.warning("removed %d abandoned upload file(s), %d bytes, from %s", files, size, directory)
    return files, size
