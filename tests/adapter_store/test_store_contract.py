"""The store contract, run on every backend (LocalStore, and S3Store on a real S3 server): versions, pointers,
namespaces and public names, listing, deletion and tombstones, damage isolation."""

from __future__ import annotations

import hashlib
import io
import json

import pytest

from chorus_server.engine.adapter_format import adapter_from_bytes
from chorus_store import AdapterNotFound, AdapterRejected, PublishConflict, VersionNotFound, parse_ref
from chorus_store.base import Ref, split_ref
from chorus_store.errors import AdapterCorrupt, NameTaken
from tests.adapter_store.conftest import damage, put_stray, reopen, touched


def test_publish_versions_and_current(store, adapter_files):
    first = store.publish("acme/fr", adapter_files[0])
    assert (first.version, first.is_current, first.owner, first.visibility) == (1, True, "acme", "private")
    assert (first.id, first.name, first.ref) == ("acme/fr", "fr", "acme/fr@1")
    assert first.sha256 == hashlib.sha256(adapter_files[0].read_bytes()).hexdigest()
    second = store.publish("acme/fr", io.BytesIO(adapter_files[1].read_bytes()))
    assert second.version == 2
    assert store.get("acme/fr").version == 2
    assert store.get("acme/fr@1").version == 1 and not store.get("acme/fr@1").is_current
    assert [r.version for r in store.versions("acme/fr")] == [1, 2]
    assert store.read(store.get("acme/fr@1")) == adapter_files[0].read_bytes()
    assert first.kind in ("houlsby", "mms") and first.vocab_size > 0 and first.layers


def test_refs_and_ids():
    assert parse_ref("acme/fr") == ("acme/fr", None)
    assert parse_ref("acme/fr-ca.v2@12") == ("acme/fr-ca.v2", 12)
    assert split_ref("fr@3") == Ref(None, "fr", 3)
    assert split_ref("a.b/c_d") == Ref("a.b", "c_d", None)
    bad = ["", "Fr", "-fr", "fr@0", "fr@x", "a" * 65, "fr/../x", "fr\n", "acme/fr\n", "fr@1\n", "fr@²", "fr@١"]
    bad += ["fr@01", "fr@", "/fr", "acme/", "a/b/c", "fr @1", "ﬁ", "fr@+1", "fr@1_0", "fr@9999999999"]
    for ref in bad:
        with pytest.raises(AdapterRejected):
            split_ref(ref)
    with pytest.raises(AdapterRejected, match="full ID"):
        parse_ref("fr")  # the store always takes full IDs


def test_unknown_ids_and_versions(store, adapter_files):
    with pytest.raises(AdapterNotFound, match="GET /v1/adapters"):
        store.get("acme/nope")
    store.publish("acme/de", adapter_files[0])
    with pytest.raises(VersionNotFound, match=r"versions: \[1\]"):
        store.get("acme/de@7")


def test_expected_version_and_namespaces(store, adapter_files):
    store.publish("acme/it", adapter_files[0], expected_version=0)
    with pytest.raises(PublishConflict, match="is at version 1, not 0"):
        store.publish("acme/it", adapter_files[1], expected_version=0)
    # The same name in another namespace is another adapter.
    assert store.publish("globex/it", adapter_files[1]).version == 1
    assert [r.version for r in store.versions("acme/it")] == [1]


def test_public_names_are_one_namespace(store, adapter_files):
    store.publish("acme/sv", adapter_files[0], visibility="public")
    assert store.public_owner("sv") == "acme"
    store.publish("globex/sv", adapter_files[0])  # private: no clash
    with pytest.raises(NameTaken, match="acme/sv"):
        store.publish("globex/sv", adapter_files[0], visibility="public")
    assert store.get("globex/sv").visibility == "private" and store.versions("globex/sv")[-1].version == 1
    # Visibility is kept unless a publish changes it; making it private frees the public name.
    assert store.publish("acme/sv", adapter_files[1]).visibility == "public"
    assert store.publish("acme/sv", adapter_files[1], visibility="private").visibility == "private"
    assert store.public_owner("sv") is None
    assert store.publish("globex/sv", adapter_files[0], visibility="public").visibility == "public"
    assert store.public_owner("sv") == "globex"
    with pytest.raises(AdapterRejected, match="visibility"):
        store.publish("acme/x", adapter_files[0], visibility="secret")


