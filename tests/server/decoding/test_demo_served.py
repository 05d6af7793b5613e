"""Decoding as users meet it: the demo server as `chorus serve` starts it (seeded store with the demo LMs), asked
through the HTTP API for its default decoder, greedy by name, token log-probabilities and word probabilities."""

from __future__ import annotations

import json
import math

import pytest

from tests.server.conftest import make_settings, running_app, transcribe

pytest.importorskip("flashlight.lib.text.decoder", reason="beam decoding needs the lm extra")


def _cer(reference: str, hypothesis: str) -> float:
    previous = list(range(len(hypothesis) + 1))
    for i, r in enumerate(reference, 1):
        current = [i]
        for j, h in enumerate(hypothesis, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h)))
        previous = current
    return previous[-1] / max(1, len(reference))


def test_the_demo_beam_searches_by_default_and_reports_confidences(tmp_path):
    from chorus_server.demo_model import DEMO_DIR

    samples = DEMO_DIR / "samples"
    rows = [json.loads(line) for line in (samples / "samples.jsonl").read_text().splitlines() if line.strip()]
    rows = [row for row in rows if row["lang"] in ("en", "de")]
    errors = {"default": 0.0, "greedy": 0.0}
    with running_app(make_settings(tmp_path, None)) as client:  # type: ignore[arg-type]
        for row in rows:
            audio = (samples / row["audio"]).read_bytes()
            model = f"chorus/{row['lang']}"
            default = transcribe(client, audio, model, **{"include[]": "logprobs"})
            greedy = transcribe(client, audio, model, decoder="greedy")
            assert default.status_code == 200 and greedy.status_code == 200, (default.text, greedy.text)
            body = default.json()
            tokens = body["logprobs"]
            assert "".join(t["token"] for t in tokens) == body["text"]
            assert all(t["logprob"] <= 0 and t["bytes"] == list(t["token"].encode()) for t in tokens)
            errors["default"] += _cer(row["text"], body["text"])
            errors["greedy"] += _cer(row["text"], greedy.json()["text"])
        audio = (samples / "en-2.wav").read_bytes()
        segments = transcribe(client, audio, "chorus/en", response_format="verbose_json").json()["segments"]
        fields = {"response_format": "verbose_json", "timestamp_granularities[]": "word"}
        words = transcribe(client, audio, "chorus/en", **fields).json()["words"]
        assert words
        assert segments and all(s["avg_logprob"] <= 0 and 0 <= s["no_speech_prob"] <= 1 for s in segments)
        for word in words:
            assert 0 < word["probability"] <= 1 and not math.isnan(word["probability"])
    # The demo LMs are the default: on these held-out samples they spell better than greedy (docs/benchmarks.md).
    assert errors["default"] < errors["greedy"], errors
