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
        return _open_postgres(settings, url)
    raise StartupError(
        f"CHORUS_DATABASE_URL: unsupported scheme in {url.split('://')[0]!r}://…; use postgresql://user@host:port/db "
        "or leave it unset for the SQLite file"
    )


def _open_postgres(settings: Settings, url: str) -> TenantStore:
    from chorus_server.startup import StartupError

    try:
        from chorus_server.tenants.postgres.migrations import SchemaTooNew
        from chorus_server.tenants.postgres.store import PostgresTenantStore
    except ImportError as exc:
        raise StartupError(
            f"CHORUS_DATABASE_URL: PostgreSQL needs psycopg 3 ({exc.name} is missing): pip install "
            "'chorus-asr[postgres]', or unset CHORUS_DATABASE_URL to use the SQLite file"
        ) from exc
    try:
        return PostgresTenantStore(url, settings.database_timeout_seconds, settings.database_pool_size)
    except (SchemaTooNew, ValueError) as exc:
        raise StartupError(f"CHORUS_DATABASE_URL: {exc}") from exc
