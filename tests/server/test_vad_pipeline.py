"""Voice activity detection through the server, on the bundled demo model and its espeak-ng recordings: silence
costs no backbone time and yields no text, segments end at known pauses, cues keep to subtitle limits,
`chunking_strategy` is accepted in both of OpenAI's forms."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator

import numpy as np
import pytest
import soundfile
from fastapi.testclient import TestClient

from chorus_server import speech
from chorus_server.batching import WorkItem
from chorus_server.subtitles import CUE_SECONDS, LINE_CHARS
from tests.server.conftest import encode, make_settings, running_app, transcribe
from tests.server.test_vad import RATE, quiet_noise, sample


@pytest.fixture(scope="module")
def client(tmp_path_factory) -> Iterator[TestClient]:
    """The demo model (unset backbone), detection on (the server's default)."""
    settings = make_settings(tmp_path_factory.mktemp("vad"), None, vad={"enabled": True})  # type: ignore[arg-type]
    with running_app(settings) as client:
        yield client


@pytest.fixture
def submitted(client) -> Iterator[list[int]]:
    """Lengths (samples) of the windows each request sends to the inference thread."""
    worker = client.app.state.chorus.worker
    lengths: list[int] = []
    original = worker.submit

    def spy(items: list[WorkItem]) -> None:
        lengths.extend(len(item.samples) for item in items)
        original(items)

    worker.submit = spy
    yield lengths
    worker.submit = original


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), np.float32)


@pytest.mark.parametrize("signal", [silence(4.0), quiet_noise(4.0)], ids=["digital silence", "quiet noise"])
def test_no_speech_no_text_no_backbone_time(client, submitted, signal):
    body = transcribe(client, encode(signal), "en", response_format="verbose_json").json()
    assert body["text"] == "" and body["segments"] == []
    assert submitted == []
    assert transcribe(client, encode(signal), "en", response_format="srt").text == ""


def two_sentences(pause: np.ndarray) -> tuple[np.ndarray, float, float]:
    """en-1, the pause, en-5 -> audio and the pause's start and end (s)."""
    first, second = sample("en-1"), sample("en-5")
    audio = np.concatenate([silence(0.5), first, pause, second, silence(0.5)])
    start = (int(0.5 * RATE) + len(first)) / RATE
    return audio, start, start + len(pause) / RATE


@pytest.mark.parametrize(
    ("pause", "late"),
    [(silence(3.0), 0.1), (silence(0.7), 0.1), (quiet_noise(3.0), 0.6)],
    ids=["3 s", "0.7 s", "3 s noise"],
)
def test_segments_end_at_the_pause(client, submitted, pause, late):
    """The split lies in the pause. In noise the detector holds on for about 0.35 s after speech and the padding
    keeps 0.2 s more, where the demo model may still emit a letter or two: `late` allows for that."""
    audio, pause_start, pause_end = two_sentences(pause)
    body = transcribe(
        client,
        encode(audio),
        "en",
        response_format="verbose_json",
        **{"timestamp_granularities[]": ["word", "segment"]},
    ).json()
    segments = body["segments"]
    assert len(segments) == 2, segments
    assert segments[0]["end"] <= pause_start + late and segments[1]["start"] >= pause_end - 0.1 - late / 2
    assert not [w for w in body["words"] if w["start"] < pause_start and w["end"] > pause_end]
    assert all(s["no_speech_prob"] < 0.2 for s in segments)
    assert sum(submitted) < len(audio) - len(pause) + RATE  # the pause (less padding and hangover) was skipped


def test_chunking_strategy_sets_the_pause_length(client, submitted):
    audio, _, _ = two_sentences(silence(1.0))
    transcribe(client, encode(audio), "en", chunking_strategy="auto")
    assert len(submitted) == 2  # two regions, one window each
    submitted.clear()
    strategy = {"type": "server_vad", "silence_duration_ms": 1500}
    transcribe(client, encode(audio), "en", chunking_strategy=json.dumps(strategy))
    assert len(submitted) == 1  # a 1 s pause is shorter than 1.5 s: one region
    submitted.clear()
    # the OpenAI SDK sends a dict as chunking_strategy[key] fields
    fields = {"chunking_strategy[type]": "server_vad", "chunking_strategy[silence_duration_ms]": "1500"}
    assert transcribe(client, encode(audio), "en", **fields).status_code == 200
    assert len(submitted) == 1


