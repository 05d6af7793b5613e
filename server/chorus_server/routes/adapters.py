"""Operator API: list, inspect, upload (new immutable version), delete, pin and unpin adapters, while traffic flows.
Also `GET /v1/models`, OpenAI's view of the same adapters. Names resolve as `chorus_server.tenancy` says; every
change is written to the audit log."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Annotated, Any, BinaryIO, Literal

from fastapi import APIRouter, Depends, Query, Request
from starlette.datastructures import FormData

from chorus_server.auth import Principal, current_principal
from chorus_server.decoding.beam_overrides import parse_beam_overrides
from chorus_server.decoding.prewarm import prewarm
from chorus_server.errors import ApiError
from chorus_server.runtime import Runtime, upload_dir
from chorus_server.settings import Settings
from chorus_server.tenancy import own_id, resolve, visible_part
from chorus_server.tenants.storage_quota import Reservation
from chorus_store.base import AdapterRecord, split_ref
from chorus_store.decoding_files import DecodingUpload
from chorus_store.errors import AdapterNotFound, StoreUnavailable
from chorus_store.spool import spool_file

router = APIRouter(tags=["adapters"])
Caller = Annotated[Principal, Depends(current_principal)]


def _admitted_reader(request: Request, who: Caller) -> Iterator[Principal]:
    """A listing costs the store work, so it takes one of the caller's requests (rate and concurrency) like a
    transcription: a tenant listing in a loop is refused with 429, not served at others' expense. It is not usage
    (nothing billed, no daily quota spent)."""
    who.require("read")
    quotas = request.app.state.chorus.quotas
    try:
        lease = quotas.admit_request(who.tenant, usage=False)
    except ApiError as error:
        error.headers = {**(error.headers or {}), **quotas.headers_if_known(who.tenant, fresh=True)}
        raise
    try:
        yield who
    finally:
        quotas.release(who.tenant, lease)


Reader = Annotated[Principal, Depends(_admitted_reader)]


def _runtime(request: Request) -> Runtime:
    return request.app.state.chorus


def adapter_json(runtime: Runtime, record: AdapterRecord, who: Principal) -> dict[str, Any]:
    body = visible_part(record, who).to_dict()
    body.pop("is_current", None)
    return {
        "object": "adapter",
        **body,
        "name": record.name,
        "resident": runtime.cache.is_resident(record.ref),
        "pinned": runtime.pinned.get(record.id) == record.ref,
        # Whether this caller may pin, unpin, delete or publish versions of it (the console shows only those).
        "changeable": who.can_change(record),
    }


def _changeable(runtime: Runtime, ref: str, who: Principal) -> AdapterRecord:
    record = resolve(runtime.store, ref, who)
    if not who.can_change(record):  # `record` is visible to `who`, so saying whose it is reveals nothing
        raise ApiError(403, f"adapter {record.id!r} belongs to tenant {record.owner!r}", "not_owner")
    return record


def _check_namespace(ref: str, who: Principal) -> None:
    """Writes go to the caller's own namespace (an admin may write anywhere)."""
    who.require("write")
    owner = split_ref(ref).owner
    if owner is not None and owner != who.tenant and not who.admin:
        raise ApiError(
            403, f"you can change adapters only in your own namespace, {who.tenant!r}/", "not_owner", "adapter_id"
        )


@router.get("/v1/models", summary="Adapters the caller may use, in OpenAI's model-list shape", tags=["transcription"])
async def list_models(request: Request, who: Reader) -> dict[str, Any]:
    runtime = _runtime(request)
    records = await asyncio.to_thread(_all_visible, runtime, who)
    # Chorus's additions: `kind` (a `classifier` serves /v1/audio/classifications, every other kind transcribes),
    # `default` (what `whisper-1` means here) and `own` (in the caller's namespace), for pickers such as the console.
    default = runtime.transcriber.default_adapter
    data = [
        {
            "id": r.id,
            "object": "model",
            "created": int(r.created_at),
            "owned_by": r.owner,
            "kind": r.kind,
            "default": r.id == default,
            "own": r.owner == who.tenant,
        }
        for r in records
    ]
    return {"object": "list", "data": data}


def _viewer(who: Principal) -> str | None:
    """Whose view a listing takes: an admin sees every adapter, anyone else its own and the public ones."""
    return None if who.admin else who.tenant


