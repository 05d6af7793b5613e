"""What one tenant's store contents may cost another: stray entries, older private versions of a public adapter,
listing work and rate, and uploads in flight against the storage quota."""

from __future__ import annotations

import pytest

from chorus_server.settings import TenantLimits
from tests.adapter_store.conftest import touched
from tests.server.conftest import make_settings, running_app, wav
from tests.server.test_errors import error_of
from tests.server.test_tenancy import ADMIN, KEYS, auth, tenants, transcribe_as  # noqa: F401 (a fixture)


@pytest.mark.parametrize("stray", ["adapters/acme/.snapshot", "adapters/.snapshot", "public/.snapshot"])
def test_a_stray_folder_breaks_no_listing(tenants, stray):  # noqa: F811
    store = tenants.app.state.chorus.store
    (store.root / stray / "inner").mkdir(parents=True)  # an NFS snapshot directory
    for key in ("sk-acme", "sk-globex", ADMIN):
        for path in ("/v1/adapters", "/v1/models"):
            response = tenants.get(path, headers=auth(key))
            assert response.status_code == 200, (key, path, response.text)
            assert ".snapshot" not in response.text
    assert "acme/shared" in tenants.get("/v1/models", headers=auth("sk-globex")).text


def _answer_of(response) -> tuple[int, str, str]:
    error = response.json().get("error", {})
    return response.status_code, error.get("code", ""), error.get("message", "")


def test_publishing_a_version_public_keeps_older_versions_private(tenants, adapter_files):  # noqa: F811
    raw = adapter_files[0].read_bytes()
    for query in ("", "", "?visibility=public"):  # v1, v2 private; v3 public
        assert tenants.put(f"/v1/adapters/book{query}", content=raw, headers=auth("sk-acme")).status_code == 201
    globex = auth("sk-globex")
    files = {"file": ("a.wav", wav(1.0), "audio/wav")}

    def answers(ref: str) -> list[tuple[int, str, str]]:
        got = [
            tenants.get(f"/v1/adapters/{ref}", headers=globex),
            tenants.post("/v1/audio/transcriptions", files=files, data={"model": ref}, headers=globex),
            tenants.post("/v1/audio/classifications", files=files, data={"model": ref}, headers=globex),
        ]
        return [(status, code, message.replace(ref, "REF")) for status, code, message in map(_answer_of, got)]

    hidden = answers("acme/book@1")
    assert hidden[0][:2] == (404, "adapter_not_found")
    assert hidden == answers("acme/book@9") == answers("acme/none@1")  # hidden == missing, no version list
    assert answers("book@2") == answers("none@2")
    assert transcribe_as(tenants, "sk-globex", "acme/book@3").headers["x-chorus-adapter"] == "acme/book@3"
    # v4 inherits public; the owner then makes v4 alone private: others get the newest public version, v3.
    assert tenants.put("/v1/adapters/book", content=raw, headers=auth("sk-acme")).json()["visibility"] == "public"
    made = tenants.post("/v1/adapters/book@4/visibility?visibility=private", headers=auth("sk-acme"))
    assert made.status_code == 200 and made.json()["visibility"] == "private", made.text
    for model in ("book", "acme/book"):
        assert transcribe_as(tenants, "sk-globex", model).headers["x-chorus-adapter"] == "acme/book@3"
    assert transcribe_as(tenants, "sk-acme", "book").headers["x-chorus-adapter"] == "acme/book@4"
    seen = tenants.get("/v1/adapters/acme/book", headers=globex).json()
    assert (seen["version"], seen["versions"], seen["visibility"]) == (3, [3], "public")
    listed = [a for a in tenants.get("/v1/adapters", headers=globex).json()["data"] if a["id"] == "acme/book"]
    assert [(a["version"], a["versions"]) for a in listed] == [(3, [3])]
    assert "acme/book" in {m["id"] for m in tenants.get("/v1/models", headers=globex).json()["data"]}
    assert tenants.get("/v1/adapters/acme/book", headers=auth("sk-acme")).json()["versions"] == [1, 2, 3, 4]
    # Only the owner changes visibility; to anyone else a hidden version is missing.
    error_of(tenants.post("/v1/adapters/acme/book@1/visibility?visibility=public", headers=globex), 404)
    error_of(tenants.post("/v1/adapters/acme/book@3/visibility?visibility=private", headers=globex), 403, "not_owner")
    assert tenants.post("/v1/adapters/book@1/visibility?visibility=public", headers=auth("sk-acme")).status_code == 200
    assert transcribe_as(tenants, "sk-globex", "acme/book@1").status_code == 200


@pytest.fixture
def rated(tenant_backend, tmp_path, model_dir, adapter_files):
    """acme and globex at 3 requests a minute (on each tenant backend); acme owns 30 private adapters and one
    public."""
    limits = {"tenant": TenantLimits(requests_per_minute=3)}
    settings = make_settings(tmp_path, model_dir, auth={"keys": KEYS, "admin_keys": [ADMIN]}, limits=limits)
    with running_app(settings) as client:
        store = client.app.state.chorus.store
        for i in range(30):
            store.publish(f"acme/p{i:02d}", adapter_files[i % 2])
        store.publish("acme/open", adapter_files[0], visibility="public")
        yield client


def test_listing_reads_only_what_the_caller_may_see_and_counts_against_its_rate(rated):
    with touched(rated.app.state.chorus.store) as paths:
        models = rated.get("/v1/models", headers=auth("sk-globex"))
    assert models.status_code == 200 and "acme/open" in models.text and "acme/p" not in models.text
    assert paths and not [p for p in paths if p.startswith("adapters/acme/p")], paths
    assert rated.get("/v1/adapters", headers=auth("sk-globex")).status_code == 200
    assert rated.get("/v1/models", headers=auth("sk-globex")).status_code == 200
    refused = rated.get("/v1/adapters", headers=auth("sk-globex"))
    error_of(refused, 429, "rate_limit_exceeded")
    assert int(refused.headers["retry-after"]) >= 1 and refused.headers["x-ratelimit-remaining-requests"] == "0"
    error_of(rated.get("/v1/models", headers=auth("sk-globex")), 429, "rate_limit_exceeded")
    assert rated.get("/v1/models", headers=auth("sk-acme")).status_code == 200  # per tenant
    # Listings spend the rate, not usage: nothing billed, nothing of the daily quota, nothing written per listing.
    assert rated.app.state.chorus.quotas.usage("globex")["requests"] == 0
