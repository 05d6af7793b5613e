"""Which adapter a reference means for a caller, and the rule that hidden looks exactly like missing.

Adapters live in their owner's namespace: the full ID is `owner/name`. A caller may write `name` or `owner/name`,
each optionally with `@N`:

- `name` means the caller's own `caller/name` if it exists, else the public adapter called `name` (public names
  are one shared namespace: at most one public adapter per name).
- `owner/name` means that adapter, if the caller may see it: its own, a public one, or any for an admin.

Visibility belongs to each version. For another tenant, `owner/name` (or a public `name`) means the newest
*public* version, and `owner/name@N` exists only if version N is public: an older version uploaded while
private stays hidden after a newer one is published, until its owner publishes it.

Another tenant's private adapter answers exactly as a missing one — same status, code, message and headers —
and resolving it reads nothing of that adapter (only the public-name index), so it costs the same time too.
"""

from __future__ import annotations

from dataclasses import replace

from chorus_server.auth import Principal
from chorus_store.base import AdapterRecord, AdapterStore, split_ref
from chorus_store.common import newest_public
from chorus_store.errors import AdapterCorrupt, AdapterNotFound, VersionNotFound


def not_found(ref: str) -> AdapterNotFound:
    return AdapterNotFound(f"adapter {ref!r} not found; list adapters with GET /v1/adapters")


def own_id(ref: str, who: Principal) -> tuple[str, int | None]:
    """(full ID, version) of `ref` in the namespace it names, the caller's when it names none."""
    parsed = split_ref(ref)
    return f"{parsed.owner or who.tenant}/{parsed.name}", parsed.version


def resolve(store: AdapterStore, ref: str, who: Principal) -> AdapterRecord:
    """The stored version `ref` means for `who` (raises the same `AdapterNotFound` for hidden and missing)."""
    parsed = split_ref(ref)
    suffix = "" if parsed.version is None else f"@{parsed.version}"
    if parsed.owner is not None and (parsed.owner == who.tenant or who.admin):
        return store.get(ref)  # the caller's own namespace (or an admin): every answer may be told
    if parsed.owner is None:
        try:
            return store.get(f"{who.tenant}/{parsed.name}{suffix}")
        except AdapterNotFound:
            pass
    owner = store.public_owner(parsed.name)
    if owner is None or (parsed.owner is not None and owner != parsed.owner):
        raise not_found(ref)
    adapter_id = f"{owner}/{parsed.name}"
    try:
        record = newest_public(store, adapter_id) if parsed.version is None else store.get(f"{adapter_id}{suffix}")
    except (AdapterNotFound, VersionNotFound, AdapterCorrupt):
        # A stale claim, or a version that is missing or hidden: the same answer, which lists no versions.
        raise not_found(ref) from None
    if record is None or record.visibility != "public":
        raise not_found(ref)
    return visible_part(record, who)


def visible_part(record: AdapterRecord, who: Principal) -> AdapterRecord:
    """`record` as `who` may see it: another tenant learns of no private version (not even its number)."""
    if who.admin or record.owner == who.tenant:
        return record
    public = list(record.public_versions)
    return replace(record, versions=public, is_current=bool(public) and record.version == public[-1])
