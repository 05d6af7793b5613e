"""The working-set benchmark runs end to end through a real server and measures a cache that is too small."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_working_set_quick_run(tmp_path):
    out = tmp_path / "working_set.json"
    command = [sys.executable, "-m", "benchmarks.working_set", "--quick", "--out", str(out)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["comparison"] == "working_set" and report["quick"] is True
    assert report["adapters"] == 50 and report["cache_adapters"] == 5
    assert report["concurrency"] == 8 and report["clip_seconds"] > 0
    # 50 adapters through a cache for 5: some lookups hit, some must load.
    assert 0 < report["hit_ratio"] < 1
    assert report["loads_per_second"] > 0
    assert report["zipf_over_single"] > 0
    for kind in ("zipf", "single"):
        assert report[kind]["audio_per_second"] > 0
        assert 0 < report[kind]["p50"] <= report[kind]["p95"]
        # The clips reach the backbone (voice activity detection would skip synthetic noise as non-speech).
        assert report[kind]["items_per_batch"] > 0 and report[kind]["forward_seconds_per_batch"] > 0
