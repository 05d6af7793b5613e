"""Real child processes, on every store backend: a publisher killed mid-publish leaves nothing partial; 16
concurrent publishers get one version number each and never tear; deletes during reads fail cleanly."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from chorus_store import AdapterNotFound, LocalStore, VersionNotFound
from tests.adapter_store.conftest import reopen, spec_of

ROOT = Path(__file__).parents[2]
CHILD = textwrap.dedent(
    """
    import io, sys, time
    from pathlib import Path
    import chorus_store.local as local
    from chorus_store.s3 import S3Store
    from chorus_server.validation import BackboneValidator
    from tests.adapter_store.conftest import open_spec

    spec, hidden, layers, fp, src, marker, mode, go = sys.argv[1:9]
    store = open_spec(spec, BackboneValidator(int(hidden), int(layers), fp))
    data = Path(src).read_bytes()

    def hang():
        Path(marker).touch()
        time.sleep(3600)

    class Stalling(io.RawIOBase):
        '''Hands out the first half of the file, then hangs: a publisher killed mid-upload.'''
        def __init__(self):
            self.pos = 0
        def readable(self):
            return True
        def read(self, n=-1):
            if self.pos >= len(data) // 2:
                hang()
            chunk = data[self.pos : len(data) // 2]
            self.pos += len(chunk)
            return chunk

    if mode == "mid-upload":
        store.publish("acme/fr", Stalling())
    elif mode == "after-data":  # the data is stored, its record is not yet written
        original_json, original_put = local._write_json_atomic, S3Store._put
        def patched_json(path, body):
            if path.name.startswith("v"):
                hang()
            original_json(path, body)
        def patched_put(self, key, data, mode="overwrite"):
            if key.rsplit("/", 1)[-1].startswith("v") and key.endswith(".json"):
                hang()
            return original_put(self, key, data, mode)
        local._write_json_atomic, S3Store._put = patched_json, patched_put
        store.publish("acme/fr", Path(src))
    else:  # concurrent publisher: wait for the starting gun, then publish
        while not Path(go).exists():
            time.sleep(0.001)
        store.publish("acme/shared", Path(src))
    """
)


def spawn(store, src: Path, marker: Path, mode: str, go: Path) -> subprocess.Popen:
    spec = store.validator
    args = [spec_of(store), str(spec.hidden_size), str(spec.num_layers), spec.fingerprint, str(src), str(marker)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", CHILD, *args, mode, str(go)], stderr=subprocess.PIPE, env=env)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    """Wait for the child to reach its kill point (an event the child signals with a marker file)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"child exited early: {proc.stderr.read().decode() if proc.stderr else ''}")
        if time.monotonic() > deadline:
            raise AssertionError("child never reached its kill point")
        time.sleep(0.01)


@pytest.mark.parametrize("with_previous_version", [False, True])
@pytest.mark.parametrize("mode", ["mid-upload", "after-data"])
def test_killed_publisher_leaves_no_partial_version(store, adapter_files, tmp_path, mode, with_previous_version):
    if with_previous_version:
        store.publish("acme/fr", adapter_files[1])
    marker = tmp_path / "marker"
    proc = spawn(store, adapter_files[0], marker, mode, tmp_path / "unused")
    wait_for(marker, proc)
    proc.kill()
    proc.wait()

    reopened = reopen(store)  # LocalStore's recovery runs on open
    if with_previous_version:
        record = reopened.get("acme/fr")
        assert record.version == 1 and [r.version for r in reopened.versions("acme/fr")] == [1]
        assert record.sha256 == hashlib.sha256(adapter_files[1].read_bytes()).hexdigest()
    else:
        with pytest.raises(AdapterNotFound):
            reopened.get("acme/fr")
    if isinstance(reopened, LocalStore):
        assert [p.name for p in reopened.tmp_dir.iterdir() if p.suffix != ".lock"] == []
        assert not list((reopened.adapters_dir / "acme" / "fr").glob("v*.safetensors")) or with_previous_version
    after = reopened.publish("acme/fr", adapter_files[2])
    assert reopened.get("acme/fr").sha256 == after.sha256
    assert reopened.read(after) == adapter_files[2].read_bytes()


def test_sixteen_concurrent_publishers_get_one_version_each(store, adapter_files, tmp_path):
    go = tmp_path / "go"
    procs = [spawn(store, adapter_files[i % 2], tmp_path / f"m{i}", "concurrent", go) for i in range(16)]
    time.sleep(1.0)  # let the children import before the starting gun
    go.touch()
    for proc in procs:
        assert proc.wait(timeout=300) == 0, proc.stderr.read().decode() if proc.stderr else ""
    records = store.versions("acme/shared")
    assert [r.version for r in records] == list(range(1, 17))
    assert store.get("acme/shared").version == 16
    expected = {hashlib.sha256(f.read_bytes()).hexdigest() for f in adapter_files[:2]}
    assert {r.sha256 for r in records} == expected
    for record in records:
        assert hashlib.sha256(store.read(record)).hexdigest() == record.sha256


def test_a_delete_during_reads_fails_them_cleanly(store, adapter_files):
    record = store.publish("acme/gone", adapter_files[0])
    store.delete("acme/gone")
    with pytest.raises(VersionNotFound):
        store.read_unverified(record)  # a reader holding the old record
    with pytest.raises(AdapterNotFound):
        store.get("acme/gone")


KILLED_UPLOADER = """
import os, signal, sys
from pathlib import Path
from chorus_store.spool import spool_file
with spool_file(Path(sys.argv[1]), "upload-", ".safetensors") as (path, out):
    out.write(b"x" * (1 << 20))
    out.flush()
    os.kill(os.getpid(), signal.SIGKILL)  # as `kill -9` during an upload
"""


def test_uploads_of_killed_processes_are_removed_on_open_and_live_ones_kept(store, tmp_path):
    from chorus_store.spool import spool_file

    spool = store.tmp_dir if isinstance(store, LocalStore) else store.scratch
    spool.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    for _ in range(2):
        killed = subprocess.run([sys.executable, "-c", KILLED_UPLOADER, str(spool)], env=env, timeout=60)
        assert killed.returncode == -9
    (spool / "s3-upload-old.part").write_bytes(b"y" * 1000)  # a killed S3 publisher's staging copy
    assert len(list(spool.glob("*upload-*"))) == 3
    with spool_file(spool, "upload-", ".safetensors") as (live, out):  # another server's upload, in flight
        out.write(b"z")
        reopen(store)  # a restart (or a second server) on the same directory
        assert list(spool.glob("*upload-*")) == [live]
    assert not list(spool.glob("*upload-*"))


def test_s3_never_starts_a_multipart_upload(store, adapter_files, monkeypatch):
    if isinstance(store, LocalStore):
        pytest.skip("S3 only")
    import obstore

    calls: list[dict] = []
    original = obstore.put

    def put(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(obstore, "put", put)
    store.publish("acme/fr", adapter_files[0], visibility="public")
    # A killed publisher can leave no incomplete multipart upload: every object is one PUT.
    assert calls and all(call.get("use_multipart") is False for call in calls)
