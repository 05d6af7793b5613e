"""The tenant database's schema as numbered migrations, applied in order by `migrations.migrate`.

Rules for adding one: append, never edit or reorder a released migration; keep it additive (new tables,
columns with defaults, indexes) so processes still running the previous release keep working while the new one
rolls out. Times the limits use are float seconds since the epoch from the database server's clock (every
process agrees on one clock); key times are float epoch seconds as in the SQLite backend; audit times are
timestamptz, for range queries."""

from __future__ import annotations

from dataclasses import dataclass

CHANGES_CHANNEL = "chorus_tenant_changes"  # NOTIFY channel; the payload is the new change counter
# First key of the two-key advisory locks that serialize lease acquisitions per tenant (the second is
# hashtext(tenant)); the two-key space is apart from the one-key lock of the migrations.
LEASE_LOCK_CLASS = 0x6C656173  # "leas"


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    sql: str  # one or more statements, run in the migration's transaction


INITIAL = f"""
CREATE TABLE api_keys (
    id text PRIMARY KEY,
    hash bytea NOT NULL UNIQUE,          -- SHA-256 of the secret; the secret is never stored
    tenant text NOT NULL,
    role text NOT NULL CHECK (role IN ('admin', 'operator', 'user', 'metrics')),
    name text,
    created_at double precision NOT NULL,
    expires_at double precision,
    revoked_at double precision,
    last_used_at double precision
);
CREATE INDEX api_keys_tenant ON api_keys (tenant);

CREATE TABLE tenant_limits (
    tenant text PRIMARY KEY,
    limits jsonb NOT NULL                -- overrides of the settings' defaults, by TenantLimits field name
);

CREATE TABLE usage_daily (
    tenant text NOT NULL,
    day date NOT NULL,                   -- UTC
    requests bigint NOT NULL DEFAULT 0,
    audio_seconds double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, day)
);
CREATE INDEX usage_daily_day ON usage_daily (day);

CREATE TABLE audit (
    id bigserial PRIMARY KEY,
    time timestamptz NOT NULL DEFAULT now(),
    actor text,                          -- key:<id>, cli:<OS user>, anonymous
    tenant text,
    role text,
    key_id text,
    action text NOT NULL,
    target text,
    outcome text NOT NULL,
    request_id text,
    details jsonb NOT NULL DEFAULT '{{}}'::jsonb
);
CREATE INDEX audit_tenant_time ON audit (tenant, time);
CREATE INDEX audit_time ON audit (time);

CREATE TABLE rate_buckets (
    tenant text NOT NULL,
    bucket text NOT NULL,                -- 'requests', 'audio_seconds', ...
    tokens double precision NOT NULL,    -- may be negative: a debt (audio charged after decoding)
    updated_at double precision NOT NULL,
    last_wait double precision NOT NULL DEFAULT 0,  -- the latest take's verdict (0: admitted), which it returns
    PRIMARY KEY (tenant, bucket)
);

CREATE TABLE concurrency_leases (
    tenant text NOT NULL,
    lease_id text NOT NULL,
    holder text NOT NULL,                -- the process holding it (host:pid:...), for operators
    expires_at double precision NOT NULL,
    PRIMARY KEY (tenant, lease_id)
);
CREATE INDEX concurrency_leases_expiry ON concurrency_leases (tenant, expires_at);
CREATE INDEX concurrency_leases_holder ON concurrency_leases (holder);

-- Take a lease if the tenant has fewer than p_limit live ones, dropping its expired ones first. The advisory
-- lock serializes acquisitions per tenant until the transaction ends, and each statement of a (volatile)
-- function takes a new snapshot, so the count sees every lease committed before the lock was granted.
CREATE FUNCTION acquire_lease(p_tenant text, p_lease_id text, p_holder text, p_limit integer,
                              p_ttl double precision, p_now double precision)
RETURNS TABLE (admitted boolean, in_use integer) LANGUAGE plpgsql AS $$
DECLARE
    now_s double precision := COALESCE(p_now, extract(epoch FROM clock_timestamp()));
    live integer;
BEGIN
    PERFORM pg_advisory_xact_lock({LEASE_LOCK_CLASS}, hashtext(p_tenant));
    DELETE FROM concurrency_leases c WHERE c.tenant = p_tenant AND c.expires_at <= now_s;
    SELECT count(*) INTO live FROM concurrency_leases c WHERE c.tenant = p_tenant;
    IF live >= p_limit THEN
        RETURN QUERY SELECT false, live;
    ELSE
        INSERT INTO concurrency_leases (tenant, lease_id, holder, expires_at)
        VALUES (p_tenant, p_lease_id, p_holder, now_s + p_ttl);
        RETURN QUERY SELECT true, live + 1;
    END IF;
END
$$;

-- One row counting every change to keys and limits, so that processes can poll one cheap row (or LISTEN).
CREATE TABLE changes (
    id integer PRIMARY KEY CHECK (id = 1),
    counter bigint NOT NULL
);
INSERT INTO changes (id, counter) VALUES (1, 0);

CREATE FUNCTION bump_changes() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    now_counter bigint;
BEGIN
    UPDATE changes SET counter = counter + 1 WHERE id = 1 RETURNING counter INTO now_counter;
    PERFORM pg_notify('{CHANGES_CHANNEL}', now_counter::text);
    RETURN NULL;
END
$$;
-- last_used_at is bookkeeping, written once a minute per key: not a change anyone must react to.
CREATE TRIGGER api_keys_changed
    AFTER INSERT OR DELETE OR TRUNCATE OR UPDATE OF id, hash, tenant, role, name, expires_at, revoked_at
    ON api_keys FOR EACH STATEMENT EXECUTE FUNCTION bump_changes();
CREATE TRIGGER tenant_limits_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON tenant_limits FOR EACH STATEMENT EXECUTE FUNCTION bump_changes();
"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "tenant state: keys, limits, usage, audit, cluster-wide limits", INITIAL),
)
