"""`chorus serve --ray`: a local Ray cluster, the ingress and 2 workers of the tiny random model. The OpenAI and
operator APIs work through it (files, SSE streams, realtime sessions, classification: the same events and text
as one process), requests reach a worker holding their adapter, a killed worker does not stop file traffic and
ends a realtime session with an error event. One cluster (and one single-process server) for the module."""

from __future__ import annotations

import contextlib
import json
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from chorus_server.background import BackgroundServer, free_port
from chorus_server.live.wsclient import configure, open_session, pcm16, receive, send, until
from tests.server.conftest import make_settings, tone, wav

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")
KEYS = {"k-acme": "acme", "k-scrape": "ops:metrics"}
WINDOWS = {"chunk_seconds": 4.0, "stride_seconds": 0.5}  # a few seconds of audio make several windows
ROUTING = {"languages": {"en": "same", "fr": "same", "de": "same"}}  # model=auto: the `lid` adapter's labels


def auth(key: str = "k-acme") -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, model_dir):
    from chorus_server.cluster.app import build

    settings = make_settings(
        tmp_path_factory.mktemp("cluster"), model_dir, auth={"keys": KEYS}, batch=WINDOWS, routing=ROUTING
    )
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


def test_a_sequential_client_keeps_each_adapter_on_one_worker(cluster, adapter_files):
    """Once warm, at least 95% of an adapter's requests reach the worker that served its previous one: the router
    counts its own requests in flight, so a holder that has just finished is idle now, not busy for another
    second of stale reports."""
    names = [f"seq-{i}" for i in range(len(adapter_files))] + ["chorus/default"]
    for name, path in zip(names[:-1], adapter_files, strict=True):
        assert httpx.put(f"{cluster}/v1/adapters/{name}", content=path.read_bytes(), headers=auth()).is_success
    assert len(names) == 5
    last: dict[str, str] = {}
    same = total = 0
    for round_ in range(8):
        for name in names:
            worker = transcribe(cluster, name).headers["x-chorus-worker"]
            if round_ >= 2:  # warm: every adapter loaded somewhere and reported
                total += 1
                same += worker == last[name]
            last[name] = worker
    assert same / total >= 0.95, (same, total)


def worker_series(url: str) -> dict[tuple[str, str], float]:
    """(series name, replica) -> value of the worker replicas' series in one scrape of the ingress."""
    text = httpx.get(f"{url}/metrics", headers=auth("k-scrape"), timeout=60)
    assert text.status_code == 200, text.text
    values: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text.text):
        for sample in family.samples:
            if "replica" in sample.labels:
                values[(sample.name, sample.labels["replica"])] = sample.value
    return values


def test_one_scrape_of_the_ingress_shows_every_worker_replica(cluster):
    before = worker_series(cluster)
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda i: transcribe(cluster, ("fr", "chorus/default")[i % 2]), range(8)))
    assert [a.status_code for a in answers] == [200] * 8
    after = worker_series(cluster)
    replicas = {replica for _, replica in after}
    assert len(replicas) == 2 and {(n, r) for n, r in after if n == "chorus_lora_requests_info"} == {
        ("chorus_lora_requests_info", r) for r in replicas
    }
    served = Counter(a.headers["x-chorus-worker"] for a in answers)
    for replica in replicas:  # each replica's own counters moved by exactly what it served: 1 s, one window each
        for name in ("chorus_audio_seconds_total", "chorus_batch_size_sum"):
            moved = after[(name, replica)] - before.get((name, replica), 0.0)
            assert moved == pytest.approx(served[replica]), (name, replica, served)
    total = sum(
        after[("chorus_audio_seconds_total", r)] - before.get(("chorus_audio_seconds_total", r), 0.0) for r in replicas
    )
    assert total == pytest.approx(8.0)


def test_a_killed_worker_does_not_stop_traffic(cluster):
    holder = transcribe(cluster, "fr").headers["x-chorus-worker"]
    actors = [a for a in ray.util.list_named_actors(all_namespaces=True) if holder in a["name"]]
    assert actors, ray.util.list_named_actors(all_namespaces=True)
    ray.kill(ray.get_actor(actors[0]["name"], namespace=actors[0]["namespace"]), no_restart=False)
    answers = [transcribe(cluster, "fr") for _ in range(5)]
    assert [a.status_code for a in answers] == [200] * 5, [a.text for a in answers]
    assert all(a.headers["x-chorus-worker"] != holder for a in answers)


# ---- one process and the cluster give the same answers -----------------------------------------------------------


@pytest.fixture(scope="module")
def pair(cluster, tmp_path_factory, model_dir):
    """(single-process URL, cluster URL), the same settings and adapters (`same`, and the classifier `lid`) on both."""
    from chorus_server.engine import Engine, save_adapter
    from chorus_server.engine.random_model import random_classifier

    scratch = tmp_path_factory.mktemp("single")
    engine = Engine.from_pretrained(model_dir, device="cpu").engine
    lid = random_classifier(engine.config, "lid", ["en", "fr", "de"], 0, [], 1, engine.fingerprint)
    save_adapter(lid, scratch / "lid.safetensors")
    settings = make_settings(scratch, model_dir, auth={"keys": KEYS}, batch=WINDOWS, routing=ROUTING)
    with BackgroundServer(settings) as single:
        for url in (single.url, cluster):
            for name, path in (
                ("same", sorted((model_dir / "adapters").glob("*.safetensors"))[3]),
                ("lid", scratch / "lid.safetensors"),
            ):
                put = httpx.put(f"{url}/v1/adapters/{name}", content=path.read_bytes(), headers=auth(), timeout=60)
                assert put.status_code == 201, put.text
        yield single.url, cluster


