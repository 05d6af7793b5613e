"""Against a real uvicorn on 127.0.0.1: the official openai SDK unchanged, client disconnects, SIGTERM drain."""

from __future__ import annotations

import signal
import threading
import time

import httpx
import pytest

from chorus_server.background import BackgroundServer, ServerProcess
from tests.server.conftest import make_settings, wav
from tests.server.test_errors import error_of, gate_forward, in_background

openai = pytest.importorskip("openai")


@pytest.fixture
def live(tmp_path, model_dir, adapter_files):
    settings = make_settings(tmp_path, model_dir)
    with BackgroundServer(settings) as server:
        for path in adapter_files:
            httpx.put(f"{server.url}/v1/adapters/{path.stem}?visibility=public", content=path.read_bytes())
        yield server


def test_openai_sdk_works_unchanged(live, tmp_path):
    client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused")
    audio = tmp_path / "clip.wav"
    audio.write_bytes(wav(3.0, seed=4))
    assert {"chorus/default", "anonymous/eng-0", "anonymous/fra-1"} <= {m.id for m in client.models.list()}
    with audio.open("rb") as f:  # full IDs work as model names too
        assert client.audio.transcriptions.create(model="chorus/default", file=f).text

    with audio.open("rb") as f:
        plain = client.audio.transcriptions.create(model="eng-0", file=f)
    assert isinstance(plain.text, str) and plain.text
    with audio.open("rb") as f:
        verbose = client.audio.transcriptions.create(
            model="eng-0", file=f, response_format="verbose_json", timestamp_granularities=["word", "segment"]
        )
    assert verbose.text == plain.text and verbose.duration == pytest.approx(3.0)
    assert verbose.words and verbose.words[0].end > verbose.words[0].start
    assert verbose.segments and verbose.segments[0].avg_logprob <= 0
    for strategy in ("auto", {"type": "server_vad", "threshold": 0.4, "silence_duration_ms": 800}):
        # the SDK encodes a dict as bracketed fields; either form turns detection on for this request (the
        # server default here is off), and the tone holds no speech
        with audio.open("rb") as f:
            assert client.audio.transcriptions.create(model="eng-0", file=f, chunking_strategy=strategy).text == ""
    with audio.open("rb") as f, pytest.raises(openai.BadRequestError) as bad:
        client.audio.transcriptions.create(model="eng-0", file=f, chunking_strategy={"type": "semantic_vad"})
    assert bad.value.body["param"] == "chunking_strategy"  # type: ignore[index]
    with audio.open("rb") as f:
        srt = client.audio.transcriptions.create(model="eng-0", file=f, response_format="srt")
    assert "-->" in str(srt)
    with audio.open("rb") as f, pytest.raises(openai.NotFoundError) as missing:
        client.audio.transcriptions.create(model="klingon", file=f)
    assert missing.value.code == "adapter_not_found"
    with pytest.raises(openai.BadRequestError):
        client.audio.transcriptions.create(model="eng-0", file=("x.wav", b"", "audio/wav"))


def test_a_disconnected_client_has_its_queued_work_dropped(live):
    runtime = live.app.state.chorus
    entered = threading.Event()
    gate, calls = gate_forward(live, entered)
    files = {"file": ("a.wav", wav(2.0), "audio/wav")}
    blocker = threading.Thread(
        target=lambda: httpx.post(
            f"{live.url}/v1/audio/transcriptions", files=files, data={"model": "default"}, timeout=30
        ),
        daemon=True,
    )
    blocker.start()
    # the blocker is in the backbone (in flight with nothing queued is not enough: detection comes first)
    wait_for(entered.is_set)
    with pytest.raises(httpx.ReadTimeout):  # this client gives up while its work waits behind the blocker
        httpx.post(f"{live.url}/v1/audio/transcriptions", files=files, data={"model": "eng-0"}, timeout=0.5)
    wait_for(lambda: runtime.metrics.requests_in_flight() == 1)  # the server noticed and let it go
    gate.set()
    blocker.join(30)
    wait_for(lambda: runtime.worker.queued_items == 0)
    assert calls == [1], "the abandoned request never reached the backbone"
    assert 'status="499"' in httpx.get(f"{live.url}/metrics").text


