"""Latency of the cluster-wide limit primitives (`chorus_server.tenants.postgres.limits`) on loopback: a throwaway
PostgreSQL server (`tests.postgres_server`, fsync off unless --durable), a connection from a psycopg pool in
autocommit mode, N calls of each primitive one after another; prints p50/p95/p99 in milliseconds.

    python -m benchmarks.pg_limits_latency [--calls 1000] [--durable] [--session-async-commit]

Not part of `make bench` yet: the per-request comparison with SQLite comes with the PostgreSQL backend."""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import psycopg
from psycopg_pool import ConnectionPool

from chorus_server.tenants.postgres import limits, migrations
from tests.postgres_server import postgres


def _summary(samples: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(samples, n=100)
    return {"p50_ms": round(cuts[49] * 1e3, 3), "p95_ms": round(cuts[94] * 1e3, 3), "p99_ms": round(cuts[98] * 1e3, 3)}


def _timed(calls: int, call: Callable[[int], object]) -> dict[str, float]:
    for i in range(20):  # warm up: the driver prepares statements after a few executions
        call(-i - 1)
    samples = []
    for i in range(calls):
        started = time.perf_counter()
        call(i)
        samples.append(time.perf_counter() - started)
    return _summary(samples)


def measure(url: str, calls: int, session_async_commit: bool = False) -> dict[str, dict[str, float]]:
    with psycopg.connect(url, autocommit=True) as conn:
        migrations.migrate(conn)
    results = {}
    kwargs: dict[str, object] = {"autocommit": True}
    if session_async_commit:  # limit writes need not wait for the disk: a crash loses < 1 s of bucket updates
        kwargs["options"] = "-c synchronous_commit=off"
    with ConnectionPool(url, min_size=1, max_size=2, kwargs=kwargs, open=True) as pool:

        def take(i: int) -> None:
            with pool.connection() as conn:
                limits.take(conn, "acme", "requests", capacity=1e9, per_second=1e6)

        def lease(i: int) -> None:
            with pool.connection() as conn:
                limits.acquire(conn, "acme", f"lease-{i}", holder="bench", limit=64, ttl=30)
                limits.release(conn, "acme", f"lease-{i}")

        def usage(i: int) -> None:
            with pool.connection() as conn:
                limits.add_usage(conn, "acme", "2026-05-20", 1, 2.5)

        results["take (sync pool)"] = _timed(calls, take)
        results["acquire + release lease (2 calls)"] = _timed(calls, lease)
        results["add usage"] = _timed(calls, usage)
    return results


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--calls", type=int, default=1000)
    args.add_argument("--durable", action="store_true", help="fsync and synchronous commit on (PostgreSQL defaults)")
    args.add_argument(
        "--session-async-commit", action="store_true", help="the pool's sessions set synchronous_commit=off"
    )
    options = args.parse_args()
    settings = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"} if options.durable else None
    with postgres(settings=settings) as url:
        print(json.dumps(measure(url, options.calls, options.session_async_commit), indent=2))


if __name__ == "__main__":
    main()
