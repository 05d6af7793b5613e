"""A scripted stand-in for the Chorus HTTP API behind `httpx.MockTransport` (client unit tests, no sockets)."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx

ADAPTER = {
    "id": "fr",
    "object": "adapter",
    "version": 2,
    "versions": [1, 2],
    "owner": "default",
    "visibility": "private",
    "kind": "houlsby",
    "language": "fr",
    "task": "transcribe",
    "vocab_size": 32,
    "bottleneck_dim": 8,
    "layers": [0, 1],
    "size": 1234,
    "sha256": "ab" * 32,
    "created_at": 1.5,
    "backbone_fingerprint": "w2v2-x",
    "resident": False,
    "pinned": False,
}


def envelope(status: int, type_: str, message: str, code: str | None = None, **headers: str) -> httpx.Response:
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return httpx.Response(status, json=body, headers=headers)


class FakeServer:
    """Records requests; answers from `script` (a queue of canned responses) before the default routes."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.bodies: list[bytes] = []
        self.script: list[httpx.Response | Exception] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        self.bodies.append(request.read())
        if self.script:
            item = self.script.pop(0)
            if isinstance(item, Exception):
                raise item
            return item
        return self.route(request)

    def route(self, request: httpx.Request) -> httpx.Response:
        path, method = request.url.path, request.method
        routes: dict[tuple[str, str], Callable[[], httpx.Response]] = {
            ("GET", "/healthz"): lambda: httpx.Response(200, json={"status": "ok"}),
            ("GET", "/readyz"): lambda: httpx.Response(200, json={"status": "ready"}),
            ("GET", "/v1/models"): lambda: httpx.Response(
                200, json={"object": "list", "data": [{"id": "fr", "object": "model", "created": 1, "owned_by": "x"}]}
            ),
            ("POST", "/v1/audio/transcriptions"): lambda: self.transcription(request),
            ("GET", "/v1/adapters"): lambda: self.adapter_page(request),
            ("GET", "/v1/adapters/fr"): lambda: httpx.Response(200, json=ADAPTER),
            ("GET", "/v1/adapters/fr@1"): lambda: httpx.Response(200, json={**ADAPTER, "version": 1}),
            ("PUT", "/v1/adapters/fr"): lambda: httpx.Response(201, json={**ADAPTER, "version": 3}),
            ("DELETE", "/v1/adapters/fr@1"): lambda: httpx.Response(
                200, json={"id": "fr", "deleted": True, "version": 1}
            ),
            ("POST", "/v1/adapters/fr/pin"): lambda: httpx.Response(
                200, json={**ADAPTER, "pinned": True, "resident": True}
            ),
            ("POST", "/v1/adapters/fr/unpin"): lambda: httpx.Response(200, json=ADAPTER),
        }
        handler = routes.get((method, path))
        if handler is None:
            return envelope(404, "not_found_error", f"no route {method} {path}", "adapter_not_found")
        return handler()

    def transcription(self, request: httpx.Request) -> httpx.Response:
        body = request.content.decode("latin-1")
        fmt = next(
            f for f in ("verbose_json", "json", "text", "srt", "vtt") if f'name="response_format"\r\n\r\n{f}\r' in body
        )
        headers = {"x-chorus-adapter": "fr@2"}
        if fmt in ("text", "srt", "vtt"):
            return httpx.Response(200, text=f"bonjour ({fmt})", headers=headers)
        payload: dict = {"text": "bonjour"}
        if "\r\n\r\nword\r" in body:
            payload["words"] = [{"word": "bonjour", "start": 0.0, "end": 0.4}]
        if fmt == "verbose_json":
            payload |= {"task": "transcribe", "language": "fr", "duration": 0.5}
            payload["segments"] = [{"id": 0, "seek": 0, "start": 0.0, "end": 0.4, "text": "bonjour", "tokens": [3]}]
        return httpx.Response(200, content=json.dumps(payload), headers={**headers, "content-type": "application/json"})

    def adapter_page(self, request: httpx.Request) -> httpx.Response:
        after = request.url.params.get("after")
        if after is None:
            return httpx.Response(200, json={"object": "list", "data": [ADAPTER], "next_cursor": "c1"})
        return httpx.Response(200, json={"object": "list", "data": [{**ADAPTER, "id": "de"}], "next_cursor": None})
