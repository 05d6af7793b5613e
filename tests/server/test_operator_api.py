"""Operator API: upload (raw and multipart), versions, delete, pin, metrics. Tenancy: test_tenancy.py."""

from __future__ import annotations

import pytest

from tests.helpers import rebuild_safetensors
from tests.server.conftest import make_settings, running_app, transcribe, wav
from tests.server.test_errors import error_of


def test_upload_versions_get_and_delete(client, adapter_files):
    raw = adapter_files[0].read_bytes()
    first = client.put("/v1/adapters/team-asr", content=raw)
    assert first.status_code == 201 and first.json()["version"] == 1
    second = client.put("/v1/adapters/team-asr", files={"file": ("a.safetensors", adapter_files[1].read_bytes())})
    assert second.status_code == 201 and second.json()["version"] == 2
    current = client.get("/v1/adapters/team-asr").json()
    assert current["version"] == 2 and current["versions"] == [1, 2] and current["object"] == "adapter"
    assert client.get("/v1/adapters/team-asr@1").json()["sha256"] == first.json()["sha256"]
    assert first.json()["id"] == "anonymous/team-asr" and first.json()["name"] == "team-asr"
    assert transcribe(client, wav(1.0), "team-asr").headers["x-chorus-adapter"] == "anonymous/team-asr@2"
    assert transcribe(client, wav(1.0), "team-asr@1").headers["x-chorus-adapter"] == "anonymous/team-asr@1"
    assert client.get("/v1/adapters/anonymous/team-asr@1").json()["version"] == 1  # the full ID works too

    assert client.delete("/v1/adapters/team-asr@2").json() == {
        "id": "anonymous/team-asr",
        "object": "adapter.deleted",
        "deleted": True,
        "version": 2,
    }
    assert transcribe(client, wav(1.0), "team-asr").headers["x-chorus-adapter"] == "anonymous/team-asr@1"
    assert client.delete("/v1/adapters/team-asr").status_code == 200
    error_of(transcribe(client, wav(1.0), "team-asr"), 404, "adapter_not_found")
    listed = client.get("/v1/adapters").json()
    assert "anonymous/team-asr" not in [a["id"] for a in listed["data"]]


def test_compare_and_set_and_invalid_uploads(client, adapter_files):
    raw = adapter_files[0].read_bytes()
    assert client.put("/v1/adapters/cas?expected_version=0", content=raw).status_code == 201
    error_of(client.put("/v1/adapters/cas?expected_version=0", content=raw), 409, "version_conflict")
    assert client.put("/v1/adapters/cas?expected_version=1", content=raw).status_code == 201
    error_of(client.put("/v1/adapters/cas", content=b"not safetensors at all"), 422, "invalid_adapter")

    def shrink(tensors):
        tensors["head.weight"] = tensors["head.weight"][:, :1].contiguous()

    bad_shape = rebuild_safetensors(adapter_files[0], shrink)
    error_of(client.put("/v1/adapters/cas", content=bad_shape), 422, "invalid_adapter")
    error_of(client.put("/v1/adapters/cas", content=b""), 400, "empty_upload")
    error_of(client.put("/v1/adapters/Not%20Valid", content=raw), 422, "invalid_adapter")
    assert client.get("/v1/adapters/cas").json()["versions"] == [1, 2]  # rejected uploads left no trace


def test_adapter_upload_limit_is_413(tmp_path, model_dir, adapter_files):
    with running_app(make_settings(tmp_path, model_dir, limits={"max_adapter_bytes": 2048})) as client:
        error_of(client.put("/v1/adapters/big", content=adapter_files[1].read_bytes()), 413, "file_too_large")


def test_pin_keeps_resident_and_follows_new_versions(client, adapter_files):
    pinned = client.post("/v1/adapters/spa-3/pin").json()
    assert pinned["pinned"] is True and pinned["resident"] is True
    upload = client.put("/v1/adapters/spa-3", content=adapter_files[0].read_bytes()).json()
    assert upload["version"] == 2 and upload["pinned"] is True
    assert client.get("/v1/adapters/spa-3@1").json()["pinned"] is False
    assert client.post("/v1/adapters/spa-3/unpin").json()["pinned"] is False


