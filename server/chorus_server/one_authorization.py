"""Refuse a request that carries more than one `Authorization` header (400, everywhere). Different layers used to
read different ones — the `/v1/` routes the last, `/metrics` the first — so which key a request acted with
depended on where it went; one header, one answer."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from chorus_server.errors import ApiError, error_response


class OneAuthorization:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            found = sum(1 for name, _ in scope["headers"] if name.lower() == b"authorization")
            if found > 1:
                error = ApiError(
                    400,
                    f"the request carries {found} Authorization headers; send exactly one: 'Bearer <key>'",
                    "duplicate_authorization",
                )
                await _refuse(scope, receive, send, error)
                return
        await self.app(scope, receive, send)


async def _refuse(scope: Scope, receive: Receive, send: Send, error: ApiError) -> None:
    if scope["type"] == "http":
        await error_response(error)(scope, receive, send)
        return
    websocket = WebSocket(scope, receive, send)
    if "websocket.http.response" in scope.get("extensions", {}):
        await websocket.send_denial_response(error_response(error))
    else:
        await websocket.close(code=1008, reason=error.message[:120])
