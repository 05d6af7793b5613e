"""The audit log: one JSON line per operator action (adapter uploads, deletes, pins; key creation, listing and
revocation, from the API or `chorus keys`) — who acted, what, which version, when, the outcome and the request ID
— whether it succeeded or was refused. The acting identity is always the caller (`tenant`, `role`, `key_id`, and
`actor`: `key:<id>`, `anonymous` or `cli:<OS user>`); what the action made or touched goes in its own fields."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from fastapi import Request
from starlette.exceptions import HTTPException

from chorus_server.auth import Principal
from chorus_server.errors import from_domain
from chorus_server.settings import Settings
from chorus_store.errors import StoreError

logger = logging.getLogger(__name__)


def audit_path(settings: Settings) -> Path:
    """Where this configuration's audit log is: `audit_log`, else DATA_DIR/audit.jsonl (server and CLI alike)."""
    return settings.audit_log or settings.data_dir / "audit.jsonl"


class AuditLog:
    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, entry: dict[str, Any]) -> None:
        line = json.dumps(entry, separators=(",", ":"), ensure_ascii=True)
        try:
            with self._lock, self.path.open("a") as f:
                f.write(line + "\n")
        except OSError as exc:  # the action itself already happened; never fail it for the log
            logger.error("cannot write the audit log %s: %s; entry: %s", self.path, exc, line)

    @contextlib.contextmanager
    def record(self, entry: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Write `entry` when the block ends, with its `outcome`: the refusal's code or status when it raised, else
        what the block set (a refusal it answered itself), else "ok"."""
        try:
            yield entry
        except BaseException as exc:
            entry["outcome"] = _outcome(exc)
            self.write(entry)
            raise
        entry.setdefault("outcome", "ok")
        self.write(entry)

    @contextlib.asynccontextmanager
    async def action(self, request: Request, action: str, target: str) -> AsyncIterator[dict[str, Any]]:
        """Record `action` on `target` by the request's caller when the block ends; the block may add fields
        (e.g. `version`). Open it before any permission check, so that refusals are recorded too."""
        who = getattr(request.state, "principal", None)
        entry = _entry(action, target, **_identity(who))
        entry.update(request_id=getattr(request.state, "request_id", None))
        entry.update(client=request.client.host if request.client else None)
        with self.record(entry):
            yield entry

    def local_action(self, action: str, target: str) -> contextlib.AbstractContextManager[dict[str, Any]]:
        """Record an action taken on this machine without the server (`chorus keys …`): the actor is the OS user
        who ran the command, `cli:<name>`."""
        identity = {"actor": f"cli:{os_user()}", "tenant": None, "role": None, "key_id": None}
        return self.record(_entry(action, target, **identity))


def _identity(who: Principal | None) -> dict[str, Any]:
    if who is None:  # not reached through authentication: no one to name
        return {"actor": None, "tenant": None, "role": None, "key_id": None}
    return {
        "actor": f"key:{who.key_id}" if who.key_id else who.tenant,
        "tenant": who.tenant,
        "role": str(who.role),
        "key_id": who.key_id,
    }


def _entry(action: str, target: str, **identity: Any) -> dict[str, Any]:
    return {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **identity, "action": action, "target": target}


def os_user() -> str:
    """The name of the process's real user (from its user ID, not from $USER, which the caller sets); `uid=N` when
    the ID has no name (containers often run as an unnamed ID)."""
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):  # no pwd module (Windows) or no passwd entry for this ID
        return f"uid={os.getuid()}" if hasattr(os, "getuid") else os.environ.get("USERNAME", "unknown")


def _outcome(exc: BaseException) -> str:
    if isinstance(exc, StoreError):
        mapped = from_domain(exc)
        return mapped.code or "error" if mapped else "error"
    if isinstance(exc, HTTPException):
        return str(getattr(exc, "code", None) or exc.status_code)
    return "error"
