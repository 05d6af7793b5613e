"""Adapter-affinity routing for Ray Serve: send a request to a worker that already holds its adapter, bounded by
load so a hot adapter does not pile onto one worker.

Among the workers holding the adapter (each replica's routing stats, refreshed every second) pick the less loaded
of two at random (power of two choices); if that one is busier than the least-loaded worker by more than `slack`
requests, or nobody holds the adapter, prefer the least-loaded worker (the adapter then loads there). The
simulation in docs/scale-out.md (`benchmarks/routing_sim.py`, policy `affinity_p2c_delay`) chose the shape of
this rule: least-loaded latency everywhere, with fewer cold loads.

Load is fresh, not a second old: the requests this router has in flight on a replica (Ray's queue-length cache:
the replica's own count of ongoing requests when it accepted this router's latest request, plus one per request
sent since, minus one per request finished), so a holder that finished its work a moment ago counts as idle now.
Only where that count is missing (no request for 10 s, or the cache is off, as in Ray Client) does the replica's
once-a-second report stand in.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

# Requests a holder may be above the least-loaded worker and still be preferred. A cold load (~25 ms on CPU) is worth
# well under one request's work, but with Chorus's batching a request joining a busy worker shares its next pass
# rather than waiting a whole request, and every cold load on a small cache evicts an adapter that someone will
# load again. One request of slack kept 5 adapters on 2 workers sticky under 4 concurrent clients at the p95 of
# least-loaded routing (docs/scale-out.md, "Adapter affinity").
SLACK = 1.0


def reported_load(replica: Any) -> float:
    """The replica's once-a-second report: windows queued on it and requests it serves."""
    return float(_stats(replica).get("load", 0.0))


def _stats(replica: Any) -> dict[str, Any]:
    return getattr(replica, "routing_stats", None) or {}


def holds(replica: Any, adapter: str) -> bool:
    return adapter in _stats(replica).get("resident", ())


def fresh_load(in_flight: int | None, report: float) -> float:
    """The router's own count of requests in flight on a replica when it has one, else the replica's report."""
    return float(in_flight) if in_flight is not None else report


def rank(
    adapter: str | None,
    replicas: list[Any],
    load: Callable[[Any], float],
    holds: Callable[[Any, str], bool],
    rng: random.Random,
    slack: float = SLACK,
) -> list[list[Any]]:
    """The routing decision as ranks of replicas, most preferred first (pure: testable without Ray)."""
    if len(replicas) < 2:
        return [list(replicas)]
    loads = {id(r): load(r) for r in replicas}  # one reading per decision
    by_load = sorted(replicas, key=lambda r: loads[id(r)])
    holders = [r for r in replicas if adapter is not None and holds(r, adapter)]
    if holders:
        pick = min(rng.sample(holders, min(2, len(holders))), key=lambda r: loads[id(r)])
        if loads[id(pick)] <= loads[id(by_load[0])] + slack:
            return [[pick], [r for r in by_load if r is not pick]]
    return [by_load[:1], by_load[1:]]


class AdapterAffinityRouter(RequestRouter):
    def initialize_state(self, slack: float = SLACK, **kwargs: Any) -> None:
        """Ray passes `request_router_kwargs` here (cluster/app.py: CHORUS_CLUSTER__AFFINITY_SLACK)."""
        self.slack = slack
        self.rng = random.Random()

    def load(self, replica: RunningReplica) -> float:
        return fresh_load(self.replica_queue_len_cache.get(replica.replica_id), reported_load(replica))

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        adapter = None
        if pending_request is not None:
            target = pending_request.kwargs.get("to_replica")
            if target is not None:  # a call for one replica (its metrics): that one or, while it is gone, none
                return [[r for r in candidate_replicas if r.replica_id.unique_id == target]]
            adapter = pending_request.kwargs.get("adapter")
            # A realtime session's calls name its worker (cluster/remote.py). Once that worker is gone they are
            # routed as usual, and the worker they reach refuses them: the session ends rather than moves.
            pinned = [r for r in candidate_replicas if r.replica_id.unique_id == pending_request.kwargs.get("worker")]
            if pinned:
                return [pinned]
        slack = getattr(self, "slack", SLACK)
        rng = getattr(self, "rng", None) or random.Random()
        return rank(adapter, candidate_replicas, self.load, holds, rng, slack)