def _all_visible(runtime: Runtime, who: Principal) -> list[AdapterRecord]:
    records: list[AdapterRecord] = []
    cursor = None
    while True:
        page = runtime.store.list_adapters(after=cursor, limit=1000, where=who.can_see, viewer=_viewer(who))
        records += page.items
        if page.next_cursor is None:
            return records
        cursor = page.next_cursor


@router.get("/v1/adapters", summary="List the adapters the caller may see (current versions), paginated")
async def list_adapters(
    request: Request,
    who: Reader,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    after: Annotated[str | None, Query(max_length=200, description="next_cursor of the previous page")] = None,
) -> dict[str, Any]:
    runtime = _runtime(request)
    page = await asyncio.to_thread(runtime.store.list_adapters, after, limit, who.can_see, _viewer(who))
    data = [adapter_json(runtime, r, who) for r in page.items]
    return {"object": "list", "data": data, "next_cursor": page.next_cursor}


@router.get("/v1/adapters/{ref:path}", summary="One adapter: `[owner/]name` (current version) or with `@N`")
async def get_adapter(request: Request, ref: str, who: Caller) -> dict[str, Any]:
    who.require("read")
    runtime = _runtime(request)
    return adapter_json(runtime, await asyncio.to_thread(resolve, runtime.store, ref, who), who)


@router.put(
    "/v1/adapters/{adapter_id:path}",
    status_code=201,
    summary="Upload a new version of `[owner/]name` (raw safetensors body, or multipart field `file`; multipart may "
    "add `lm` (ARPA or KenLM binary), `lexicon` (one word per line) and beam settings: beam_width, lm_weight, "
    "word_score, unk_score, hotword_score)",
    openapi_extra={
        "requestBody": {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}
    },
)
async def put_adapter(
    request: Request,
    adapter_id: str,
    who: Caller,
    visibility: Annotated[
        Literal["private", "public"] | None, Query(description="change the adapter's visibility; unset: keep it")
    ] = None,
    expected_version: Annotated[int | None, Query(ge=0, description="compare-and-set: 0 = must not exist")] = None,
    allow_fingerprint_mismatch: bool = False,
) -> dict[str, Any]:
    runtime = _runtime(request)
    async with runtime.audit.action(request, "adapter.publish", adapter_id) as entry:
        _check_namespace(adapter_id, who)  # 403/422 before the body is read (refusals are audited too)
        full_id, version = own_id(adapter_id, who)
        if version is not None:
            raise ApiError(422, "upload to an adapter ID, not to a version: versions are numbered by the server")
        entry["target"] = full_id
        owner = full_id.partition("/")[0]
        quota = (await asyncio.to_thread(runtime.quotas.limits, owner)).storage_bytes
        declared = request.headers.get("content-length", "")
        measure = partial(runtime.store.owner_bytes, owner)
        # Reserved before the body is read (507 at once when Content-Length tells), held until the version is
        # stored: uploads in flight count against the quota too.
        reservation = await asyncio.to_thread(
            runtime.uploads.begin, owner, quota, measure, int(declared) if declared.isdigit() else 0
        )
        try:
            with _spool(upload_dir(runtime.settings)) as (path, out):
                decoding = await _receive_upload(request, out, reservation, runtime.settings)
                reservation.cover(out.tell() + _decoding_bytes(decoding))
                await asyncio.to_thread(reservation.check_stored, measure)  # uploads stored meanwhile
                record = await asyncio.to_thread(
                    partial(
                        runtime.store.publish,
                        full_id,
                        path,
                        visibility,
                        expected_version,
                        allow_fingerprint_mismatch,
                        decoding=decoding,
                    )
                )
        finally:
            reservation.release()
        entry.update(version=record.version, sha256=record.sha256, visibility=record.visibility)
    if record.id in runtime.pinned:  # a pinned adapter stays pinned across versions
        await _pin(runtime, record)
    return adapter_json(runtime, record, who)


