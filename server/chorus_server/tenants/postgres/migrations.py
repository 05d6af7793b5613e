"""Versioned migrations of the tenant database, applied when a process starts.

`migrate` takes a transaction-scoped advisory lock first, so processes starting at once apply each migration
exactly once between them (the others wait, then find it applied); a migration and its `schema_migrations` row
commit together or not at all. A database migrated by a newer Chorus than this one is refused with
`SchemaTooNew`: this code would not know what the newer schema means."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import psycopg

from chorus_server.tenants.postgres.schema import MIGRATIONS, Migration

logger = logging.getLogger(__name__)

# Fixed key of the advisory lock that serializes migrations (any constant; "chorus_m" in ASCII).
LOCK_KEY = 0x63686F7275735F6D

CREATE_VERSIONS = (
    "CREATE TABLE IF NOT EXISTS schema_migrations ("
    "version integer PRIMARY KEY, description text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
)


class SchemaTooNew(Exception):
    """The database's schema is newer than this code knows; the message says what to do."""


def check_sequence(migrations: Sequence[Migration]) -> None:
    versions = [m.version for m in migrations]
    if versions != list(range(1, len(versions) + 1)):
        raise ValueError(f"migrations must be numbered 1, 2, 3, ... in order; got {versions}")


def applied_versions(conn: psycopg.Connection) -> list[int]:
    """Versions recorded in the database, ascending (empty for a database never migrated)."""
    exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return []
    return [row[0] for row in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]


def migrate(conn: psycopg.Connection, migrations: Sequence[Migration] = MIGRATIONS) -> list[int]:
    """Bring the database to the newest of `migrations`; returns the versions this call applied (often none).
    `conn` must not be inside a transaction (the migration opens and commits its own). Raises `SchemaTooNew`."""
    check_sequence(migrations)
    known = len(migrations)
    applied: list[int] = []
    with conn.transaction():
        # Held to the end of this transaction: a second starter waits here, then sees the versions committed.
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
        conn.execute(CREATE_VERSIONS)
        done = set(applied_versions(conn))
        newest = max(done, default=0)
        if newest > known:
            raise SchemaTooNew(
                f"the tenant database's schema is at version {newest}, newer than this Chorus knows "
                f"(up to {known}): a newer Chorus migrated it; run that version (on every process) instead"
            )
        for migration in migrations:
            if migration.version in done:
                continue
            logger.info("tenant database: applying migration %d (%s)", migration.version, migration.description)
            conn.execute(migration.sql)  # several statements: allowed without parameters
            conn.execute(
                "INSERT INTO schema_migrations (version, description) VALUES (%s, %s)",
                (migration.version, migration.description),
            )
            applied.append(migration.version)
    return applied
