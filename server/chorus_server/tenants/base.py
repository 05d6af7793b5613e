"""The tenant store: the one interface to everything Chorus keeps about tenants — API keys, limit overrides,
rate buckets, concurrency slots, daily usage and the audit log — and the records it deals in.

Routes, admission, the authenticator and `chorus keys` reach tenant state only through `TenantStore`; which
database sits behind it (SQLite file, the embedded default, or a shared PostgreSQL) is chosen once, by
`chorus_server.tenants.open_tenant_store`.

Contract for every implementation:

- Every method is blocking (it may do I/O): call it off the event loop.
- A fault of the database (unreachable, locked past its timeout, read-only, full, damaged) raises
  `DatabaseUnavailable` with a message safe to show a caller (no paths, no SQL, no credentials), which the server
  answers 503 with Retry-After. Any other exception is a bug.
- Every method is safe to call from many threads of one process *and from many processes* sharing the database:
  an operation documented as atomic must stay atomic when two servers call it at once. (The SQLite backend keeps
  rate buckets and slots in process memory — see its module docstring — which is exact for one process per host.)
- `now` arguments are wall-clock seconds since the epoch (`time.time()`) as seen by the caller. Implementations
  use the caller's `now` for the arithmetic, never their own clock, so that tests can inject time and so that
  a bucket's refill does not depend on which clock answers; a bucket's state only moves forward (an older `now`
  than the one stored refills nothing).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol


class DatabaseUnavailable(Exception):
    """The tenant database cannot be used right now; the message is safe to show (no paths, no SQL)."""


class Role(StrEnum):
    ADMIN = "admin"  # everything, every tenant
    OPERATOR = "operator"  # its tenant's adapters, and transcription
    USER = "user"  # transcription, and listing what it may see
    METRICS = "metrics"  # scraping /metrics only


@dataclass(frozen=True)
class KeyInfo:
    id: str
    tenant: str
    role: Role
    created_at: float
    expires_at: float | None = None
    last_used_at: float | None = None
    source: str = "file"  # "file" (stored in the tenant database, revocable) or "env"

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    def to_dict(self) -> dict[str, object]:
        return {
            "object": "api_key",
            "id": self.id,
            "tenant": self.tenant,
            "role": str(self.role),
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "last_used_at": self.last_used_at,
            "source": self.source,
        }


@dataclass(frozen=True)
class AuditEntry:
    """One operator action, allowed or refused. `actor`, `tenant`, `role` and `key_id` are the *caller's*
    (`actor`: `key:<id>`, the tenant of an anonymous caller, `cli:<OS user>`, or None); what the action made or
    touched goes in `target` and `details`. `id` is assigned by the store (increasing; None before it is stored)."""

    time: float
    action: str
    target: str
    outcome: str
    actor: str | None = None
    tenant: str | None = None
    role: str | None = None
    key_id: str | None = None
    request_id: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    id: int | None = None


class KeyStore(Protocol):
    """Stored API keys, by the SHA-256 hash of their secret (the secret itself is never stored)."""

    def create_key(self, info: KeyInfo, digest: bytes) -> None:
        """Store a new key. Raises `DatabaseUnavailable`; an ID or hash that exists already is a bug (random)."""

    def find_key(self, digest: bytes) -> KeyInfo | None:
        """The stored, unrevoked key with this hash (expired ones too: the caller tells them apart), else None."""

    def list_keys(self) -> list[KeyInfo]:
        """Every stored, unrevoked key, oldest first."""

    def revoke_key(self, key_id: str, now: float) -> bool:
        """Mark the key revoked at `now`; False when no unrevoked key has this ID. Atomic."""

    def touch_key(self, key_id: str, now: float) -> None:
        """Record a use of the key at `now` (`last_used_at`); bookkeeping, called at most about once a minute."""

    def has_keys(self) -> bool:
        """Whether any unrevoked key is stored (a server with none may run keyless on loopback)."""


class LimitStore(Protocol):
    """Per-tenant overrides of the default limits (`TenantLimits` field name -> value; validated by the caller)."""

    def limit_overrides(self, tenant: str) -> dict[str, Any]:
        """The tenant's overrides ({} when it has none)."""

    def set_limit_overrides(self, tenant: str, overrides: dict[str, Any]) -> None:
        """Replace the tenant's overrides; {} removes them (back to the defaults)."""


