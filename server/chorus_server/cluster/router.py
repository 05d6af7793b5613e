"""Adapter-affinity routing for Ray Serve: send a request to a worker that already holds its adapter, bounded by
load so a hot adapter does not pile onto one worker.

Among the workers holding the adapter (from each replica's routing stats, refreshed every second) pick the
less loaded of two at random (power of two choices); if that one is busier than the least-loaded worker by more
than a cold load's worth of work, or nobody holds the adapter, prefer the least-loaded worker (the adapter then
loads there). The simulation in docs/scale-out.md (`benchmarks/routing_sim.py`, policy `affinity_p2c_delay`)
chose this rule: least-loaded latency everywhere, with fewer cold loads; bounds relative to the mean load
(tried first) let hot adapters pile up and cost 2-6x the p95.
"""

from __future__ import annotations

import random
from typing import Any

from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

# Requests a holder may be above the least-loaded worker and still be preferred: a cold load (~25 ms on CPU) is
# worth well under one request's work (~0.5 s), so a holder wins ties and near-ties only.
SLACK = 0.5


def _stats(replica: RunningReplica) -> dict[str, Any]:
    return getattr(replica, "routing_stats", None) or {}


def _load(replica: RunningReplica) -> float:
    return float(_stats(replica).get("load", 0.0))


def rank(adapter: str | None, replicas: list[Any], load: Any, holds: Any, rng: random.Random) -> list[list[Any]]:
    """The routing decision as ranks of replicas, most preferred first (pure: testable without Ray)."""
    if len(replicas) < 2:
        return [list(replicas)]
    by_load = sorted(replicas, key=load)
    holders = [r for r in replicas if adapter is not None and holds(r, adapter)]
    if holders:
        pick = min(rng.sample(holders, min(2, len(holders))), key=load)
        if load(pick) <= load(by_load[0]) + SLACK:
            return [[pick], [r for r in by_load if r is not pick]]
    return [by_load[:1], by_load[1:]]


class AdapterAffinityRouter(RequestRouter):
    _rng = random.Random()

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        adapter = None
        if pending_request is not None:
            adapter = pending_request.kwargs.get("adapter")
        return rank(adapter, candidate_replicas, _load, lambda r, a: a in _stats(r).get("resident", ()), self._rng)
