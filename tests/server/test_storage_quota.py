"""The storage quota counts uploads in flight: parallel uploads that each fit cannot together overrun it."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from chorus_server.errors import ApiError
from chorus_server.settings import TenantLimits
from chorus_server.tenants.storage_quota import UploadReservations
from tests.server.conftest import make_settings, running_app
from tests.server.test_errors import error_of


def test_ten_parallel_uploads_each_under_the_space_left_cannot_overrun_it():
    reservations, stored = UploadReservations(), {"acme": 400}

    def upload(_: int):
        try:
            return reservations.begin("acme", 1000, lambda: stored["acme"], 250)
        except ApiError as error:
            return error

    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(upload, range(10)))
    held = [r for r in results if not isinstance(r, ApiError)]
    assert len(held) == 2 and all(r.status_code == 507 for r in results if isinstance(r, ApiError))
    assert reservations.in_flight("acme") == 500 and reservations.in_flight("globex") == 0
    with pytest.raises(ApiError, match="in uploads in progress"):
        held[0].cover(400)  # a body longer than declared takes more of the quota as it arrives
    stored["acme"] += 250  # the first upload is stored, then releases its reservation
    held[0].release()
    with pytest.raises(ApiError):
        reservations.begin("acme", 1000, lambda: stored["acme"], 200)  # 650 stored + 250 in flight
    held[1].check_stored(lambda: stored["acme"])  # still fits: 650 + 250
    held[1].release()
    assert reservations.in_flight("acme") == 0


def test_an_upload_in_flight_counts_against_the_storage_quota(tmp_path, model_dir, adapter_files):
    raw = adapter_files[0].read_bytes()
    limits = TenantLimits(storage_bytes=int(len(raw) * 1.5))
    with running_app(make_settings(tmp_path, model_dir, limits={"tenant": limits})) as client:
        runtime = client.app.state.chorus
        # Another upload of the same tenant is receiving its body (Content-Length: one adapter's size).
        in_flight = runtime.uploads.begin("anonymous", limits.storage_bytes, lambda: 0, len(raw))
        refused = error_of(client.put("/v1/adapters/second", content=raw), 507, "storage_quota_exceeded")
        assert "in uploads in progress" in refused["message"]
        assert not list((tmp_path / "store" / "tmp").glob("*upload-*"))
        in_flight.release()
        assert client.put("/v1/adapters/second", content=raw).status_code == 201
        assert runtime.uploads.in_flight("anonymous") == 0  # released once stored
