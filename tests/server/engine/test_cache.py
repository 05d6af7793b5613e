"""AdapterCache: byte budgets, LRU, pins, in-use protection, single flight, failures, non-blocking loads.

Loads are controlled with events; no test sleeps for timing.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from chorus_server.engine import Adapter, AdapterInfo, Vocabulary, pad_batch
from chorus_server.engine.cache import AdapterCache

VOCAB = Vocabulary(("<pad>", "|", "a", "b"), blank_id=0, word_delimiter_id=1)


def make_adapter(name: str, hidden: int = 8) -> Adapter:
    return Adapter(AdapterInfo(name=name, kind="head"), VOCAB, hidden).eval()


SIZE = make_adapter("x").nbytes()  # bytes of one test adapter


class Loader:
    """Counts loads per key; keys in `gates` block until their event is set; keys in `broken` fail."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.gates: dict[str, threading.Event] = {}
        self.started: dict[str, threading.Event] = {}
        self.broken: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, key: str) -> Adapter:
        with self._lock:
            self.calls[key] = self.calls.get(key, 0) + 1
        self.started.setdefault(key, threading.Event()).set()
        if key in self.gates:
            assert self.gates[key].wait(timeout=30)
        if key in self.broken:
            raise ValueError(f"{key} is corrupt")
        return make_adapter(key)


def make_cache(loader: Loader, budget_items: float = 3, workers: int = 4) -> AdapterCache:
    return AdapterCache(
        loader,
        prepare=lambda a: a,
        device=torch.device("cpu"),
        device_budget_bytes=int(budget_items * SIZE),
        host_budget_bytes=int(budget_items * SIZE),
        executor=ThreadPoolExecutor(max_workers=workers),
    )


def use(cache: AdapterCache, key: str) -> None:
    with cache.acquire(key, timeout=30):
        pass


def test_hits_misses_and_byte_budget_lru():
    loader = Loader()
    cache = make_cache(loader, budget_items=3)
    for key in ("a@1", "b@1", "c@1"):
        use(cache, key)
    use(cache, "a@1")  # a is now most recent: b is the LRU
    use(cache, "d@1")
    assert cache.resident_keys() == ["c@1", "a@1", "d@1"]
    stats = cache.stats()
    assert (stats.misses, stats.device_hits, stats.loads, stats.device_evictions) == (4, 1, 4, 1)
    assert stats.device_bytes == 3 * SIZE <= cache.device_budget
    use(cache, "b@1")  # evicted earlier: loads again
    assert loader.calls["b@1"] == 2


def test_in_use_adapters_are_never_evicted_and_budget_recovers():
    cache = make_cache(Loader(), budget_items=1)
    held = cache.lease("a@1").result(timeout=30)
    use(cache, "b@1")  # over budget while a is held: a must survive, b (unused) goes
    assert cache.is_resident("a@1") and not cache.is_resident("b@1")
    assert held.adapter.name == "a@1"
    held2 = cache.lease("c@1").result(timeout=30)
    assert cache.stats().device_bytes == 2 * SIZE  # temporarily over budget: both in use
    held.release()
    assert cache.resident_keys() == ["c@1"]
    held2.release()
    held2.release()  # idempotent


def test_pinned_adapters_stay_until_unpinned():
    cache = make_cache(Loader(), budget_items=1)
    cache.pin("a@1").result(timeout=30)
    use(cache, "b@1")
    use(cache, "c@1")
    assert cache.resident_keys() == ["a@1"]  # b and c were evicted in its place
    cache.unpin("a@1")
    use(cache, "d@1")
    assert cache.resident_keys() == ["d@1"]


def test_concurrent_misses_load_once():
    loader = Loader()
    loader.gates["a@1"] = threading.Event()
    cache = make_cache(loader)
    futures = [cache.lease("a@1") for _ in range(10)]
    assert loader.started.setdefault("a@1", threading.Event()).wait(timeout=30)
    assert not any(f.done() for f in futures)
    loader.gates["a@1"].set()
    leases = [f.result(timeout=30) for f in futures]
    assert loader.calls["a@1"] == 1
    assert len({id(lease.adapter) for lease in leases}) == 1
    stats = cache.stats()
    assert (stats.misses, stats.loads) == (1, 1)
    for lease in leases:
        lease.release()


