"""Key lookups off the event loop: a key file locked by another process stalls neither /healthz nor requests with
cached keys, a lookup that cannot read the file answers 503 (not 500, not a frozen server), a read-only key file
fails no request (last_used_at is bookkeeping, written in the background), and a revocation — through the API or
`chorus keys revoke` in another process — still takes effect within 2 s.

The file-lock, damaged-file and read-only-file tests are about the SQLite file and run on SQLite only; the
PostgreSQL faults (database stopped, slow, pool exhausted) are in test_tenant_database_faults.py. The revocation
test runs on both backends."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from chorus_server import cli
from chorus_server.background import BackgroundServer
from chorus_server.live.wsclient import open_session, receive
from chorus_server.settings import get_settings
from chorus_server.tenants.keys import Role
from tests.server.conftest import make_settings, ring_at, running_app, without_collector_pauses
from tests.server.test_errors import error_of

ADMIN = "sk-root"


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def keyed_settings(tmp_path, model_dir, **auth_settings):
    return make_settings(tmp_path, model_dir, auth={"admin_keys": [ADMIN], **auth_settings})


def test_a_locked_key_file_stalls_neither_healthz_nor_cached_keys_and_uncached_ones_get_503(tmp_path, model_dir):
    ring = ring_at(tmp_path / "keys.sqlite3")
    _, cached = ring.create("acme", Role.USER)
    _, uncached = ring.create("acme", Role.USER)
    assert ring.lookup(cached)  # its last use is recent: the server has nothing to write for it
    settings = keyed_settings(tmp_path, model_dir, db_timeout_seconds=1.0)
    with BackgroundServer(settings) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.get("/v1/models", headers=auth(cached)).status_code == 200
        holder = sqlite3.connect(tmp_path / "keys.sqlite3", isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")  # another process holds the key file's lock, and commits nothing
        try:
            blocked: list[httpx.Response] = []
            lookup = threading.Thread(
                target=lambda: blocked.append(httpx.get(f"{server.url}/v1/models", headers=auth(uncached), timeout=30))
            )
            lookup.start()
            slowest = {"healthz": 0.0, "cached": 0.0}
            started = time.monotonic()
            with without_collector_pauses():
                while lookup.is_alive() or time.monotonic() - started < 1.5:  # past the cache's 1 s time to live
                    for name, path, headers in (("healthz", "/healthz", {}), ("cached", "/v1/models", auth(cached))):
                        sent = time.perf_counter()
                        answer = client.get(path, headers=headers)
                        assert answer.status_code == 200, answer.text
                        slowest[name] = max(slowest[name], time.perf_counter() - sent)
                    time.sleep(0.05)  # probes, not a load test: well inside the tenant's request rate limit
                    if time.monotonic() - started > 20:
                        break
            lookup.join(30)
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert slowest["healthz"] < 0.5 and slowest["cached"] < 0.5, slowest
        error = error_of(blocked[0], 503, "tenant_database_unavailable")
        assert int(blocked[0].headers["retry-after"]) >= 1 and "retry" in error["message"]
        assert "keys.sqlite3" not in error["message"]  # no server paths in answers
        assert client.get("/v1/models", headers=auth(uncached)).status_code == 200  # once the lock is gone


def test_a_realtime_handshake_with_a_locked_key_file_does_not_stall_the_server(tmp_path, model_dir):
    """The WebSocket route checks its key off the event loop too: while one handshake waits for the locked key
    file, /healthz answers at once, and the handshake ends in a refusal rather than a frozen server."""
    _, uncached = ring_at(tmp_path / "keys.sqlite3").create("acme", Role.USER)
    settings = keyed_settings(tmp_path, model_dir, db_timeout_seconds=1.5)
    with BackgroundServer(settings) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        holder = sqlite3.connect(tmp_path / "keys.sqlite3", isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        outcome: list[object] = []

        def handshake() -> None:
            try:
                with open_session(server.url, uncached) as ws:
                    outcome.append(receive(ws, timeout=30))
            except Exception as exc:  # a refused handshake or a closed session: either is an answer
                outcome.append(exc)

        try:
            waiting = threading.Thread(target=handshake)
            waiting.start()
            threading.Event().wait(0.3)  # the handshake is now waiting for the lock
            slowest, deadline = 0.0, time.monotonic() + 30
            with without_collector_pauses():
                while waiting.is_alive() and time.monotonic() < deadline:
                    sent = time.perf_counter()
                    assert client.get("/healthz").status_code == 200
                    slowest = max(slowest, time.perf_counter() - sent)
            waiting.join(30)
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert slowest < 0.5, slowest
        assert outcome, "the handshake never ended"
        first = outcome[0]
        assert not isinstance(first, dict) or first.get("type") == "error", first


def test_a_damaged_key_file_is_503_not_500(tmp_path, model_dir):
    _, secret = ring_at(tmp_path / "keys.sqlite3").create("acme", Role.USER)
    with running_app(keyed_settings(tmp_path, model_dir)) as client:
        (tmp_path / "keys.sqlite3").write_bytes(b"this is not a database" * 100)
        error_of(client.get("/v1/models", headers=auth(secret)), 503, "tenant_database_unavailable")
        error_of(client.get("/metrics", headers=auth(secret)), 503, "tenant_database_unavailable")


def test_a_read_only_key_file_does_not_fail_requests(tmp_path, model_dir):
    path = tmp_path / "keys.sqlite3"
    info, secret = ring_at(path).create("acme", Role.USER)  # never used: the server will want to record its use
    with running_app(keyed_settings(tmp_path, model_dir)) as client:
        # SQLite treats a file whose header's write version is above 2 as read-only: reads work, every write fails
        # ("attempt to write a readonly database"), even for root, whom file modes would not stop.
        header = bytearray(path.read_bytes())
        header[18] = 3
        path.write_bytes(bytes(header))
        for _ in range(3):
            assert client.get("/v1/models", headers=auth(secret)).status_code == 200
        client.app.state.chorus.auth.keys.close()  # the background write has been tried, and failed quietly
        assert client.get("/v1/models", headers=auth(secret)).status_code == 200
    header[18] = 1
    path.write_bytes(bytes(header))
    assert next(k for k in ring_at(path).active() if k.id == info.id).last_used_at is None


def revoked_within(client: Any, secret: str, revoke: Callable[[], object], seconds: float = 2.0) -> float:
    """Revoke, then poll until the key is refused: the seconds it took (fails past `seconds`)."""
    assert client.get("/v1/models", headers=auth(secret)).status_code == 200
    with without_collector_pauses():
        revoke()
        started = time.monotonic()
        while client.get("/v1/models", headers=auth(secret)).status_code == 200:
            assert time.monotonic() - started < seconds, "the revoked key still works"
            threading.Event().wait(0.02)
        return time.monotonic() - started


@pytest.mark.usefixtures("tenant_backend")
def test_revocation_takes_effect_within_two_seconds(tmp_path, model_dir, monkeypatch):
    monkeypatch.setenv("CHORUS_DATA_DIR", str(tmp_path))
    for name in ("CHORUS_AUTH__KEYS", "CHORUS_AUTH__ADMIN_KEYS", "CHORUS_AUTH__ANONYMOUS", "CHORUS_AUTH__KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    ring = ring_at(tmp_path / "keys.sqlite3")
    by_api, by_cli = ring.create("acme", Role.USER), ring.create("acme", Role.USER)
    try:
        with running_app(keyed_settings(tmp_path, model_dir)) as client:
            took = revoked_within(
                client, by_api[1], lambda: client.delete(f"/v1/keys/{by_api[0].id}", headers=auth(ADMIN))
            )
            assert took < 0.1  # through this server's own ring: the next request
            took = revoked_within(client, by_cli[1], lambda: cli.main(["keys", "revoke", by_cli[0].id]))
            assert took <= 2.0
            error_of(client.get("/v1/models", headers=auth(by_cli[1])), 401, "invalid_api_key")
    finally:
        get_settings.cache_clear()


def test_cached_verdicts_follow_the_ttl_and_the_change_counter(tmp_path):
    from chorus_server.tenants.key_cache import KeyCache
    from chorus_server.tenants.keys import key_hash

    ring = ring_at(tmp_path / "keys.sqlite3")
    info, secret = ring.create("acme", Role.USER)
    now = [0.0]
    cache = KeyCache(ring, ttl=1.0, watch_every=3600, clock=lambda: now[0])
    try:
        digest = key_hash(secret)
        assert cache.verify(digest) == ring.find(digest)
        now[0] = 0.9
        assert cache.cached(digest) is not None
        now[0] = 1.1
        assert cache.cached(digest) is None  # past the time to live, and the file was not re-checked
        cache._observed = (ring.change_counter(), 1.0)  # the watcher saw the file unchanged at t=1.0
        assert cache.cached(digest) is not None
        ring_at(ring.store.path).revoke(info.id)  # another process commits
        cache._observed = (ring.change_counter(), 1.05)
        now[0] = 2.1
        assert cache.cached(digest) is None and cache.verify(digest) is None
    finally:
        cache.close()
