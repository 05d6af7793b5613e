"""`GET /v1/realtime?intent=transcription`: OpenAI's Realtime transcription session over a WebSocket.

Authenticated like the HTTP API, from the `Authorization: Bearer` header or, for browsers (which cannot set
headers on a WebSocket), from the subprotocol `openai-insecure-api-key.<key>` beside `realtime`. A session
counts as one of its tenant's concurrent requests; refusals before the upgrade are plain HTTP errors with the
JSON envelope. The protocol itself lives in `chorus_server.live.session`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from chorus_server.auth import Principal
from chorus_server.errors import ApiError, error_response
from chorus_server.live.frames import FrameError, check_depth, check_size, frame_bytes
from chorus_server.live.protocol import error_event
from chorus_server.live.session import RealtimeSession
from chorus_server.runtime import Runtime
from chorus_server.ws_shutdown import ShutdownNotice, shutdown_notice

logger = logging.getLogger(__name__)
router = APIRouter(tags=["realtime"])

KEY_PROTOCOL = "openai-insecure-api-key."
REALTIME_PROTOCOL = "realtime"


class SessionCounts:
    """Open realtime sessions per tenant, against `max_sessions_per_tenant`."""

    def __init__(self, limit: int):
        self.limit = limit
        self.open: dict[str, int] = {}

    def take(self, tenant: str) -> None:
        if self.open.get(tenant, 0) >= self.limit:
            raise ApiError(
                429,
                f"this tenant has {self.limit} realtime sessions open, the most allowed; close one first",
                "too_many_sessions",
            )
        self.open[tenant] = self.open.get(tenant, 0) + 1

    def give_back(self, tenant: str) -> None:
        self.open[tenant] -= 1
        if not self.open[tenant]:
            del self.open[tenant]


def authorization(websocket: WebSocket) -> str | None:
    """The bearer header, else the key a browser put in its subprotocols."""
    header = websocket.headers.get("authorization")
    if header:
        return header
    for protocol in websocket.scope.get("subprotocols", []):
        if protocol.startswith(KEY_PROTOCOL) and len(protocol) > len(KEY_PROTOCOL):
            return f"Bearer {protocol[len(KEY_PROTOCOL) :]}"
    return None


async def admit(runtime: Runtime, websocket: WebSocket) -> tuple[Principal, str]:
    """Who is calling and may it open a session now (raises ApiError: 400, 401, 403, 429). The key check and the
    rate limit may read the tenant database: neither blocks the event loop."""
    if websocket.query_params.get("intent") != "transcription":
        raise ApiError(
            400,
            "Chorus serves realtime transcription sessions only: connect to /v1/realtime?intent=transcription",
            "unsupported_value",
            "intent",
        )
    who = await runtime.auth.authenticate(authorization(websocket))
    who.require("transcribe")
    counts = sessions(websocket, runtime)
    counts.take(who.tenant)
    try:
        lease = await asyncio.to_thread(runtime.quotas.admit_request, who.tenant)
    except ApiError:
        counts.give_back(who.tenant)
        raise
    return who, lease


def sessions(websocket: WebSocket, runtime: Runtime) -> SessionCounts:
    state = websocket.app.state
    if getattr(state, "realtime_sessions", None) is None:
        state.realtime_sessions = SessionCounts(runtime.settings.realtime.max_sessions_per_tenant)
    counts: SessionCounts = state.realtime_sessions
    return counts


async def refuse(websocket: WebSocket, error: ApiError) -> None:
    """An HTTP answer instead of the upgrade (where the server can send one), else a policy close."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(error_response(error))
    else:
        await websocket.close(code=1008, reason=error.message[:120])


@router.websocket("/v1/realtime")
async def realtime(websocket: WebSocket) -> None:
    runtime: Runtime = websocket.app.state.chorus
    try:
        who, lease = await admit(runtime, websocket)
    except ApiError as error:
        runtime.metrics.observe_realtime_refusal(error.code or str(error.status_code))
        await refuse(websocket, error)
        return
    offered = websocket.scope.get("subprotocols", [])
    lock = asyncio.Lock()

    async def send(event: dict[str, Any]) -> None:
        async with lock:  # the reader and the result task both send
            await websocket.send_text(json.dumps(event, ensure_ascii=False))

    session = RealtimeSession(runtime, who, send)
    runtime.metrics.realtime_sessions.inc()
    session.live.opened()
    notice = shutdown_notice(websocket)
    try:
        await websocket.accept(subprotocol=REALTIME_PROTOCOL if REALTIME_PROTOCOL in offered else None)
        await session.start()
        if notice is not None:
            notice.claimed = True  # on shutdown, the protocol leaves the closing to `serve`
        await serve(websocket, session, send, runtime.settings.realtime.idle_timeout_seconds, notice)
    except WebSocketDisconnect:
        pass
    finally:
        if notice is not None:
            notice.claimed = False
        await session.close()
        runtime.metrics.realtime_sessions.dec()
        session.live.closed()
        await asyncio.to_thread(runtime.quotas.release, who.tenant, lease)
        sessions(websocket, runtime).give_back(who.tenant)


