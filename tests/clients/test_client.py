"""`Chorus` and `AsyncChorus` against a scripted transport: requests they send, results, retries, errors."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from chorus_client import (
    APIConnectionError,
    AsyncChorus,
    Chorus,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    OverloadedError,
    RateLimitError,
    RetryPolicy,
    Transcription,
    VerboseTranscription,
)
from tests.clients.fake_server import FakeServer, envelope


@pytest.fixture
def server() -> FakeServer:
    return FakeServer()


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def client(server, sleeps):
    with Chorus("http://chorus.test", api_key="k1", transport=httpx.MockTransport(server), sleep=sleeps.append) as c:
        yield c


def run_async(server: FakeServer, sleeps: list[float], body):
    async def record(seconds: float) -> None:
        sleeps.append(seconds)

    async def main():
        async with AsyncChorus(
            "http://chorus.test", api_key="k1", transport=httpx.MockTransport(server), sleep=record
        ) as c:
            return await body(c)

    return asyncio.run(main())


def test_transcribe_json_sends_the_openai_form(client, server, tmp_path):
    audio = tmp_path / "hello.wav"
    audio.write_bytes(b"RIFFdata")
    result = client.transcribe(audio, "fr", word_timestamps=True, language="fr")
    assert type(result) is Transcription
    assert result.text == "bonjour" and result.adapter == "fr@2"
    assert result.words is not None and result.words[0].word == "bonjour"
    request, body = server.requests[0], server.bodies[0].decode("latin-1")
    assert request.url.path == "/v1/audio/transcriptions"
    assert request.headers["authorization"] == "Bearer k1"
    for part in ('name="model"\r\n\r\nfr\r', 'name="timestamp_granularities[]"\r\n\r\nword\r', 'filename="hello.wav"'):
        assert part in body
    assert "RIFFdata" in body


def test_transcribe_verbose_and_text_formats(client):
    verbose = client.transcribe(b"x", "fr", response_format="verbose_json")
    assert type(verbose) is VerboseTranscription
    assert verbose.segments is not None and verbose.segments[0].text == "bonjour" and verbose.duration == 0.5
    for fmt in ("text", "srt", "vtt"):
        assert client.transcribe(b"x", "fr", response_format=fmt) == f"bonjour ({fmt})"


def test_adapter_methods(client, server, tmp_path):
    assert client.health().status == "ok"
    assert client.ready()["status"] == "ready"
    assert [m.id for m in client.list_models().data] == ["fr"]
    assert client.get_adapter("fr").ref == "fr@2"
    assert client.get_adapter("fr@1").version == 1
    page = client.list_adapters(limit=1)
    assert page.next_cursor == "c1" and server.requests[-1].url.params["limit"] == "1"
    assert [a.id for a in client.iter_adapters()] == ["fr", "de"]
    assert client.pin("fr").pinned is True
    assert client.unpin("fr").pinned is False
    deleted = client.delete_adapter("fr@1")
    assert deleted.deleted and deleted.version == 1


def test_upload_streams_the_file_with_its_length(client, server, tmp_path):
    source = tmp_path / "fr.safetensors"
    source.write_bytes(b"\x01" * (3 << 20) + b"tail")
    adapter = client.upload_adapter(source, "fr", visibility="public", expected_version=2, progress=True)
    assert adapter.version == 3
    request = server.requests[-1]
    assert request.method == "PUT" and request.headers["content-type"] == "application/octet-stream"
    assert request.headers["content-length"] == str(source.stat().st_size)
    assert dict(request.url.params) == {"visibility": "public", "expected_version": "2"}
    assert server.bodies[-1] == source.read_bytes()
    client.upload_adapter(source, "fr")
    assert dict(server.requests[-1].url.params) == {}  # no visibility: the server keeps the adapter's


def test_503_with_retry_after_is_retried_and_the_upload_resent(client, server, sleeps, tmp_path):
    source = tmp_path / "fr.safetensors"
    source.write_bytes(b"abc" * 1000)
    server.script = [envelope(503, "overloaded_error", "queue full", "queue_full", **{"Retry-After": "2"})]
    assert client.upload_adapter(source, "fr").version == 3
    assert sleeps == [2.0]
    assert server.bodies == [source.read_bytes()] * 2


def test_429_without_retry_after_backs_off_then_gives_up(server, sleeps):
    policy = RetryPolicy(max_retries=2, backoff=1.0)
    transport = httpx.MockTransport(server)
    with Chorus("http://t", transport=transport, retry=policy, sleep=sleeps.append, jitter=lambda: 1.0) as c:
        server.script = [envelope(429, "rate_limit_error", "slow down")] * 3
        with pytest.raises(RateLimitError, match="slow down"):
            c.transcribe(b"x", "fr")
    assert sleeps == [1.0, 2.0] and len(server.requests) == 3


@pytest.mark.parametrize(
    ("status", "type_", "cls"),
    [
        (404, "not_found_error", NotFoundError),
        (409, "conflict_error", ConflictError),
        (422, "invalid_request_error", InvalidRequestError),
    ],
)
def test_4xx_is_never_retried(client, server, sleeps, status, type_, cls):
    server.script = [envelope(status, type_, "nope", **{"Retry-After": "1"})]
    with pytest.raises(cls):
        client.get_adapter("fr")
    assert sleeps == [] and len(server.requests) == 1


def test_readiness_is_not_retried(client, server, sleeps):
    server.script = [envelope(503, "overloaded_error", "loading backbone", **{"Retry-After": "1"})]
    with pytest.raises(OverloadedError) as info:
        client.ready()
    assert info.value.retry_after == 1.0 and sleeps == []


def test_connection_failures_become_api_connection_error(client, server):
    server.script = [httpx.ConnectError("refused")]
    with pytest.raises(APIConnectionError, match=r"cannot reach Chorus at http://chorus\.test"):
        client.health()


def test_transcribe_many_keeps_order_and_per_file_errors(client, server, tmp_path):
    folder = tmp_path / "calls"
    folder.mkdir()
    for name in ("a.wav", "b.wav", "c.wav", "readme.txt"):
        (folder / name).write_bytes(b"x")
    server.script = [envelope(415, "invalid_request_error", "unsupported audio", "unsupported_audio")]
    results = client.transcribe_folder(folder, "fr", concurrency=1, progress=False)
    assert [r.path.name for r in results] == ["a.wav", "b.wav", "c.wav"]
    assert isinstance(results[0].error, InvalidRequestError) and results[0].result is None
    assert [r.result.text for r in results[1:] if isinstance(r.result, Transcription)] == ["bonjour"] * 2
    missing = client.transcribe_many([tmp_path / "missing.wav"], "fr", progress=True)
    assert missing[0].error is not None and "cannot read" in str(missing[0].error)
    with pytest.raises(ValueError, match="concurrency"):
        client.transcribe_many([], "fr", concurrency=0)


def test_async_client_mirrors_the_sync_one(server, sleeps, tmp_path):
    source = tmp_path / "fr.safetensors"
    source.write_bytes(b"z" * 5000)
    for name in ("a.wav", "b.wav"):
        (tmp_path / name).write_bytes(b"x")
    server.script = [envelope(503, "overloaded_error", "busy", **{"Retry-After": "0.5"})]

    async def body(c: AsyncChorus):
        text = await c.transcribe(b"x", "fr", response_format="text")
        adapters = [a.id async for a in c.iter_adapters()]
        uploaded = await c.upload_adapter(source, "fr", progress=True)
        many = await c.transcribe_many([tmp_path], "fr", concurrency=2, progress=False)
        pinned, health = await c.pin("fr"), await c.health()
        with pytest.raises(NotFoundError):
            await c.delete_adapter("nope")
        return text, adapters, uploaded, many, pinned, health

    text, adapters, uploaded, many, pinned, health = run_async(server, sleeps, body)
    assert text == "bonjour (text)" and sleeps == [0.5]
    assert adapters == ["fr", "de"] and uploaded.version == 3 and server.bodies[4] == source.read_bytes()
    assert [r.path.name for r in many] == ["a.wav", "b.wav"] and all(r.error is None for r in many)
    assert pinned.pinned and health.status == "ok"
