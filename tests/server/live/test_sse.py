"""`stream=true` on POST /v1/audio/transcriptions: OpenAI's transcript events, read by the official SDK."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import torch

from chorus_server.engine.adapters import Vocabulary
from chorus_server.errors import ApiError
from chorus_server.live.sse import transcript_events
from chorus_server.service import Piece
from tests.server.conftest import wav

openai = pytest.importorskip("openai")

VOCAB = Vocabulary(("<pad>", "|", "a", "b"), blank_id=0, word_delimiter_id=1)


def one_hot(ids: list[int]) -> torch.Tensor:
    logits = torch.full((len(ids), len(VOCAB)), -5.0)  # (T, V)
    logits[torch.arange(len(ids)), torch.tensor(ids)] = 5.0
    return logits


def events(chunks: list[bytes]) -> list[dict]:
    assert all(chunk.startswith(b"data: ") and chunk.endswith(b"\n\n") for chunk in chunks)
    return [json.loads(chunk[6:]) for chunk in chunks]


def test_a_delta_leaves_as_soon_as_its_window_is_done():
    second_window = asyncio.Event()

    async def pieces():
        yield None
        yield Piece(VOCAB, one_hot([2, 1]), starts_region=True)
        await second_window.wait()
        yield Piece(VOCAB, one_hot([3, 0]), starts_region=False)

    async def run() -> list[dict]:
        stream = transcript_events(pieces(), 2.2)
        first = events([await anext(stream)])  # the second window has not finished yet
        second_window.set()
        return first + events([chunk async for chunk in stream])

    got = asyncio.run(run())
    assert got == [
        {"type": "transcript.text.delta", "delta": "a"},
        {"type": "transcript.text.delta", "delta": " b"},
        {"type": "transcript.text.done", "text": "a b", "usage": {"type": "duration", "seconds": 3}},
    ]


def test_a_long_window_streams_as_deltas_of_about_a_second():
    """One 14 s window (700 frames) of words is many deltas, not one; they add up to the done text."""
    from chorus_server.live.sse import FRAMES_PER_DELTA

    word = [2] * 10 + [0] * 20 + [1] * 5 + [3] * 10 + [1] * 5  # "a" then "b", 50 frames (1 s)
    frames = word * 14  # (700,) ids

    async def pieces():
        yield None
        yield Piece(VOCAB, one_hot(frames), starts_region=True)

    async def run() -> list[bytes]:
        return [chunk async for chunk in transcript_events(pieces(), 14.0)]

    got = events(asyncio.run(run()))
    deltas = [e["delta"] for e in got if e["type"] == "transcript.text.delta"]
    assert len(deltas) == len(frames) // FRAMES_PER_DELTA == 14
    assert "".join(deltas) == got[-1]["text"] == " ".join(["a b"] * 14)


def test_speech_regions_are_decoded_apart_and_joined_with_one_space():
    """As the plain transcript (`speech.join`): a run of one token across a region boundary is two tokens, a
    region with no text adds nothing, and the next region's first delta starts with the joining space."""

    async def pieces():
        yield None
        yield Piece(VOCAB, one_hot([2, 2]), starts_region=True)
        yield Piece(VOCAB, one_hot([0, 0]), starts_region=True)  # no text
        yield Piece(VOCAB, one_hot([2]), starts_region=True)
        yield Piece(VOCAB, one_hot([1, 3]), starts_region=False)

    async def run() -> list[bytes]:
        return [chunk async for chunk in transcript_events(pieces(), 1.0)]

    got = events(asyncio.run(run()))
    assert got == [
        {"type": "transcript.text.delta", "delta": "a"},
        {"type": "transcript.text.delta", "delta": " a"},
        {"type": "transcript.text.delta", "delta": " b"},
        {"type": "transcript.text.done", "text": "a a b", "usage": {"type": "duration", "seconds": 1}},
    ]


def test_an_error_mid_stream_ends_it_with_an_error_event():
    async def pieces():
        yield None
        yield Piece(VOCAB, one_hot([2]), starts_region=True)
        raise ApiError(504, "the request did not finish before its deadline", "deadline_exceeded")

    async def run() -> list[bytes]:
        return [chunk async for chunk in transcript_events(pieces(), 1.0)]

    got = events(asyncio.run(run()))
    assert got[0] == {"type": "transcript.text.delta", "delta": "a"}
    assert got[1:] == [
        {
            "type": "error",
            "error": {
                "message": "the request did not finish before its deadline",
                "type": "timeout_error",
                "param": None,
                "code": "deadline_exceeded",
            },
        }
    ]


