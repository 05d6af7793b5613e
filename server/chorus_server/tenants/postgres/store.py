"""The shared tenant store: every process on one PostgreSQL database (`CHORUS_DATABASE_URL=postgresql://…`) sees
the same keys, limits, usage and audit, and shares one rate bucket, one set of concurrency slots and one daily
counter per tenant (the one-statement primitives of `limits`), so a tenant's limit is one limit for the cluster.

Two connection pools: one for keys, limits and audit (durable commits), one for rates, slots and usage, whose
sessions run with `synchronous_commit=off` (a database crash may forget the last fraction of a second of takes
and usage; it never corrupts them) so that a take costs one round trip and no disk flush.

Bounded faults: connections are opened with `connect_timeout` and `tcp_user_timeout`, statements run under
`statement_timeout` and a pool hands out a connection within its `timeout`; past any of them, or when the server
is down, refuses or breaks the connection, the call raises `DatabaseUnavailable` (503 with Retry-After). The
pools reconnect in the background, so service returns by itself when the database does. A read that failed on a
connection broken by a database restart is retried once on a fresh one; writes are not (they may have committed).
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from chorus_server.tenants.base import AuditEntry, DatabaseUnavailable, KeyInfo, Role
from chorus_server.tenants.postgres import limits, migrations

logger = logging.getLogger(__name__)

T = TypeVar("T")
KEY_COLUMNS = "id, tenant, role, created_at, expires_at, last_used_at"
AUDIT_COLUMNS = (
    "id, extract(epoch FROM time)::float8, actor, tenant, role, key_id, action, target, outcome, request_id, details"
)
# Reconnection attempts back off 1, 2, 4 s ... up to this, then give up; the next request starts a fresh attempt
# at once. Short, so that a database back after a long outage is noticed within seconds, not minutes.
RECONNECT_SECONDS = 5.0
# Faults of the database or of the way to it, as opposed to bugs in our SQL: OperationalError covers refused and
# broken connections, pool timeouts, statement timeouts, shutdowns and a full disk.
UNAVAILABLE: tuple[type[Exception], ...] = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    psycopg.errors.ReadOnlySqlTransaction,  # a standby after a failover, or a read-only database
)


def _key(row: Sequence[Any]) -> KeyInfo:
    return KeyInfo(row[0], row[1], Role(row[2]), row[3], row[4], row[5])


def safe_location(url: str) -> str:
    """`user@host:port/db` of a connection URL, without the password or options."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "PostgreSQL (unparsable URL)"
    return f"{info.get('user', '')}@{info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', '')}"


