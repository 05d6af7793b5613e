"""The throwaway PostgreSQL server the tenancy tests run on."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests import postgres_server


def _psql(url: str, sql: str) -> str:
    binaries = postgres_server.bin_dir()
    assert binaries is not None
    result = subprocess.run(
        [str(binaries / "psql"), url, "-XAtc", sql], capture_output=True, text=True, timeout=30, check=True
    )
    return result.stdout.strip()


def test_server_answers_on_loopback_with_a_fresh_database_per_test(postgres_url: str) -> None:
    assert postgres_url.startswith("postgresql://postgres@127.0.0.1:")
    assert _psql(postgres_url, "SELECT current_user, inet_server_addr()") == "postgres|127.0.0.1"
    assert _psql(postgres_url, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == "0"
    _psql(postgres_url, "CREATE TABLE mine (x int)")


def test_databases_are_separate(postgres_url: str) -> None:
    assert _psql(postgres_url, "SELECT count(*) FROM pg_tables WHERE tablename = 'mine'") == "0"


def test_server_is_stopped_and_removed_afterwards() -> None:
    binaries = postgres_server.bin_dir()
    assert binaries is not None
    with postgres_server.postgres(database="other") as url:
        root = Path(_psql(url, "SHOW data_directory")).parent
        assert _psql(url, "SELECT current_database()") == "other"
        assert root.exists()
    assert not root.exists()
    result = subprocess.run([str(binaries / "pg_isready"), "-d", url, "-t", "1"], capture_output=True)
    assert result.returncode != 0  # nothing listens there any more
