"""Adapter residency: which adapters are ready on the device, and how they get there.

Tiers: the device bank (prepared adapters, byte budget), host RAM (loaded adapters, byte budget), the store.
On a CPU device the two are the same memory, so only one copy is kept and counted against the device budget.

- `lease(key)` returns a Future of a `Lease`; the lease holds a reference that keeps the adapter resident until
  `release()`. Requests take a lease at admission, so the inference thread only ever sees resident adapters.
- Misses load on a loader thread pool (the inference thread never waits on I/O); concurrent misses for one key
  share one load (single flight). A failed load fails only that key's waiters and is not cached.
- Eviction is LRU by bytes and never touches an adapter with references or a pin; when everything is in use
  the budget is exceeded temporarily and eviction resumes as references drop.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, replace

import torch

from chorus_server.engine.adapters import Adapter

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CacheStats:
    device_hits: int = 0
    host_hits: int = 0
    misses: int = 0
    loads: int = 0  # loads that succeeded (failures: load_failures)
    load_failures: int = 0
    load_seconds: float = 0.0
    device_evictions: int = 0
    host_evictions: int = 0
    device_bytes: int = 0
    host_bytes: int = 0
    device_entries: int = 0
    host_entries: int = 0


@dataclass
class _Entry:
    key: str
    host: Adapter | None = None
    device: Adapter | None = None
    host_bytes: int = 0  # measured once when the copy arrives, not on every eviction pass
    device_bytes: int = 0
    loading: Future[tuple[Adapter, Adapter]] | None = None  # (device copy, host copy)
    refs: int = 0
    pinned: bool = False
    stale: bool = False  # deleted from the store: drop as soon as nobody uses it
    last_used: int = 0


class Lease:
    """A reference to a resident adapter; release it (or use it as a context manager) when done."""

    def __init__(self, cache: AdapterCache, key: str, adapter: Adapter):
        self.key, self.adapter = key, adapter
        self._cache: AdapterCache | None = cache

    def release(self) -> None:
        if self._cache is not None:
            cache, self._cache = self._cache, None
            cache._release(self.key)

    def __enter__(self) -> Adapter:
        return self.adapter

    def __exit__(self, *exc: object) -> None:
        self.release()


class AdapterCache:
    def __init__(
        self,
        load: Callable[[str], Adapter],
        prepare: Callable[[Adapter], Adapter],
        device: torch.device,
        device_budget_bytes: int,
        host_budget_bytes: int,
        executor: Executor | None = None,
        clock: Callable[[], float] = time.perf_counter,
        host_bytes: Callable[[Adapter], int] = Adapter.nbytes,
    ):
        """`load(key)` reads and validates an adapter into host memory (called on the loader threads);
        `prepare(adapter)` checks it against the backbone and copies it to the device; `host_bytes(adapter)`: the
        host memory its host copy holds, counted against `host_budget_bytes` (on CUDA its pinned blocks, which the
        allocator rounds up: upload.py)."""
        self._load, self._prepare, self._clock = load, prepare, clock
        self._host_bytes = host_bytes
        self.shared_memory = device.type == "cpu"
        self.device_budget, self.host_budget = device_budget_bytes, host_budget_bytes
        self._executor = executor or ThreadPoolExecutor(max_workers=2, thread_name_prefix="adapter-loader")
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._tick = itertools.count(1)
        self._stats = CacheStats()

    # ---- public API ----------------------------------------------------------------------------------------

    def lease(self, key: str) -> Future[Lease]:
        """A future that resolves once `key` is device-resident, holding a reference to it."""
        result: Future[Lease] = Future()
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry.device is not None:
                self._count(device_hits=1)
                entry.refs += 1
                entry.last_used = next(self._tick)
                result.set_result(Lease(self, key, entry.device))
                return result
            if entry is None:
                entry = _Entry(key)
                self._entries[key] = entry
            entry.refs += 1  # reserved now, so the adapter cannot be evicted between load and use
            if entry.loading is None:
                if entry.host is not None:
                    self._count(host_hits=1)
                else:
                    self._count(misses=1)
                entry.loading = self._executor.submit(self._bring_in, entry)
            loading = entry.loading
        loading.add_done_callback(lambda done: self._resolve(key, done, result))
        return result

    @contextlib.contextmanager
    def acquire(self, key: str, timeout: float | None = None) -> Iterator[Adapter]:
        """`with cache.acquire(key) as adapter:` — blocking convenience around `lease`."""
        with self.lease(key).result(timeout=timeout) as adapter:
            yield adapter

    def pin(self, key: str) -> Future[None]:
        """Keep `key` resident until `unpin`; loads it if needed. The future resolves once it is resident."""
        leased = self.lease(key)
        with self._lock:
            self._entries[key].pinned = True  # the lease's reference keeps the entry alive until here
        result: Future[None] = Future()

        def settle(done: Future[Lease]) -> None:
            error = done.exception()
            if error is not None:
                result.set_exception(error)
            else:
                done.result().release()
                result.set_result(None)

        leased.add_done_callback(settle)
        return result

    def unpin(self, key: str) -> None:
        with self._lock:
            if key in self._entries:
                self._entries[key].pinned = False
            self._evict()

    def invalidate(self, prefix: str) -> None:
        """Forget every entry whose key starts with `prefix` (e.g. `"fr@"` after deleting adapter fr).
        Entries in use stay until their last reference is released."""
        with self._lock:
            for key, entry in list(self._entries.items()):
                if key.startswith(prefix):
                    entry.stale = True
                    if entry.refs == 0 and entry.loading is None:
                        self._drop(key)

    def is_resident(self, key: str) -> bool:
        with self._lock:
            entry = self._entries.get(key)
            return entry is not None and entry.device is not None

    def stats(self) -> CacheStats:
        with self._lock:
            device = [e for e in self._entries.values() if e.device is not None]
            host = [e for e in self._entries.values() if e.host is not None]
            return replace(
                self._stats,
                device_bytes=sum(e.device_bytes for e in device),
                host_bytes=sum(e.host_bytes for e in host),
                device_entries=len(device),
                host_entries=len(host),
            )

    def resident_keys(self) -> list[str]:
        """Device-resident keys, least recently used first."""
        with self._lock:
            entries = sorted((e for e in self._entries.values() if e.device is not None), key=lambda e: e.last_used)
            return [e.key for e in entries]

    # ---- internals -----------------------------------------------------------------------------------------

    def _bring_in(self, entry: _Entry) -> tuple[Adapter, Adapter]:
        """Loader thread: store -> host (if needed) -> device. Returns (device copy, host copy)."""
        start = self._clock()
        host = entry.host
        if host is None:
            host = self._load(entry.key)
        device = self._prepare(host)
        with self._lock:
            self._count(loads=1, load_seconds=self._clock() - start)
        return device, host

    def _resolve(self, key: str, done: Future[tuple[Adapter, Adapter]], result: Future[Lease]) -> None:
        with self._lock:
            entry = self._entries.get(key)
            assert entry is not None
            entry.loading = None
            error = done.exception()
            if error is not None:
                self._count(load_failures=1)
                entry.refs -= 1
                if entry.refs == 0 and entry.device is None:
                    self._entries.pop(key, None)
            else:
                device, host = done.result()
                entry.device, entry.device_bytes = device, device.nbytes()
                entry.host = None if self.shared_memory else host
                entry.host_bytes = 0 if entry.host is None else self._host_bytes(host)
                entry.last_used = next(self._tick)
                self._evict()
        if error is not None:
            logger.warning("adapter %s failed to load: %s", key, error)
        if not result.set_running_or_notify_cancel():  # the caller gave up waiting: hand its reference back
            if error is None:
                self._release(key)
        elif error is not None:
            result.set_exception(error)
        else:
            result.set_result(Lease(self, key, device))

    def _release(self, key: str) -> None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return
            entry.refs -= 1
            if entry.refs == 0 and entry.stale:
                self._drop(key)
            self._evict()

    def _drop(self, key: str) -> None:
        self._entries.pop(key, None)

    def _evict(self) -> None:
        """Caller holds the lock. Device tier: LRU over entries nobody uses, never pinned ones. Host tier: LRU over
        every host copy not being loaded, including those of device-resident, in-use or pinned adapters (a batch
        reads the device copy; the host copy only spares a store read after a device eviction), so the host tier
        never holds more than its budget, whatever the device tier holds."""
        candidates = sorted(
            (e for e in self._entries.values() if e.refs == 0 and not e.pinned and e.loading is None),
            key=lambda e: e.last_used,
        )
        device_bytes = sum(e.device_bytes for e in self._entries.values() if e.device is not None)
        for entry in candidates:
            if device_bytes <= self.device_budget:
                break
            if entry.device is not None:
                device_bytes -= entry.device_bytes
                entry.device = None
                self._count(device_evictions=1)
        hosts = sorted(
            (e for e in self._entries.values() if e.host is not None and e.loading is None),
            key=lambda e: (e.device is not None, e.last_used),  # a spare of a device copy goes before a sole copy
        )
        host_bytes = sum(e.host_bytes for e in self._entries.values() if e.host is not None)
        for entry in hosts:
            if host_bytes <= self.host_budget:
                break
            host_bytes -= entry.host_bytes
            entry.host = None
            self._count(host_evictions=1)
        for entry in candidates:
            if entry.host is None and entry.device is None:
                self._entries.pop(entry.key, None)

    def _count(self, **deltas: float) -> None:
        self._stats = replace(self._stats, **{k: getattr(self._stats, k) + v for k, v in deltas.items()})
