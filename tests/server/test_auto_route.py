"""model=auto: the language-ID adapter's top label on the first `detect_seconds` picks the transcription adapter
(mapped by CHORUS_ROUTING__LANGUAGES, else named like the label); `language` skips detection; the response names
the language and the adapter; refusals are clear 400s; the routes are counted."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from chorus_server.engine import Engine, load_adapter, save_adapter
from chorus_server.engine.random_model import random_classifier
from tests.server.conftest import encode, make_settings, running_app, tone, transcribe
from tests.server.test_errors import error_of

LABELS = ["en", "fr", "de", "es"]
MAPPING = {"en": "eng-0", "fr": "fra-1", "de": "deu-2", "es": "spa-3"}  # the test model's adapters


@pytest.fixture(scope="module")
def lid_file(model_dir, tmp_path_factory):
    engine = Engine.from_pretrained(model_dir, device="cpu").engine
    adapter = random_classifier(engine.config, "lid", LABELS, 0, [], 23, engine.fingerprint, normalize_states=True)
    path = tmp_path_factory.mktemp("lid") / "lid.safetensors"
    save_adapter(adapter, path)
    return path


def detected(model_dir, lid_file, audio: np.ndarray) -> str:
    """Reference: the engine's top label for the audio (one window)."""
    engine = Engine.from_pretrained(model_dir, device="cpu").engine
    adapter = engine.prepare(load_adapter(lid_file))
    logits = engine.forward(torch.from_numpy(audio)[None], torch.tensor([len(audio)]), [adapter])[0]
    return LABELS[int(logits.argmax())]


def test_detected_language_picks_the_adapter(tmp_path, model_dir, adapter_files, lid_file):
    settings = make_settings(tmp_path, model_dir, routing={"languages": MAPPING, "detect_seconds": 1.0})
    clips = [tone(2.5, seed=seed) for seed in range(6)]
    # For some clips the whole file would be classified otherwise than its first second (which detection hears).
    assert any(detected(model_dir, lid_file, a[:16000]) != detected(model_dir, lid_file, a) for a in clips)
    with running_app(settings, [*adapter_files, lid_file]) as client:
        seen = set()
        for audio in clips:
            # Detection hears only the first second: the reference classifies exactly that.
            language = detected(model_dir, lid_file, audio[:16000])
            seen.add(language)
            response = transcribe(client, encode(audio), "auto", response_format="verbose_json")
            assert response.status_code == 200, response.text
            assert response.headers["x-chorus-language"] == language
            assert response.headers["x-chorus-adapter"] == f"anonymous/{MAPPING[language]}@1"
            assert response.json()["language"] == language
            named = transcribe(client, encode(audio), MAPPING[language], response_format="verbose_json").json()
            assert response.json()["text"] == named["text"]
        metrics = client.get("/metrics").text
    assert len(seen) >= 2, seen  # the clips do reach different adapters
    for language in seen:
        assert f'chorus_auto_routes_total{{language="{language}",passes="2",source="detected"}}' in metrics


def test_language_hint_skips_detection(tmp_path, model_dir, adapter_files, lid_file):
    settings = make_settings(tmp_path, model_dir, routing={"languages": MAPPING})
    with running_app(settings, adapter_files) as client:  # no language-ID adapter at all: a hint needs none
        response = transcribe(client, encode(tone(1.0)), "auto", language="de", response_format="verbose_json")
        assert response.status_code == 200, response.text
        assert response.headers["x-chorus-adapter"] == "anonymous/deu-2@1"
        assert response.json()["language"] == "de"
        unmapped = transcribe(client, encode(tone(1.0)), "auto", language="fra-1")  # named like the adapter
        assert unmapped.status_code == 200 and unmapped.headers["x-chorus-adapter"] == "anonymous/fra-1@1"
        metrics = client.get("/metrics").text
    assert 'chorus_auto_routes_total{language="de",passes="1",source="hint"} 1.0' in metrics


