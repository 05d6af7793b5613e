"""`LocalStore`: adapters in a local directory — the embedded default.

    root/adapters/<owner>/<name>/adapter.json         visibility (new versions'), public_versions, created_at
    root/adapters/<owner>/<name>/CURRENT              current version number (absent: deleted, a tombstone)
    root/adapters/<owner>/<name>/LAST                 highest version number ever issued (never reused)
    root/adapters/<owner>/<name>/v000003.safetensors  tensor bytes (immutable)
    root/adapters/<owner>/<name>/v000003.json         record (sha256, size, summary); the version exists iff this does
    root/adapters/<owner>/<name>/v000003.lm           its language model, if it has one (immutable; likewise:)
    root/adapters/<owner>/<name>/v000003.lexicon      its lexicon, if it has one
    root/public/<name>                                claim of a public name: the owner's tenant name
    root/tmp/                                         uploads in progress (locked); dead processes' cleared on open

Publish: stream to `tmp/` (size cap, sha256 on the fly) → fsync → validate (decoding files: checked while they
are streamed to `tmp/` too) → lock the adapter → place data and decoding files →
write the record (temp + fsync + rename) → flip CURRENT (same) → fsync the directory. A process killed at any
point leaves either no new version or a complete one. An `fcntl` lock per adapter serialises publishers and
deleters, across threads and processes. Public names are claimed with an exclusive create, so exactly one owner
wins a race; the adapter's own `adapter.json` stays the truth (a claim whose adapter is no longer public is stale
and may be taken over).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from chorus_store.base import (
    ADAPTER_ID,
    TENANT,
    VISIBILITIES,
    AdapterRecord,
    AdapterSummary,
    AdapterValidator,
    Page,
    check_id,
    parse_ref,
)
from chorus_store.common import (
    DEFAULT_MAX_BYTES,
    Decoding,
    Digest,
    Strays,
    copy_upload,
    damaged,
    listing_page,
    new_record,
    newest_public,
    not_found,
    parse_record,
    public_versions,
    receive_decoding,
    verify_checksum,
    version_file,
    version_of,
)
from chorus_store.decoding_files import KINDS, SUFFIX, DecodingKind, DecodingLimits, DecodingUpload, verify_file
from chorus_store.errors import (
    AdapterCorrupt,
    AdapterNotFound,
    AdapterRejected,
    NameTaken,
    PublishConflict,
    StoreError,
    StoreUnavailable,
    VersionNotFound,
)
from chorus_store.pins import LocalPins
from chorus_store.spool import remove_abandoned

logger = logging.getLogger(__name__)

STALE_SECONDS = 3600.0  # `.part` staging files older than this belong to dead processes


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


def _fsync_file(path: Path) -> None:
    with path.open("rb") as f:
        os.fsync(f.fileno())


def _read_all(path: Path) -> bytearray:
    """A file's bytes straight into a writable buffer (tensors built from it view it without a copy)."""
    with path.open("rb") as f:
        data = bytearray(os.fstat(f.fileno()).st_size)
        f.readinto(data)
    return data


@contextlib.contextmanager
def _io(what: str) -> Iterator[None]:
    """Filesystem faults (read-only, full, I/O errors) become `StoreUnavailable`, naming what failed."""
    try:
        yield
    except StoreError:
        raise
    except OSError as exc:
        raise StoreUnavailable(f"the adapter store cannot {what} right now ({exc.strerror or exc})") from exc


