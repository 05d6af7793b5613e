"""The store interface every backend implements, the records it returns, and what it needs from a backbone.

The store knows nothing of the engine: it checks files through the `AdapterValidator` it is given (the server
passes one built from its backbone), so any store backend validates exactly as the server serves.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from chorus_store.decoding_files import DecodingKind, DecodingUpload
from chorus_store.errors import AdapterRejected

NAME = r"[a-z0-9][a-z0-9._-]{0,63}"
# `owner/name` is an adapter's full ID: every adapter lives in its owner's namespace (like a model hub's repos).
ADAPTER_ID = re.compile(rf"(?P<owner>{NAME})/(?P<name>{NAME})", re.ASCII)
# What a caller may write: `[owner/]name[@version]`; versions are plain ASCII digits without leading zeros.
REF = re.compile(rf"(?:(?P<owner>{NAME})/)?(?P<name>{NAME})(?:@(?P<version>[0-9]{{1,9}}))?", re.ASCII)
TENANT = re.compile(NAME, re.ASCII)
VISIBILITIES = ("public", "private")
NAME_RULE = "1-64 characters of a-z, 0-9, '.', '_', '-', starting with a letter or digit"


@dataclass(frozen=True)
class Ref:
    """A parsed adapter reference: `owner` None means "resolve the name for the caller"; `version` None means
    the current version."""

    owner: str | None
    name: str
    version: int | None

    @property
    def adapter_id(self) -> str:
        """The full ID (`owner/name`); only for references that name their owner."""
        if self.owner is None:
            raise ValueError(f"reference {self.name!r} has no owner")
        return f"{self.owner}/{self.name}"


def check_tenant(tenant: str) -> str:
    if not TENANT.fullmatch(tenant):
        raise AdapterRejected(f"invalid tenant name {tenant!r}: use {NAME_RULE}")
    return tenant


def check_id(adapter_id: str) -> str:
    """A full adapter ID, `owner/name`."""
    if not ADAPTER_ID.fullmatch(adapter_id):
        raise AdapterRejected(f"invalid adapter id {adapter_id!r}: write owner/name, each {NAME_RULE}")
    return adapter_id


def split_ref(ref: str) -> Ref:
    """`[owner/]name[@N]` -> Ref. Only one spelling is accepted for each reference (ASCII, no leading zeros)."""
    match = REF.fullmatch(ref)
    if match is None:
        raise AdapterRejected(
            f"invalid adapter reference {ref!r}: write name, owner/name or either with @version "
            f"(names: {NAME_RULE}; versions: 1, 2, ...)"
        )
    version = match["version"]
    if version is not None and (version.startswith("0")):
        raise AdapterRejected(f"invalid adapter reference {ref!r}: versions start at 1 and have no leading zeros")
    return Ref(match["owner"], match["name"], int(version) if version is not None else None)


def parse_ref(ref: str) -> tuple[str, int | None]:
    """`owner/name` -> (ID, None) meaning the current version; `owner/name@N` -> (ID, N)."""
    parsed = split_ref(ref)
    if parsed.owner is None:
        raise AdapterRejected(f"invalid adapter reference {ref!r}: the store needs the full ID, owner/name")
    return parsed.adapter_id, parsed.version


@dataclass(frozen=True)
class AdapterRecord:
    """One immutable adapter version, as stored (no tensors). `visibility` is this version's own: publishing a
    newer version public exposes no older private one."""

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
    xxh3: str = ""  # fast checksum of the bytes; "" in versions published before it was recorded (sha256 then)
    # Decoding files stored with this version (chorus_store.decoding_files): None when absent; else size,
    # sha256, xxh3 and, for `lm`, its format ("arpa" or "kenlm") and order, for `lexicon`, its word count.
    lm: dict[str, Any] | None = None
    lexicon: dict[str, Any] | None = None
    beam: dict[str, float] = field(default_factory=dict)  # beam-search setting overrides (name -> value)
    is_current: bool = False
    versions: list[int] = field(default_factory=list)
    public_versions: list[int] = field(default_factory=list)  # of `versions`, those any tenant may use

    @property
    def ref(self) -> str:
        return f"{self.id}@{self.version}"

    @property
    def name(self) -> str:
        return self.id.partition("/")[2]

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
    # The characters a lexicon word may use (the vocabulary's own); not recorded. Empty: no lexicon accepted.
    symbols: frozenset[str] = frozenset()


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
        visibility: str | None = None,
        expected_version: int | None = None,
        allow_fingerprint_mismatch: bool = False,
        decoding: DecodingUpload | None = None,
    ) -> AdapterRecord:
        """Validate and store a new version of `owner/name`; it becomes current. `decoding`: its language model,
        lexicon and beam-setting overrides, checked (`chorus_store.decoding_files`) and stored with it.

        Visibility is per version: `visibility` None gives the new version the adapter's (its last publish's; new
        adapters: private) and leaves older versions as they are; "public" makes the new version public and claims
        the name in the shared public namespace (`NameTaken` if another owner's public adapter has it); "private"
        makes the new version and every older one private, releasing the name. Version numbers are never reused,
        even after deletes."""
        ...

    def set_visibility(self, ref: str, visibility: str) -> AdapterRecord:
        """Make one version (`owner/name@N`; `owner/name`: the current one) public or private, claiming or
        releasing the public name as the adapter gains its first or loses its last public version."""
        ...

    def get(self, ref: str) -> AdapterRecord:
        """`owner/name[@N]`; `AdapterNotFound` / `VersionNotFound`, `AdapterCorrupt` for a damaged record."""
        ...

    def versions(self, adapter_id: str) -> list[AdapterRecord]: ...

    def list_adapters(
        self,
        after: str | None = None,
        limit: int = 100,
        where: Callable[[AdapterRecord], bool] | None = None,
        viewer: str | None = None,
    ) -> Page:
        """Adapters in full-ID order, only those `where` accepts, `limit` per page; `next_cursor` (pass it as
        `after`) is always the ID of an item on this page. Damaged adapters are skipped and logged.

        `viewer` None: every adapter's current version. `viewer` a tenant: what it may see, at a cost in
        proportion to that: its own adapters (current versions) and other owners' public adapters (their newest
        public version), found through its own namespace and the public-name index, so no other owner's private
        adapter is read at all."""
        ...

    def public_owner(self, name: str) -> str | None:
        """The owner of the public adapter called `name`, if there is one. Reads nothing of private adapters, so
        resolving a name costs the same whether another tenant has a private adapter of that name or not."""
        ...

    def owner_bytes(self, owner: str) -> int:
        """Bytes stored for `owner`: every version of every adapter in its namespace (for storage quotas)."""
        ...

    def read(self, record: AdapterRecord) -> bytes:
        """The version's bytes, checked against its recorded checksum (`AdapterCorrupt` if they differ)."""
        ...

    def read_unverified(self, record: AdapterRecord) -> bytearray:
        """The version's bytes in a writable buffer, not yet checked: pair with `verify`. The cache loader hashes on
        a second thread while it builds the adapter, and discards the adapter if the check fails."""
        ...

    def verify(self, record: AdapterRecord, data: bytes | bytearray) -> None:
        """Raise `AdapterCorrupt` unless `data` matches the version's recorded checksum (xxh3, else sha256)."""
        ...

    def decoding_file(self, record: AdapterRecord, kind: DecodingKind) -> Path:
        """The version's `lm` or `lexicon` file on local disk (in place locally; a verified cache copy when the
        store is remote). `VersionNotFound` if the version has none, `AdapterCorrupt` if it fails its checksum."""
        ...

    def pins(self) -> dict[str, str]:
        """Pinned versions (adapter ID -> `owner/name@N`) that every server on this store keeps resident."""
        ...

    def set_pin(self, adapter_id: str, ref: str | None) -> None:
        """Pin `ref` (a version of `adapter_id`) for every server on this store; None: unpin the adapter."""
        ...

    def delete(self, adapter_id: str, version: int | None = None, purge: bool = False) -> None:
        """Delete one version, or every version. A fully deleted adapter leaves a tombstone (its last version
        number) so `ID@N` never names other bytes; `purge` removes the tombstone too (numbers restart at 1).
        Works on damaged adapters, so their owner can always remove them."""
        ...
