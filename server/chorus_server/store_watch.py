"""Every worker sees every change: requests resolve adapters in the store itself (new versions, deletes and
visibility made through any worker apply to the next request), and this watcher drops cached adapters whose
version was deleted through another worker — within `interval` seconds, at one store read per resident
adapter per interval."""

from __future__ import annotations

import logging
import threading

from chorus_server.engine.cache import AdapterCache
from chorus_store.base import AdapterStore
from chorus_store.errors import AdapterNotFound, StoreError, VersionNotFound

logger = logging.getLogger(__name__)


class StoreWatcher:
    def __init__(self, store: AdapterStore, cache: AdapterCache, pinned: dict[str, str], interval: float):
        self.store, self.cache, self.pinned, self.interval = store, cache, pinned, interval
        self._stop = threading.Event()
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

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sweep()
            except Exception:  # never let the watcher die
                logger.warning("store watch failed", exc_info=True)
