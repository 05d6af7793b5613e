"""Refuse request paths with control characters before routing. Starlette's route patterns end in `$`, which
matches before a final newline, so `/v1/adapters/fr%0A` would otherwise be routed as `fr` — one resource with two
spellings. An error is the only safe answer."""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Receive, Scope, Send

from chorus_server.errors import ApiError, error_response

CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class PathGuard:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and CONTROL.search(scope["path"]):
            error = ApiError(400, "the request path contains control characters", "invalid_path")
            await error_response(error)(scope, receive, send)
            return
        await self.app(scope, receive, send)
