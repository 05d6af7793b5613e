"""Per-tenant limits: request and audio rates (token buckets), concurrency, a daily audio quota that survives
restarts, and the usage report. Checked before a request's body is read (requests, concurrency) and before its
audio is decoded (audio seconds, from the file header where it has one).

Limits are per tenant: the defaults from settings (`CHORUS_LIMITS__TENANT__*`) merged with the tenant's own
overrides in the tenant store (`PUT /v1/tenants/{tenant}/limits`), cached here and re-read when the store says
they may have changed (`refresh_limits`). The buckets and concurrency slots are the store's (`RateStore`): one
limit for every process on a shared database. Daily usage is counted in memory and added to the store every
few seconds and at shutdown, so the daily quota of several processes may be overrun by what they counted in
the last few seconds.
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
from chorus_server.tenants.base import DatabaseUnavailable, TenantStore
from chorus_server.tenants.local_rates import wait_for

logger = logging.getLogger(__name__)

FLUSH_EVERY_SECONDS = 2.0  # usage counters are written, and concurrency leases renewed, this often
LEASE_SECONDS = 60.0  # a concurrency slot of a process that died comes back after this long
BUCKETS = (("requests", "requests_per_minute"), ("audio-seconds", "audio_seconds_per_minute"))
# The x-ratelimit-* headers of admitted requests are reused this long: on a shared database each reading is two
# round trips, and a per-minute bucket refills by at most 1/60 of itself in a second. Refusals read them fresh.
HEADERS_TTL_SECONDS = 1.0


def utc_day(now: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(now))


@dataclass
class TenantState:
    limits: TenantLimits
    day: str = ""
    day_audio: float = 0.0  # audio seconds today, persisted and pending
    day_requests: int = 0
    pending: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))  # not yet written


class Quotas:
    def __init__(self, defaults: TenantLimits, store: TenantStore, clock: Any = time.time):
        self.defaults, self.store, self.clock = defaults, store, clock
        self._tenants: dict[str, TenantState] = {}
        self._leases: dict[str, str] = {}  # concurrency leases held by this process -> tenant
        self._headers: dict[str, tuple[float, dict[str, str]]] = {}  # tenant -> (when read, headers)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._flusher = threading.Thread(target=self._flush_loop, name="chorus-usage", daemon=True)
        self._flusher.start()

    # ---- admission -----------------------------------------------------------------------------------------

    def admit_request(self, tenant: str, usage: bool = True) -> str:
        """Take one request (rate and concurrency) or raise 429: the concurrency lease to `release`. Blocking (it
        may use the tenant store): call it off the event loop. `usage=False`: the request spends the rate and a
        slot but is not usage (a listing: not billed, not in the daily quota, nothing to write)."""
        limits = self._load(tenant).limits
        now, per_minute, slots = self.clock(), limits.requests_per_minute, limits.concurrent_requests
        if per_minute is None:
            lease, wait = self.store.acquire_slot(tenant, slots, now, LEASE_SECONDS), 0.0
        else:  # slot and token together: one round trip on a shared database
            lease, wait = self.store.admit(tenant, slots, now, LEASE_SECONDS, "requests", per_minute, per_minute / 60)
        if lease is None:
            raise self._limited(f"too many concurrent requests for this tenant (limit {slots})", 1)
        if wait > 0:
            self.store.release_slot(tenant, lease)
            raise self._limited(f"request rate limit of {per_minute:g}/min reached", wait)
        with self._lock:
            self._leases[lease] = tenant
            if usage:
                state = self._tenants[tenant]
                state.day_requests += 1
                state.pending["requests"] += 1
        return lease

    def release(self, tenant: str, lease: str) -> None:
        """Give back the concurrency slot `admit_request` took."""
        with self._lock:
            self._leases.pop(lease, None)
        self.store.release_slot(tenant, lease)

    def check_audio(self, tenant: str, seconds: float) -> None:
        """Raise 429 unless `seconds` of audio fit the tenant's audio rate and daily quota now."""
        state = self._load(tenant)
        limits, now = state.limits, self.clock()
        if limits.audio_seconds_per_day is not None and state.day_audio + seconds > limits.audio_seconds_per_day:
            raise self._limited(
                f"daily audio quota of {limits.audio_seconds_per_day:g} s reached ({state.day_audio:.0f} s used today)",
                86400 - (now % 86400),  # until midnight UTC
            )
        per_minute = limits.audio_seconds_per_minute
        if per_minute is not None:
            level = self.store.level(tenant, "audio-seconds", per_minute, per_minute / 60, now)
            wait = wait_for(level, seconds, per_minute, per_minute / 60)
            if wait > 0:
                raise self._limited(f"audio rate limit of {per_minute:g} s/min reached", wait)

    def charge_audio(self, tenant: str, seconds: float) -> None:
        """Count `seconds` of admitted audio (the bucket may go into debt: the length is known after decoding)."""
        state = self._load(tenant)
        per_minute = state.limits.audio_seconds_per_minute
        if per_minute is not None:
            self.store.charge(tenant, "audio-seconds", seconds, per_minute, per_minute / 60, self.clock())
        with self._lock:
            state.day_audio += seconds
            state.pending["audio_seconds"] += seconds

    def admit_audio(self, tenant: str, seconds: float) -> None:
        """`check_audio`, then `charge_audio`: decoded audio admitted and counted (one call to run off the loop)."""
        self.check_audio(tenant, seconds)
        self.charge_audio(tenant, seconds)

    # ---- reporting -----------------------------------------------------------------------------------------

    def headers(self, tenant: str, fresh: bool = False) -> dict[str, str]:
        """OpenAI-style `x-ratelimit-*` headers for requests and audio seconds; unless `fresh`, a reading up to
        HEADERS_TTL_SECONDS old. Blocking (the store's buckets): call it off the event loop."""
        now = self.clock()
        with self._lock:
            cached = self._headers.get(tenant)
        if not fresh and cached is not None and now - cached[0] < HEADERS_TTL_SECONDS:
            return cached[1]
        limits = self._load(tenant).limits
        headers: dict[str, str] = {}
        for kind, setting in BUCKETS:
            per_minute = getattr(limits, setting)
            if per_minute is None:
                continue
            tokens = self.store.level(tenant, kind, per_minute, per_minute / 60, now)
            headers[f"x-ratelimit-limit-{kind}"] = f"{per_minute:g}"
            headers[f"x-ratelimit-remaining-{kind}"] = f"{max(0.0, math.floor(tokens)):g}"
            headers[f"x-ratelimit-reset-{kind}"] = f"{max(0.0, (per_minute - tokens) * 60 / per_minute):.3g}s"
        with self._lock:
            self._headers[tenant] = (now, headers)
        return headers

    def headers_if_known(self, tenant: str, fresh: bool = False) -> dict[str, str]:
        """`headers`, or none when the tenant store cannot be read: rate headers never fail an answer."""
        try:
            return self.headers(tenant, fresh)
        except DatabaseUnavailable as exc:
            logger.warning("x-ratelimit headers left out: %s", exc)
            return {}

    def usage(self, tenant: str) -> dict[str, Any]:
        """Today's usage of the tenant by every process on the database (as far as each has written it, at most
        FLUSH_EVERY_SECONDS ago) with this process's unwritten counts. Blocking."""
        state = self._load(tenant)
        in_progress = self.store.slots_in_use(tenant, self.clock())
        requests, audio = self.store.daily_usage(tenant, state.day)
        with self._lock:
            return {
                "object": "usage",
                "tenant": tenant,
                "day": state.day,
                "requests": requests + int(state.pending.get("requests", 0)),
                "audio_seconds": round(audio + state.pending.get("audio_seconds", 0.0), 3),
                "requests_in_progress": in_progress,
                "limits": state.limits.model_dump(),
            }

    def tenants(self) -> list[str]:
        known = set(self.store.tenants_with_usage(utc_day(self.clock())))
        with self._lock:
            return sorted(known | set(self._tenants))

    def limits(self, tenant: str) -> TenantLimits:
        """The tenant's limits now: the defaults with its overrides (read from the store; blocking)."""
        return self.defaults.model_copy(update=self.store.limit_overrides(tenant))

    def forget_limits(self, tenant: str) -> None:
        """Re-read the tenant's overrides (after they changed). Blocking."""
        with self._lock:
            known = tenant in self._tenants
        if known:
            limits = self.limits(tenant)
            with self._lock:
                self._tenants[tenant].limits = limits

    def refresh_limits(self) -> None:
        """Re-read every known tenant's overrides: the store says they may have changed. Blocking."""
        with self._lock:
            tenants = list(self._tenants)
        for tenant in tenants:
            self.forget_limits(tenant)

    # ---- internals -----------------------------------------------------------------------------------------

    def _limited(self, message: str, wait: float) -> ApiError:
        return ApiError(429, message, "rate_limit_exceeded", headers={"Retry-After": str(max(1, math.ceil(wait)))})

    def _load(self, tenant: str) -> TenantState:
        """The tenant's state with today's counts; what it lacks is read from the store outside the lock, so
        that threads never wait on the lock for database I/O."""
        day = utc_day(self.clock())
        with self._lock:
            known = self._tenants.get(tenant)
            if known is not None and known.day == day:
                return known
        limits = self.limits(tenant) if known is None else None
        if known is not None:
            self._flush_tenant(tenant)  # yesterday's pending counts, before the day rolls over
        requests, audio = self.store.daily_usage(tenant, day)
        with self._lock:
            state = self._tenants.get(tenant)
            if state is None and limits is not None:
                state = self._tenants[tenant] = TenantState(limits)
            assert state is not None
            if state.day != day and not state.pending:
                state.day, state.day_requests, state.day_audio = day, requests, audio
            return state

    def flush(self) -> None:
        with self._lock:
            tenants, leases = list(self._tenants), list(self._leases)
        if leases:
            self.store.renew_slots(leases, self.clock(), LEASE_SECONDS)
        for tenant in tenants:
            self._flush_tenant(tenant)

    def _flush_tenant(self, tenant: str) -> None:
        """Write the tenant's pending counts, then take today's totals of every process from the store (so that
        the daily quota counts what other servers on the database admitted); the database I/O outside the lock. On
        failure the counts stay pending."""
        with self._lock:
            state = self._tenants[tenant]
            if not state.day:
                return
            day, pending = state.day, dict(state.pending)
            state.pending.clear()
        try:
            if pending:
                self.store.add_usage(tenant, day, int(pending.get("requests", 0)), pending.get("audio_seconds", 0.0))
        except Exception:
            with self._lock:  # written with the next flush (lost only if the day rolled over meanwhile)
                for name, value in pending.items():
                    if state.day == day:
                        state.pending[name] += value
            raise
        requests, audio = self.store.daily_usage(tenant, day)
        with self._lock:
            if state.day == day:  # counted here since the read are still pending: add them
                state.day_requests = requests + int(state.pending.get("requests", 0))
                state.day_audio = audio + state.pending.get("audio_seconds", 0.0)

    def _flush_loop(self) -> None:
        while not self._stop.wait(FLUSH_EVERY_SECONDS):
            try:
                self.flush()
            except Exception:  # a locked or full disk must not stop serving; the counters stay pending
                logger.warning("cannot write usage counters", exc_info=True)

    def close(self) -> None:
        self._stop.set()
        self._flusher.join(5)
        try:
            self.flush()
        except DatabaseUnavailable as exc:  # shutting down: say what is lost rather than fail the shutdown
            logger.error("usage counters of the last seconds not written: %s", exc)
