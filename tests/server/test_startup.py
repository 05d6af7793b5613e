"""`chorus serve` start-up errors: one line naming the variable, path or port, a non-zero exit, no traceback and
no "Chorus ready" (each used to be a long traceback, and a busy port logged "Chorus ready" before errno 98)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from chorus_server.startup import env_name

ROOT = Path(__file__).resolve().parents[2]


def serve(tmp_path: Path, env: dict[str, str], *args: str, command: str = "serve") -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CHORUS_")}
    base |= {"CHORUS_DATA_DIR": str(tmp_path / "data"), "CHORUS_STORE": str(tmp_path / "store")}
    return subprocess.run(
        [sys.executable, "-m", "chorus_server.cli", *command.split(), *args],
        env=base | env,
        cwd=tmp_path,  # no .env from the checkout
        capture_output=True,
        text=True,
        timeout=180,
    )


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr and "Chorus ready" not in result.stderr + result.stdout
    return lines[0]


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"CHORUS_BATCH__MAX_ITEMS": "abc"}, ["CHORUS_BATCH__MAX_ITEMS='abc'", "valid integer"]),
        ({"CHORUS_VAD__THRESHOLD": "2"}, ["CHORUS_VAD__THRESHOLD='2'", "less than 1"]),
        ({"CHORUS_DEVICE": "tpu"}, ["CHORUS_DEVICE='tpu'"]),
        ({"CHORUS_BACKBONE": "/nonexistent"}, ["CHORUS_BACKBONE='/nonexistent'", "is not a directory"]),
        ({"CHORUS_AUTH__KEYS": "{bad"}, ["CHORUS_AUTH__KEYS='{bad' is not valid JSON"]),
    ],
)
def test_a_bad_setting_is_one_line_naming_the_variable(tmp_path, env, names):
    line = one_line(serve(tmp_path, env, "--port", "9"))
    assert line.startswith("chorus serve: ")
    for name in names:
        assert name in line


def test_keys_commands_say_the_same(tmp_path):
    line = one_line(serve(tmp_path, {"CHORUS_BATCH__MAX_ITEMS": "abc"}, command="keys list"))
    assert line.startswith("chorus keys: invalid setting: CHORUS_BATCH__MAX_ITEMS='abc'")


def test_a_busy_port_is_one_line_before_the_model_loads(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        line = one_line(serve(tmp_path, {}, "--port", str(port)))
    assert (
        line == f"chorus serve: port {port} on 127.0.0.1 is already in use (another chorus serve?); "
        "stop it, or choose another port: "
        "--port N (PORT=N with make serve)"
    )


@pytest.mark.parametrize(
    ("location", "name"),
    [
        (("batch", "max_items"), "CHORUS_BATCH__MAX_ITEMS"),
        (("backbone",), "CHORUS_BACKBONE"),
        (("auth", "keys", "k"), "CHORUS_AUTH__KEYS"),
    ],
)
def test_env_name(location, name):
    assert env_name(location) == name
