"""Every error status provoked for real, always in OpenAI's envelope, and the server unharmed afterwards."""

from __future__ import annotations

import threading

import numpy as np

from chorus_server.engine import Engine
from chorus_server.settings import TenantLimits
from tests.server.conftest import encode, make_settings, running_app, tone, transcribe, wav


def error_of(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert "Traceback" not in response.text
    if code is not None:
        assert error["code"] == code
    return error


def test_bad_requests_get_400(client):
    missing_file = client.post("/v1/audio/transcriptions", data={"model": "eng-0"})
    assert error_of(missing_file, 400)["param"] == "file"
    missing_model = client.post("/v1/audio/transcriptions", files={"file": ("a.wav", wav(1.0))})
    assert error_of(missing_model, 400)["param"] == "model"
    error_of(transcribe(client, b"", "eng-0"), 400, "empty_audio")
    error_of(transcribe(client, encode(np.zeros(1, np.float32)), "eng-0"), 400, "audio_too_short")
    nan = tone(1.0)
    nan[100] = np.nan
    error_of(transcribe(client, encode(nan, subtype="FLOAT"), "eng-0"), 400, "invalid_audio")
    error_of(transcribe(client, wav(1.0), "Bad Id!"), 422, None)
    error_of(transcribe(client, wav(1.0), "eng-0", response_format="mp4"), 422, "invalid_parameter")
    error_of(transcribe(client, wav(1.0), "eng-0", temperature="7"), 422, "invalid_parameter")


def test_a_request_with_two_files_is_400_not_half_heard(client):
    """Two `file` parts were accepted and one of them transcribed: the caller got one transcript for two files.
    (Classifications share the check: tests/server/test_classifications.py.)"""
    two = [("file", ("a.wav", wav(1.0), "audio/wav")), ("file", ("b.wav", wav(2.0, seed=1), "audio/wav"))]
    error = error_of(client.post("/v1/audio/transcriptions", files=two, data={"model": "eng-0"}), 400, "too_many_files")
    assert error["param"] == "file" and "one audio file per request" in error["message"]
    assert transcribe(client, wav(1.0), "eng-0").status_code == 200  # one file is fine


def test_unknown_adapter_or_version_is_404_with_a_hint(client):
    error = error_of(transcribe(client, wav(1.0), "klingon"), 404, "adapter_not_found")
    assert "GET /v1/adapters" in error["message"]
    error_of(transcribe(client, wav(1.0), "eng-0@9"), 404, "version_not_found")
    error_of(client.get("/v1/adapters/klingon"), 404, "adapter_not_found")


def test_undecodable_audio_is_415(client):
    error_of(transcribe(client, b"RIFF....WAVEfmt garbage" * 50, "eng-0"), 415, "unsupported_audio")
    error_of(transcribe(client, np.random.default_rng(0).bytes(5000), "eng-0"), 415, "unsupported_audio")


def test_a_text_file_sent_as_audio_is_told_which_formats_are_read(client):
    text = b"Meeting notes\n- ship the console fixes\n- measure model=auto\n" * 20
    message = error_of(transcribe(client, text, "eng-0"), 415, "unsupported_audio")["message"]
    assert "wav, flac, ogg, opus, mp3" in message, message  # not just a decoder's exception name


def test_adapter_names_are_case_insensitive(client):
    # Names are lowercase only, so an uppercase spelling means one adapter: it is found, not refused as invalid.
    assert transcribe(client, wav(1.0), "ENG-0").status_code == 200
    assert transcribe(client, wav(1.0), "Eng-0@1").status_code == 200
    error_of(transcribe(client, wav(1.0), "KLINGON"), 404, "adapter_not_found")
    error_of(transcribe(client, wav(1.0), "Bad Id!"), 422, None)  # invalid in any case


def test_too_large_uploads_are_413_while_streaming(tmp_path, model_dir):
    settings = make_settings(tmp_path, model_dir, limits={"max_audio_bytes": 50_000, "max_audio_seconds": 2.0})
    with running_app(settings) as client:
        big = wav(5.0)  # 160 kB > 50 kB + form allowance
        error_of(transcribe(client, big, "default"), 413, "file_too_large")

        def chunks():  # no Content-Length: the limit is enforced while the body arrives
            for start in range(0, len(big), 8192):
                yield big[start : start + 8192]

        streamed = client.post(
            "/v1/audio/transcriptions?x=1",
            content=chunks(),
            headers={"content-type": "multipart/form-data; boundary=xyz"},
        )
        error_of(streamed, 413, "file_too_large")
        long_but_small = encode(tone(3.0, rate=4000), 4000, "FLAC")  # 3 s < 50 kB, over the 2 s limit
        error = error_of(transcribe(client, long_but_small, "default"), 413, "audio_too_long")
        assert "3.0 s" in error["message"]
        assert transcribe(client, wav(1.0), "default").status_code == 200


def gate_forward(client, entered: threading.Event | None = None) -> tuple[threading.Event, list[int]]:
    """Make the inference thread wait at the next forward until the returned event is set; the list records the
    size of every batch that ran; `entered` (optional) is set once a batch waits at the gate, i.e. is in the
    backbone (a request in flight with nothing queued may still be before it: detection and planning come first).
    `client`: anything with `.app` (TestClient, BackgroundServer)."""
    runtime = client.app.state.chorus
    gate, calls = threading.Event(), []
    real = Engine.forward

    def gated(waveforms, lengths, adapters):
        if entered is not None:
            entered.set()
        gate.wait(30)
        calls.append(len(adapters))
        return real(runtime.engine, waveforms, lengths, adapters)

    runtime.engine.forward = gated
    return gate, calls


def in_background(fn, *args, **kwargs) -> tuple[threading.Thread, list]:
    out: list = []
    thread = threading.Thread(target=lambda: out.append(fn(*args, **kwargs)), daemon=True)
    thread.start()
    return thread, out


def wait_until(predicate, seconds: float = 10.0) -> None:
    event = threading.Event()
    for _ in range(int(seconds / 0.01)):
        if predicate():
            return
        event.wait(0.01)
    raise AssertionError("condition not reached")


def test_full_queue_is_503_with_retry_after(tmp_path, model_dir):
    # The bound counts audio admitted and not finished: the running 3 s and the queued 3 s fit in 7 s.
    settings = make_settings(tmp_path, model_dir, limits={"max_queue_audio_seconds": 7.0}, batch={"max_items": 1})
    with running_app(settings) as client:
        entered = threading.Event()
        gate, _ = gate_forward(client, entered)
        worker = client.app.state.chorus.worker
        running, running_out = in_background(transcribe, client, wav(3.0), "default")
        wait_until(entered.is_set)  # in the backbone: not merely in flight (then its audio may not count yet)
        queued, queued_out = in_background(transcribe, client, wav(3.0, seed=1), "default")
        wait_until(lambda: worker.queued_items == 1)
        refused = transcribe(client, wav(3.0, seed=2), "default")
        error_of(refused, 503, "queue_full")
        assert int(refused.headers["retry-after"]) >= 1
        gate.set()
        running.join(30)
        queued.join(30)
        assert running_out[0].status_code == 200 and queued_out[0].status_code == 200


def test_tenant_concurrency_limit_is_429(tmp_path, model_dir):
    settings = make_settings(tmp_path, model_dir, limits={"tenant": TenantLimits(concurrent_requests=1)})
    with running_app(settings) as client:
        gate, _ = gate_forward(client)
        first, first_out = in_background(transcribe, client, wav(1.0), "default")
        wait_until(lambda: client.app.state.chorus.quotas.usage("anonymous")["requests_in_progress"] == 1)
        error_of(transcribe(client, wav(1.0), "default"), 429, "rate_limit_exceeded")
        gate.set()
        first.join(30)
        assert first_out[0].status_code == 200


def test_deadline_is_504_and_the_queued_work_is_dropped(tmp_path, model_dir):
    settings = make_settings(tmp_path, model_dir, limits={"request_timeout_seconds": 0.5}, batch={"max_items": 1})
    with running_app(settings) as client:
        entered = threading.Event()
        gate, calls = gate_forward(client, entered)
        blocker, blocker_out = in_background(transcribe, client, wav(1.0), "default")
        wait_until(entered.is_set)  # the blocker's batch is in the backbone, not merely admitted
        late = transcribe(client, wav(1.0, seed=5), "default")  # waits behind the blocked batch
        error_of(late, 504, "deadline_exceeded")
        gate.set()
        blocker.join(30)
        assert blocker_out[0].status_code == 504  # it too outlived 0.5 s while the gate was shut
        wait_until(lambda: client.app.state.chorus.worker.queued_items == 0)
        assert calls == [1]  # only the batch that was already running; the late request never ran
        # The server serves again. One try may itself outlive the 0.5 s deadline on a loaded machine (seen in CI
        # beside other jobs); a server still stuck behind the dropped work would fail all three.
        assert any(transcribe(client, wav(0.5), "default").status_code == 200 for _ in range(3))


def test_unknown_routes_and_methods_are_enveloped(client):
    error_of(client.post("/v1/nothing"), 404)
    error_of(client.delete("/v1/audio/transcriptions"), 405)
