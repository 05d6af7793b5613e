"""Token buckets and concurrency slots in this process's memory: the `RateStore` half of the SQLite backend.

Exact for one server per host (the SQLite file is per host anyway); servers that share a SQLite file each count
their own rates and slots. A shared backend (PostgreSQL) keeps these in the database instead, so the limits hold
for all processes together."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated: float


def refilled(tokens: float, updated: float, capacity: float, per_second: float, now: float) -> float:
    """The tokens a bucket holding `tokens` at `updated` holds at `now` (clamped to `capacity`; no refill for a
    `now` older than `updated`). Shared with backends that do the same arithmetic in SQL."""
    return min(capacity, tokens + max(0.0, now - updated) * per_second)


def wait_for(tokens: float, cost: float, capacity: float, per_second: float) -> float:
    """Seconds until a bucket holding `tokens` holds min(`cost`, `capacity`) (0: now)."""
    missing = min(cost, capacity) - tokens
    return 0.0 if missing <= 0 else missing / per_second


class LocalRates:
    def __init__(self) -> None:
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._leases: dict[str, tuple[str, float]] = {}  # lease ID -> (tenant, expires at)
        self._lock = threading.Lock()

    def _refill(self, tenant: str, bucket: str, capacity: float, per_second: float, now: float) -> _Bucket:
        state = self._buckets.get((tenant, bucket))
        if state is None:
            state = self._buckets[(tenant, bucket)] = _Bucket(capacity, now)
        state.tokens = refilled(state.tokens, state.updated, capacity, per_second, now)
        state.updated = max(state.updated, now)
        return state

    def take(self, tenant: str, bucket: str, cost: float, capacity: float, per_second: float, now: float) -> float:
        with self._lock:
            state = self._refill(tenant, bucket, capacity, per_second, now)
            wait = wait_for(state.tokens, cost, capacity, per_second)
            if wait == 0:
                state.tokens -= cost
            return wait

    def charge(self, tenant: str, bucket: str, cost: float, capacity: float, per_second: float, now: float) -> None:
        with self._lock:
            self._refill(tenant, bucket, capacity, per_second, now).tokens -= cost

    def level(self, tenant: str, bucket: str, capacity: float, per_second: float, now: float) -> float:
        with self._lock:
            state = self._buckets.get((tenant, bucket))
            return capacity if state is None else refilled(state.tokens, state.updated, capacity, per_second, now)

    def acquire_slot(self, tenant: str, limit: int, now: float, lease_seconds: float) -> str | None:
        with self._lock:
            self._expire(now)
            if sum(1 for owner, _ in self._leases.values() if owner == tenant) >= limit:
                return None
            lease = secrets.token_hex(8)
            self._leases[lease] = (tenant, now + lease_seconds)
            return lease

    def admit(
        self, tenant: str, limit: int, now: float, lease_seconds: float, bucket: str, capacity: float, per_second: float
    ) -> tuple[str | None, float]:
        lease = self.acquire_slot(tenant, limit, now, lease_seconds)
        if lease is None:
            return None, 0.0
        return lease, self.take(tenant, bucket, 1, capacity, per_second, now)

    def renew_slots(self, leases: Sequence[str], now: float, lease_seconds: float) -> None:
        with self._lock:
            for lease in leases:
                if lease in self._leases:
                    self._leases[lease] = (self._leases[lease][0], now + lease_seconds)

    def release_slot(self, tenant: str, lease: str) -> None:
        with self._lock:
            self._leases.pop(lease, None)

    def slots_in_use(self, tenant: str, now: float) -> int:
        with self._lock:
            return sum(1 for owner, expires in self._leases.values() if owner == tenant and expires > now)

    def _expire(self, now: float) -> None:
        for lease in [lease for lease, (_, expires) in self._leases.items() if expires <= now]:
            del self._leases[lease]
