"""Cluster-wide limit primitives against a real PostgreSQL: token buckets, concurrency leases, daily usage. The
concurrency tests run several threads, each on its own connection, at one row: the database must serialize them
so that no admission is lost or doubled."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

pytest.importorskip("psycopg")
import psycopg

from chorus_server.tenants.postgres import limits, migrations

T = TypeVar("T")


@pytest.fixture
def url(postgres_url: str) -> str:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        migrations.migrate(conn)
    return postgres_url


@pytest.fixture
def conn(url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(url, autocommit=True) as connection:
        yield connection


def hammer(url: str, threads: int, calls: int, call: Callable[[psycopg.Connection, int], T]) -> list[T]:
    """Run `call(conn, i)` `calls` times in each of `threads` threads (own connections, started together)."""
    barrier = threading.Barrier(threads)
    results: list[T] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def work() -> None:
        try:
            with psycopg.connect(url, autocommit=True) as connection:
                barrier.wait(timeout=30)
                for i in range(calls):
                    result = call(connection, i)
                    with lock:
                        results.append(result)
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert errors == []
    return results


# ---- token buckets -------------------------------------------------------------------------------------------


def test_a_new_bucket_is_full_and_refuses_without_taking(conn: psycopg.Connection) -> None:
    take = lambda cost, now: limits.take(conn, "acme", "requests", capacity=3, per_second=0.5, cost=cost, now=now)  # noqa: E731
    assert take(1, 100.0) == limits.BucketState(0.0, 2.0)
    assert take(2, 100.0) == limits.BucketState(0.0, 0.0)
    refused = take(1, 101.0)  # 0.5 tokens there: 1 s until the missing 0.5
    assert not refused.admitted and refused.wait == pytest.approx(1.0) and refused.tokens == 0.0
    assert take(1, 102.0).admitted  # the refusal took nothing: 1.0 token by now
    assert take(1, 102.0).wait == pytest.approx(2.0)
    assert take(10, 1000.0) == limits.BucketState(0.0, -7.0)  # over the capacity: waits for a full bucket, then debt
    assert take(1, 1010.0).wait == pytest.approx(6.0)  # debt repaid first: -7 + 5 = -2, 3 tokens (6 s) short


def test_forced_takes_leave_a_debt_and_peek_changes_nothing(conn: psycopg.Connection) -> None:
    def peek(now: float) -> limits.BucketState:
        return limits.peek(conn, "acme", "audio", capacity=60, per_second=1, cost=10, now=now)

    assert peek(0.0) == limits.BucketState(0.0, 60.0)
    limits.take(conn, "acme", "audio", capacity=60, per_second=1, cost=100, force=True, now=0.0)
    assert peek(20.0) == limits.BucketState(30.0, -20.0)  # 100 taken from 60: -40, +20 since
    assert peek(20.0) == limits.BucketState(30.0, -20.0)  # the first peek took nothing
    assert limits.take(conn, "other", "audio", capacity=60, per_second=1, now=0.0).tokens == 59.0  # tenants apart


def test_concurrent_takes_never_admit_more_than_the_bucket_holds(url: str) -> None:
    """Clock held still: exactly `capacity` admissions among many more attempts."""
    take = lambda conn, i: limits.take(conn, "acme", "requests", capacity=50, per_second=1.0, now=1000.0)  # noqa: E731
    results = hammer(url, threads=4, calls=40, call=take)
    assert sum(r.admitted for r in results) == 50


def test_concurrent_takes_on_the_real_clock_stay_within_capacity_plus_refill(url: str) -> None:
    capacity, rate = 20.0, 50.0
    take = lambda conn, i: limits.take(conn, "acme", "requests", capacity=capacity, per_second=rate)  # noqa: E731
    started = time.time()
    results = hammer(url, threads=2, calls=150, call=take)
    elapsed = time.time() - started
    admitted = sum(r.admitted for r in results)
    assert capacity <= admitted <= capacity + rate * elapsed


# ---- concurrency leases --------------------------------------------------------------------------------------


def test_concurrent_acquires_grant_exactly_the_limit(url: str) -> None:
    acquire = lambda conn, i: limits.acquire(  # noqa: E731
        conn, "acme", f"{threading.get_ident()}-{i}", holder="h", limit=5, ttl=60
    )
    results = hammer(url, threads=4, calls=10, call=acquire)
    assert sum(r.admitted for r in results) == 5
    assert max(r.in_use for r in results) == 5


def test_concurrent_acquire_release_cycles_never_exceed_the_limit(url: str) -> None:
    def cycle(conn: psycopg.Connection, i: int) -> int:
        lease = f"{threading.get_ident()}-{i}"
        state = limits.acquire(conn, "acme", lease, holder="h", limit=2, ttl=60)
        if state.admitted:
            limits.release(conn, "acme", lease)
        return state.in_use

    results = hammer(url, threads=4, calls=25, call=cycle)
    assert max(results) <= 2
    with psycopg.connect(url, autocommit=True) as conn:
        assert limits.in_use(conn, "acme") == 0


def test_leases_of_a_dead_holder_expire_and_a_live_holder_renews(conn: psycopg.Connection) -> None:
    def acquire(lease: str, holder: str, now: float) -> limits.LeaseState:
        return limits.acquire(conn, "acme", lease, holder=holder, limit=2, ttl=30, now=now)

    assert acquire("a", "dead", 0.0).admitted and acquire("b", "live", 0.0).admitted
    assert acquire("c", "live", 10.0) == limits.LeaseState(False, 2)
    assert limits.renew(conn, "live", ttl=30, now=20.0) == 1  # "b" now lives to 50; "a" still ends at 30
    assert acquire("c", "live", 31.0) == limits.LeaseState(True, 2)  # "a" expired, "b" renewed
    assert acquire("d", "live", 31.0) == limits.LeaseState(False, 2)
    assert limits.release(conn, "acme", "b") and not limits.release(conn, "acme", "b")
    assert limits.in_use(conn, "acme", now=31.0) == 1
    assert limits.expire(conn, now=1000.0) == 1
    assert limits.in_use(conn, "acme", now=0.0) == 0


# ---- daily usage ---------------------------------------------------------------------------------------------


def test_concurrent_usage_adds_are_exact(url: str, conn: psycopg.Connection) -> None:
    add = lambda c, i: limits.add_usage(c, "acme", "2026-05-20", 1, 0.25)  # noqa: E731
    hammer(url, threads=4, calls=50, call=add)
    assert limits.usage(conn, "acme", "2026-05-20") == limits.Usage(200, 50.0)
    assert limits.usage(conn, "acme", "2026-05-21") == limits.Usage(0, 0.0)


def test_usage_within_a_daily_audio_limit_never_passes_it(url: str, conn: psycopg.Connection) -> None:
    assert limits.add_usage(conn, "acme", "2026-05-20", 1, 11.0, audio_limit=10.0) is None  # alone too much
    add = lambda c, i: limits.add_usage(c, "acme", "2026-05-20", 1, 1.5, audio_limit=30.0)  # noqa: E731
    results = hammer(url, threads=4, calls=10, call=add)
    assert sum(r is not None for r in results) == 20  # 20 x 1.5 = 30 exactly
    assert limits.usage(conn, "acme", "2026-05-20") == limits.Usage(20, 30.0)


def test_bad_arguments_are_refused_before_the_database(conn: psycopg.Connection) -> None:
    with pytest.raises(ValueError, match="capacity > 0"):
        limits.take(conn, "acme", "requests", capacity=0, per_second=1)
    with pytest.raises(ValueError, match="0 or more tokens"):
        limits.take(conn, "acme", "requests", capacity=1, per_second=1, cost=-1)
    with pytest.raises(ValueError, match="usage only grows"):
        limits.add_usage(conn, "acme", "2026-05-20", -1)


def test_a_take_stamped_earlier_does_not_move_the_bucket_back(conn: psycopg.Connection) -> None:
    # A process whose clock is a little behind takes with an older `now`: it refills nothing, and the next take
    # must not count the time between the two stamps twice.
    bucket = {"capacity": 2.0, "per_second": 1.0}
    assert limits.take(conn, "acme", "requests", now=100.0, **bucket).admitted  # 1 left
    assert limits.take(conn, "acme", "requests", now=99.0, **bucket).admitted  # 0 left, still at t=100
    late = limits.take(conn, "acme", "requests", now=100.5, **bucket)  # 0.5 refilled since t=100: not enough
    assert not late.admitted and late.wait == pytest.approx(0.5)


# ---- the admission hot path: a lease and a token in one round trip --------------------------------------------


def test_acquire_and_take_pipelined_has_the_outcome_of_both_in_turn(conn: psycopg.Connection) -> None:
    def admit(lease: str, now: float) -> tuple[limits.LeaseState, limits.BucketState]:
        return limits.acquire_and_take(
            conn, "acme", lease, holder="h", limit=2, ttl=60, bucket="requests", capacity=3, per_second=1, now=now
        )

    leased, taken = admit("a", 100.0)
    assert leased.admitted and taken == limits.BucketState(0.0, 2.0)
    leased, taken = admit("b", 100.0)
    assert leased.admitted and taken.tokens == 1.0
    leased, taken = admit("c", 100.0)  # no slot: the token its take got is given back
    assert not leased.admitted and leased.in_use == 2
    assert limits.peek(conn, "acme", "requests", capacity=3, per_second=1, now=100.0).tokens == 1.0
    assert limits.in_use(conn, "acme", 100.0) == 2
    limits.release(conn, "acme", "a")
    limits.release(conn, "acme", "b")
    admit("d", 100.0)
    leased, taken = admit("e", 100.0)  # a slot, but the bucket is empty: the caller releases the lease
    assert leased.admitted and not taken.admitted and taken.wait == pytest.approx(1.0)


def test_concurrent_admissions_never_exceed_the_slots_or_the_tokens(url: str) -> None:
    def admit(conn: psycopg.Connection, i: int) -> tuple[limits.LeaseState, limits.BucketState]:
        return limits.acquire_and_take(
            conn,
            "acme",
            f"{threading.get_ident()}-{i}",
            holder="h",
            limit=100,
            ttl=60,
            bucket="requests",
            capacity=7,
            per_second=1e-9,
            now=500.0,
        )

    results = hammer(url, threads=4, calls=10, call=admit)
    assert sum(taken.admitted for _, taken in results) == 7  # 40 tries at a bucket of 7, slots to spare