def test_deleting_the_pinned_version_moves_the_pin_to_the_new_current_one(client, adapter_files):
    assert client.post("/v1/adapters/spa-3/pin").json()["pinned"] is True
    assert client.put("/v1/adapters/spa-3", content=adapter_files[0].read_bytes()).json()["pinned"] is True
    deleted = client.delete("/v1/adapters/spa-3@2").json()
    full_id = deleted["id"]
    assert deleted["deleted"] is True and deleted["pinned"] == f"{full_id}@1"  # said, not silent
    current = client.get("/v1/adapters/spa-3").json()
    assert current["version"] == 1 and current["pinned"] is True and current["resident"] is True
    assert client.app.state.chorus.pinned == {full_id: f"{full_id}@1"}
    # deleting the last version drops the pin, and says so
    last = client.delete("/v1/adapters/spa-3@1").json()
    assert last["pinned"] is None
    assert client.app.state.chorus.pinned == {}


def test_deleting_an_unpinned_version_says_nothing_of_pins(client, adapter_files):
    client.put("/v1/adapters/spa-3", content=adapter_files[0].read_bytes())
    assert "pinned" not in client.delete("/v1/adapters/spa-3@2").json()


def test_health_readiness_and_metrics(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["device"] == "cpu" and ready["dtype"] == "float32"
    transcribe(client, wav(2.0), "eng-0")
    transcribe(client, wav(1.0), "klingon")
    text = client.get("/metrics").text
    assert 'chorus_requests_total{adapter="anonymous/eng-0",status="200"} 1.0' in text
    assert 'chorus_lora_requests_info{max_lora="4",running_lora_adapters="",waiting_lora_adapters=""}' in text
    assert 'chorus_requests_total{adapter="",status="404"} 1.0' in text
    assert "chorus_audio_seconds_total 2.0" in text
    assert 'chorus_adapter_loads_total{result="ok"}' in text
    for name in (
        "chorus_request_duration_seconds_bucket",
        "chorus_queue_wait_seconds_bucket",
        "chorus_inference_duration_seconds_bucket",
        "chorus_batch_size_bucket",
        "chorus_batch_audio_seconds_bucket",
        "chorus_queue_depth",
        "chorus_requests_in_flight",
        "chorus_adapter_resident_bytes",
        "chorus_adapter_cache_misses_total",
    ):
        assert name in text


def test_adapter_label_cardinality_is_bounded(tmp_path, model_dir, adapter_files):
    with running_app(make_settings(tmp_path, model_dir, max_adapter_label_values=2), adapter_files) as client:
        for name in ("eng-0", "fra-1", "deu-2", "spa-3"):
            assert transcribe(client, wav(0.5), name).status_code == 200
        text = client.get("/metrics").text
        assert 'adapter="other",status="200"} 2.0' in text


@pytest.mark.parametrize("key", ["sk-acme"])
def test_openapi_documents_the_api(tmp_path, model_dir, key):
    with running_app(make_settings(tmp_path, model_dir)) as client:
        paths = client.get("/openapi.json").json()["paths"]
        for path in (
            "/v1/audio/transcriptions",
            "/v1/models",
            "/v1/adapters",
            "/v1/adapters/{ref}",
            "/v1/adapters/{adapter_id}/pin",
            "/healthz",
            "/readyz",
            "/metrics",
        ):
            assert path in paths


@pytest.mark.parametrize(
    "header",
    [
        b"[" * 100_000,  # nesting deep enough to exhaust the JSON parser's recursion
        b'{"t": {"dtype": [], "shape": [], "data_offsets": [0, 0]}}',
        b'{"t": {"dtype": "F32", "shape": [0, 549755813888, 549755813888], "data_offsets": [0, 0]}}',
    ],
)
def test_hostile_adapter_headers_are_422(client, header):
    body = len(header).to_bytes(8, "little") + header
    error_of(client.put("/v1/adapters/hostile", content=body), 422, "invalid_adapter")
