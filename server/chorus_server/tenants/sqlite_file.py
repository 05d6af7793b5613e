"""The tenant database file (`CHORUS_AUTH__KEY_FILE`): one SQLite file holding the API keys, the per-tenant limit
overrides, the usage counters and the audit log, opened per operation so the server, other servers on the host and the
`chorus keys` command can all use it at once.

A fault of the file — locked by another process past the timeout, a read-only or full disk, damage — is raised
as `DatabaseUnavailable` (answered 503 with Retry-After), never as a bare sqlite3 error (a 500)."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path

from chorus_server.tenants.base import DatabaseUnavailable

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 10.0  # seconds an operation waits for another connection's lock


@contextlib.contextmanager
def session(path: Path, schema: Iterable[str], timeout: float = DEFAULT_TIMEOUT) -> Iterator[sqlite3.Connection]:
    """A connection to `path` with `schema` (CREATE ... IF NOT EXISTS statements) in place, committing on exit."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(path, timeout=timeout)
        try:
            for statement in schema:
                connection.execute(statement)
            with connection:
                yield connection
        finally:
            connection.close()
    except (sqlite3.OperationalError, OSError) as exc:
        raise _unavailable(path, exc) from exc
    except sqlite3.DatabaseError as exc:
        if type(exc) is not sqlite3.DatabaseError:  # IntegrityError and the like are the caller's to handle
            raise
        raise _unavailable(path, exc) from exc  # "file is not a database": damaged


def _unavailable(path: Path, exc: Exception) -> DatabaseUnavailable:
    logger.warning("tenant database %s: %s", path, exc)
    busy = "locked" in str(exc)
    why = "busy (locked by another process)" if busy else "failing (read-only, full or damaged disk)"
    return DatabaseUnavailable(
        f"the key and tenant database is {why}; retry in a few seconds (the operator sees the cause in the log)"
    )


def change_counter(path: Path) -> int | None:
    """The file change counter in the database header, which SQLite increments with every committed change in
    rollback-journal mode; None where it says nothing (no file yet, or WAL mode, which leaves it alone)."""
    try:
        with path.open("rb") as f:
            header = f.read(28)
    except OSError:
        return None
    if len(header) < 28 or header[18] != 1 or header[19] != 1:  # format versions 1: rollback journal; 2: WAL
        return None
    return int.from_bytes(header[24:28], "big")
