"""The benchmark harness runs end to end (a smoke run, not a performance check)."""

from __future__ import annotations

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
