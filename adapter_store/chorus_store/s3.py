"""`S3Store`: adapters in an S3 bucket (any S3 API with conditional writes: AWS S3, SeaweedFS, MinIO, R2), with
exactly the contract of `LocalStore`. Selected by `CHORUS_STORE=s3://bucket/prefix`; endpoint and credentials come
from the standard variables (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`;
plain-HTTP endpoints are allowed for local servers).

    prefix/adapters/<owner>/<name>/meta.json           visibility, public_versions, created_at, current, last,
                                                       versions (the pointer)
    prefix/adapters/<owner>/<name>/v000003.safetensors tensor bytes (immutable)
    prefix/adapters/<owner>/<name>/v000003.json        record (sha256, size, summary)
    prefix/adapters/<owner>/<name>/v000003.lm          its language model, if it has one (likewise .lexicon)
    prefix/public/<name>                               claim of a public name: the owner's tenant name

Atomicity comes from the object store's conditional writes, never from a lock: `meta.json` only ever changes
with `If-Match: <etag>` (created with `If-None-Match: *`), so of racing writers exactly one wins each change and
the others re-read and retry. Publish: stream to a local temp file (size cap, sha256 on the fly) → validate →
reserve the next number in `meta.json` (`last`) → create the data, decoding files and record (`If-None-Match: *`) →
move `current` in `meta.json`. A version is visible only once `meta.json` lists it, so a publisher killed at any
point leaves no partial version (at worst an unreferenced object and a spent number). Client: obstore (Rust
`object_store`: conditional puts with e-tags; about 2.6x faster than boto3 per small GET against SeaweedFS here,
and one small wheel instead of botocore).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlparse

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
from chorus_store.file_cache import evict_least_recently_used, mark_used
from chorus_store.pins import PINS_FILE, ObjectPins
from chorus_store.spool import remove_abandoned, spool_file

logger = logging.getLogger(__name__)

DECODING_CACHE_BYTES = 4 << 30  # local copies of decoding files (CHORUS_CACHE__DECODING_FILES_MB)
MAX_ATTEMPTS = 64  # compare-and-set retries before giving up (each retry means another writer made progress)


@contextlib.contextmanager
def _io(what: str) -> Iterator[None]:
    """Object-store faults (network, server errors, auth) become `StoreUnavailable`, naming what failed."""
    try:
        yield
    except (StoreError, FileNotFoundError):
        raise
    except Exception as exc:  # obstore raises its own hierarchy plus OSErrors
        raise StoreUnavailable(f"the adapter store cannot {what} right now ({type(exc).__name__})") from exc


class S3Store:
    def __init__(
        self,
        bucket: str,
        prefix: str,
        validator: AdapterValidator,
        max_bytes: int = DEFAULT_MAX_BYTES,
        scratch: Path | None = None,
        decoding_limits: DecodingLimits | None = None,
        decoding_cache_bytes: int = DECODING_CACHE_BYTES,
        **client_options: Any,
    ):
        from obstore.store import S3Store as ObjectStore  # optional dependency: chorus-asr[s3]

        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.validator, self.max_bytes = validator, max_bytes
        self.decoding_limits = decoding_limits or DecodingLimits()
        self.decoding_cache_bytes = decoding_cache_bytes
        self.scratch = scratch or Path(tempfile.gettempdir())
        if scratch is not None:  # a folder of our own (never the shared /tmp): clear dead processes' uploads
            remove_abandoned(scratch)
        self.options = client_options
        self.strays = Strays()
        self.client = ObjectStore(bucket, **_client_config(client_options))
        self._pins = ObjectPins(self._key(PINS_FILE), self._get, self._put)

    def pins(self) -> dict[str, str]:
        return self._pins.read()

    def set_pin(self, adapter_id: str, ref: str | None) -> None:
        self._pins.set(adapter_id, ref)

    @classmethod
    def from_url(cls, url: str, validator: AdapterValidator, max_bytes: int = DEFAULT_MAX_BYTES, **kw: Any) -> S3Store:
        """`s3://bucket/prefix`, with endpoint and credentials from the AWS_* environment variables."""
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ValueError(f"expected s3://bucket/prefix, got {url!r}")
        return cls(parsed.netloc, parsed.path, validator, max_bytes, **kw)

    def _key(self, *parts: str) -> str:
        return "/".join([self.prefix, *parts] if self.prefix else list(parts))

    def _adapter_key(self, adapter_id: str, *parts: str) -> str:
        return self._key("adapters", adapter_id, *parts)

    # ---- low-level object access ---------------------------------------------------------------------------

    def _get(self, key: str) -> tuple[bytes, str] | None:
        """(bytes, etag), or None when the object does not exist."""
        import obstore

        with _io("read"):
            try:
                result = obstore.get(self.client, key)
                return bytes(result.bytes()), str(result.meta["e_tag"])
            except FileNotFoundError:
                return None

    def _put(self, key: str, data: bytes, mode: Any = "overwrite") -> str | None:
        """Write `data`; returns the new etag, or None if the precondition failed (another writer won)."""
        import obstore
        from obstore.exceptions import AlreadyExistsError, PreconditionError

        with _io("write"):
            try:
                # One PUT, never a multipart upload: adapters are far below S3's 5 GiB single-PUT limit, and a
                # publisher killed mid-way then leaves no incomplete multipart upload (invisible parts, billed).
                return str(obstore.put(self.client, key, data, mode=mode, use_multipart=False)["e_tag"])
            except (AlreadyExistsError, PreconditionError):
                return None

    def _delete(self, keys: list[str]) -> None:
        import obstore

        if keys:
            with _io("delete"):
                obstore.delete(self.client, keys)

    def _list(self, prefix: str) -> list[Any]:  # obstore ObjectMeta dicts: path, size, e_tag, ...
        import obstore

        with _io("list"):
            return [meta for batch in obstore.list(self.client, prefix + "/") for meta in batch]

    # ---- the adapter pointer (meta.json), changed only by compare-and-set ------------------------------------

    def _meta(self, adapter_id: str) -> tuple[dict[str, Any] | None, str | None]:
        found = self._get(self._adapter_key(adapter_id, "meta.json"))
        if found is None:
            return None, None
        try:
            meta = json.loads(found[0])
            if not isinstance(meta, dict) or meta.get("visibility") not in VISIBILITIES:
                raise ValueError("no valid visibility")
            if not all(isinstance(v, int) for v in meta.get("versions", [])):
                raise ValueError("bad version list")
            public_versions(meta, None)
        except (ValueError, UnicodeDecodeError) as exc:
            raise damaged(adapter_id, "meta.json", exc) from exc
        return meta, found[1]

    def _update_meta(
        self, adapter_id: str, change: Callable[[dict[str, Any] | None], dict[str, Any] | None], tolerate: bool = False
    ) -> dict[str, Any] | None:
        """Apply `change` to the adapter's meta by compare-and-set, retrying when another writer got there first.
        `change` may raise to abort, or return None to leave the meta as it is. `tolerate`: a damaged meta reads
        as absent (so deletes work on damaged adapters)."""
        key = self._adapter_key(adapter_id, "meta.json")
        for _ in range(MAX_ATTEMPTS):
            try:
                meta, etag = self._meta(adapter_id)
            except AdapterCorrupt:
                if not tolerate:
                    raise
                found = self._get(key)
                meta, etag = None, found[1] if found else None
            new = change(meta)
            if new is None:
                return meta
            mode: Any = {"e_tag": etag} if etag is not None else "create"
            if self._put(key, json.dumps(new).encode(), mode) is not None:
                return new
        raise StoreUnavailable(f"adapter {adapter_id!r} is changing too fast to update; retry")

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
        self.scratch.mkdir(parents=True, exist_ok=True)
        with contextlib.ExitStack() as stack:
            with spool_file(self.scratch, "s3-upload-", ".part") as (path, out):
                digest = copy_upload(source, out, self.max_bytes)
                data = path.read_bytes()
            summary = self.validator.validate(bytearray(data), allow_fingerprint_mismatch)
            stage = lambda kind: spool_file(self.scratch, "s3-upload-", f".{kind}.part")  # noqa: E731
            staged = receive_decoding(decoding, summary, self.decoding_limits, stage, stack)
            return self._publish_checked(adapter_id, data, digest, summary, staged, visibility, expected_version)

    def _publish_checked(
        self,
        adapter_id: str,
        data: bytes,
        digest: Digest,
        summary: AdapterSummary,
        staged: Decoding | None,
        visibility: str | None,
        expected_version: int | None,
    ) -> AdapterRecord:
        """Number the version, write its objects (the record last), then move `current` to it."""

        def reserve(meta: dict[str, Any] | None) -> dict[str, Any]:
            current = meta.get("current") if meta else None
            if expected_version is not None and expected_version != (current or 0):
                raise PublishConflict(
                    f"adapter {adapter_id!r} is at version {current or 0}, not {expected_version}; re-read it and retry"
                )
            if meta is None:  # new, or a damaged pointer being replaced: numbers continue after any stored version
                spent = self._numbers([m["path"] for m in self._list(self._adapter_key(adapter_id))])
                meta = {"visibility": "private", "created_at": time.time(), "current": None, "versions": []}
                meta["last"] = max(spent, default=0)
            base = meta
            return {**base, "last": int(base.get("last", 0)) + 1}

        # Numbers are never reused: `last` only grows, and only one writer wins each value.
        meta = self._update_meta(adapter_id, reserve, tolerate=True)
        assert meta is not None
        version = int(meta["last"])
        stem = version_file(version)
        if self._put(self._adapter_key(adapter_id, f"{stem}.safetensors"), data, "create") is None:
            raise StoreUnavailable(f"version {version} of {adapter_id!r} already has data; retry")
        for kind, (path, _) in staged.files.items() if staged else ():
            if self._put(self._adapter_key(adapter_id, f"{stem}{SUFFIX[kind]}"), path.read_bytes(), "create") is None:
                raise StoreUnavailable(f"version {version} of {adapter_id!r} already has a {kind} file; retry")
        record = new_record(adapter_id, version, digest, summary, self.validator.fingerprint, staged)
        self._put(self._adapter_key(adapter_id, f"{stem}.json"), json.dumps(record).encode(), "create")
        wanted = visibility or (meta["visibility"] if meta.get("current") is not None else "private")
        if wanted == "public":
            self._claim_public(adapter_id)

        def make_current(meta: dict[str, Any] | None) -> dict[str, Any]:
            base = meta or {"visibility": wanted, "created_at": time.time(), "last": version, "versions": []}
            current = base.get("current")  # racing publishers: the highest number ends current
            versions = sorted({*base.get("versions", []), version})
            # "private" withdraws the whole adapter; otherwise older versions keep their visibility.
            public = set() if visibility == "private" else set(public_versions(base, current))
            public |= {version} if wanted == "public" else set()
            return {
                **base,
                "visibility": wanted,
                "versions": versions,
                "public_versions": sorted(public),
                "current": max(current or 0, version),
            }

        made = self._update_meta(adapter_id, make_current, tolerate=True)
        if made is not None and not made["public_versions"]:
            self._release_public(adapter_id)
        logger.info(
            "published adapter %s@%d (%d bytes, sha256 %s)", adapter_id, version, digest.size, digest.sha256[:12]
        )
        return self.get(f"{adapter_id}@{version}")

    # ---- public names --------------------------------------------------------------------------------------

    def _claim_public(self, adapter_id: str) -> None:
        owner, _, name = adapter_id.partition("/")
        key = self._key("public", name)
        holder = self.public_owner(name)
        if holder == owner:
            return
        if holder is not None:
            if self._is_public(f"{holder}/{name}"):
                raise NameTaken(f"the public name {name!r} is taken by adapter '{holder}/{name}'; choose another name")
            self._delete([key])  # stale: that adapter was made private or deleted mid-way
        if self._put(key, owner.encode(), "create") is None:
            raise NameTaken(f"the public name {name!r} was just taken by another tenant; choose another name")

    def _release_public(self, adapter_id: str) -> None:
        owner, _, name = adapter_id.partition("/")
        if self.public_owner(name) == owner:
            self._delete([self._key("public", name)])

    def _is_public(self, adapter_id: str) -> bool:
        """Whether any version of the adapter is public (then its claim of the name is live)."""
        try:
            return bool(self.get(adapter_id).public_versions)
        except (AdapterNotFound, VersionNotFound, AdapterCorrupt):
            return False

    def set_visibility(self, ref: str, visibility: str) -> AdapterRecord:
        """Make one version public or private (`owner/name`: the current one)."""
        adapter_id, wanted = parse_ref(ref)
        if visibility not in VISIBILITIES:
            raise AdapterRejected(f"visibility must be one of {VISIBILITIES}, got {visibility!r}")
        version = wanted if wanted is not None else self.get(adapter_id).version
        self.get(f"{adapter_id}@{version}")  # not found / version not found
        if visibility == "public":
            self._claim_public(adapter_id)

        def change(meta: dict[str, Any] | None) -> dict[str, Any]:
            if meta is None or meta.get("current") is None or version not in meta["versions"]:
                raise VersionNotFound(f"adapter {adapter_id!r} has no version {version}")
            public = set(public_versions(meta, meta["current"])) - {version}
            public |= {version} if visibility == "public" else set()
            changed = {**meta, "public_versions": sorted(public)}
            if version == meta["current"]:  # the current version's visibility is what the next upload inherits
                changed["visibility"] = visibility
            return changed

        made = self._update_meta(adapter_id, change)
        if made is not None and not made["public_versions"]:
            self._release_public(adapter_id)
        logger.info("adapter %s@%d is now %s", adapter_id, version, visibility)
        return self.get(f"{adapter_id}@{version}")

    def public_owner(self, name: str) -> str | None:
        found = self._get(self._key("public", name))
        return found[0].decode(errors="replace").strip() or None if found else None

    # ---- read ----------------------------------------------------------------------------------------------

    def get(self, ref: str) -> AdapterRecord:
        adapter_id, version = parse_ref(ref)
        meta, _ = self._meta(adapter_id)
        if meta is None or meta.get("current") is None:
            raise not_found(adapter_id)
        return self._record(adapter_id, meta, meta["current"] if version is None else version)

    def versions(self, adapter_id: str) -> list[AdapterRecord]:
        meta, _ = self._meta(check_id(adapter_id))
        if meta is None or meta.get("current") is None:
            raise not_found(adapter_id)
        records = []
        for v in meta["versions"]:
            with contextlib.suppress(VersionNotFound):
                records.append(self._record(adapter_id, meta, v))
        return records

    def list_adapters(
        self,
        after: str | None = None,
        limit: int = 100,
        where: Callable[[AdapterRecord], bool] | None = None,
        viewer: str | None = None,
    ) -> Page:
        """See `AdapterStore.list_adapters`: a viewer's listing lists only its own prefix and the public index."""
        if viewer is None:
            return listing_page(list(self._adapter_ids(self._key("adapters"))), after, limit, self.get, where)
        own = list(self._adapter_ids(self._key("adapters", viewer))) if TENANT.fullmatch(viewer) else []
        others = [f"{holder}/{name}" for name, holder in self._claims() if holder != viewer]

        def load(adapter_id: str) -> AdapterRecord | None:
            return self.get(adapter_id) if adapter_id.partition("/")[0] == viewer else newest_public(self, adapter_id)

        return listing_page(own + others, after, limit, load, where)

    def _claims(self) -> Iterator[tuple[str, str]]:
        """(name, holder) of every public-name claim; strays skipped and logged once."""
        root = self._key("public")
        for meta in self._list(root):
            name = meta["path"][len(root) + 1 :]
            holder = self.public_owner(name) if TENANT.fullmatch(name) else ""
            if holder is not None and TENANT.fullmatch(holder):  # None: released meanwhile
                yield name, holder
            elif holder is not None:
                self.strays.skip(meta["path"])

    def owner_bytes(self, owner: str) -> int:
        root = self._key("adapters", owner)
        return sum(
            int(m["size"])
            for m in self._list(root)
            if ADAPTER_ID.fullmatch(f"{owner}/{m['path'][len(root) + 1 :].partition('/')[0]}")
            and m["path"].endswith(_STORED_SUFFIXES)
            and version_of(m["path"].rsplit("/", 1)[-1].partition(".")[0]) is not None
        )

    def read(self, record: AdapterRecord) -> bytes:
        data = self.read_unverified(record)
        self.verify(record, data)
        return bytes(data)

    def read_unverified(self, record: AdapterRecord) -> bytearray:
        found = self._get(self._adapter_key(record.id, f"{version_file(record.version)}.safetensors"))
        if found is None:
            raise VersionNotFound(f"adapter {record.ref} was deleted")
        return bytearray(found[0])

    def verify(self, record: AdapterRecord, data: bytes | bytearray) -> None:
        verify_checksum(record, data)

    def decoding_file(self, record: AdapterRecord, kind: DecodingKind) -> Path:
        """A local copy under `scratch/decoding/`, named by its sha256 (versions sharing a file share the copy),
        downloaded once, checked against the record, then renamed into place: a copy there is always whole. The
        folder holds at most `decoding_cache_bytes`, least recently used copies out (`file_cache.py`)."""
        info = getattr(record, kind) if kind in KINDS else None
        if info is None:
            raise VersionNotFound(f"adapter {record.ref} has no {kind} file")
        sha = str(info.get("sha256", ""))
        if not re.fullmatch(r"[0-9a-f]{64}", sha):  # the name of a local file: never a path from a record
            raise damaged(record.id, f"{version_file(record.version)}.json", ValueError(f"bad {kind} sha256"))
        folder = self.scratch / "decoding"
        target = folder / f"{sha}{SUFFIX[kind]}"
        if target.is_file() and target.stat().st_size == info.get("size"):
            mark_used(target)
            return target
        folder.mkdir(parents=True, exist_ok=True)
        key = self._adapter_key(record.id, f"{version_file(record.version)}{SUFFIX[kind]}")
        with spool_file(self.scratch, "s3-upload-", SUFFIX[kind]) as (path, out):
            self._download(key, out, record)
            verify_file(path, info, f"the {kind} file of adapter {record.ref}")
            os.replace(path, target)
        mark_used(target)
        evict_least_recently_used(folder, self.decoding_cache_bytes, keep=target)
        return target

    def _download(self, key: str, out: BinaryIO, record: AdapterRecord) -> None:
        """An object streamed into `out` in 8 MiB pieces (a language model is never held whole in memory)."""
        import obstore

        with _io("read"):
            try:
                for chunk in obstore.get(self.client, key).stream(min_chunk_size=8 << 20):
                    out.write(chunk)
            except FileNotFoundError:
                raise VersionNotFound(f"adapter {record.ref} was deleted") from None
            out.flush()

    # ---- delete --------------------------------------------------------------------------------------------

    def delete(self, adapter_id: str, version: int | None = None, purge: bool = False) -> None:
        check_id(adapter_id)
        existing = [m["path"] for m in self._list(self._adapter_key(adapter_id))]
        if not existing:
            raise not_found(adapter_id)

        def remove(meta: dict[str, Any] | None) -> dict[str, Any] | None:
            versions = list(meta.get("versions", [])) if meta else []
            if meta is not None and meta.get("current") is None and not versions and not purge:
                raise not_found(adapter_id)  # a tombstone: already deleted
            if version is not None:
                if version not in versions:
                    raise VersionNotFound(f"adapter {adapter_id!r} has no version {version}; versions: {versions}")
                versions.remove(version)
            else:
                versions = []
            last = max([int(meta.get("last", 0)) if meta else 0, *self._numbers(existing)])
            visibility = meta["visibility"] if meta and versions else "private"
            created = meta.get("created_at", time.time()) if meta else time.time()
            current = max(versions) if versions else None
            public = [v for v in public_versions(meta, meta.get("current")) if v in versions] if meta else []
            return {
                "visibility": visibility,
                "public_versions": public,
                "created_at": created,
                "current": current,
                "last": last,
                "versions": versions,
            }

        meta = self._update_meta(adapter_id, remove, tolerate=True)
        assert meta is not None
        if version is not None:
            stem = version_file(version)
            self._delete([k for k in existing if k.rsplit("/", 1)[-1].startswith(stem + ".")])
        if purge:
            self._delete(existing)
        elif meta["current"] is None:
            self._delete([k for k in existing if not k.endswith("/meta.json")])
        if purge or meta["current"] is None or not meta["public_versions"]:
            self._release_public(adapter_id)
        logger.info("deleted adapter %s%s%s", adapter_id, "" if version is None else f"@{version}", purge * " (purged)")

    # ---- internals -----------------------------------------------------------------------------------------

    def _adapter_ids(self, prefix: str) -> Iterator[str]:
        """Full IDs of the adapters under `prefix` (all, or one owner's); keys no store wrote are skipped and
        logged once."""
        root = self._key("adapters")
        for meta in self._list(prefix):
            relative = meta["path"][len(root) + 1 :]
            adapter_id, _, file = relative.rpartition("/")
            if not ADAPTER_ID.fullmatch(adapter_id) or not (file == "meta.json" or version_of(file.split(".")[0])):
                self.strays.skip(meta["path"])
            elif file == "meta.json":
                yield adapter_id

    @staticmethod
    def _numbers(keys: list[str]) -> list[int]:
        stems = (k.rsplit("/", 1)[-1].split(".", 1)[0] for k in keys)
        return [number for number in map(version_of, stems) if number is not None]

    def _record(self, adapter_id: str, meta: dict[str, Any], version: int) -> AdapterRecord:
        if version not in meta["versions"]:
            raise VersionNotFound(f"adapter {adapter_id!r} has no version {version}; versions: {meta['versions']}")
        found = self._get(self._adapter_key(adapter_id, f"{version_file(version)}.json"))
        if found is None:
            raise VersionNotFound(f"adapter {adapter_id!r} has no version {version}; versions: {meta['versions']}")
        public = public_versions(meta, meta["current"])
        return parse_record(found[0], adapter_id, version, public, meta["current"], meta["versions"])


_STORED_SUFFIXES = (".safetensors", *SUFFIX.values())  # what counts against an owner's storage


def _client_config(overrides: dict[str, Any]) -> dict[str, Any]:
    """obstore options from the standard AWS variables (and `overrides`)."""
    config: dict[str, Any] = {}
    for option, variable in (
        ("endpoint", "AWS_ENDPOINT_URL"),
        ("access_key_id", "AWS_ACCESS_KEY_ID"),
        ("secret_access_key", "AWS_SECRET_ACCESS_KEY"),
        ("session_token", "AWS_SESSION_TOKEN"),
        ("region", "AWS_REGION"),
    ):
        if os.environ.get(variable):
            config[option] = os.environ[variable]
    config.update(overrides)
    config.setdefault("region", os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
    if str(config.get("endpoint", "")).startswith("http://"):
        config["client_options"] = {**config.get("client_options", {}), "allow_http": True}
    return config
