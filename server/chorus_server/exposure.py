"""Safe defaults for where the server listens: a server reachable from other machines never runs without keys
unless anonymous access was switched on explicitly, and then only as `user`."""

from __future__ import annotations

import ipaddress

from chorus_server.auth import anonymous_role
from chorus_server.runtime import key_ring
from chorus_server.settings import Settings
from chorus_server.tenants import open_tenant_store
from chorus_server.tenants.base import Role


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost: assume it is reachable


def exposure_problem(settings: Settings, host: str) -> str | None:
    """Why the server must not start on `host` with these settings (None: it may)."""
    if is_loopback(host):
        return None
    tenants = open_tenant_store(settings)  # closed again: on PostgreSQL a pool of connections and its threads
    keys = key_ring(settings, tenants)
    try:
        role = anonymous_role(settings.auth, keys)
    finally:
        keys.close()
        tenants.close()
    if settings.auth.anonymous == "auto" and role is not None:
        return (
            f"refusing to listen on {host} without API keys: create one with "
            "`chorus keys create --tenant NAME --role admin` (or set CHORUS_AUTH__ADMIN_KEYS), "
            "or allow anonymous transcription explicitly with CHORUS_AUTH__ANONYMOUS=user"
        )
    if role not in (None, Role.USER):
        return f"CHORUS_AUTH__ANONYMOUS={settings.auth.anonymous} is allowed on loopback only; use 'user' or 'none'"
    return None