class PostgresTenantStore:
    """`TenantStore` on a PostgreSQL database. `timeout`: the longest a call waits for a connection, and the
    longest a statement may run, in seconds. `pool_size`: connections per pool (there are two)."""

    def __init__(self, url: str, timeout: float = 3.0, pool_size: int = 10):
        """Raises `ValueError` for a URL libpq cannot parse and `migrations.SchemaTooNew`; an unreachable database
        is not an error here (each call tries again: the database may start after us)."""
        try:
            psycopg.conninfo.conninfo_to_dict(url)
        except psycopg.ProgrammingError as exc:
            raise ValueError(f"not a PostgreSQL connection URL: {exc}") from None
        self.url, self.timeout = url, timeout
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"  # this process's leases
        self._migrated = False
        self._migrate_lock = threading.Lock()
        self._pool = self._open_pool("chorus-tenants", pool_size, {})
        self._limits_pool = self._open_pool("chorus-limits", pool_size, {"synchronous_commit": "off"})
        try:
            self._migrate()
        except DatabaseUnavailable as exc:  # not fatal: started before the database; each call tries again
            logger.warning("%s: schema not checked yet: %s", self.describe(), exc)
        except migrations.SchemaTooNew:
            self.close()
            raise

    def _open_pool(self, name: str, size: int, session: dict[str, str]) -> ConnectionPool:
        settings = {"statement_timeout": f"{int(self.timeout * 1000)}ms", **session}
        kwargs: dict[str, Any] = {
            "autocommit": True,  # each statement its own transaction: a primitive's locks end with it
            "connect_timeout": max(2, math.ceil(self.timeout)),  # libpq's minimum is 2 s
            "tcp_user_timeout": int(self.timeout * 1000),  # a silent peer (no RST) fails, not hangs
            "application_name": name,
            "options": " ".join(f"-c {key}={value}" for key, value in settings.items()),
        }
        pool = ConnectionPool(
            self.url,
            min_size=1,
            max_size=size,
            kwargs=kwargs,
            timeout=self.timeout,
            reconnect_timeout=RECONNECT_SECONDS,
            name=name,
            open=False,
        )
        pool.open(wait=False)  # connects in the background: a database still starting does not stop ours
        return pool

    def _migrate(self) -> None:
        """Apply pending migrations once (under the runner's advisory lock: concurrent starts are safe)."""
        if self._migrated:
            return
        with self._migrate_lock:
            if self._migrated:
                return
            try:
                with psycopg.connect(self.url, connect_timeout=max(2, math.ceil(self.timeout))) as conn:
                    applied = migrations.migrate(conn)
            except UNAVAILABLE as exc:
                raise DatabaseUnavailable(self._unavailable(exc)) from exc
            if applied:
                logger.info("%s: applied schema migrations %s", self.describe(), applied)
            self._migrated = True

    def _unavailable(self, exc: Exception) -> str:
        logger.warning("%s: %s: %s", self.describe(), type(exc).__name__, exc)
        cause = "did not answer in time" if "timeout" in type(exc).__name__.lower() else "is unavailable"
        if isinstance(exc, psycopg.errors.QueryCanceled):
            cause = "did not answer in time"
        return f"the tenant database {cause}; retry shortly"

    @contextmanager
    def connection(self, limits_pool: bool = False) -> Iterator[psycopg.Connection]:
        """A connection from one of the pools (autocommit), for one operation. Raises `DatabaseUnavailable`."""
        try:
            self._migrate()
        except migrations.SchemaTooNew as exc:  # found after start: another process upgraded the database
            raise DatabaseUnavailable(str(exc)) from None
        pool = self._limits_pool if limits_pool else self._pool
        try:
            with pool.connection() as conn:
                yield conn
        except UNAVAILABLE as exc:
            raise DatabaseUnavailable(self._unavailable(exc)) from exc

    def _run(self, call: Callable[[psycopg.Connection], T], limits_pool: bool = False, retry: bool = False) -> T:
        """`call` on a pooled connection. `retry`: the call is idempotent, so when it failed on a connection that
        a database restart broke (the pool had not noticed yet), it runs once more on a fresh connection."""
        used: psycopg.Connection | None = None
        try:
            with self.connection(limits_pool) as conn:
                used = conn
                return call(conn)
        except DatabaseUnavailable:
            if not (retry and used is not None and used.closed):
                raise
        with self.connection(limits_pool) as conn:
            return call(conn)

    def describe(self) -> str:
        return f"PostgreSQL {safe_location(self.url)}"

    def version(self) -> int | None:
        """The `changes` counter (bumped by triggers on key and limit writes, `last_used_at` excepted)."""
        try:
            row = self._run(lambda c: c.execute("SELECT counter FROM changes WHERE id = 1").fetchone(), retry=True)
        except DatabaseUnavailable:
            return None
        return None if row is None else int(row[0])

    def close(self) -> None:
        self._limits_pool.close()
        self._pool.close()

    # ---- keys ------------------------------------------------------------------------------------------------

    def create_key(self, info: KeyInfo, digest: bytes) -> None:
        self._run(
            lambda c: c.execute(
                "INSERT INTO api_keys (id, hash, tenant, role, created_at, expires_at) VALUES (%s, %s, %s, %s, %s, %s)",
                (info.id, digest, info.tenant, str(info.role), info.created_at, info.expires_at),
            )
        )

    def find_key(self, digest: bytes) -> KeyInfo | None:
        sql = f"SELECT {KEY_COLUMNS} FROM api_keys WHERE hash = %s AND revoked_at IS NULL"
        row = self._run(lambda c: c.execute(sql, (digest,)).fetchone(), retry=True)
        return None if row is None else _key(row)

    def list_keys(self) -> list[KeyInfo]:
        sql = f"SELECT {KEY_COLUMNS} FROM api_keys WHERE revoked_at IS NULL ORDER BY created_at, id"
        return [_key(row) for row in self._run(lambda c: c.execute(sql).fetchall(), retry=True)]

    def revoke_key(self, key_id: str, now: float) -> bool:
        sql = "UPDATE api_keys SET revoked_at = %s WHERE id = %s AND revoked_at IS NULL"
        return self._run(lambda c: c.execute(sql, (now, key_id)).rowcount == 1)

    def touch_key(self, key_id: str, now: float) -> None:
        # Not a change (the trigger ignores last_used_at): caches elsewhere stay valid.
        sql = "UPDATE api_keys SET last_used_at = GREATEST(last_used_at, %s) WHERE id = %s"
        self._run(lambda c: c.execute(sql, (now, key_id)), retry=True)

    def has_keys(self) -> bool:
        sql = "SELECT 1 FROM api_keys WHERE revoked_at IS NULL LIMIT 1"
        return self._run(lambda c: c.execute(sql).fetchone(), retry=True) is not None

    # ---- limits ----------------------------------------------------------------------------------------------

    def limit_overrides(self, tenant: str) -> dict[str, Any]:
        sql = "SELECT limits FROM tenant_limits WHERE tenant = %s"
        row = self._run(lambda c: c.execute(sql, (tenant,)).fetchone(), retry=True)
        return dict(row[0]) if row else {}

    def set_limit_overrides(self, tenant: str, overrides: dict[str, Any]) -> None:
        if overrides:
            sql = (
                "INSERT INTO tenant_limits (tenant, limits) VALUES (%s, %s) "
                "ON CONFLICT (tenant) DO UPDATE SET limits = EXCLUDED.limits"
            )
            self._run(lambda c: c.execute(sql, (tenant, Jsonb(overrides))), retry=True)
        else:
            self._run(lambda c: c.execute("DELETE FROM tenant_limits WHERE tenant = %s", (tenant,)), retry=True)

    # ---- rates and slots: cluster-wide, one statement each -----------------------------------------------------

    def take(self, tenant: str, bucket: str, cost: float, capacity: float, per_second: float, now: float) -> float:
        return self._run(
            lambda c: limits.take(c, tenant, bucket, capacity=capacity, per_second=per_second, cost=cost, now=now),
            limits_pool=True,
        ).wait

    def charge(self, tenant: str, bucket: str, cost: float, capacity: float, per_second: float, now: float) -> None:
        self._run(
            lambda c: limits.take(
                c, tenant, bucket, capacity=capacity, per_second=per_second, cost=cost, force=True, now=now
            ),
            limits_pool=True,
        )

    def level(self, tenant: str, bucket: str, capacity: float, per_second: float, now: float) -> float:
        return self._run(
            lambda c: limits.peek(c, tenant, bucket, capacity=capacity, per_second=per_second, now=now),
            limits_pool=True,
            retry=True,
        ).tokens

    def acquire_slot(self, tenant: str, limit: int, now: float, lease_seconds: float) -> str | None:
        lease = secrets.token_hex(8)
        state = self._run(
            lambda c: limits.acquire(c, tenant, lease, holder=self.holder, limit=limit, ttl=lease_seconds, now=now),
            limits_pool=True,
        )
        return lease if state.admitted else None

    def admit(
        self, tenant: str, limit: int, now: float, lease_seconds: float, bucket: str, capacity: float, per_second: float
    ) -> tuple[str | None, float]:
        lease = secrets.token_hex(8)
        leased, taken = self._run(
            lambda c: limits.acquire_and_take(
                c,
                tenant,
                lease,
                holder=self.holder,
                limit=limit,
                ttl=lease_seconds,
                bucket=bucket,
                capacity=capacity,
                per_second=per_second,
                now=now,
            ),
            limits_pool=True,
        )
        if not leased.admitted:
            return None, 0.0
        return lease, taken.wait

    def renew_slots(self, leases: Sequence[str], now: float, lease_seconds: float) -> None:
        sql = "UPDATE concurrency_leases SET expires_at = %s WHERE holder = %s AND lease_id = ANY(%s)"
        args = (now + lease_seconds, self.holder, list(leases))
        self._run(lambda c: c.execute(sql, args), limits_pool=True, retry=True)

    def release_slot(self, tenant: str, lease: str) -> None:
        self._run(lambda c: limits.release(c, tenant, lease), limits_pool=True, retry=True)

    def slots_in_use(self, tenant: str, now: float) -> int:
        return self._run(lambda c: limits.in_use(c, tenant, now), limits_pool=True, retry=True)

    # ---- usage -----------------------------------------------------------------------------------------------

    def add_usage(self, tenant: str, day: str, requests: int, audio_seconds: float) -> None:
        self._run(lambda c: limits.add_usage(c, tenant, day, requests, audio_seconds), limits_pool=True)

    def daily_usage(self, tenant: str, day: str) -> tuple[int, float]:
        used = self._run(lambda c: limits.usage(c, tenant, day), limits_pool=True, retry=True)
        return used.requests, used.audio_seconds

    def tenants_with_usage(self, day: str) -> list[str]:
        sql = "SELECT tenant FROM usage_daily WHERE day = %s::date ORDER BY tenant"
        rows = self._run(lambda c: c.execute(sql, (day,)).fetchall(), limits_pool=True, retry=True)
        return [row[0] for row in rows]

    # ---- audit -----------------------------------------------------------------------------------------------

    def append_audit(self, entry: AuditEntry) -> None:
        sql = (
            "INSERT INTO audit (time, actor, tenant, role, key_id, action, target, outcome, request_id, details) "
            "VALUES (to_timestamp(%s), %s, %s, %s, %s, %s, %s, %s, %s, %s)"
        )
        args = (
            entry.time, entry.actor, entry.tenant, entry.role, entry.key_id, entry.action, entry.target,
            entry.outcome, entry.request_id, Jsonb(entry.details, dumps=_dumps),
        )  # fmt: skip
        self._run(lambda c: c.execute(sql, args))

    def audit_entries(
        self, tenant: str | None = None, since: float | None = None, before_id: int | None = None, limit: int = 100
    ) -> list[AuditEntry]:
        where, args = [], []
        for clause, value in (("tenant = %s", tenant), ("time >= to_timestamp(%s)", since), ("id < %s", before_id)):
            if value is not None:
                where.append(clause)
                args.append(value)
        filters = f"WHERE {' AND '.join(where)}" if where else ""
        sql = f"SELECT {AUDIT_COLUMNS} FROM audit {filters} ORDER BY id DESC LIMIT %s"
        rows = self._run(lambda c: c.execute(sql, (*args, limit)).fetchall(), retry=True)
        return [AuditEntry(r[1], r[6], r[7], r[8], r[2], r[3], r[4], r[5], r[9], dict(r[10]), id=r[0]) for r in rows]


def _dumps(value: Any) -> str:
    import json

    return json.dumps(value, separators=(",", ":"), default=str)
