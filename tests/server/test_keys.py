"""API keys: created once and stored hashed, revoked on the next request, expiry, the `chorus keys` command, the
admin API, environment keys (also as hashes), and the refusal to listen on a network without keys."""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import time

import pytest

from chorus_server import cli
from chorus_server.exposure import exposure_problem
from chorus_server.settings import get_settings
from chorus_server.tenants.keys import KEY_PREFIX, Role
from tests.server.conftest import audit_entries, make_settings, ring_at, running_app, stored_bytes, wav
from tests.server.test_errors import error_of

ADMIN = "sk-root"
pytestmark = pytest.mark.usefixtures("tenant_backend")


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_roles_match_the_cli_choices():
    assert tuple(str(r) for r in Role) == cli.ROLE_NAMES


def test_keys_are_random_shown_once_and_stored_hashed(tmp_path):
    ring = ring_at(tmp_path / "keys.sqlite3")
    info, secret = ring.create("acme", Role.OPERATOR)
    assert secret.startswith(KEY_PREFIX) and len(secret) - len(KEY_PREFIX) >= 43  # >= 256 bits, base64url
    assert ring.create("acme", Role.OPERATOR)[1] != secret
    stored = stored_bytes(tmp_path / "keys.sqlite3")
    assert secret.encode() not in stored and hashlib.sha256(secret.encode()).digest() in stored
    found = ring.lookup(secret)
    assert found is not None and (found.id, found.tenant, found.role) == (info.id, "acme", Role.OPERATOR)
    assert next(k for k in ring.active() if k.id == info.id).last_used_at is not None
    assert ring.lookup(secret + "x") is None and ring.lookup("") is None
    assert ring.revoke(info.id) and not ring.revoke(info.id)
    assert ring.lookup(secret) is None


def test_admin_api_creates_and_revokes_keys_effective_on_the_next_request(tmp_path, model_dir):
    settings = make_settings(tmp_path, model_dir, auth={"admin_keys": [ADMIN]})
    with running_app(settings) as client:
        created = client.post("/v1/keys", json={"tenant": "acme", "role": "operator"}, headers=auth(ADMIN))
        assert created.status_code == 201, created.text
        body = created.json()
        key, key_id = body["key"], body["id"]
        assert (body["tenant"], body["role"]) == ("acme", "operator")
        assert client.get("/v1/models", headers=auth(key)).status_code == 200
        listed = client.get("/v1/keys", headers=auth(ADMIN)).json()["data"]
        assert key_id in {k["id"] for k in listed} and key not in str(listed)
        error_of(client.get("/v1/keys", headers=auth(key)), 403, "permission_denied")
        bad = client.post("/v1/keys", json={"tenant": "Not Valid", "role": "admin"}, headers=auth(ADMIN))
        error_of(bad, 422, "invalid_parameter")
        assert client.delete(f"/v1/keys/{key_id}", headers=auth(ADMIN)).status_code == 200
        error_of(client.get("/v1/models", headers=auth(key)), 401, "invalid_api_key")
        error_of(client.delete(f"/v1/keys/{key_id}", headers=auth(ADMIN)), 404, "key_not_found")
        log = json.dumps(audit_entries(client))
        assert "key.create" in log and "key.revoke" in log and key not in log


def test_expired_keys_are_refused(tmp_path, model_dir):
    settings = make_settings(tmp_path, model_dir, auth={"admin_keys": [ADMIN]})
    ring = ring_at(tmp_path / "keys.sqlite3")
    _, expired = ring.create("acme", Role.USER, expires_at=time.time() - 1)
    _, valid = ring.create("acme", Role.USER, expires_at=time.time() + 3600)
    with running_app(settings) as client:
        error_of(client.get("/v1/models", headers=auth(expired)), 401, "expired_api_key")
        assert client.get("/v1/models", headers=auth(valid)).status_code == 200


