"""Request-body limits enforced while the body streams in, so an oversized or slow upload is refused without being
buffered or holding its connection. A declared Content-Length over the limit is refused before a byte of the body
is read. Once the app starts reading, the body must also arrive in time (`BodyPace`): no gap longer than `idle`,
all of it within `deadline`, and — after `grace` — at least `min_rate` bytes per second on average; otherwise 408.
The deadline and the rate are measured from the first read, not per piece: a client trickling a byte every few
seconds is cut off all the same. And one tenant may be sending at most `BodyReaders.per_tenant` bodies at once
(429 beyond), so a tenant with slow uploads cannot take every connection the server has.

An answer sent before its request's body was read to the end (a refusal) closes the connection: the rest of the
body would otherwise keep it open, uncounted and unread, for as long as the client cares to send it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chorus_server.errors import ApiError, error_response

UNAUTHENTICATED = ""  # the body-reader share of requests that carry no principal (outside /v1/)


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"request body exceeds the limit of {limit} bytes", "file_too_large")


@dataclass(frozen=True)
class BodyPace:
    """How fast a request body must arrive. `min_rate` 0: no rate check."""

    idle: float = 30.0
    deadline: float = 300.0
    min_rate: float = 1024.0
    grace: float = 10.0

    def due_in(self, started: float, received: int, now: float) -> tuple[float, ApiError]:
        """Seconds the next piece may take (<= 0: already late), and the 408 to answer if it takes longer."""
        due = [
            (self.idle, f"no request body data for {self.idle:g} s; send the body promptly"),
            (
                started + self.deadline - now,
                f"the request body was not complete after {self.deadline:g} s; send it faster or in smaller parts",
            ),
        ]
        if self.min_rate > 0:  # `received` bytes keep the average above the rate until started + received / rate
            rate_due = started + max(self.grace, received / self.min_rate) - now
            due.append(
                (rate_due, f"the request body arrived slower than {self.min_rate:g} bytes/s; send it at full speed")
            )
        seconds, message = min(due, key=lambda d: d[0])
        return seconds, ApiError(408, message, "body_timeout")


class BodyReaders:
    """Request bodies being received per tenant. Used on the event loop only, so it needs no lock."""

    def __init__(self, per_tenant: int):
        self.per_tenant = per_tenant
        self.reading: dict[str, int] = {}

    def take(self, tenant: str) -> None:
        held = self.reading.get(tenant, 0)
        if held >= self.per_tenant:
            raise ApiError(
                429,
                f"this tenant is already sending {held} request bodies, the most allowed at once; "
                "wait for one to finish (CHORUS_LIMITS__BODY_READERS_PER_TENANT)",
                "too_many_uploads",
                headers={"Retry-After": "1"},
            )
        self.reading[tenant] = held + 1

    def give_back(self, tenant: str) -> None:
        self.reading[tenant] -= 1
        if not self.reading[tenant]:
            del self.reading[tenant]


def _tenant(scope: Scope) -> str:
    """The caller's tenant, as the Admission middleware noted it (it runs inside this one, before any read)."""
    who = scope.get("state", {}).get("principal")
    return who.tenant if who is not None else UNAUTHENTICATED


class BodyLimit:
    """ASGI middleware; `limit_for(method, path)` gives the byte limit of each request. `refused(tenant, code)`
    counts a reader-cap refusal (a metric)."""

    def __init__(
        self,
        app: ASGIApp,
        limit_for: Callable[[str, str], int],
        pace: BodyPace | None = None,
        readers: BodyReaders | None = None,
        refused: Callable[[str, str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.app, self.limit_for, self.pace, self.readers = app, limit_for, pace or BodyPace(), readers
        self.refused, self.clock = refused, clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["method"], scope["path"])
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        has_body = b"transfer-encoding" in headers or (declared is not None and declared.strip(b"0") != b"")
        received = 0
        started: float | None = None
        body_done = not has_body

        async def send_closing_early(message: Message) -> None:
            if message["type"] == "http.response.start" and not body_done:
                MutableHeaders(scope=message)["connection"] = "close"
            await send(message)

        if declared is not None and declared.isdigit() and int(declared) > limit:
            await error_response(_too_large(limit))(scope, receive, send_closing_early)
            return
        holder: str | None = None  # the tenant whose reader slot this request holds

        def finish() -> None:
            nonlocal holder, body_done
            body_done = True
            if holder is not None and self.readers is not None:
                self.readers.give_back(holder)
                holder = None

        async def limited_receive() -> Message:
            nonlocal received, started, holder
            if body_done:  # after the body only a disconnect can arrive; waiting for it has no deadline
                return await receive()
            now = self.clock()
            if started is None:
                started = now
                if self.readers is not None:
                    tenant = _tenant(scope)
                    try:
                        self.readers.take(tenant)
                    except ApiError as error:
                        if self.refused is not None:
                            self.refused(tenant, error.code or "429")
                        raise
                    holder = tenant
            wait, late = self.pace.due_in(started, received, now)
            try:
                message = await asyncio.wait_for(receive(), max(wait, 0.0))
            except TimeoutError:
                finish()  # the connection will close with the answer: its slot is free now
                raise late from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                finish()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # Raised inside body parsing; ApiError passes through FastAPI's parsing unchanged -> 413.
                    finish()
                    raise _too_large(limit)
            return message

        try:
            await self.app(scope, limited_receive, send_closing_early)
        finally:
            finish()