def test_the_openai_sdk_streams_the_same_text_as_a_plain_request(live, tmp_path):
    client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused")
    audio = tmp_path / "long.wav"
    audio.write_bytes(wav(11.0, seed=5))  # four 4 s windows
    with audio.open("rb") as f:
        plain = client.audio.transcriptions.create(model="eng-0", file=f)
    with audio.open("rb") as f:
        stream = client.audio.transcriptions.create(model="eng-0", file=f, stream=True)
        got = list(stream)
    assert plain.text
    deltas = [event for event in got[:-1] if event.type == "transcript.text.delta"]
    assert len(deltas) == len(got) - 1 >= 2  # several windows: several deltas
    done = got[-1]
    assert done.type == "transcript.text.done"
    assert done.text == plain.text == "".join(event.delta for event in deltas)
    assert done.usage.type == "duration" and done.usage.seconds == 11

    with audio.open("rb") as f:  # response_format=text streams the same events
        assert list(client.audio.transcriptions.create(model="eng-0", file=f, stream=True, response_format="text"))


def test_errors_before_the_stream_are_plain_json_errors(live):
    files = {"file": ("a.wav", wav(1.0), "audio/wav")}
    url = f"{live.url}/v1/audio/transcriptions"
    missing = httpx.post(url, files=files, data={"model": "klingon", "stream": "true"})
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/json"
    assert missing.json()["error"]["code"] == "adapter_not_found"
    srt = httpx.post(url, files=files, data={"model": "eng-0", "stream": "true", "response_format": "srt"})
    assert srt.status_code == 400
    assert srt.json()["error"] == {
        "message": "stream=true sends text events; use response_format json or text, not srt",
        "type": "invalid_request_error",
        "param": "response_format",
        "code": "unsupported_value",
    }
    garbage = httpx.post(
        url, files={"file": ("a.wav", b"RIFF nonsense", "audio/wav")}, data={"model": "eng-0", "stream": "true"}
    )
    assert garbage.status_code in (400, 415) and "error" in garbage.json()


def test_the_first_window_runs_alone_so_its_text_is_not_held_back(live, tmp_path, monkeypatch):
    worker = live.app.state.chorus.worker
    sizes: list[int] = []
    submit = worker.submit
    monkeypatch.setattr(worker, "submit", lambda items: (sizes.append(len(items)), submit(items))[1])
    client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused")
    audio = tmp_path / "long.wav"
    audio.write_bytes(wav(11.0, seed=5))
    with audio.open("rb") as f:
        assert list(client.audio.transcriptions.create(model="eng-0", file=f, stream=True))[-1].text
    assert sizes == [1, 3]  # four windows: the first alone, the rest once it has run
    with audio.open("rb") as f:
        client.audio.transcriptions.create(model="eng-0", file=f)
    assert sizes == [1, 3, 4]  # a plain request queues every window at once


def test_a_failure_mid_stream_reaches_the_sdk_as_an_error(live, tmp_path, monkeypatch):
    engine = live.app.state.chorus.engine
    forward = engine.forward
    calls = {"n": 0}

    def fails_after_the_first_window(waveforms, lengths, adapters):
        calls["n"] += 1
        if calls["n"] > 1:
            raise RuntimeError("the device fell over")
        return forward(waveforms, lengths, adapters)

    monkeypatch.setattr(engine, "forward", fails_after_the_first_window)
    client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0)
    audio = tmp_path / "long.wav"
    audio.write_bytes(wav(11.0, seed=5))
    received = []
    with audio.open("rb") as f, pytest.raises(openai.APIError) as failed:
        for event in client.audio.transcriptions.create(model="eng-0", file=f, stream=True):
            received.append(event)
    # The first window's text arrived (in deltas of about a second each), then the error.
    assert received and {event.type for event in received} == {"transcript.text.delta"}
    assert failed.value.code == "internal_error"
    assert "fell over" not in str(failed.value)
