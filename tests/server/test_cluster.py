"""`chorus serve --ray`: a local Ray cluster, the ingress and 2 workers of the tiny random model. The OpenAI and
operator APIs work through it, requests reach a worker holding their adapter, a killed worker does not stop
traffic. One cluster for the module."""

from __future__ import annotations

import httpx
import openai
import pytest

from chorus_server.background import free_port
from tests.server.conftest import make_settings, wav

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")
KEYS = {"k-acme": "acme"}


def auth(key: str = "k-acme") -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, model_dir):
    from chorus_server.cluster.app import build

    settings = make_settings(tmp_path_factory.mktemp("cluster"), model_dir, auth={"keys": KEYS})
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build(settings, workers=2), name="chorus", route_prefix="/")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def transcribe(url: str, model: str) -> httpx.Response:
    files = {"file": ("a.wav", wav(1.0), "audio/wav")}
    return httpx.post(f"{url}/v1/audio/transcriptions", files=files, data={"model": model}, headers=auth(), timeout=120)


def test_the_openai_and_operator_apis_work_through_the_cluster(cluster, adapter_files, tmp_path):
    put = httpx.put(f"{cluster}/v1/adapters/fr", content=adapter_files[0].read_bytes(), headers=auth(), timeout=60)
    assert put.status_code == 201, put.text
    client = openai.OpenAI(base_url=f"{cluster}/v1", api_key="k-acme")
    assert {"acme/fr", "chorus/default"} <= {m.id for m in client.models.list()}
    audio = tmp_path / "a.wav"
    audio.write_bytes(wav(2.0))
    with audio.open("rb") as f:
        verbose = client.audio.transcriptions.create(model="fr", file=f, response_format="verbose_json")
    assert verbose.duration == pytest.approx(2.0) and isinstance(verbose.text, str)
    answer = transcribe(cluster, "fr")
    assert answer.headers["x-chorus-adapter"] == "acme/fr@1" and answer.headers["x-chorus-worker"]
    assert httpx.get(f"{cluster}/readyz").json()["workers"] == 2
    assert answer.headers["x-ratelimit-limit-requests"]  # limits are the ingress's
    error = transcribe(cluster, "klingon")
    assert error.status_code == 404 and error.json()["error"]["code"] == "adapter_not_found"


def test_requests_reach_a_worker_holding_their_adapter(cluster, adapter_files):
    for name, path in (("aff-a", adapter_files[1]), ("aff-b", adapter_files[2])):
        assert httpx.put(f"{cluster}/v1/adapters/{name}", content=path.read_bytes(), headers=auth()).is_success
    seen: dict[str, set[str]] = {"aff-a": set(), "aff-b": set()}
    hits = total = 0
    for i in range(40):
        name = ("aff-a", "aff-b")[i % 2]
        worker = transcribe(cluster, name).headers["x-chorus-worker"]
        if i >= 4:  # warm: each adapter has been loaded and the routing stats (1 s period) may lag once
            total += 1
            hits += worker in seen[name]
        seen[name].add(worker)
    assert hits / total >= 0.9, (hits, total, seen)


def test_a_killed_worker_does_not_stop_traffic(cluster):
    holder = transcribe(cluster, "fr").headers["x-chorus-worker"]
    actors = [a for a in ray.util.list_named_actors(all_namespaces=True) if holder in a["name"]]
    assert actors, ray.util.list_named_actors(all_namespaces=True)
    ray.kill(ray.get_actor(actors[0]["name"], namespace=actors[0]["namespace"]), no_restart=False)
    answers = [transcribe(cluster, "fr") for _ in range(5)]
    assert [a.status_code for a in answers] == [200] * 5, [a.text for a in answers]
    assert all(a.headers["x-chorus-worker"] != holder for a in answers)
