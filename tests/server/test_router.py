"""The adapter-affinity routing rule, without Ray: holders win unless a cold load elsewhere would be quicker."""

from __future__ import annotations

import random

import pytest

pytest.importorskip("ray.serve")

from chorus_server.cluster.router import rank


def decide(adapter, loads: dict[str, float], holders: dict[str, set[str]], seed: int = 0) -> list[list[str]]:
    return rank(adapter, list(loads), loads.__getitem__, lambda r, a: a in holders.get(r, set()), random.Random(seed))


def test_a_holder_wins_ties_and_near_ties():
    assert decide("fr", {"w1": 0, "w2": 0, "w3": 0}, {"w2": {"fr"}})[0] == ["w2"]
    assert decide("fr", {"w1": 3, "w2": 3.4, "w3": 3}, {"w2": {"fr"}})[0] == ["w2"]


def test_a_busy_holder_loses_to_an_idle_worker():
    assert decide("fr", {"w1": 0, "w2": 4, "w3": 1}, {"w2": {"fr"}})[0] == ["w1"]


def test_the_less_loaded_of_two_holders_is_chosen():
    for seed in range(10):
        assert decide("fr", {"w1": 2, "w2": 1, "w3": 5}, {"w1": {"fr"}, "w2": {"fr"}}, seed)[0] == ["w2"]


def test_without_holders_the_least_loaded_worker_leads_and_every_worker_is_ranked():
    ranks = decide("new", {"w1": 2, "w2": 1, "w3": 5}, {})
    assert ranks[0] == ["w2"] and sorted(r for group in ranks for r in group) == ["w1", "w2", "w3"]
    assert decide(None, {"w1": 0}, {}) == [["w1"]]
