"""The audit log: one entry per operator action (adapter uploads, deletes, pins; key creation, listing and
revocation, from the API or `chorus keys`; limit changes) — who acted, what, when, the outcome and the request ID —
whether it succeeded or was refused. Entries are rows of the tenant store's audit table (`GET /v1/audit` reads
them); `CHORUS_AUDIT_LOG`, when set, also appends each as a JSON line, for shipping to a log system.

The acting identity is always the caller (`tenant`, `role`, `key_id`, and `actor`: `key:<id>`, the tenant of an
anonymous caller, or `cli:<OS user>`); what the action made or touched goes in `target` and `details`."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from chorus_server.tenants.base import AuditEntry, AuditStore, DatabaseUnavailable

logger = logging.getLogger(__name__)

IDENTITY = ("actor", "tenant", "role", "key_id", "request_id")  # entry fields that are columns, besides these:
COLUMNS = ("time", "action", "target", "outcome", *IDENTITY)


def iso_time(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def to_json(entry: AuditEntry) -> dict[str, Any]:
    """The entry as the API and the JSON-lines export show it (time in ISO 8601, UTC)."""
    shown = asdict(entry)
    shown["time"] = iso_time(entry.time)
    return shown


class AuditTrail:
    """Writes audit entries to the store (and the optional JSON-lines export). `outcome_of` names a refusal by the
    exception that ended the audited block (its error code), for `record`."""

    def __init__(
        self, store: AuditStore, export: Path | None = None, outcome_of: Callable[[BaseException], str] | None = None
    ):
        self.store, self.export = store, export
        self.outcome_of = outcome_of or (lambda exc: "error")
        self._lock = threading.Lock()
        if export is not None:
            export.parent.mkdir(parents=True, exist_ok=True)

    def write(self, fields: dict[str, Any]) -> None:
        """Store one entry given as a flat dict: the columns by name, anything else goes into `details`. Never
        raises: the action itself already happened."""
        details = dict(fields.get("details") or {})
        details.update({k: v for k, v in fields.items() if k not in COLUMNS and k != "details"})
        entry = AuditEntry(
            time=fields.get("time") or time.time(),
            action=fields["action"],
            target=fields.get("target") or "",
            outcome=fields.get("outcome") or "ok",
            details=details,
            **{name: fields.get(name) for name in IDENTITY},
        )
        try:
            self.store.append_audit(entry)
        except DatabaseUnavailable as exc:
            logger.error("cannot write the audit entry to the tenant database (%s); entry: %s", exc, to_json(entry))
        if self.export is not None:
            shown = {k: v for k, v in to_json(entry).items() if k != "id"}  # assigned by the store, unknown here
            line = json.dumps(shown, separators=(",", ":"), ensure_ascii=True, default=str)
            try:
                with self._lock, self.export.open("a") as f:
                    f.write(line + "\n")
            except OSError as exc:
                logger.error("cannot write the audit log %s: %s; entry: %s", self.export, exc, line)

    @contextlib.contextmanager
    def record(self, entry: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Write `entry` when the block ends, with its `outcome`: the refusal's code when it raised, else what the
        block set (a refusal it answered itself), else "ok"."""
        try:
            yield entry
        except BaseException as exc:
            entry["outcome"] = self.outcome_of(exc)
            self.write(entry)
            raise
        entry.setdefault("outcome", "ok")
        self.write(entry)

    def local_action(self, action: str, target: str) -> contextlib.AbstractContextManager[dict[str, Any]]:
        """Record an action taken on this machine without the server (`chorus keys …`): the actor is the OS user
        who ran the command, `cli:<name>`."""
        return self.record({"time": time.time(), "actor": f"cli:{os_user()}", "action": action, "target": target})

    def entries(
        self, tenant: str | None, since: float | None, before_id: int | None, limit: int
    ) -> list[dict[str, Any]]:
        """Stored entries, newest first, as `to_json` shows them (blocking)."""
        return [to_json(e) for e in self.store.audit_entries(tenant, since, before_id, limit)]


def os_user() -> str:
    """The name of the process's real user (from its user ID, not from $USER, which the caller sets); `uid=N` when
    the ID has no name (containers often run as an unnamed ID)."""
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):  # no pwd module (Windows) or no passwd entry for this ID
        return f"uid={os.getuid()}" if hasattr(os, "getuid") else os.environ.get("USERNAME", "unknown")
