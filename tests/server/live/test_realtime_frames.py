"""Hostile realtime frames against a real uvicorn: too big, nested too deep, audio the buffer cannot take. Each is
refused before it is parsed or decoded, with an OpenAI `error` event, one log line and a clean close."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed

import chorus_server.live.session as session_module
from chorus_server.background import BackgroundServer
from chorus_server.live.frames import MAX_DEPTH, check_depth, nesting_depth
from chorus_server.live.wsclient import configure, open_session, pcm16, receive, send
from tests.server.conftest import make_settings

RATE = 16000
MAX_EVENT_BYTES = 64 * 1024


@pytest.fixture
def small(tmp_path, model_dir) -> Iterator[BackgroundServer]:
    settings = make_settings(
        tmp_path, model_dir, realtime={"max_event_bytes": MAX_EVENT_BYTES, "max_buffer_seconds": 1.0}
    )
    with BackgroundServer(settings) as server:
        yield server


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def server_log() -> Iterator[list[logging.LogRecord]]:
    """Warnings and errors from Chorus and from uvicorn (whose logger does not reach the root, so caplog misses it)."""
    handler = Records()
    loggers = [logging.getLogger(name) for name in ("chorus_server", "uvicorn.error")]
    for logger in loggers:
        logger.addHandler(handler)
    yield handler.records
    for logger in loggers:
        logger.removeHandler(handler)


def closed_with(ws) -> int:
    with pytest.raises(ConnectionClosed) as closed:
        receive(ws, timeout=30)
    assert closed.value.rcvd is not None, "the server dropped the connection without a close frame"
    return closed.value.rcvd.code


def test_deeply_nested_json_is_an_error_event_and_a_policy_close(small, server_log):
    with open_session(small.url) as ws:
        receive(ws)
        ws.send("[" * 50_000)  # under the size limit: the depth check refuses it
        error = receive(ws)
        assert error["type"] == "error" and error["event_id"]
        assert error["error"]["code"] == "invalid_json" and error["error"]["type"] == "invalid_request_error"
        assert f"more than the {MAX_DEPTH} allowed" in error["error"]["message"]
        assert closed_with(ws) == 1008
    warnings = [r for r in server_log if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and warnings[0].exc_info is None, [r.getMessage() for r in warnings]
    assert "nests" in warnings[0].getMessage()


def test_a_frame_over_the_limit_is_refused_before_it_is_parsed(small, server_log, monkeypatch):
    decoded = []
    monkeypatch.setattr(session_module, "decode_pcm16", lambda audio: decoded.append(audio) or np.zeros(0))
    audio = pcm16(np.zeros(MAX_EVENT_BYTES // 2, np.float32))  # 1.33 x the limit, once in JSON
    with open_session(small.url) as ws:
        receive(ws)
        send(ws, {"type": "input_audio_buffer.append", "audio": audio})
        error = receive(ws)["error"]
        assert error["code"] == "event_too_large" and f"the {MAX_EVENT_BYTES} a client event" in error["message"]
        assert closed_with(ws) == 1009
    with open_session(small.url) as ws:  # a binary frame is measured the same way
        receive(ws)
        ws.send(b"\0" * (MAX_EVENT_BYTES + 1))
        assert receive(ws)["error"]["code"] == "event_too_large"
        assert closed_with(ws) == 1009
    with open_session(small.url) as ws:  # past twice the limit, the WebSocket layer does not read it whole
        receive(ws)
        ws.send("x" * (2 * MAX_EVENT_BYTES + 1))
        assert closed_with(ws) == 1009
    assert not decoded
    assert [r.exc_info for r in server_log if r.levelno >= logging.WARNING] == [None, None]


def test_audio_the_buffer_cannot_take_is_refused_before_it_is_decoded(small, monkeypatch):
    decoded = []
    decode = session_module.decode_pcm16
    monkeypatch.setattr(session_module, "decode_pcm16", lambda audio: decoded.append(len(audio)) or decode(audio))
    with open_session(small.url) as ws:
        receive(ws)
        configure(ws, "whisper-1")
        receive(ws)
        send(ws, {"type": "input_audio_buffer.append", "audio": pcm16(np.zeros(int(1.5 * RATE), np.float32))})
        full = receive(ws)["error"]
        assert full["code"] == "input_audio_buffer_full"
        assert not decoded
        send(ws, {"type": "input_audio_buffer.append", "audio": pcm16(np.zeros(RATE // 2, np.float32))})
        send(ws, {"type": "input_audio_buffer.clear"})  # the session is still open and takes audio that fits
        assert receive(ws)["type"] == "input_audio_buffer.cleared"
        assert len(decoded) == 1


def test_the_depth_scan_skips_brackets_in_strings():
    """The scan counts brackets outside strings only; prompts may hold brackets."""
    event = {"type": "session.update", "session": {"audio": {"input": {"transcription": {"prompt": "[" * 1000}}}}}
    check_depth(json.dumps(event))  # 5 deep: accepted
    assert nesting_depth(json.dumps(event)) == 5
    assert nesting_depth('{"a": "\\"[[[", "b": [[1], {"c": []}]}') == 4
    assert nesting_depth("[" * 100_000) == 100_000
