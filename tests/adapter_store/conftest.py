"""Store fixtures. `store` is every backend in turn — `LocalStore` and `S3Store` on a real S3 server (SeaweedFS) —
so one contract suite runs on both; `damage` and `reopen` do per-backend what a test needs underneath."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from chorus_server.engine import Engine
from chorus_server.validation import BackboneValidator
from chorus_store import LocalStore
from chorus_store.s3 import S3Store
from tests.s3_server import BUCKET

MAX_BYTES = 4 * 1024 * 1024


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


def s3_options(endpoint: str) -> dict[str, str]:
    return {"endpoint": endpoint, "access_key_id": "test", "secret_access_key": "test", "region": "us-east-1"}


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path, tiny_model):
    if request.param == "local":
        return LocalStore(tmp_path / "store", tiny_model[2], max_bytes=MAX_BYTES)
    endpoint = request.getfixturevalue("s3_endpoint")
    prefix = f"t-{uuid.uuid4().hex[:12]}"  # a fresh store per test in the session's bucket
    return S3Store(BUCKET, prefix, tiny_model[2], MAX_BYTES, scratch=tmp_path / "scratch", **s3_options(endpoint))


def reopen(store):
    """A second instance on the same storage (LocalStore runs its crash recovery on open)."""
    if isinstance(store, LocalStore):
        return LocalStore(store.root, store.validator, max_bytes=store.max_bytes)
    return S3Store(store.bucket, store.prefix, store.validator, store.max_bytes, store.scratch, **store.options)


def damage(store, adapter_id: str, which: str, garbage: bytes) -> None:
    """Overwrite part of a stored adapter: `pointer` (its current-version state), `meta` (visibility),
    `record` (version 1's record) or `data` (version 1's bytes)."""
    if isinstance(store, LocalStore):
        name = {"pointer": "CURRENT", "meta": "adapter.json", "record": "v000001.json", "data": "v000001.safetensors"}
        (store.adapters_dir / adapter_id / name[which]).write_bytes(garbage)
        return
    import obstore

    name = {"pointer": "meta.json", "meta": "meta.json", "record": "v000001.json", "data": "v000001.safetensors"}
    obstore.put(store.client, store._adapter_key(adapter_id, name[which]), garbage)


def spec_of(store) -> str:
    """How a child process opens the same store (see test_crash_and_concurrency)."""
    if isinstance(store, LocalStore):
        return f"local:{store.root}"
    return f"s3:{store.options['endpoint']}|{store.prefix}"


def open_spec(spec: str, validator) -> LocalStore | S3Store:
    kind, _, where = spec.partition(":")
    if kind == "local":
        return LocalStore(Path(where), validator)
    endpoint, _, prefix = where.partition("|")
    return S3Store(BUCKET, prefix, validator, **s3_options(endpoint))


def put_stray(store, relative: str, data: bytes = b"x") -> None:
    """Create an entry no store wrote (an NFS `.snapshot`, a backup file) at `relative` under the store's root."""
    if isinstance(store, LocalStore):
        path = store.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return
    import obstore

    obstore.put(store.client, store._key(relative), data)


@contextlib.contextmanager
def touched(store) -> Iterator[list[str]]:
    """Every store path (relative to its root or prefix) read, opened, listed or statted inside the block."""
    paths: list[str] = []

    def recording(original, key_of):
        def spy(target, *args, **kwargs):
            key = key_of(target)
            if key is not None:
                paths.append(key)
            return original(target, *args, **kwargs)

        return spy

    with pytest.MonkeyPatch.context() as patch:
        if isinstance(store, LocalStore):
            root = str(store.root) + "/"
            under = lambda path: str(path)[len(root) :] if str(path).startswith(root) else None  # noqa: E731
            for name in ("read_text", "read_bytes", "open", "iterdir", "glob", "stat"):
                patch.setattr(Path, name, recording(getattr(Path, name), under))
        else:
            start = len(store.prefix) + 1
            for name in ("_get", "_list"):
                patch.setattr(store, name, recording(getattr(store, name), lambda key: key[start:]))
        yield paths
