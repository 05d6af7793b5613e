"""What every store backend shares: upload copying with the size cap, version naming, the records written and
read back, and the errors for missing and damaged adapters — so the backends differ only in how they store."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import xxhash

from chorus_store.base import AdapterRecord, AdapterStore, AdapterSummary, Page
from chorus_store.decoding_files import (
    KINDS,
    DecodingFileInfo,
    DecodingKind,
    DecodingLimits,
    DecodingUpload,
    check_beam,
    receive,
)
from chorus_store.errors import (
    AdapterCorrupt,
    AdapterNotFound,
    AdapterRejected,
    StoreUnavailable,
    VersionNotFound,
)

logger = logging.getLogger(__name__)

CHUNK = 1 << 20
DEFAULT_MAX_BYTES = 256 * 1024 * 1024


VERSION_STEM = re.compile(r"v[0-9]{6,9}", re.ASCII)
MAX_STRAYS_REMEMBERED = 10_000


def version_file(version: int) -> str:
    """`v000003`: the stem of version 3's data (`.safetensors`) and record (`.json`)."""
    return f"v{version:06d}"


def version_of(stem: str) -> int | None:
    """The version a file stem names, if it is exactly `version_file(N)` for some N >= 1 (else None: not ours)."""
    if not VERSION_STEM.fullmatch(stem) or version_file(int(stem[1:])) != stem or int(stem[1:]) == 0:
        return None
    return int(stem[1:])


class Strays:
    """Entries in the store that no store wrote: NFS `.snapshot` folders, editor backups, a misplaced file. They
    are skipped wherever the store walks, and each is logged once (not on every listing), so one stray folder
    never turns a listing into an error for every tenant."""

    def __init__(self) -> None:
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def skip(self, where: str) -> None:
        with self._lock:
            if where in self._seen or len(self._seen) >= MAX_STRAYS_REMEMBERED:
                return
            self._seen.add(where)
        logger.warning("the adapter store skips %r: not an owner, adapter or version it wrote", where)


def not_found(adapter_id: str) -> AdapterNotFound:
    return AdapterNotFound(f"adapter {adapter_id!r} not found; list adapters with GET /v1/adapters")


def damaged(adapter_id: str, file: str, exc: Exception) -> AdapterCorrupt:
    """The error for a damaged record or pointer; the log has the cause, the message never echoes content."""
    logger.error("adapter %s is damaged: %s: %s", adapter_id, file, exc)
    return AdapterCorrupt(f"adapter {adapter_id!r} is damaged in the store; its owner can delete it")


class Digest(NamedTuple):
    """A version's checksums, taken once while its upload is received: sha256 (its identity, shown to users) and
    xxh3-128, the fast check the cache loader repeats on every cold load (~20x faster than sha256)."""

    sha256: str
    xxh3: str
    size: int


def fast_checksum(data: bytes | bytearray) -> str:
    return xxhash.xxh3_128_hexdigest(data)


def copy_upload(source: BinaryIO | Path, out: BinaryIO, max_bytes: int) -> Digest:
    """Copy an upload to `out`, enforcing `max_bytes` while reading; returns its checksums and size."""
    digest, fast = hashlib.sha256(), xxhash.xxh3_128()
    size = 0
    with contextlib.ExitStack() as stack:
        reader = stack.enter_context(source.open("rb")) if isinstance(source, Path) else source
        while chunk := reader.read(CHUNK):
            size += len(chunk)
            if size > max_bytes:
                raise AdapterRejected(f"adapter file exceeds the {max_bytes}-byte limit")
            digest.update(chunk)
            fast.update(chunk)
            out.write(chunk)
        out.flush()
    if size == 0:
        raise AdapterRejected("adapter file is empty")
    return Digest(digest.hexdigest(), fast.hexdigest(), size)


def new_record(
    adapter_id: str,
    version: int,
    digest: Digest,
    summary: AdapterSummary,
    serving_fingerprint: str,
    decoding: Decoding | None = None,
) -> dict[str, Any]:
    """The record written beside a version's data."""
    described = asdict(summary)
    described.pop("symbols")  # what the vocabulary spells: needed to check a lexicon, not kept
    record = {
        "id": adapter_id,
        "version": version,
        "sha256": digest.sha256,
        "xxh3": digest.xxh3,
        "size": digest.size,
        "created_at": time.time(),
        "fingerprint_override": summary.backbone_fingerprint != serving_fingerprint,
        **described,
    }
    if decoding is not None:  # versions without decoding files keep the record they always had
        record.update({kind: staged[1].to_record() for kind, staged in decoding.files.items()})
        if decoding.beam:
            record["beam"] = decoding.beam
    return record


@dataclass
class Decoding:
    """A publish's decoding files, checked and staged (kind -> (staged path, what the record keeps)), and its beam
    overrides."""

    files: dict[DecodingKind, tuple[Path, DecodingFileInfo]]
    beam: dict[str, float]


