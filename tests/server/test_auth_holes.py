"""Smaller auth holes: anonymous callers and /metrics, a metrics key and /v1/usage, what /readyz tells anonymous
callers, and requests with two Authorization headers."""

from __future__ import annotations

import pytest

from tests.server.conftest import make_settings, running_app
from tests.server.test_errors import error_of

ADMIN = "sk-root"
pytestmark = pytest.mark.usefixtures("tenant_backend")
KEYS = {"sk-scraper": "ops:metrics", "sk-user": "acme:user"}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize("keyed", [True, False])
def test_anonymous_users_may_not_read_metrics(tmp_path, model_dir, keyed):
    """`CHORUS_AUTH__ANONYMOUS=user` may face a network, with keys or without any: metrics stay closed (401)."""
    keys = {"admin_keys": [ADMIN]} if keyed else {}
    settings = make_settings(tmp_path, model_dir, auth={**keys, "anonymous": "user"})
    with running_app(settings) as client:
        assert client.get("/v1/models").status_code == 200
        error = error_of(client.get("/metrics"), 401, "missing_api_key")
        assert "metrics" in error["message"] and client.get("/metrics").headers["www-authenticate"] == "Bearer"
        if keyed:
            assert client.get("/metrics", headers=auth(ADMIN)).status_code == 200


def test_a_keyless_loopback_server_still_shows_metrics_and_details(tmp_path, model_dir):
    with running_app(make_settings(tmp_path, model_dir)) as client:  # anonymous "auto": loopback only
        assert client.get("/metrics").status_code == 200
        assert {"backbone", "device", "dtype"} <= set(client.get("/readyz").json())


def test_a_metrics_key_cannot_read_usage(tmp_path, model_dir):
    settings = make_settings(tmp_path, model_dir, auth={"admin_keys": [ADMIN], "keys": KEYS})
    with running_app(settings) as client:
        error = error_of(client.get("/v1/usage", headers=auth("sk-scraper")), 403, "permission_denied")
        assert "usage" in error["message"]
        assert client.get("/v1/usage", headers=auth("sk-user")).json()["tenant"] == "acme"
        assert client.get("/metrics", headers=auth("sk-scraper")).status_code == 200


def test_readyz_tells_anonymous_callers_the_status_only(tmp_path, model_dir):
    settings = make_settings(tmp_path, model_dir, auth={"admin_keys": [ADMIN], "keys": KEYS})
    with running_app(settings) as client:
        for headers in ({}, auth("wrong-key"), {"Authorization": "Basic abc"}):
            ready = client.get("/readyz", headers=headers)
            assert ready.status_code == 200 and ready.json() == {"status": "ready"}, ready.text
        for key in ("sk-user", "sk-scraper", ADMIN):
            details = client.get("/readyz", headers=auth(key)).json()
            assert details["status"] == "ready" and details["backbone"].startswith("w2v2-")
            assert (details["device"], details["dtype"]) == ("cpu", "float32")


def test_two_authorization_headers_are_refused_everywhere(tmp_path, model_dir):
    settings = make_settings(tmp_path, model_dir, auth={"admin_keys": [ADMIN], "keys": KEYS})
    with running_app(settings) as client:
        # Either order: /v1/ routes used to take the last header, /metrics the first.
        for first, second in ((ADMIN, "sk-user"), ("sk-user", ADMIN)):
            headers = [("Authorization", f"Bearer {first}"), ("Authorization", f"Bearer {second}")]
            for method, path in (("GET", "/v1/models"), ("GET", "/metrics"), ("GET", "/readyz"), ("GET", "/v1/keys")):
                refused = client.request(method, path, headers=headers)
                assert "2 Authorization headers" in error_of(refused, 400, "duplicate_authorization")["message"]
        assert client.get("/v1/keys", headers=auth(ADMIN)).status_code == 200