IDLE, STOPPING, LOST = "idle", "stopping", "lost"


async def serve(
    websocket: WebSocket, session: RealtimeSession, send: Any, idle_timeout: float, notice: ShutdownNotice | None
) -> None:
    """Read client events until the client leaves, stays silent for `idle_timeout` seconds, the server stops or
    the worker serving the session stops (the session has then sent an `error` event)."""
    stopping = asyncio.ensure_future(notice.event.wait()) if notice is not None else None
    lost = asyncio.ensure_future(session.lost.wait())
    try:
        while True:
            message = await next_message(websocket, idle_timeout, stopping, lost)
            if message == STOPPING and notice is not None:
                await finish(websocket, session, notice.seconds)
                return
            if message == LOST:
                await websocket.close(code=1011, reason="worker lost")
                return
            if isinstance(message, str):
                session.runtime.metrics.observe_realtime_refusal("idle_timeout")
                await send(error_event(f"no client event for {idle_timeout:g} s; closing the session", "idle_timeout"))
                await websocket.close(code=1000, reason="idle timeout")
                return
            if message["type"] == "websocket.disconnect" or not await take(websocket, session, send, message):
                return
    finally:
        lost.cancel()
        if stopping is not None:
            stopping.cancel()


async def next_message(
    websocket: WebSocket, idle_timeout: float, stopping: asyncio.Future[Any] | None, lost: asyncio.Future[Any]
) -> dict[str, Any] | str:
    """The client's next message; STOPPING once the server stops, LOST once the session's worker is gone, IDLE
    after `idle_timeout` s without one."""
    receiving = asyncio.ensure_future(websocket.receive())
    waiting: set[asyncio.Future[Any]] = {receiving, lost} if stopping is None else {receiving, stopping, lost}
    done, _ = await asyncio.wait(waiting, timeout=idle_timeout, return_when=asyncio.FIRST_COMPLETED)
    if receiving in done:
        return dict(receiving.result())
    receiving.cancel()  # nothing is lost: an unread message stays queued in the protocol
    if lost in done:
        return LOST
    return STOPPING if done else IDLE


async def finish(websocket: WebSocket, session: RealtimeSession, seconds: float) -> None:
    """The server is stopping: the open turn is committed and transcribed (within `seconds`), then close 1012."""
    if not await session.finish(seconds):
        logger.warning("realtime session %s: closed by the shutdown before its last transcript was sent", session.id)
    await websocket.close(code=1012, reason="server shutting down")


async def take(websocket: WebSocket, session: RealtimeSession, send: Any, message: dict[str, Any]) -> bool:
    """One client message: checked (size, then nesting), then handled. False: the session is closed."""
    text = message.get("text")
    try:
        # Before anything else looks at the frame: parsing or decoding it is what a hostile frame costs.
        check_size(frame_bytes(text, message.get("bytes")), session.settings.max_event_bytes)
        if text is None:
            await send(error_event("client events are JSON text frames, not binary", "invalid_json"))
            return True
        check_depth(text)
    except FrameError as refused:
        await refuse_frame(websocket, session, send, refused)
        return False
    await session.handle(text)
    return True


async def refuse_frame(websocket: WebSocket, session: RealtimeSession, send: Any, refused: FrameError) -> None:
    """An `error` event, one log line and a close: a frame this malformed ends the session."""
    logger.warning(
        "realtime session %s (tenant %s): %s; closing with %d",
        session.id,
        session.who.tenant,
        refused.message,
        refused.close_code,
    )
    session.runtime.metrics.observe_realtime_refusal(refused.code)
    await send(error_event(refused.message, refused.code))
    await websocket.close(code=refused.close_code, reason=refused.code)
