"""Tenancy: API keys, roles' records, limits, rates, usage and the audit log, behind one interface
(`base.TenantStore`) with the database chosen by `CHORUS_DATABASE_URL` (unset: the SQLite file beside the data).

HTTP concerns (principals and permissions, the audit of a request) stay outside: `chorus_server.auth`,
`chorus_server.audit`, the routes."""

from __future__ import annotations

from pathlib import Path

from chorus_server.settings import Settings
from chorus_server.tenants.base import TenantStore

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def key_file(settings: Settings) -> Path:
    """The SQLite tenant database of this configuration (`CHORUS_AUTH__KEY_FILE`, else DATA_DIR/keys.sqlite3)."""
    return settings.auth.key_file or settings.data_dir / "keys.sqlite3"


def open_tenant_store(settings: Settings) -> TenantStore:
    """The tenant store `CHORUS_DATABASE_URL` names: unset, the SQLite file; `postgresql://…`, a shared database.
    Raises `StartupError` for a URL it cannot use."""
    from chorus_server.startup import StartupError

    url = settings.database_url
    if url is None:
        from chorus_server.tenants.sqlite import SqliteTenantStore

        return SqliteTenantStore(key_file(settings), settings.auth.db_timeout_seconds)
    if url.startswith(POSTGRES_SCHEMES):
        raise StartupError(
            "CHORUS_DATABASE_URL: PostgreSQL backend not available in this build; unset CHORUS_DATABASE_URL to use "
            "the SQLite file (CHORUS_AUTH__KEY_FILE)"
        )
    raise StartupError(
        f"CHORUS_DATABASE_URL: unsupported scheme in {url.split('://')[0]!r}://…; use postgresql://user@host:port/db "
        "or leave it unset for the SQLite file"
    )
