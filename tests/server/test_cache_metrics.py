"""Adapter cache metrics as `/metrics` exports them: tiers as the docs describe them, load counts never negative."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from chorus_server.engine.cache import AdapterCache
from chorus_server.metrics import Metrics
from tests.server.engine.test_cache import SIZE, Loader


def scrape(cache: AdapterCache) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    metrics = Metrics()
    metrics.state.cache = cache
    text = generate_latest(metrics.registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def make_cache(loader: Loader, device: str) -> AdapterCache:
    return AdapterCache(loader, lambda a: a, torch.device(device), 10 * SIZE, 10 * SIZE, executor=ThreadPoolExecutor(2))


def test_a_failed_load_never_makes_the_ok_count_negative():
    loader = Loader()
    loader.broken.add("bad")
    cache = make_cache(loader, "cpu")
    with pytest.raises(ValueError, match="corrupt"):
        cache.lease("bad").result(10)
    values = scrape(cache)
    assert values[("chorus_adapter_loads_total", (("result", "ok"),))] == 0
    assert values[("chorus_adapter_loads_total", (("result", "error"),))] == 1
    cache.lease("good").result(10).release()
    values = scrape(cache)
    assert values[("chorus_adapter_loads_total", (("result", "ok"),))] == 1
    assert values[("chorus_adapter_loads_total", (("result", "error"),))] == 1


def test_on_a_cpu_host_ram_is_the_only_tier():
    cache = make_cache(Loader(), "cpu")
    cache.lease("fr").result(10).release()
    cache.lease("fr").result(10).release()  # a hit
    values = scrape(cache)
    assert values[("chorus_adapter_resident_bytes", (("tier", "host"),))] == SIZE
    assert values[("chorus_adapters_resident", (("tier", "host"),))] == 1
    assert values[("chorus_adapter_cache_hits_total", (("tier", "host"),))] == 1
    assert not [key for key in values if ("tier", "device") in key[1]]


def test_on_a_gpu_both_tiers_are_reported():
    cache = make_cache(Loader(), "cuda:0")  # prepare is the identity: nothing touches a GPU
    cache.lease("fr").result(10).release()
    values = scrape(cache)
    assert values[("chorus_adapter_resident_bytes", (("tier", "device"),))] == SIZE
    assert values[("chorus_adapter_resident_bytes", (("tier", "host"),))] == SIZE
