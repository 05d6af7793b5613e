"""Merging the worker replicas' metric families into the ingress's scrape, without Ray."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from chorus_server.cluster.scrape import Merged
from chorus_server.metrics import Metrics


def test_every_replica_series_is_labelled_and_each_family_appears_once():
    workers = {}
    for replica, seconds in (("w1", 3.0), ("w2", 5.0)):
        metrics = Metrics()
        metrics.audio_seconds.inc(seconds)
        metrics.state.adapters_info = lambda: (["chorus/en"], [])
        workers[replica] = list(metrics.registry.collect())
    ingress = Metrics()
    ingress.audio_seconds.inc(0)
    out = CollectorRegistry(auto_describe=False)
    out.register(Merged(ingress.registry, workers))
    text = generate_latest(out).decode()
    families = list(text_string_to_metric_families(text))  # the parser refuses a family declared twice
    assert len({f.name for f in families}) == len(families)
    audio = {
        s.labels.get("replica", "ingress"): s.value
        for f in families
        for s in f.samples
        if s.name == "chorus_audio_seconds_total"
    }
    assert audio == {"ingress": 0.0, "w1": 3.0, "w2": 5.0}
    info = [s.labels["replica"] for f in families for s in f.samples if s.name == "chorus_lora_requests_info"]
    assert sorted(info) == ["w1", "w2"]  # one vLLM-style info series per worker


def test_a_family_only_the_workers_have_is_served():
    registry = CollectorRegistry()
    Counter("chorus_only_here", "x", registry=registry).inc(2)
    merged = CollectorRegistry(auto_describe=False)
    merged.register(Merged(CollectorRegistry(), {"w1": list(registry.collect())}))
    samples = [s for f in merged.collect() for s in f.samples if s.name == "chorus_only_here_total"]
    assert [(s.labels, s.value) for s in samples] == [({"replica": "w1"}, 2.0)]
