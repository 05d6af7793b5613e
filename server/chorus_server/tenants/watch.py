"""Changes made by other processes, seen within a second: a thread polls the tenant store's change marker
(`TenantStore.version`) and, when it moved (or cannot tell), runs the callbacks that re-read what this process
caches: whether keys exist, tenants' limits."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from chorus_server.tenants.base import DatabaseUnavailable, TenantStore

logger = logging.getLogger(__name__)


class ChangeWatch:
    def __init__(self, store: TenantStore, callbacks: Sequence[Callable[[], object]], every: float = 0.5):
        self.store, self.callbacks, self.every = store, list(callbacks), every
        self._seen: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chorus-tenant-watch", daemon=True)

    def start(self) -> None:
        self._seen = self._version()
        self._thread.start()

    def poll(self) -> bool:
        """Run the callbacks if the store may have changed since the last poll; True if they ran."""
        version = self._version()
        if version is not None and version == self._seen:
            return False
        try:
            for callback in self.callbacks:
                callback()
        except DatabaseUnavailable as exc:  # tried again on the next poll
            logger.warning("cannot re-read tenant settings: %s", exc)
            return False
        self._seen = version
        return True

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def _version(self) -> int | None:
        try:
            return self.store.version()
        except DatabaseUnavailable:
            return None

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.poll()
            except Exception:  # never let the watch die: it is how revocations and new keys are noticed
                logger.exception("tenant change watch failed; retrying")
