"""HTTP requests that cannot finish before the server stops get an answer, not a dropped connection.

On SIGTERM uvicorn stops accepting and lets every request in progress run, for at most its graceful-shutdown
window (`CHORUS_SERVER__SHUTDOWN_TIMEOUT_SECONDS`); then it cancels what still runs and exits, and a client whose
answer had not begun sees the connection close with nothing said ("Server disconnected without sending a
response"). Here the connection's protocol tells the request when the shutdown begins (`shutdown_began`, which
`connections.py` calls), and a request whose answer has not started `grace_seconds` later — inside uvicorn's
window — is cut short and answered 503 `server_shutting_down` with `Retry-After`, so the client knows to retry
on another replica. A request whose answer has begun (an SSE stream, say) runs on until uvicorn's deadline.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chorus_server.errors import ApiError, error_response

logger = logging.getLogger(__name__)

EXTENSION = "chorus.http_shutdown"


def shutdown_began(scope: dict[str, Any]) -> None:
    """Called by the connection's protocol when the server starts its graceful shutdown."""
    notify: Callable[[], None] | None = (scope.get("extensions") or {}).get(EXTENSION)
    if notify is not None:
        notify()


class AnswerBeforeShutdown:
    """ASGI middleware: a request still unanswered `grace_seconds` into the shutdown is answered 503."""

    def __init__(self, app: ASGIApp, grace_seconds: float):
        self.app, self.grace_seconds = app, grace_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        answered = cut = False
        timer: asyncio.TimerHandle | None = None

        def cut_short() -> None:
            nonlocal cut
            if not answered and task is not None:
                cut = True
                task.cancel()

        def notify() -> None:
            nonlocal timer
            if timer is None:
                timer = loop.call_later(self.grace_seconds, cut_short)

        async def answering(message: Message) -> None:
            nonlocal answered
            if message["type"] == "http.response.start":
                answered = True
            await send(message)

        scope.setdefault("extensions", {})[EXTENSION] = notify  # the same dict the protocol's cycle holds
        try:
            await self.app(scope, receive, answering)
        except asyncio.CancelledError:
            if not cut or task is None:
                raise
            task.uncancel()
            logger.warning(
                "%s %s: unfinished when the shutdown window ended; answered 503", scope["method"], scope["path"]
            )
            refusal = ApiError(
                503,
                "the server is shutting down and could not finish this request in time; retry it",
                "server_shutting_down",
                headers={"Retry-After": "1", "Connection": "close"},
            )
            await error_response(refusal)(scope, receive, send)
        finally:
            if timer is not None:
                timer.cancel()
