"""Per-tenant limits: request and audio rates (token buckets), concurrency, a daily audio quota that survives
restarts, and the usage report. Checked before a request's body is read (requests, concurrency) and before its
audio is decoded (audio seconds, from the file header where it has one).

Limits are per tenant: the defaults from settings (`CHORUS_LIMITS__TENANT__*`) merged with the tenant's own
overrides in the tenant database (`PUT /v1/tenants/{tenant}/limits`). Usage counters are kept in memory and
written to the same SQLite file every few seconds and at shutdown.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from chorus_server.errors import ApiError
from chorus_server.settings import TenantLimits
from chorus_server.tenant_db import TenantDB

logger = logging.getLogger(__name__)

FLUSH_EVERY_SECONDS = 2.0


def utc_day(now: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(now))


@dataclass
class TokenBucket:
    """`per_minute` tokens a minute, bursts of up to a minute's worth. Taking may overdraw (for audio whose true
    length is known only after decoding); the debt delays the next admission."""

    per_minute: float
    tokens: float
    updated: float

    def refill(self, now: float) -> None:
        self.tokens = min(self.per_minute, self.tokens + (now - self.updated) * self.per_minute / 60)
        self.updated = now

    def wait_for(self, amount: float) -> float:
        """Seconds until `amount` could be taken (0: now). An amount over the burst waits for a full bucket."""
        missing = min(amount, self.per_minute) - self.tokens
        return 0.0 if missing <= 0 else missing * 60 / self.per_minute


@dataclass
class TenantState:
    limits: TenantLimits
    requests: TokenBucket | None
    audio: TokenBucket | None
    in_progress: int = 0
    day: str = ""
    day_audio: float = 0.0  # audio seconds today, persisted and pending
    day_requests: int = 0
    pending: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))  # not yet written


class Quotas:
    def __init__(self, defaults: TenantLimits, db: TenantDB, clock: Any = time.time):
        self.defaults, self.db, self.clock = defaults, db, clock
        self._tenants: dict[str, TenantState] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._flusher = threading.Thread(target=self._flush_loop, name="chorus-usage", daemon=True)
        self._flusher.start()

    # ---- admission -----------------------------------------------------------------------------------------

    def admit_request(self, tenant: str, usage: bool = True) -> None:
        """Take one request (rate and concurrency) or raise 429. Pair with `release`. Blocking (it may read the
        tenant database): call it off the event loop. `usage=False`: the request counts against the rate and the
        concurrency but is not usage (a listing: not billed, not in the daily quota, nothing to write)."""
        self._load(tenant)
        with self._lock:
            state = self._state(tenant)
            limits = state.limits
            if state.in_progress >= limits.concurrent_requests:
                raise self._limited(
                    f"too many concurrent requests for this tenant (limit {limits.concurrent_requests})", 1.0
                )
            if state.requests is not None:
                wait = state.requests.wait_for(1)
                if wait > 0:
                    raise self._limited(f"request rate limit of {limits.requests_per_minute:g}/min reached", wait)
                state.requests.tokens -= 1
            state.in_progress += 1
            if usage:
                state.day_requests += 1
                state.pending["requests"] += 1

    def release(self, tenant: str) -> None:
        with self._lock:
            self._state(tenant).in_progress -= 1

    def check_audio(self, tenant: str, seconds: float) -> None:
        """Raise 429 unless `seconds` of audio fit the tenant's audio rate and daily quota now."""
        with self._lock:
            state = self._state(tenant)
            limits = state.limits
            if limits.audio_seconds_per_day is not None and state.day_audio + seconds > limits.audio_seconds_per_day:
                until_midnight = 86400 - (self.clock() % 86400)
                raise self._limited(
                    f"daily audio quota of {limits.audio_seconds_per_day:g} s reached "
                    f"({state.day_audio:.0f} s used today)",
                    until_midnight,
                )
            if state.audio is not None:
                wait = state.audio.wait_for(seconds)
                if wait > 0:
                    raise self._limited(f"audio rate limit of {limits.audio_seconds_per_minute:g} s/min reached", wait)

    def charge_audio(self, tenant: str, seconds: float) -> None:
        with self._lock:
            state = self._state(tenant)
            if state.audio is not None:
                state.audio.tokens -= seconds
            state.day_audio += seconds
            state.pending["audio_seconds"] += seconds

    # ---- reporting -----------------------------------------------------------------------------------------

    def headers(self, tenant: str) -> dict[str, str]:
        """OpenAI-style `x-ratelimit-*` headers for requests and audio seconds."""
        with self._lock:
            state = self._state(tenant)
        headers: dict[str, str] = {}
        for kind, bucket in (("requests", state.requests), ("audio-seconds", state.audio)):
            if bucket is None:
                continue
            headers[f"x-ratelimit-limit-{kind}"] = f"{bucket.per_minute:g}"
            headers[f"x-ratelimit-remaining-{kind}"] = f"{max(0.0, math.floor(bucket.tokens)):g}"
            full_in = max(0.0, (bucket.per_minute - bucket.tokens) * 60 / bucket.per_minute)
            headers[f"x-ratelimit-reset-{kind}"] = f"{full_in:.3g}s"
        return headers

    def usage(self, tenant: str) -> dict[str, Any]:
        with self._lock:
            state = self._state(tenant)
            return {
                "object": "usage",
                "tenant": tenant,
                "day": state.day,
                "requests": state.day_requests,
                "audio_seconds": round(state.day_audio, 3),
                "requests_in_progress": state.in_progress,
                "limits": state.limits.model_dump(),
            }

    def tenants(self) -> list[str]:
        with self._lock:
            return sorted(set(self._tenants) | set(self.db.tenants_with_usage(utc_day(self.clock()))))

    def forget_limits(self, tenant: str) -> None:
        """Re-read the tenant's overrides on its next request (after they changed)."""
        with self._lock:
            if tenant in self._tenants:
                self._reload(tenant)

    # ---- internals -----------------------------------------------------------------------------------------

    def _limited(self, message: str, wait: float) -> ApiError:
        return ApiError(429, message, "rate_limit_exceeded", headers={"Retry-After": str(max(1, math.ceil(wait)))})

    def _state(self, tenant: str) -> TenantState:
        """The tenant's state, its buckets refilled and its day rolled over (call under the lock)."""
        now = self.clock()
        state = self._tenants.get(tenant)
        if state is None:
            limits = self.db.limits(tenant, self.defaults)
            state = TenantState(
                limits, _bucket(limits.requests_per_minute, now), _bucket(limits.audio_seconds_per_minute, now)
            )
            self._tenants[tenant] = state
        day = utc_day(now)
        if state.day != day:
            self._write(tenant, state)
            requests, audio = self.db.usage(tenant, day)
            state.day, state.day_requests, state.day_audio = day, requests, audio
        for bucket in (state.requests, state.audio):
            if bucket is not None:
                bucket.refill(now)
        return state

    def _load(self, tenant: str) -> None:
        """Read what the tenant's state needs today from the database, outside the lock, so that threads and the
        event loop never wait on the lock for database I/O."""
        day = utc_day(self.clock())
        with self._lock:
            known = self._tenants.get(tenant)
            if known is not None and known.day == day:
                return
        limits = self.db.limits(tenant, self.defaults) if known is None else None
        if known is not None:
            self._flush_tenant(tenant)  # yesterday's pending counts, before the day rolls over
        requests, audio = self.db.usage(tenant, day)
        with self._lock:
            state = self._tenants.get(tenant)
            if state is None and limits is not None:
                now = self.clock()
                state = TenantState(
                    limits, _bucket(limits.requests_per_minute, now), _bucket(limits.audio_seconds_per_minute, now)
                )
                self._tenants[tenant] = state
            if state is not None and state.day != day and not state.pending:
                state.day, state.day_requests, state.day_audio = day, requests, audio

    def _reload(self, tenant: str) -> None:
        state = self._tenants[tenant]
        limits = self.db.limits(tenant, self.defaults)
        now = self.clock()
        state.limits = limits
        state.requests = _resized(state.requests, limits.requests_per_minute, now)
        state.audio = _resized(state.audio, limits.audio_seconds_per_minute, now)

    def _write(self, tenant: str, state: TenantState) -> None:
        if state.pending and state.day:
            self.db.add_usage(tenant, state.day, int(state.pending["requests"]), state.pending["audio_seconds"])
            state.pending.clear()

    def flush(self) -> None:
        with self._lock:
            tenants = list(self._tenants)
        for tenant in tenants:
            self._flush_tenant(tenant)

    def _flush_tenant(self, tenant: str) -> None:
        """Write the tenant's pending counts, the database I/O outside the lock; on failure they stay pending."""
        with self._lock:
            state = self._tenants[tenant]
            if not state.pending or not state.day:
                return
            day, pending = state.day, dict(state.pending)
            state.pending.clear()
        try:
            self.db.add_usage(tenant, day, int(pending.get("requests", 0)), pending.get("audio_seconds", 0.0))
        except Exception:
            with self._lock:  # written with the next flush (lost only if the day rolled over meanwhile)
                for name, value in pending.items():
                    if state.day == day:
                        state.pending[name] += value
            raise

    def _flush_loop(self) -> None:
        while not self._stop.wait(FLUSH_EVERY_SECONDS):
            try:
                self.flush()
            except Exception:  # a locked or full disk must not stop serving; the counters stay pending
                logger.warning("cannot write usage counters", exc_info=True)

    def close(self) -> None:
        self._stop.set()
        self._flusher.join(5)
        self.flush()


def _bucket(per_minute: float | None, now: float) -> TokenBucket | None:
    return None if per_minute is None else TokenBucket(per_minute, per_minute, now)


def _resized(bucket: TokenBucket | None, per_minute: float | None, now: float) -> TokenBucket | None:
    if per_minute is None:
        return None
    if bucket is None:
        return _bucket(per_minute, now)
    return TokenBucket(per_minute, min(bucket.tokens, per_minute), now)