@contextlib.contextmanager
def _spool(scratch: Path) -> Iterator[tuple[Path, BinaryIO]]:
    """A locked spool file for one upload (chorus_store.spool: a restart removes it if this process dies)."""
    with contextlib.ExitStack() as stack:
        try:
            scratch.mkdir(parents=True, exist_ok=True)
            path, out = stack.enter_context(spool_file(scratch, "upload-", ".safetensors"))
        except OSError as exc:
            raise StoreUnavailable(f"the adapter store cannot take uploads right now ({exc.strerror or exc})") from exc
        yield path, out


async def _receive_upload(
    request: Request, out: BinaryIO, reservation: Reservation, settings: Settings
) -> DecodingUpload | None:
    """Stream the body (raw or multipart `file`) into `out`, at most the adapter limit (BodyLimit already caps the
    whole request, multipart framing included, while it arrives), covered by `reservation` as it grows. Returns
    a multipart upload's decoding files and beam settings (the store checks the files as it copies them)."""
    limit = settings.limits.max_adapter_bytes
    decoding = None
    try:
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            form = await request.form(max_files=3, max_fields=20)
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise ApiError(400, "multipart upload needs a file field named 'file'", "missing_file", "file")
            decoding = _decoding_upload(form, settings)
            while chunk := await upload.read(1 << 20):
                _write_limited(out, chunk, limit, reservation)
        else:
            async for chunk in request.stream():
                _write_limited(out, chunk, limit, reservation)
        out.flush()
    except OSError as exc:  # a full or read-only disk while writing
        raise StoreUnavailable(f"the adapter store cannot take uploads right now ({exc.strerror or exc})") from exc
    if out.tell() == 0:
        raise ApiError(400, "the upload is empty: send the adapter's safetensors bytes", "empty_upload")
    return decoding


def _decoding_upload(form: FormData, settings: Settings) -> DecodingUpload | None:
    """The form's `lm` and `lexicon` files (each refused with 413 at once when larger than its limit; their
    client-side names are never used) and beam settings; None when it has none."""
    files: dict[str, BinaryIO | None] = {}
    for field, limit, setting in (
        ("lm", settings.limits.max_lm_bytes, "MAX_LM_BYTES"),
        ("lexicon", settings.limits.max_lexicon_bytes, "MAX_LEXICON_BYTES"),
    ):
        part = form.get(field)
        if isinstance(part, str):
            raise ApiError(400, f"{field} must be a file (multipart file field {field!r})", "invalid_file", field)
        if part is not None and (part.size or 0) > limit:
            message = f"the {field} file exceeds the limit of {limit} bytes (CHORUS_LIMITS__{setting}); prune it"
            raise ApiError(413, message, "file_too_large", field)
        files[field] = part.file if part is not None else None
    beam = parse_beam_overrides(form)
    if beam and files["lm"] is None and files["lexicon"] is None:
        message = "beam settings apply only to a version with a language model or lexicon: add lm or lexicon"
        raise ApiError(400, message, "beam_unavailable")
    upload = DecodingUpload(files["lm"], files["lexicon"], beam)
    return None if upload.empty else upload


def _decoding_bytes(decoding: DecodingUpload | None) -> int:
    """Bytes the decoding files add to the owner's storage (form parts are spooled files of a known size)."""
    total = 0
    for part in (decoding.lm, decoding.lexicon) if decoding is not None else ():
        if part is not None and not isinstance(part, Path):
            total += part.seek(0, 2)
            part.seek(0)
    return total


def _write_limited(out: BinaryIO, chunk: bytes, limit: int, reservation: Reservation) -> None:
    if out.tell() + len(chunk) > limit:
        raise ApiError(413, f"adapter upload exceeds the limit of {limit} bytes", "file_too_large")
    reservation.cover(out.tell() + len(chunk))  # a body longer than its Content-Length, or without one
    out.write(chunk)


