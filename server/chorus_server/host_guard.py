"""A keyless server answers only to loopback names and to its own web origin.

Without API keys anyone who reaches the server may upload and delete adapters and read metrics; `chorus serve`
allows that on loopback only. A web page can still reach loopback: through DNS rebinding (its own name, resolved
to 127.0.0.1, so the browser treats the server as the page's origin) or plainly (a form post, a WebSocket,
which browsers open to any origin). So while the server has no keys:

- the `Host` must be a loopback name: `localhost`, `*.localhost`, a loopback IP (`127.0.0.1`, `[::1]`), any port;
  otherwise 421 `misdirected_request` (a rebinding page's requests carry its own name);
- a state-changing request (POST, PUT, PATCH, DELETE) and a WebSocket handshake may carry no `Origin` (curl, SDKs)
  or the server's own (the console at `/`); any other, `null` included, gets 403 `cross_origin_request`.

With keys nothing here applies: a request needs a key the page does not have, and the server usually sits behind
a proxy under a public name. WebSockets from other origins are accepted too: the key travels in a header or the
subprotocol, never in a cookie, so a page cannot borrow the user's (browser apps with their own key need this).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from chorus_server.errors import ApiError, error_response

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}


def split_host(value: str, scheme: str) -> tuple[str, int | None] | None:
    """`Host` header value -> (lower-case name without a final dot, port or the scheme's default); None if invalid."""
    try:
        parts = urlsplit(f"//{value}")
        name, port = parts.hostname, parts.port
    except ValueError:
        return None
    if not name or parts.username is not None or parts.path or parts.query or parts.fragment:
        return None
    return name.rstrip("."), port if port is not None else DEFAULT_PORTS.get(scheme)


def is_loopback_name(name: str) -> bool:
    if name == "localhost" or name.endswith(".localhost"):  # RFC 6761: always loopback
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def same_origin(origin: str, host: tuple[str, int | None]) -> bool:
    """Whether `Origin` names the server the request came to (scheme aside: a proxy may have ended TLS)."""
    try:
        parts = urlsplit(origin)
        name, port = parts.hostname, parts.port
    except ValueError:
        return False
    if not name or parts.scheme not in DEFAULT_PORTS:
        return False
    return (name.rstrip("."), port if port is not None else DEFAULT_PORTS[parts.scheme]) == host


def refusal(scope: Scope) -> ApiError | None:
    """Why a keyless server refuses this request (None: it may go on)."""
    headers = {
        name.decode(): value.decode("latin-1") for name, value in scope["headers"] if name in (b"host", b"origin")
    }
    given = headers.get("host", "")
    host = split_host(given, scope.get("scheme", "http"))
    if host is None or not is_loopback_name(host[0]):
        return ApiError(
            421,
            f"this server has no API keys, so it answers only to loopback names (localhost, 127.0.0.1, [::1]), not "
            f"to Host {given[:100]!r}; connect through localhost, or create an API key (`chorus keys create`) to "
            "serve other names",
            "misdirected_request",
        )
    origin = headers.get("origin")
    checked = scope["type"] == "websocket" or scope.get("method") in STATE_CHANGING
    if checked and origin is not None and not same_origin(origin, host):
        return ApiError(
            403,
            f"this server has no API keys, so it refuses changes and WebSockets from other web pages (Origin "
            f"{origin[:100]!r}); use the console this server serves at /, a client that sends no Origin, or create "
            "an API key (`chorus keys create`)",
            "cross_origin_request",
        )
    return None


class HostGuard:
    """ASGI middleware; `keyless()` says whether the server has no keys now (False while it is starting)."""

    def __init__(self, app: ASGIApp, keyless: Callable[[], bool]):
        self.app, self.keyless = app, keyless

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or not self.keyless():
            await self.app(scope, receive, send)
            return
        error = refusal(scope)
        if error is None:
            await self.app(scope, receive, send)
        elif scope["type"] == "http":
            await error_response(error)(scope, receive, send)
        elif "websocket.http.response" in scope.get("extensions", {}):
            await receive()  # websocket.connect
            await error_response(error)(scope, receive, send)  # an HTTP answer instead of the upgrade
        else:
            await receive()
            await send({"type": "websocket.close", "code": 1008, "reason": error.code})
