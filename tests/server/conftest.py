"""Server fixtures: a tiny random model, settings pointing at temporary dirs, an in-process app (lifespan run by
Starlette's TestClient) and a real uvicorn on 127.0.0.1 for clients that need a socket.

Tenancy tests run on both tenant backends: `tenant_backend` (parametrized `sqlite`, `postgres`) sets
`CHORUS_DATABASE_URL` to a fresh database on the session's PostgreSQL server for the `postgres` case, exactly as an
operator would, so `make_settings`, `chorus keys` and child servers all pick it up; `tenant_store`, `ring_at` and
`audit_entries` reach whichever database the test runs on."""

from __future__ import annotations

import gc
import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import soundfile
from fastapi.testclient import TestClient

from chorus_server.app import create_app
from chorus_server.settings import Settings
from chorus_server.tenants.audit import to_json
from chorus_server.tenants.base import TenantStore
from chorus_server.tenants.keys import KeyRing
from chorus_server.tenants.sqlite import SqliteTenantStore
from tests import postgres_server

RATE = 16000


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """Tiny post-LN random backbone with a head, plus 4 native adapters (houlsby, various sizes and layers)."""
    from chorus_server.engine.random_model import write_random_model

    path = tmp_path_factory.mktemp("server-model")
    write_random_model(path, "tiny", num_adapters=4, seed=7)
    return path


DATABASE_URL = "CHORUS_DATABASE_URL"
_opened: list[TenantStore] = []  # helper stores on PostgreSQL, closed when the test ends (they hold connections)


@pytest.fixture(params=["sqlite", "postgres"])
def tenant_backend(request, monkeypatch) -> Iterator[str]:
    """Run the test on each tenant backend: `sqlite` (the file under DATA_DIR) or `postgres` (a fresh database on
    the session's server, named by CHORUS_DATABASE_URL; skipped where PostgreSQL is not installed)."""
    monkeypatch.delenv(DATABASE_URL, raising=False)
    if request.param == "postgres":
        server = request.getfixturevalue("postgres_server_url")
        name = f"tenants_{os.urandom(6).hex()}"
        monkeypatch.setenv(DATABASE_URL, postgres_server.create_database(server, name))
    yield request.param
    while _opened:
        _opened.pop().close()


def tenant_store(path: Path) -> TenantStore:
    """The tenant database this test runs on: CHORUS_DATABASE_URL when set, else the SQLite file `path`."""
    url = os.environ.get(DATABASE_URL)
    if not url:
        return SqliteTenantStore(path)
    from chorus_server.tenants.postgres.store import PostgresTenantStore

    store = PostgresTenantStore(url, pool_size=2)
    _opened.append(store)
    return store


def stored_bytes(path: Path) -> bytes:
    """Everything the tenant database holds about keys, as bytes (to show what is and is not stored)."""
    url = os.environ.get(DATABASE_URL)
    if not url:
        return path.read_bytes()
    import psycopg

    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT id, hash, tenant, role FROM api_keys").fetchall()
    return b"".join(b"".join(v if isinstance(v, bytes) else str(v).encode() for v in row) for row in rows)


def ring_at(path: Path) -> KeyRing:
    """The API keys of the tenant database (what `chorus keys` and the server use): CHORUS_DATABASE_URL when set,
    else the SQLite file `path`."""
    return KeyRing(tenant_store(path))


def audit_entries(source: Path | TestClient) -> list[dict]:
    """The audit log, oldest first, as the API shows it: of a running app, or of the tenant database (`path`: the
    SQLite file, when CHORUS_DATABASE_URL is not set)."""
    store = tenant_store(source) if isinstance(source, Path) else source.app.state.chorus.tenants
    return [to_json(e) for e in reversed(store.audit_entries(limit=100_000))]


def make_settings(tmp_path: Path, model_dir: Path, **overrides) -> Settings:
    """Settings for a test server: float32 (exact), the test model, its adapters seeded into a fresh store. Voice
    activity detection is off unless `vad={"enabled": True}`: the test signals are tones and noise, not speech, and
    most tests compare the server with the engine called on the whole file (tests/server/test_vad_pipeline.py
    covers detection on real speech)."""
    values = dict(backbone=model_dir, store=str(tmp_path / "store"), data_dir=tmp_path, device="cpu", dtype="float32")
    overrides.setdefault("vad", {"enabled": False})
    groups = ("batch", "limits", "cache", "auth", "server", "realtime", "vad", "routing")
    nested = {key: overrides.pop(key) for key in groups if key in overrides}
    settings = Settings(**values, **overrides, _env_file=None)
    for group, fields in nested.items():
        setattr(settings, group, getattr(settings, group).model_copy(update=fields))
    return settings


@contextmanager
def without_collector_pauses() -> Iterator[None]:
    """For latency bounds on a server running in this process: after a thousand tests the process holds enough
    objects that one automatic full garbage collection takes 0.4-0.6 s, the size of the bounds themselves. It
    collects first, then pauses the collector until the block ends."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@contextmanager
def running_app(settings: Settings, seed_adapters: list[Path] | None = None) -> Iterator[TestClient]:
    # localhost: a keyless server answers only to loopback names (host_guard.py), not to "testserver"
    with TestClient(create_app(settings), base_url="http://localhost", raise_server_exceptions=False) as client:
        for path in seed_adapters or []:
            response = client.put(f"/v1/adapters/{path.stem}?visibility=public", content=path.read_bytes())
            assert response.status_code == 201, response.text
        yield client


@pytest.fixture
def adapter_files(model_dir) -> list[Path]:
    return sorted((model_dir / "adapters").glob("*.safetensors"))


@pytest.fixture
def client(tmp_path, model_dir, adapter_files) -> Iterator[TestClient]:
    with running_app(make_settings(tmp_path, model_dir), adapter_files) as client:
        yield client


def tone(seconds: float, rate: int = RATE, seed: int = 0, channels: int = 1) -> np.ndarray:
    """Noisy chirp-like test signal, (L,) or (L, C) float32 in [-1, 1]."""
    gen = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    base = 0.3 * np.sin(2 * np.pi * (150 + 200 * gen.random()) * t * (1 + t / max(seconds, 1e-3)))
    signal = (base + 0.1 * gen.standard_normal(len(t))).astype(np.float32)
    if channels > 1:
        signal = np.stack([signal * (0.5 + 0.5 * c / channels) for c in range(channels)], axis=1)
    return signal


def encode(samples: np.ndarray, rate: int = RATE, format: str = "WAV", subtype: str | None = None) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format=format, subtype=subtype)
    return buffer.getvalue()


def wav(seconds: float, seed: int = 0, rate: int = RATE) -> bytes:
    return encode(tone(seconds, rate, seed), rate)


def transcribe(client, audio: bytes, model: str, **fields):
    data = {"model": model, **fields}
    return client.post("/v1/audio/transcriptions", files={"file": ("audio.wav", audio, "audio/wav")}, data=data)