@router.delete("/v1/adapters/{ref:path}", summary="Delete an adapter (`ID`: every version) or one version (`ID@N`)")
async def delete_adapter(
    request: Request,
    ref: str,
    who: Caller,
    purge: Annotated[
        bool, Query(description="admin: also forget the adapter's version numbers, releasing its ID")
    ] = False,
) -> dict[str, Any]:
    runtime = _runtime(request)
    async with runtime.audit.action(request, "adapter.delete", ref) as entry:
        who.require("write")
        if purge:
            who.require("manage", "purge an adapter's version numbers (delete without purge=true)")
        full_id, version = own_id(ref, who)
        entry.update(target=full_id, version=version, purge=purge)
        if full_id.partition("/")[0] != who.tenant and not who.admin:
            await asyncio.to_thread(_changeable, runtime, ref, who)  # 404 if hidden, else 403 not_owner
        # The store deletes damaged adapters too: the owner can always clean up.
        await asyncio.to_thread(runtime.store.delete, full_id, version, purge)
    # Requests already running keep their version until they finish; "x@1" also matches "x@10", which only
    # costs that version a reload.
    runtime.cache.invalidate(f"{full_id}@{version if version is not None else ''}")
    answer: dict[str, Any] = {"id": full_id, "object": "adapter.deleted", "deleted": True, "version": version}
    pinned = runtime.pinned.get(full_id)
    if pinned is not None and (version is None or pinned == f"{full_id}@{version}"):
        answer["pinned"] = await _follow_pin(runtime, full_id, whole=version is None)
    return answer


async def _follow_pin(runtime: Runtime, full_id: str, whole: bool) -> str | None:
    """The pinned version was deleted: pin the version that is current now (returned), or, when none is left,
    drop the pin (None). The answer says which, so a pin never disappears silently."""
    current = None
    if not whole:
        try:
            current = await asyncio.to_thread(runtime.store.get, full_id)
        except AdapterNotFound:
            current = None
    if current is None:
        await asyncio.to_thread(runtime.store.set_pin, full_id, None)
        runtime.cache.unpin(runtime.pinned.pop(full_id))
        return None
    await _pin(runtime, current)
    return current.ref


@router.post("/v1/adapters/{adapter_id:path}/pin", summary="Keep the current version resident (returns once it is)")
async def pin_adapter(request: Request, adapter_id: str, who: Caller) -> dict[str, Any]:
    runtime = _runtime(request)
    async with runtime.audit.action(request, "adapter.pin", adapter_id) as entry:
        who.require("write")
        record = await asyncio.to_thread(_changeable, runtime, adapter_id, who)
        entry.update(target=record.id, version=record.version)
        await _pin(runtime, record)
    return adapter_json(runtime, record, who)


async def _pin(runtime: Runtime, record: AdapterRecord) -> None:
    """Make `record`'s version the adapter's pinned one (returns once resident here), releasing any other version.
    Recorded in the store first: every server on it applies the pin within about a second (store_watch.py)."""
    await asyncio.to_thread(runtime.store.set_pin, record.id, record.ref)
    await asyncio.wrap_future(runtime.cache.pin(record.ref))
    prewarm(runtime.cache, record.ref)  # its beam-search decoder too, in the background
    old = runtime.pinned.get(record.id)
    runtime.pinned[record.id] = record.ref
    if old is not None and old != record.ref:
        runtime.cache.unpin(old)


@router.post("/v1/adapters/{adapter_id:path}/unpin", summary="Let the adapter be evicted again")
async def unpin_adapter(request: Request, adapter_id: str, who: Caller) -> dict[str, Any]:
    runtime = _runtime(request)
    async with runtime.audit.action(request, "adapter.unpin", adapter_id) as entry:
        who.require("write")
        record = await asyncio.to_thread(_changeable, runtime, adapter_id, who)
        entry["target"] = record.id
        await asyncio.to_thread(runtime.store.set_pin, record.id, None)  # for every server on the store
        pinned = runtime.pinned.pop(record.id, None)
        if pinned is not None:
            runtime.cache.unpin(pinned)
    return adapter_json(runtime, record, who)


@router.post(
    "/v1/adapters/{ref:path}/visibility",
    summary="Make one version (`ID@N`; `ID`: the current one) public or private; other versions keep theirs",
)
async def set_visibility(
    request: Request, ref: str, who: Caller, visibility: Annotated[Literal["private", "public"], Query()]
) -> dict[str, Any]:
    runtime = _runtime(request)
    async with runtime.audit.action(request, "adapter.visibility", ref) as entry:
        who.require("write")
        record = await asyncio.to_thread(_changeable, runtime, ref, who)  # 404 if hidden, else 403 not_owner
        record = await asyncio.to_thread(runtime.store.set_visibility, record.ref, visibility)
        entry.update(target=record.id, version=record.version, visibility=visibility)
    return adapter_json(runtime, record, who)
