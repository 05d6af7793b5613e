from __future__ import annotations

import pytest

from chorus_server.engine import Engine
from chorus_server.validation import BackboneValidator
from chorus_store import LocalStore


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A tiny-mms random model: (directory, engine, validator)."""
    from chorus_server.engine.random_model import write_random_model

    path = tmp_path_factory.mktemp("store-model")
    write_random_model(path, "tiny-mms", num_adapters=4, seed=21)
    engine = Engine.from_pretrained(path, device="cpu").engine
    return path, engine, BackboneValidator.for_engine(engine)


@pytest.fixture
def adapter_files(tiny_model):
    return sorted((tiny_model[0] / "adapters").glob("*.safetensors"))


@pytest.fixture
def store(tmp_path, tiny_model):
    return LocalStore(tmp_path / "store", tiny_model[2], max_bytes=4 * 1024 * 1024)
