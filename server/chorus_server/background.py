"""A real uvicorn server on 127.0.0.1 in a background thread (a random free port): for tests, benchmarks and
embedding Chorus in another Python process."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn
from fastapi import FastAPI

from chorus_server.app import create_app
from chorus_server.settings import Settings


class BackgroundServer:
    """`with BackgroundServer(settings) as server:` → `server.url`, `server.app`; stops (draining) on exit."""

    def __init__(self, settings: Settings, start_timeout: float = 120.0):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.app: FastAPI = create_app(settings)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="chorus-uvicorn", daemon=True)
        self.start_timeout = start_timeout

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + self.start_timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the Chorus server did not start; see the log above")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(60)