def test_refusals_are_clear(tmp_path, model_dir, adapter_files, lid_file):
    settings = make_settings(tmp_path, model_dir, routing={"languages": {"en": "eng-0"}})
    with running_app(settings, adapter_files) as client:
        missing = transcribe(client, encode(tone(1.0)), "auto")
        assert error_of(missing, 400, "auto_unavailable")["param"] == "model"
        unknown = transcribe(client, encode(tone(1.0)), "auto", language="xx")
        assert error_of(unknown, 400, "no_adapter_for_language")["param"] == "language"
    settings = make_settings(tmp_path / "b", model_dir, routing={"languages": dict.fromkeys(LABELS, "lid")})
    with running_app(settings, [*adapter_files, lid_file]) as client:
        # Whatever it detects maps to the classifier itself, which does not transcribe.
        error_of(transcribe(client, encode(tone(1.0)), "auto"), 400, "wrong_adapter_task")


def test_auto_elsewhere_is_refused_and_models_say_which_adapters_classify(tmp_path, model_dir, adapter_files, lid_file):
    with running_app(make_settings(tmp_path, model_dir), [*adapter_files, lid_file]) as client:
        files = {"file": ("a.wav", encode(tone(1.0)), "audio/wav")}
        refused = client.post("/v1/audio/classifications", files=files, data={"model": "auto"})
        assert "/v1/audio/transcriptions" in error_of(refused, 400, "auto_not_supported")["message"]
        kinds = {m["id"]: m["kind"] for m in client.get("/v1/models").json()["data"]}
    assert kinds["anonymous/lid"] == "classifier" and kinds["anonymous/eng-0"] == "houlsby"


def test_demo_model_routes_its_samples_by_language(tmp_path):
    """The embedded default as users start it (demo model, seeded store, VAD on): the shipped samples (held-out
    words and voices) reach their language's adapter."""
    import json

    from chorus_server.demo_model import DEMO_DIR

    samples = DEMO_DIR / "samples"
    rows = [json.loads(line) for line in (samples / "samples.jsonl").read_text().splitlines() if line.strip()]
    with running_app(make_settings(tmp_path, None, vad={"enabled": True})) as client:  # type: ignore[arg-type]
        wrong = []
        for row in rows:
            response = transcribe(client, (samples / row["audio"]).read_bytes(), "auto")
            assert response.status_code == 200, response.text
            chosen = response.headers["x-chorus-language"], response.headers["x-chorus-adapter"].split("@")[0]
            if chosen != (row["lang"], f"chorus/{row['lang']}"):
                wrong.append((row["audio"], chosen))
    assert len(wrong) <= 1, wrong


def test_auto_streams_with_the_chosen_adapter(tmp_path, model_dir, adapter_files, lid_file):
    settings = make_settings(tmp_path, model_dir, routing={"languages": MAPPING, "detect_seconds": 1.0})
    audio = tone(2.5, seed=2)
    language = detected(model_dir, lid_file, audio[:16000])
    with running_app(settings, [*adapter_files, lid_file]) as client:
        streamed = transcribe(client, encode(audio), "auto", stream="true")
        assert streamed.status_code == 200, streamed.text
        assert streamed.headers["x-chorus-language"] == language
        assert streamed.headers["x-chorus-adapter"] == f"anonymous/{MAPPING[language]}@1"
        done = [line for line in streamed.text.splitlines() if "transcript.text.done" in line]
        named = transcribe(client, encode(audio), MAPPING[language]).json()["text"]
    assert len(done) == 1 and json.loads(done[0].removeprefix("data: "))["text"] == named


def test_route_languages_do_not_use_up_adapter_label_values():
    from chorus_server.metrics import Metrics

    metrics = Metrics(max_adapter_labels=2)
    for language in ("en", "fr", "de"):
        metrics.observe_auto_route(language, "hint", 1)
    assert metrics.adapter_label("acme/fr") == "acme/fr"  # the adapters' two label values are still free
    routed = metrics.auto_routes.collect()[0].samples
    assert {s.labels["language"] for s in routed if s.name.endswith("_total")} == {"en", "fr", "other"}
