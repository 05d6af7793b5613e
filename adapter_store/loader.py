"""The bridge from a store to the engine's adapter cache: `key` ("ID@N") -> validated host adapter."""

from __future__ import annotations

from collections.abc import Callable

from adapter_store.base import AdapterStore
from server.engine.adapter_format import adapter_from_bytes
from server.engine.adapters import Adapter


def make_loader(store: AdapterStore) -> Callable[[str], Adapter]:
    """A cache loader: reads the version's bytes (checksum-verified) and builds the adapter on the CPU."""

    def load(key: str) -> Adapter:
        return adapter_from_bytes(store.read(store.get(key)))

    return load
