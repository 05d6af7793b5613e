"""The audit log: one JSON line per operator action (adapter uploads, deletes, pins; key changes) — who, what,
which version, when, the outcome and the request ID — whether it succeeded or was refused."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import Request
from starlette.exceptions import HTTPException

from chorus_server.errors import from_domain
from chorus_store.errors import StoreError

logger = logging.getLogger(__name__)


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

    @contextlib.asynccontextmanager
    async def action(self, request: Request, action: str, target: str) -> AsyncIterator[dict[str, Any]]:
        """Record `action` on `target` when the block ends; the block may add fields (e.g. `version`)."""
        who = getattr(request.state, "principal", None)
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "request_id": getattr(request.state, "request_id", None),
            "tenant": who.tenant if who else None,
            "role": str(who.role) if who else None,
            "key_id": who.key_id if who else None,
            "client": request.client.host if request.client else None,
            "action": action,
            "target": target,
        }
        try:
            yield entry
        except BaseException as exc:
            entry["outcome"] = _outcome(exc)
            self.write(entry)
            raise
        entry["outcome"] = "ok"
        self.write(entry)


def _outcome(exc: BaseException) -> str:
    if isinstance(exc, StoreError):
        mapped = from_domain(exc)
        return mapped.code or "error" if mapped else "error"
    if isinstance(exc, HTTPException):
        return str(getattr(exc, "code", None) or exc.status_code)
    return "error"
