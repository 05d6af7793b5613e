"""Durable, versioned adapter storage. `LocalStore` (a directory) is the embedded default."""

from chorus_store.base import AdapterRecord, AdapterStore, AdapterSummary, AdapterValidator, Page, parse_ref
from chorus_store.errors import (
    AdapterCorrupt,
    AdapterNotFound,
    AdapterRejected,
    PublishConflict,
    StoreError,
    StoreUnavailable,
    VersionNotFound,
)
from chorus_store.local import LocalStore

__all__ = [
    "AdapterCorrupt",
    "AdapterNotFound",
    "AdapterRecord",
    "AdapterRejected",
    "AdapterStore",
    "AdapterSummary",
    "AdapterValidator",
    "LocalStore",
    "Page",
    "PublishConflict",
    "StoreError",
    "StoreUnavailable",
    "VersionNotFound",
    "parse_ref",
]