def test_environment_keys_may_be_given_as_hashes(tmp_path, model_dir):
    secret = "a-long-random-secret"
    hashed = "sha256:" + hashlib.sha256(secret.encode()).hexdigest()
    settings = make_settings(tmp_path, model_dir, auth={"keys": {hashed: "acme:user"}})
    with running_app(settings) as client:
        assert client.get("/v1/models", headers=auth(secret)).status_code == 200
        error_of(client.get("/v1/models", headers=auth(hashed)), 401, "invalid_api_key")
        files = {"file": ("a.wav", wav(1.0), "audio/wav")}
        ok = client.post("/v1/audio/transcriptions", files=files, data={"model": "default"}, headers=auth(secret))
        assert ok.status_code == 200


def test_every_key_operation_is_audited_with_the_caller_as_actor(tmp_path, model_dir):
    """Refused key operations are audited too, and `key.create` names the caller, with the new key in `details`."""
    settings = make_settings(tmp_path, model_dir, auth={"admin_keys": [ADMIN]})
    with running_app(settings) as client:
        created = client.post("/v1/keys", json={"tenant": "acme", "role": "user"}, headers=auth(ADMIN)).json()
        user, user_id = created["key"], created["id"]
        error_of(client.get("/v1/keys", headers=auth(user)), 403, "permission_denied")
        refused = client.post("/v1/keys", json={"tenant": "acme", "role": "admin"}, headers=auth(user))
        error_of(refused, 403, "permission_denied")
        error_of(client.delete(f"/v1/keys/{user_id}", headers=auth(user)), 403, "permission_denied")
        assert client.get("/v1/keys", headers=auth(ADMIN)).status_code == 200
        entries = audit_entries(client)
    admin_id = "env_" + hashlib.sha256(ADMIN.encode()).hexdigest()[:12]
    as_admin = {"actor": f"key:{admin_id}", "tenant": "admin", "role": "admin", "key_id": admin_id}
    as_user = {"actor": f"key:{user_id}", "tenant": "acme", "role": "user", "key_id": user_id}
    expected = [
        ("key.create", "acme", "ok", as_admin),
        ("key.list", "*", "permission_denied", as_user),
        ("key.create", "", "permission_denied", as_user),  # refused before its body (so its tenant) was read
        ("key.revoke", user_id, "permission_denied", as_user),
        ("key.list", "*", "ok", as_admin),
    ]
    assert [(e["action"], e["target"], e["outcome"], {k: e[k] for k in as_user}) for e in entries] == expected
    details = [{k: v for k, v in e["details"].items() if k != "client"} for e in entries]
    assert details[0] == {"tenant": "acme", "role": "user", "expires_at": None, "key": user_id}
    assert not details[2]  # nothing of the refused body was read
    assert all(e["details"]["client"] for e in entries)
    assert all(e["request_id"] for e in entries) and user not in json.dumps(entries)


