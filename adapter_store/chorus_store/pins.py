"""Pins recorded in the store, so every server sharing it keeps the same adapter versions resident: one small
index, `pins.json` (`{"pins": {"owner/name": "owner/name@N"}}`), changed under a lock (local directory) or by
compare-and-set (S3) and read by each server's store watcher about every second."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

from chorus_store.base import check_id, parse_ref
from chorus_store.errors import StoreUnavailable

logger = logging.getLogger(__name__)

PINS_FILE = "pins.json"
MAX_ATTEMPTS = 20


def parse(data: bytes | None) -> dict[str, str]:
    """The index's pins; a damaged index reads as no pins (logged): pins are a cache hint, never a reason to fail."""
    if not data:
        return {}
    try:
        pins = json.loads(data)["pins"]
        if not isinstance(pins, dict):
            raise ValueError("pins is not an object")
        for adapter_id, ref in pins.items():
            if parse_ref(ref)[0] != check_id(adapter_id):
                raise ValueError(f"{ref!r} is not a version of {adapter_id!r}")
        return dict(pins)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        logger.warning("the store's %s is damaged (%s); no pins apply until it is rewritten", PINS_FILE, exc)
        return {}


def changed(pins: dict[str, str], adapter_id: str, ref: str | None) -> dict[str, str]:
    """`pins` with `adapter_id` pinned at `ref` (None: unpinned)."""
    check_id(adapter_id)
    if ref is not None and parse_ref(ref)[0] != adapter_id:
        raise ValueError(f"{ref!r} is not a version of {adapter_id!r}")
    out = {k: v for k, v in pins.items() if k != adapter_id}
    if ref is not None:
        out[adapter_id] = ref
    return out


def encode(pins: dict[str, str]) -> bytes:
    return json.dumps({"pins": dict(sorted(pins.items()))}).encode()


class LocalPins:
    """The index in a local store's root, rewritten atomically under a lock file."""

    def __init__(self, root: Path, write_atomic: Callable[[Path, str], None]):
        self.path, self.lock_path, self.write_atomic = root / PINS_FILE, root / "tmp" / "pins.lock", write_atomic

    def read(self) -> dict[str, str]:
        try:
            return parse(self.path.read_bytes())
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise StoreUnavailable(f"the adapter store cannot read pins right now ({exc.strerror or exc})") from exc

    def set(self, adapter_id: str, ref: str | None) -> None:
        with self._locked():
            self.write_atomic(self.path, encode(changed(self.read(), adapter_id, ref)).decode())

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            with self.lock_path.open("a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(lock, fcntl.LOCK_UN)
        except OSError as exc:
            raise StoreUnavailable(f"the adapter store cannot write pins right now ({exc.strerror or exc})") from exc


class ObjectPins:
    """The index as one object (S3), changed by compare-and-set on its ETag."""

    def __init__(
        self,
        key: str,
        get: Callable[[str], tuple[bytes, str] | None],
        put: Callable[..., str | None],
    ):
        self.key, self.get, self.put = key, get, put

    def read(self) -> dict[str, str]:
        found = self.get(self.key)
        return parse(found[0] if found else None)

    def set(self, adapter_id: str, ref: str | None) -> None:
        for _ in range(MAX_ATTEMPTS):
            found = self.get(self.key)
            pins = changed(parse(found[0] if found else None), adapter_id, ref)
            mode = {"e_tag": found[1]} if found else "create"
            if self.put(self.key, encode(pins), mode) is not None:
                return
        raise StoreUnavailable("the store's pins are changing too fast to update; retry")
