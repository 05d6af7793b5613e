"""The bridge from a store to an adapter cache: `key` ("ID@N") -> the adapter built from its verified bytes."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from chorus_store.base import AdapterRecord, AdapterStore

T = TypeVar("T")

# The checksum (xxh3, sha256 for old versions) releases the GIL, so it runs beside the parse and build of the file.
_HASHER = ThreadPoolExecutor(max_workers=2, thread_name_prefix="adapter-checksum")


def make_loader(store: AdapterStore, build: Callable[[bytearray, AdapterRecord], T]) -> Callable[[str], T]:
    """A cache loader: reads a version's bytes and builds it with `build(data, record)` (the server's validating
    builder) while the checksum runs beside it. The result is returned only once the check passed, and a
    checksum mismatch wins over whatever error the build of corrupt bytes raised."""

    def load(key: str) -> T:
        record = store.get(key)
        data = store.read_unverified(record)
        check = _HASHER.submit(store.verify, record, data)
        try:
            built = build(data, record)
        except Exception:
            check.result()  # raises AdapterCorrupt if the bytes were corrupt
            raise
        check.result()
        return built

    return load