class RateStore(Protocol):
    """Token buckets and concurrency slots, the state behind rate and concurrency limits. Each operation is one
    atomic step, so that on a shared database the limit holds for all processes together.

    A bucket is named by (tenant, bucket), e.g. ("acme", "requests"). It holds at most `capacity` tokens, refills
    at `per_second` tokens a second and starts full. The caller passes `capacity` and `per_second` on every call
    (they come from the tenant's current limits, so a changed limit applies at once); a bucket's tokens are
    clamped to the capacity it is given."""

    def take(self, tenant: str, bucket: str, cost: float, capacity: float, per_second: float, now: float) -> float:
        """Atomically: refill the bucket up to `now`; if it holds at least min(`cost`, `capacity`) tokens, take
        `cost` (the bucket may go negative when `cost` > `capacity`: the debt delays later takes) and return 0;
        else take nothing and return the seconds until it would hold enough."""

    def charge(self, tenant: str, bucket: str, cost: float, capacity: float, per_second: float, now: float) -> None:
        """Atomically refill up to `now` and take `cost` unconditionally (may go negative): for a cost known only
        after the work was admitted, e.g. audio seconds measured by decoding."""

    def level(self, tenant: str, bucket: str, capacity: float, per_second: float, now: float) -> float:
        """The tokens the bucket holds at `now` (refilled, not stored); for checks and `x-ratelimit-*` headers."""

    def acquire_slot(self, tenant: str, limit: int, now: float, lease_seconds: float) -> str | None:
        """Atomically take one of the tenant's `limit` concurrency slots: a lease ID, or None when all `limit` are
        held by unexpired leases. A lease expires `lease_seconds` after `now` unless renewed, so slots held by a
        process that died come back by themselves."""

    def admit(
        self, tenant: str, limit: int, now: float, lease_seconds: float, bucket: str, capacity: float, per_second: float
    ) -> tuple[str | None, float]:
        """A request's admission, the hot path: `acquire_slot`, then (with a slot) `take` one token from `bucket`.
        Returns (lease, 0) when both succeed; (None, 0) when no slot was free (nothing taken); (lease, wait) when
        the bucket refused (the caller releases the lease). A shared database does both in one round trip."""

    def renew_slots(self, leases: Sequence[str], now: float, lease_seconds: float) -> None:
        """Extend these leases (still held by this process) to `now` + `lease_seconds`; unknown ones are ignored."""

    def release_slot(self, tenant: str, lease: str) -> None:
        """Give the slot back (an expired or unknown lease: nothing happens)."""

    def slots_in_use(self, tenant: str, now: float) -> int:
        """Unexpired leases the tenant holds (its requests in progress, across processes)."""


class UsageStore(Protocol):
    """Daily usage counters per tenant; `day` is the UTC date, YYYY-MM-DD."""

    def add_usage(self, tenant: str, day: str, requests: int, audio_seconds: float) -> None:
        """Atomically add to the tenant's counters for `day` (created at 0 when missing)."""

    def daily_usage(self, tenant: str, day: str) -> tuple[int, float]:
        """(requests, audio seconds) counted for the tenant on `day`; (0, 0.0) when none."""

    def tenants_with_usage(self, day: str) -> list[str]:
        """Tenants with counters on `day`."""


class AuditStore(Protocol):
    def append_audit(self, entry: AuditEntry) -> None:
        """Store the entry (its `id` is ignored; the store assigns one, increasing)."""

    def audit_entries(
        self, tenant: str | None = None, since: float | None = None, before_id: int | None = None, limit: int = 100
    ) -> list[AuditEntry]:
        """Entries newest first (by `id`): only the caller tenant's when `tenant` is given, only those at or after
        `since` (epoch seconds), only those older than `before_id` (the cursor of the next page), at most `limit`."""


class TenantStore(KeyStore, LimitStore, RateStore, UsageStore, AuditStore, Protocol):
    """Everything about tenants, in one database."""

    def version(self) -> int | None:
        """A cheap change marker (no lock taken where the database allows): if two reads return the same number,
        no key or limit was written between them by any process. A changed number means *something may* have
        changed (implementations may bump it for other writes too). None: the store cannot tell right now, and
        callers re-read what they cache instead. Polled about every second by each server."""

    def describe(self) -> str:
        """Where the database is, for logs (no credentials)."""

    def close(self) -> None:
        """Release connections and threads; pending writes are finished first."""
