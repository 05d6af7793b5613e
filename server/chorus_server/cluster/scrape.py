"""One scrape address for the whole cluster: the ingress's `/metrics` asks every worker replica for its registry's
metric families (a call the affinity router sends to that replica, `to_replica`), adds a `replica` label to their
series and serves them beside its own. A replica that does not answer within `TIMEOUT` is left out of that scrape
(and logged), so a stuck worker never stalls monitoring."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

TIMEOUT = 5.0  # seconds a scrape waits for a worker's families
REPLICA_LABEL = "replica"
SERVE_NAMESPACE = "serve"
REPLICA_PREFIX = "SERVE_REPLICA::"


def replica_ids(app: str, deployment: str) -> list[str]:
    """The unique IDs of the deployment's replica actors that Ray lists as alive (a call to Ray's GCS)."""
    import ray

    prefix = f"{REPLICA_PREFIX}{app}#{deployment}#" if app else f"{REPLICA_PREFIX}{deployment}#"
    names = ray.util.list_named_actors(all_namespaces=True)
    alive = (a["name"] for a in names if a["namespace"] == SERVE_NAMESPACE)
    return sorted(name[len(prefix) :] for name in alive if name.startswith(prefix))


def labelled(families: Iterable[Metric], replica: str) -> list[Metric]:
    """`families` with `replica="<id>"` added to every series."""
    out = []
    for family in families:
        copy = Metric(family.name, family.documentation, family.type, family.unit)
        copy.samples = [s._replace(labels={**s.labels, REPLICA_LABEL: replica}) for s in family.samples]
        out.append(copy)
    return out


class Merged(Collector):
    """The ingress's own families and every worker's, one family per name (Prometheus refuses a name twice)."""

    def __init__(self, local: CollectorRegistry, remote: Mapping[str, list[Metric]]):
        self.local, self.remote = local, remote

    def collect(self) -> Iterable[Metric]:
        merged: dict[str, Metric] = {}
        for family in self.local.collect():
            merged[family.name] = family
        for replica, families in sorted(self.remote.items()):
            for family in labelled(families, replica):
                known = merged.get(family.name)
                if known is None:
                    merged[family.name] = family
                elif known.type == family.type:
                    known.samples = [*known.samples, *family.samples]
        return merged.values()


async def worker_families(handle: Any, replicas: list[str], timeout: float = TIMEOUT) -> dict[str, list[Metric]]:
    """Each replica's families, by replica ID; those that fail or time out are left out."""

    async def one(replica: str) -> tuple[str, list[Metric]] | None:
        # Calls made while serving one HTTP request share its internal request ID, and Ray's router hands a chosen
        # replica to the pending call with that ID: concurrent calls would swap replicas or never be sent. Each
        # call runs in its own task (gather), so giving it its own ID changes nothing outside it.
        from ray.serve.context import _set_request_context

        _set_request_context(_internal_request_id=uuid.uuid4().hex)
        try:
            call = handle.options(method_name="metric_families").remote(to_replica=replica)
            name, families = await asyncio.wait_for(call, timeout)
            return name, families
        except Exception as exc:  # a dead, starting or stuck replica: monitoring goes on without it
            logger.warning("metrics of worker replica %s left out of this scrape: %r", replica, exc)
            return None

    answers = await asyncio.gather(*(one(r) for r in replicas))
    return dict(a for a in answers if a is not None)


async def exposition(handle: Any, local: CollectorRegistry, deployment: str = "chorus-worker") -> bytes:
    """The text a cluster ingress's `/metrics` answers: its own series and every worker replica's."""
    from ray import serve

    app = serve.get_replica_context().app_name
    replicas = await asyncio.to_thread(replica_ids, app, deployment)
    remote = await worker_families(handle, replicas)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Merged(local, remote))
    return generate_latest(registry)
