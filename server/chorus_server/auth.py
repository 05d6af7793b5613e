"""Who is calling: API key -> principal (tenant + role), and what each role may do.

Roles: `admin` (everything), `operator` (its tenant's adapters and transcription), `user` (transcription and
listing what it may see), `metrics` (scrape only). Callers without a key are anonymous: refused when keys exist
(unless `CHORUS_AUTH__ANONYMOUS` allows them), otherwise — a server with no keys, which `chorus serve` allows on
loopback only — an operator of the tenant "anonymous". Anonymous callers are never admins.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

from fastapi import Request

from chorus_server.errors import ApiError
from chorus_server.settings import AuthSettings
from chorus_server.tenants.key_cache import KeyCache
from chorus_server.tenants.keys import KeyInfo, KeyRing, Role, key_hash, parse_env_hash
from chorus_store.base import AdapterRecord, check_tenant
from chorus_store.errors import AdapterRejected

ANONYMOUS_TENANT = "anonymous"
ENV_ADMIN_TENANT = "admin"

Permission = Literal["transcribe", "read", "write", "scrape", "manage", "usage"]
PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.ADMIN: frozenset({"transcribe", "read", "write", "scrape", "manage", "usage"}),
    Role.OPERATOR: frozenset({"transcribe", "read", "write", "usage"}),
    Role.USER: frozenset({"transcribe", "read", "usage"}),
    Role.METRICS: frozenset({"scrape"}),
}
WHAT = {
    "transcribe": "transcribe audio",
    "read": "list or read adapters",
    "write": "upload, delete or pin adapters",
    "scrape": "read metrics",
    "manage": "manage API keys",
    "usage": "read usage and limits",
}


@dataclass(frozen=True)
class Principal:
    """The caller: its tenant (namespace), role and the permissions they grant."""

    tenant: str
    role: Role
    key_id: str | None = None
    permissions: frozenset[Permission] = frozenset()

    @property
    def admin(self) -> bool:
        return self.role is Role.ADMIN

    def can_see(self, record: AdapterRecord) -> bool:
        return self.admin or record.visibility == "public" or record.owner == self.tenant

    def can_change(self, record: AdapterRecord) -> bool:
        return self.admin or ("write" in self.permissions and record.owner == self.tenant)

    @property
    def anonymous(self) -> bool:
        return self.key_id is None

    def require(self, permission: Permission, what: str | None = None) -> None:
        """403 unless the caller has `permission`; `what` names the refused action when the permission's own
        description does not (e.g. "change tenant limits", which needs `manage`, not "manage API keys")."""
        if permission not in self.permissions:
            if self.anonymous and permission == "scrape":  # not a key's role at fault: a key is missing
                raise ApiError(
                    401,
                    "metrics need an API key of role metrics or admin: send 'Authorization: Bearer <key>'",
                    "missing_api_key",
                    headers=_challenge(),
                )
            action = what or WHAT[permission]
            raise ApiError(403, f"this API key's role ({self.role}) may not {action}", "permission_denied")


def principal(tenant: str, role: Role, key_id: str | None = None, local: bool = False) -> Principal:
    """`local`: the anonymous caller of a keyless loopback server, who may also read metrics."""
    extra: frozenset[Permission] = frozenset({"scrape"}) if local else frozenset()
    return Principal(tenant, role, key_id, PERMISSIONS[role] | extra)


def env_keys(settings: AuthSettings) -> dict[bytes, KeyInfo]:
    """`keys` ("key or sha256:<hex>" -> "tenant" or "tenant:role"; role defaults to operator) and `admin_keys`."""
    now = time.time()
    found: dict[bytes, KeyInfo] = {}
    for given, spec in settings.keys.items():
        tenant, _, role = spec.partition(":")
        try:
            info_role = Role(role or Role.OPERATOR)
            check_tenant(tenant)
        except (ValueError, AdapterRejected) as exc:
            raise ValueError(f"CHORUS_AUTH__KEYS: bad entry {spec!r}: {exc}") from None
        digest = parse_env_hash(given)
        found[digest] = KeyInfo(f"env_{digest.hex()[:12]}", tenant, info_role, now, source="env")
    for given in settings.admin_keys:
        digest = parse_env_hash(given)
        found[digest] = KeyInfo(f"env_{digest.hex()[:12]}", ENV_ADMIN_TENANT, Role.ADMIN, now, source="env")
    return found


def anonymous_role(settings: AuthSettings, keys: KeyRing) -> Role | None:
    """The role of callers without a key (None: refused). `auto`: operator when no key exists at all."""
    if settings.anonymous == "auto":
        return None if keys.has_keys() else Role.OPERATOR
    return None if settings.anonymous == "none" else Role(settings.anonymous)


class Authenticator:
    """API key -> principal. `authenticate` (async) never blocks the event loop: environment keys are matched in
    memory and file keys through `KeyCache`; `principal_for` is its blocking twin for worker threads."""

    def __init__(self, keys: KeyRing, anonymous: Role | None, cache: KeyCache | None = None, auto: bool = False):
        """`auto`: `anonymous` was chosen because no key existed (`CHORUS_AUTH__ANONYMOUS=auto`), so the first key
        created closes the server (`keys_appeared`)."""
        self.keys = keys
        self.anonymous = anonymous
        self.auto = auto
        self.open = anonymous is not None and not keys.has_keys()  # no keys at all: a local development server
        self.cache = cache or KeyCache(keys)

    def keys_appeared(self) -> bool:
        """Re-check a keyless server (blocking: reads the store): once a key exists, every caller needs one (and
        in `auto` mode callers without one are refused) — never the other way, so revoking the last key of a
        server that faces a network cannot open it. True when this call closed the server."""
        if not self.open or not self.keys.has_keys():
            return False
        if self.auto:
            self.anonymous = None
        self.open = False
        return True

    async def authenticate(self, authorization: str | None) -> Principal:
        digest = self._digest(authorization)
        if isinstance(digest, Principal):
            return digest
        info = self.keys.find_env(digest)
        return self._checked(info if info is not None else await self.cache.lookup(digest))

    def principal_for(self, authorization: str | None) -> Principal:
        """Blocking (it may read the key file): for code already off the event loop."""
        digest = self._digest(authorization)
        if isinstance(digest, Principal):
            return digest
        info = self.keys.find_env(digest)
        if info is None:
            cached = self.cache.cached(digest)
            info = cached.info if cached is not None else self.cache.verify(digest)
        return self._checked(info)

    def close(self) -> None:
        self.cache.close()
        self.keys.close()

    def _digest(self, authorization: str | None) -> Principal | bytes:
        """The anonymous principal where no key is needed or given (401 where one is needed), else the key's hash."""
        if self.open:  # no key exists to check against: OpenAI SDKs always send one ("unused"); ignore it
            role = Role.OPERATOR if self.anonymous is None else self.anonymous
            # Metrics only for the loopback-only modes (auto, operator): an explicit `user` may face a network.
            return principal(ANONYMOUS_TENANT, role, local=role is Role.OPERATOR)
        if not authorization:
            if self.anonymous is None:
                raise ApiError(
                    401, "missing API key: send 'Authorization: Bearer <key>'", "missing_api_key", headers=_challenge()
                )
            return principal(ANONYMOUS_TENANT, self.anonymous)
        scheme, _, secret = authorization.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise ApiError(
                401, "malformed Authorization header: send 'Bearer <key>'", "invalid_api_key", headers=_challenge()
            )
        return key_hash(secret.strip())

    def _checked(self, info: KeyInfo | None) -> Principal:
        if info is None:
            raise ApiError(401, "invalid API key", "invalid_api_key", headers=_challenge())
        if info.expired(time.time()):
            raise ApiError(401, "this API key has expired; ask for a new one", "expired_api_key", headers=_challenge())
        if info.source == "file":
            self.keys.touch_later(info.id, info.last_used_at)
        return principal(info.tenant, info.role, info.id)


def _challenge() -> dict[str, str]:
    return {"WWW-Authenticate": "Bearer"}


async def current_principal(request: Request) -> Principal:
    """FastAPI dependency: the caller (401 when a key is needed and missing or wrong). Also noted on the request
    for the audit log and request metrics."""
    who = getattr(request.state, "principal", None)  # the Admission middleware authenticated /v1/ requests
    if who is None:
        authenticator: Authenticator = request.app.state.chorus.auth
        who = await authenticator.authenticate(request.headers.get("authorization"))
        request.state.principal = who
    return who
