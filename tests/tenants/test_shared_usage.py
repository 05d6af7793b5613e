"""Daily usage is one count per tenant for every process on a tenant database: each `Quotas` (one per server)
reports, and enforces the daily audio quota on, what all of them have written, not only what it admitted itself.
Two `Quotas` over two handles on one SQLite file stand for two servers; time is injected and flushes called by hand."""

from __future__ import annotations

import pytest

from chorus_server.errors import ApiError
from chorus_server.settings import TenantLimits
from chorus_server.tenants.quotas import Quotas
from chorus_server.tenants.sqlite import SqliteTenantStore

NOON = 1_780_000_000.0  # a fixed day, far from midnight UTC


@pytest.fixture
def two_servers(tmp_path):
    path = tmp_path / "tenants.sqlite3"
    limits = TenantLimits(audio_seconds_per_day=100)
    first, second = (Quotas(limits, SqliteTenantStore(path), clock=lambda: NOON) for _ in range(2))
    yield first, second
    first.close()
    second.close()


def admit(quotas: Quotas, tenant: str, audio: float) -> None:
    lease = quotas.admit_request(tenant)
    quotas.check_audio(tenant, audio)
    quotas.charge_audio(tenant, audio)
    quotas.release(tenant, lease)


def test_usage_on_one_server_counts_what_another_admitted(two_servers):
    first, second = two_servers
    admit(second, "acme", 10)  # the second server knows the tenant before the first admits anything
    admit(first, "acme", 20)
    admit(first, "acme", 30)
    assert first.usage("acme")["requests"] == 2  # its own counts, before any flush
    first.flush()
    assert second.usage("acme")["requests"] == 3
    assert second.usage("acme")["audio_seconds"] == 60
    second.flush()
    assert first.usage("acme")["requests"] == 3


def test_the_daily_audio_quota_counts_what_other_servers_admitted(two_servers):
    first, second = two_servers
    admit(second, "acme", 1)
    admit(first, "acme", 90)
    first.flush()
    second.flush()  # takes the day's totals of both
    with pytest.raises(ApiError) as refused:
        second.check_audio("acme", 20)  # 91 + 20 > 100, though the second server itself admitted 1 s
    assert refused.value.status_code == 429 and "daily audio quota" in refused.value.message
    second.check_audio("acme", 9)
