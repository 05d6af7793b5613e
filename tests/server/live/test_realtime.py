"""Realtime transcription over a WebSocket, against a real uvicorn: OpenAI's events, auth, limits."""

from __future__ import annotations

import io
import time

import httpx
import numpy as np
import pytest
import soundfile
from websockets.exceptions import ConnectionClosed, InvalidStatus

from chorus_server.background import BackgroundServer
from chorus_server.batching import Priority
from chorus_server.live.wsclient import configure, open_session, pcm16, receive, send, until
from chorus_server.settings import TenantLimits
from tests.server.conftest import make_settings, tone

RATE = 16000


def quantized(samples: np.ndarray) -> np.ndarray:
    """What PCM16 carries of `samples`: the exact audio both the socket and a WAV upload deliver."""
    return (np.clip(samples, -1, 32767 / 32768) * 32768).astype(np.int16).astype(np.float32) / 32768


def http_text(url: str, samples: np.ndarray, model: str) -> str:
    buffer = io.BytesIO()
    soundfile.write(buffer, np.round(samples * 32768).astype(np.int16), RATE, format="WAV", subtype="PCM_16")
    response = httpx.post(
        f"{url}/v1/audio/transcriptions", files={"file": ("a.wav", buffer.getvalue())}, data={"model": model}
    )
    assert response.status_code == 200, response.text
    return str(response.json()["text"])


def stream(ws, samples: np.ndarray, chunk: int = 1600) -> None:
    for start in range(0, len(samples), chunk):
        send(ws, {"type": "input_audio_buffer.append", "audio": pcm16(samples[start : start + chunk])})


