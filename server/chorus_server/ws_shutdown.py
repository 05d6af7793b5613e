"""WebSockets that finish their work when the server stops.

On SIGTERM uvicorn stops accepting, then asks every connection to shut down: an HTTP request in progress runs to
its end, but a WebSocket is closed at once (1012), so a realtime session's open turn was lost. Here the
WebSocket protocol instead tells a route that claimed the `chorus.shutdown` extension (`ShutdownNotice.event`)
and leaves the closing to it: the realtime route commits its open turn, sends the transcript and closes with
1012 within `ShutdownNotice.seconds`. A route that has not claimed it, or has not finished `grace` seconds
later, is closed as before. Both bounds sit inside uvicorn's own shutdown deadline
(`CHORUS_SERVER__SHUTDOWN_TIMEOUT_SECONDS`), after which it cancels what still runs.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, cast

from starlette.websockets import WebSocket
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

EXTENSION = "chorus.shutdown"


@dataclass
class ShutdownNotice:
    """Per connection: set `claimed` to close the socket yourself on shutdown; `event` is set when it begins."""

    seconds: float  # what the route may take to finish before it closes
    event: asyncio.Event = field(default_factory=asyncio.Event)
    claimed: bool = False


def shutdown_notice(websocket: WebSocket) -> ShutdownNotice | None:
    """The connection's notice (None under a server without this protocol: it closes the socket itself)."""
    notice = websocket.scope.get("extensions", {}).get(EXTENSION)
    return notice if isinstance(notice, ShutdownNotice) else None


class DrainingWebSockets(WebSocketsSansIOProtocol):
    """uvicorn's default WebSocket protocol, but a shutdown lets a claiming route finish first."""

    drain_seconds: float = 24.0  # `uvicorn_options` sets both from the shutdown timeout
    grace_seconds: float = 27.0
    notice: ShutdownNotice | None = None

    async def run_asgi(self) -> None:
        self.notice = ShutdownNotice(self.drain_seconds)
        cast(dict[str, Any], self.scope["extensions"])[EXTENSION] = self.notice
        await super().run_asgi()

    def shutdown(self) -> None:
        notice = self.notice
        if notice is not None and notice.claimed and not notice.event.is_set():
            notice.event.set()
            self.loop.call_later(self.grace_seconds, self._shutdown_now)
            return
        super().shutdown()

    def _shutdown_now(self) -> None:
        if not self.transport.is_closing():
            super().shutdown()


def draining_websockets(shutdown_timeout: int) -> type[DrainingWebSockets]:
    """The protocol class for a server whose graceful shutdown lasts `shutdown_timeout` seconds."""
    attributes = {"drain_seconds": 0.8 * shutdown_timeout, "grace_seconds": 0.9 * shutdown_timeout}
    return type("DrainingWebSockets", (DrainingWebSockets,), attributes)
