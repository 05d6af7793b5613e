"""Admission before the body: every `/v1/` request is authenticated from its headers alone, and a transcription
is checked against its tenant's request rate, concurrency and share of a full queue, before a byte of its body
is read — so a refused request costs the server no upload, no parsing and no decoding. Transcription answers
carry the tenant's `x-ratelimit-*` headers. Classifications (`audio_paths` holds both) are admitted the same way."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import TYPE_CHECKING

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chorus_server.errors import ApiError, error_response

if TYPE_CHECKING:
    from chorus_server.runtime import Runtime


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
            who = runtime.auth.principal_for(authorization.decode("latin-1") if authorization else None)
        except ApiError as error:
            await error_response(error)(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = who
        if scope["path"] not in self.audio_paths or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        quotas = runtime.quotas
        try:
            who.require("transcribe")
            runtime.transcriber.check_queue(who.tenant)  # a tenant over its share of a full queue: 503 now
            quotas.admit_request(who.tenant)
        except ApiError as error:
            error.headers = {**(error.headers or {}), **quotas.headers(who.tenant)}
            runtime.metrics.observe_refusal(who.tenant, error.code or str(error.status_code))
            await error_response(error)(scope, receive, send)
            return

        async def send_with_limits(message: Message) -> None:
            if message["type"] == "http.response.start":
                response_headers = MutableHeaders(scope=message)
                for name, value in quotas.headers(who.tenant).items():
                    response_headers[name] = value
            await send(message)

        try:
            await self.app(scope, receive, send_with_limits)
        finally:
            quotas.release(who.tenant)
