"""Only the inference thread computes on several cores: other threads' torch ops run serially, so OpenMP never
manages more threads than the CPUs (beyond that it stops spinning between parallel regions, and a forward slows by
10-20%; engine/threads.py). Each check runs in a fresh process: thread settings and OpenMP teams are per process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from chorus_server.engine import threads

REPO = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.skipif(
    torch.get_num_threads() < 2 or not threads.per_thread_control(),
    reason="needs 2+ CPUs and an OpenMP runtime whose per-thread setting Chorus can reach",
)

NATIVE = """
import os, threading, time
def native_threads():  # OS threads Python does not know of: OpenMP's workers, for one
    time.sleep(0.1)  # a joined thread may take a moment to leave /proc
    return len(os.listdir("/proc/self/task")) - threading.active_count()
def threads_of_a_new_thread():  # torch's thread count in a thread started now
    import torch
    seen = []
    thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    return seen[0]
"""


def run(script: str, *args: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(NATIVE) + textwrap.dedent(script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_serial_threads_open_no_openmp_team_and_the_inference_thread_keeps_its_cores():
    result = run("""
        import json
        from concurrent.futures import ThreadPoolExecutor
        import torch
        from chorus_server.engine import threads
        x = torch.randn(8_000_000)  # big enough for torch to split an op over threads
        before = native_threads()
        cores = threads.serial_by_default()
        with ThreadPoolExecutor(3) as others:
            seen = list(others.map(lambda _: (x.exp().sum().item(), torch.get_num_threads())[1], range(3)))
        x.exp()  # the thread that made the process serial is serial too
        serial = native_threads() - before
        with ThreadPoolExecutor(1) as inference:
            used = inference.submit(lambda: (threads.use_cores(cores), x.exp(), torch.get_num_threads())[2]).result()
            teams = native_threads() - before
        print(json.dumps(dict(cores=cores, seen=seen, serial=serial, used=used, teams=teams)))
    """)
    assert result["seen"] == [1, 1, 1]
    assert result["serial"] == 0  # no OpenMP worker for anyone but the inference thread
    assert result["used"] == result["cores"]
    assert result["teams"] == result["cores"] - 1  # the inference thread's team: itself + cores - 1 workers


def test_a_serving_process_runs_one_openmp_team(tmp_path):
    """Start-up, voice activity detection on half a minute of speech and its transcription by the demo model leave
    exactly the inference thread's OpenMP workers in a server process; threads started while it runs are serial,
    and those started after it stopped get every core again."""
    result = run(
        """
        import json, sys
        from pathlib import Path
        import numpy as np
        import torch
        from tests.server.conftest import encode, make_settings, running_app
        from tests.server.test_vad import quiet_noise, sample
        cores = torch.get_num_threads()
        before = native_threads()
        speech = np.concatenate([sample("en-1"), quiet_noise(1.0), sample("fr-2")] * 4)
        with running_app(make_settings(Path(sys.argv[1]), None, vad={"enabled": True})) as client:
            files = {"file": ("a.wav", encode(speech), "audio/wav")}
            data = {"model": "en", "response_format": "verbose_json"}
            response = client.post("/v1/audio/transcriptions", files=files, data=data)
            assert response.status_code == 200, response.text
            assert response.json()["text"].strip(), "the backbone never ran"
            during, serial = native_threads() - before, threads_of_a_new_thread()
        after = threads_of_a_new_thread()
        print(json.dumps(dict(cores=cores, during=during, serial=serial, after=after, seconds=len(speech) / 16000)))
        """,
        str(tmp_path),
    )
    assert result["seconds"] > 20
    assert result["during"] == result["cores"] - 1
    assert result["serial"] == 1  # what a thread started while the server runs gets
    assert result["after"] == result["cores"]


def test_overlapping_and_failed_starts_keep_the_original_count():
    """Runtimes may overlap (a test's servers, an ingress beside a worker): the second one still gives its inference
    thread the cores from before the first, and only the last to stop makes threads parallel again; a start that
    fails leaves the process as it found it."""
    result = run("""
        import json
        import torch
        from chorus_server.engine import threads
        from chorus_server.runtime import Runtime
        from chorus_server.settings import Settings
        cores = torch.get_num_threads()
        first, second = threads.serial_by_default(), threads.serial_by_default()
        threads.end_serial_default()
        one_left = threads_of_a_new_thread()
        threads.end_serial_default()
        none_left = threads_of_a_new_thread()
        try:
            Runtime.start(Settings(backbone="/nonexistent/backbone", _env_file=None))
            failed = False
        except Exception:
            failed = True
        after_failure = threads_of_a_new_thread()
        print(json.dumps(dict(cores=cores, first=first, second=second, one_left=one_left, none_left=none_left,
                              failed=failed, after_failure=after_failure)))
    """)
    cores = result["cores"]
    assert result["first"] == result["second"] == cores
    assert result["one_left"] == 1
    assert result["none_left"] == cores
    assert result["failed"] and result["after_failure"] == cores
