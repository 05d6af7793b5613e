"""API keys: random secrets shown once, stored only as SHA-256 hashes with an ID, tenant, role, times and an
optional expiry.

Keys created with `chorus keys create` or `POST /v1/keys` live in the tenant store (`base.KeyStore`), shared by
every process that uses the same database; the server reads it off its event loop and caches verdicts briefly
(`key_cache`), so a revocation takes effect within a second everywhere. `last_used_at` is written in the
background, at most once a minute per key, and a failure to write it never fails a request. Keys given in the
environment (`CHORUS_AUTH__KEYS`, simple setups) are hashed at start-up; they may be given as `sha256:<hex>` so
that no secret sits in the process environment.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from chorus_server.tenants.base import DatabaseUnavailable, KeyInfo, Role, TenantStore
from chorus_store.base import check_tenant

logger = logging.getLogger(__name__)

KEY_PREFIX = "chorus_sk_"
TOUCH_EVERY_SECONDS = 60.0  # last_used_at is written at most this often per key


__all__ = ["KEY_PREFIX", "KeyInfo", "KeyRing", "Role", "key_hash", "parse_env_hash"]


def key_hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).digest()


def parse_env_hash(given: str) -> bytes:
    """An environment key: the secret itself, or `sha256:<64 hex digits>` of it."""
    if given.startswith("sha256:"):
        try:
            digest = bytes.fromhex(given.removeprefix("sha256:"))
        except ValueError:
            digest = b""
        if len(digest) != 32:
            raise ValueError("a key given as sha256:<hex> needs 64 hex digits")
        return digest
    return key_hash(given)


class KeyRing:
    """Hashed keys: those from the environment (fixed) and those in the tenant store (created/revoked at run
    time)."""

    def __init__(self, store: TenantStore, env_keys: dict[bytes, KeyInfo] | None = None):
        self.store = store
        self.env_keys = dict(env_keys or {})
        self.generation = 0  # bumped by every change made through this ring: caches drop older verdicts
        self._touched: dict[str, float] = {}
        self._lock = threading.Lock()
        self._writer: ThreadPoolExecutor | None = None  # last_used_at, off the request path

    def change_counter(self) -> int | None:
        """The store's change marker (`TenantStore.version`): unchanged means no key was written since."""
        return self.store.version()

    def create(self, tenant: str, role: Role, expires_at: float | None = None) -> tuple[KeyInfo, str]:
        """A new key: (its record, the secret — shown this once, never stored)."""
        check_tenant(tenant)
        secret = KEY_PREFIX + secrets.token_urlsafe(32)  # 256 random bits
        info = KeyInfo(f"key_{secrets.token_hex(8)}", tenant, Role(role), time.time(), expires_at)
        self.generation += 1
        self.store.create_key(info, key_hash(secret))
        return info, secret

    def active(self) -> list[KeyInfo]:
        """Every active key (environment keys first), without secrets or hashes."""
        return [*self.env_keys.values(), *self.store.list_keys()]

    def revoke(self, key_id: str) -> bool:
        """Revoke a stored key; False if there is no such active key (environment keys cannot be revoked here)."""
        revoked = self.store.revoke_key(key_id, time.time())
        self.generation += 1  # after the commit: a verdict read before it is older than this generation
        return revoked

    def has_keys(self) -> bool:
        return bool(self.env_keys) or self.store.has_keys()

    def lookup(self, secret: str) -> KeyInfo | None:
        """The key `secret` is, if active, with its use recorded now (for the `chorus keys` command and tests;
        the server goes through `key_cache.KeyCache` and `touch_later`)."""
        info = self.find(key_hash(secret))
        if info is not None and info.source == "file":
            self._touch(info.id)
        return info

    def find_env(self, digest: bytes) -> KeyInfo | None:
        """The environment key with this hash, if any (no I/O). Every entry is compared, so timing does not
        depend on position; comparisons are constant-time over bytes."""
        found = None
        for known, info in self.env_keys.items():
            if hmac.compare_digest(known, digest):
                found = info
        return found

    def find(self, digest: bytes) -> KeyInfo | None:
        """The active key with this hash (blocking: reads the store; raises `DatabaseUnavailable`)."""
        found = self.find_env(digest)
        return found if found is not None else self.store.find_key(digest)

    def touch_later(self, key_id: str, last_used_at: float | None = None) -> None:
        """Record a use of the stored key `key_id` (last written `last_used_at`, by any process): written in the
        background, at most once a minute."""
        if not self._due(key_id, time.time(), last_used_at):
            return
        with self._lock:
            if self._writer is None:
                self._writer = ThreadPoolExecutor(1, thread_name_prefix="chorus-key-touch")
            writer = self._writer
        writer.submit(self._write_touch, key_id, time.time())

    def close(self) -> None:
        """Finish pending `last_used_at` writes."""
        with self._lock:
            writer, self._writer = self._writer, None
        if writer is not None:
            writer.shutdown(wait=True)

    def _due(self, key_id: str, now: float, last_used_at: float | None = None) -> bool:
        with self._lock:
            if now - self._touched.get(key_id, last_used_at or 0.0) < TOUCH_EVERY_SECONDS:
                return False
            self._touched[key_id] = now
            return True

    def _touch(self, key_id: str) -> None:
        if self._due(key_id, time.time()):
            self._write_touch(key_id, time.time())

    def _write_touch(self, key_id: str, now: float) -> None:
        try:
            self.store.touch_key(key_id, now)
        except DatabaseUnavailable:  # bookkeeping only: a read-only or busy database must not fail requests
            logger.warning("cannot record the last use of key %s; retried after a minute", key_id)
