"""Admin API for API keys: create (the secret is in the answer, once), list, revoke. `chorus keys …` does the
same against the key file without a running server."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from chorus_server.auth import Principal, current_principal
from chorus_server.errors import ApiError
from chorus_server.tenants.keys import KeyRing, Role
from chorus_store.base import NAME

router = APIRouter(tags=["keys"])
Caller = Annotated[Principal, Depends(current_principal)]


class NewKey(BaseModel):
    tenant: str = Field(pattern=f"^{NAME}$", description="the tenant (namespace) the key acts for")
    role: Role = Role.USER
    expires_in_days: float | None = Field(None, gt=0, le=3650, description="unset: never expires")


def _keys(request: Request, who: Principal) -> KeyRing:
    who.require("manage")
    return request.app.state.chorus.auth.keys


@router.get("/v1/keys", summary="List active API keys (admin)")
async def list_keys(request: Request, who: Caller) -> dict[str, Any]:
    async with request.app.state.chorus.audit.action(request, "key.list", "*"):  # refusals are audited too
        keys = await asyncio.to_thread(_keys(request, who).active)
    return {"object": "list", "data": [k.to_dict() for k in keys]}


@router.post("/v1/keys", status_code=201, summary="Create an API key (admin); the secret is shown only here")
async def create_key(request: Request, body: NewKey, who: Caller) -> dict[str, Any]:
    expires = time.time() + body.expires_in_days * 86400 if body.expires_in_days else None
    async with request.app.state.chorus.audit.action(request, "key.create", body.tenant) as entry:
        # The new key's tenant and role; the entry's own `tenant`, `role` and `key_id` are the caller's.
        entry["details"] = {"tenant": body.tenant, "role": str(body.role), "expires_at": expires}
        keys = _keys(request, who)
        info, secret = await asyncio.to_thread(keys.create, body.tenant, body.role, expires)
        entry["details"]["key"] = info.id
    return {**info.to_dict(), "key": secret}


@router.delete("/v1/keys/{key_id}", summary="Revoke an API key (admin); effective on the next request")
async def revoke_key(request: Request, key_id: str, who: Caller) -> dict[str, Any]:
    async with request.app.state.chorus.audit.action(request, "key.revoke", key_id):
        keys = _keys(request, who)
        if not await asyncio.to_thread(keys.revoke, key_id):
            raise ApiError(
                404,
                f"no active key {key_id!r} in the key file (environment keys are revoked by "
                "removing them from the environment)",
                "key_not_found",
            )
    return {"id": key_id, "object": "api_key.deleted", "deleted": True}
