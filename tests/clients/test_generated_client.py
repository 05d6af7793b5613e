"""The blocking client is generated from the asyncio one; the committed file must be what the generator makes."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

from chorus_client import AsyncChorus, Chorus

ROOT = Path(__file__).resolve().parents[2]


def test_the_sync_client_is_generated_from_the_async_one():
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "unasync_client.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_both_clients_have_the_same_public_methods_and_signatures():
    def public(cls: type) -> dict[str, inspect.Signature]:
        return {n: inspect.signature(f) for n, f in vars(cls).items() if callable(f) and not n.startswith("_")}

    sync, asynchronous = public(Chorus), public(AsyncChorus)
    assert set(asynchronous) - {"aclose"} == set(sync) - {"close"}
    for name, signature in sync.items():
        if name != "close":
            assert list(signature.parameters) == list(asynchronous[name].parameters), name
