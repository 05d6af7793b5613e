"""model=auto: the language-ID adapter's top label on the first `detect_seconds` picks the transcription adapter
(mapped by CHORUS_ROUTING__LANGUAGES, else named like the label); `language` skips detection; the response names
the language and the adapter; refusals are clear 400s; the routes are counted."""

from __future__ import annotations

import json
from pathlib import Path

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
        # The demo head's vocab.json is flat (no language in it): verbose_json still reports English.
        english = transcribe(client, (samples / "en-1.wav").read_bytes(), "chorus/en", response_format="verbose_json")
        assert english.status_code == 200 and english.json()["language"] == "en", english.text
    print(f"model=auto on the demo samples: {len(rows) - len(wrong)}/{len(rows)} right, wrong: {wrong}")
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


# One pass: a detector reading states 0 and 1 only, and candidates that change nothing below layer 1.
ONE_PASS = {"en": "top-en", "fr": "top-fr", "de": "top-de"}


@pytest.fixture(scope="module")
def one_pass_files(model_dir, tmp_path_factory) -> tuple[Path, list[Path]]:
    """(detector file, candidate files). The detector's head is set so that test tones get different labels (a
    random head gives all the same): each label scores one pooled feature, standardised over a dozen tones."""
    from chorus_server.engine.random_model import random_adapter

    engine = Engine.from_pretrained(model_dir, device="cpu").engine
    config, fp = engine.config, engine.fingerprint
    labels = list(ONE_PASS)
    detector = random_classifier(config, "lid1", labels, 0, [], 31, fp, normalize_states=True, num_states=2)
    with torch.no_grad():
        detector.head.weight.zero_()
        detector.head.bias.zero_()
        for k in range(len(labels)):
            detector.head.weight[k, k] = 1.0  # logits = the first pooled features
    prepared = engine.prepare(detector)
    features = torch.stack([_scores(engine, prepared, tone(2.5, seed=s)) for s in range(12)])  # (12, 3)
    mean, std = features.mean(dim=0), features.std(dim=0)
    with torch.no_grad():
        for k in range(len(labels)):
            detector.head.weight[k, k] = 1 / std[k]
            detector.head.bias[k] = -mean[k] / std[k]
    out = tmp_path_factory.mktemp("one-pass")
    save_adapter(detector, out / "lid1.safetensors")
    n = config.num_hidden_layers
    candidates = [
        random_adapter(config, "houlsby", "top-en", 8, list(range(1, n)), 12, 41, fp),
        random_adapter(config, "houlsby", "top-fr", 4, [n - 1], 14, 42, fp),
        random_adapter(config, "head", "top-de", 0, [], 10, 43, fp),
        random_adapter(config, "houlsby", "low-de", 4, [0], 10, 44, fp),  # changes layer 0: two passes
    ]
    for adapter in candidates:
        save_adapter(adapter, out / f"{adapter.name}.safetensors")
    return out / "lid1.safetensors", [out / f"{a.name}.safetensors" for a in candidates]


def _scores(engine: Engine, adapter, audio: np.ndarray) -> torch.Tensor:
    return engine.forward(torch.from_numpy(audio)[None], torch.tensor([len(audio)]), [adapter])[0]


def one_pass_label(model_dir, lid: Path, audio: np.ndarray) -> str:
    """Reference: the detector's top label on `audio` alone."""
    engine = Engine.from_pretrained(model_dir, device="cpu").engine
    adapter = engine.prepare(load_adapter(lid))
    return adapter.labels[int(_scores(engine, adapter, audio).argmax())]


