"""POST /v1/audio/transcriptions: every response format, field names as OpenAI's SDK types them, and the solo
transcript of each adapter equal to what the engine gives directly."""

from __future__ import annotations

import numpy as np
import pytest

from chorus_server.engine import Engine, load_adapter
from tests.server.conftest import RATE, encode, tone, transcribe, wav

SEGMENT_FIELDS = {
    "id",
    "seek",
    "start",
    "end",
    "text",
    "tokens",
    "temperature",
    "avg_logprob",
    "compression_ratio",
    "no_speech_prob",
}


def test_json_is_the_default_and_names_the_version_used(client):
    response = transcribe(client, wav(2.0), "eng-0")
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"text", "usage"} and isinstance(body["text"], str)
    assert body["usage"] == {"type": "duration", "seconds": 2}
    assert response.headers["x-chorus-adapter"] == "anonymous/eng-0@1"  # the full ID: owner/name@version


def test_transcript_equals_the_engine_called_directly(client, model_dir, adapter_files):
    engine = Engine.from_pretrained(model_dir, device="cpu").engine
    audio = tone(3.0, seed=3)
    for path in adapter_files:
        expected = engine.transcribe([audio], [engine.prepare(load_adapter(path))])[0].text
        response = transcribe(client, encode(audio), path.stem)
        assert response.json()["text"] == expected


def test_verbose_json_has_every_field_the_sdk_types(client):
    fields = {"response_format": "verbose_json", "timestamp_granularities[]": ["word", "segment"]}
    body = transcribe(client, wav(4.0, seed=1), "eng-0", **fields).json()
    assert body["task"] == "transcribe" and body["duration"] == pytest.approx(4.0)
    assert body["language"] == "eng"
    assert body["segments"], "a non-empty transcript has segments"
    for segment in body["segments"]:
        assert set(segment) == SEGMENT_FIELDS
        assert 0 <= segment["start"] <= segment["end"] <= 4.0 + 0.02
    assert " ".join(s["text"] for s in body["segments"]) == body["text"]
    words = body["words"]
    assert [w["word"] for w in words] == body["text"].split()
    starts = [w["start"] for w in words]
    assert starts == sorted(starts) and all(w["start"] < w["end"] for w in words)


def test_granularities_choose_what_verbose_json_returns(client):
    only_words = transcribe(
        client, wav(2.0), "eng-0", response_format="verbose_json", **{"timestamp_granularities[]": "word"}
    ).json()
    assert "words" in only_words and "segments" not in only_words
    default = transcribe(client, wav(2.0), "eng-0", response_format="verbose_json").json()
    assert "segments" in default and "words" not in default
    json_words = transcribe(client, wav(2.0), "eng-0", **{"timestamp_granularities[]": "word"}).json()
    assert [w["word"] for w in json_words["words"]] == json_words["text"].split()


def test_text_srt_and_vtt(client):
    audio = wav(3.0, seed=2)
    text = transcribe(client, audio, "eng-0", response_format="text")
    json_text = transcribe(client, audio, "eng-0").json()["text"]
    assert text.headers["content-type"].startswith("text/plain") and text.text == json_text + "\n"
    srt = transcribe(client, audio, "eng-0", response_format="srt").text
    assert srt.startswith("1\n00:00:0") and " --> " in srt.splitlines()[1] and "," in srt.splitlines()[1]
    vtt = transcribe(client, audio, "eng-0", response_format="vtt")
    assert vtt.headers["content-type"].startswith("text/vtt") and vtt.text.startswith("WEBVTT\n\n")


def test_version_pinning_and_the_openai_default_model(client):
    assert transcribe(client, wav(1.0), "eng-0@1").headers["x-chorus-adapter"] == "anonymous/eng-0@1"
    # OpenAI clients default to whisper-1: it means the backbone's own head, published as "chorus/default".
    assert transcribe(client, wav(1.0), "whisper-1").headers["x-chorus-adapter"] == "chorus/default@1"


@pytest.mark.parametrize(
    ("rate", "channels", "fmt", "subtype"),
    [(8000, 1, "WAV", "PCM_16"), (44100, 2, "FLAC", None), (48000, 1, "OGG", "VORBIS"), (22050, 1, "WAV", "FLOAT")],
)
def test_any_rate_and_channel_count_is_converted(client, rate, channels, fmt, subtype):
    audio = tone(2.0, rate=rate, channels=channels)
    body = transcribe(client, encode(audio, rate, fmt, subtype), "eng-0", response_format="verbose_json").json()
    assert body["duration"] == pytest.approx(2.0, abs=1e-3)


def test_mp3_and_m4a_decode(client):
    mp3 = encode(tone(2.0), RATE, "MP3")
    assert transcribe(client, mp3, "eng-0").status_code == 200
    pytest.importorskip("av")
    assert transcribe(client, m4a(tone(2.0)), "eng-0", response_format="verbose_json").json()["duration"] > 1.9


def m4a(samples: np.ndarray) -> bytes:
    import io

    import av

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("aac", rate=RATE, layout="mono")
        frame = av.AudioFrame.from_ndarray(samples[None, :].astype(np.float32), format="flt", layout="mono")
        frame.sample_rate = RATE
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()
