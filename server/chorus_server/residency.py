"""Which adapter versions a server holds resident, as the operator API and the store watcher see it: the adapter
cache on a server that runs the backbone, nothing on a cluster ingress (its workers hold adapters)."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Protocol


class Residency(Protocol):
    def pin(self, key: str) -> Future[None]: ...

    def unpin(self, key: str) -> None: ...

    def invalidate(self, prefix: str) -> None: ...

    def is_resident(self, key: str) -> bool: ...

    def resident_keys(self) -> list[str]: ...


class NoResidency:
    """A cluster ingress: it loads no adapter, so nothing is resident here and pinning has nothing to keep."""

    def pin(self, key: str) -> Future[None]:
        done: Future[None] = Future()
        done.set_result(None)
        return done

    def unpin(self, key: str) -> None:
        pass

    def invalidate(self, prefix: str) -> None:
        pass

    def is_resident(self, key: str) -> bool:
        return False

    def resident_keys(self) -> list[str]:
        return []
