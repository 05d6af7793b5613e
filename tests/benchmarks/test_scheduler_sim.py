"""The scheduler simulation (benchmarks/scheduler_sim.py) runs the server's `collect_batch` and `TurnSteps` on a
simulated clock: the effects docs/benchmarks.md reports from it, at the demo model's cost and at a
wav2vec2-base-sized one (one slice = one 20 s window's pass)."""

from __future__ import annotations

from benchmarks.scheduler_sim import POLICIES, simulate

POLICY = {policy.name: policy for policy in POLICIES}
DEMO = {"overhead": 0.002, "per_second": 0.006}
BASE = {"overhead": 0.005, "per_second": 0.133}


def run(name: str, sessions: int, clients: int, cost: dict[str, float]) -> dict:
    return simulate(POLICY[name], sessions, clients, 30.0, pause=0.0, **cost)


def test_the_same_run_gives_the_same_numbers():
    assert run("busy step", 4, 4, DEMO) == run("busy step", 4, 4, DEMO)


def test_a_final_pass_that_holds_back_the_next_turn_is_the_tail_and_delivering_beside_it_bounds_it():
    assert run("classes", 4, 4, DEMO)["p95_slices"] > 8  # the measured tail: about 12 slices
    assert run("final aside", 4, 4, DEMO)["p95_slices"] <= 2.1  # one slice, the lookahead and the step's batch


def test_the_cap_while_a_session_is_open_bounds_the_wait_at_a_base_sized_backbone():
    assert run("final aside", 1, 4, BASE)["p95_slices"] > 3
    assert run("cap open", 1, 4, BASE)["p95_slices"] < 2.5


def test_longer_steps_while_files_wait_leave_files_80_percent_of_their_throughput():
    alone = run("busy step", 0, 4, DEMO)["file_audio_per_s"]
    assert run("cap open", 4, 4, DEMO)["file_audio_per_s"] < 0.8 * alone
    beside = run("busy step", 4, 4, DEMO)
    assert beside["file_audio_per_s"] >= 0.8 * alone
    assert beside["p50_ms"] <= 300 and beside["p95_ms"] <= 600
