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


def test_slack_is_the_requests_a_holder_may_be_above_the_least_loaded_worker():
    loads = {"w1": 1, "w2": 2}
    holders = {"w2": {"fr"}}
    assert rank("fr", list(loads), loads.__getitem__, lambda r, a: a in holders.get(r, set()), random.Random(0))[0] == [
        "w2"
    ]  # default: one request of slack
    tight = rank("fr", list(loads), loads.__getitem__, lambda r, a: a in holders.get(r, set()), random.Random(0), 0.5)
    assert tight[0] == ["w1"]


class FakeReplica:
    def __init__(self, name: str, load: float, resident: tuple[str, ...]):
        from ray.serve._private.common import DeploymentID, ReplicaID

        self.replica_id = ReplicaID(name, DeploymentID("chorus-worker", "chorus"))
        self.routing_stats = {"load": load, "resident": list(resident)}


def router_with_cache():
    from ray.serve._private.request_router.common import ReplicaQueueLengthCache

    from chorus_server.cluster.router import AdapterAffinityRouter

    router = object.__new__(AdapterAffinityRouter)  # no Ray: only the state choose_replicas reads
    router._replica_queue_len_cache = ReplicaQueueLengthCache()
    router.initialize_state(slack=1.0)
    return router


def pending(**kwargs):
    from types import SimpleNamespace

    return SimpleNamespace(kwargs=kwargs)


def test_a_holder_idle_now_wins_although_its_last_report_says_busy():
    import asyncio

    router = router_with_cache()
    # The report (a second old) still shows the holder's last requests; the router knows they finished.
    holder, other = FakeReplica("holder", 3.0, ("acme/fr@1",)), FakeReplica("other", 0.0, ())
    router.replica_queue_len_cache.update(holder.replica_id, 0)
    ranks = asyncio.run(router.choose_replicas([holder, other], pending(adapter="acme/fr@1")))
    assert ranks[0] == [holder]
    # ... and a holder the router has just sent three requests to loses to an idle worker, whatever its report.
    router.replica_queue_len_cache.update(holder.replica_id, 3)
    holder.routing_stats["load"] = 0.0
    ranks = asyncio.run(router.choose_replicas([holder, other], pending(adapter="acme/fr@1")))
    assert ranks[0] == [other]


def test_without_a_count_of_its_own_the_router_reads_the_report():
    import asyncio

    router = router_with_cache()
    holder, other = FakeReplica("holder", 3.0, ("acme/fr@1",)), FakeReplica("other", 0.0, ())
    ranks = asyncio.run(router.choose_replicas([holder, other], pending(adapter="acme/fr@1")))
    assert ranks[0] == [other]


def test_a_call_for_one_replica_goes_to_that_replica_only():
    import asyncio

    router = router_with_cache()
    a, b = FakeReplica("a", 0.0, ()), FakeReplica("b", 5.0, ())
    assert asyncio.run(router.choose_replicas([a, b], pending(to_replica="b"))) == [[b]]
    assert asyncio.run(router.choose_replicas([a], pending(to_replica="b"))) == [[]]
