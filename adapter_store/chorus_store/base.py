"""The store interface every backend implements, the records it returns, and what it needs from a backbone.

The store knows nothing of the engine: it checks files through the `AdapterValidator` it is given (the server
passes one built from its backbone), so any store backend validates exactly as the server serves.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from chorus_store.errors import AdapterCorrupt, AdapterRejected

ADAPTER_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
VISIBILITIES = ("public", "private")


def check_id(adapter_id: str) -> str:
    if not ADAPTER_ID.match(adapter_id):
        raise AdapterRejected(
            f"invalid adapter id {adapter_id!r}: use 1-64 characters of a-z, 0-9, '.', '_', '-', starting alphanumeric"
        )
    return adapter_id


def parse_ref(ref: str) -> tuple[str, int | None]:
    """`ID` -> (ID, None) meaning the current version; `ID@N` -> (ID, N)."""
    adapter_id, sep, version = ref.partition("@")
    check_id(adapter_id)
    if not sep:
        return adapter_id, None
    if not version.isdigit() or int(version) < 1:
        raise AdapterRejected(f"invalid adapter reference {ref!r}: the version after '@' must be a positive integer")
    return adapter_id, int(version)


@dataclass(frozen=True)
class AdapterRecord:
    """One immutable adapter version, as stored (no tensors)."""

    id: str
    version: int
    owner: str
    visibility: str
    sha256: str
    size: int
    created_at: float
    kind: str
    language: str
    task: str
    vocab_size: int
    bottleneck_dim: int
    layers: list[int]
    backbone_fingerprint: str
    fingerprint_override: bool = False
    is_current: bool = False
    versions: list[int] = field(default_factory=list)

    @property
    def ref(self) -> str:
        return f"{self.id}@{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Page:
    items: list[AdapterRecord]
    next_cursor: str | None


@dataclass(frozen=True)
class AdapterSummary:
    """What validating a file tells the store about it; recorded with the version."""

    kind: str
    language: str
    task: str
    vocab_size: int
    bottleneck_dim: int
    layers: list[int]
    backbone_fingerprint: str


class AdapterValidator(Protocol):
    """The serving backbone's check of an adapter file, run before a version becomes visible."""

    @property
    def fingerprint(self) -> str:
        """The backbone's fingerprint; a version validated against another one is recorded as an override."""
        ...

    def validate(self, data: bytes | bytearray, allow_fingerprint_mismatch: bool = False) -> AdapterSummary:
        """Raise `AdapterRejected` (naming the problem) unless `data` is an adapter file this backbone can run."""
        ...


class AdapterStore(Protocol):
    """Where adapters live durably. Versions are immutable; publish is atomic; everything else is a cache."""

    def publish(
        self,
        adapter_id: str,
        source: BinaryIO | Path,
        owner: str,
        visibility: str = "private",
        expected_version: int | None = None,
        allow_fingerprint_mismatch: bool = False,
    ) -> AdapterRecord: ...

    def get(self, ref: str) -> AdapterRecord: ...

    def versions(self, adapter_id: str) -> list[AdapterRecord]: ...

    def list_adapters(self, after: str | None = None, limit: int = 100) -> Page: ...

    def read(self, record: AdapterRecord) -> bytes:
        """The version's bytes, checked against its recorded sha256 (`AdapterCorrupt` if they differ)."""
        ...

    def read_unverified(self, record: AdapterRecord) -> bytearray:
        """The version's bytes in a writable buffer, not yet checked: pair with `verify`. The cache loader hashes on
        a second thread while it builds the adapter, and discards the adapter if the check fails."""
        ...

    def verify(self, record: AdapterRecord, data: bytes | bytearray) -> None:
        """Raise `AdapterCorrupt` unless `data` matches the version's recorded sha256."""
        ...

    def delete(self, adapter_id: str, version: int | None = None) -> None: ...


def verify_sha256(record: AdapterRecord, data: bytes | bytearray) -> None:
    """`AdapterStore.verify` for stores that record a sha256 per version (every store so far)."""
    if hashlib.sha256(data).hexdigest() != record.sha256:
        raise AdapterCorrupt(f"adapter {record.ref} is corrupt in the store (checksum mismatch); publish it again")
