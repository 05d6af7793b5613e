"""Usage and limits per tenant: `GET /v1/usage` (the caller's tenant; admins: every tenant or `?tenant=`), and
the admin's per-tenant limit overrides, stored in the tenant database beside the tenant's keys."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request

from chorus_server.auth import Principal, current_principal
from chorus_server.errors import ApiError
from chorus_server.runtime import Runtime
from chorus_server.settings import TenantLimits
from chorus_store.base import NAME

router = APIRouter(tags=["tenants"])
Caller = Annotated[Principal, Depends(current_principal)]
TenantName = Annotated[str, Query(pattern=f"^{NAME}$")]
TenantPath = Annotated[str, Path(pattern=f"^{NAME}$")]


def _runtime(request: Request) -> Runtime:
    return request.app.state.chorus


@router.get("/v1/usage", summary="Today's usage and the limits of the caller's tenant (admins: any or all)")
async def usage(request: Request, who: Caller, tenant: TenantName | None = None) -> dict[str, Any]:
    who.require("usage")  # a metrics key scrapes /metrics, nothing else
    quotas = _runtime(request).quotas
    if tenant is not None and tenant != who.tenant:
        who.require("manage", "read another tenant's usage (leave out ?tenant= for your own)")
    if tenant is None and who.admin:
        tenants = await asyncio.to_thread(quotas.tenants)
        return {"object": "list", "data": [await asyncio.to_thread(quotas.usage, t) for t in tenants]}
    return await asyncio.to_thread(quotas.usage, tenant or who.tenant)


@router.get("/v1/tenants/{tenant}/limits", summary="A tenant's limits: defaults with its overrides (admin)")
async def get_limits(request: Request, tenant: TenantPath, who: Caller) -> dict[str, Any]:
    who.require("manage", "read tenant limits (GET /v1/usage shows your own tenant's)")
    runtime = _runtime(request)
    overrides = await asyncio.to_thread(runtime.tenants.limit_overrides, tenant)
    limits = runtime.settings.limits.tenant.model_copy(update=overrides)
    return {"object": "tenant.limits", "tenant": tenant, "limits": limits.model_dump(), "overrides": overrides}


@router.put("/v1/tenants/{tenant}/limits", summary="Replace a tenant's limit overrides (admin); {} = defaults")
async def put_limits(request: Request, tenant: TenantPath, overrides: dict[str, Any], who: Caller) -> dict[str, Any]:
    runtime = _runtime(request)
    async with runtime.audit.action(request, "tenant.limits", tenant) as entry:
        who.require("manage", "change tenant limits")
        unknown = set(overrides) - set(TenantLimits.model_fields)
        if unknown:
            raise ApiError(422, f"unknown limits {sorted(unknown)}; known: {sorted(TenantLimits.model_fields)}")
        try:
            TenantLimits.model_validate({**runtime.settings.limits.tenant.model_dump(), **overrides})
        except ValueError as exc:
            raise ApiError(422, f"invalid limits: {exc}".splitlines()[0], "invalid_parameter") from None
        entry["overrides"] = overrides
        await asyncio.to_thread(runtime.tenants.set_limit_overrides, tenant, overrides)
        await asyncio.to_thread(runtime.quotas.forget_limits, tenant)
    return await get_limits(request, tenant, who)
