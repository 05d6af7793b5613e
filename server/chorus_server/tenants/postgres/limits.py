"""Cluster-wide limits as atomic operations on the tenant database, each ONE statement (one round trip): token
bucket takes, concurrency leases and daily usage counters. Every process on the database shares them, so a
tenant's limit is one limit however many processes serve it.

Each function takes a `psycopg.Connection`; the tenant store calls them from threads, never from the event loop.
Use autocommit connections (e.g.
`ConnectionPool(url, kwargs={"autocommit": True})`): each statement is then its own transaction, and the lock
`acquire_lease` takes is released as soon as it returns. In an open transaction the caller must commit.

Times are float seconds since the epoch from the database server's clock, so processes on hosts whose clocks
differ still agree; `now` overrides it (tests, replay)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import psycopg

# ---- token buckets -------------------------------------------------------------------------------------------

# A bucket starts full on first use. `refilled` is its level now; a take is admitted when the level covers the
# cost (a cost above the capacity needs a full bucket) and may leave a debt (negative tokens). A refused take
# changes nothing and records how long to wait. The row lock of the upsert makes concurrent takes serial, and
# every SET expression sees the row as the previous take left it. The time only moves forward: a take stamped
# earlier (another process's clock a little behind) refills nothing and must not make the next refill count twice.
_NOW = "COALESCE(%(now)s::float8, extract(epoch FROM clock_timestamp()))"
_REFILLED = "LEAST(%(capacity)s, b.tokens + GREATEST(0, EXCLUDED.updated_at - b.updated_at) * %(rate)s)"
_ADMIT = f"(%(force)s OR {_REFILLED} >= LEAST(%(cost)s, %(capacity)s))"
TAKE = f"""
INSERT INTO rate_buckets AS b (tenant, bucket, tokens, updated_at, last_wait)
VALUES (%(tenant)s, %(bucket)s, %(capacity)s - %(cost)s, {_NOW}, 0)
ON CONFLICT (tenant, bucket) DO UPDATE SET
    tokens = CASE WHEN {_ADMIT} THEN {_REFILLED} - %(cost)s ELSE b.tokens END,
    updated_at = CASE WHEN {_ADMIT} THEN GREATEST(b.updated_at, EXCLUDED.updated_at) ELSE b.updated_at END,
    last_wait = CASE WHEN {_ADMIT} THEN 0 ELSE (LEAST(%(cost)s, %(capacity)s) - {_REFILLED}) / %(rate)s END