def test_a_committed_turn_streams_deltas_then_the_http_transcript(live):
    audio = quantized(tone(3.0, seed=2))
    with open_session(live.url) as ws:
        created = receive(ws)
        assert created["type"] == "session.created"
        assert created["session"]["type"] == "transcription"
        assert created["session"]["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
        configure(ws, "eng-0")
        updated = receive(ws)
        assert updated["type"] == "session.updated"
        assert updated["session"]["audio"]["input"]["turn_detection"] is None
        assert updated["session"]["audio"]["input"]["transcription"]["model"] == "eng-0"
        stream(ws, audio)
        send(ws, {"type": "input_audio_buffer.commit"})
        events = until(ws, "conversation.item.input_audio_transcription.completed")
    committed = next(e for e in events if e["type"] == "input_audio_buffer.committed")
    deltas = [e for e in events if e["type"] == "conversation.item.input_audio_transcription.delta"]
    completed = events[-1]
    assert committed["previous_item_id"] is None and committed["item_id"].startswith("item_")
    assert deltas and {d["item_id"] for d in deltas} == {committed["item_id"]} == {completed["item_id"]}
    ends = [d["audio_end_ms"] for d in deltas]
    assert ends == sorted(ends) and ends[-1] <= 3000
    assert completed["transcript"] == http_text(live.url, audio, "eng-0")
    assert completed["usage"] == {"type": "duration", "seconds": 3.0}
    assert completed["content_index"] == 0 and all(e["event_id"] for e in events)


def test_server_vad_commits_turns_at_pauses(live):
    quiet = np.zeros(RATE, np.float32)
    speech = quantized(tone(1.5, seed=3))
    audio = np.concatenate([quiet, speech, quiet, speech, quiet])
    vad = {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 400}
    with open_session(live.url) as ws:
        receive(ws)
        configure(ws, "eng-0", vad=vad)
        assert receive(ws)["session"]["audio"]["input"]["turn_detection"] == vad
        stream(ws, audio, chunk=800)
        first = until(ws, "conversation.item.input_audio_transcription.completed")
        second = until(ws, "conversation.item.input_audio_transcription.completed")
    kinds = [e["type"] for e in first]
    assert kinds.index("input_audio_buffer.speech_started") < kinds.index("input_audio_buffer.speech_stopped")
    assert kinds.index("input_audio_buffer.speech_stopped") < kinds.index("input_audio_buffer.committed")
    started = next(e for e in first if e["type"] == "input_audio_buffer.speech_started")
    stopped = next(e for e in first if e["type"] == "input_audio_buffer.speech_stopped")
    assert 600 <= started["audio_start_ms"] <= 1000  # speech at 1000 ms, minus up to 300 ms of padding
    assert 2500 <= stopped["audio_end_ms"] <= 3100  # speech ends at 2500 ms, plus the 400 ms of silence
    committed = [e for e in first + second if e["type"] == "input_audio_buffer.committed"]
    assert committed[1]["previous_item_id"] == committed[0]["item_id"]
    assert first[-1]["transcript"] and second[-1]["transcript"]


def test_clear_drops_the_turn_and_bad_events_get_error_events(live):
    with open_session(live.url) as ws:
        receive(ws)
        configure(ws, "eng-0")
        receive(ws)
        send(ws, {"type": "input_audio_buffer.commit", "event_id": "c1"})
        empty = receive(ws)
        assert empty["type"] == "error"
        assert empty["error"]["code"] == "input_audio_buffer_commit_empty" and empty["error"]["event_id"] == "c1"
        stream(ws, quantized(tone(1.0)))
        send(ws, {"type": "input_audio_buffer.clear"})
        assert until(ws, "input_audio_buffer.cleared")[-1]["type"] == "input_audio_buffer.cleared"
        send(ws, {"type": "input_audio_buffer.commit"})
        assert receive(ws)["error"]["code"] == "input_audio_buffer_commit_empty"
        send(ws, {"type": "input_audio_buffer.append", "audio": "not base64!"})
        bad_audio = receive(ws)["error"]
        assert (bad_audio["code"], bad_audio["param"]) == ("invalid_audio", "audio")
        send(ws, {"type": "session.update", "session": {"audio": {"input": {"format": {"rate": 8000}}}}})
        bad_rate = receive(ws)["error"]
        assert bad_rate["param"] == "session.audio.input.format.rate"
        rates = "16000, 24000, 44100, 48000"
        assert bad_rate["message"] == f"session.audio.input.format.rate must be one of {rates}, got 8000"
        configure(ws, "klingon")
        missing = receive(ws)["error"]
        assert (missing["code"], missing["param"]) == ("adapter_not_found", "session.audio.input.transcription.model")
        send(ws, {"type": "response.create"})
        assert receive(ws)["error"]["code"] == "invalid_event_type"
        ws.send("{not json")
        assert receive(ws)["error"]["code"] == "invalid_json"


def test_24khz_audio_is_resampled(live):
    audio = quantized(tone(2.0, rate=24000, seed=6))
    with open_session(live.url) as ws:
        receive(ws)
        configure(ws, "eng-0", rate=24000)
        receive(ws)
        stream(ws, audio, chunk=2400)
        send(ws, {"type": "input_audio_buffer.commit"})
        events = until(ws, "conversation.item.input_audio_transcription.completed")
    assert events[-1]["usage"]["seconds"] == pytest.approx(2.0, abs=0.02)


@pytest.fixture
def keyed(tmp_path, model_dir, adapter_files):
    settings = make_settings(
        tmp_path,
        model_dir,
        auth={"keys": {"k-acme": "acme:user", "k-metrics": "ops:metrics"}},
        realtime={"max_sessions_per_tenant": 1, "idle_timeout_seconds": 1.5, "max_buffer_seconds": 2.0},
    )
    with BackgroundServer(settings) as server:
        yield server


def test_keys_limits_and_timeouts(keyed):
    with pytest.raises(InvalidStatus) as refused:
        open_session(keyed.url)
    assert refused.value.response.status_code == 401
    assert b'"code":"missing_api_key"' in refused.value.response.body
    with pytest.raises(InvalidStatus) as scraper:
        open_session(keyed.url, "k-metrics")
    assert scraper.value.response.status_code == 403
    with open_session(keyed.url, "k-acme", subprotocol_key=True) as ws:  # the browser form
        assert ws.subprotocol == "realtime"
        assert receive(ws)["type"] == "session.created"
        with pytest.raises(InvalidStatus) as second:
            open_session(keyed.url, "k-acme")
        assert second.value.response.status_code == 429
        assert b"too_many_sessions" in second.value.response.body
        configure(ws, "whisper-1")  # no VAD: all audio is transcribed, silence too
        assert receive(ws)["type"] == "session.updated"
        send(ws, {"type": "input_audio_buffer.append", "audio": pcm16(np.zeros(3 * RATE, np.float32))})
        full = receive(ws)["error"]
        assert full["code"] == "input_audio_buffer_full"
        idle = receive(ws, timeout=10)["error"]
        assert idle["code"] == "idle_timeout"
        with pytest.raises(ConnectionClosed):
            receive(ws, timeout=10)
    with open_session(keyed.url, "k-acme") as ws:  # the session was given back
        assert receive(ws)["type"] == "session.created"
    metrics = httpx.get(f"{keyed.url}/metrics", headers={"Authorization": "Bearer k-metrics"}).text
    assert 'chorus_realtime_refusals_total{code="too_many_sessions"} 1.0' in metrics
    assert 'chorus_realtime_refusals_total{code="idle_timeout"} 1.0' in metrics


def test_intent_must_be_transcription(live):
    with pytest.raises(InvalidStatus) as refused:
        from websockets.sync.client import connect

        connect(live.url.replace("http://", "ws://") + "/v1/realtime?model=gpt-realtime", open_timeout=30)
    assert refused.value.response.status_code == 400


def test_the_openai_sdk_runs_a_transcription_session(live):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused")
    audio = quantized(tone(2.0, rate=24000, seed=8))
    with client.realtime.connect(extra_query={"intent": "transcription"}) as connection:
        assert connection.recv().type == "session.created"
        connection.session.update(
            session={
                "type": "transcription",
                "audio": {
                    "input": {
                        "format": {"type": "audio/pcm", "rate": 24000},
                        "transcription": {"model": "eng-0"},
                        "turn_detection": None,
                    }
                },
            }
        )
        for start in range(0, len(audio), 4800):
            connection.input_audio_buffer.append(audio=pcm16(audio[start : start + 4800]))
        connection.input_audio_buffer.commit()
        kinds, deltas = [], []
        for event in connection:
            kinds.append(event.type)
            if event.type == "conversation.item.input_audio_transcription.delta":
                deltas.append(event.delta)
            if event.type == "conversation.item.input_audio_transcription.completed":
                completed = event
                break
    assert kinds[0] == "session.updated" and "input_audio_buffer.committed" in kinds
    assert completed.transcript and completed.usage.seconds == pytest.approx(2.0, abs=0.02)
    assert deltas


def test_a_session_outlives_the_request_head_deadline(tmp_path, model_dir):
    """The h11 head deadline is for a request's head; once upgraded, the WebSocket is not cut by it."""
    settings = make_settings(tmp_path, model_dir, server={"header_timeout_seconds": 0.5})
    with BackgroundServer(settings) as server, open_session(server.url) as ws:
        assert receive(ws)["type"] == "session.created"
        time.sleep(1.0)  # past the head deadline
        send(ws, {"type": "input_audio_buffer.clear"})
        assert receive(ws)["type"] == "input_audio_buffer.cleared"


def test_a_failed_step_fails_its_turn_and_the_session_goes_on(live, monkeypatch):
    engine = live.app.state.chorus.engine
    forward = engine.forward
    broken = {"on": True}

    def failing(waveforms, lengths, adapters):
        if broken["on"]:
            raise RuntimeError("the device fell over")
        return forward(waveforms, lengths, adapters)

    monkeypatch.setattr(engine, "forward", failing)
    with open_session(live.url) as ws:
        receive(ws)
        configure(ws, "eng-0")
        receive(ws)
        stream(ws, quantized(tone(1.0)))
        failed = until(ws, "conversation.item.input_audio_transcription.failed")[-1]
        assert failed["error"]["code"] == "internal_error"
        assert "fell over" not in failed["error"]["message"]  # the log has the details, the client does not
        send(ws, {"type": "input_audio_buffer.commit"})
        committed = until(ws, "input_audio_buffer.committed")[-1]
        assert committed["item_id"] == failed["item_id"]
        broken["on"] = False
        audio = quantized(tone(1.0, seed=9))
        stream(ws, audio)
        send(ws, {"type": "input_audio_buffer.commit"})
        events = until(ws, "conversation.item.input_audio_transcription.completed")
    assert events[-1]["item_id"] != failed["item_id"]
    assert all(e["type"] != "conversation.item.input_audio_transcription.completed" or e is events[-1] for e in events)
    assert events[-1]["transcript"] == http_text(live.url, audio, "eng-0")


def test_the_tenants_audio_rate_limits_appends(tmp_path, model_dir):
    settings = make_settings(tmp_path, model_dir, limits={"tenant": TenantLimits(audio_seconds_per_minute=1.0)})
    with BackgroundServer(settings) as server, open_session(server.url) as ws:
        receive(ws)
        configure(ws, "whisper-1")
        receive(ws)
        for _ in range(2):  # a full bucket lets one append overdraw it; the debt refuses the next
            send(ws, {"type": "input_audio_buffer.append", "audio": pcm16(quantized(tone(2.0)))})
        limited = until(ws, "error")[-1]["error"]
        metrics = httpx.get(f"{server.url}/metrics").text
    assert (limited["type"], limited["code"]) == ("rate_limit_error", "rate_limit_exceeded")
    assert "audio rate limit of 1 s/min" in limited["message"]
    assert 'chorus_tenant_refusals_total{code="rate_limit_exceeded",tenant="anonymous"} 1.0' in metrics


def test_a_classifier_adapter_is_an_error_event_naming_the_classification_endpoint(live, model_dir, tmp_path):
    from chorus_server.engine import Engine, save_adapter
    from chorus_server.engine.random_model import random_classifier

    engine = Engine.from_pretrained(model_dir, device="cpu").engine
    adapter = random_classifier(engine.config, "lid", ["en", "fr"], 0, [], 1, engine.fingerprint)
    save_adapter(adapter, tmp_path / "lid.safetensors")
    put = httpx.put(f"{live.url}/v1/adapters/lid", content=(tmp_path / "lid.safetensors").read_bytes())
    assert put.status_code == 201, put.text
    with open_session(live.url) as ws:
        receive(ws)
        configure(ws, "lid")
        error = receive(ws)["error"]
        assert (error["code"], error["param"]) == ("wrong_adapter_task", "session.audio.input.transcription.model")
        assert "/v1/audio/classifications" in error["message"]
        configure(ws, "eng-0")  # the session is still usable
        assert receive(ws)["type"] == "session.updated"


def test_model_auto_is_an_error_event_naming_where_it_works(live):
    with open_session(live.url) as ws:
        receive(ws)
        configure(ws, "auto")
        error = receive(ws)["error"]
        assert (error["code"], error["param"]) == ("auto_not_supported", "session.audio.input.transcription.model")
        assert "/v1/audio/transcriptions" in error["message"]


def test_steps_cover_busy_step_ms_while_file_work_waits(live, monkeypatch):
    """While the worker has file windows queued, a session's steps take 640 ms of new audio (BUSY_STEP_MS)
    instead of 320 ms: half the steps, each recomputing its 2 s of left context once."""
    worker = live.app.state.chorus.worker
    busy = {"on": False}
    monkeypatch.setattr(type(worker), "bulk_waiting", property(lambda self: busy["on"]))
    real, lengths = worker.submit, []

    def spy(items):
        lengths.extend(len(item) for item in items if item.priority == Priority.LIVE)
        real(items)

    monkeypatch.setattr(worker, "submit", spy)
    audio = quantized(tone(1.6, seed=4))
    seen = {}
    for on in (False, True):
        busy["on"], lengths[:] = on, []
        with open_session(live.url) as ws:
            receive(ws)
            configure(ws, "eng-0")
            receive(ws)
            stream(ws, audio, chunk=2400)  # 100 ms appends at 24 kHz
            send(ws, {"type": "input_audio_buffer.commit"})
            until(ws, "conversation.item.input_audio_transcription.completed")
        seen[on] = list(lengths)
    # idle: 320 ms steps (+100 ms lookahead; the left context grows to 2 s), then the rest of the turn
    assert seen[False][:4] == [6720, 11840, 16960, 22080] and len(seen[False]) == 5
    # busy: 640 ms steps
    assert seen[True][:2] == [11840, 22080] and len(seen[True]) == 3
