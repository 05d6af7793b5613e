"""A real Chorus server (uvicorn subprocess on 127.0.0.1) with the tiny random model, for client integration tests."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running_server(env: dict[str, str], workdir: Path, startup_timeout: float = 120.0) -> Iterator[str]:
    """Start `uvicorn --factory chorus_server.app:create_app` with `CHORUS_*` settings; yield its URL once ready."""
    port = free_port()
    log = (workdir / f"server-{port}.log").open("w")
    command = [sys.executable, "-m", "uvicorn", "--factory", "chorus_server.app:create_app", "--host", "127.0.0.1"]
    proc = subprocess.Popen(
        [*command, "--port", str(port), "--log-level", "warning"],
        cwd=workdir,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}: {log_text(workdir, port)}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready after {startup_timeout} s: {log_text(workdir, port)}")
            time.sleep(0.2)  # waiting for a subprocess to come up, not timing a result
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def log_text(workdir: Path, port: int) -> str:
    return (workdir / f"server-{port}.log").read_text()[-4000:]


def write_wav(path: Path, seconds: float, seed: int = 0, rate: int = 16000) -> Path:
    rng = np.random.default_rng(seed)
    sf.write(path, (0.1 * rng.standard_normal(int(seconds * rate))).astype(np.float32), rate, subtype="PCM_16")
    return path
