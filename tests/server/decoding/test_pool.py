"""The decode pool (`decoding/pool.py`): tenants take turns for its threads, and a job whose caller has gone before
it starts never runs."""

from __future__ import annotations

import asyncio
import threading

import pytest

from chorus_server.decoding.pool import FairPool


def test_a_tenant_with_many_queued_decodes_does_not_hold_up_anothers():
    pool = FairPool(workers=1)
    started, release = threading.Event(), threading.Event()
    order: list[str] = []

    def job(name: str, wait: bool = False):
        def run() -> str:
            if wait:
                started.set()
                release.wait(10)
            order.append(name)
            return name

        return run

    first = pool.submit("a", job("a0", wait=True))  # holds the only thread
    assert started.wait(10)
    queued = [pool.submit("a", job(f"a{i}")) for i in range(1, 6)]
    other = pool.submit("b", job("b0"))
    assert pool.waiting() == {"a": 5, "b": 1}
    release.set()
    assert other.result(10) == "b0" and all(f.result(10) for f in [first, *queued])
    assert order[:3] == ["a0", "a1", "b0"]  # b's only job runs right after a's next one, not after all five
    pool.shutdown()


def test_a_decode_whose_caller_left_before_it_started_is_dropped():
    pool = FairPool(workers=1)
    started, release, ran = threading.Event(), threading.Event(), []
    pool.submit("a", lambda: (started.set(), release.wait(10)))
    assert started.wait(10)

    async def caller_leaves() -> None:
        waiting = asyncio.ensure_future(pool.run("a", lambda: ran.append("late")))
        await asyncio.sleep(0.05)  # queued behind the running job
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting

    asyncio.run(caller_leaves())
    release.set()
    assert pool.submit("b", lambda: "after").result(10) == "after"
    assert ran == []
    pool.shutdown()


def test_errors_reach_the_caller_and_the_thread_goes_on():
    pool = FairPool(workers=2)

    def fails() -> None:
        raise ValueError("bad logits")

    with pytest.raises(ValueError, match="bad logits"):
        pool.submit("a", fails).result(10)
    assert pool.submit("a", lambda: 7).result(10) == 7
    pool.shutdown()
