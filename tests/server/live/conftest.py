"""A real uvicorn on 127.0.0.1 with short windows, so a few seconds of audio make several of them."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from chorus_server.background import BackgroundServer
from tests.server.conftest import make_settings


@pytest.fixture
def live(tmp_path, model_dir, adapter_files) -> Iterator[BackgroundServer]:
    settings = make_settings(tmp_path, model_dir, batch={"chunk_seconds": 4.0, "stride_seconds": 0.5})
    with BackgroundServer(settings) as server:
        for path in adapter_files:
            response = httpx.put(f"{server.url}/v1/adapters/{path.stem}?visibility=public", content=path.read_bytes())
            assert response.status_code == 201, response.text
        yield server
