"""The storage quota, counting uploads in flight. A tenant's uploads hold reservations while their bodies arrive
and until their versions are stored, so ten parallel uploads that each fit the space left cannot together
overrun it. Measuring what is stored and checking against every reservation happen under one per-tenant lock,
and a reservation is released only once its version is counted in the store, so no byte is missed in between.
Reservations live in this process (servers sharing a store each count their own uploads in flight)."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable

from chorus_server.errors import ApiError


def quota_exceeded(quota: int, used: int, in_flight: int, adding: int) -> ApiError:
    pending = f" (and {in_flight} in uploads in progress)" if in_flight else ""
    return ApiError(
        507,
        f"storage quota exceeded: {used} of {quota} bytes used{pending}, the upload needs {adding}; delete old "
        "versions or wait for uploads in progress",
        "storage_quota_exceeded",
    )


class Reservation:
    """One upload's claim on its tenant's quota; `cover` grows it, `check_stored` re-measures before publishing."""

    def __init__(self, owner: UploadReservations, tenant: str, quota: int | None, used: int):
        self.owner, self.tenant, self.quota, self.used = owner, tenant, quota, used
        self.bytes = 0

    def cover(self, total: int) -> None:
        """Hold at least `total` bytes for this upload, or raise 507."""
        if total > self.bytes:
            self.owner._grow(self, total - self.bytes)

    def check_stored(self, measure: Callable[[], int]) -> None:
        """Re-measure the tenant's stored bytes (uploads finished meanwhile) and check this upload still fits."""
        self.owner._recheck(self, measure)

    def release(self) -> None:
        self.owner._release(self)


class UploadReservations:
    def __init__(self) -> None:
        self._held: defaultdict[str, int] = defaultdict(int)
        self._locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
        self._guard = threading.Lock()

    def begin(self, tenant: str, quota: int | None, measure: Callable[[], int], declared: int) -> Reservation:
        """Measure the tenant's stored bytes and reserve `declared` (its Content-Length) for a new upload."""
        with self._lock(tenant):
            reservation = Reservation(self, tenant, quota, measure())
            self._grow_locked(reservation, declared)
            return reservation

    def in_flight(self, tenant: str) -> int:
        with self._guard:
            return self._held.get(tenant, 0)

    def _lock(self, tenant: str) -> threading.Lock:
        with self._guard:
            return self._locks[tenant]

    def _grow(self, reservation: Reservation, extra: int) -> None:
        with self._lock(reservation.tenant):
            self._grow_locked(reservation, extra)

    def _grow_locked(self, reservation: Reservation, extra: int) -> None:
        held = self.in_flight(reservation.tenant)
        if reservation.quota is not None and reservation.used + held + extra > reservation.quota:
            raise quota_exceeded(reservation.quota, reservation.used, held, reservation.bytes + extra)
        with self._guard:
            self._held[reservation.tenant] += extra
        reservation.bytes += extra

    def _recheck(self, reservation: Reservation, measure: Callable[[], int]) -> None:
        with self._lock(reservation.tenant):
            reservation.used = measure()
            self._grow_locked(reservation, 0)

    def _release(self, reservation: Reservation) -> None:
        with self._lock(reservation.tenant), self._guard:
            self._held[reservation.tenant] -= reservation.bytes
            if not self._held[reservation.tenant]:
                del self._held[reservation.tenant]
            reservation.bytes = 0