def test_stale_public_claim_is_taken_over(store, adapter_files):
    store.publish("acme/no", adapter_files[0], visibility="public")
    damage(store, "acme/no", "meta", b'{"visibility": "private"}')  # made private by a writer that then crashed
    assert store.publish("globex/no", adapter_files[0], visibility="public").visibility == "public"
    assert store.public_owner("no") == "globex"


def flat(pages: list[list[str]]) -> list[str]:
    return [item for page in pages for item in page]


def test_listing_paginates_and_filters(store, adapter_files):
    for adapter_id in [f"acme/a{i:02d}" for i in range(5)] + ["globex/b", "zed/c"]:
        store.publish(adapter_id, adapter_files[0], visibility="private" if adapter_id == "globex/b" else "public")

    def pages(where=None, limit=2) -> list[list[str]]:
        out, cursor = [], None
        while True:
            page = store.list_adapters(after=cursor, limit=limit, where=where)
            out.append([r.id for r in page.items])
            assert page.next_cursor is None or page.next_cursor == page.items[-1].id
            if page.next_cursor is None:
                return out
            cursor = page.next_cursor

    assert flat(pages()) == [f"acme/a{i:02d}" for i in range(5)] + ["globex/b", "zed/c"]
    public = flat(pages(lambda r: r.visibility == "public"))
    assert "globex/b" not in public and len(public) == 6
    # The cursor never names an item the filter dropped, even when the page ends next to it.
    assert pages(lambda r: r.id == "globex/b", limit=1) == [["globex/b"]]
    with pytest.raises(AdapterRejected, match="limit"):
        store.list_adapters(limit=0)


def test_visibility_belongs_to_each_version(store, adapter_files):
    for visibility in (None, None, "public"):
        store.publish("acme/book", adapter_files[0], visibility=visibility)
    assert [r.visibility for r in store.versions("acme/book")] == ["private", "private", "public"]
    assert store.get("acme/book").public_versions == [3] and store.public_owner("book") == "acme"
    assert store.publish("acme/book", adapter_files[1]).visibility == "public"  # unset: the last publish's
    assert store.get("acme/book@1").visibility == "private"
    assert store.set_visibility("acme/book@1", "public").visibility == "public"  # the owner publishes v1 too
    assert store.set_visibility("acme/book", "private").version == 4  # the current version, alone
    assert store.get("acme/book").public_versions == [1, 3]
    assert store.publish("acme/book", adapter_files[0]).visibility == "private"  # follows the current one's
    # A viewer's listing shows another owner's newest public version, never a private current one.
    assert [(r.id, r.version) for r in store.list_adapters(viewer="globex").items] == [("acme/book", 3)]
    assert [(r.id, r.version) for r in store.list_adapters(viewer="acme").items] == [("acme/book", 5)]
    store.delete("acme/book", 3)
    assert [(r.id, r.version) for r in store.list_adapters(viewer="globex").items] == [("acme/book", 1)]
    with pytest.raises(VersionNotFound):
        store.set_visibility("acme/book@3", "public")
    store.publish("acme/book", adapter_files[0], visibility="private")  # withdraws every version
    assert store.get("acme/book").public_versions == [] and store.public_owner("book") is None
    assert store.list_adapters(viewer="globex").items == []


def test_metas_written_before_per_version_visibility_read_fail_closed(store, adapter_files):
    for _ in range(3):
        store.publish("acme/old", adapter_files[0], visibility="public")
    # The meta as the previous release wrote it: one visibility for the whole adapter, no version list.
    legacy = {"visibility": "public", "created_at": 1.0}
    if not hasattr(store, "root"):
        legacy |= {"current": 3, "last": 3, "versions": [1, 2, 3]}
    damage(store, "acme/old", "meta", json.dumps(legacy).encode())
    assert [r.visibility for r in store.versions("acme/old")] == ["private", "private", "public"]
    assert store.publish("acme/old", adapter_files[1]).public_versions == [3, 4]  # the next write keeps the list
    assert store.set_visibility("acme/old@1", "public").public_versions == [1, 3, 4]


