"""How much audio the server admits: a bound on audio admitted and not yet finished, reserved atomically per
request, and shared fairly — when the bound is reached only tenants holding more than an equal share of it are
refused, so a flooding tenant cannot lock the others out."""

from __future__ import annotations

import threading
from collections import defaultdict


class QueueFull(Exception):
    def __init__(self, queued: float):
        super().__init__(f"{queued:.0f} s of audio queued")
        self.queued = queued


class TooLarge(Exception):
    """A single request larger than the bound: it could never be admitted, so retrying is pointless."""


class QueueBudget:
    def __init__(self, bound_seconds: float):
        self.bound = bound_seconds
        self._held: defaultdict[str, float] = defaultdict(float)  # tenant -> audio seconds admitted, not finished
        self._lock = threading.Lock()

    def refusal(self, tenant: str, seconds: float = 0.0) -> float | None:
        """The queued total if `seconds` more for `tenant` would be refused now (None: it would be admitted).
        A cheap early check (before a body is read or decoded); `reserve` still decides."""
        if seconds > self.bound:
            return None  # never admissible: `reserve` answers TooLarge (413), not "retry later"
        with self._lock:
            return self._refused(tenant, max(seconds, 1e-3))

    def reserve(self, tenant: str, seconds: float) -> None:
        """Admit `seconds` for `tenant` or raise `QueueFull` / `TooLarge`. Pair with `release`."""
        if seconds > self.bound:
            raise TooLarge(
                f"the audio is {seconds:.0f} s long; this server admits at most {self.bound:.0f} s at a time"
            )
        with self._lock:
            queued = self._refused(tenant, seconds)
            if queued is not None:
                raise QueueFull(queued)
            self._held[tenant] += seconds

    def _refused(self, tenant: str, seconds: float) -> float | None:
        """The queued total if the bound is reached and `tenant` would hold more than an equal share of it
        (call under the lock); None if `seconds` more may be admitted."""
        total = sum(self._held.values())
        if total + seconds <= self.bound:
            return None
        share = self.bound / (len(self._held) + (tenant not in self._held))
        return total if self._held.get(tenant, 0.0) + seconds > share else None

    def release(self, tenant: str, seconds: float) -> None:
        with self._lock:
            self._held[tenant] -= seconds
            if self._held[tenant] <= 1e-9:
                del self._held[tenant]

    @property
    def held(self) -> float:
        with self._lock:
            return sum(self._held.values())

    def held_by(self, tenant: str) -> float:
        with self._lock:
            return self._held.get(tenant, 0.0)
