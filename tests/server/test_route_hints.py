"""Unknown paths: 404 with the right path named, before the body limit (a wrong base URL used to answer 413)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from chorus_server.app import create_app
from chorus_server.route_hints import suggestion
from chorus_server.settings import Settings

BIG = b"x" * 200_000  # over the 64 KB limit of unknown routes


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(create_app(Settings(_env_file=None)))  # no lifespan: routing needs no runtime


@pytest.mark.parametrize(
    ("path", "hint", "base_url_note"),
    [
        ("/v1/v1/audio/transcriptions", "/v1/audio/transcriptions", True),  # chorus --url http://host/v1
        ("/audio/transcriptions", "/v1/audio/transcriptions", True),  # an OpenAI SDK base_url without /v1
        ("/v1/audio/transcription", "/v1/audio/transcriptions", False),  # a typo
        ("/v1/adapterz", "/v1/adapters", False),
    ],
)
def test_a_wrong_path_names_the_right_one(client, path, hint, base_url_note):
    response = client.post(path, content=BIG, headers={"content-type": "application/octet-stream"})
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "route_not_found" and error["type"] == "not_found_error"
    assert f"did you mean {hint}?" in error["message"]
    assert ("server's root URL" in error["message"]) is base_url_note


def test_a_path_like_nothing_points_at_the_docs(client):
    error = client.get("/nothing/here").json()["error"]
    assert error["message"] == "no such endpoint: GET /nothing/here; the API is described at GET /docs"


def test_known_paths_are_untouched(client):
    assert client.get("/healthz").status_code == 200
    big = client.post("/v1/audio/transcriptions", content=BIG * 200, headers={"content-length": str(40 * 10**6)})
    assert big.status_code == 413  # a real route keeps its body limit


def test_suggestion_prefers_a_matching_tail():
    known = ["/healthz", "/v1/adapters", "/v1/adapters/{ref}", "/v1/audio/transcriptions"]
    assert suggestion("/api/v1/audio/transcriptions/", known) == "/v1/audio/transcriptions"
    assert suggestion("/", known) is None
    assert suggestion("/healtz", known) == "/healthz"
