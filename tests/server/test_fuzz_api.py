"""Fuzzing what users send: adapter references (hypothesis), the transcription form's fields, and every endpoint
of the running server's OpenAPI schema as each role (schemathesis). The property everywhere: bad input gets a
4xx in OpenAI's error envelope — never a 5xx, never a dropped connection."""

from __future__ import annotations

import string

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chorus_server.app import create_app
from chorus_server.background import BackgroundServer
from chorus_server.settings import Settings
from chorus_store.base import split_ref
from chorus_store.errors import AdapterRejected
from tests.server.conftest import make_settings, wav

KEYS = {"k-op": "acme", "k-user": "acme:user", "k-metrics": "dash:metrics"}
ADMIN = "k-admin"
ROLE_KEYS = [None, "k-op", "k-user", "k-metrics", ADMIN, "wrong"]
NAME_CHARS = string.ascii_lowercase + string.digits + "._-"


def canonical(ref) -> str:
    owner = f"{ref.owner}/" if ref.owner else ""
    version = f"@{ref.version}" if ref.version is not None else ""
    return f"{owner}{ref.name}{version}"


@settings(max_examples=1500, deadline=None)
@given(st.one_of(st.text(max_size=80), st.text(alphabet=NAME_CHARS + "/@0123456789\n١²", max_size=80)))
def test_references_parse_to_their_one_spelling_or_are_rejected(text):
    try:
        ref = split_ref(text)
    except AdapterRejected as exc:
        assert "invalid adapter reference" in str(exc)
        return
    assert canonical(ref) == text  # accepted means: the input was already the canonical spelling
    assert text.isascii() and "\n" not in text


@pytest.fixture(scope="module")
def live(tmp_path_factory, model_dir):
    tmp = tmp_path_factory.mktemp("fuzz")
    config = make_settings(tmp, model_dir, auth={"keys": KEYS, "admin_keys": [ADMIN]})
    with BackgroundServer(config) as server:
        adapter = sorted((model_dir / "adapters").glob("*.safetensors"))[0].read_bytes()
        auth = {"Authorization": "Bearer k-op"}
        requests.put(f"{server.url}/v1/adapters/fr?visibility=public", data=adapter, headers=auth, timeout=30)
        yield server


def _check(response: requests.Response) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:500])
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert response.headers.get("x-request-id")


FIELD = st.one_of(st.text(max_size=40), st.sampled_from(["fr", "acme/fr@1", "whisper-1", "json", "srt", "word"]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    model=FIELD,
    response_format=FIELD,
    granularity=FIELD,
    temperature=FIELD,
    audio=st.one_of(st.binary(max_size=2000), st.just(wav(0.5))),
    key=st.sampled_from(ROLE_KEYS),
)
def test_transcription_form_fields(live, model, response_format, granularity, temperature, audio, key):
    data = {
        "model": model,
        "response_format": response_format,
        "timestamp_granularities[]": granularity,
        "temperature": temperature,
    }
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    response = requests.post(
        f"{live.url}/v1/audio/transcriptions",
        files={"file": ("a.wav", audio, "audio/wav")},
        data={k: v.encode("utf-8", "surrogatepass") for k, v in data.items()},
        headers=headers,
        timeout=60,
    )
    _check(response)


# The schema of the app as served (routes only: building it starts nothing).
schema = schemathesis.openapi.from_dict(create_app(Settings(_env_file=None)).openapi())


@schema.parametrize()
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_endpoint_as_every_role(case, live):
    for key in ROLE_KEYS:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        _check(case.call(base_url=live.url, headers=headers, timeout=60))