@pytest.fixture
def env(tmp_path, monkeypatch):
    """`chorus` commands read settings from the environment: point them at a temporary data directory."""
    for name in ("CHORUS_AUTH__KEYS", "CHORUS_AUTH__ADMIN_KEYS", "CHORUS_AUTH__ANONYMOUS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CHORUS_DATA_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def test_keys_command_works_without_a_server(env, capsys):
    assert cli.main(["keys", "create", "--tenant", "acme", "--role", "operator"]) == 0
    secret = capsys.readouterr().out.strip().splitlines()[-1]  # the key is the last line
    ring = ring_at(env / "keys.sqlite3")
    info = ring.lookup(secret)
    assert info is not None and (info.tenant, info.role) == ("acme", Role.OPERATOR)
    assert cli.main(["keys", "list"]) == 0
    listing = capsys.readouterr().out
    assert info.id in listing and secret not in listing
    assert cli.main(["keys", "revoke", info.id]) == 0
    assert ring.lookup(secret) is None
    assert cli.main(["keys", "revoke", info.id]) == 1


def test_keys_command_audits_every_run_as_the_os_user(env, monkeypatch, capsys):
    monkeypatch.setenv("CHORUS_AUDIT_LOG", str(env / "logs" / "audit.jsonl"))
    monkeypatch.setenv("USER", "someone-else")  # the OS user is read from the process's user ID, not $USER
    get_settings.cache_clear()
    assert cli.main(["keys", "create", "--tenant", "acme", "--role", "admin", "--expires-days", "1"]) == 0
    secret = capsys.readouterr().out.strip().splitlines()[-1]
    assert cli.main(["keys", "list"]) == 0
    key_id = ring_at(env / "keys.sqlite3").active()[0].id
    assert cli.main(["keys", "revoke", key_id]) == 0
    assert cli.main(["keys", "revoke", key_id]) == 1
    assert cli.main(["keys", "create", "--tenant", "Not Valid"]) == 2
    assert "Not Valid" in capsys.readouterr().err
    entries = audit_entries(env / "keys.sqlite3")
    exported = [json.loads(line) for line in (env / "logs" / "audit.jsonl").read_text().splitlines()]
    assert exported == [{k: v for k, v in e.items() if k != "id"} for e in entries]  # CHORUS_AUDIT_LOG: a copy
    assert {e["actor"] for e in entries} == {f"cli:{pwd.getpwuid(os.getuid()).pw_name}"}
    assert [(e["action"], e["target"], e["outcome"]) for e in entries] == [
        ("key.create", "acme", "ok"),
        ("key.list", "*", "ok"),
        ("key.revoke", key_id, "ok"),
        ("key.revoke", key_id, "key_not_found"),
        ("key.create", "Not Valid", "invalid_tenant"),
    ]
    details = entries[0]["details"]
    assert (details["tenant"], details["role"], details["key"]) == ("acme", "admin", key_id)
    assert details["expires_at"] > time.time() and secret not in json.dumps(entries)


def test_serve_refuses_a_network_interface_without_keys(env, monkeypatch, capsys):
    settings = get_settings()
    assert exposure_problem(settings, "127.0.0.1") is None and exposure_problem(settings, "::1") is None
    for host in ("0.0.0.0", "192.168.1.5", "::", "example.org"):
        assert "CHORUS_AUTH__ANONYMOUS=user" in (exposure_problem(settings, host) or "")
    assert cli.main(["serve", "--host", "0.0.0.0", "--port", "1"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "chorus keys create" in error
    # Explicit anonymous access is allowed only as `user`; a key makes the server safe to expose.
    monkeypatch.setenv("CHORUS_AUTH__ANONYMOUS", "user")
    get_settings.cache_clear()
    assert exposure_problem(get_settings(), "0.0.0.0") is None
    monkeypatch.setenv("CHORUS_AUTH__ANONYMOUS", "operator")
    get_settings.cache_clear()
    assert "loopback only" in (exposure_problem(get_settings(), "0.0.0.0") or "")
    monkeypatch.delenv("CHORUS_AUTH__ANONYMOUS")
    get_settings.cache_clear()
    ring_at(env / "keys.sqlite3").create("ops", Role.ADMIN)
    assert exposure_problem(get_settings(), "0.0.0.0") is None


def test_the_exposure_check_closes_the_tenant_database_it_opens(env, monkeypatch):
    """`chorus serve --host 0.0.0.0` opened the tenant database to look for keys and left it open for the life of
    the process: with PostgreSQL a pool of idle connections and its worker threads."""
    from chorus_server import exposure

    closed: list[str] = []
    real = exposure.open_tenant_store

    def tracked(settings):
        store = real(settings)
        close = store.close
        monkeypatch.setattr(store, "close", lambda: (closed.append(type(store).__name__), close())[1])
        return store

    monkeypatch.setattr(exposure, "open_tenant_store", tracked)
    assert exposure_problem(get_settings(), "0.0.0.0") is not None  # no keys yet: refused
    assert len(closed) == 1, closed


def test_anonymous_users_when_switched_on_are_never_admins(tmp_path, model_dir):
    settings = make_settings(tmp_path, model_dir, auth={"admin_keys": [ADMIN], "anonymous": "user"})
    with running_app(settings) as client:
        assert client.get("/v1/models").status_code == 200
        files = {"file": ("a.wav", wav(1.0), "audio/wav")}
        assert client.post("/v1/audio/transcriptions", files=files, data={"model": "default"}).status_code == 200
        error_of(client.put("/v1/adapters/x", content=b"abc"), 403, "permission_denied")
        error_of(client.delete("/v1/adapters/chorus/default"), 403, "permission_denied")
        error_of(client.get("/metrics"), 401, "missing_api_key")  # a missing key, not a wrong role
        error_of(client.get("/v1/models", headers=auth("wrong")), 401, "invalid_api_key")
