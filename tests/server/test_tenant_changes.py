"""Changes to tenant state made elsewhere — by `chorus keys` or another server on the same tenant database — take
effect in a running server within 2 s, without a restart; and the audit log is one queryable table."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest

from chorus_server import cli
from chorus_server.background import BackgroundServer
from chorus_server.settings import get_settings
from chorus_server.startup import StartupError
from chorus_server.tenants import open_tenant_store
from tests.server.conftest import make_settings, running_app
from tests.server.test_errors import error_of

ADMIN = "sk-root"
pytestmark = pytest.mark.usefixtures("tenant_backend")


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def within(seconds: float, condition: Callable[[], bool]) -> float:
    """Poll `condition` until it holds: the seconds it took (fails past `seconds`)."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < seconds, f"not within {seconds} s"
        time.sleep(0.05)
    return time.monotonic() - start


@pytest.fixture
def cli_env(tmp_path, monkeypatch):
    """`chorus keys` pointed at the test server's tenant database (CHORUS_DATABASE_URL, kept, or the SQLite file)."""
    for name in ("CHORUS_AUTH__KEYS", "CHORUS_AUTH__ADMIN_KEYS", "CHORUS_AUTH__ANONYMOUS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CHORUS_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def test_a_keyless_server_needs_keys_within_2_s_of_the_first_key_created(cli_env, model_dir, adapter_files, capsys):
    raw = adapter_files[0].read_bytes()
    with BackgroundServer(make_settings(cli_env, model_dir)) as server, httpx.Client(base_url=server.url) as client:
        assert client.put("/v1/adapters/before", content=raw).status_code == 201  # keyless: anonymous operator
        assert cli.main(["keys", "create", "--tenant", "acme", "--role", "user"]) == 0
        printed = capsys.readouterr().out.strip().splitlines()
        key_id, secret = printed[0].split()[1], printed[-1]
        within(2.0, lambda: client.put("/v1/adapters/after", content=raw).status_code == 401)
        error_of(client.put("/v1/adapters/after", content=raw), 401, "missing_api_key")
        assert client.get("/v1/models", headers=auth(secret)).status_code == 200
        error_of(client.put("/v1/adapters/after", content=raw, headers=auth(secret)), 403, "permission_denied")
        # Revoking the last key does not open the server again (it may face a network by now).
        assert cli.main(["keys", "revoke", key_id]) == 0
        assert server.app.state.chorus.changes.poll()  # the server has seen the revocation
        error_of(client.put("/v1/adapters/after", content=raw), 401, "missing_api_key")


def test_a_limit_changed_through_one_server_holds_on_another_within_2_s(tmp_path, model_dir):
    settings = make_settings(tmp_path, model_dir, auth={"admin_keys": [ADMIN]})
    with (
        BackgroundServer(settings) as first,
        BackgroundServer(settings) as second,
        httpx.Client(headers=auth(ADMIN), timeout=30) as client,
    ):

        def limit_on_second() -> float | None:
            answer = client.get(f"{second.url}/v1/usage", params={"tenant": "acme"})
            return answer.json()["limits"]["requests_per_minute"]

        before = limit_on_second()  # the second server has the tenant's limits cached now
        changed = client.put(f"{first.url}/v1/tenants/acme/limits", json={"requests_per_minute": 7})
        assert changed.status_code == 200 and before != 7
        within(2.0, lambda: limit_on_second() == 7)


def test_the_audit_log_is_one_table_admins_query_newest_first(tmp_path, model_dir):
    settings = make_settings(tmp_path, model_dir, auth={"admin_keys": [ADMIN], "keys": {"sk-acme": "acme:user"}})
    with running_app(settings) as client:
        for tenant in ("one", "two", "three"):
            client.put(f"/v1/tenants/{tenant}/limits", json={"requests_per_minute": 5}, headers=auth(ADMIN))
        error_of(client.get("/v1/keys", headers=auth("sk-acme")), 403, "permission_denied")  # audited too
        error_of(client.get("/v1/audit", headers=auth("sk-acme")), 403, "permission_denied")
        page = client.get("/v1/audit", params={"limit": 2}, headers=auth(ADMIN)).json()
        assert [(e["action"], e["target"]) for e in page["data"]] == [("key.list", "*"), ("tenant.limits", "three")]
        rest = client.get("/v1/audit", params={"before": page["next_before"]}, headers=auth(ADMIN)).json()
        assert [e["target"] for e in rest["data"]] == ["two", "one"] and rest["next_before"] is None
        mine = client.get("/v1/audit", params={"tenant": "acme"}, headers=auth(ADMIN)).json()["data"]
        assert [(e["action"], e["outcome"], e["role"]) for e in mine] == [("key.list", "permission_denied", "user")]
        since = client.get("/v1/audit", params={"since": time.time() + 60}, headers=auth(ADMIN)).json()
        assert since["data"] == []
        error_of(client.get("/v1/audit", params={"since": "yesterday"}, headers=auth(ADMIN)), 422, "invalid_parameter")


def test_a_postgresql_url_opens_the_shared_store_and_other_schemes_are_refused(tmp_path, model_dir, postgres_url):
    from chorus_server.tenants.keys import KeyRing, Role
    from chorus_server.tenants.postgres.store import PostgresTenantStore

    first = open_tenant_store(make_settings(tmp_path, model_dir, database_url=postgres_url))
    second = open_tenant_store(make_settings(tmp_path / "other", model_dir, database_url=postgres_url))
    try:
        assert isinstance(first, PostgresTenantStore) and "@127.0.0.1:" in first.describe()
        _, secret = KeyRing(first).create("acme", Role.USER)
        found = KeyRing(second).lookup(secret)  # another process on the same database
        assert found is not None and found.tenant == "acme"
    finally:
        first.close()
        second.close()
    with pytest.raises(StartupError, match="unsupported scheme"):
        open_tenant_store(make_settings(tmp_path, model_dir, database_url="mysql://chorus@127.0.0.1/chorus"))
