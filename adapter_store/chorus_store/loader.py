"""The bridge from a store to the engine's adapter cache: `key` ("ID@N") -> validated host adapter."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from chorus_server.engine.adapter_format import adapter_from_bytes
from chorus_server.engine.adapters import Adapter
from chorus_store.base import AdapterStore
from chorus_store.local import LocalStore

# sha256 releases the GIL, so the checksum of one file runs beside the parse and build of that same file.
_HASHER = ThreadPoolExecutor(max_workers=2, thread_name_prefix="adapter-sha256")


def make_loader(store: AdapterStore) -> Callable[[str], Adapter]:
    """A cache loader: reads the version's bytes, checks them and builds the adapter on the CPU.

    For a `LocalStore` the sha256 check overlaps the build; the adapter is returned only once the check passed,
    and a checksum mismatch wins over whatever error the build of corrupt bytes raised.
    """

    def load(key: str) -> Adapter:
        record = store.get(key)
        if not isinstance(store, LocalStore):
            return adapter_from_bytes(store.read(record))
        data = store.read_unverified(record)
        check = _HASHER.submit(store.verify, record, data)
        try:
            adapter = adapter_from_bytes(data)
        except Exception:
            check.result()  # raises AdapterCorrupt if the bytes were corrupt
            raise
        check.result()
        return adapter

    return load
