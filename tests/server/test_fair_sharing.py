"""Fair sharing: the batcher's round robin across tenants, the queue budget's fair refusal, per-tenant rate limits,
quotas that survive restarts, usage, admission before the body, storage quotas and a stalled body."""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest

from chorus_server.background import BackgroundServer
from chorus_server.batching import BatchLimits, WorkItem, collect_batch
from chorus_server.connections import OutOfFilesOncePerMinute
from chorus_server.errors import ApiError
from chorus_server.queue_budget import QueueBudget, QueueFull, TooLarge
from chorus_server.settings import TenantLimits
from chorus_server.tenants.base import DatabaseUnavailable
from chorus_server.tenants.quotas import Quotas
from tests.server.conftest import make_settings, running_app, tenant_store, transcribe, wav
from tests.server.test_errors import error_of, gate_forward, in_background, wait_until

LIMITS = BatchLimits(max_items=4, max_samples=8000, max_wait=0.0, contended_max_samples=4000)


def item(tenant: str, length: int = 1000, enqueued: float = 0.0) -> WorkItem:
    return WorkItem(np.zeros(length, np.float32), None, enqueued, 100.0, tenant)  # type: ignore[arg-type]


def test_a_flooding_tenant_does_not_keep_another_out_of_the_next_batch():
    flood = [item("a", enqueued=i * 0.01) for i in range(20)]
    late = item("b", enqueued=1.0)
    batch = collect_batch([*flood, late], LIMITS, now=1.0).batch
    assert late in batch  # one turn each, though b arrived after 20 of a's items
    assert batch == [flood[0], late, flood[1], flood[2]][: len(batch)]
    assert len(batch) * 1000 <= LIMITS.contended_max_samples  # under contention batches stay short


def test_the_least_served_tenant_leads_and_each_keeps_its_order():
    a = [item("a", enqueued=0.0), item("a", enqueued=0.1)]
    b = [item("b", enqueued=0.2), item("b", enqueued=0.3)]
    batch = collect_batch([*a, *b], LIMITS, now=1.0, served={"a": 5000.0, "b": 0.0}).batch
    assert batch == [b[0], a[0], b[1], a[1]]


def test_a_long_item_does_not_let_a_tenant_overtake_its_own_queue():
    a = [item("a", 3500), item("a", 100)]
    b = [item("b", 100)]
    batch = collect_batch([*a, *b], LIMITS, now=1.0, served={"a": 0.0, "b": 1.0}).batch
    assert batch == [a[0]]  # b's item would make 2 x 3500 > 4000; a's short item must not jump its long one


def test_one_tenant_alone_uses_the_full_budget():
    queue = [item("a", 2000, enqueued=i * 0.01) for i in range(4)]
    assert collect_batch(queue, LIMITS, now=1.0).batch == queue


