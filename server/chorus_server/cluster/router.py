"""Adapter-affinity routing for Ray Serve: send a request to a worker that already holds its adapter, bounded by
load so a hot adapter does not pile onto one worker.

Among the workers holding the adapter (from each replica's routing stats, refreshed every second) pick the
less loaded of two at random (power of two choices); if even that one is busier than the average worker by
more than `slack` requests, or nobody holds the adapter, prefer the least-loaded workers instead (the adapter
then loads there). docs/scale-out.md compares this with Ray's default router and, by simulation, other policies.
"""

from __future__ import annotations

import random
from typing import Any

from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

SLACK = 2.0  # requests a holder may be above the mean load and still be preferred


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
        mean = sum(load(r) for r in replicas) / len(replicas)
        if load(pick) <= mean + SLACK:
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
