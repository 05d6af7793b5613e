"""Real Chorus servers on 127.0.0.1 at a free port, for tests, benchmarks and embedding Chorus in a Python process.

`BackgroundServer` runs the app in this process on a uvicorn thread (callers can reach `server.app`);
`ServerProcess` runs `chorus serve` as its own process, as deployed (signals, a separate interpreter, its own log).
Both return once `/readyz` answers 200 and stop (draining) when their `with` block ends.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from chorus_server.app import create_app
from chorus_server.connections import uvicorn_options
from chorus_server.settings import Settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def is_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
            return int(response.status) == 200
    except (urllib.error.URLError, OSError):
        return False


class BackgroundServer:
    """`with BackgroundServer(settings) as server:` → `server.url`, `server.app`; stops (draining) on exit."""

    def __init__(self, settings: Settings, start_timeout: float = 120.0):
        self.port = free_port()
        self.app: FastAPI = create_app(settings)
        options = uvicorn_options(settings.server, settings.realtime)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning", **options)
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


class ServerProcess:
    """`with ServerProcess(env, log_dir) as server:` → `server.url`, `server.process`, `server.log()`.

    Runs `python -m chorus_server.cli serve` (the `chorus serve` command) in `log_dir` with `env` added to this
    process's environment (`CHORUS_*` settings); its output goes to a log file there. Stops with SIGTERM on exit.
    """

    def __init__(self, env: Mapping[str, str], log_dir: Path, start_timeout: float = 300.0, args: tuple[str, ...] = ()):
        self.port = free_port()
        self.env = {**os.environ, **env}
        # The child runs in `log_dir`: a relative PYTHONPATH entry would name a directory there (and the child would
        # import an installed copy of Chorus instead of the caller's).
        paths = self.env.get("PYTHONPATH", "").split(os.pathsep)
        self.env["PYTHONPATH"] = os.pathsep.join(os.path.abspath(path) for path in paths if path)
        self.log_dir = log_dir
        self.log_path = log_dir / f"chorus-{self.port}.log"
        self.start_timeout = start_timeout
        self.command = [sys.executable, "-m", "chorus_server.cli", "serve", "--port", str(self.port), *args]
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> ServerProcess:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command, env=self.env, cwd=self.log_dir, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + self.start_timeout
        while not is_ready(self.url):
            if self.process.poll() is not None:
                raise RuntimeError(f"Chorus exited with {self.process.returncode}: {self.log()[-4000:]}")
            if time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError(f"Chorus not ready after {self.start_timeout} s: {self.log()[-4000:]}")
            time.sleep(0.2)  # waiting for a process to come up, not timing a result
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
