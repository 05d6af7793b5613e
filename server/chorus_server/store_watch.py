"""Every worker sees every change: requests resolve adapters in the store itself (new versions, deletes and
visibility made through any worker apply to the next request), and this watcher drops cached adapters whose
version was deleted through another worker — within `interval` seconds, at one store read per resident
adapter per interval. It also applies the pins recorded in the store (`chorus_store.pins`) about every second, so a
pin or unpin made through any server holds on every other within `PIN_SECONDS` plus the adapter's load."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from functools import partial

from chorus_server.decoding.prewarm import prewarm
from chorus_server.residency import Residency
from chorus_store.base import AdapterStore
from chorus_store.errors import AdapterNotFound, StoreError, VersionNotFound

logger = logging.getLogger(__name__)

PIN_SECONDS = 1.0  # how often the store's pins are read (one small read)


class StoreWatcher:
    def __init__(self, store: AdapterStore, cache: Residency, pinned: dict[str, str], interval: float):
        self.store, self.cache, self.pinned, self.interval = store, cache, pinned, interval
        self._stop = threading.Event()
        self._pending: set[str] = set()  # pins being loaded
        self._failed: set[str] = set()  # pins that could not be loaded (logged once each)
        self._thread = threading.Thread(target=self._run, name="chorus-store-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def sweep(self) -> list[str]:
        """Drop every resident or pinned version that no longer exists in the store; returns what was dropped."""
        dropped = []
        for key in {*self.cache.resident_keys(), *self.pinned.values()}:
            try:
                self.store.get(key)
            except (AdapterNotFound, VersionNotFound):
                dropped.append(key)
            except StoreError:
                continue  # unreadable right now: keep serving what is loaded
        for key in dropped:
            adapter_id = key.partition("@")[0]
            if self.pinned.get(adapter_id) == key:
                self.cache.unpin(self.pinned.pop(adapter_id))
            self.cache.invalidate(key)
            logger.info("dropped adapter %s from the cache: deleted in the store", key)
        return dropped

    def sync_pins(self) -> None:
        """Pin here what the store's pins list (`pinned` shows it once resident); unpin what they no longer list."""
        wanted = self.store.pins()
        for adapter_id, ref in wanted.items():
            if self.pinned.get(adapter_id) != ref and ref not in self._pending:
                self._pending.add(ref)
                self.cache.pin(ref).add_done_callback(partial(self._resident, adapter_id, ref))
        for adapter_id in [a for a in self.pinned if a not in wanted]:
            self.cache.unpin(self.pinned.pop(adapter_id))
            logger.info("unpinned adapter %s: unpinned in the store", adapter_id)

    def _resident(self, adapter_id: str, ref: str, future: Future[None]) -> None:
        self._pending.discard(ref)
        if future.exception() is not None:  # deleted meanwhile, or unreadable: the next sync tries again
            if ref not in self._failed:
                self._failed.add(ref)
                logger.warning("could not pin %s from the store's pins: %s", ref, future.exception())
            return
        self._failed.discard(ref)
        old = self.pinned.get(adapter_id)
        self.pinned[adapter_id] = ref
        if old is not None and old != ref:
            self.cache.unpin(old)
        logger.info("pinned adapter %s: pinned in the store", ref)
        prewarm(self.cache, ref)  # its beam-search decoder too, before its first request

    def _run(self) -> None:
        next_sweep = time.monotonic() + self.interval
        while not self._stop.wait(min(PIN_SECONDS, self.interval)):
            try:
                self.sync_pins()
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + self.interval
                    self.sweep()
            except Exception:  # never let the watcher die
                logger.warning("store watch failed", exc_info=True)
