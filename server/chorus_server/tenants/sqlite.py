"""The embedded tenant store: one SQLite file per host (`CHORUS_AUTH__KEY_FILE`, default DATA_DIR/keys.sqlite3)
holding keys, limit overrides, daily usage and the audit log, shared by every server on the host and by
`chorus keys`. Rate buckets and concurrency slots are kept in this process's memory (`local_rates`)."""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
from pathlib import Path
from typing import Any

from chorus_server.tenants.base import AuditEntry, DatabaseUnavailable, KeyInfo, Role
from chorus_server.tenants.local_rates import LocalRates
from chorus_server.tenants.sqlite_file import DEFAULT_TIMEOUT, change_counter, session

logger = logging.getLogger(__name__)

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS api_keys (id TEXT PRIMARY KEY, hash BLOB NOT NULL UNIQUE, "
    "tenant TEXT NOT NULL, role TEXT NOT NULL, created_at REAL NOT NULL, expires_at REAL, "
    "last_used_at REAL, revoked_at REAL)",
    "CREATE TABLE IF NOT EXISTS tenant_limits (tenant TEXT PRIMARY KEY, limits TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS usage_daily (tenant TEXT NOT NULL, day TEXT NOT NULL, requests INTEGER NOT NULL, "
    "audio_seconds REAL NOT NULL, PRIMARY KEY (tenant, day))",
    "CREATE TABLE IF NOT EXISTS audit (id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, actor TEXT, "
    "tenant TEXT, role TEXT, key_id TEXT, action TEXT NOT NULL, target TEXT NOT NULL, outcome TEXT NOT NULL, "
    "request_id TEXT, details TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS audit_by_tenant ON audit (tenant, id)",
)
KEY_COLUMNS = "id, tenant, role, created_at, expires_at, last_used_at"
AUDIT_COLUMNS = "id, time, actor, tenant, role, key_id, action, target, outcome, request_id, details"


def _key(row: Any) -> KeyInfo:
    return KeyInfo(row[0], row[1], Role(row[2]), row[3], row[4], row[5])


