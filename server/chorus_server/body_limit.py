"""Request-body limits enforced while the body streams in, so an oversized upload is refused without being
buffered. A declared Content-Length over the limit is refused before a byte of the body is read."""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chorus_server.errors import ApiError, error_response


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"request body exceeds the limit of {limit} bytes", "file_too_large")


class BodyLimit:
    """ASGI middleware; `limit_for(method, path)` gives the byte limit of each request."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str, str], int]):
        self.app, self.limit_for = app, limit_for

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

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # Raised inside body parsing; ApiError passes through FastAPI's parsing unchanged -> 413.
                    raise _too_large(limit)
            return message

        await self.app(scope, limited_receive, send)
