"""Unknown paths get a 404 that names the right one, before any body is read.

Without this, a wrong base URL (`--url http://host:8000/v1`, natural because OpenAI's `base_url` ends in `/v1`; an
SDK `base_url` lacking `/v1`; a typo) met the small-body limit of unknown routes first and was answered "413:
request body exceeds the limit of 65536 bytes" for any real audio file.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence

from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

from chorus_server.errors import ApiError, error_response


def suggestion(path: str, known: Sequence[str]) -> str | None:
    """The known path `path` most likely meant: one it ends with or that ends with it (a base URL with an extra or
    a missing prefix), else the closest spelling."""
    stripped = path.rstrip("/") or "/"
    tails = [p for p in known if p != "/" and stripped != "/" and (stripped.endswith(p) or p.endswith(stripped))]
    if tails:
        return max(tails, key=len)
    close = difflib.get_close_matches(stripped, known, n=1, cutoff=0.75)
    return close[0] if close else None


def not_found(method: str, path: str, known: Sequence[str]) -> ApiError:
    hint = suggestion(path, known)
    message = f"no such endpoint: {method} {path}"
    message += f"; did you mean {hint}?" if hint is not None else "; the API is described at GET /docs"
    if path.startswith("/v1/v1/") or (hint is not None and hint.startswith("/v1/") and not path.startswith("/v1/")):
        message += (
            " (the chorus CLI and SDK take the server's root URL, e.g. http://127.0.0.1:8000; OpenAI SDKs take "
            "it with /v1, e.g. base_url='http://127.0.0.1:8000/v1')"
        )
    return ApiError(404, message, "route_not_found")


class UnknownRoutes:
    """ASGI middleware; `routes()` gives the app's routes and `paths()` their paths (the OpenAPI schema's), both
    read per unknown request, so routes added later count."""

    def __init__(self, app: ASGIApp, routes: Callable[[], Sequence[BaseRoute]], paths: Callable[[], Sequence[str]]):
        self.app, self.routes, self.paths = app, routes, paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if any(route.matches(scope)[0] != Match.NONE for route in self.routes()):
            await self.app(scope, receive, send)
            return
        known = sorted(self.paths())
        await error_response(not_found(scope["method"], scope["path"], known))(scope, receive, send)