def test_failed_load_fails_its_waiters_only_and_is_retried():
    loader = Loader()
    loader.broken.add("bad@1")
    cache = make_cache(loader)
    bad = [cache.lease("bad@1") for _ in range(3)]
    use(cache, "good@1")
    for future in bad:
        with pytest.raises(ValueError, match="corrupt"):
            future.result(timeout=30)
    assert cache.stats().load_failures >= 1 and not cache.is_resident("bad@1")
    loader.broken.clear()  # e.g. the operator fixed the file
    use(cache, "bad@1")
    assert cache.is_resident("bad@1") and cache.is_resident("good@1")


def test_invalidate_keeps_running_requests_and_drops_the_rest():
    cache = make_cache(Loader())
    running = cache.lease("fr@1").result(timeout=30)
    use(cache, "fr@2")
    use(cache, "de@1")
    cache.invalidate("fr@")
    assert cache.resident_keys() == ["fr@1", "de@1"]
    assert running.adapter.name == "fr@1"  # still usable
    running.release()
    assert cache.resident_keys() == ["de@1"]


def test_slow_load_does_not_block_another_adapters_forward(random_model_dir):
    """While adapter A's load is stuck, a batch for resident adapter B runs to completion."""
    from chorus_server.engine import Engine, load_adapter

    _, path = random_model_dir
    engine = Engine.from_pretrained(path, device="cpu").engine
    files = sorted((path / "adapters").glob("*.safetensors"))
    gate, started = threading.Event(), threading.Event()

    def load(key: str) -> Adapter:
        if key == "slow@1":
            started.set()
            assert gate.wait(timeout=30)
        return load_adapter(files[0] if key == "slow@1" else files[1])

    cache = AdapterCache(load, engine.prepare, engine.device, 10**9, 10**9)
    with cache.acquire("fast@1", timeout=30):
        pass
    pending = cache.lease("slow@1")
    assert started.wait(timeout=30)
    with cache.acquire("fast@1", timeout=30) as fast:
        logits = engine.forward(*pad_batch([torch.randn(8000)]), [fast])[0]
    assert logits.shape[0] == 24 and not pending.done()
    gate.set()
    with pending.result(timeout=30) as slow:
        assert engine.forward(*pad_batch([torch.randn(8000)]), [slow])[0].shape[0] == 24


def test_hot_swap_old_version_finishes_new_requests_get_new(tmp_path):
    """Requests admitted on fr@1 keep it while fr@2 serves new requests (keys carry the version)."""
    cache = make_cache(Loader())
    admitted = cache.lease("fr@1").result(timeout=30)
    new = cache.lease("fr@2").result(timeout=30)
    assert admitted.adapter is not new.adapter
    assert (admitted.adapter.name, new.adapter.name) == ("fr@1", "fr@2")
    admitted.release()
    new.release()


def gpu_cache(loader: Loader, device_items: int, host_items: int, host_bytes=Adapter.nbytes) -> AdapterCache:
    """A cache for a (simulated) GPU: host and device are separate tiers."""
    return AdapterCache(
        loader,
        prepare=lambda a: a,
        device=torch.device("cuda", 0),
        device_budget_bytes=device_items * SIZE,
        host_budget_bytes=host_items * SIZE,
        executor=ThreadPoolExecutor(max_workers=2),
        host_bytes=host_bytes,
    )


def test_host_copies_of_device_resident_adapters_count_against_the_host_budget():
    """Before, only host copies of adapters no longer on the device could be evicted: with a device tier larger
    than the host tier, every device-resident adapter kept its pinned host copy, past `host_budget_mb`."""
    cache = gpu_cache(Loader(), device_items=8, host_items=2)
    for key in ("a@1", "b@1", "c@1", "d@1", "e@1"):
        use(cache, key)
    stats = cache.stats()
    assert stats.device_entries == 5  # the device tier holds them all
    assert stats.host_entries == 2 and stats.host_bytes <= cache.host_budget
    held = cache.lease("f@1").result(timeout=30)  # in use: its host copy is still only a spare
    assert cache.stats().host_bytes <= cache.host_budget
    held.release()


def test_the_host_budget_counts_what_a_host_copy_holds():
    """On CUDA a host copy holds pinned blocks rounded up to powers of two; the budget counts those bytes."""
    cache = gpu_cache(Loader(), device_items=8, host_items=4, host_bytes=lambda a: 2 * a.nbytes())
    for key in ("a@1", "b@1", "c@1", "d@1"):
        use(cache, key)
    stats = cache.stats()
    assert stats.host_entries == 2 and stats.host_bytes == 4 * SIZE <= cache.host_budget
