"""Pins hold for every server on one store: a pin or unpin made through one applies on the other within 2 s
(two runtimes on one local store directory, as two cluster workers share one S3 bucket)."""

from __future__ import annotations

import time

from tests.server.conftest import make_settings, running_app


def wait_for(client, path: str, pinned: bool, limit: float = 2.0) -> float:
    """Seconds until `path` shows `pinned` (and resident when pinned); fails after `limit`."""
    started = time.monotonic()
    while True:
        body = client.get(path).json()
        if body["pinned"] is pinned and (body["resident"] or not pinned):
            return time.monotonic() - started
        assert time.monotonic() - started < limit, body
        time.sleep(0.05)


def test_a_pin_made_through_one_server_holds_on_another_within_2_seconds(tmp_path, model_dir, adapter_files):
    first = make_settings(tmp_path / "a", model_dir)
    second = make_settings(tmp_path / "b", model_dir)
    second.store = first.store
    with running_app(first) as a, running_app(second) as b:
        assert a.put("/v1/adapters/fr", content=adapter_files[0].read_bytes()).status_code == 201
        path = "/v1/adapters/anonymous/fr"
        assert b.get(path).json()["pinned"] is False
        assert a.post(f"{path}/pin").json()["pinned"] is True
        wait_for(b, path, pinned=True)
        # A new version through the second server moves the pin on both.
        assert b.put("/v1/adapters/fr", content=adapter_files[1].read_bytes()).json()["version"] == 2
        assert b.get(path).json()["pinned"] is True
        wait_for(a, path, pinned=True)
        assert a.get(f"{path}@1").json()["pinned"] is False
        # An unpin through the second holds on the first.
        assert b.post(f"{path}/unpin").json()["pinned"] is False
        wait_for(a, path, pinned=False)