class LocalStore:
    def __init__(
        self,
        root: str | Path,
        validator: AdapterValidator,
        max_bytes: int = DEFAULT_MAX_BYTES,
        decoding_limits: DecodingLimits | None = None,
    ):
        self.root = Path(root)
        self.validator = validator
        self.max_bytes = max_bytes
        self.decoding_limits = decoding_limits or DecodingLimits()
        self.adapters_dir = self.root / "adapters"
        self.public_dir = self.root / "public"
        self.tmp_dir = self.root / "tmp"
        self.strays = Strays()
        try:
            for folder in (self.adapters_dir, self.public_dir, self.tmp_dir):
                folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailable(f"cannot create store at {self.root}: {exc}") from exc
        self._recover()
        self._pins = LocalPins(self.root, _write_text_atomic)

    def pins(self) -> dict[str, str]:
        return self._pins.read()

    def set_pin(self, adapter_id: str, ref: str | None) -> None:
        self._pins.set(adapter_id, ref)

    # ---- publish -------------------------------------------------------------------------------------------

    def publish(
        self,
        adapter_id: str,
        source: BinaryIO | Path,
        visibility: str | None = None,
        expected_version: int | None = None,
        allow_fingerprint_mismatch: bool = False,
        decoding: DecodingUpload | None = None,
    ) -> AdapterRecord:
        """Validate and store a new version; it becomes current. Nothing is visible unless all of it is."""
        check_id(adapter_id)
        if visibility is not None and visibility not in VISIBILITIES:
            raise AdapterRejected(f"visibility must be one of {VISIBILITIES}, got {visibility!r}")
        tmp = self.tmp_dir / f"{uuid.uuid4().hex}.part"
        try:
            with _io("store the upload"), contextlib.ExitStack() as stack:
                out = stack.enter_context(self._locked_part(tmp))
                digest = self._receive(source, out)
                summary = self.validator.validate(_read_all(tmp), allow_fingerprint_mismatch)
                staged = receive_decoding(decoding, summary, self.decoding_limits, self._stage, stack)
                for path, _ in staged.files.values() if staged else ():
                    _fsync_file(path)  # durable before the record names it
                version = self._place(adapter_id, tmp, visibility, expected_version, digest, summary, staged)
            logger.info(
                "published adapter %s@%d (%d bytes, sha256 %s)", adapter_id, version, digest.size, digest.sha256[:12]
            )
            return self.get(f"{adapter_id}@{version}")
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)

    def _place(
        self,
        adapter_id: str,
        tmp: Path,
        visibility: str | None,
        expected_version: int | None,
        digest: Digest,
        summary: AdapterSummary,
        staged: Decoding | None = None,
    ) -> int:
        """Under the adapter's lock: number the version, move the data in, write its record, flip CURRENT."""
        with self._locked(adapter_id, create=True) as folder:
            meta = self._meta_or_default(folder)
            current = self._current(folder)
            if expected_version is not None and expected_version != (current or 0):
                raise PublishConflict(
                    f"adapter {adapter_id!r} is at version {current or 0}, not {expected_version}; re-read it and retry"
                )
            wanted = visibility or (meta["visibility"] if current is not None else "private")
            # "private" withdraws the whole adapter (as before versions had their own visibility); otherwise older
            # versions keep theirs.
            public = [] if visibility == "private" else self._public(folder, meta, current)
            if wanted == "public":
                self._claim_public(adapter_id)
            # Numbers are never reused, even after deletes: `ID@N` always means the same bytes.
            version = max([self._last(folder), *self._version_numbers(folder, True)]) + 1
            if wanted == "public":
                public.append(version)
            self._write_int(folder, "LAST", version)
            os.replace(tmp, folder / f"{version_file(version)}.safetensors")
            for kind, (path, _) in staged.files.items() if staged else ():  # before the record: then it is complete
                os.replace(path, folder / f"{version_file(version)}{SUFFIX[kind]}")
            record = new_record(adapter_id, version, digest, summary, self.validator.fingerprint, staged)
            _write_json_atomic(folder / f"{version_file(version)}.json", record)
            # After the record, so a listed public version always exists; before CURRENT, so a meta of the older
            # format (no list) never lends its visibility to the new version.
            _write_json_atomic(folder / "adapter.json", {**meta, "visibility": wanted, "public_versions": public})
            self._set_current(folder, version)
            _fsync_dir(folder)
            if not public:
                self._release_public(adapter_id)
        return version

    def _claim_public(self, adapter_id: str) -> None:
        """Take the public name of `owner/name` (exclusive create: one winner among racing owners)."""
        owner, _, name = adapter_id.partition("/")
        claim = self.public_dir / name
        holder = self._claim_holder(name)
        if holder == owner:
            return
        if holder is not None:
            if self._is_public(f"{holder}/{name}"):
                raise NameTaken(f"the public name {name!r} is taken by adapter '{holder}/{name}'; choose another name")
            claim.unlink(missing_ok=True)  # stale: that adapter was made private or deleted mid-way
        try:
            fd = os.open(claim, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            raise NameTaken(f"the public name {name!r} was just taken by another tenant; choose another name") from None
        with os.fdopen(fd, "w") as f:
            f.write(owner)
            f.flush()
            os.fsync(f.fileno())

    def _release_public(self, adapter_id: str) -> None:
        owner, _, name = adapter_id.partition("/")
        if self._claim_holder(name) == owner:
            (self.public_dir / name).unlink(missing_ok=True)

    def _claim_holder(self, name: str) -> str | None:
        try:
            return (self.public_dir / name).read_text().strip() or None
        except FileNotFoundError:
            return None

    def _is_public(self, adapter_id: str) -> bool:
        """Whether any version of the adapter is public (then its claim of the name is live)."""
        try:
            return bool(self.get(adapter_id).public_versions)
        except (AdapterNotFound, VersionNotFound, AdapterCorrupt):
            return False

    def set_visibility(self, ref: str, visibility: str) -> AdapterRecord:
        """Make one version public or private (`owner/name`: the current one)."""
        adapter_id, version = parse_ref(ref)
        if visibility not in VISIBILITIES:
            raise AdapterRejected(f"visibility must be one of {VISIBILITIES}, got {visibility!r}")
        with _io(f"change adapter {adapter_id!r}"), self._locked(adapter_id, create=False) as folder:
            meta, current = self._adapter_meta(folder), self._current(folder)
            if meta is None or current is None:
                raise not_found(adapter_id)
            version = current if version is None else version
            self._record(folder, meta, version, current)  # VersionNotFound unless it exists
            public = [v for v in self._public(folder, meta, current) if v != version]
            if visibility == "public":
                self._claim_public(adapter_id)
                public.append(version)
            changed = {**meta, "public_versions": sorted(public)}
            if version == current:  # the current version's visibility is what the next upload inherits
                changed["visibility"] = visibility
            _write_json_atomic(folder / "adapter.json", changed)
            if not public:
                self._release_public(adapter_id)
        logger.info("adapter %s@%d is now %s", adapter_id, version, visibility)
        return self.get(f"{adapter_id}@{version}")

    @contextlib.contextmanager
    def _locked_part(self, path: Path) -> Iterator[BinaryIO]:
        """`path` opened for writing, locked *before* it appears under its name: a store opening in another
        process recovers unlocked `.part` files as leftovers of dead publishers, and must never see a live one
        between its creation and its lock."""
        staging = path.with_name(f".{path.name}.creating")
        with staging.open("wb") as out:
            fcntl.flock(out, fcntl.LOCK_EX)  # held until closed: tells _recover this upload is alive
            os.rename(staging, path)
            yield out

    @contextlib.contextmanager
    def _stage(self, kind: DecodingKind) -> Iterator[tuple[Path, BinaryIO]]:
        """A locked staging file in `tmp/` for one decoding file (recovered like the adapter's own upload)."""
        path = self.tmp_dir / f"{uuid.uuid4().hex}.{kind}.part"
        try:
            with self._locked_part(path) as out:
                yield path, out
        finally:
            path.unlink(missing_ok=True)  # placed in the store by then, or abandoned

    def _receive(self, source: BinaryIO | Path, out: BinaryIO) -> Digest:
        """Copy the upload to `out` (size cap, checksums on the fly) and make it durable."""
        digest = copy_upload(source, out, self.max_bytes)
        os.fsync(out.fileno())
        return digest

    # ---- read ----------------------------------------------------------------------------------------------

    def get(self, ref: str) -> AdapterRecord:
        adapter_id, version = parse_ref(ref)
        folder = self._folder(adapter_id)
        with _io(f"read adapter {adapter_id!r}"):
            meta = self._adapter_meta(folder)
            current = self._current(folder)
            if meta is None or current is None:
                raise not_found(adapter_id)
            wanted = current if version is None else version
            return self._record(folder, meta, wanted, current)

    def versions(self, adapter_id: str) -> list[AdapterRecord]:
        folder = self._folder(check_id(adapter_id))
        with _io(f"read adapter {adapter_id!r}"):
            meta, current = self._adapter_meta(folder), self._current(folder)
            if meta is None or current is None:
                raise not_found(adapter_id)
            records = []
            for v in self._version_numbers(folder):
                with contextlib.suppress(VersionNotFound):  # deleted meanwhile
                    records.append(self._record(folder, meta, v, current))
            return records

    def list_adapters(
        self,
        after: str | None = None,
        limit: int = 100,
        where: Callable[[AdapterRecord], bool] | None = None,
        viewer: str | None = None,
    ) -> Page:
        """See `AdapterStore.list_adapters`: a viewer's listing walks only its own folder and the public index."""
        with _io("list adapters"):
            if viewer is None:
                return listing_page(list(self._adapter_ids()), after, limit, self.get, where)
            own = list(self._adapter_ids(self.adapters_dir / viewer)) if TENANT.fullmatch(viewer) else []
            others = [f"{holder}/{name}" for name, holder in self._claims() if holder != viewer]

        def load(adapter_id: str) -> AdapterRecord | None:
            return self.get(adapter_id) if adapter_id.partition("/")[0] == viewer else newest_public(self, adapter_id)

        return listing_page(own + others, after, limit, load, where)

    def _claims(self) -> Iterator[tuple[str, str]]:
        """(name, holder) of every public-name claim; strays skipped and logged once."""
        for entry in self.public_dir.iterdir():
            if not TENANT.fullmatch(entry.name) or not entry.is_file():
                self.strays.skip(str(entry.relative_to(self.root)))
                continue
            try:
                holder = self._claim_holder(entry.name)
            except (UnicodeDecodeError, IsADirectoryError):
                holder = ""
            if holder is not None and TENANT.fullmatch(holder):  # None: released meanwhile
                yield entry.name, holder
            elif holder is not None:
                self.strays.skip(str(entry.relative_to(self.root)))

    def public_owner(self, name: str) -> str | None:
        with _io("resolve adapter names"):
            return self._claim_holder(name)

    def owner_bytes(self, owner: str) -> int:
        folder = self.adapters_dir / owner
        if not TENANT.fullmatch(owner) or not folder.is_dir():
            return 0
        total = 0
        with _io("measure storage"):
            for adapter_id in self._adapter_ids(folder):
                for version in self._version_numbers(self._folder(adapter_id), include_orphans=True):
                    for suffix in (".safetensors", *SUFFIX.values()):
                        with contextlib.suppress(FileNotFoundError):  # deleted meanwhile, or no such file
                            total += (self._folder(adapter_id) / f"{version_file(version)}{suffix}").stat().st_size
        return total

    def read(self, record: AdapterRecord) -> bytes:
        """The version's bytes, checked against its sha256."""
        data = self.read_unverified(record)
        self.verify(record, data)
        return bytes(data)

    def read_unverified(self, record: AdapterRecord) -> bytearray:
        """The version's bytes in a writable buffer, *not yet checked*: pair with `verify`."""
        path = self._folder(record.id) / f"{version_file(record.version)}.safetensors"
        try:
            data = _read_all(path)
        except FileNotFoundError as exc:
            raise VersionNotFound(f"adapter {record.ref} was deleted") from exc
        except OSError as exc:
            raise StoreUnavailable(f"cannot read adapter {record.ref}: {exc}") from exc
        return data

    def verify(self, record: AdapterRecord, data: bytes | bytearray) -> None:
        """Raise `AdapterCorrupt` unless `data` matches the version's recorded sha256."""
        verify_checksum(record, data)

    def decoding_file(self, record: AdapterRecord, kind: DecodingKind) -> Path:
        """The file in place (versions are immutable), checked against its record on every call."""
        info = getattr(record, kind) if kind in KINDS else None
        if info is None:
            raise VersionNotFound(f"adapter {record.ref} has no {kind} file")
        path = self._folder(record.id) / f"{version_file(record.version)}{SUFFIX[kind]}"
        try:
            verify_file(path, info, f"the {kind} file of adapter {record.ref}")
        except FileNotFoundError as exc:
            raise VersionNotFound(f"adapter {record.ref} was deleted") from exc
        except OSError as exc:
            raise StoreUnavailable(f"cannot read the {kind} file of adapter {record.ref}: {exc}") from exc
        return path

    # ---- delete --------------------------------------------------------------------------------------------

    def delete(self, adapter_id: str, version: int | None = None, purge: bool = False) -> None:
        """Delete one version (the current pointer falls back to the newest left) or the whole adapter, which
        leaves a tombstone (LAST) unless `purge`. Damaged records do not stop a delete.

        Requests already running keep their loaded copy; only new lookups see the change.
        """
        with _io(f"delete adapter {adapter_id!r}"), self._locked(adapter_id, create=False) as folder:
            current = self._current(folder, strict=False)  # a damaged pointer must not block the delete
            remaining = self._version_numbers(folder)
            if not (folder / "CURRENT").exists() and not remaining and not purge:
                raise not_found(adapter_id)  # a tombstone: already deleted
            if version is not None:
                if version not in remaining:
                    raise VersionNotFound(f"adapter {adapter_id!r} has no version {version}; versions: {remaining}")
                meta = self._meta_or_default(folder)
                public = [v for v in self._public(folder, meta, current, strict=False) if v != version]
                if remaining != [version]:  # the last version: the full delete below rewrites the meta
                    _write_json_atomic(folder / "adapter.json", {**meta, "public_versions": public})
                self._remove_version(folder, version)
                remaining.remove(version)
                if remaining and current != max(remaining):
                    self._set_current(folder, max(remaining))
                if not public:
                    self._release_public(adapter_id)
            if purge:
                self._release_public(adapter_id)
                graveyard = self.tmp_dir / f"deleted-{uuid.uuid4().hex}"
                os.replace(folder, graveyard)
                shutil.rmtree(graveyard, ignore_errors=True)
            elif version is None or not remaining:
                last = max([self._last(folder, strict=False), *self._version_numbers(folder, True)])
                self._write_int(folder, "LAST", last)
                (folder / "CURRENT").unlink(missing_ok=True)
                for number in self._version_numbers(folder, True):
                    self._remove_version(folder, number)
                self._release_public(adapter_id)
                _write_json_atomic(
                    folder / "adapter.json",
                    {**self._meta_or_default(folder), "visibility": "private", "public_versions": []},
                )
                _fsync_dir(folder)
            else:
                _fsync_dir(folder)
        logger.info("deleted adapter %s%s%s", adapter_id, "" if version is None else f"@{version}", purge * " (purged)")

    def _remove_version(self, folder: Path, version: int) -> None:
        (folder / f"{version_file(version)}.json").unlink(missing_ok=True)
        for suffix in (".safetensors", *SUFFIX.values()):
            (folder / f"{version_file(version)}{suffix}").unlink(missing_ok=True)

    # ---- internals -----------------------------------------------------------------------------------------

    def _folder(self, adapter_id: str) -> Path:
        owner, _, name = adapter_id.partition("/")
        return self.adapters_dir / owner / name

    @contextlib.contextmanager
    def _locked(self, adapter_id: str, create: bool) -> Iterator[Path]:
        folder = self._folder(check_id(adapter_id))
        if create:
            folder.mkdir(parents=True, exist_ok=True)
        elif not folder.is_dir():
            raise not_found(adapter_id)
        lock_path = self.tmp_dir / f"{adapter_id.replace('/', '@')}.lock"  # outside the folder: purges move it
        with lock_path.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if create:
                    folder.mkdir(parents=True, exist_ok=True)  # a purge may have moved it while we waited
                elif not folder.is_dir():
                    raise not_found(adapter_id)
                yield folder
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _adapter_meta(self, folder: Path) -> dict[str, Any] | None:
        try:
            meta = json.loads((folder / "adapter.json").read_text())
        except FileNotFoundError:
            return None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise self._damaged(folder, "adapter.json", exc) from exc
        if not isinstance(meta, dict) or meta.get("visibility") not in VISIBILITIES:
            raise self._damaged(folder, "adapter.json", ValueError("no valid visibility"))
        try:
            public_versions(meta, None)
        except ValueError as exc:
            raise self._damaged(folder, "adapter.json", exc) from exc
        return meta

    def _public(self, folder: Path, meta: dict[str, Any], current: int | None, strict: bool = True) -> list[int]:
        """The adapter's public versions (see `public_versions` for metas written before the list existed)."""
        try:
            return public_versions(meta, current)
        except ValueError:
            if strict:
                raise
            return []

    def _meta_or_default(self, folder: Path) -> dict[str, Any]:
        """The adapter's meta, or a fresh one (new adapter, or a damaged file being replaced)."""
        try:
            meta = self._adapter_meta(folder)
        except AdapterCorrupt:
            meta = None
        return meta if meta is not None else {"visibility": "private", "created_at": time.time()}

    def _damaged(self, folder: Path, file: str, exc: Exception) -> AdapterCorrupt:
        return damaged(f"{folder.parent.name}/{folder.name}", file, exc)

    def _current(self, folder: Path, strict: bool = True) -> int | None:
        return self._read_int(folder, "CURRENT", strict)

    def _last(self, folder: Path, strict: bool = True) -> int:
        return self._read_int(folder, "LAST", strict) or 0

    def _set_current(self, folder: Path, version: int) -> None:
        self._write_int(folder, "CURRENT", version)

    def _read_int(self, folder: Path, name: str, strict: bool = True) -> int | None:
        """A number file; a damaged one raises `AdapterCorrupt` (or reads as absent when not `strict`)."""
        error: Exception | None = None
        try:
            text = (folder / name).read_text()
        except FileNotFoundError:
            return None
        except UnicodeDecodeError as exc:
            text, error = "", exc
        if text.isascii() and text.strip().isdigit():
            return int(text)
        if not strict:
            return None
        raise self._damaged(folder, name, error or ValueError(f"not a number: {text[:20]!r}"))

    def _write_int(self, folder: Path, name: str, value: int) -> None:
        _write_text_atomic(folder / name, str(value))

    def _version_numbers(self, folder: Path, include_orphans: bool = False) -> list[int]:
        suffixes = (".json", ".safetensors", *SUFFIX.values()) if include_orphans else (".json",)
        found = set()
        for path in folder.glob("v*"):
            number = version_of(path.stem)
            if number is None:
                self.strays.skip(str(path.relative_to(self.root)))
            elif path.suffix in suffixes:
                found.add(number)
        return sorted(found)

    def _owners(self) -> Iterator[Path]:
        """Owner folders, skipping (and logging once) anything that is not one."""
        for entry in self.adapters_dir.iterdir():
            if TENANT.fullmatch(entry.name) and entry.is_dir():
                yield entry
            else:
                self.strays.skip(str(entry.relative_to(self.root)))

    def _adapter_ids(self, owner: Path | None = None) -> Iterator[str]:
        """Full IDs of the adapter folders of `owner` (every owner if None); strays skipped and logged once."""
        for folder in [owner] if owner is not None else self._owners():
            with contextlib.suppress(FileNotFoundError):  # an owner purged meanwhile
                for entry in folder.iterdir():
                    adapter_id = f"{folder.name}/{entry.name}"
                    if ADAPTER_ID.fullmatch(adapter_id) and entry.is_dir():
                        yield adapter_id
                    else:
                        self.strays.skip(str(entry.relative_to(self.root)))

    def _record(self, folder: Path, meta: dict[str, Any], version: int, current: int) -> AdapterRecord:
        adapter_id = f"{folder.parent.name}/{folder.name}"
        try:
            raw = (folder / f"{version_file(version)}.json").read_bytes()
        except FileNotFoundError as exc:
            raise VersionNotFound(
                f"adapter {adapter_id!r} has no version {version}; versions: {self._version_numbers(folder)}"
            ) from exc
        public = self._public(folder, meta, current)
        return parse_record(raw, adapter_id, version, public, current, self._version_numbers(folder))

    def _recover(self) -> None:
        """Clear leftovers of processes killed mid-publish: partial uploads and data without a record.

        Live publishers hold locks (on their upload, and on the adapter), so only dead processes' files go: also
        the server's uploads (`upload-*`, spooled here), however young, since a live one is always locked.
        """
        remove_abandoned(self.tmp_dir)
        for leftover in self.tmp_dir.iterdir():
            if leftover.is_dir() and leftover.name.startswith("deleted-"):
                shutil.rmtree(leftover, ignore_errors=True)  # a purge that died before removing its files
            elif leftover.suffix == ".part":
                try:
                    f = leftover.open("rb")
                except FileNotFoundError:
                    continue  # its publisher finished meanwhile
                with f:
                    try:
                        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue  # an upload in progress in a live process
                    leftover.unlink(missing_ok=True)
            elif leftover.name.endswith(".part.creating"):
                # Staging files live for microseconds before their lock; older ones are orphans.
                with contextlib.suppress(OSError):
                    if time.time() - leftover.stat().st_mtime > STALE_SECONDS:
                        leftover.unlink()
        for owner in list(self._owners()):
            if (owner / "adapter.json").is_file():
                owner = self._migrate_flat(owner)
            for adapter_id in list(self._adapter_ids(owner)):  # never touches folders it did not write
                self._recover_adapter(self._folder(adapter_id))

    def _migrate_flat(self, folder: Path) -> Path:
        """A store written before namespaces (`adapters/<id>/`, owner in adapter.json) moves to
        `adapters/<owner>/<id>/`, its public adapters claiming their names. Returns the owner's folder."""
        try:
            meta = json.loads((folder / "adapter.json").read_text())
            owner = meta["owner"] if ADAPTER_ID.fullmatch(f"{meta['owner']}/x") else "default"
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            meta, owner = {}, "default"
        name = folder.name.removesuffix(".migrating")  # a migration interrupted after staging resumes here
        target = self.adapters_dir / owner / name
        if target.exists():
            logger.error("cannot migrate adapter %s to %s: the target exists; left in place", folder, target)
            return folder
        if owner == name and folder.name == name:  # `adapters/default/` becomes `adapters/default/default/`
            staged = folder.with_name(f"{name}.migrating")
            os.replace(folder, staged)
            folder = staged
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(folder, target)
        if meta.get("visibility") == "public":
            with contextlib.suppress(NameTaken):
                self._claim_public(f"{owner}/{name}")
        logger.warning("migrated adapter %s to the namespaced layout as %s/%s", name, owner, name)
        return self.adapters_dir / owner

    def _recover_adapter(self, folder: Path) -> None:
        lock_path = self.tmp_dir / f"{folder.parent.name}@{folder.name}.lock"
        with lock_path.open("a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # a publish or delete is running on this adapter
            for data in [p for suffix in (".safetensors", *SUFFIX.values()) for p in folder.glob(f"v*{suffix}")]:
                if version_of(data.stem) is not None and not data.with_suffix(".json").exists():
                    logger.warning("removing %s: data without a record (publish was interrupted)", data)
                    data.unlink(missing_ok=True)
            for tmp in folder.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)
            if not any((folder / name).exists() for name in ("CURRENT", "LAST")) and not any(folder.glob("v*.json")):
                shutil.rmtree(folder, ignore_errors=True)  # first publish never completed
