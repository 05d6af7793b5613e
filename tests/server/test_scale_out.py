"""Two `chorus serve` processes on one S3 bucket (a real SeaweedFS): each serves the other's uploads, new
versions and deletes within 2 s, without a restart."""

from __future__ import annotations

import json
import time
import uuid

import httpx
import pytest

from chorus_server.background import ServerProcess
from tests.s3_server import BUCKET
from tests.server.conftest import wav

KEYS = {"k-acme": "acme"}
ADMIN = "k-root"
WITHIN = 2.0  # seconds: the target for a change made through one worker to reach the other


@pytest.fixture(scope="module")
def two_workers(model_dir, s3_endpoint, tmp_path_factory):
    prefix = f"cluster-{uuid.uuid4().hex[:8]}"
    common = {
        "CHORUS_BACKBONE": str(model_dir),
        "CHORUS_STORE": f"s3://{BUCKET}/{prefix}",
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": "us-east-1",
        "CHORUS_DEVICE": "cpu",
        "CHORUS_DTYPE": "float32",
        "CHORUS_AUTH__KEYS": json.dumps(KEYS),
        "CHORUS_AUTH__ADMIN_KEYS": json.dumps([ADMIN]),
    }
    first_dir, second_dir = tmp_path_factory.mktemp("worker-a"), tmp_path_factory.mktemp("worker-b")
    first = {**common, "CHORUS_DATA_DIR": str(first_dir)}
    second = {**common, "CHORUS_DATA_DIR": str(second_dir), "CHORUS_SEED_STORE": "false"}
    with ServerProcess(first, first_dir) as a, ServerProcess(second, second_dir) as b:
        yield a.url, b.url


def transcribe(url: str, model: str) -> httpx.Response:
    files = {"file": ("a.wav", wav(1.0), "audio/wav")}
    return httpx.post(
        f"{url}/v1/audio/transcriptions", files=files, data={"model": model}, headers=auth("k-acme"), timeout=60
    )


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def within(seconds: float, check) -> float:
    """Seconds until `check()` holds (fails after `seconds`)."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > seconds:
            raise AssertionError(f"not seen within {seconds} s")
        time.sleep(0.05)  # polling another process's view
    return time.monotonic() - started


def test_workers_serve_each_others_changes_within_two_seconds(two_workers, adapter_files):
    a, b = two_workers
    put = httpx.put(f"{a}/v1/adapters/shared", content=adapter_files[0].read_bytes(), headers=auth("k-acme"))
    assert put.status_code == 201, put.text
    within(WITHIN, lambda: transcribe(b, "shared").headers.get("x-chorus-adapter") == "acme/shared@1")
    assert transcribe(b, "chorus/default").status_code == 200  # seeded by the first worker, served by the second

    httpx.put(f"{b}/v1/adapters/shared", content=adapter_files[1].read_bytes(), headers=auth("k-acme"))
    within(WITHIN, lambda: transcribe(a, "shared").headers.get("x-chorus-adapter") == "acme/shared@2")

    assert httpx.delete(f"{a}/v1/adapters/shared@2", headers=auth("k-acme")).status_code == 200
    within(WITHIN, lambda: transcribe(b, "shared").headers.get("x-chorus-adapter") == "acme/shared@1")
    assert httpx.delete(f"{a}/v1/adapters/shared", headers=auth("k-acme")).status_code == 200
    within(WITHIN, lambda: transcribe(b, "shared").status_code == 404)

    def dropped_from_b() -> bool:  # the deleted versions also leave the other worker's cache
        metrics = httpx.get(f"{b}/metrics", headers=auth(ADMIN)).text
        resident = httpx.get(f"{b}/v1/adapters/chorus/default", headers=auth("k-acme")).json()["resident"]
        return resident and 'chorus_adapters_resident{tier="host"} 1.0' in metrics

    within(WITHIN + 1.0, dropped_from_b)
