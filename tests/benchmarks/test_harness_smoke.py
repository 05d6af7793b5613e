"""The benchmark harness runs end to end (a smoke run, not a performance check)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_adapter_cold_load_harness_runs():
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.adapter_cold_load", "--runs", "3"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "2.22 M params" in result.stdout
    for row in ("cold load p50", "cold load p95", "RSS growth per loaded adapter", "resident adapters | 3"):
        assert row in result.stdout


def test_server_load_harness_runs(tmp_path):
    out = tmp_path / "server_load.json"
    command = [sys.executable, "-m", "benchmarks.server_load", "--preset", "tiny", "--clip", "1", "--requests", "4"]
    command += ["--concurrency", "1", "2", "--pairs", "2", "--json", str(out)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "overhead" in result.stdout and "c=2" in result.stdout
    report = json.loads(out.read_text())
    assert report["direct_seconds"] > 0 and report["http_c1_seconds"] > 0
    assert set(report["levels"]) == {"1", "2"}
    assert all(level["n"] == 4 and level["p95"] >= level["p50"] > 0 for level in report["levels"].values())
