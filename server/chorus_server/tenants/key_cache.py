"""Verified API keys, cached briefly so that authenticating a request does no I/O on the event loop.

A verdict (the key's record, or "no such active key") read from the tenant store stays good for `ttl` seconds (1 s),
and longer only while the store provably has not changed: a watcher thread reads its change marker
(`TenantStore.version`; for SQLite 28 bytes of its header, no lock taken) every `watch_every` seconds, and a verdict
whose counter is still current is renewed. So a revocation committed by any process (`chorus keys revoke`,
another server) is seen within `ttl` + one lookup, one made through this process's ring at once (its
`generation`), and while another process holds the file's lock without committing, cached keys keep working.
Lookups that must read the file run on a small thread pool of their own; concurrent lookups of one key share
one read.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from chorus_server.tenants.keys import KeyInfo, KeyRing


@dataclass(frozen=True)
class Verdict:
    info: KeyInfo | None
    counter: int | None  # the store's change marker just before the read
    generation: int  # the ring's generation just before the read
    checked_at: float


class KeyCache:
    def __init__(
        self,
        ring: KeyRing,
        ttl: float = 1.0,
        watch_every: float = 0.25,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.ring, self.ttl, self.watch_every, self.max_entries, self.clock = ring, ttl, watch_every, max_entries, clock
        self._verdicts: OrderedDict[bytes, Verdict] = OrderedDict()
        self._observed: tuple[int | None, float] = (None, -float("inf"))  # (change counter, when read)
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(4, thread_name_prefix="chorus-keys")
        self._inflight: dict[bytes, asyncio.Future[KeyInfo | None]] = {}
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="chorus-key-watch", daemon=True)
        self._watcher.start()

    def cached(self, digest: bytes) -> Verdict | None:
        """The verdict on `digest` if it is still good (no I/O)."""
        with self._lock:
            verdict = self._verdicts.get(digest)
            counter, observed_at = self._observed
        if verdict is None or verdict.generation != self.ring.generation:
            return None
        fresh_as_of = verdict.checked_at
        if verdict.counter is not None and counter == verdict.counter:
            fresh_as_of = max(fresh_as_of, observed_at)  # nothing was committed between the read and then
        return verdict if self.clock() - fresh_as_of <= self.ttl else None

    def verify(self, digest: bytes) -> KeyInfo | None:
        """Read the verdict from the store (blocking; raises `DatabaseUnavailable`) and cache it."""
        verdict = self.cached(digest)
        if verdict is not None:  # another lookup just read it
            return verdict.info
        generation, counter = self.ring.generation, self.ring.change_counter()
        info = self.ring.find(digest)
        with self._lock:
            self._verdicts[digest] = Verdict(info, counter, generation, self.clock())
            self._verdicts.move_to_end(digest)
            while len(self._verdicts) > self.max_entries:
                self._verdicts.popitem(last=False)
        return info

    async def lookup(self, digest: bytes) -> KeyInfo | None:
        """The active key with this hash; reads the store on the pool when no good verdict is cached."""
        verdict = self.cached(digest)
        if verdict is not None:
            return verdict.info
        pending = self._inflight.get(digest)
        if pending is None:
            pending = asyncio.get_running_loop().run_in_executor(self._pool, self.verify, digest)
            self._inflight[digest] = pending
            pending.add_done_callback(lambda _: self._inflight.pop(digest, None))
        return await asyncio.shield(pending)

    def close(self) -> None:
        self._stop.set()
        self._watcher.join(5)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _watch(self) -> None:
        while not self._stop.wait(self.watch_every):
            now = self.clock()
            counter = self.ring.change_counter()
            with self._lock:
                self._observed = (counter, now)
