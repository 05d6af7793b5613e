"""Fixtures for the tenancy tests: one throwaway PostgreSQL server per session (`tests.postgres_server`) and a
fresh database on it per test."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from tests import postgres_server

_names = itertools.count()


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """URL of the session's PostgreSQL server (its `chorus` database). Skips when PostgreSQL is not installed, and
    fails instead where CHORUS_TEST_POSTGRES=require (CI)."""
    reason = postgres_server.missing_reason()
    if reason is not None:
        if postgres_server.required():
            pytest.fail(f"{reason} ({postgres_server.REQUIRE_ENV}=require)")
        pytest.skip(reason)
    with postgres_server.postgres() as url:
        yield url


@pytest.fixture
def postgres_url(postgres_server_url: str) -> str:
    """URL of a new, empty database on the session's server, for this test alone."""
    return postgres_server.create_database(postgres_server_url, f"test_{next(_names)}")
