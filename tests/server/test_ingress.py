"""A cluster ingress loads no backbone: it checks uploads against the workers' description of theirs and hands
every request to its `Inference`. Without Ray: a stand-in for the workers."""

from __future__ import annotations

import dataclasses

import pytest
from fastapi.testclient import TestClient

from chorus_server.app import create_app
from chorus_server.engine import Engine
from chorus_server.inference import LocalInference
from chorus_server.runtime import Runtime
from chorus_server.validation import BackboneInfo
from tests.server.conftest import make_settings, transcribe, wav


class StandInWorkers:
    """The `Remote` an ingress gets: a description of the workers' backbone, and requests run on a local runtime
    (one process standing in for the workers)."""

    def __init__(self, info: BackboneInfo, workers: Runtime):
        self.info, self.local = info, workers.inference
        assert isinstance(self.local, LocalInference)

    def backbone(self) -> BackboneInfo:
        return self.info

    def __getattr__(self, name: str):  # transcribe, stream, classify, live, ...: as the workers would
        return getattr(self.local, name)

    async def workers(self) -> int | None:
        return 1


@pytest.fixture
def workers(tmp_path, model_dir):
    runtime = Runtime.start(make_settings(tmp_path / "workers", model_dir))
    try:
        yield runtime
    finally:
        runtime.close()


def ingress_settings(tmp_path, model_dir, workers: Runtime):
    # The ingress shares the workers' store, as on a cluster; its own data directory.
    ingress = make_settings(tmp_path / "ingress", model_dir)
    return ingress.model_copy(update={"store": workers.settings.store, "seed_store": False})


def test_the_ingress_loads_no_backbone_and_checks_uploads_against_the_workers(
    tmp_path, model_dir, adapter_files, workers, monkeypatch
):
    def no_backbone(*args, **kwargs):
        raise AssertionError("the ingress loaded a backbone")

    monkeypatch.setattr(Engine, "from_pretrained", no_backbone)
    remote = StandInWorkers(workers.backbone, workers)
    settings = ingress_settings(tmp_path, model_dir, workers)
    started: list[Runtime] = []

    def start(s):
        started.append(Runtime.start(s, remote=remote))  # type: ignore[arg-type]
        return started[0]

    with TestClient(create_app(settings, start), base_url="http://localhost") as client:
        runtime = started[0]
        assert runtime.engine is None and runtime.worker is None and runtime.loaders is None
        put = client.put("/v1/adapters/mine", content=adapter_files[0].read_bytes())
        assert put.status_code == 201, put.text
        answer = transcribe(client, wav(1.0), "mine")
        assert answer.status_code == 200 and answer.headers["x-chorus-adapter"] == "anonymous/mine@1", answer.text
        assert transcribe(client, wav(1.0), "whisper-1").status_code == 200  # the workers' default adapter
        ready = client.get("/readyz").json()
        assert ready["workers"] == 1 and ready["backbone"] == workers.backbone.fingerprint


def test_an_upload_for_another_backbone_is_refused_by_the_description(tmp_path, model_dir, adapter_files, workers):
    other = dataclasses.replace(
        workers.backbone, validator=dataclasses.replace(workers.backbone.validator, fingerprint="w2v2-someoneelse")
    )
    settings = ingress_settings(tmp_path, model_dir, workers)
    remote = StandInWorkers(other, workers)
    with running_app_on(settings, remote) as client:
        put = client.put("/v1/adapters/mine", content=adapter_files[0].read_bytes())
        assert put.status_code == 422 and "w2v2-someoneelse" in put.json()["error"]["message"], put.text


def running_app_on(settings, remote) -> TestClient:
    return TestClient(create_app(settings, lambda s: Runtime.start(s, remote=remote)), base_url="http://localhost")
