"""What one tenant's store contents may cost another: stray entries, older private versions of a public adapter,
listing work and rate, and uploads in flight against the storage quota."""

from __future__ import annotations

import pytest

from tests.server.test_tenancy import ADMIN, auth, tenants  # noqa: F401 (a fixture)


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
