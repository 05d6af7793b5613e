"""Operator API: list, inspect, upload (new immutable version), delete, pin and unpin adapters, while traffic flows.
Also `GET /v1/models`, OpenAI's view of the same adapters."""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path
from typing import Annotated, Any, BinaryIO, Literal

from fastapi import APIRouter, Depends, Query, Request

from chorus_server.auth import Tenant, current_tenant, visible_record
from chorus_server.errors import ApiError
from chorus_server.runtime import Runtime
from chorus_store.base import AdapterRecord, parse_ref
from chorus_store.errors import AdapterNotFound

router = APIRouter(tags=["adapters"])
TenantDep = Annotated[Tenant, Depends(current_tenant)]


def _runtime(request: Request) -> Runtime:
    return request.app.state.chorus


def adapter_json(runtime: Runtime, record: AdapterRecord) -> dict[str, Any]:
    body = record.to_dict()
    body.pop("is_current", None)
    return {
        "object": "adapter",
        **body,
        "resident": runtime.cache.is_resident(record.ref),
        "pinned": runtime.pinned.get(record.id) == record.ref,
    }


def _changeable(runtime: Runtime, ref: str, tenant: Tenant) -> AdapterRecord:
    record = visible_record(runtime.store, ref, tenant)
    if not tenant.can_change(record):
        raise ApiError(403, f"adapter {record.id!r} belongs to another tenant", "not_owner")
    return record


@router.get("/v1/models", summary="Adapters the caller may use, in OpenAI's model-list shape", tags=["transcription"])
async def list_models(request: Request, tenant: TenantDep) -> dict[str, Any]:
    records = await asyncio.to_thread(_all_visible, _runtime(request), tenant)
    data = [{"id": r.id, "object": "model", "created": int(r.created_at), "owned_by": r.owner} for r in records]
    return {"object": "list", "data": data}


def _all_visible(runtime: Runtime, tenant: Tenant) -> list[AdapterRecord]:
    records, cursor = [], None
    while True:
        page = runtime.store.list_adapters(after=cursor, limit=500)
        records += [r for r in page.items if tenant.can_see(r)]
        if page.next_cursor is None:
            return records
        cursor = page.next_cursor


@router.get("/v1/adapters", summary="List adapters (current versions), paginated")
async def list_adapters(
    request: Request,
    tenant: TenantDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    after: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> dict[str, Any]:
    runtime = _runtime(request)
    page = await asyncio.to_thread(runtime.store.list_adapters, after, limit)
    data = [adapter_json(runtime, r) for r in page.items if tenant.can_see(r)]
    return {"object": "list", "data": data, "next_cursor": page.next_cursor}


@router.get("/v1/adapters/{ref}", summary="One adapter: `ID` (current version) or `ID@N`")
async def get_adapter(request: Request, ref: str, tenant: TenantDep) -> dict[str, Any]:
    runtime = _runtime(request)
    return adapter_json(runtime, await asyncio.to_thread(visible_record, runtime.store, ref, tenant))


@router.put(
    "/v1/adapters/{adapter_id}",
    status_code=201,
    summary="Upload a new version (raw safetensors body, or multipart field `file`)",
    openapi_extra={
        "requestBody": {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}
    },
)
async def put_adapter(
    request: Request,
    adapter_id: str,
    tenant: TenantDep,
    visibility: Literal["private", "public"] = "private",
    expected_version: Annotated[int | None, Query(ge=0, description="compare-and-set: 0 = must not exist")] = None,
    allow_fingerprint_mismatch: bool = False,
) -> dict[str, Any]:
    runtime = _runtime(request)
    parse_ref(adapter_id)  # 422 for an invalid ID before reading the body
    try:
        existing = await asyncio.to_thread(runtime.store.get, adapter_id)
    except AdapterNotFound:
        existing = None
    if existing is not None and not tenant.can_change(existing):
        raise ApiError(403, f"adapter ID {adapter_id!r} belongs to another tenant", "not_owner")
    path = await _receive_upload(request, runtime.settings.store / "tmp", runtime.settings.limits.max_adapter_bytes)
    try:
        record = await asyncio.to_thread(
            runtime.store.publish,
            adapter_id,
            path,
            existing.owner if existing else tenant.name,
            visibility,
            expected_version,
            allow_fingerprint_mismatch,
        )
    finally:
        path.unlink(missing_ok=True)
    if adapter_id in runtime.pinned:  # a pinned adapter stays pinned across versions
        await _pin(runtime, record)
    return adapter_json(runtime, record)


async def _receive_upload(request: Request, scratch: Path, limit: int) -> Path:
    """Stream the body (raw or multipart `file`) to a temporary file, at most `limit` bytes (BodyLimit already
    caps the whole request, multipart framing included, while it arrives)."""
    scratch.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="upload-", suffix=".safetensors", dir=scratch)
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            if request.headers.get("content-type", "").startswith("multipart/form-data"):
                form = await request.form(max_files=1, max_fields=10)
                upload = form.get("file")
                if upload is None or isinstance(upload, str):
                    raise ApiError(400, "multipart upload needs a file field named 'file'", "missing_file", "file")
                while chunk := await upload.read(1 << 20):
                    _write_limited(out, chunk, limit)
            else:
                async for chunk in request.stream():
                    _write_limited(out, chunk, limit)
        if path.stat().st_size == 0:
            raise ApiError(400, "the upload is empty: send the adapter's safetensors bytes", "empty_upload")
        return path
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def _write_limited(out: BinaryIO, chunk: bytes, limit: int) -> None:
    if out.tell() + len(chunk) > limit:
        raise ApiError(413, f"adapter upload exceeds the limit of {limit} bytes", "file_too_large")
    out.write(chunk)


