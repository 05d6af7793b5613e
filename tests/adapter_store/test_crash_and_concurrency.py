"""Real child processes: killed mid-publish leaves nothing partial; concurrent publishers never tear."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from chorus_store import AdapterNotFound, LocalStore

CHILD = textwrap.dedent(
    """
    import io, sys, time
    from pathlib import Path
    import chorus_store.local as local
    from chorus_store import LocalStore
    from chorus_server.validation import BackboneValidator

    root, hidden, layers, fp, src, marker, mode, go = sys.argv[1:9]
    store = LocalStore(root, BackboneValidator(int(hidden), int(layers), fp))
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
    elif mode == "after-data":
        original = local._write_json_atomic
        def patched(path, body):
            if path.name.startswith("v"):
                hang()  # data file is in place, its record is not yet written
            original(path, body)
        local._write_json_atomic = patched
        store.publish("acme/fr", Path(src))
    else:  # concurrent publisher: wait for the starting gun, then publish
        while not Path(go).exists():
            time.sleep(0.001)
        store.publish("acme/shared", Path(src))
    """
)


def spawn(store: LocalStore, src: Path, marker: Path, mode: str, go: Path) -> subprocess.Popen:
    spec = store.validator
    args = [str(store.root), str(spec.hidden_size), str(spec.num_layers), spec.fingerprint, str(src), str(marker)]
    return subprocess.Popen([sys.executable, "-c", CHILD, *args, mode, str(go)], stderr=subprocess.PIPE)


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

    reopened = LocalStore(store.root, store.validator)  # recovery runs on open
    if with_previous_version:
        record = reopened.get("acme/fr")
        assert record.version == 1 and [r.version for r in reopened.versions("acme/fr")] == [1]
        assert record.sha256 == hashlib.sha256(adapter_files[1].read_bytes()).hexdigest()
    else:
        with pytest.raises(AdapterNotFound):
            reopened.get("acme/fr")
    leftovers = [p.name for p in reopened.tmp_dir.iterdir() if p.suffix != ".lock"]
    assert leftovers == []
    assert not list((reopened.adapters_dir / "acme" / "fr").glob("v*.safetensors")) or with_previous_version
    after = reopened.publish("acme/fr", adapter_files[2])
    assert reopened.get("acme/fr").sha256 == after.sha256
    assert reopened.read(after) == adapter_files[2].read_bytes()


def test_concurrent_publishers_produce_clean_versions(store, adapter_files, tmp_path):
    go = tmp_path / "go"
    procs = [spawn(store, adapter_files[i], tmp_path / f"m{i}", "concurrent", go) for i in range(2)]
    go.touch()
    for proc in procs:
        assert proc.wait(timeout=120) == 0, proc.stderr.read().decode() if proc.stderr else ""
    records = store.versions("acme/shared")
    assert [r.version for r in records] == [1, 2]
    expected = {hashlib.sha256(f.read_bytes()).hexdigest() for f in adapter_files[:2]}
    assert {r.sha256 for r in records} == expected
    for record in records:
        assert hashlib.sha256(store.read(record)).hexdigest() == record.sha256
