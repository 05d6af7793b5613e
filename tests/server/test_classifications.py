"""POST /v1/audio/classifications: scores equal to the engine's, sorted, summing to 1; windows of long audio
averaged; top_k; the wrong task's adapter, unknown adapters and another tenant's private classifier refused as
for transcriptions; limits, admission and request metrics shared with transcriptions."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
import torch

from chorus_server.engine import Engine, load_adapter, save_adapter
from chorus_server.engine.random_model import random_classifier
from tests.server.conftest import encode, make_settings, running_app, tone, transcribe, wav
from tests.server.test_errors import error_of

LABELS = ["en", "fr", "de", "es", "it"]


@pytest.fixture(scope="module")
def classifier_file(model_dir, tmp_path_factory):
    engine = Engine.from_pretrained(model_dir, device="cpu").engine
    n = engine.config.num_hidden_layers
    adapter = random_classifier(engine.config, "lid", LABELS, 4, list(range(n)), 11, engine.fingerprint)
    path = tmp_path_factory.mktemp("classifier") / "lid.safetensors"
    save_adapter(adapter, path)
    return path


@pytest.fixture
def server(tmp_path, model_dir, adapter_files, classifier_file):
    settings = make_settings(tmp_path, model_dir, batch={"chunk_seconds": 2.0})
    with running_app(settings, [*adapter_files, classifier_file]) as client:
        yield client


def classify(client, audio: bytes, model: str, **fields):
    files = {"file": ("audio.wav", audio, "audio/wav")}
    return client.post("/v1/audio/classifications", files=files, data={"model": model, **fields})


def engine_scores(model_dir, classifier_file, audio: np.ndarray, window: int) -> dict[str, float]:
    """Reference: the engine on each window, softmax, averaged weighted by window length."""
    engine = Engine.from_pretrained(model_dir, device="cpu").engine
    adapter = engine.prepare(load_adapter(classifier_file))
    total = torch.zeros(len(LABELS), dtype=torch.float64)
    for start in range(0, len(audio), window):
        piece = audio[start : start + window]
        logits = engine.forward(torch.from_numpy(piece)[None], torch.tensor([len(piece)]), [adapter])[0]
        total += torch.softmax(logits.double(), dim=0) * (len(piece) / len(audio))
    return dict(zip(LABELS, total.tolist(), strict=True))


def test_scores_are_the_engines_sorted_and_sum_to_one(server, model_dir, classifier_file):
    audio = tone(1.5, seed=4)
    response = classify(server, encode(audio), "lid")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "anonymous/lid@1" == response.headers["x-chorus-adapter"]
    labels = body["labels"]
    assert sorted(item["label"] for item in labels) == sorted(LABELS)
    scores = [item["score"] for item in labels]
    assert scores == sorted(scores, reverse=True)
    assert sum(scores) == pytest.approx(1.0, abs=1e-9)
    expected = engine_scores(model_dir, classifier_file, audio, len(audio))
    for item in labels:
        assert item["score"] == pytest.approx(expected[item["label"]], abs=1e-6)


def test_long_audio_averages_its_windows(server, model_dir, classifier_file):
    audio = tone(5.0, seed=5)  # windows of 2 s (the server's chunk_seconds): 2 + 2 + 1 s
    body = classify(server, encode(audio), "lid").json()
    expected = engine_scores(model_dir, classifier_file, audio, 2 * 16000)
    assert {item["label"]: pytest.approx(expected[item["label"]], abs=1e-6) for item in body["labels"]} == {
        label: score for label, score in expected.items()
    }


def test_top_k_keeps_the_most_probable(server):
    full = classify(server, wav(1.0, seed=2), "lid").json()["labels"]
    top = classify(server, wav(1.0, seed=2), "lid@1", top_k="2").json()["labels"]
    assert top == full[:2]
    assert error_of(classify(server, wav(1.0), "lid", top_k="0"), 422, "invalid_parameter")["param"] == "top_k"


def test_the_wrong_task_is_a_clear_400(server):
    error = error_of(transcribe(server, wav(1.0), "lid"), 400, "wrong_adapter_task")
    assert "/v1/audio/classifications" in error["message"] and error["param"] == "model"
    error = error_of(classify(server, wav(1.0), "eng-0"), 400, "wrong_adapter_task")
    assert "/v1/audio/transcriptions" in error["message"]


def test_bad_requests_get_the_openai_envelope(server):
    error_of(classify(server, wav(1.0), "nope"), 404)
    error_of(classify(server, encode(np.zeros(100, dtype=np.float32)), "lid"), 400, "audio_too_short")
    error_of(classify(server, b"not audio", "lid"), 415, "unsupported_audio")
    response = server.post("/v1/audio/classifications", data={"model": "lid"})
    assert response.status_code in (400, 422) and "error" in response.json()
    two = [("file", ("a.wav", wav(1.0), "audio/wav")), ("file", ("b.wav", wav(2.0), "audio/wav"))]
    error_of(server.post("/v1/audio/classifications", files=two, data={"model": "lid"}), 400, "too_many_files")


def test_limits_and_metrics_are_the_transcriptions(tmp_path, model_dir, adapter_files, classifier_file):
    settings = make_settings(tmp_path, model_dir, limits={"max_audio_seconds": 2.0})
    with running_app(settings, [*adapter_files, classifier_file]) as client:
        error_of(classify(client, wav(3.0), "lid"), 413)
        assert classify(client, wav(1.0), "lid").status_code == 200
        metrics = client.get("/metrics").text
    assert 'chorus_requests_total{adapter="anonymous/lid",status="200"} 1.0' in metrics
    assert 'chorus_requests_total{adapter="anonymous/lid",status="413"} 1.0' in metrics


def test_another_tenants_private_classifier_looks_missing(tmp_path, model_dir, classifier_file):
    keys = {"sk-acme": "acme", "sk-globex": "globex"}
    with running_app(make_settings(tmp_path, model_dir, auth={"keys": keys})) as client:
        put = client.put("/v1/adapters/lid", content=classifier_file.read_bytes(), headers=_auth("sk-acme"))
        assert put.status_code == 201, put.text
        files = {"file": ("a.wav", wav(1.0), "audio/wav")}
        mine = client.post(
            "/v1/audio/classifications", files=files, data={"model": "acme/lid"}, headers=_auth("sk-acme")
        )
        assert mine.status_code == 200, mine.text
        theirs = client.post(
            "/v1/audio/classifications", files=files, data={"model": "acme/lid"}, headers=_auth("sk-globex")
        )
        missing = client.post(
            "/v1/audio/classifications", files=files, data={"model": "acme/none"}, headers=_auth("sk-globex")
        )
        assert theirs.status_code == missing.status_code == 404
        assert theirs.json()["error"]["message"].replace("lid", "X") == missing.json()["error"]["message"].replace(
            "none", "X"
        )
        anonymous = client.post("/v1/audio/classifications", files=files, data={"model": "acme/lid"})
        assert anonymous.status_code == 401


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_sdk_and_cli_classify_against_the_server(server, tmp_path, monkeypatch, capsys):
    """The blocking SDK (generated from the async one) and `chorus classify` through the in-process server."""
    from chorus_client import Chorus, InvalidRequestError, cli

    def forward(request: httpx.Request) -> httpx.Response:
        answer = server.request(request.method, request.url.path, content=request.read(), headers=request.headers)
        return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)

    def client(url=None, api_key=None):
        return Chorus("http://localhost", api_key, transport=httpx.MockTransport(forward))

    audio = wav(1.0, seed=3)
    expected = classify(server, audio, "lid").json()
    with client() as sdk:
        result = sdk.classify(audio, "lid")
        assert result.model == expected["model"] and result.top == expected["labels"][0]["label"]
        assert [(x.label, x.score) for x in result.labels] == [(x["label"], x["score"]) for x in expected["labels"]]
        assert len(sdk.classify(audio, "lid", top_k=1).labels) == 1
        with pytest.raises(InvalidRequestError, match="classifier"):
            sdk.transcribe(audio, "lid")
    (tmp_path / "a.wav").write_bytes(audio)
    (tmp_path / "b.wav").write_bytes(audio)
    monkeypatch.setattr(cli, "Chorus", client)
    assert cli.main(["classify", str(tmp_path / "a.wav"), "-a", "lid", "--top-k", "2"]) == 0
    top = expected["labels"][:2]
    assert capsys.readouterr().out == ", ".join(f"{x['label']} {x['score']:.3f}" for x in top) + "\n"
    assert cli.main(["classify", str(tmp_path), "-a", "lid", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["file"] for r in report] == [str(tmp_path / "a.wav"), str(tmp_path / "b.wav")]
    assert report[0]["labels"] == expected["labels"] and report[0]["model"] == expected["model"]
    assert cli.main(["classify", str(tmp_path / "a.wav"), "-a", "eng-0"]) == cli.EXIT_REJECTED
    assert "/v1/audio/transcriptions" in capsys.readouterr().err
    assert cli.main(["classify", str(tmp_path / "none.wav"), "-a", "lid"]) == cli.EXIT_NOT_FOUND
