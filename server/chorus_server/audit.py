"""The HTTP side of the audit log (`chorus_server.tenants.audit`): entries for actions taken through the API, with
the request's caller, request ID and client address, and refusals named by their error code."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import Request
from starlette.exceptions import HTTPException

from chorus_server.auth import Principal
from chorus_server.errors import from_domain
from chorus_server.settings import Settings
from chorus_server.tenants.audit import AuditTrail
from chorus_server.tenants.base import AuditStore
from chorus_store.errors import StoreError


def audit_export(settings: Settings) -> Path | None:
    """The optional JSON-lines copy of the audit log (`CHORUS_AUDIT_LOG`; unset: none, the table only)."""
    return settings.audit_log


class AuditLog(AuditTrail):
    def __init__(self, store: AuditStore, export: Path | None = None):
        super().__init__(store, export, outcome)

    @contextlib.asynccontextmanager
    async def action(self, request: Request, action: str, target: str) -> AsyncIterator[dict[str, Any]]:
        """Record `action` on `target` by the request's caller when the block ends; the block may add fields
        (e.g. `version`, kept in `details`). Open it before any permission check, so that refusals are recorded
        too. The entry is written off the event loop."""
        who = getattr(request.state, "principal", None)
        entry: dict[str, Any] = {"time": time.time(), **identity(who), "action": action, "target": target}
        entry.update(request_id=getattr(request.state, "request_id", None))
        entry.update(client=request.client.host if request.client else None)
        try:
            yield entry
        except BaseException as exc:
            entry["outcome"] = outcome(exc)
            await asyncio.shield(asyncio.to_thread(self.write, entry))
            raise
        entry.setdefault("outcome", "ok")
        await asyncio.shield(asyncio.to_thread(self.write, entry))


def identity(who: Principal | None) -> dict[str, Any]:
    if who is None:  # not reached through authentication: no one to name
        return {"actor": None, "tenant": None, "role": None, "key_id": None}
    return {
        "actor": f"key:{who.key_id}" if who.key_id else who.tenant,
        "tenant": who.tenant,
        "role": str(who.role),
        "key_id": who.key_id,
    }


def outcome(exc: BaseException) -> str:
    if isinstance(exc, StoreError):
        mapped = from_domain(exc)
        return mapped.code or "error" if mapped else "error"
    if isinstance(exc, HTTPException):
        return str(getattr(exc, "code", None) or exc.status_code)
    return "error"