def sse_events(url: str, audio: bytes) -> list[tuple[str, str | None]]:
    files = {"file": ("a.wav", audio, "audio/wav")}
    data = {"model": "same", "stream": "true"}
    answer = httpx.post(f"{url}/v1/audio/transcriptions", files=files, data=data, headers=auth(), timeout=120)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/event-stream"), answer.text
    events = [json.loads(block[6:]) for block in answer.text.split("\n\n") if block.startswith("data: ")]
    return [(e["type"], e.get("delta", e.get("text"))) for e in events]


def test_an_sse_stream_through_the_cluster_is_the_single_process_stream(pair):
    single, cluster = pair
    audio = wav(9.0, seed=3)  # three windows
    here = sse_events(single, audio)
    assert len(here) >= 3 and here[-1][0] == "transcript.text.done", here
    assert sse_events(cluster, audio) == here


def session_events(url: str, samples: np.ndarray) -> list[tuple[str, str | None]]:
    with open_session(url, "k-acme") as ws:
        receive(ws)
        configure(ws, "same")
        assert receive(ws)["type"] == "session.updated"
        for start in range(0, len(samples), 8000):
            send(ws, {"type": "input_audio_buffer.append", "audio": pcm16(samples[start : start + 8000])})
        send(ws, {"type": "input_audio_buffer.commit"})
        events = until(ws, "conversation.item.input_audio_transcription.completed", timeout=120)
    return [(e["type"], e.get("delta", e.get("transcript"))) for e in events if e["type"].startswith("conversation.")]


def test_a_realtime_session_through_the_cluster_is_the_single_process_session(pair):
    single, cluster = pair
    samples = tone(3.0, seed=4)
    here = session_events(single, samples)
    assert len(here) >= 3 and here[-1][0].endswith(".completed"), here
    assert session_events(cluster, samples) == here


def test_classification_through_the_cluster_is_the_single_process_one(pair):
    single, cluster = pair

    def classify(url: str) -> dict:
        files = {"file": ("a.wav", wav(2.0, seed=5), "audio/wav")}
        answer = httpx.post(
            f"{url}/v1/audio/classifications", files=files, data={"model": "lid"}, headers=auth(), timeout=120
        )
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    here = classify(single)
    assert [label["label"] for label in here["labels"]] and here["model"] == "acme/lid@1"
    there = classify(cluster)
    # The same labels in the same order; scores equal to float32's rounding (a worker's BLAS may use other threads).
    assert [label["label"] for label in there["labels"]] == [label["label"] for label in here["labels"]]
    assert [label["score"] for label in there["labels"]] == pytest.approx(
        [label["score"] for label in here["labels"]], rel=1e-5
    )


def test_model_auto_through_the_cluster_picks_what_one_process_picks(pair):
    single, cluster = pair

    def auto(url: str, **fields: str) -> tuple[str, str, str]:
        files = {"file": ("a.wav", wav(2.0, seed=7), "audio/wav")}
        answer = httpx.post(
            f"{url}/v1/audio/transcriptions", files=files, data={"model": "auto", **fields}, headers=auth(), timeout=120
        )
        assert answer.status_code == 200, answer.text
        return answer.headers["x-chorus-language"], answer.headers["x-chorus-adapter"], answer.text

    here = auto(single)
    assert here[0] in ("en", "fr", "de") and here[1] == "acme/same@1", here
    assert auto(cluster) == here
    assert auto(cluster, stream="true") == auto(single, stream="true")


def test_a_worker_lost_mid_session_ends_it_with_an_error_event(pair):
    """Last in the module: every worker is killed (the session's among them) once the session has text."""
    from websockets.exceptions import ConnectionClosed

    _, cluster = pair
    samples = tone(30.0, seed=6)
    half_second = 8000
    with open_session(cluster, "k-acme") as ws:
        receive(ws)
        configure(ws, "same")
        assert receive(ws)["type"] == "session.updated"
        for start in range(0, 4 * half_second, half_second):
            send(ws, {"type": "input_audio_buffer.append", "audio": pcm16(samples[start : start + half_second])})
        until(ws, "conversation.item.input_audio_transcription.delta", timeout=120)
        for actor in ray.util.list_named_actors(all_namespaces=True):
            if "chorus-worker" in actor["name"]:
                ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]), no_restart=False)
        deadline, start, seen = time.monotonic() + 90, 4 * half_second, []
        with pytest.raises(ConnectionClosed) as closed:
            while time.monotonic() < deadline:
                if start < len(samples):  # the session goes on sending audio, as a live client does
                    try:
                        send(
                            ws,
                            {"type": "input_audio_buffer.append", "audio": pcm16(samples[start : start + half_second])},
                        )
                    except ConnectionClosed:  # closed while sending: what arrived before the close is still read
                        while True:
                            seen.append(receive(ws, timeout=5))
                    start += half_second
                with contextlib.suppress(TimeoutError):
                    seen.append(receive(ws, timeout=0.5))
        errors = [e["error"] for e in seen if e["type"] == "error"]
        seen.append({"closed": str(closed.value)})
        assert errors and errors[-1]["code"] == "worker_lost" and errors[-1]["type"] == "server_error", seen
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011, closed.value
