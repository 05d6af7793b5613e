"""The tenant database file (`CHORUS_AUTH__KEY_FILE`): one SQLite file holding the API keys, the per-tenant limit
overrides and the usage counters, opened per operation so the server, other servers on the host and the
`chorus keys` command can all use it at once."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path


@contextlib.contextmanager
def session(path: Path, schema: Iterable[str]) -> Iterator[sqlite3.Connection]:
    """A connection to `path` with `schema` (CREATE ... IF NOT EXISTS statements) in place, committing on exit."""
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(path, timeout=10)
    try:
        for statement in schema:
            connection.execute(statement)
        with connection:
            yield connection
    finally:
        connection.close()
