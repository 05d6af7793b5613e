"""`LocalStore`: adapters in a local directory — the embedded default.

    root/adapters/<id>/adapter.json        owner, visibility
    root/adapters/<id>/CURRENT             current version number
    root/adapters/<id>/LAST                highest version number ever issued (never reused)
    root/adapters/<id>/v000003.safetensors tensor bytes (immutable)
    root/adapters/<id>/v000003.json        record (sha256, size, summary); a version exists iff this exists
    root/tmp/                              uploads in progress; cleared on open

Publish: stream to `tmp/` (size cap, sha256 on the fly) → fsync → validate → lock the adapter → place data →
write the record (temp + fsync + rename) → flip CURRENT (same) → fsync the directory. A process killed at any
point leaves either no new version or a complete one. An `fcntl` lock per adapter serialises publishers and
deleters, across threads and processes.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import BinaryIO

from chorus_store.base import (
    VISIBILITIES,
    AdapterRecord,
    AdapterSummary,
    AdapterValidator,
    Page,
    check_id,
    parse_ref,
    verify_sha256,
)
from chorus_store.errors import (
    AdapterNotFound,
    AdapterRejected,
    PublishConflict,
    StoreUnavailable,
    VersionNotFound,
)

logger = logging.getLogger(__name__)

CHUNK = 1 << 20
DEFAULT_MAX_BYTES = 256 * 1024 * 1024


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_text_atomic(path: Path, text: str) -> None:
    """Temp file beside `path` -> fsync -> rename: readers see the old content or the new, never a mix."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_json_atomic(path: Path, body: dict) -> None:
    _write_text_atomic(path, json.dumps(body))


def _not_found(adapter_id: str) -> AdapterNotFound:
    return AdapterNotFound(f"adapter {adapter_id!r} not found; list adapters with GET /v1/adapters")


def _read_all(path: Path) -> bytearray:
    """A file's bytes straight into a writable buffer (tensors built from it view it without a copy)."""
    with path.open("rb") as f:
        data = bytearray(os.fstat(f.fileno()).st_size)
        f.readinto(data)
    return data


def _version_file(version: int) -> str:
    return f"v{version:06d}"


