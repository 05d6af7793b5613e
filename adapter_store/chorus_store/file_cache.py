"""A folder of local copies of remote files, bounded in bytes: least recently used out.

A remote store's decoding files (language models up to `max_lm_bytes`, lexicons) are copied to local disk to be
loaded; without a bound every copy ever fetched stayed, deleted versions' included, and one tenant uploading,
using and deleting language models in a loop could fill the disk every tenant's uploads are spooled on. A use
marks a copy (its modification time); a new copy evicts the least recently used others until the folder fits
its budget. Removing a copy a decoder still has open or mapped is safe (the file lives on until closed); a
caller that finds its copy gone fetches it again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path

logger = logging.getLogger(__name__)


def mark_used(path: Path) -> None:
    """Make `path` the most recently used copy (a copy removed meanwhile is simply fetched again later)."""
    now = time.time_ns()  # the precise clock: a file system's own "now" may be a few milliseconds coarse
    with contextlib.suppress(FileNotFoundError):
        os.utime(path, ns=(now, now))


def evict_least_recently_used(folder: Path, budget_bytes: int, keep: Path) -> list[Path]:
    """Remove the least recently used files of `folder` until it holds at most `budget_bytes`; `keep` (the copy
    just made) stays even when it alone is larger. Returns the paths removed."""
    copies: list[tuple[int, int, Path]] = []
    for entry in os.scandir(folder):
        if not entry.is_file(follow_symlinks=False):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except FileNotFoundError:  # removed by another process meanwhile
            continue
        copies.append((info.st_mtime_ns, info.st_size, Path(entry.path)))
    total = sum(size for _, size, _ in copies)
    removed: list[Path] = []
    for _, size, path in sorted(copies, key=lambda copy: copy[0]):
        if total <= budget_bytes:
            break
        if path == keep:
            continue
        path.unlink(missing_ok=True)
        total -= size
        removed.append(path)
    if removed:
        logger.info(
            "%s: removed %d least recently used copies (budget %d MiB)", folder, len(removed), budget_bytes >> 20
        )
    return removed
