"""LocalStore only: filesystem faults, and stores written before namespaces."""

from __future__ import annotations

import errno
import json
import os

import pytest

from chorus_store import LocalStore
from chorus_store.errors import StoreUnavailable


@pytest.fixture
def store(tmp_path, tiny_model):
    return LocalStore(tmp_path / "store", tiny_model[2])


def test_filesystem_faults_are_store_unavailable(store, adapter_files, monkeypatch):
    store.publish("acme/ro", adapter_files[0])

    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr("chorus_store.local._write_text_atomic", refuse)
    with pytest.raises(StoreUnavailable, match="Read-only"):
        store.publish("acme/ro", adapter_files[1])
    with pytest.raises(StoreUnavailable, match="Read-only"):
        store.delete("acme/ro")
    monkeypatch.undo()
    assert [r.version for r in store.versions("acme/ro")] == [1]  # nothing half-done
    assert store.publish("acme/ro", adapter_files[1]).version == 2


def test_a_store_from_before_namespaces_is_migrated(tmp_path, tiny_model, adapter_files):
    """Old layout: adapters/<id>/ with the owner in adapter.json. Every version survives, under owner/id."""
    old = LocalStore(tmp_path / "old", tiny_model[2])
    old.publish("default/default", adapter_files[0], visibility="public")
    old.publish("acme/fr", adapter_files[1])
    old.publish("acme/fr", adapter_files[2])
    root = old.adapters_dir
    for owner, name in (("default", "default"), ("acme", "fr")):  # rewrite it as the old layout had it
        folder = root / owner / name
        meta = json.loads((folder / "adapter.json").read_text())
        (folder / "adapter.json").write_text(json.dumps({**meta, "id": name, "owner": owner}))
        os.replace(folder, root / f"{name}.flat")
    for owner in ("default", "acme"):
        (root / owner).rmdir()
    for name in ("default", "fr"):
        os.replace(root / f"{name}.flat", root / name)
    (old.public_dir / "default").unlink()

    migrated = LocalStore(tmp_path / "old", tiny_model[2])
    assert [r.version for r in migrated.versions("acme/fr")] == [1, 2]
    assert migrated.read(migrated.get("acme/fr@2")) == adapter_files[2].read_bytes()
    assert migrated.get("default/default").visibility == "public" and migrated.public_owner("default") == "default"
    assert sorted(r.id for r in migrated.list_adapters().items) == ["acme/fr", "default/default"]


def test_a_store_opening_elsewhere_never_removes_a_live_upload(store, adapter_files, monkeypatch):
    """Another process's recovery runs exactly between an upload's creation and its lock (the race 16 publisher
    processes hit): the upload must survive it."""
    import fcntl

    import chorus_store.local as local

    real_flock = fcntl.flock
    recovered = []

    def flock_after_a_recovery(f, op):
        if op == fcntl.LOCK_EX and not recovered:
            recovered.append(LocalStore(store.root, store.validator))  # runs _recover, as a new process would
        return real_flock(f, op)

    monkeypatch.setattr(local.fcntl, "flock", flock_after_a_recovery)
    assert store.publish("acme/live", adapter_files[0]).version == 1
    assert recovered


def test_an_upload_finishing_during_recovery_does_not_break_opening(store, monkeypatch):
    """Another process's upload is listed, then finishes and removes its file before recovery opens it."""
    from pathlib import Path

    (store.tmp_dir / "finishing.part").write_bytes(b"x")
    real_open = Path.open

    def gone_meanwhile(self, *args, **kwargs):
        if self.suffix == ".part":
            self.unlink(missing_ok=True)
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", gone_meanwhile)
    assert LocalStore(store.root, store.validator).list_adapters().items == []
