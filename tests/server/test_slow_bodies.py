"""Slow request bodies: a total deadline and a minimum rate (not a per-piece timeout a trickle resets), the role of
admin routes checked before their body, and a per-tenant cap on bodies being received, so one tenant's slow
uploads cannot take the connections another tenant needs. Against a real uvicorn on 127.0.0.1."""

from __future__ import annotations

import contextlib
import selectors
import socket
import statistics
import time

import httpx

from chorus_server.background import BackgroundServer
from chorus_server.body_limit import BodyPace
from tests.server.conftest import audit_entries, make_settings, running_app, without_collector_pauses
from tests.server.test_errors import error_of

ADMIN, SLOW, OTHER, VIEWER = "sk-root", "sk-slow", "sk-other", "sk-viewer"
KEYS = {SLOW: "slow:operator", OTHER: "other:user", VIEWER: "other:user"}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def head(method: str, path: str, key: str, length: int, content_type: str = "application/json") -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def trickle_until_answered(sock: socket.socket, every: float, give_up: float) -> tuple[bytes, float]:
    """Send one body byte every `every` seconds until the server answers (or `give_up` seconds pass): the answer
    and the seconds it took."""
    started = time.monotonic()
    answer = b""
    while time.monotonic() - started < give_up and b"\r\n\r\n" not in answer:
        with contextlib.suppress(OSError):  # the server answered and closed; the answer is waiting to be read
            sock.sendall(b" ")
        sock.settimeout(every)
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            continue
        if not chunk:
            break
        answer += chunk
    return answer, time.monotonic() - started


def test_body_pace_counts_from_the_first_read_not_per_piece():
    pace = BodyPace(idle=5.0, deadline=10.0, min_rate=100.0, grace=2.0)
    assert pace.due_in(started=0.0, received=0, now=0.0)[0] == 2.0  # the grace period
    assert pace.due_in(started=0.0, received=500, now=1.0)[0] == 4.0  # 500 bytes at 100 B/s last until t=5
    seconds, error = pace.due_in(started=0.0, received=10**6, now=8.0)
    assert seconds == 2.0 and error.status_code == 408 and "10 s" in error.message  # the total deadline
    seconds, error = pace.due_in(started=0.0, received=300, now=3.5)  # 300 bytes cover 3 s only: already late
    assert seconds < 0 and "100 bytes/s" in error.message
    assert BodyPace(idle=5.0, deadline=10.0, min_rate=0.0).due_in(0.0, 0, 9.0)[0] == 1.0  # no rate check


def test_a_trickled_body_is_cut_off_by_its_total_deadline(tmp_path, model_dir):
    limits = {"body_timeout_seconds": 5.0, "body_deadline_seconds": 1.0, "body_min_bytes_per_second": 0}
    settings = make_settings(tmp_path, model_dir, limits=limits, auth={"admin_keys": [ADMIN]})
    with BackgroundServer(settings) as server, socket.create_connection(("127.0.0.1", server.port), 10) as sock:
        sock.sendall(head("POST", "/v1/keys", ADMIN, 1000))
        # a byte every 0.1 s never leaves a 5 s gap: only a deadline for the whole body ends it
        answer, took = trickle_until_answered(sock, 0.1, give_up=8.0)
    assert answer.startswith(b"HTTP/1.1 408") and b"body_timeout" in answer, answer[:300]
    assert took < 4.0


def test_a_body_slower_than_the_minimum_rate_is_cut_off_after_the_grace_period(tmp_path, model_dir):
    limits = {"body_deadline_seconds": 60.0, "body_min_bytes_per_second": 100.0, "body_rate_grace_seconds": 0.5}
    settings = make_settings(tmp_path, model_dir, limits=limits, auth={"admin_keys": [ADMIN]})
    with BackgroundServer(settings) as server, socket.create_connection(("127.0.0.1", server.port), 10) as sock:
        sock.sendall(head("POST", "/v1/keys", ADMIN, 1000))
        answer, took = trickle_until_answered(sock, 0.1, give_up=8.0)  # 10 bytes/s
    assert answer.startswith(b"HTTP/1.1 408") and b"bytes/s" in answer, answer[:300]
    assert took < 4.0