class SqliteTenantStore(LocalRates):
    """`TenantStore` on a SQLite file, opened per operation (no connection held between calls)."""

    def __init__(self, path: Path, timeout: float = DEFAULT_TIMEOUT):
        """Creates the tables now, so that serving never writes to read: a file that turns read-only (or is
        locked) later still answers reads of keys, limits and usage."""
        super().__init__()
        self.path, self.timeout = path, timeout
        try:
            with self._db():
                pass
        except DatabaseUnavailable as exc:  # not fatal here: each later access reports its own fault (503)
            logger.warning("%s: tables not created yet: %s", self.describe(), exc)

    def _db(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return session(self.path, SCHEMA, self.timeout)

    def describe(self) -> str:
        return f"SQLite file {self.path}"

    def version(self) -> int | None:
        """The file's change counter: bumped by every commit (usage and audit writes too), read without a lock."""
        return change_counter(self.path)

    def close(self) -> None:
        pass  # nothing held between operations

    # ---- keys ------------------------------------------------------------------------------------------------

    def create_key(self, info: KeyInfo, digest: bytes) -> None:
        with self._db() as db:
            db.execute(
                "INSERT INTO api_keys (id, hash, tenant, role, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)",
                (info.id, digest, info.tenant, str(info.role), info.created_at, info.expires_at),
            )

    def find_key(self, digest: bytes) -> KeyInfo | None:
        if not self.path.exists():  # no key was ever created: do not create the file just to look
            return None
        with self._db() as db:
            row = db.execute(
                f"SELECT {KEY_COLUMNS} FROM api_keys WHERE hash = ? AND revoked_at IS NULL", (digest,)
            ).fetchone()
        return None if row is None else _key(row)

    def list_keys(self) -> list[KeyInfo]:
        if not self.path.exists():
            return []
        with self._db() as db:
            rows = db.execute(
                f"SELECT {KEY_COLUMNS} FROM api_keys WHERE revoked_at IS NULL ORDER BY created_at"
            ).fetchall()
        return [_key(row) for row in rows]

    def revoke_key(self, key_id: str, now: float) -> bool:
        if not self.path.exists():
            return False
        with self._db() as db:
            cursor = db.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (now, key_id))
        return cursor.rowcount == 1

    def touch_key(self, key_id: str, now: float) -> None:
        with self._db() as db:
            db.execute("UPDATE api_keys SET last_used_at = ? WHERE id = ?", (now, key_id))

    def has_keys(self) -> bool:
        if not self.path.exists():
            return False
        with self._db() as db:
            return db.execute("SELECT 1 FROM api_keys WHERE revoked_at IS NULL LIMIT 1").fetchone() is not None

    # ---- limits ----------------------------------------------------------------------------------------------

    def limit_overrides(self, tenant: str) -> dict[str, Any]:
        with self._db() as db:
            row = db.execute("SELECT limits FROM tenant_limits WHERE tenant = ?", (tenant,)).fetchone()
        return json.loads(row[0]) if row else {}

    def set_limit_overrides(self, tenant: str, overrides: dict[str, Any]) -> None:
        with self._db() as db:
            if overrides:
                db.execute(
                    "INSERT INTO tenant_limits (tenant, limits) VALUES (?, ?) "
                    "ON CONFLICT (tenant) DO UPDATE SET limits = excluded.limits",
                    (tenant, json.dumps(overrides)),
                )
            else:
                db.execute("DELETE FROM tenant_limits WHERE tenant = ?", (tenant,))

    # ---- usage -----------------------------------------------------------------------------------------------

    def daily_usage(self, tenant: str, day: str) -> tuple[int, float]:
        with self._db() as db:
            row = db.execute(
                "SELECT requests, audio_seconds FROM usage_daily WHERE tenant = ? AND day = ?", (tenant, day)
            ).fetchone()
        return (int(row[0]), float(row[1])) if row else (0, 0.0)

    def add_usage(self, tenant: str, day: str, requests: int, audio_seconds: float) -> None:
        with self._db() as db:
            db.execute(
                "INSERT INTO usage_daily (tenant, day, requests, audio_seconds) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (tenant, day) DO UPDATE SET requests = requests + excluded.requests, "
                "audio_seconds = audio_seconds + excluded.audio_seconds",
                (tenant, day, requests, audio_seconds),
            )

    def tenants_with_usage(self, day: str) -> list[str]:
        with self._db() as db:
            return [row[0] for row in db.execute("SELECT tenant FROM usage_daily WHERE day = ?", (day,))]

    # ---- audit -----------------------------------------------------------------------------------------------

    def append_audit(self, entry: AuditEntry) -> None:
        with self._db() as db:
            db.execute(
                f"INSERT INTO audit ({AUDIT_COLUMNS.removeprefix('id, ')}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    entry.time,
                    entry.actor,
                    entry.tenant,
                    entry.role,
                    entry.key_id,
                    entry.action,
                    entry.target,
                    entry.outcome,
                    entry.request_id,
                    json.dumps(entry.details, separators=(",", ":"), default=str),
                ),
            )

    def audit_entries(
        self, tenant: str | None = None, since: float | None = None, before_id: int | None = None, limit: int = 100
    ) -> list[AuditEntry]:
        where, args = [], []
        for clause, value in (("tenant = ?", tenant), ("time >= ?", since), ("id < ?", before_id)):
            if value is not None:
                where.append(clause)
                args.append(value)
        sql = f"SELECT {AUDIT_COLUMNS} FROM audit {'WHERE ' + ' AND '.join(where) if where else ''} ORDER BY id DESC"
        with self._db() as db:
            rows = db.execute(f"{sql} LIMIT ?", (*args, limit)).fetchall()
        return [
            AuditEntry(r[1], r[6], r[7], r[8], r[2], r[3], r[4], r[5], r[9], json.loads(r[10]), id=r[0]) for r in rows
        ]
