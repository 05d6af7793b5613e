"""The PostgreSQL tenant store itself: the change marker, audit times and filters, and bounded failures of an
unreachable database (the server-level tenancy suite runs on both backends in tests/server)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

pytest.importorskip("psycopg")

from chorus_server.background import free_port
from chorus_server.tenants.base import AuditEntry, DatabaseUnavailable, KeyInfo, Role
from chorus_server.tenants.postgres.store import PostgresTenantStore


@pytest.fixture
def store(postgres_url: str) -> Iterator[PostgresTenantStore]:
    opened = PostgresTenantStore(postgres_url, timeout=2.0, pool_size=2)
    yield opened
    opened.close()


def test_key_and_limit_writes_move_the_version_and_key_use_does_not(store: PostgresTenantStore) -> None:
    start = store.version()
    store.create_key(KeyInfo("k1", "acme", Role.USER, 1.0), b"h" * 32)
    created = store.version()
    store.touch_key("k1", 2.0)
    assert store.version() == created and store.list_keys()[0].last_used_at == 2.0
    store.set_limit_overrides("acme", {"requests_per_minute": 5})
    limited = store.version()
    assert start is not None and created is not None and limited is not None and start < created < limited
    assert store.revoke_key("k1", 3.0) and not store.revoke_key("k1", 4.0) and store.find_key(b"h" * 32) is None
    assert store.version() != limited and not store.has_keys()


def test_audit_entries_keep_their_time_and_filter_like_sqlite(store: PostgresTenantStore) -> None:
    now = time.time()
    for i, tenant in enumerate(("one", "two", "one")):
        store.append_audit(AuditEntry(now + i, "tenant.limits", tenant, "ok", actor="cli:x", tenant=tenant))
    newest = store.audit_entries()
    assert [e.target for e in newest] == ["one", "two", "one"] and newest[0].time == pytest.approx(now + 2, abs=1e-5)
    assert [e.time for e in store.audit_entries(tenant="one")] == pytest.approx([now + 2, now], abs=1e-5)
    assert [e.target for e in store.audit_entries(since=now + 1)] == ["one", "two"]
    assert [e.id for e in store.audit_entries(before_id=newest[0].id, limit=1)] == [newest[1].id]


def test_an_unreachable_database_fails_every_call_in_bounded_time() -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/chorus"  # nothing listens there
    start = time.monotonic()
    store = PostgresTenantStore(url, timeout=1.0, pool_size=1)  # not fatal: the database may come up later
    try:
        assert store.version() is None
        with pytest.raises(DatabaseUnavailable, match="tenant database") as refused:
            store.take("acme", "requests", 1, 10, 1, time.time())
        assert "127.0.0.1" not in str(refused.value)  # the message is for callers; the log has the details
        assert time.monotonic() - start < 10
    finally:
        store.close()