def test_the_queue_budget_is_exact_and_refuses_only_tenants_over_their_share():
    budget = QueueBudget(10.0)
    with pytest.raises(TooLarge):
        budget.reserve("a", 10.5)  # could never fit: 413, not "retry"
    errors = []

    def flood() -> None:
        for _ in range(50):
            try:
                budget.reserve("a", 1.0)
            except QueueFull:
                errors.append(1)

    threads = [threading.Thread(target=flood) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert budget.held == pytest.approx(10.0)  # reserved atomically: never past the bound
    assert len(errors) == 190
    budget.reserve("b", 4.0)  # the queue is full, but b holds less than its share (10 / 2)
    with pytest.raises(QueueFull):
        budget.reserve("b", 2.0)
    budget.release("a", 10.0)
    budget.reserve("b", 2.0)
    assert budget.held_by("b") == pytest.approx(6.0)


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0  # a fixed UTC day

    def __call__(self) -> float:
        return self.now


@pytest.mark.usefixtures("tenant_backend")
def test_token_buckets_refill_and_answer_with_retry_after(tmp_path):
    clock = Clock()
    quotas = Quotas(
        TenantLimits(requests_per_minute=2, audio_seconds_per_minute=60), tenant_store(tmp_path / "t.db"), clock
    )
    for _ in range(2):
        quotas.release("a", quotas.admit_request("a"))
    with pytest.raises(ApiError) as limited:
        quotas.admit_request("a")
    assert limited.value.status_code == 429 and limited.value.headers["Retry-After"] == "30"
    quotas.admit_request("b")  # another tenant is unaffected
    clock.now += 30
    quotas.admit_request("a")
    quotas.check_audio("a", 60)
    quotas.charge_audio("a", 60)
    with pytest.raises(ApiError, match="audio rate"):
        quotas.check_audio("a", 10)
    headers = quotas.headers("a")
    assert headers["x-ratelimit-limit-requests"] == "2" and headers["x-ratelimit-remaining-audio-seconds"] == "0"
    quotas.close()


@pytest.mark.usefixtures("tenant_backend")
def test_daily_quota_survives_a_restart(tmp_path):
    clock = Clock()
    limits = TenantLimits(audio_seconds_per_day=100, audio_seconds_per_minute=None)
    first = Quotas(limits, tenant_store(tmp_path / "t.db"), clock)
    first.charge_audio("a", 80)
    first.close()
    second = Quotas(limits, tenant_store(tmp_path / "t.db"), clock)
    assert second.usage("a")["audio_seconds"] == 80
    with pytest.raises(ApiError, match="daily audio quota"):
        second.check_audio("a", 30)
    clock.now += 86400  # the next UTC day starts afresh
    second.check_audio("a", 30)
    second.close()


def test_bucket_readings_run_off_the_event_loop_and_headers_never_fail_an_answer(tmp_path, model_dir):
    """The audio check and the x-ratelimit-* headers read the tenant store's buckets (database round trips on
    PostgreSQL): while every reading is slow the event loop still serves /healthz at once, and when the store
    fails for the headers the answer goes out without them instead of failing after its work was done."""
    limits = TenantLimits(requests_per_minute=100)
    with running_app(make_settings(tmp_path, model_dir, limits={"tenant": limits})) as client:
        store = client.app.state.chorus.quotas.store
        level, entered, release = store.level, threading.Event(), threading.Event()

        def slow_level(*args, **kwargs):
            entered.set()
            release.wait(10)
            return level(*args, **kwargs)

        store.level = slow_level
        answer, out = in_background(transcribe, client, wav(0.5), "default")
        assert entered.wait(10)
        sent = time.monotonic()
        assert client.get("/healthz").status_code == 200
        assert time.monotonic() - sent < 5  # the loop is free while a reading waits (up to 10 s)
        release.set()
        answer.join(30)
        assert out[0].status_code == 200 and out[0].headers["x-ratelimit-limit-requests"] == "100"

        def failing_level(tenant, bucket, *args, **kwargs):  # admission takes from "requests", only headers read it
            if bucket == "requests":
                raise DatabaseUnavailable("the tenant database is unavailable")
            return level(tenant, bucket, *args, **kwargs)

        store.level = failing_level
        client.app.state.chorus.quotas._headers.clear()  # no reading to reuse
        ok = transcribe(client, wav(0.5), "default")
        assert ok.status_code == 200 and "x-ratelimit-limit-requests" not in ok.headers


@pytest.mark.usefixtures("tenant_backend")
def test_a_limited_request_is_refused_before_its_body_is_read(tmp_path, model_dir):
    limits = TenantLimits(requests_per_minute=1)
    with running_app(make_settings(tmp_path, model_dir, limits={"tenant": limits})) as client:
        first = client.post(
            "/v1/audio/transcriptions", files={"file": ("a.wav", wav(1.0), "audio/wav")}, data={"model": "default"}
        )
        assert first.status_code == 200 and first.headers["x-ratelimit-remaining-requests"] == "0"
        read: list[int] = []

        def body():
            read.append(1)
            yield b"x" * 1024

        refused = client.post("/v1/audio/transcriptions", content=body(), headers={"content-type": "audio/wav"})
        error_of(refused, 429, "rate_limit_exceeded")
        assert int(refused.headers["retry-after"]) >= 1 and refused.headers["x-ratelimit-limit-requests"] == "1"
        assert read == []  # not a byte of the body was read
        assert client.get("/v1/usage").json()["requests"] == 1
        metrics = client.get("/metrics").text
        assert 'chorus_tenant_refusals_total{code="rate_limit_exceeded",tenant="anonymous"} 1.0' in metrics
        assert 'chorus_tenant_audio_seconds_total{tenant="anonymous"} 1.0' in metrics


def test_an_unauthenticated_request_is_refused_before_its_body_is_read(tmp_path, model_dir):
    with running_app(make_settings(tmp_path, model_dir, auth={"admin_keys": ["root"]})) as client:
        read: list[int] = []

        def body():
            read.append(1)
            yield b"x" * 1024

        for path in ("/v1/audio/transcriptions", "/v1/adapters/x"):
            error_of(client.request("PUT" if "adapters" in path else "POST", path, content=body()), 401)
        assert read == []


@pytest.mark.usefixtures("tenant_backend")
def test_usage_and_per_tenant_overrides(tmp_path, model_dir):
    keys = {"ka": "acme", "kb": "globex"}
    with running_app(make_settings(tmp_path, model_dir, auth={"keys": keys, "admin_keys": ["root"]})) as client:
        root, acme = {"Authorization": "Bearer root"}, {"Authorization": "Bearer ka"}
        files = {"file": ("a.wav", wav(2.0), "audio/wav")}
        assert client.post("/v1/audio/transcriptions", files=files, data={"model": "default"}, headers=acme).is_success
        mine = client.get("/v1/usage", headers=acme).json()
        assert (mine["tenant"], mine["requests"], mine["audio_seconds"]) == ("acme", 1, 2.0)
        error_of(client.get("/v1/usage?tenant=globex", headers=acme), 403, "permission_denied")
        assert {u["tenant"] for u in client.get("/v1/usage", headers=root).json()["data"]} >= {"acme"}
        changed = client.put("/v1/tenants/acme/limits", json={"audio_seconds_per_day": 3}, headers=root)
        assert changed.status_code == 200 and changed.json()["overrides"] == {"audio_seconds_per_day": 3}
        refused = client.post("/v1/audio/transcriptions", files=files, data={"model": "default"}, headers=acme)
        assert "daily audio quota" in error_of(refused, 429, "rate_limit_exceeded")["message"]
        other = client.post(
            "/v1/audio/transcriptions", files=files, data={"model": "default"}, headers={"Authorization": "Bearer kb"}
        )
        assert other.status_code == 200
        error_of(client.put("/v1/tenants/acme/limits", json={"bogus": 1}, headers=root), 422)
        error_of(client.put("/v1/tenants/acme/limits", json={"concurrent_requests": 0}, headers=root), 422)
        error_of(client.put("/v1/tenants/acme/limits", json={}, headers=acme), 403, "permission_denied")


@pytest.mark.usefixtures("tenant_backend")
def test_admin_only_refusals_say_what_was_refused(tmp_path, model_dir):
    """Tenant limits, other tenants' usage and purges need the admin role; the 403 names the action, not keys."""
    with running_app(make_settings(tmp_path, model_dir, auth={"keys": {"ka": "acme"}})) as client:
        acme = {"Authorization": "Bearer ka"}
        refusals = {
            "read another tenant's usage": client.get("/v1/usage?tenant=globex", headers=acme),
            "read tenant limits": client.get("/v1/tenants/acme/limits", headers=acme),
            "change tenant limits": client.put("/v1/tenants/acme/limits", json={}, headers=acme),
            "purge an adapter's version numbers": client.delete("/v1/adapters/x?purge=true", headers=acme),
        }
        for action, response in refusals.items():
            message = error_of(response, 403, "permission_denied")["message"]
            assert message.startswith(f"this API key's role (operator) may not {action}"), message
            assert "API keys" not in message


def test_audio_longer_than_the_queue_can_ever_hold_is_413(tmp_path, model_dir):
    with running_app(make_settings(tmp_path, model_dir, limits={"max_queue_audio_seconds": 1.0})) as client:
        files = {"file": ("a.wav", wav(2.0), "audio/wav")}
        refused = client.post("/v1/audio/transcriptions", files=files, data={"model": "default"})
        assert "at most 1 s" in error_of(refused, 413, "audio_too_long")["message"]


def test_storage_quota_is_507_and_leaves_nothing_behind(tmp_path, model_dir, adapter_files):
    raw = adapter_files[0].read_bytes()
    limits = TenantLimits(storage_bytes=int(len(raw) * 1.5))
    with running_app(make_settings(tmp_path, model_dir, limits={"tenant": limits})) as client:
        assert client.put("/v1/adapters/first", content=raw).status_code == 201
        error_of(client.put("/v1/adapters/second", content=raw), 507, "storage_quota_exceeded")
        error_of(client.get("/v1/adapters/second"), 404, "adapter_not_found")
        assert not list((tmp_path / "store" / "tmp").glob("upload-*"))
        assert client.delete("/v1/adapters/first").status_code == 200
        assert client.put("/v1/adapters/second", content=raw).status_code == 201


def test_a_stalled_body_is_408_and_frees_the_connection(tmp_path, model_dir):
    settings = make_settings(tmp_path, model_dir, limits={"body_timeout_seconds": 0.3})
    with BackgroundServer(settings) as server, socket.create_connection(("127.0.0.1", server.port), 10) as sock:
        sock.sendall(
            b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000\r\n"
            b"Content-Type: multipart/form-data; boundary=x\r\n\r\n--x\r\n"
        )
        sock.settimeout(10)
        answer = b""
        while b"body_timeout" not in answer and (chunk := sock.recv(4096)):  # head and body may come apart
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 408") and b"body_timeout" in answer


def test_a_full_temp_dir_is_a_clear_503(tmp_path, model_dir, monkeypatch):
    import starlette.datastructures

    class Full:
        def __init__(self, *args, **kwargs):
            raise OSError(28, "No space left on device")

    with running_app(make_settings(tmp_path, model_dir)) as client:
        monkeypatch.setattr(starlette.datastructures, "SpooledTemporaryFile", Full, raising=False)
        monkeypatch.setattr("starlette.formparsers.SpooledTemporaryFile", Full)
        files = {"file": ("a.wav", wav(1.0), "audio/wav")}
        refused = client.post("/v1/audio/transcriptions", files=files, data={"model": "default"})
        error_of(refused, 503, "temp_storage_unavailable")


def test_running_out_of_files_logs_once_a_minute():
    clock = Clock()
    flood_filter = OutOfFilesOncePerMinute(clock=clock)
    import logging

    def record() -> logging.LogRecord:
        try:
            raise OSError(24, "Too many open files")
        except OSError:
            import sys

            return logging.LogRecord("asyncio", logging.ERROR, "x", 1, "accept failed", (), sys.exc_info())

    passed = [flood_filter.filter(record()) for _ in range(1000)]
    assert passed.count(True) == 1
    clock.now += 61
    again = record()
    assert flood_filter.filter(again) and "999 such errors" in again.getMessage() and again.exc_info is None
    assert flood_filter.filter(logging.LogRecord("asyncio", logging.ERROR, "x", 1, "other", (), None))


def test_idle_and_slow_header_connections_are_closed(tmp_path, model_dir):
    settings = make_settings(tmp_path, model_dir)
    settings.server = settings.server.model_copy(update={"header_timeout_seconds": 0.3})
    with BackgroundServer(settings) as server:
        idle = socket.create_connection(("127.0.0.1", server.port), 10)
        slow = socket.create_connection(("127.0.0.1", server.port), 10)
        slow.sendall(b"GET /healthz HTTP/1.1\r\n")  # a head that never completes
        for sock in (idle, slow):
            sock.settimeout(10)
            assert sock.recv(1024) == b""  # closed by the server, well before the 10 s timeout
            sock.close()
        with socket.create_connection(("127.0.0.1", server.port), 10) as ok:
            ok.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            ok.settimeout(10)
            assert ok.recv(1024).startswith(b"HTTP/1.1 200")


def test_a_tenant_over_its_share_of_a_full_queue_is_refused_before_its_body(tmp_path, model_dir):
    settings = make_settings(tmp_path, model_dir, limits={"max_queue_audio_seconds": 6.0}, batch={"max_items": 1})
    with running_app(settings) as client:
        gate, _ = gate_forward(client)
        budget = client.app.state.chorus.transcriber.budget
        running, running_out = in_background(transcribe, client, wav(3.0), "default")
        wait_until(lambda: budget.held == pytest.approx(3.0))
        queued, queued_out = in_background(transcribe, client, wav(3.0, seed=1), "default")
        wait_until(lambda: budget.held == pytest.approx(6.0))
        read: list[int] = []

        def body():
            read.append(1)
            yield b"x" * 1024

        refused = client.post("/v1/audio/transcriptions", content=body(), headers={"content-type": "audio/wav"})
        error_of(refused, 503, "queue_full")
        assert read == [] and int(refused.headers["retry-after"]) >= 1
        gate.set()
        running.join(30)
        queued.join(30)
        assert running_out[0].status_code == 200 and queued_out[0].status_code == 200


def test_a_tenant_returning_from_idle_leads_the_next_batch_without_banked_credit():
    from chorus_server.worker import Worker

    worker = Worker.__new__(Worker)  # only the queue bookkeeping: no engine, no thread
    worker._queue, worker._queued_samples, worker._served = [], 0, {"a": 50_000.0, "b": 10.0}
    worker._bulk_queued = 0
    worker._cond, worker._stopping = threading.Condition(), False
    worker.submit([item("a"), item("a")])
    worker.submit([item("b", enqueued=5.0)])
    assert worker._served["b"] == 49_999.0  # just below the active tenant: first, but no credit for idling
    batch = collect_batch(worker._queue, LIMITS, now=6.0, served=worker._served).batch
    assert batch[0].tenant == "b"


def test_windows_that_cannot_finish_before_their_deadline_are_not_started():
    long_window, short_window = item("a", 16000 * 20), item("a", 16000)
    long_window.deadline = short_window.deadline = 11.0
    # At 10x real time a 20 s window needs 2 s: with 1 s left it could only finish for nobody.
    collected = collect_batch([long_window, short_window], LIMITS, now=10.0, seconds_per_sample=1 / 160000)
    assert collected.expired == [long_window] and collected.batch == [short_window]


def test_the_lora_info_gauge_names_public_adapters_only():
    from chorus_server.worker import Worker

    worker = Worker.__new__(Worker)
    worker._cond, worker._running = threading.Condition(), [item("a")]
    worker._running[0].label = "acme/fr"
    worker._queue = [item("b"), item("c")]
    worker._queue[0].label = "chorus/en"  # the other queued item's adapter is private: no label
    assert worker.adapters_info() == (["acme/fr"], ["chorus/en"])
