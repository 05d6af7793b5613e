"""The decoded-audio memory bound: reserved from the header before decoding, narrowed to the decoded array, held
until the array (and every queued window that views it) is freed; fair like the queued-seconds bound."""

from __future__ import annotations

import ctypes.util
import gc
import os
import random
import re
import subprocess
import sys
import threading

import numpy as np
import pytest

from chorus_server.audio_memory import AudioMemory
from chorus_server.queue_budget import QueueFull
from tests.server.conftest import make_settings, running_app, transcribe, wav
from tests.server.test_errors import error_of, gate_forward, in_background

MiB = 1024 * 1024


def test_held_bytes_never_exceed_the_bound_under_concurrent_reservations():
    memory = AudioMemory(10_000, trim=lambda: None)
    refused = []

    def client(seed: int) -> None:
        rng, holding = random.Random(seed), []
        for _ in range(200):
            try:
                holding.append(memory.reserve(rng.choice("ab"), rng.randint(1, 4_000)))
            except QueueFull:
                refused.append(1)
            assert memory.held <= memory.bound
            if len(holding) > 3 or rng.random() < 0.3:
                holding.pop(0).release()
        for hold in holding:
            hold.release()

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert memory.peak <= memory.bound and memory.held == 0 and refused


def test_a_hold_lasts_as_long_as_the_decoded_array_and_its_views():
    trims = []
    memory = AudioMemory(4 * MiB, trim=lambda: trims.append(1))
    hold = memory.reserve("acme", 3 * MiB)  # the estimate before decoding
    samples = np.zeros(MiB // 4, np.float32)  # 1 MiB decoded
    hold.keep(samples)
    assert memory.held == MiB
    window = samples[10:20]  # a queued window is a view
    del samples
    gc.collect()
    assert memory.held == MiB
    del window
    gc.collect()
    assert memory.held == 0


def test_an_upload_larger_than_the_bound_is_decoded_only_alone():
    memory = AudioMemory(MiB, trim=lambda: None)
    small = memory.reserve("acme", 1000)
    with pytest.raises(QueueFull):
        memory.reserve("globex", 2 * MiB)
    small.release()
    big = memory.reserve("globex", 2 * MiB)  # alone: admitted, and nothing else meanwhile
    with pytest.raises(QueueFull):
        memory.reserve("acme", 1000)
    big.release()
    assert memory.held == 0


def test_uploads_past_the_decoded_audio_bound_get_503_with_retry_after(tmp_path, model_dir):
    """10 s at 16 kHz decodes to 625 KiB: one fits a 1 MiB bound, a second (same tenant) is refused while the first
    is queued, and admitted again once the first has finished."""
    settings = make_settings(tmp_path, model_dir, limits={"max_decoded_audio_bytes": MiB})
    with running_app(settings) as client:
        memory = client.app.state.chorus.transcriber.memory
        entered = threading.Event()
        gate, _ = gate_forward(client, entered)
        first, answers = in_background(transcribe, client, wav(10.0), "default")
        assert entered.wait(30)
        refused = transcribe(client, wav(10.0, seed=1), "default")
        error = error_of(refused, 503, "queue_full")
        assert "decoded audio" in error["message"] and int(refused.headers["retry-after"]) >= 1
        gate.set()
        first.join(30)
        assert answers[0].status_code == 200
        gc.collect()
        assert memory.held == 0
        assert transcribe(client, wav(10.0, seed=1), "default").status_code == 200
        assert 0 < memory.peak <= memory.bound


ARENA_PROBE = """
import ctypes, ctypes.util, sys, threading
from chorus_server.audio_memory import limit_malloc_arenas
cap = limit_malloc_arenas() if sys.argv[1] == "cap" else None
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
start = threading.Barrier(8)
def churn():
    start.wait()
    for _ in range(200):
        libc.free(libc.malloc(4096))
threads = [threading.Thread(target=churn) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
print(cap)
libc.malloc_stats()  # one "Arena N:" block per arena, on stderr
"""


@pytest.mark.skipif(not ctypes.util.find_library("c") or sys.platform != "linux", reason="needs glibc")
def test_a_server_process_caps_malloc_arenas():
    """Request threads each got a glibc arena, and freed upload memory stayed in them after a burst."""

    def arenas(mode: str, **env: str) -> tuple[str, int]:
        run = subprocess.run(
            [sys.executable, "-c", ARENA_PROBE, mode],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **env},
        )
        assert run.returncode == 0, run.stderr
        return run.stdout.strip(), len(re.findall(r"^Arena \d+:", run.stderr, flags=re.M))

    assert arenas("free")[1] > 2  # glibc's default: threads spread over arenas of their own
    assert arenas("cap") == ("2", 2)
    assert arenas("cap", MALLOC_ARENA_MAX="4")[0] == "None"  # an operator's setting wins