def test_detection_rides_the_transcription_pass_where_the_placement_allows(tmp_path, model_dir, one_pass_files):
    lid, candidates = one_pass_files
    routing = {"language_adapter": "lid1", "languages": ONE_PASS}
    clips = [tone(2.5, seed=seed) for seed in range(20, 28)]
    with running_app(make_settings(tmp_path, model_dir, routing=routing), [lid, *candidates]) as client:
        seen = set()
        for audio in clips:
            language = one_pass_label(model_dir, lid, audio)  # one window: the detector hears all of it
            seen.add(language)
            response = transcribe(client, encode(audio), "auto", response_format="verbose_json")
            assert response.status_code == 200, response.text
            assert response.headers["x-chorus-language"] == language
            assert response.headers["x-chorus-adapter"] == f"anonymous/{ONE_PASS[language]}@1"
            named = transcribe(client, encode(audio), ONE_PASS[language], response_format="verbose_json").json()
            assert response.json()["text"] == named["text"] and response.json()["language"] == language
        metrics = client.get("/metrics").text
    assert len(seen) >= 2, seen
    for language in seen:
        assert f'chorus_auto_routes_total{{language="{language}",passes="1",source="detected"}}' in metrics
    assert 'passes="2"' not in metrics


def test_one_pass_decides_on_the_first_window_and_transcribes_every_window(tmp_path, model_dir, one_pass_files):
    """Long audio: the first window is the routed item; the others follow with the chosen adapter, and the stitched
    transcript equals the named adapter's."""
    lid, candidates = one_pass_files
    routing = {"language_adapter": "lid1", "languages": ONE_PASS, "detect_seconds": 2.0}
    batch = {"chunk_seconds": 2.0, "stride_seconds": 0.4}
    head = tone(2.0, seed=31)
    language = one_pass_label(model_dir, lid, head)  # the first window: 2 s
    tails = (tone(5.0, seed=s) for s in range(32, 48))  # the whole file would say otherwise
    audio = next(a for a in (np.concatenate([head, t]) for t in tails) if one_pass_label(model_dir, lid, a) != language)
    settings = make_settings(tmp_path, model_dir, routing=routing, batch=batch)
    with running_app(settings, [lid, *candidates]) as client:
        response = transcribe(client, encode(audio), "auto")
        assert response.status_code == 200, response.text
        assert response.headers["x-chorus-adapter"] == f"anonymous/{ONE_PASS[language]}@1"
        named = transcribe(client, encode(audio), ONE_PASS[language]).json()["text"]
        assert response.json()["text"] == named
        assert 'passes="1"' in client.get("/metrics").text


def test_a_candidate_below_the_detectors_states_means_two_passes(tmp_path, model_dir, one_pass_files):
    lid, candidates = one_pass_files
    routing = {"language_adapter": "lid1", "languages": {**ONE_PASS, "de": "low-de"}}
    audio = tone(2.5, seed=20)
    language = one_pass_label(model_dir, lid, audio)
    with running_app(make_settings(tmp_path, model_dir, routing=routing), [lid, *candidates]) as client:
        response = transcribe(client, encode(audio), "auto")
        assert response.status_code == 200, response.text
        assert response.headers["x-chorus-language"] == language
        metrics = client.get("/metrics").text
    assert 'passes="2"' in metrics and 'passes="1"' not in metrics


def test_one_pass_reports_a_language_without_an_adapter(tmp_path, model_dir, one_pass_files):
    lid, candidates = one_pass_files
    clips = {one_pass_label(model_dir, lid, tone(2.5, seed=s)): tone(2.5, seed=s) for s in range(20, 32)}
    missing = sorted(clips)[0]
    routing = {"language_adapter": "lid1", "languages": {k: v for k, v in ONE_PASS.items() if k != missing}}
    with running_app(make_settings(tmp_path, model_dir, routing=routing), [lid, *candidates]) as client:
        refused = transcribe(client, encode(clips[missing]), "auto")
        assert missing in error_of(refused, 400, "no_adapter_for_language")["message"]
        other = next(k for k in clips if k != missing)
        assert transcribe(client, encode(clips[other]), "auto").headers["x-chorus-language"] == other
        assert 'passes="1"' in client.get("/metrics").text