def test_admin_routes_refuse_other_roles_before_reading_the_body(tmp_path, model_dir):
    settings = make_settings(tmp_path, model_dir, auth={"admin_keys": [ADMIN], "keys": KEYS})
    with running_app(settings) as client:
        malformed = {"content": b"{not json", "headers": {**auth(VIEWER), "content-type": "application/json"}}
        error_of(client.post("/v1/keys", **malformed), 403, "permission_denied")  # not 422
        error_of(client.put("/v1/tenants/other/limits", **malformed), 403, "permission_denied")
        valid = client.put("/v1/tenants/other/limits", json={}, headers=auth(ADMIN))
        assert valid.status_code == 200, valid.text  # the admin's request still reaches the route
        audit = audit_entries(client)
        refused = [(e["action"], e["target"], e["outcome"]) for e in audit if e["key_id"] is not None]
        assert ("key.create", "", "permission_denied") in refused
        assert ("tenant.limits", "other", "permission_denied") in refused

    settings = make_settings(tmp_path, model_dir, auth={"admin_keys": [ADMIN], "keys": KEYS})
    with BackgroundServer(settings) as server, socket.create_connection(("127.0.0.1", server.port), 10) as sock:
        sock.sendall(head("POST", "/v1/keys", VIEWER, 1000))  # a head, and a body that never comes
        sock.settimeout(5)
        assert sock.recv(4096).startswith(b"HTTP/1.1 403")  # at once, not after the 30 s body timeout


def test_one_tenants_slow_bodies_leave_other_tenants_their_connections(tmp_path, model_dir):
    """A one-shot flood of slow uploads from one tenant, more than the server has connections, while another
    tenant keeps making requests (each on a new connection). Bounded: 40 slow uploads against 32 connections."""
    settings = make_settings(tmp_path, model_dir, auth={"keys": KEYS})
    settings.server = settings.server.model_copy(update={"max_connections": 32})
    settings.limits = settings.limits.model_copy(
        update={"body_readers_per_tenant": 4, "body_deadline_seconds": 60.0, "body_min_bytes_per_second": 0}
    )

    def latencies(url: str, count: int = 20) -> list[float]:
        with without_collector_pauses():  # one full collection would decide a p95 of 20 on its own
            took = []
            for _ in range(count):
                started = time.perf_counter()
                response = httpx.get(f"{url}/v1/models", headers=auth(OTHER), timeout=10)  # a new connection each
                assert response.status_code == 200, response.text
                took.append(time.perf_counter() - started)
            return took

    with BackgroundServer(settings) as server:
        baseline = latencies(server.url)
        selector = selectors.DefaultSelector()
        slow: list[socket.socket] = []
        try:
            for _ in range(40):
                sock = socket.create_connection(("127.0.0.1", server.port), 10)
                sock.sendall(head("PUT", "/v1/adapters/big", SLOW, 10**6, "application/octet-stream") + b"x")
                slow.append(sock)
            answers: dict[int, bytes] = {}
            for sock in slow:
                sock.setblocking(False)
                selector.register(sock, selectors.EVENT_READ)
            deadline = time.monotonic() + 5
            while len(answers) < 36 and time.monotonic() < deadline:  # all but the 4 allowed are refused at once
                for key, _ in selector.select(0.2):
                    sock = key.fileobj  # type: ignore[assignment]
                    answers[sock.fileno()] = sock.recv(4096)
                    selector.unregister(sock)
            for sock in slow:  # the uploads still being received keep trickling
                if sock.fileno() not in answers:
                    sock.send(b"x")
            during = latencies(server.url)
            # The excess is refused at once: 429 from the per-tenant cap, or uvicorn's 503 while the burst
            # briefly has more connections open than the server allows; only 4 uploads are left being received.
            statuses = [a[:12] for a in answers.values()]
            assert len(answers) == 36 and set(statuses) <= {b"HTTP/1.1 429", b"HTTP/1.1 503"}, answers
            refused = [a.lower() for a in answers.values() if b"too_many_uploads" in a]
            assert refused and all(b"retry-after: 1" in a and b"connection: close" in a for a in refused)
            assert server.app.state.chorus.metrics.registry.get_sample_value(
                "chorus_tenant_refusals_total", {"tenant": "slow", "code": "too_many_uploads"}
            )
        finally:
            selector.close()
            for sock in slow:
                sock.close()
    p95_base, p95_during = statistics.quantiles(baseline, n=20)[-1], statistics.quantiles(during, n=20)[-1]
    # Within 2x of the baseline; the 50 ms floor absorbs scheduling noise of a busy 2-core machine at ~ms scale.
    assert p95_during <= max(2 * p95_base, p95_base + 0.05), (p95_base, p95_during)
