"""LocalStore: versions, pointers, listing, deletion, corruption, MMS import."""

from __future__ import annotations

import hashlib
import io

import pytest

from chorus_server.engine.adapter_format import adapter_from_bytes
from chorus_store import AdapterNotFound, AdapterRejected, LocalStore, PublishConflict, VersionNotFound, parse_ref
from chorus_store.errors import AdapterCorrupt


def test_publish_versions_and_current(store, adapter_files):
    first = store.publish("fr", adapter_files[0], owner="acme")
    assert (first.version, first.is_current, first.owner, first.visibility) == (1, True, "acme", "private")
    assert first.sha256 == hashlib.sha256(adapter_files[0].read_bytes()).hexdigest()
    second = store.publish("fr", io.BytesIO(adapter_files[1].read_bytes()), owner="acme")
    assert second.version == 2
    assert store.get("fr").version == 2
    assert store.get("fr@1").version == 1 and not store.get("fr@1").is_current
    assert [r.version for r in store.versions("fr")] == [1, 2]
    assert store.read(store.get("fr@1")) == adapter_files[0].read_bytes()
    assert first.kind in ("houlsby", "mms") and first.vocab_size > 0 and first.layers


def test_refs_and_ids():
    assert parse_ref("fr") == ("fr", None)
    assert parse_ref("fr-ca.v2@12") == ("fr-ca.v2", 12)
    for bad in ("", "Fr", "-fr", "fr@0", "fr@x", "a" * 65, "fr/../x"):
        with pytest.raises(AdapterRejected):
            parse_ref(bad)


def test_unknown_ids_and_versions(store, adapter_files):
    with pytest.raises(AdapterNotFound, match="GET /v1/adapters"):
        store.get("nope")
    store.publish("de", adapter_files[0], owner="acme")
    with pytest.raises(VersionNotFound, match=r"versions: \[1\]"):
        store.get("de@7")


def test_expected_version_and_owner_conflicts(store, adapter_files):
    store.publish("it", adapter_files[0], owner="acme", expected_version=0)
    with pytest.raises(PublishConflict, match="is at version 1, not 0"):
        store.publish("it", adapter_files[1], owner="acme", expected_version=0)
    with pytest.raises(PublishConflict, match="another tenant"):
        store.publish("it", adapter_files[1], owner="globex")
    assert [r.version for r in store.versions("it")] == [1]


def test_listing_paginates(store, adapter_files):
    ids = [f"a{i:02d}" for i in range(7)]
    for adapter_id in ids:
        store.publish(adapter_id, adapter_files[0], owner="acme", visibility="public")
    seen, cursor = [], None
    while True:
        page = store.list_adapters(after=cursor, limit=3)
        seen += [r.id for r in page.items]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == ids
    with pytest.raises(AdapterRejected, match="limit"):
        store.list_adapters(limit=0)


def test_delete_version_and_adapter(store, adapter_files):
    for f in adapter_files[:3]:
        store.publish("es", f, owner="acme")
    store.delete("es", 3)  # the current one: falls back to the newest left
    assert store.get("es").version == 2
    store.delete("es", 1)
    assert [r.version for r in store.versions("es")] == [2]
    with pytest.raises(VersionNotFound):
        store.delete("es", 1)
    store.publish("es", adapter_files[0], owner="acme")
    assert store.get("es").version == 4  # numbers are never reused
    store.delete("es")
    with pytest.raises(AdapterNotFound):
        store.get("es")
    with pytest.raises(AdapterNotFound):
        store.delete("es")
    assert store.publish("es", adapter_files[0], owner="other").version == 1  # the id is free again


def test_deleting_last_version_removes_adapter(store, adapter_files):
    store.publish("pl", adapter_files[0], owner="acme")
    store.delete("pl", 1)
    with pytest.raises(AdapterNotFound):
        store.get("pl")


def test_record_survives_reopen(store, adapter_files, tiny_model):
    store.publish("sv", adapter_files[0], owner="acme", visibility="public")
    reopened = LocalStore(store.root, tiny_model[2])
    assert reopened.get("sv").visibility == "public"


def test_corrupt_bytes_on_disk_are_detected(store, adapter_files):
    record = store.publish("fi", adapter_files[0], owner="acme")
    path = store.adapters_dir / "fi" / "v000001.safetensors"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(AdapterCorrupt, match="publish it again"):
        store.read(record)
    good = store.publish("fi", adapter_files[1], owner="acme")
    assert adapter_from_bytes(store.read(good)).info.kind in ("houlsby", "mms")
