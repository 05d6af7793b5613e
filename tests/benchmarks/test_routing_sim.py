"""The routing simulation (benchmarks/routing_sim.py): determinism, conservation, and the effects it exists to show."""

from __future__ import annotations

import json
from dataclasses import asdict, replace

import numpy as np
import pytest

from benchmarks.routing_sim import (
    CPU,
    DEFAULT_POLICIES,
    POLICIES,
    Scenario,
    Workload,
    main,
    ring_candidates,
    run_trace,
    simulate,
    summarise,
    worker_capacity,
)


def scenario(policy: str, n: int, *, s: float = 1.0, load: float = 0.8, requests: int = 3_000, cache: int = 64):
    return Scenario(policy, n, cache, Workload(zipf_s=s, load=load, n_requests=requests), CPU, seed=0)


def test_a_seed_fixes_the_run_and_another_seed_changes_it():
    sc = scenario("affinity_p2c", 8, requests=2_000)
    assert simulate(sc) == simulate(sc)
    assert simulate(replace(sc, seed=1)) != simulate(sc)


def test_with_one_worker_every_policy_gives_the_same_result():
    results = [asdict(simulate(scenario(policy, 1, load=0.9, requests=2_000))) for policy in POLICIES]
    for r in results:
        r.pop("policy")
    assert all(r == results[0] for r in results[1:])
    assert 0 < results[0]["hit_ratio"] < 1  # the cache was exercised: hits and misses both happened


def test_affinity_keeps_adapters_warm_where_random_spreads_them():
    random_hits = simulate(scenario("random", 16, cache=8, requests=4_000)).hit_ratio
    affinity_hits = simulate(scenario("affinity_p2c", 16, cache=8, requests=4_000)).hit_ratio
    assert affinity_hits > random_hits + 0.15, (affinity_hits, random_hits)


def test_a_hot_adapter_overloads_its_consistent_hash_owner_but_not_affinity_p2c():
    # s = 1.2 over 10,000 adapters gives the top adapter ~21% of traffic: more than one of 16 workers can serve.
    ring = simulate(scenario("consistent_hash", 16, s=1.2, load=0.9, requests=4_000))
    affinity = simulate(scenario("affinity_p2c", 16, s=1.2, load=0.9, requests=4_000))
    assert ring.p95_s > 3 * affinity.p95_s, (ring.p95_s, affinity.p95_s)
    assert ring.throughput_audio_per_s < 0.9 * ring.offered_audio_per_s  # its backlog kept growing
    assert affinity.throughput_audio_per_s > 0.9 * affinity.offered_audio_per_s


@pytest.mark.parametrize("policy", list(POLICIES))
def test_every_request_completes_once_and_no_worker_does_more_than_it_can(policy):
    sc = scenario(policy, 4, s=1.2, load=0.95, requests=2_000)
    trace = run_trace(sc)
    traffic = trace.traffic
    assert (trace.completions == 1).all()
    assert (trace.finish >= traffic.arrivals + CPU.batch_overhead_s).all()
    assert set(np.unique(trace.worker)) <= set(range(4))
    assert sum(trace.batch_sizes) == len(traffic.arrivals)
    assert (trace.busy_s <= trace.finish.max() - traffic.arrivals[0] + 1e-9).all()  # one batch at a time
    result = summarise(sc, trace)
    assert result.throughput_audio_per_s <= 4 / CPU.per_audio_s  # a batch costs at least per_audio_s × its audio


def test_overload_saturates_at_capacity_and_not_beyond():
    result = simulate(scenario("least_loaded", 4, load=1.5, requests=3_000))
    capacity = 4 * worker_capacity(CPU, Workload())
    assert result.capacity_audio_per_s == pytest.approx(capacity)
    assert 0.85 * capacity < result.throughput_audio_per_s <= 1.05 * capacity


def test_ring_candidates_are_two_distinct_workers_and_spread_adapters():
    candidates = ring_candidates(16, 10_000)
    assert all(a != b for a, b in candidates)
    owners = np.bincount([a for a, _ in candidates], minlength=16)
    assert owners.min() > 0.5 * owners.mean() and owners.max() < 1.6 * owners.mean()
    assert ring_candidates(1, 10) == [(0, 0)] * 10


def test_cli_writes_json_and_skips_or_draws_the_plot(tmp_path, capsys):
    out = tmp_path / "r.json"
    argv = ["--workers", "1", "4", "--zipf", "1.0", "--loads", "0.5", "--requests", "600", "--jobs", "1"]
    main([*argv, "--json", str(out), "--plot", str(tmp_path / "r.png")])
    payload = json.loads(out.read_text())
    assert len(payload["results"]) == 2 * len(DEFAULT_POLICIES)
    assert {r["policy"] for r in payload["results"]} == set(DEFAULT_POLICIES)
    assert payload["hardware"]["max_items"] == CPU.max_items
    printed = capsys.readouterr()
    assert "| affinity_p2c | 4 | 1.0 | 0.5 | 64 |" in printed.out
    assert (tmp_path / "r.png").exists() or "matplotlib is not installed" in printed.err
