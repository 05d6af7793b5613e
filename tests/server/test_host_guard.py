"""A keyless server answers only to loopback Host names, and takes changes and WebSockets only from its own origin
(DNS rebinding, cross-site forms and WebSockets); a server with keys answers to any name and origin."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient
from starlette.testclient import WebSocketDenialResponse
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from chorus_server.background import BackgroundServer
from chorus_server.host_guard import is_loopback_name, same_origin, split_host
from tests.server.conftest import make_settings

EVIL = "rebind.attacker.example"


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("localhost", True),
        ("localhost:8000", True),
        ("LOCALHOST.:8000", True),
        ("console.localhost:9", True),
        ("127.0.0.1:8000", True),
        ("127.1.2.3", True),
        ("[::1]:8000", True),
        ("localhost.attacker.example", False),
        ("127.0.0.1.attacker.example", False),
        (f"{EVIL}:8000", False),
        ("[::ffff:7f00:1]", False),  # an IPv4-mapped address is not loopback to Python: refused, which is safe
        ("localhost:notaport", False),
        ("localhost/x", False),
        ("user@localhost", False),
        ("", False),
    ],
)
def test_loopback_host_names(host, allowed):
    parsed = split_host(host, "http")
    assert (parsed is not None and is_loopback_name(parsed[0])) is allowed


def test_same_origin_compares_name_and_port():
    assert same_origin("http://localhost:8000", ("localhost", 8000))
    assert same_origin("http://localhost", ("localhost", 80))
    assert not same_origin("http://localhost:3000", ("localhost", 8000))  # another local web app
    assert not same_origin("http://127.0.0.1:8000", ("localhost", 8000))
    assert not same_origin("null", ("localhost", 8000))  # sandboxed frames, file:// pages
    assert not same_origin(f"http://{EVIL}:8000", ("localhost", 8000))


def test_a_keyless_server_refuses_other_host_names(client: TestClient):
    for path in ("/healthz", "/metrics", "/v1/models"):
        refused = client.get(path, headers={"Host": f"{EVIL}:8000"})
        assert refused.status_code == 421, path
        assert refused.json()["error"]["code"] == "misdirected_request"
        assert "loopback" in refused.json()["error"]["message"]
    deleted = client.delete("/v1/adapters/eng-0", headers={"Host": EVIL})
    assert deleted.status_code == 421
    for host in ("localhost:8000", "127.0.0.1", "[::1]:8000", "console.localhost"):
        assert client.get("/metrics", headers={"Host": host}).status_code == 200, host
    assert client.get("/v1/adapters/eng-0").status_code == 200


def test_a_keyless_server_takes_changes_only_from_its_own_origin(client: TestClient, adapter_files):
    for origin in (f"http://{EVIL}", "http://localhost:3000", "null"):
        refused = client.delete("/v1/adapters/eng-0", headers={"Origin": origin})
        assert refused.status_code == 403, origin
        assert refused.json()["error"]["code"] == "cross_origin_request"
    upload = client.put(
        "/v1/adapters/evil", content=adapter_files[0].read_bytes(), headers={"Origin": f"http://{EVIL}"}
    )
    assert upload.status_code == 403
    assert client.get("/v1/adapters/evil").status_code == 404
    assert client.get("/v1/models", headers={"Origin": f"http://{EVIL}"}).status_code == 200  # reads: no change
    assert client.delete("/v1/adapters/eng-0", headers={"Origin": "http://localhost"}).status_code == 200  # console
    assert client.delete("/v1/adapters/fra-1").status_code == 200  # curl, SDKs: no Origin


def test_a_keyless_server_refuses_websockets_from_other_hosts(client: TestClient):
    url = "/v1/realtime?intent=transcription"
    with pytest.raises(WebSocketDenialResponse) as refused, client.websocket_connect(url, headers={"Host": EVIL}):
        pass
    assert refused.value.status_code == 421


@pytest.fixture
def live(tmp_path, model_dir) -> Iterator[BackgroundServer]:
    with BackgroundServer(make_settings(tmp_path, model_dir)) as server:
        yield server


def realtime(url: str, origin: str | None, key: str | None = None):
    headers = {"Authorization": f"Bearer {key}"} if key else None
    ws_url = url.replace("http://", "ws://") + "/v1/realtime?intent=transcription"
    return connect(ws_url, origin=origin, additional_headers=headers, open_timeout=30)  # type: ignore[arg-type]


def test_a_keyless_server_refuses_websockets_from_other_pages(live):
    with pytest.raises(InvalidStatus) as refused:
        realtime(live.url, f"http://{EVIL}:{live.port}")
    assert refused.value.response.status_code == 403
    assert b"cross_origin_request" in refused.value.response.body
    with realtime(live.url, live.url) as ws:  # the console's own page
        assert "session.created" in str(ws.recv(timeout=30))
    with realtime(live.url, None) as ws:  # a program
        assert "session.created" in str(ws.recv(timeout=30))


def test_a_server_with_keys_answers_any_name_and_origin(tmp_path, model_dir):
    settings = make_settings(tmp_path, model_dir, auth={"keys": {"k-acme": "acme"}})
    with BackgroundServer(settings) as server:
        auth = {"Authorization": "Bearer k-acme"}
        assert httpx.get(f"{server.url}/v1/models", headers={**auth, "Host": EVIL}).status_code == 200
        assert httpx.get(f"{server.url}/v1/models", headers={"Host": EVIL}).status_code == 401  # the key decides
        with realtime(server.url, f"https://{EVIL}", "k-acme") as ws:  # a browser app with its own key
            assert "session.created" in str(ws.recv(timeout=30))
