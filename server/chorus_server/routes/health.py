"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from chorus_server.auth import Authenticator, Principal, current_principal
from chorus_server.errors import ApiError
from chorus_server.tenants.base import DatabaseUnavailable

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: backbone loaded and warmed up, inference worker alive, device usable (details: with a key)",
)
async def readyz(request: Request) -> JSONResponse:
    runtime = getattr(request.app.state, "chorus", None)
    if runtime is None or not runtime.ready():
        return JSONResponse({"status": "not_ready"}, status_code=503, headers={"Retry-After": "5"})
    backbone = runtime.backbone
    body: dict[str, object] = {"status": "ready"}
    if await _identified(runtime.auth, request.headers.get("authorization")):
        body.update(backbone=backbone.fingerprint, device=backbone.device, dtype=backbone.dtype)
    workers = await runtime.inference.workers()
    if workers is not None:  # a cluster ingress: ready while at least one worker runs
        body["workers"] = workers  # why it is (not) ready: public
        if not workers:
            return JSONResponse({**body, "status": "not_ready"}, status_code=503, headers={"Retry-After": "5"})
    return JSONResponse(body)


async def _identified(auth: Authenticator, authorization: str | None) -> bool:
    """Whether the caller may see what runs here (backbone fingerprint, device, dtype): any valid key, or anyone
    on a keyless development server. Others get the status only; a probe never gets 401 for a wrong key."""
    if auth.open:
        return True
    if not authorization:
        return False
    try:
        return not (await auth.authenticate(authorization)).anonymous
    except (ApiError, DatabaseUnavailable):
        return False


@router.get("/metrics", summary="Prometheus metrics (role metrics or admin)", response_class=Response)
async def metrics(request: Request, who: Annotated[Principal, Depends(current_principal)]) -> Response:
    who.require("scrape")
    runtime = request.app.state.chorus
    body = await runtime.inference.metrics(runtime.metrics.registry)  # a cluster: every worker's too (`replica`)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