def receive_decoding(
    upload: DecodingUpload | None,
    summary: AdapterSummary,
    limits: DecodingLimits,
    stage: Callable[[DecodingKind], contextlib.AbstractContextManager[tuple[Path, BinaryIO]]],
    stack: contextlib.ExitStack,
) -> Decoding | None:
    """Check and stage a publish's decoding files (each into `stage(kind)`, entered on `stack`, so the staged
    files live until the publish ends); `AdapterRejected` names the first problem, and nothing is stored."""
    if upload is None or upload.empty:
        return None
    if summary.kind == "classifier":
        raise AdapterRejected(
            "a classifier adapter decodes no text: upload it without a language model, lexicon or beam settings"
        )
    files: dict[DecodingKind, tuple[Path, DecodingFileInfo]] = {}
    for kind in KINDS:
        source = upload.source(kind)
        if source is not None:
            path, out = stack.enter_context(stage(kind))
            files[kind] = (path, receive(kind, source, out, limits, summary.symbols))
            if files[kind][1].detail.get("format") == "kenlm" and limits.check_binary is not None:
                limits.check_binary(path)
    return Decoding(files, check_beam(upload.beam))


def public_versions(meta: dict[str, Any], current: int | None) -> list[int]:
    """The adapter's public versions, from its meta (`adapter.json` locally, `meta.json` on S3).

    Visibility belongs to each version: `public_versions` lists the public ones. Metas written before it existed
    have only the adapter-wide `visibility`; they read fail-closed: the current version has that visibility and
    every older version is private (the store cannot tell which older versions were uploaded while private), so
    an upgrade never exposes more than the newest version. An owner publishes an older version again with
    `set_visibility`; the next write stores the list."""
    listed = meta.get("public_versions")
    if listed is None:
        return [current] if current is not None and meta.get("visibility") == "public" else []
    if not isinstance(listed, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in listed):
        raise ValueError("bad public_versions")
    return sorted(set(listed))


def parse_record(
    raw: bytes | str, adapter_id: str, version: int, public: list[int], current: int | None, versions: list[int]
) -> AdapterRecord:
    """A stored record back as an `AdapterRecord`; `AdapterCorrupt` if it is damaged. `public`: the adapter's
    public versions (`public_versions`)."""
    file = f"{version_file(version)}.json"
    try:
        body = json.loads(raw)
        return AdapterRecord(
            **{**body, "id": adapter_id, "version": version},
            owner=adapter_id.partition("/")[0],
            visibility="public" if version in public else "private",
            is_current=version == current,
            versions=list(versions),
            public_versions=[v for v in public if v in versions],
        )
    except (ValueError, TypeError, UnicodeDecodeError) as exc:  # bad JSON, missing or unknown fields
        raise damaged(adapter_id, file, exc) from exc


def listing_page(
    ids: Iterable[str],
    after: str | None,
    limit: int,
    load: Callable[[str], AdapterRecord | None],
    where: Callable[[AdapterRecord], bool] | None,
) -> Page:
    """`list_adapters` over candidate IDs: full-ID order after `after`, `load` (None: nothing to show) and
    `where` applied, `limit` per page. Tombstones and adapters deleted meanwhile are skipped; damaged or unreadable
    ones are skipped and logged."""
    if not 1 <= limit <= 1000:
        raise AdapterRejected(f"limit must be between 1 and 1000, got {limit}")
    items: list[AdapterRecord] = []
    for adapter_id in sorted(set(ids)):
        if after is not None and adapter_id <= after:
            continue
        try:
            record = load(adapter_id)
        except (AdapterNotFound, VersionNotFound):
            continue  # a tombstone, or deleted meanwhile
        except (AdapterCorrupt, StoreUnavailable) as exc:
            logger.warning("listing skips adapter %s: %s", adapter_id, exc)
            continue
        if record is None or (where is not None and not where(record)):
            continue
        if len(items) == limit:
            return Page(items, items[-1].id)  # the cursor is always an item of this page
        items.append(record)
    return Page(items, None)


def newest_public(store: AdapterStore, adapter_id: str) -> AdapterRecord | None:
    """The newest public version of `adapter_id` (what another tenant's `owner/name` means), or None if it has
    none. `AdapterNotFound` / `AdapterCorrupt` pass through."""
    current = store.get(adapter_id)
    if current.visibility == "public":
        return current
    for version in reversed(current.public_versions):
        with contextlib.suppress(VersionNotFound):  # deleted meanwhile
            return store.get(f"{adapter_id}@{version}")
    return None


def verify_checksum(record: AdapterRecord, data: bytes | bytearray) -> None:
    """`AdapterStore.verify`: size, then xxh3-128 where the record has it (sha256 for older versions)."""
    if len(data) != record.size:
        ok = False
    elif record.xxh3:
        ok = fast_checksum(data) == record.xxh3
    else:
        ok = hashlib.sha256(data).hexdigest() == record.sha256
    if not ok:
        raise AdapterCorrupt(f"adapter {record.ref} is corrupt in the store (checksum mismatch); publish it again")
