"""`GET /v1/audit`: the audit log, for admins — newest first, filtered by the acting tenant and a start time, in
pages (`next_before` is the cursor of the next page)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from chorus_server.auth import Principal, current_principal
from chorus_server.errors import ApiError
from chorus_store.base import NAME

router = APIRouter(tags=["audit"])
Caller = Annotated[Principal, Depends(current_principal)]


def _since(value: str | None) -> float | None:
    """Epoch seconds or an ISO 8601 time (UTC unless it names a zone)."""
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(
            422, f"since={value!r} is not a time: give epoch seconds or ISO 8601", "invalid_parameter", "since"
        ) from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


@router.get("/v1/audit", summary="Audit log entries, newest first (admin)")
async def audit(
    request: Request,
    who: Caller,
    tenant: Annotated[str | None, Query(pattern=f"^{NAME}$", description="only actions by this tenant")] = None,
    since: Annotated[str | None, Query(description="only entries at or after: epoch seconds or ISO 8601")] = None,
    before: Annotated[int | None, Query(ge=1, description="the page after: `next_before` of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    who.require("manage", "read the audit log")
    runtime = request.app.state.chorus
    entries = await asyncio.to_thread(runtime.audit.entries, tenant, _since(since), before, limit)
    more = len(entries) == limit and entries[-1]["id"] > 1
    return {"object": "list", "data": entries, "next_before": entries[-1]["id"] if more else None}
