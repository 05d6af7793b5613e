"""The server's `chorus` subcommands, run through the installed console script (the client's) and its plugin."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from chorus_server.cli import PRESET_NAMES
from chorus_server.engine import Engine, load_adapter, pad_batch


def chorus(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("chorus") or str(Path(sys.executable).parent / "chorus")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=300)


def test_random_model_command_writes_a_loadable_model(tmp_path):
    result = chorus("dev", "random-model", "--preset", "tiny-mms", "--adapters", "3", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "3 adapters" in result.stdout
    assert sorted(p.name for p in (tmp_path / "adapters").iterdir()) == [
        "deu-2.safetensors",
        "eng-0.safetensors",
        "fra-1.safetensors",
    ]
    assert (tmp_path / "adapter.fra.safetensors").is_file()
    loaded = Engine.from_pretrained(tmp_path, device="cpu")
    adapters = [loaded.engine.prepare(load_adapter(p)) for p in sorted((tmp_path / "adapters").iterdir())]
    assert {a.info.kind for a in adapters} == {"houlsby", "mms"}
    logits = loaded.engine.forward(*pad_batch([torch.randn(8000)] * 3), adapters)
    assert all(bool(torch.isfinite(lg).all()) for lg in logits)


def test_help_and_bad_arguments():
    assert chorus("--help").returncode == 0
    assert "random-model" in chorus("dev", "--help").stdout
    bad = chorus("dev", "random-model", "--preset", "nope", "--out", "x")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_presets_named_in_the_cli_match_the_engine():
    from chorus_server.engine.random_model import PRESETS

    assert list(PRESET_NAMES) == sorted(PRESETS)


def test_the_server_module_runs_as_the_chorus_command():
    result = subprocess.run(
        [sys.executable, "-m", "chorus_server.cli", "serve", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and "--port" in result.stdout


def test_keys_create_does_not_import_torch(tmp_path):
    """A key write is a SQLite row: importing torch for it made `chorus keys create` take about 3 s."""
    code = (
        "import sys; from chorus_server.cli import main; "
        "rc = main(['keys', 'create', '--tenant', 'acme']); "
        "print('torch' in sys.modules); sys.exit(rc)"
    )
    env = {**os.environ, "CHORUS_DATA_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False"
