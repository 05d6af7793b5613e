"""benchmarks/isolated.py: each system in a process of its own, called one at a time after a quiet pause."""

from __future__ import annotations

import os
import time

import pytest

from benchmarks.isolated import System, interleaved_isolated


def sleeper(seconds: float):
    """A system whose call sleeps; its info names the process it was built in."""
    return (lambda: time.sleep(seconds)), {"pid": os.getpid()}


def broken():
    raise ValueError("no such model")


def test_each_system_runs_in_its_own_process_one_call_at_a_time_after_quiet():
    start = time.perf_counter()
    times, info = interleaved_isolated(
        {"slow": System(sleeper, (0.05,)), "fast": System(sleeper, (0.01,))}, reps=2, settle=0.2
    )
    elapsed = time.perf_counter() - start
    assert len({info["slow"]["pid"], info["fast"]["pid"], os.getpid()}) == 3
    assert len(times["slow"]) == len(times["fast"]) == 2  # the warm-up call is not among them
    assert all(0.05 <= t < 2 for t in times["slow"]) and all(0.01 <= t < 2 for t in times["fast"])
    assert elapsed >= 0.2 * 3 * 2  # a pause before each of the 3 calls of each system


def test_a_system_that_fails_to_build_is_named():
    with pytest.raises(RuntimeError, match="'bad' failed to start: ValueError: no such model"):
        interleaved_isolated({"good": System(sleeper, (0.0,)), "bad": System(broken)}, reps=1, settle=0.0)
