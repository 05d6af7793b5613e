"""Admission before the body: every `/v1/` request is authenticated from its headers alone, and a transcription
is checked against its tenant's request rate, concurrency and share of a full queue, before a byte of its body
is read — so a refused request costs the server no upload, no parsing and no decoding. Transcription answers
carry the tenant's `x-ratelimit-*` headers. Classifications (`audio_paths` holds both) are admitted the same way.

Admin routes that take a body (creating keys, setting tenant limits) check the caller's role here too: a
non-admin's request is refused with 403 — and audited — before a byte of its body is read, so a malformed body
cannot turn the refusal into a 422 and a slow one cannot hold a connection."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chorus_server.errors import ApiError, as_api_error, error_response
from chorus_server.tenants.base import DatabaseUnavailable

if TYPE_CHECKING:
    from chorus_server.auth import Principal
    from chorus_server.runtime import Runtime

# (method, path, audit action, what is refused) of the admin-only routes that read a body; the path's group, if
# any, is the target.
MANAGE_WITH_BODY = (
    ("POST", re.compile(r"/v1/keys/?"), "key.create", "manage API keys"),
    ("PUT", re.compile(r"/v1/tenants/([^/]+)/limits/?"), "tenant.limits", "change tenant limits"),
)


class Admission:
    def __init__(self, app: ASGIApp, runtime: Callable[[], Runtime | None], audio_paths: Collection[str]):
        """`audio_paths`: the endpoints that run audio through the backbone (rates, concurrency, queue share)."""
        self.app, self.runtime, self.audio_paths = app, runtime, frozenset(audio_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        runtime = self.runtime() if scope["type"] == "http" else None
        if runtime is None or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        authorization = headers.get(b"authorization")
        try:
            who = await runtime.auth.authenticate(authorization.decode("latin-1") if authorization else None)
        except (ApiError, DatabaseUnavailable) as error:
            await error_response(as_api_error(error))(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = who
        if not await _may_send_body(runtime, who, scope, receive, send):
            return
        if scope["path"] not in self.audio_paths or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        quotas = runtime.quotas
        try:
            who.require("transcribe")
            runtime.transcriber.check_queue(who.tenant)  # a tenant over its share of a full queue: 503 now
            # Off the loop: a tenant's first request of the day reads its limits and usage from the database.
            lease = await asyncio.to_thread(quotas.admit_request, who.tenant)
        except (ApiError, DatabaseUnavailable) as failure:
            refusal = as_api_error(failure)
            limits = await asyncio.to_thread(quotas.headers_if_known, who.tenant, True)
            refusal.headers = {**(refusal.headers or {}), **limits}
            runtime.metrics.observe_refusal(who.tenant, refusal.code or str(refusal.status_code))
            await error_response(refusal)(scope, receive, send)
            return

        async def send_with_limits(message: Message) -> None:
            if message["type"] == "http.response.start":  # the buckets may be the database's: off the loop
                response_headers = MutableHeaders(scope=message)
                for name, value in (await asyncio.to_thread(quotas.headers_if_known, who.tenant)).items():
                    response_headers[name] = value
            await send(message)

        try:
            await self.app(scope, receive, send_with_limits)
        finally:
            await asyncio.to_thread(quotas.release, who.tenant, lease)


async def _may_send_body(runtime: Runtime, who: Principal, scope: Scope, receive: Receive, send: Send) -> bool:
    """False (after answering 403) when `who` may not call the admin route that would read this body."""
    for method, path, action, what in MANAGE_WITH_BODY:
        match = path.fullmatch(scope["path"]) if scope["method"] == method else None
        if match is None or "manage" in who.permissions:
            continue
        try:  # audited like the route's own refusals; the body, and so e.g. the new key's tenant, is never read
            async with runtime.audit.action(Request(scope), action, match.group(1) if match.groups() else ""):
                who.require("manage", what)
        except ApiError as error:
            await error_response(error)(scope, receive, send)
            return False
    return True
