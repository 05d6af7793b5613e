"""Worker replicas count the transcriptions they serve as requests in flight (`chorus_requests_in_flight`), as
`chorus serve`'s HTTP middleware does. The batcher waits `CHORUS_BATCH__MAX_WAIT_MS` for company only while
another request is in flight: uncounted, a worker never waited, so concurrent requests ran one per pass instead of
batched together (at 4 concurrent clients, half the throughput of one `chorus serve`).

Counting is not enough on its own: `chorus serve` counts a request from its first byte, while it is still uploaded
and decoded, but a worker sees it only once the ingress has decoded it and the router has sent it, so concurrent
requests reach it staggered and each looked alone (1.9 windows per pass against 3.3 at 4 clients). A worker that
has served concurrent requests within `CONCURRENT_SECONDS` therefore expects company, as `chorus serve` does with
other requests in flight; a lone sequential client never waits."""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T", bound=type)

CONCURRENT_SECONDS = 1.0


class Company:
    """Whether more work is likely on its way: another request in flight, or concurrency seen a moment ago."""

    def __init__(self, in_flight: Callable[[], int], clock: Callable[[], float] = time.monotonic):
        self.in_flight, self.clock = in_flight, clock
        self.concurrent_at = -float("inf")

    def arrived(self) -> None:
        """Call once a request counts as in flight."""
        if self.in_flight() > 1:
            self.concurrent_at = self.clock()

    def expected(self) -> bool:
        return self.in_flight() > 1 or self.clock() - self.concurrent_at < CONCURRENT_SECONDS


def counting(worker_class: T) -> T:
    """A subclass of `worker_class` whose coroutine methods named `transcribe*` count as requests in flight on the
    replica's runtime while they run."""

    base: Any = worker_class

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        base.__init__(self, *args, **kwargs)
        self.company = Company(self.runtime.metrics.requests_in_flight)
        self.runtime.worker.company_expected = self.company.expected

    namespace = {"__module__": worker_class.__module__, "__init__": __init__}
    counted: Any = type(worker_class.__name__, (worker_class,), namespace)
    for name, method in inspect.getmembers(worker_class, inspect.iscoroutinefunction):
        if name.startswith("transcribe"):
            setattr(counted, name, _counted(method))
    return counted


def _counted(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(method)
    async def in_flight(self: Any, *args: Any, **kwargs: Any) -> Any:
        gauge = self.runtime.metrics.in_flight
        gauge.inc()
        self.company.arrived()
        try:
            return await method(self, *args, **kwargs)
        finally:
            gauge.dec()

    return in_flight
