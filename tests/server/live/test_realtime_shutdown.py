"""SIGTERM to `chorus serve` with a realtime session open: its open turn is committed, transcribed and sent, then the
socket is closed with 1012 (service restart), all within the shutdown deadline."""

from __future__ import annotations

import signal
import time

import pytest
from websockets.exceptions import ConnectionClosed

from chorus_server.background import BackgroundServer, ServerProcess
from chorus_server.live.wsclient import configure, open_session, receive
from tests.server.conftest import make_settings, tone, without_collector_pauses
from tests.server.live.test_realtime import http_text, quantized, stream
from tests.server.test_errors import gate_forward


def test_sigterm_finishes_the_open_turn_then_closes_with_1012(tmp_path, model_dir):
    env = {
        "CHORUS_BACKBONE": str(model_dir),
        "CHORUS_STORE": str(tmp_path / "store"),
        "CHORUS_DTYPE": "float32",
        "CHORUS_DEVICE": "cpu",
        "CHORUS_VAD__ENABLED": "false",  # the HTTP transcript below is of the whole clip, as the turn's
    }
    audio = quantized(tone(2.5, seed=11))
    with ServerProcess(env, tmp_path, start_timeout=60) as server:
        assert server.process is not None
        expected = http_text(server.url, audio, "whisper-1")
        with open_session(server.url) as ws:
            receive(ws)
            configure(ws, "whisper-1")  # no VAD: the turn stays open until a commit
            receive(ws)
            stream(ws, audio)
            configure(ws, "whisper-1")  # events are handled in order: once this is answered, all audio is in
            events = [receive(ws)]
            while events[-1]["type"] != "session.updated":
                events.append(receive(ws))
            server.process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    events.append(receive(ws, timeout=30))
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
        assert time.monotonic() - signalled < 30  # CHORUS_SERVER__SHUTDOWN_TIMEOUT_SECONDS
        kinds = [event["type"] for event in events]
        assert "input_audio_buffer.committed" in kinds, kinds
        completed = events[-1]
        assert completed["type"] == "conversation.item.input_audio_transcription.completed", kinds
        assert completed["transcript"] == expected
        assert completed["usage"] == {"type": "duration", "seconds": 2.5}
        assert server.process.wait(60) in (0, -signal.SIGTERM)
    log = server.log()
    assert "Chorus stopped" in log and "Traceback" not in log


def test_a_turn_that_cannot_finish_in_time_is_closed_within_the_deadline(tmp_path, model_dir):
    settings = make_settings(tmp_path, model_dir, server={"shutdown_timeout_seconds": 2.0})
    with BackgroundServer(settings) as server, open_session(server.url) as ws:
        receive(ws)
        configure(ws, "whisper-1")
        receive(ws)
        gate, _ = gate_forward(server)  # the inference thread is stuck: no step, no final pass completes
        try:
            stream(ws, quantized(tone(1.0, seed=12)))
            configure(ws, "whisper-1")
            events = [receive(ws)]
            with without_collector_pauses():
                server.server.should_exit = True
                stopping = time.monotonic()
                with pytest.raises(ConnectionClosed) as closed:
                    while True:
                        events.append(receive(ws, timeout=30))
                waited = time.monotonic() - stopping
        finally:
            gate.set()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
    assert waited < 2.0  # within the shutdown timeout, before uvicorn cancels the session
    kinds = [event["type"] for event in events]
    assert "input_audio_buffer.committed" in kinds
    assert "conversation.item.input_audio_transcription.completed" not in kinds
