"""Faults of the PostgreSQL tenant database, on a real server and a real PostgreSQL: stopped, restarted, slow
(a lock held past the statement timeout), its pool exhausted, not up yet when Chorus starts. Requests that need
the database answer 503 `tenant_database_unavailable` with Retry-After within a bounded time (never a 500,
never a hang), /healthz keeps answering, and service returns by itself when the database does. Verified keys are
not honoured during an outage (fail-closed): every admitted request takes its rate and slot from the database.

Each test has a PostgreSQL server of its own: stopping the session's would break the other tests."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest

from chorus_server.tenants.keys import Role
from tests import postgres_server
from tests.server.conftest import make_settings, ring_at, running_app, without_collector_pauses
from tests.server.test_errors import error_of

TIMEOUT = 1.0  # CHORUS_DATABASE_TIMEOUT_SECONDS here
BOUND = 4 * TIMEOUT  # a refusal comes within this, on a slow, busy machine too


@dataclass
class Database:
    server: postgres_server.Cluster
    url: str  # the tenant database on it

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> None:
        self.server.start()


@pytest.fixture
def database(monkeypatch) -> Iterator[Database]:
    reason = postgres_server.missing_reason()
    if reason is not None:
        if postgres_server.required():
            pytest.fail(reason)
        pytest.skip(reason)
    with postgres_server.cluster() as server:
        url = postgres_server.create_database(server.server_url, "chorus")
        monkeypatch.setenv("CHORUS_DATABASE_URL", url)  # what ring_at and the server use
        yield Database(server, url)


def settings_for(tmp_path, model_dir, **overrides):
    return make_settings(tmp_path, model_dir, database_timeout_seconds=TIMEOUT, **overrides)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def timed(call: Callable[[], httpx.Response]) -> tuple[httpx.Response, float]:
    start = time.monotonic()
    response = call()
    return response, time.monotonic() - start


def refused_in_time(response: httpx.Response, took: float) -> None:
    error_of(response, 503, "tenant_database_unavailable")
    assert int(response.headers["retry-after"]) >= 1
    assert took < BOUND, f"the refusal took {took:.1f} s"


def within(seconds: float, condition: Callable[[], bool]) -> float:
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < seconds, f"not within {seconds} s"
        time.sleep(0.1)
    return time.monotonic() - start


def test_a_stopped_database_is_503_in_bounded_time_and_service_returns_with_it(database, tmp_path, model_dir):
    ring = ring_at(tmp_path / "unused")
    _, secret = ring.create("acme", Role.USER)
    ring.store.close()
    with running_app(settings_for(tmp_path, model_dir)) as client:
        assert client.get("/v1/models", headers=auth(secret)).status_code == 200
        database.stop()
        for _ in range(3):  # the broken pooled connections first, then an empty pool that cannot reconnect
            refused_in_time(*timed(lambda: client.get("/v1/models", headers=auth(secret))))
        with without_collector_pauses():
            health, took = timed(lambda: client.get("/healthz"))
        assert health.status_code == 200 and took < 1.0
        database.start()
        within(15.0, lambda: client.get("/v1/models", headers=auth(secret)).status_code == 200)


def test_a_slow_database_is_503_when_a_statement_outlasts_the_timeout(database, tmp_path, model_dir):
    import psycopg

    settings = settings_for(tmp_path, model_dir, auth={"keys": {"sk-acme": "acme:user"}})
    with running_app(settings) as client, psycopg.connect(database.url) as blocker:
        assert client.get("/v1/models", headers=auth("sk-acme")).status_code == 200
        # Another session holds the slots table: every admission waits on its lock, as on an overloaded database.
        blocker.execute("LOCK TABLE concurrency_leases IN ACCESS EXCLUSIVE MODE")
        refused_in_time(*timed(lambda: client.get("/v1/models", headers=auth("sk-acme"))))
        blocker.rollback()
        assert client.get("/v1/models", headers=auth("sk-acme")).status_code == 200


def test_an_exhausted_pool_is_503_not_a_hang(database, tmp_path, model_dir):
    settings = settings_for(tmp_path, model_dir, database_pool_size=1, auth={"keys": {"sk-acme": "acme:user"}})
    with running_app(settings) as client:
        store = client.app.state.chorus.tenants
        assert client.get("/v1/models", headers=auth("sk-acme")).status_code == 200
        with store.connection(), store.connection(limits_pool=True):  # every connection of both pools, held
            refused_in_time(*timed(lambda: client.get("/v1/models", headers=auth("sk-acme"))))
        assert client.get("/v1/models", headers=auth("sk-acme")).status_code == 200


def test_a_server_started_before_its_database_serves_once_the_database_is_up(database, tmp_path, model_dir):
    database.stop()
    with running_app(settings_for(tmp_path, model_dir, auth={"keys": {"sk-acme": "acme:user"}})) as client:
        assert client.get("/healthz").status_code == 200
        refused_in_time(*timed(lambda: client.get("/v1/models", headers=auth("sk-acme"))))
        database.start()  # the schema is created on the first call that reaches it
        within(15.0, lambda: client.get("/v1/models", headers=auth("sk-acme")).status_code == 200)