def test_bad_chunking_strategy_is_a_400(client):
    response = transcribe(client, encode(sample("en-2")), "en", chunking_strategy='{"type": "semantic_vad"}')
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "chunking_strategy"


def test_long_audio_gives_subtitle_sized_cues(client):
    """About 40 s of speech with short (0.3 s) pauses: one detector region, cut into cues by the conventions."""
    names = ["en-1", "en-2", "en-3", "en-5", "de-1", "es-5", "it-1", "de-4", "en-3", "en-1", "de-3"]
    pieces = [part for name in names for part in (sample(name), silence(0.3))]
    srt = transcribe(client, encode(np.concatenate(pieces)), "en", response_format="srt").text
    cues = [cue.splitlines() for cue in srt.strip().split("\n\n")]
    assert len(cues) >= 6
    for number, (index, timing, *lines) in enumerate(cues, start=1):
        assert index == str(number)
        start, end = (
            sum(float(x) * f for x, f in zip(re.split("[:,]", t), (3600, 60, 1, 0.001), strict=True))
            for t in timing.split(" --> ")
        )
        assert 0 < end - start <= CUE_SECONDS
        assert 1 <= len(lines) <= 2 and all(len(line) <= LINE_CHARS for line in lines)


def test_word_times_are_whole_milliseconds(client):
    body = transcribe(client, encode(sample("en-3")), "en", **{"timestamp_granularities[]": "word"}).json()
    times = [t for w in body["words"] for t in (w["start"], w["end"])]
    assert times and all(t == round(t, 3) and len(repr(t).split(".")[-1]) <= 3 for t in times)


def test_a_streamed_transcript_follows_the_speech_regions(client):
    """stream=true decodes each speech region apart and joins them as the plain transcript does: the deltas add up
    to the done text, which equals the plain greedy text exactly (two regions here, split by a 1.5 s pause). Streamed
    text is always greedy, so the plain request asks for greedy: the demo's default is beam search with its LM."""
    audio, _, _ = two_sentences(silence(1.5))
    plain = transcribe(client, encode(audio), "en", decoder="greedy").json()["text"]
    streamed = transcribe(client, encode(audio), "en", stream="true")
    assert streamed.status_code == 200 and streamed.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: ")]
    deltas = [e["delta"] for e in events if e["type"] == "transcript.text.delta"]
    assert events[-1]["type"] == "transcript.text.done"
    assert " " in plain and "".join(deltas) == events[-1]["text"] == plain


def test_without_detection_only_verbose_json_runs_the_detector(tmp_path, monkeypatch):
    """Detection off: the whole file is speech, and the detector's probabilities serve only `no_speech_prob`, which
    only verbose_json reports — other formats reach the backbone without the detector's ~25 ms per 5 s."""
    runs: list[int] = []
    measure = speech.speech_probabilities

    def counted(samples: np.ndarray) -> np.ndarray:
        runs.append(len(samples))
        return measure(samples)

    monkeypatch.setattr(speech, "speech_probabilities", counted)
    settings = make_settings(tmp_path, None, vad={"enabled": False})  # type: ignore[arg-type]
    audio = np.concatenate([sample("en-2"), silence(2.0)])
    with running_app(settings) as app:
        runs.clear()  # start-up warms the detector
        for response_format in ("json", "text", "srt", "vtt"):
            assert transcribe(app, encode(audio), "en", response_format=response_format).status_code == 200
        assert runs == []
        body = transcribe(app, encode(audio), "en", response_format="verbose_json").json()
    assert runs == [len(audio)]
    decoded = soundfile.read(io.BytesIO(encode(audio)), dtype="float32")[0]  # what the server saw (PCM16)
    measured = speech.detect(decoded, RATE, None, hop=320, min_samples=400)
    (segment,) = body["segments"]
    assert segment["no_speech_prob"] == measured.no_speech_prob(segment["start"], segment["end"]) > 0.0