def test_a_listing_reads_nothing_of_other_owners_private_adapters(store, adapter_files):
    for i in range(12):
        store.publish(f"acme/p{i:02d}", adapter_files[i % 2])
    store.publish("acme/open", adapter_files[0], visibility="public")
    store.publish("globex/own", adapter_files[1])
    with touched(store) as paths:
        listed = [r.id for r in store.list_adapters(viewer="globex").items]
    assert listed == ["acme/open", "globex/own"]
    assert paths and not [p for p in paths if p.startswith("adapters/acme/p")], paths
    assert not [p for p in paths if p.rstrip("/") in ("adapters", "adapters/acme")]  # not even their names
    assert len(store.list_adapters().items) == 14  # an unscoped listing (admins) still sees everything


STRAYS = [
    "adapters/acme/.snapshot/meta.json",  # an NFS snapshot folder among an owner's adapters
    "adapters/acme/.snapshot/adapter.json",
    "adapters/.snapshot/fr/meta.json",  # ... among the owners
    "adapters/Acme/fr/meta.json",
    "adapters/acme/fr/v1.json",  # not a version name the store writes
    "adapters/acme/fr/v0000001.safetensors",
    "adapters/acme/fr/.snapshot/v000001.json",
    "adapters/README",
    "public/.snapshot/x",
]


def test_stray_entries_are_skipped_and_logged_once(store, adapter_files, caplog):
    store.publish("acme/fr", adapter_files[0], visibility="public")
    store.publish("globex/de", adapter_files[1])
    for stray in STRAYS:
        put_stray(store, stray, b'{"visibility": "public"}')
    with caplog.at_level("WARNING", logger="chorus_store"):
        assert [r.id for r in store.list_adapters().items] == ["acme/fr", "globex/de"]
        first = [r.getMessage() for r in caplog.records if "skips" in r.getMessage()]
        caplog.clear()
        assert [r.id for r in store.list_adapters().items] == ["acme/fr", "globex/de"]
        assert not [r for r in caplog.records if "skips" in r.getMessage()]  # once per entry, not per listing
    assert any(".snapshot" in m for m in first) and any("v1.json" in m for m in first)
    assert [r.version for r in store.versions("acme/fr")] == [1]
    assert store.owner_bytes("acme") == adapter_files[0].stat().st_size
    assert store.publish("acme/fr", adapter_files[1]).version == 2  # strays do not take version numbers
    reopened = reopen(store)  # recovery leaves what it did not write alone
    assert [r.id for r in reopened.list_adapters().items] == ["acme/fr", "globex/de"]
    if hasattr(store, "root"):
        assert all((store.root / stray).exists() for stray in STRAYS)


def test_delete_keeps_a_tombstone_so_numbers_are_never_reused(store, adapter_files):
    for f in adapter_files[:3]:
        store.publish("acme/es", f)
    store.delete("acme/es", 3)  # the current one: falls back to the newest left
    assert store.get("acme/es").version == 2
    store.delete("acme/es", 1)
    assert [r.version for r in store.versions("acme/es")] == [2]
    with pytest.raises(VersionNotFound):
        store.delete("acme/es", 1)
    store.publish("acme/es", adapter_files[0])
    assert store.get("acme/es").version == 4
    store.delete("acme/es")
    with pytest.raises(AdapterNotFound):
        store.get("acme/es")
    with pytest.raises(AdapterNotFound):
        store.delete("acme/es")
    assert store.list_adapters().items == []
    again = store.publish("acme/es", adapter_files[1])
    assert again.version == 5 and again.visibility == "private"  # a full delete does not restart numbering
    assert reopen(store).publish("acme/es", adapter_files[1]).version == 6
    store.delete("acme/es", purge=True)  # an admin releases the ID: numbering restarts
    assert store.publish("acme/es", adapter_files[0]).version == 1


def test_deleting_every_version_deletes_the_adapter_and_its_public_name(store, adapter_files):
    store.publish("acme/pl", adapter_files[0], visibility="public")
    store.delete("acme/pl", 1)
    with pytest.raises(AdapterNotFound):
        store.get("acme/pl")
    assert store.public_owner("pl") is None
    assert store.publish("acme/pl", adapter_files[0]).version == 2


def test_record_survives_reopen(store, adapter_files):
    store.publish("acme/sv", adapter_files[0], visibility="public")
    assert reopen(store).get("acme/sv").visibility == "public"


