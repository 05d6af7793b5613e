"""Tenant database: the per-request latency the PostgreSQL backend adds over SQLite, and how far two processes on
one PostgreSQL database admit past a tenant's request rate.

Latency: two `chorus serve` processes side by side, one on its SQLite file, one on a throwaway PostgreSQL server
(`tests.postgres_server`: loopback, fsync off unless --durable), each with a key made through its API (a stored
key, as `chorus keys` makes) and the tenant's limits raised out of the way. A cheap authenticated request that goes
through authentication and rate limiting (`GET /v1/models`: a listing spends the request rate and a concurrency
slot, and is not usage) is sent `--requests` times at each concurrency, the two servers in interleaved rounds so
that drift on a shared machine hits both alike; p50/p95 of all rounds and the differences are reported.

Over-admission: two processes on one PostgreSQL database and a tenant limit of `--limit`/minute. The bucket is
first drained (requests until both servers answer 429), then clients send at 3x the limit for `--window` seconds,
open loop, alternating servers; admitted / allowed, where allowed is what the refill gives over the window (the
bucket held under one token at its start). The same run on two processes sharing one SQLite file (per-process
buckets) shows what a per-process limit admits.

    python -m benchmarks.tenant_db [--requests 200] [--rounds 6] [--concurrency 1 16] [--limit 600] [--window 20]
                                   [--durable] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import percentile
from chorus_server.background import ServerProcess
from chorus_server.engine.random_model import write_random_model
from tests import postgres_server

ADMIN = "sk-bench-admin"
UNLIMITED = {"requests_per_minute": 1e9, "concurrent_requests": 100_000}


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@contextlib.contextmanager
def server(model: Path, root: Path, database: dict[str, str]) -> Iterator[str]:
    """`chorus serve` (its own process, as deployed) on the tenant database `database` names; yields its URL."""
    root.mkdir(parents=True, exist_ok=True)
    env = {
        **database,
        "CHORUS_BACKBONE": str(model),
        "CHORUS_STORE": str(root / "store"),
        "CHORUS_DATA_DIR": str(root),
        "CHORUS_DEVICE": "cpu",
        "CHORUS_DTYPE": "float32",
        "CHORUS_VAD__ENABLED": "false",
        "CHORUS_AUTH__ADMIN_KEYS": json.dumps([ADMIN]),
    }
    with ServerProcess(env, root, args=("--log-level", "warning")) as process:
        yield process.url


def tenant_key(url: str, tenant: str, limits: dict[str, float]) -> str:
    """A stored key of `tenant` made through the server's API, with the tenant's limits set to `limits`."""
    with httpx.Client(base_url=url, headers=_auth(ADMIN), timeout=30) as admin:
        made = admin.post("/v1/keys", json={"tenant": tenant, "role": "user"})
        made.raise_for_status()
        admin.put(f"/v1/tenants/{tenant}/limits", json=limits).raise_for_status()
        return str(made.json()["key"])


async def _latencies(url: str, key: str, requests: int, concurrency: int) -> list[float]:
    """Seconds per `GET /v1/models`, `requests` of them with at most `concurrency` in flight (keep-alive)."""
    latencies: list[float] = []
    pool = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, headers=_auth(key), timeout=60, limits=pool) as client:

        async def worker(count: int) -> None:
            for _ in range(count):
                started = time.perf_counter()
                response = await client.get("/v1/models")
                latencies.append(time.perf_counter() - started)
                if response.status_code != 200:
                    raise RuntimeError(f"GET /v1/models answered {response.status_code}: {response.text[:200]}")

        await client.get("/v1/models")  # a connection, and the key verified and cached, before timing
        shares = [requests // concurrency + (i < requests % concurrency) for i in range(concurrency)]
        await asyncio.gather(*(worker(n) for n in shares))
    return latencies


def latency(targets: dict[str, tuple[str, str]], requests: int, rounds: int, levels: list[int]) -> dict[str, Any]:
    """p50/p95 (ms) per backend and concurrency over all rounds, and PostgreSQL minus SQLite: of the pooled
    percentiles, and the median of the rounds' p50 differences. The backends take turns in ABBA order, so neither
    always runs first (warmer caches, or a neighbour's burst) in a round."""
    results: dict[str, Any] = {}
    names = list(targets)
    for concurrency in levels:
        samples: dict[str, list[float]] = {name: [] for name in targets}
        differences = []
        for i in range(rounds):
            p50 = {}
            for name in names if i % 2 == 0 else names[::-1]:
                url, key = targets[name]
                round_samples = asyncio.run(_latencies(url, key, requests, concurrency))
                samples[name] += round_samples
                p50[name] = percentile(round_samples, 0.5)
            differences.append((p50["postgresql"] - p50["sqlite"]) * 1e3)
        level: dict[str, Any] = {
            name: {"p50_ms": percentile(s, 0.5) * 1e3, "p95_ms": percentile(s, 0.95) * 1e3, "n": len(s)}
            for name, s in samples.items()
        }
        for q in ("p50_ms", "p95_ms"):
            level[f"added_{q}"] = level["postgresql"][q] - level["sqlite"][q]
        level["added_p50_ms_per_round"] = sorted(differences)
        level["added_p50_ms_median_of_rounds"] = statistics.median(differences)
        results[str(concurrency)] = level
    return results


async def _flood(urls: list[str], key: str, per_minute: float, window: float) -> dict[str, Any]:
    """Drain the tenant's bucket, then send at 3x `per_minute` for `window` seconds alternating `urls`; counts."""
    async with httpx.AsyncClient(headers=_auth(key), timeout=60, limits=httpx.Limits(max_connections=200)) as client:
        refused: set[str] = set()
        drained = 0
        while refused != set(urls):  # every process's view of the bucket(s) is empty
            url = urls[drained % len(urls)]
            drained += 1
            if (await client.get(f"{url}/v1/models")).status_code == 429:
                refused.add(url)
            if drained > 10 * per_minute + 100:
                raise RuntimeError("the tenant's bucket never emptied: is its limit set?")
        admitted = {url: 0 for url in urls}
        statuses: dict[int, int] = {}

        async def one(url: str) -> None:
            status = (await client.get(f"{url}/v1/models")).status_code
            statuses[status] = statuses.get(status, 0) + 1
            admitted[url] += status == 200

        every = 60 / (3 * per_minute)
        started = time.perf_counter()
        tasks = []
        for i in range(int(window / every)):
            await asyncio.sleep(max(0.0, started + i * every - time.perf_counter()))
            tasks.append(asyncio.create_task(one(urls[i % len(urls)])))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - started
    allowed = per_minute / 60 * elapsed
    total = sum(admitted.values())
    return {
        "sent": len(tasks),
        "admitted": total,
        "admitted_per_process": list(admitted.values()),
        "allowed": round(allowed, 1),
        "ratio": total / allowed,
        "seconds": round(elapsed, 2),
        "statuses": statuses,
        "drain_requests": drained,
    }


def over_admission(urls: list[str], per_minute: float, window: float) -> dict[str, Any]:
    tenant = f"flood-{uuid.uuid4().hex[:6]}"
    key = tenant_key(urls[0], tenant, {"requests_per_minute": per_minute, "concurrent_requests": 1000})
    time.sleep(2.5)  # the limit and the key reach the other process (within 2 s), before the flood starts
    return asyncio.run(_flood(urls, key, per_minute, window))


def run(args: argparse.Namespace) -> dict[str, Any]:
    durable = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"} if args.durable else None
    with tempfile.TemporaryDirectory(prefix="chorus-tenant-db-") as scratch, contextlib.ExitStack() as stack:
        root = Path(scratch)
        model = root / "model"
        write_random_model(model, "tiny", num_adapters=1, seed=0)
        pg_url = stack.enter_context(postgres_server.postgres(settings=durable))
        pg = {"CHORUS_DATABASE_URL": pg_url}
        sqlite = {"CHORUS_AUTH__KEY_FILE": str(root / "tenants.sqlite3")}
        pg_a = stack.enter_context(server(model, root / "pg-a", pg))
        sqlite_a = stack.enter_context(server(model, root / "sqlite-a", sqlite))
        targets = {
            "sqlite": (sqlite_a, tenant_key(sqlite_a, "bench", UNLIMITED)),
            "postgresql": (pg_a, tenant_key(pg_a, "bench", UNLIMITED)),
        }
        result: dict[str, Any] = {
            "requests_per_round": args.requests,
            "rounds": args.rounds,
            "postgres_durable": args.durable,
            "latency": latency(targets, args.requests, args.rounds, args.concurrency),
        }
        pg_b = stack.enter_context(server(model, root / "pg-b", pg))
        result["over_admission"] = {"postgresql": over_admission([pg_a, pg_b], args.limit, args.window)}
        if not args.skip_sqlite_flood:
            sqlite_b = stack.enter_context(server(model, root / "sqlite-b", sqlite))
            result["over_admission"]["sqlite"] = over_admission([sqlite_a, sqlite_b], args.limit, args.window)
    result.update(limit_per_minute=args.limit, window_seconds=args.window)
    return result


def table(result: dict[str, Any]) -> str:
    """The docs/benchmarks.md table of a result."""
    rows = ["| measure | SQLite | PostgreSQL | added by PostgreSQL |", "| --- | --- | --- | --- |"]
    for level, r in result["latency"].items():
        for q in ("p50_ms", "p95_ms"):
            rows.append(
                f"| `GET /v1/models`, {level} client{'s' if level != '1' else ''}, {q[:3]} | "
                f"{r['sqlite'][q]:.2f} ms | {r['postgresql'][q]:.2f} ms | **{r[f'added_{q}']:+.2f} ms** |"
            )
        rounds = ", ".join(f"{d:+.2f}" for d in r["added_p50_ms_per_round"])
        rows.append(
            f"| … p50 added, median of rounds (each round: {rounds}) | | | "
            f"**{r['added_p50_ms_median_of_rounds']:+.2f} ms** |"
        )
    for backend, r in result["over_admission"].items():
        rows.append(
            f"| two processes, {result['limit_per_minute']:g}/min at 3x for {r['seconds']} s ({backend}) | "
            f"admitted {r['admitted']} {r['admitted_per_process']} of {r['allowed']} allowed | | "
            f"**{r['ratio']:.3f}×** |"
        )
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=200, help="requests per server per round and concurrency")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    p.add_argument("--limit", type=float, default=600, help="the flooded tenant's requests per minute")
    p.add_argument("--window", type=float, default=20, help="seconds of the flood at 3x the limit")
    p.add_argument("--durable", action="store_true", help="PostgreSQL with fsync and synchronous commit on")
    p.add_argument("--skip-sqlite-flood", action="store_true", help="no over-admission run on SQLite")
    p.add_argument("--json", type=Path, help="write the result as JSON here")
    args = p.parse_args()
    result = run(args)
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.write_text(text)
    print(text)
    print(table(result))


if __name__ == "__main__":
    main()
