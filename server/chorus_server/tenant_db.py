"""Per-tenant limit overrides and daily usage, in the tenant database file beside the API keys
(`chorus_server.sqlite_file`), so a tenant's keys, limits and usage live together and survive restarts."""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
from pathlib import Path
from typing import Any

from chorus_server.settings import TenantLimits
from chorus_server.sqlite_file import DEFAULT_TIMEOUT, session

logger = logging.getLogger(__name__)

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS tenant_limits (tenant TEXT PRIMARY KEY, limits TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS usage_daily (tenant TEXT NOT NULL, day TEXT NOT NULL, requests INTEGER NOT NULL, "
    "audio_seconds REAL NOT NULL, PRIMARY KEY (tenant, day))",
)


class TenantDB:
    def __init__(self, path: Path, timeout: float = DEFAULT_TIMEOUT):
        """Creates the tables now, so that serving never writes to read: a file that turns read-only (or is
        locked) later still answers reads of limits and usage."""
        self.path, self.timeout = path, timeout
        try:
            with self._db():
                pass
        except sqlite3.Error as exc:  # not fatal here: each later access reports its own fault (503)
            logger.warning("tenant database %s: tables not created yet: %s", path, exc)

    def _db(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return session(self.path, SCHEMA, self.timeout)

    def overrides(self, tenant: str) -> dict[str, Any]:
        with self._db() as db:
            row = db.execute("SELECT limits FROM tenant_limits WHERE tenant = ?", (tenant,)).fetchone()
        return json.loads(row[0]) if row else {}

    def limits(self, tenant: str, defaults: TenantLimits) -> TenantLimits:
        """The defaults with the tenant's overrides applied."""
        return defaults.model_copy(update=self.overrides(tenant))

    def set_overrides(self, tenant: str, overrides: dict[str, Any]) -> None:
        """Replace the tenant's overrides (an empty dict: back to the defaults)."""
        with self._db() as db:
            if overrides:
                db.execute(
                    "INSERT INTO tenant_limits (tenant, limits) VALUES (?, ?) "
                    "ON CONFLICT (tenant) DO UPDATE SET limits = excluded.limits",
                    (tenant, json.dumps(overrides)),
                )
            else:
                db.execute("DELETE FROM tenant_limits WHERE tenant = ?", (tenant,))

    def usage(self, tenant: str, day: str) -> tuple[int, float]:
        """(requests, audio seconds) recorded for `tenant` on `day` (YYYY-MM-DD, UTC)."""
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