@router.delete("/v1/adapters/{ref}", summary="Delete an adapter (`ID`: every version) or one version (`ID@N`)")
async def delete_adapter(request: Request, ref: str, tenant: TenantDep) -> dict[str, Any]:
    runtime = _runtime(request)
    adapter_id, version = parse_ref(ref)
    await asyncio.to_thread(_changeable, runtime, ref, tenant)
    await asyncio.to_thread(runtime.store.delete, adapter_id, version)
    # Requests already running keep their version until they finish; "fr@1" also matches "fr@10", which only
    # costs that version a reload.
    runtime.cache.invalidate(f"{adapter_id}@{version if version is not None else ''}")
    pinned = runtime.pinned.get(adapter_id)
    if pinned is not None and (version is None or pinned == f"{adapter_id}@{version}"):
        runtime.cache.unpin(runtime.pinned.pop(adapter_id))
    return {"id": adapter_id, "object": "adapter.deleted", "deleted": True, "version": version}


@router.post("/v1/adapters/{adapter_id}/pin", summary="Keep the current version resident (returns once it is)")
async def pin_adapter(request: Request, adapter_id: str, tenant: TenantDep) -> dict[str, Any]:
    runtime = _runtime(request)
    record = await asyncio.to_thread(_changeable, runtime, adapter_id, tenant)
    await _pin(runtime, record)
    return adapter_json(runtime, record)


async def _pin(runtime: Runtime, record: AdapterRecord) -> None:
    """Make `record`'s version the adapter's pinned one (returns once resident), releasing any other version."""
    await asyncio.wrap_future(runtime.cache.pin(record.ref))
    old = runtime.pinned.get(record.id)
    runtime.pinned[record.id] = record.ref
    if old is not None and old != record.ref:
        runtime.cache.unpin(old)


@router.post("/v1/adapters/{adapter_id}/unpin", summary="Let the adapter be evicted again")
async def unpin_adapter(request: Request, adapter_id: str, tenant: TenantDep) -> dict[str, Any]:
    runtime = _runtime(request)
    record = await asyncio.to_thread(_changeable, runtime, adapter_id, tenant)
    pinned = runtime.pinned.pop(record.id, None)
    if pinned is not None:
        runtime.cache.unpin(pinned)
    return adapter_json(runtime, record)
