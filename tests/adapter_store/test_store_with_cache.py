"""Store + cache together: hot swap, delete while in use, a corrupt file failing only its own adapter."""

from __future__ import annotations

import io
import struct

import pytest
import torch

from chorus_server.engine import pad_batch
from chorus_server.runtime import adapter_cache
from chorus_store.errors import AdapterCorrupt
from tests.adapter_store.conftest import damage


@pytest.fixture
def cache(store, tiny_model):
    return adapter_cache(store, tiny_model[2], tiny_model[1], 10**8, 10**8)


def test_hot_swap_and_delete_while_running(store, cache, adapter_files, tiny_model):
    engine = tiny_model[1]
    store.publish("acme/fr", adapter_files[0])
    audio = pad_batch([torch.randn(8000, generator=torch.Generator().manual_seed(0))])
    running = cache.lease(store.get("acme/fr").ref).result(timeout=30)  # admitted on fr@1
    before = engine.forward(*audio, [running.adapter])[0]

    store.publish("acme/fr", adapter_files[1])  # hot swap: new requests resolve fr -> fr@2
    assert store.get("acme/fr").ref == "acme/fr@2"
    with cache.acquire(store.get("acme/fr").ref, timeout=30) as newer:
        assert newer.info.name != running.adapter.info.name

    store.delete("acme/fr")
    cache.invalidate("acme/fr@")
    after = engine.forward(*audio, [running.adapter])[0]  # the admitted request still finishes on fr@1
    assert torch.equal(before, after)
    running.release()
    assert cache.resident_keys() == []


def test_corrupt_file_fails_only_that_adapter(store, cache, adapter_files):
    store.publish("acme/good", adapter_files[0])
    bad = store.publish("acme/bad", adapter_files[1])
    damage(store, "acme/bad", "data", adapter_files[1].read_bytes()[:-3] + b"xyz")
    with pytest.raises(AdapterCorrupt):
        cache.lease(bad.ref).result(timeout=30)
    with cache.acquire("acme/good@1", timeout=30) as adapter:
        assert adapter.vocab.blank_id == 0
    fixed = store.publish("acme/bad", adapter_files[1])  # the next good version loads fine
    with cache.acquire(fixed.ref, timeout=30):
        pass


def test_weights_turned_nan_in_the_store_never_load(store, cache, adapter_files):
    """Cold loads skip the NaN/Inf scan that publish ran; the checksum taken at publish is what stops bytes
    changed since (here the last weight of the file made NaN, same length)."""
    record = store.publish("acme/nan", adapter_files[0])
    data = adapter_files[0].read_bytes()
    damage(store, "acme/nan", "data", data[:-4] + struct.pack("<f", float("nan")))
    with pytest.raises(AdapterCorrupt):
        cache.lease(record.ref).result(timeout=30)
    assert cache.resident_keys() == []


def test_a_version_published_with_a_fingerprint_override_is_served(store, cache, adapter_files):
    """Publish and serve run one check: what publish accepted with an override, the loader accepts too."""
    from tests.adapter_store.test_rejections import rebuild

    other = "w2v2-" + "1" * 24
    data = rebuild(adapter_files[0], edit_meta=lambda m: m.update(backbone_fingerprint=other))
    record = store.publish("acme/forced", io.BytesIO(data), allow_fingerprint_mismatch=True)
    with cache.acquire(record.ref, timeout=30) as adapter:
        assert adapter.info.backbone_fingerprint == other
    store.publish("acme/strict", io.BytesIO(data.replace(b"1" * 24, b"2" * 24)), allow_fingerprint_mismatch=True)
    assert store.get("acme/strict").fingerprint_override