def test_a_stream_its_client_closes_counts_as_499(live):
    """An SSE answer has sent 200 before the transcript; a client that leaves mid-stream is still a 499."""
    entered = threading.Event()
    gate, _ = gate_forward(live, entered)
    files = {"file": ("a.wav", wav(20.0), "audio/wav")}
    url = f"{live.url}/v1/audio/transcriptions"
    with httpx.stream("POST", url, files=files, data={"model": "eng-0", "stream": "true"}, timeout=30) as response:
        assert response.status_code == 200  # the headers went out before the first window ran
        wait_for(entered.is_set)
    wait_for(lambda: live.app.state.chorus.metrics.requests_in_flight() == 0)  # the server let it go
    gate.set()
    finished = [line for line in httpx.get(f"{live.url}/metrics").text.splitlines() if "chorus_requests_total{" in line]
    assert len(finished) == 1 and 'status="499"' in finished[0] and finished[0].endswith(" 1.0"), finished


def wait_for(predicate, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.01)


def test_sigterm_finishes_admitted_requests_then_exits(tmp_path, model_dir):
    env = {
        "CHORUS_BACKBONE": str(model_dir),
        "CHORUS_STORE": str(tmp_path / "store"),
        "CHORUS_DTYPE": "float32",
        "CHORUS_DEVICE": "cpu",
        "CHORUS_BATCH__MAX_ITEMS": "1",
        # Long enough for all four on a loaded machine (what runs out of time is the next test's subject).
        "CHORUS_SERVER__SHUTDOWN_TIMEOUT_SECONDS": "120",
    }
    with ServerProcess(env, tmp_path, start_timeout=60) as server:
        url, process = server.url, server.process
        assert process is not None
        results: list[int | str] = []
        files = {"file": ("a.wav", wav(120.0), "audio/wav")}  # 6 windows each, run one at a time

        def post() -> None:
            try:
                response = httpx.post(
                    f"{url}/v1/audio/transcriptions", files=files, data={"model": "default"}, timeout=180
                )
                results.append(response.status_code)
            except httpx.ConnectError:  # arrived after shutdown began: refused, which is correct
                results.append("refused")

        clients = [threading.Thread(target=post) for _ in range(4)]
        for c in clients:
            c.start()
        wait_for(lambda: _in_flight(url) >= 2, seconds=60)
        admitted = _in_flight(url)
        process.send_signal(signal.SIGTERM)
        for c in clients:
            c.join(180)
        # Every request the server had admitted finishes with 200; nothing is cut off or fails.
        assert set(results) <= {200, "refused"} and len(results) == 4
        assert results.count(200) >= admitted >= 2
        # uvicorn re-raises the signal after its graceful shutdown, so the exit status says "SIGTERM".
        assert process.wait(60) in (0, -signal.SIGTERM)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/healthz")
    assert "Chorus stopped" in server.log()


def test_a_request_unfinished_when_the_shutdown_window_ends_is_answered_503(tmp_path, model_dir):
    """uvicorn cancels what still runs when its graceful-shutdown window ends and the client heard nothing
    ("Server disconnected without sending a response"); Chorus answers such a request 503 first, inside the
    window, so the client knows to retry elsewhere."""
    settings = make_settings(tmp_path, model_dir)
    settings.server = settings.server.model_copy(update={"shutdown_timeout_seconds": 2.0})
    settings.batch = settings.batch.model_copy(update={"max_items": 1})
    with BackgroundServer(settings) as server:
        entered = threading.Event()
        gate, batches = gate_forward(server, entered)  # the request's first window waits in the backbone
        posting, answers = in_background(
            httpx.post,
            f"{server.url}/v1/audio/transcriptions",
            files={"file": ("a.wav", wav(60.0), "audio/wav")},  # 3 windows: the others wait in the queue
            data={"model": "default"},
            timeout=30,
        )
        assert entered.wait(30)
        began = time.monotonic()
        server.server.should_exit = True  # what SIGTERM does: the graceful shutdown begins
        posting.join(20)
        took = time.monotonic() - began
        gate.set()
    assert answers, "no answer"
    error = error_of(answers[0], 503, "server_shutting_down")
    assert answers[0].headers["retry-after"] == "1" and "retry" in error["message"]
    assert took > 1.5, took  # at 90% of the 2 s window (uvicorn itself, at its end, would have answered 500)
    assert batches == [1]  # the windows still queued were dropped with the request, not run for nobody


def _in_flight(url: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("chorus_requests_in_flight "):
            return float(line.split()[1])
    return 0.0
