"""The I/O-free rules both clients share: retry delays, Retry-After, request forms, paths, file discovery."""

from __future__ import annotations

import email.utils
import io

import pytest

from chorus_client import _core
from chorus_client._core import RetryPolicy, parse_retry_after


def test_backoff_doubles_with_jitter_and_is_capped():
    policy = RetryPolicy(backoff=0.5, max_backoff=3.0)
    assert [policy.delay(a, None, jitter=1.0) for a in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert [policy.delay(a, None, jitter=0.0) for a in range(3)] == [0.25, 0.5, 1.0]


def test_retry_after_replaces_backoff_and_is_bounded():
    policy = RetryPolicy(max_retry_after=30.0)
    assert policy.delay(0, 7.0, jitter=0.9) == 7.0
    assert policy.delay(3, 0.0, jitter=0.9) == 0.0
    assert policy.delay(0, 3600.0, jitter=0.0) == 30.0


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 413, 422, 500, 502, 504])
def test_only_429_and_503_are_retried(status):
    assert not RetryPolicy().should_retry(status, 0)


def test_retries_stop_after_max_retries():
    policy = RetryPolicy(max_retries=2)
    assert [policy.should_retry(503, a) for a in range(4)] == [True, True, False, False]
    assert [policy.should_retry(429, a) for a in range(3)] == [True, True, False]


def test_parse_retry_after():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("1.5") == 1.5
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after(None) is None and parse_retry_after("") is None
    assert parse_retry_after("soon") is None
    date = email.utils.formatdate(1_000_010.0, usegmt=True)
    assert parse_retry_after(date, now=1_000_000.0) == pytest.approx(10.0)
    assert parse_retry_after(date, now=2_000_000.0) == 0.0


def test_transcription_form():
    form = _core.transcription_form("fr@2", "json", True, None, "fr", None, 0.0)
    assert form == {
        "model": "fr@2",
        "response_format": "json",
        "timestamp_granularities[]": ["word"],
        "language": "fr",
        "temperature": "0.0",
    }
    verbose = _core.transcription_form("fr", "verbose_json", True, None, None, None, None)
    assert verbose["timestamp_granularities[]"] == ["word", "segment"]
    explicit = _core.transcription_form("fr", "verbose_json", False, ["segment"], None, "hi", None)
    assert explicit["timestamp_granularities[]"] == ["segment"] and explicit["prompt"] == "hi"
    assert "timestamp_granularities[]" not in _core.transcription_form("fr", "srt", False, None, None, None, None)
    with pytest.raises(ValueError, match="unknown response_format 'xml'"):
        _core.transcription_form("fr", "xml", False, None, None, None, None)


def test_adapter_paths():
    assert _core.adapter_path("fr") == "/v1/adapters/fr"
    assert _core.adapter_path("fr@3", "/pin") == "/v1/adapters/fr@3/pin"
    assert _core.adapter_path("acme/fr@3", "/pin") == "/v1/adapters/acme/fr@3/pin"
    for bad in ("", "../x", "a/b/c", "a/..", "fr\n", "/fr", "fr/"):
        with pytest.raises(ValueError, match="adapter reference"):
            _core.adapter_path(bad)


def test_read_audio_from_path_bytes_and_file(tmp_path):
    path = tmp_path / "a.wav"
    path.write_bytes(b"RIFF")
    assert _core.read_audio(path) == ("a.wav", b"RIFF", "audio/x-wav")
    assert _core.read_audio(str(path), filename="b.flac")[0] == "b.flac"
    assert _core.read_audio(b"xyz") == ("audio", b"xyz", "application/octet-stream")
    with path.open("rb") as f:
        assert _core.read_audio(f)[:2] == ("a.wav", b"RIFF")
    assert _core.read_audio(io.BytesIO(b"q"))[:2] == ("audio", b"q")


def test_upload_params():
    assert _core.upload_params("private", None, False) == {"visibility": "private"}
    assert _core.upload_params("public", 3, True) == {
        "visibility": "public",
        "expected_version": 3,
        "allow_fingerprint_mismatch": "true",
    }
    with pytest.raises(ValueError, match="visibility"):
        _core.upload_params("secret", None, False)


def test_audio_files_expand_directories(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    for name in ("d/b.wav", "d/a.FLAC", "d/notes.txt", "d/sub/c.mp3", "single.ogg"):
        (tmp_path / name).write_bytes(b"")
    found = _core.audio_files([tmp_path / "single.ogg", tmp_path / "d"])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["single.ogg", "d/a.FLAC", "d/b.wav", "d/sub/c.mp3"]
    assert len(_core.audio_files([tmp_path / "d"], recursive=False)) == 2


def test_url_and_key_from_the_environment(monkeypatch):
    monkeypatch.setenv("CHORUS_URL", "http://chorus:9000/")
    monkeypatch.setenv("CHORUS_API_KEY", "k-env")
    assert _core.resolve_url(None) == "http://chorus:9000"
    assert _core.resolve_url("http://x:1") == "http://x:1"
    assert _core.auth_headers(None) == {"Authorization": "Bearer k-env"}
    assert _core.auth_headers("k-arg") == {"Authorization": "Bearer k-arg"}
    monkeypatch.delenv("CHORUS_URL")
    monkeypatch.delenv("CHORUS_API_KEY")
    assert _core.resolve_url(None) == _core.DEFAULT_URL
    assert _core.auth_headers(None) == {}
