"""Request-body limits enforced while the body streams in, so an oversized upload is refused without being
buffered. A declared Content-Length over the limit is refused before a byte of the body is read. A body that
stalls (no piece for `timeout` seconds: a slow or idle client) is refused with 408, freeing its connection."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chorus_server.errors import ApiError, error_response


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"request body exceeds the limit of {limit} bytes", "file_too_large")


class BodyLimit:
    """ASGI middleware; `limit_for(method, path)` gives the byte limit of each request."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str, str], int], timeout: float = 30.0):
        self.app, self.limit_for, self.timeout = app, limit_for, timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["method"], scope["path"])
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await error_response(_too_large(limit))(scope, receive, send)
            return
        received = 0
        body_done = False

        async def limited_receive() -> Message:
            nonlocal received, body_done
            if body_done:  # after the body only a disconnect can arrive; waiting for it has no deadline
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.timeout)
            except TimeoutError:
                raise ApiError(
                    408, f"no request body data for {self.timeout:g} s; send the body promptly", "body_timeout"
                ) from None
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # Raised inside body parsing; ApiError passes through FastAPI's parsing unchanged -> 413.
                    raise _too_large(limit)
            return message

        await self.app(scope, limited_receive, send)