RETURNING last_wait, tokens
"""
PEEK = f"""
SELECT LEAST(%(capacity)s, tokens + GREATEST(0, {_NOW} - updated_at) * %(rate)s)
FROM rate_buckets WHERE tenant = %(tenant)s AND bucket = %(bucket)s
"""


@dataclass(frozen=True)
class BucketState:
    wait: float  # seconds until the cost could be taken; 0: admitted (take) or would be (peek)
    tokens: float  # level after the take (or now, for peek); negative: a debt

    @property
    def admitted(self) -> bool:
        return self.wait <= 0


def _bucket_params(
    tenant: str, bucket: str, cost: float, capacity: float, per_second: float, now: float | None, force: bool
) -> dict[str, Any]:
    if capacity <= 0 or per_second <= 0:
        raise ValueError(f"a bucket needs capacity > 0 and a rate > 0, got {capacity} and {per_second}/s")
    if cost < 0:
        raise ValueError(f"a take costs 0 or more tokens, got {cost}")
    return {
        "tenant": tenant, "bucket": bucket, "cost": float(cost), "capacity": float(capacity),
        "rate": float(per_second), "now": now, "force": force,
    }  # fmt: skip


def take(
    conn: psycopg.Connection,
    tenant: str,
    bucket: str,
    *,
    capacity: float,
    per_second: float,
    cost: float = 1.0,
    force: bool = False,
    now: float | None = None,
) -> BucketState:
    """Take `cost` tokens from the tenant's bucket (full at `capacity`, refilled at `per_second`) if they are
    there; `force`: take them anyway, leaving a debt (a charge known only afterwards, e.g. decoded audio)."""
    row = conn.execute(TAKE, _bucket_params(tenant, bucket, cost, capacity, per_second, now, force)).fetchone()
    return _bucket_state(row)


def peek(
    conn: psycopg.Connection,
    tenant: str,
    bucket: str,
    *,
    capacity: float,
    per_second: float,
    cost: float = 1.0,
    now: float | None = None,
) -> BucketState:
    """Whether `cost` could be taken now, and the level, changing nothing (a bucket never used is full)."""
    params = _bucket_params(tenant, bucket, cost, capacity, per_second, now, False)
    row = conn.execute(PEEK, params).fetchone()
    return _peeked(row, params)


def _bucket_state(row: tuple[Any, ...] | None) -> BucketState:
    assert row is not None  # an upsert with RETURNING always returns its row
    return BucketState(float(row[0]), float(row[1]))


def _peeked(row: tuple[Any, ...] | None, params: dict[str, Any]) -> BucketState:
    level = params["capacity"] if row is None else float(row[0])
    missing = min(params["cost"], params["capacity"]) - level
    return BucketState(max(0.0, missing / params["rate"]), level)


# ---- concurrency leases --------------------------------------------------------------------------------------

ACQUIRE = "SELECT admitted, in_use FROM acquire_lease(%s, %s, %s, %s, %s, %s)"
RELEASE = "DELETE FROM concurrency_leases WHERE tenant = %s AND lease_id = %s"
RENEW = f"UPDATE concurrency_leases SET expires_at = {_NOW} + %(ttl)s WHERE holder = %(holder)s"
EXPIRE = f"DELETE FROM concurrency_leases WHERE expires_at <= {_NOW}"
IN_USE = f"SELECT count(*) FROM concurrency_leases WHERE tenant = %(tenant)s AND expires_at > {_NOW}"


@dataclass(frozen=True)
class LeaseState:
    admitted: bool
    in_use: int  # the tenant's live leases after the call (with this one when admitted)


def _lease_params(
    tenant: str, lease_id: str, holder: str, limit: int, ttl: float, now: float | None
) -> tuple[Any, ...]:
    if ttl <= 0:
        raise ValueError(f"a lease lives a time > 0, got {ttl}")
    return (tenant, lease_id, holder, int(limit), float(ttl), now)


REFUND = """
UPDATE rate_buckets SET tokens = LEAST(%(capacity)s, tokens + %(cost)s)
WHERE tenant = %(tenant)s AND bucket = %(bucket)s
"""


def acquire_and_take(
    conn: psycopg.Connection,
    tenant: str,
    lease_id: str,
    *,
    holder: str,
    limit: int,
    ttl: float,
    bucket: str,
    capacity: float,
    per_second: float,
    cost: float = 1.0,
    now: float | None = None,
) -> tuple[LeaseState, BucketState]:
    """`acquire` and `take` in one round trip (pipelined), with the outcome of running them one after the other:
    when the lease is refused, a token the take got is given back (a rare, second round trip); when the take is
    refused, the caller releases the lease."""
    with conn.pipeline():
        leased = conn.execute(ACQUIRE, _lease_params(tenant, lease_id, holder, limit, ttl, now))
        taken = conn.execute(TAKE, _bucket_params(tenant, bucket, cost, capacity, per_second, now, False))
    lease_row = leased.fetchone()
    assert lease_row is not None
    lease, state = LeaseState(bool(lease_row[0]), int(lease_row[1])), _bucket_state(taken.fetchone())
    if not lease.admitted and state.admitted:
        conn.execute(REFUND, {"tenant": tenant, "bucket": bucket, "capacity": capacity, "cost": cost})
    return lease, state


def acquire(
    conn: psycopg.Connection,
    tenant: str,
    lease_id: str,
    *,
    holder: str,
    limit: int,
    ttl: float,
    now: float | None = None,
) -> LeaseState:
    """Take lease `lease_id` (unique per tenant) if the tenant holds fewer than `limit` live ones. It lives `ttl`
    seconds unless renewed (`renew`), so the leases of a process that died free themselves."""
    row = conn.execute(ACQUIRE, _lease_params(tenant, lease_id, holder, limit, ttl, now)).fetchone()
    assert row is not None
    return LeaseState(bool(row[0]), int(row[1]))


def release(conn: psycopg.Connection, tenant: str, lease_id: str) -> bool:
    """Give the lease back; False if it was not held (already released, or expired and dropped)."""
    return conn.execute(RELEASE, (tenant, lease_id)).rowcount == 1


def renew(conn: psycopg.Connection, holder: str, ttl: float, now: float | None = None) -> int:
    """Extend every lease `holder` holds to `ttl` seconds from now (a live process's heartbeat, every ttl/3 or
    so); returns how many it holds."""
    return conn.execute(RENEW, {"holder": holder, "ttl": float(ttl), "now": now}).rowcount


def expire(conn: psycopg.Connection, now: float | None = None) -> int:
    """Drop every expired lease, of any tenant (housekeeping; `acquire` drops its tenant's itself)."""
    return conn.execute(EXPIRE, {"now": now}).rowcount


def in_use(conn: psycopg.Connection, tenant: str, now: float | None = None) -> int:
    """The tenant's live leases (for the usage report)."""
    row = conn.execute(IN_USE, {"tenant": tenant, "now": now}).fetchone()
    return int(row[0]) if row else 0


# ---- daily usage ---------------------------------------------------------------------------------------------

# With `audio_limit`, the add is refused (no row returned) when it would take the day's audio seconds past it:
# the SELECT's WHERE refuses a first add that alone exceeds it, the DO UPDATE's WHERE (evaluated on the locked,
# latest row) refuses the rest.
ADD_USAGE = """
INSERT INTO usage_daily AS u (tenant, day, requests, audio_seconds)
SELECT %(tenant)s, %(day)s, %(requests)s, %(audio)s
WHERE %(limit)s::float8 IS NULL OR %(audio)s <= %(limit)s::float8
ON CONFLICT (tenant, day) DO UPDATE SET
    requests = u.requests + EXCLUDED.requests, audio_seconds = u.audio_seconds + EXCLUDED.audio_seconds
WHERE %(limit)s::float8 IS NULL OR u.audio_seconds + EXCLUDED.audio_seconds <= %(limit)s::float8
RETURNING requests, audio_seconds
"""
USAGE = "SELECT requests, audio_seconds FROM usage_daily WHERE tenant = %s AND day = %s"


@dataclass(frozen=True)
class Usage:
    requests: int
    audio_seconds: float


def _usage_params(
    tenant: str, day: dt.date | str, requests: int, audio_seconds: float, audio_limit: float | None
) -> dict[str, Any]:
    if requests < 0 or audio_seconds < 0:
        raise ValueError(f"usage only grows: got {requests} requests, {audio_seconds} audio seconds")
    day = dt.date.fromisoformat(day) if isinstance(day, str) else day
    return {
        "tenant": tenant,
        "day": day,
        "requests": int(requests),
        "audio": float(audio_seconds),
        "limit": audio_limit,
    }


def add_usage(
    conn: psycopg.Connection,
    tenant: str,
    day: dt.date | str,
    requests: int = 0,
    audio_seconds: float = 0.0,
    *,
    audio_limit: float | None = None,
) -> Usage | None:
    """Add to the tenant's usage on `day` (UTC; a date or YYYY-MM-DD); returns the day's totals, or None when
    `audio_limit` is given and the add would pass it (then nothing is added)."""
    row = conn.execute(ADD_USAGE, _usage_params(tenant, day, requests, audio_seconds, audio_limit)).fetchone()
    return None if row is None else Usage(int(row[0]), float(row[1]))


def usage(conn: psycopg.Connection, tenant: str, day: dt.date | str) -> Usage:
    """The tenant's usage on `day` (zero when nothing was recorded)."""
    day = dt.date.fromisoformat(day) if isinstance(day, str) else day
    row = conn.execute(USAGE, (tenant, day)).fetchone()
    return Usage(0, 0.0) if row is None else Usage(int(row[0]), float(row[1]))