def test_corrupt_bytes_on_disk_are_detected(store, adapter_files):
    record = store.publish("acme/fi", adapter_files[0])
    data = bytearray(adapter_files[0].read_bytes())
    data[-5] ^= 0xFF
    damage(store, "acme/fi", "data", bytes(data))
    with pytest.raises(AdapterCorrupt, match="publish it again"):
        store.read(record)
    good = store.publish("acme/fi", adapter_files[1])
    assert adapter_from_bytes(store.read(good)).info.kind in ("houlsby", "mms")


def test_loads_check_the_fast_checksum_recorded_at_publish(store, adapter_files):
    """Every version records sha256 and xxh3-128 of its bytes; `verify` (the cache loader's check on every cold
    load) uses the fast one, so it catches a flipped byte and a truncated file without hashing sha256."""
    import hashlib

    import xxhash

    from chorus_store.errors import AdapterCorrupt as Corrupt

    record = store.publish("acme/xx", adapter_files[0])
    data = adapter_files[0].read_bytes()
    assert record.xxh3 == xxhash.xxh3_128_hexdigest(data) and record.sha256 == hashlib.sha256(data).hexdigest()
    store.verify(record, bytearray(data))
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x01
    for bad in (flipped, bytearray(data[:-1])):
        with pytest.raises(Corrupt, match="publish it again"):
            store.verify(record, bad)


def test_versions_recorded_without_the_fast_checksum_verify_by_sha256(store, adapter_files):
    """Stores written before xxh3 was recorded keep working: their records have only the sha256."""
    import dataclasses

    from chorus_store.errors import AdapterCorrupt as Corrupt

    record = dataclasses.replace(store.publish("acme/old", adapter_files[0]), xxh3="")
    data = bytearray(adapter_files[0].read_bytes())
    store.verify(record, data)
    data[-5] ^= 0xFF
    with pytest.raises(Corrupt):
        store.verify(record, data)


@pytest.mark.parametrize(
    "which,garbage",
    [
        ("pointer", b"banana"),
        ("pointer", "١".encode()),
        ("meta", b"{not json"),
        ("meta", b"[]"),
        ("record", b"{bad"),
        ("record", b'{"unexpected": 1}'),
        ("meta", b"\xff\xfe"),
    ],
)
def test_one_damaged_adapter_harms_no_other(store, adapter_files, which, garbage):
    store.publish("acme/ok", adapter_files[0], visibility="public")
    store.publish("evil/broken", adapter_files[0], visibility="public")
    damage(store, "evil/broken", which, garbage)
    with pytest.raises(AdapterCorrupt, match="damaged") as caught:
        store.get("evil/broken")
    assert "banana" not in str(caught.value) and "{" not in str(caught.value)  # the message does not echo content
    assert [r.id for r in store.list_adapters().items] == ["acme/ok"]  # listing skips it
    store.delete("evil/broken")  # its owner can always delete it
    with pytest.raises(AdapterNotFound):
        store.get("evil/broken")
    assert store.publish("evil/broken", adapter_files[1]).version == 2


def test_racing_publishers_in_one_process_get_one_version_each(store, adapter_files):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        records = list(pool.map(lambda i: store.publish("acme/race", adapter_files[i % 2]), range(8)))
    assert sorted(r.version for r in records) == list(range(1, 9))
    assert store.get("acme/race").version == 8 and [r.version for r in store.versions("acme/race")] == list(range(1, 9))


def test_pins_are_recorded_for_every_server_on_the_store(store):
    assert store.pins() == {}
    store.set_pin("acme/fr", "acme/fr@1")
    store.set_pin("acme/de", "acme/de@3")
    store.set_pin("acme/fr", "acme/fr@2")  # a new version moves the pin
    assert store.pins() == {"acme/fr": "acme/fr@2", "acme/de": "acme/de@3"}
    store.set_pin("acme/de", None)
    store.set_pin("acme/never", None)  # unpinning what is not pinned is fine
    assert store.pins() == {"acme/fr": "acme/fr@2"}
    with pytest.raises(ValueError):
        store.set_pin("acme/fr", "acme/de@1")
    assert store.list_adapters().items == []  # the pin index is not an adapter
