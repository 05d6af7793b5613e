"""API keys: random secrets shown once, stored only as SHA-256 hashes with an ID, tenant, role, times and an
optional expiry.

Keys created with `chorus keys create` or `POST /v1/keys` live in a SQLite file (`CHORUS_AUTH__KEY_FILE`), shared
by every process on the host; the server reads it off its event loop and caches verdicts briefly (`key_cache`), so
a revocation takes effect within a second everywhere. `last_used_at` is written in the background, at most once a
minute per key, and a failure to write it never fails a request. Keys given in the environment
(`CHORUS_AUTH__KEYS`, simple setups) are hashed at start-up; they may be given as `sha256:<hex>` so that no secret
sits in the process environment.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import secrets
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from chorus_server.sqlite_file import DEFAULT_TIMEOUT, DatabaseUnavailable, change_counter, session
from chorus_store.base import check_tenant

logger = logging.getLogger(__name__)

KEY_PREFIX = "chorus_sk_"
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS api_keys (id TEXT PRIMARY KEY, hash BLOB NOT NULL UNIQUE, "
    "tenant TEXT NOT NULL, role TEXT NOT NULL, created_at REAL NOT NULL, expires_at REAL, "
    "last_used_at REAL, revoked_at REAL)",
)
TOUCH_EVERY_SECONDS = 60.0  # last_used_at is written at most this often per key


class Role(StrEnum):
    ADMIN = "admin"  # everything, every tenant
    OPERATOR = "operator"  # its tenant's adapters, and transcription
    USER = "user"  # transcription, and listing what it may see
    METRICS = "metrics"  # scraping /metrics only


@dataclass(frozen=True)
class KeyInfo:
    id: str
    tenant: str
    role: Role
    created_at: float
    expires_at: float | None = None
    last_used_at: float | None = None
    source: str = "file"  # "file" (revocable) or "env"

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    def to_dict(self) -> dict[str, object]:
        return {
            "object": "api_key",
            "id": self.id,
            "tenant": self.tenant,
            "role": str(self.role),
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "last_used_at": self.last_used_at,
            "source": self.source,
        }


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
    """Hashed keys: those from the environment (fixed) and those in the key file (created/revoked at run time)."""

    def __init__(self, path: Path, env_keys: dict[bytes, KeyInfo] | None = None, timeout: float = DEFAULT_TIMEOUT):
        self.path, self.timeout = path, timeout
        self.env_keys = dict(env_keys or {})
        self.generation = 0  # bumped by every change made through this ring: caches drop older verdicts
        self._touched: dict[str, float] = {}
        self._lock = threading.Lock()
        self._writer: ThreadPoolExecutor | None = None  # last_used_at, off the request path

    def _db(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return session(self.path, SCHEMA, self.timeout)

    def change_counter(self) -> int | None:
        """Changes as soon as anyone commits to the key file (None: cannot tell; see `sqlite_file`)."""
        return change_counter(self.path)

    def create(self, tenant: str, role: Role, expires_at: float | None = None) -> tuple[KeyInfo, str]:
        """A new key: (its record, the secret — shown this once, never stored)."""
        check_tenant(tenant)
        secret = KEY_PREFIX + secrets.token_urlsafe(32)  # 256 random bits
        info = KeyInfo(f"key_{secrets.token_hex(8)}", tenant, Role(role), time.time(), expires_at)
        self.generation += 1
        with self._db() as db:
            db.execute(
                "INSERT INTO api_keys (id, hash, tenant, role, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)",
                (info.id, key_hash(secret), info.tenant, str(info.role), info.created_at, info.expires_at),
            )
        return info, secret

    def active(self) -> list[KeyInfo]:
        """Every active key (environment keys first), without secrets or hashes."""
        if not self.path.exists():
            return list(self.env_keys.values())
        with self._db() as db:
            rows = db.execute(
                "SELECT id, tenant, role, created_at, expires_at, last_used_at FROM api_keys "
                "WHERE revoked_at IS NULL ORDER BY created_at"
            ).fetchall()
        return [*self.env_keys.values(), *(KeyInfo(r[0], r[1], Role(r[2]), r[3], r[4], r[5]) for r in rows)]

    def revoke(self, key_id: str) -> bool:
        """Revoke a file key; False if there is no such active key (environment keys cannot be revoked here)."""
        if not self.path.exists():
            return False
        with self._db() as db:
            cursor = db.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (time.time(), key_id)
            )
        self.generation += 1  # after the commit: a verdict read before it is older than this generation
        return cursor.rowcount == 1

    def has_keys(self) -> bool:
        return bool(self.env_keys) or any(k.source == "file" for k in self.active())

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
        """The active key with this hash (blocking: reads the key file; raises `DatabaseUnavailable`)."""
        found = self.find_env(digest)
        if found is not None or not self.path.exists():
            return found
        with self._db() as db:
            row = db.execute(
                "SELECT hash, id, tenant, role, created_at, expires_at, last_used_at FROM api_keys "
                "WHERE hash = ? AND revoked_at IS NULL",
                (digest,),
            ).fetchone()
        if row is None or not hmac.compare_digest(row[0], digest):
            return None
        return KeyInfo(row[1], row[2], Role(row[3]), row[4], row[5], row[6])

    def touch_later(self, key_id: str, last_used_at: float | None = None) -> None:
        """Record a use of the file key `key_id` (last written `last_used_at`, by any process): written in the
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
            with self._db() as db:
                db.execute("UPDATE api_keys SET last_used_at = ? WHERE id = ?", (now, key_id))
        except DatabaseUnavailable:  # bookkeeping only: a read-only or busy key file must not fail requests
            logger.warning("cannot record the last use of key %s; retried after a minute", key_id)
