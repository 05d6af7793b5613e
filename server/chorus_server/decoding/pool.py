"""Threads for decoding logits into text, shared fairly between tenants.

A beam search costs from a few to tens of milliseconds of CPU per audio second (an adapter version's beam width,
up to 512, sets it), so one tenant's long files could keep every thread busy for a minute. Run on Python's shared
default executor, that would also hold up every other tenant's audio decoding and voice detection, which run
there. Here decodes get threads of their own, and a free thread takes the tenants waiting in turn (one job of
each, round robin), so a tenant with many queued decodes delays another tenant's next decode by at most the jobs
already running. A job whose caller has gone (its future cancelled) before it starts is dropped.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

_T = TypeVar("_T")


class FairPool:
    def __init__(self, workers: int, name: str = "chorus-decode"):
        self.workers, self.name = workers, name
        self._waiting: OrderedDict[str, deque[tuple[Callable[[], Any], Future[Any]]]] = OrderedDict()
        self._ready = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._closed = False

    def submit(self, tenant: str, job: Callable[[], _T]) -> Future[_T]:
        future: Future[_T] = Future()
        with self._ready:
            if self._closed:
                raise RuntimeError("the decode pool is shut down")
            self._waiting.setdefault(tenant, deque()).append((job, future))
            if len(self._threads) < self.workers:
                thread = threading.Thread(target=self._serve, name=f"{self.name}-{len(self._threads)}", daemon=True)
                self._threads.append(thread)
                thread.start()
            self._ready.notify()
        return future

    async def run(self, tenant: str, job: Callable[[], _T]) -> _T:
        """`job()` on a pool thread in `tenant`'s turn; cancelling the await drops the job if it has not started."""
        return await asyncio.wrap_future(self.submit(tenant, job))

    def waiting(self) -> dict[str, int]:
        with self._ready:
            return {tenant: len(jobs) for tenant, jobs in self._waiting.items()}

    def shutdown(self) -> None:
        """Stop the threads once the jobs already queued have run."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()

    def _next(self) -> tuple[Callable[[], Any], Future[Any]] | None:
        """The first waiting tenant's oldest job; that tenant goes to the back of the line."""
        with self._ready:
            while not self._waiting and not self._closed:
                self._ready.wait()
            if not self._waiting:
                return None
            tenant, jobs = next(iter(self._waiting.items()))
            job = jobs.popleft()
            del self._waiting[tenant]
            if jobs:
                self._waiting[tenant] = jobs  # to the back
            return job

    def _serve(self) -> None:
        while (next_job := self._next()) is not None:
            job, future = next_job
            if not future.set_running_or_notify_cancel():
                continue  # the caller gave up while it waited
            try:
                future.set_result(job())
            except BaseException as error:  # handed to the caller, as a thread pool does
                future.set_exception(error)
