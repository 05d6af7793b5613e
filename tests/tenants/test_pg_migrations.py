"""Versioned migrations of the PostgreSQL tenant database."""

from __future__ import annotations

import threading

import pytest

pytest.importorskip("psycopg")
import psycopg

from chorus_server.tenants.postgres import migrations
from chorus_server.tenants.postgres.schema import MIGRATIONS, Migration

TABLES = {"api_keys", "tenant_limits", "usage_daily", "audit", "rate_buckets", "concurrency_leases", "changes"}
# A second migration that leaves a trace of every time it runs (no key: a second run would add a second row).
COUNTED = Migration(2, "counted", "CREATE TABLE IF NOT EXISTS runs (n integer); INSERT INTO runs VALUES (2)")


def _connect(url: str) -> psycopg.Connection:
    return psycopg.connect(url, autocommit=True)


def test_fresh_database_gets_every_table_and_records_the_versions(postgres_url: str) -> None:
    with _connect(postgres_url) as conn:
        assert migrations.migrate(conn) == [m.version for m in MIGRATIONS]
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        assert tables == TABLES | {"schema_migrations"}
        assert migrations.applied_versions(conn) == [m.version for m in MIGRATIONS]
        assert migrations.migrate(conn) == []  # a second start applies nothing


def test_concurrent_starts_apply_each_migration_exactly_once(postgres_url: str) -> None:
    starters, barrier = 4, threading.Barrier(4)
    results: list[list[int]] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            with _connect(postgres_url) as conn:
                barrier.wait(timeout=30)
                results.append(migrations.migrate(conn, (*MIGRATIONS, COUNTED)))
        except BaseException as exc:  # reported below, with every thread's outcome
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(starters)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert sorted(results, key=len) == [[], [], [], [1, 2]]  # one starter applied both, the others none
    with _connect(postgres_url) as conn:
        assert conn.execute("SELECT count(*) FROM runs").fetchone() == (1,)
        assert migrations.applied_versions(conn) == [1, 2]


def test_a_later_migration_is_applied_on_the_next_start(postgres_url: str) -> None:
    with _connect(postgres_url) as conn:
        migrations.migrate(conn)
        assert migrations.migrate(conn, (*MIGRATIONS, COUNTED)) == [2]
        assert conn.execute("SELECT count(*) FROM runs").fetchone() == (1,)


def test_a_database_newer_than_the_code_is_refused(postgres_url: str) -> None:
    with _connect(postgres_url) as conn:
        migrations.migrate(conn, (*MIGRATIONS, COUNTED))
        with pytest.raises(migrations.SchemaTooNew, match=r"version 2, newer than this Chorus knows \(up to 1\)"):
            migrations.migrate(conn)


def test_a_failing_migration_leaves_nothing_behind(postgres_url: str) -> None:
    broken = Migration(2, "broken", "CREATE TABLE half (x int); SELECT 1/0")
    with _connect(postgres_url) as conn:
        migrations.migrate(conn)
        with pytest.raises(psycopg.errors.DivisionByZero):
            migrations.migrate(conn, (*MIGRATIONS, broken))
        assert migrations.applied_versions(conn) == [1]
        assert conn.execute("SELECT to_regclass('half')").fetchone() == (None,)


def test_migrations_must_be_numbered_in_order() -> None:
    migrations.check_sequence(MIGRATIONS)
    with pytest.raises(ValueError, match="numbered 1, 2, 3"):
        migrations.check_sequence((*MIGRATIONS, Migration(3, "gap", "SELECT 1")))


def test_key_and_limit_writes_bump_the_change_counter_but_key_use_does_not(postgres_url: str) -> None:
    with _connect(postgres_url) as conn:
        migrations.migrate(conn)

        def counter() -> int:
            row = conn.execute("SELECT counter FROM changes").fetchone()
            assert row is not None
            return int(row[0])

        conn.execute(
            "INSERT INTO api_keys (id, hash, tenant, role, created_at) VALUES ('key_1', '\\x00', 'acme', 'user', 1)"
        )
        assert counter() == 1
        conn.execute("UPDATE api_keys SET last_used_at = 5 WHERE id = 'key_1'")
        assert counter() == 1
        conn.execute("UPDATE api_keys SET revoked_at = 6 WHERE id = 'key_1'")
        assert counter() == 2
        conn.execute("INSERT INTO tenant_limits VALUES ('acme', '{\"requests_per_minute\": 30}')")
        conn.execute("DELETE FROM tenant_limits")
        assert counter() == 4