class LocalStore:
    def __init__(self, root: str | Path, validator: AdapterValidator, max_bytes: int = DEFAULT_MAX_BYTES):
        self.root = Path(root)
        self.validator = validator
        self.max_bytes = max_bytes
        self.adapters_dir = self.root / "adapters"
        self.tmp_dir = self.root / "tmp"
        try:
            self.adapters_dir.mkdir(parents=True, exist_ok=True)
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailable(f"cannot create store at {self.root}: {exc}") from exc
        self._recover()

    # ---- publish -------------------------------------------------------------------------------------------

    def publish(
        self,
        adapter_id: str,
        source: BinaryIO | Path,
        owner: str,
        visibility: str = "private",
        expected_version: int | None = None,
        allow_fingerprint_mismatch: bool = False,
    ) -> AdapterRecord:
        """Validate and store a new version; it becomes current. Nothing is visible unless all of it is."""
        check_id(adapter_id)
        if visibility not in VISIBILITIES:
            raise AdapterRejected(f"visibility must be one of {VISIBILITIES}, got {visibility!r}")
        tmp = self.tmp_dir / f"{uuid.uuid4().hex}.part"
        try:
            with tmp.open("wb") as out:
                fcntl.flock(out, fcntl.LOCK_EX)  # tells _recover in another process this upload is alive
                sha256, size = self._receive(source, out)
                summary = self.validator.validate(_read_all(tmp), allow_fingerprint_mismatch)
                version = self._place(adapter_id, tmp, owner, visibility, expected_version, sha256, size, summary)
            logger.info("published adapter %s@%d (%d bytes, sha256 %s)", adapter_id, version, size, sha256[:12])
            return self.get(f"{adapter_id}@{version}")
        finally:
            tmp.unlink(missing_ok=True)

    def _place(
        self,
        adapter_id: str,
        tmp: Path,
        owner: str,
        visibility: str,
        expected_version: int | None,
        sha256: str,
        size: int,
        summary: AdapterSummary,
    ) -> int:
        """Under the adapter's lock: number the version, move the data in, write its record, flip CURRENT."""
        with self._locked(adapter_id, create=True) as folder:
            meta = self._adapter_meta(folder)
            if meta is not None and meta["owner"] != owner:
                raise PublishConflict(f"adapter {adapter_id!r} belongs to another tenant; choose another id")
            current = self._current(folder)
            if expected_version is not None and expected_version != (current or 0):
                raise PublishConflict(
                    f"adapter {adapter_id!r} is at version {current or 0}, not {expected_version}; re-read it and retry"
                )
            # Numbers are never reused, even after deletes: `ID@N` always means the same bytes.
            version = max([self._read_int(folder, "LAST") or 0, *self._version_numbers(folder, True)]) + 1
            self._write_int(folder, "LAST", version)
            if meta is None:
                meta = {"id": adapter_id, "owner": owner, "visibility": visibility, "created_at": time.time()}
                _write_json_atomic(folder / "adapter.json", meta)
            os.replace(tmp, folder / f"{_version_file(version)}.safetensors")
            record = {
                "id": adapter_id,
                "version": version,
                "sha256": sha256,
                "size": size,
                "created_at": time.time(),
                "fingerprint_override": summary.backbone_fingerprint != self.validator.fingerprint,
                **asdict(summary),
            }
            _write_json_atomic(folder / f"{_version_file(version)}.json", record)
            self._set_current(folder, version)
            _fsync_dir(folder)
        return version

    def _receive(self, source: BinaryIO | Path, out: BinaryIO) -> tuple[str, int]:
        """Copy the upload to `out`, enforcing the size limit while reading; returns (sha256, size)."""
        digest = hashlib.sha256()
        size = 0
        with contextlib.ExitStack() as stack:
            reader = stack.enter_context(source.open("rb")) if isinstance(source, Path) else source
            while chunk := reader.read(CHUNK):
                size += len(chunk)
                if size > self.max_bytes:
                    raise AdapterRejected(f"adapter file exceeds the {self.max_bytes}-byte limit")
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if size == 0:
            raise AdapterRejected("adapter file is empty")
        return digest.hexdigest(), size

    # ---- read ----------------------------------------------------------------------------------------------

    def get(self, ref: str) -> AdapterRecord:
        adapter_id, version = parse_ref(ref)
        folder = self.adapters_dir / adapter_id
        meta = self._adapter_meta(folder)
        current = self._current(folder)
        if meta is None or current is None:
            raise _not_found(adapter_id)
        wanted = current if version is None else version
        return self._record(folder, meta, wanted, current)

    def versions(self, adapter_id: str) -> list[AdapterRecord]:
        folder = self.adapters_dir / check_id(adapter_id)
        meta, current = self._adapter_meta(folder), self._current(folder)
        if meta is None or current is None:
            raise _not_found(adapter_id)
        records = []
        for v in self._version_numbers(folder):
            with contextlib.suppress(VersionNotFound):  # deleted meanwhile
                records.append(self._record(folder, meta, v, current))
        return records

    def list_adapters(self, after: str | None = None, limit: int = 100) -> Page:
        """Adapters in ID order (their current version), `limit` per page; pass `next_cursor` as `after`."""
        if not 1 <= limit <= 1000:
            raise AdapterRejected(f"limit must be between 1 and 1000, got {limit}")
        names = sorted(p.name for p in self.adapters_dir.iterdir() if p.is_dir() and (after is None or p.name > after))
        items: list[AdapterRecord] = []
        for name in names:
            with contextlib.suppress(AdapterNotFound, VersionNotFound):
                items.append(self.get(name))
            if len(items) == limit:
                break
        more = bool(items) and names[-1] > items[-1].id and len(items) == limit
        return Page(items, items[-1].id if more else None)

    def read(self, record: AdapterRecord) -> bytes:
        """The version's bytes, checked against its sha256."""
        data = self.read_unverified(record)
        self.verify(record, data)
        return bytes(data)

    def read_unverified(self, record: AdapterRecord) -> bytearray:
        """The version's bytes in a writable buffer, *not yet checked*: pair with `verify`."""
        path = self.adapters_dir / record.id / f"{_version_file(record.version)}.safetensors"
        try:
            data = _read_all(path)
        except FileNotFoundError as exc:
            raise VersionNotFound(f"adapter {record.ref} was deleted") from exc
        except OSError as exc:
            raise StoreUnavailable(f"cannot read adapter {record.ref}: {exc}") from exc
        return data

    def verify(self, record: AdapterRecord, data: bytes | bytearray) -> None:
        """Raise `AdapterCorrupt` unless `data` matches the version's recorded sha256."""
        verify_sha256(record, data)

    # ---- delete --------------------------------------------------------------------------------------------

    def delete(self, adapter_id: str, version: int | None = None) -> None:
        """Delete one version (the current pointer falls back to the newest left) or the whole adapter.

        Requests already running keep their loaded copy; only new lookups see the change.
        """
        with self._locked(adapter_id, create=False) as folder:
            current = self._current(folder)
            if current is None:
                raise _not_found(adapter_id)
            remaining = self._version_numbers(folder)
            if version is not None:
                if version not in remaining:
                    raise VersionNotFound(f"adapter {adapter_id!r} has no version {version}; versions: {remaining}")
                (folder / f"{_version_file(version)}.json").unlink()
                (folder / f"{_version_file(version)}.safetensors").unlink(missing_ok=True)
                remaining.remove(version)
                if remaining and current == version:
                    self._set_current(folder, max(remaining))
            if version is None or not remaining:
                (folder / "CURRENT").unlink(missing_ok=True)
                graveyard = self.tmp_dir / f"deleted-{adapter_id}-{uuid.uuid4().hex}"
                os.replace(folder, graveyard)
                shutil.rmtree(graveyard, ignore_errors=True)
            else:
                _fsync_dir(folder)
        logger.info("deleted adapter %s%s", adapter_id, "" if version is None else f"@{version}")

    # ---- internals -----------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, adapter_id: str, create: bool) -> Iterator[Path]:
        folder = self.adapters_dir / check_id(adapter_id)
        if create:
            folder.mkdir(exist_ok=True)
        elif not folder.is_dir():
            raise _not_found(adapter_id)
        lock_path = self.tmp_dir / f"{adapter_id}.lock"  # outside the folder, so deletes can move it
        with lock_path.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if create:
                    folder.mkdir(exist_ok=True)  # a deleter may have moved it while we waited
                yield folder
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _adapter_meta(self, folder: Path) -> dict | None:
        try:
            return json.loads((folder / "adapter.json").read_text())
        except FileNotFoundError:
            return None
        except (OSError, json.JSONDecodeError) as exc:
            raise StoreUnavailable(f"cannot read {folder.name}/adapter.json: {exc}") from exc

    def _current(self, folder: Path) -> int | None:
        return self._read_int(folder, "CURRENT")

    def _set_current(self, folder: Path, version: int) -> None:
        self._write_int(folder, "CURRENT", version)

    def _read_int(self, folder: Path, name: str) -> int | None:
        try:
            return int((folder / name).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise StoreUnavailable(f"cannot read {folder.name}/{name}: {exc}") from exc

    def _write_int(self, folder: Path, name: str, value: int) -> None:
        _write_text_atomic(folder / name, str(value))

    def _version_numbers(self, folder: Path, include_orphans: bool = False) -> list[int]:
        suffixes = (".json", ".safetensors") if include_orphans else (".json",)
        found = {
            int(p.stem[1:])
            for p in folder.glob("v*")
            if p.suffix in suffixes and p.stem[1:].isdigit() and not p.name.startswith(".")
        }
        return sorted(found)

    def _record(self, folder: Path, meta: dict, version: int, current: int) -> AdapterRecord:
        try:
            body = json.loads((folder / f"{_version_file(version)}.json").read_text())
        except FileNotFoundError as exc:
            raise VersionNotFound(
                f"adapter {folder.name!r} has no version {version}; versions: {self._version_numbers(folder)}"
            ) from exc
        return AdapterRecord(
            owner=meta["owner"],
            visibility=meta["visibility"],
            is_current=version == current,
            versions=self._version_numbers(folder),
            **body,
        )

    def _recover(self) -> None:
        """Clear leftovers of processes killed mid-publish: partial uploads and data without a record.

        Live publishers hold locks (on their upload, and on the adapter), so only dead processes' files go.
        """
        for leftover in self.tmp_dir.iterdir():
            if leftover.suffix == ".lock":
                continue
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
                continue
            with leftover.open("rb") as f:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # an upload in progress in a live process
                leftover.unlink(missing_ok=True)
        for folder in self.adapters_dir.iterdir():
            lock_path = self.tmp_dir / f"{folder.name}.lock"
            with lock_path.open("a") as lock:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a publish or delete is running on this adapter
                for data in folder.glob("v*.safetensors"):
                    if not data.with_suffix(".json").exists():
                        logger.warning("removing %s: data without a record (publish was interrupted)", data)
                        data.unlink(missing_ok=True)
                for tmp in folder.glob(".*.tmp"):
                    tmp.unlink(missing_ok=True)
                if not (folder / "CURRENT").exists() and not any(folder.glob("v*.json")):
                    shutil.rmtree(folder, ignore_errors=True)  # first publish never completed
