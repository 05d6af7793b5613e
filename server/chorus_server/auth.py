"""API keys -> tenants, and what a tenant may see and change.

Tenants see public adapters and their own; admins see and change everything. An adapter another tenant may not
see answers 404 exactly like a missing one, so IDs of private adapters do not leak.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from fastapi import Request

from chorus_server.errors import ApiError
from chorus_server.settings import AuthSettings
from chorus_store.base import AdapterRecord, AdapterStore
from chorus_store.errors import AdapterNotFound

OPEN_TENANT = "default"


@dataclass(frozen=True)
class Tenant:
    name: str
    admin: bool

    def can_see(self, record: AdapterRecord) -> bool:
        return self.admin or record.visibility == "public" or record.owner == self.name

    def can_change(self, record: AdapterRecord) -> bool:
        return self.admin or record.owner == self.name


class Authenticator:
    def __init__(self, settings: AuthSettings):
        self.keys = dict(settings.keys)
        self.admin_keys = list(settings.admin_keys)
        self.enabled = bool(self.keys or self.admin_keys)

    def tenant_for(self, authorization: str | None) -> Tenant:
        if not self.enabled:
            return Tenant(OPEN_TENANT, admin=True)
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key:
            raise ApiError(
                401, "missing API key: send 'Authorization: Bearer <key>'", "missing_api_key", headers=_challenge()
            )
        # Constant-time comparisons: the time taken must not reveal how much of a key matched.
        for admin_key in self.admin_keys:
            if hmac.compare_digest(admin_key, key):
                return Tenant(self.keys.get(admin_key, "admin"), admin=True)
        for known, tenant in self.keys.items():
            if hmac.compare_digest(known, key):
                return Tenant(tenant, admin=False)
        raise ApiError(401, "invalid API key", "invalid_api_key", headers=_challenge())


def _challenge() -> dict[str, str]:
    return {"WWW-Authenticate": "Bearer"}


def visible_record(store: AdapterStore, ref: str, tenant: Tenant) -> AdapterRecord:
    """The stored version `ref` names, if `tenant` may see it; otherwise the same 404 as a missing adapter."""
    record = store.get(ref)
    if not tenant.can_see(record):
        raise AdapterNotFound(f"adapter {record.id!r} not found; list adapters with GET /v1/adapters")
    return record


def current_tenant(request: Request) -> Tenant:
    """FastAPI dependency: the caller's tenant (raises 401 when auth is on and the key is missing or wrong)."""
    authenticator: Authenticator = request.app.state.chorus.auth
    return authenticator.tenant_for(request.headers.get("authorization"))
