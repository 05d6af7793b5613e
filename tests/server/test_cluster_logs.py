"""`chorus serve --ray` prints Chorus's lines only (the driver's and every replica's); Ray's own go to DATA_DIR/ray.log
unless `--ray-logs console`."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chorus_server.background import free_port

pytest.importorskip("ray.serve")

from chorus_server.cluster.logs import MARK, RayLogRouter, chorus_lines

CHORUS_LINE = re.compile(r"(DEBUG|INFO|WARNING|ERROR|CRITICAL) chorus_(server|store)[\w.]*: ")


def test_the_driver_prints_marked_lines_and_files_the_rest():
    console, ray_file = io.StringIO(), io.StringIO()
    router = RayLogRouter(ray_file, console)
    router({"lines": [f"{MARK}INFO chorus_server.runtime: ready", "INFO serve -- CALL transcribe OK"], "pid": 7})
    router({"lines": ["Task ServeController.graceful_shutdown failed"], "pid": "raylet"})
    assert console.getvalue() == "INFO chorus_server.runtime: ready\n"
    assert "CALL transcribe OK" in ray_file.getvalue() and "graceful_shutdown" in ray_file.getvalue()
    assert MARK not in ray_file.getvalue()
    assert chorus_lines(["x", f"(pid=3) {MARK}WARNING chorus_store.local: y"]) == ["WARNING chorus_store.local: y"]


def test_chorus_serve_ray_prints_chorus_lines_only(tmp_path, model_dir):
    port = free_port()
    root = Path(__file__).resolve().parents[2]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(str(root / p) for p in ("server", "adapter_store", "clients")),
        "CHORUS_BACKBONE": str(model_dir),
        "CHORUS_STORE": str(tmp_path / "store"),
        "CHORUS_DATA_DIR": str(tmp_path / "data"),
        "CHORUS_DEVICE": "cpu",
        "CHORUS_DTYPE": "float32",
    }
    command = [sys.executable, "-m", "chorus_server.cli", "serve", "--ray", "--workers", "1", "--port", str(port)]
    process = subprocess.Popen(
        command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 180
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            if "Chorus cluster serving on" in line or time.monotonic() > deadline:
                break
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=60)
        lines += out.splitlines()
    finally:
        if process.poll() is None:
            process.kill()
    printed = [line for line in lines if line.strip()]
    assert any("Chorus cluster serving on" in line for line in printed), printed
    assert any("chorus_server.runtime: batching" in line for line in printed)  # a replica's line, unmarked
    assert [line for line in printed if not CHORUS_LINE.match(line)] == []
    ray_log = (tmp_path / "data" / "ray.log").read_text()
    assert "Started a local Ray instance" in ray_log and "(ServeController)" in ray_log
