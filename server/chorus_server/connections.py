"""Connection hygiene for `chorus serve`: uvicorn's connection cap, keep-alive and shutdown timeouts; a deadline for
a connection to deliver its request head (uvicorn has none: idle or slowloris connections otherwise stay open
forever); the open-file limit raised to what the system allows; and running out of file descriptors reported
once a minute instead of once per failed accept (which floods the log)."""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import time
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from chorus_server.http_shutdown import shutdown_began
from chorus_server.settings import RealtimeSettings, ServerSettings
from chorus_server.ws_shutdown import draining_websockets

logger = logging.getLogger(__name__)


def raise_open_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


class OutOfFilesOncePerMinute(logging.Filter):
    """Lets one 'too many open files' record through per minute, with a count of those held back."""

    def __init__(self, every: float = 60.0, clock=time.monotonic):
        super().__init__()
        self.every, self.clock = every, clock
        self.last = -float("inf")
        self.suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if not _out_of_files(record):
            return True
        now = self.clock()
        if now - self.last < self.every:
            self.suppressed += 1
            return False
        self.last = now
        record.msg = (
            f"out of file descriptors (EMFILE): new connections are refused; raise the open-file limit or lower "
            f"CHORUS_SERVER__MAX_CONNECTIONS ({self.suppressed} such errors since the last report)"
        )
        record.args = ()
        record.exc_info = None
        record.exc_text = None
        self.suppressed = 0
        return True


def _out_of_files(record: logging.LogRecord) -> bool:
    exc = record.exc_info[1] if record.exc_info else None
    if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE):
        return True
    return "Too many open files" in record.getMessage()


def install_log_filter() -> OutOfFilesOncePerMinute:
    flood_filter = OutOfFilesOncePerMinute()
    for name in ("asyncio", "uvicorn.error"):
        logging.getLogger(name).addFilter(flood_filter)
    return flood_filter


class H11WithHeadDeadline(H11Protocol):
    """uvicorn's h11 protocol, plus: a connection must deliver a complete request head within `head_timeout`
    seconds of opening (and of finishing its previous response), or it is closed; and a request in progress when
    the server begins to shut down is told so (`http_shutdown.py` answers it 503 if it cannot finish in time)."""

    head_timeout: float = 10.0
    _head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_deadline()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        upgraded = self.transport.get_protocol() is not self  # a WebSocket now owns the connection
        if self._head_deadline is not None and (
            upgraded or (self.cycle is not None and not self.cycle.response_complete)
        ):
            self._head_deadline.cancel()  # a request head arrived
            self._head_deadline = None

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_head_deadline()

    def shutdown(self) -> None:
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            shutdown_began(cycle.scope)  # type: ignore[arg-type]
        super().shutdown()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None
        super().connection_lost(exc)

    def _arm_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
        self._head_deadline = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _head_timed_out(self) -> None:
        self._head_deadline = None
        if not self.transport.is_closing():
            self.transport.close()


def shutdown_window(settings: ServerSettings) -> int:
    """uvicorn's graceful-shutdown window in whole seconds (it takes an int)."""
    return max(1, round(settings.shutdown_timeout_seconds))


def uvicorn_options(settings: ServerSettings, realtime: RealtimeSettings) -> dict[str, Any]:
    """The connection settings as `uvicorn.run` / `uvicorn.Config` keyword arguments."""
    protocol = type("H11", (H11WithHeadDeadline,), {"head_timeout": settings.header_timeout_seconds})
    shutdown_timeout = shutdown_window(settings)
    return {
        "http": protocol,
        "ws": draining_websockets(shutdown_timeout),  # realtime sessions finish their open turn on SIGTERM
        # The realtime route answers a message over `max_event_bytes` with an `error` event, then close 1009; one
        # over twice that is cut by the WebSocket layer before it is read whole (a bare close 1009), which bounds
        # what a connection can make the server hold.
        "ws_max_size": 2 * realtime.max_event_bytes,
        "limit_concurrency": settings.max_connections,  # beyond: 503 at once, not a growing backlog
        "timeout_keep_alive": max(1, round(settings.idle_timeout_seconds)),
        "timeout_graceful_shutdown": shutdown_timeout,
    }
