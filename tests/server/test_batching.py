"""collect_batch is pure: table-driven cases with an explicit clock."""

from __future__ import annotations

import numpy as np
import pytest

from chorus_server.batching import BatchLimits, WorkItem, collect_batch

LIMITS = BatchLimits(max_items=3, max_samples=3000, max_wait=0.010)


def item(length: int, enqueued: float = 0.0, deadline: float = 100.0) -> WorkItem:
    return WorkItem(np.zeros(length, np.float32), adapter=None, enqueued=enqueued, deadline=deadline)  # type: ignore[arg-type]


def test_empty_queue_waits_for_arrivals():
    collected = collect_batch([], LIMITS, now=5.0)
    assert collected.batch == [] and collected.wait is None


def test_lone_item_waits_for_company_until_max_wait():
    queue = [item(500, enqueued=1.0)]
    early = collect_batch(queue, LIMITS, now=1.004)
    assert early.batch == [] and early.wait == pytest.approx(0.006)
    due = collect_batch(queue, LIMITS, now=1.010)
    assert due.batch == queue


def test_with_nobody_on_the_way_a_batch_leaves_at_once():
    queue = [item(500, enqueued=1.0), item(600, enqueued=1.0)]
    assert collect_batch(queue, LIMITS, now=1.0, company_expected=False).batch == queue


def test_draining_dispatches_without_waiting():
    queue = [item(500, enqueued=1.0)]
    assert collect_batch(queue, LIMITS, now=1.0, draining=True).batch == queue


def test_full_by_item_count_dispatches_immediately_oldest_first():
    queue = [item(100, enqueued=t) for t in (0.0, 0.1, 0.2, 0.3)]
    collected = collect_batch(queue, LIMITS, now=0.3)
    assert collected.batch == queue[:3]


def test_length_bucketing_prefers_items_close_to_the_oldest():
    oldest, long_one, close, closer = item(400, 0.0), item(990, 0.1), item(600, 0.2), item(420, 0.3)
    collected = collect_batch([oldest, long_one, close, closer], LIMITS, now=0.3)
    # Padded cost: 3 x 600 = 1800 <= 3000 with the two close ones; the long one waits for a later batch.
    assert collected.batch == [oldest, closer, close]


def test_padded_sample_budget_is_respected():
    queue = [item(1200, 0.0), item(1000, 0.1), item(1100, 0.2)]
    collected = collect_batch(queue, LIMITS, now=0.2)
    # 2 x 1200 = 2400 fits; a third would make 3 x 1200 = 3600 > 3000, so the batch is full and goes now.
    assert collected.batch == [queue[0], queue[2]]


def test_an_item_longer_than_the_budget_still_runs_alone():
    queue = [item(9000, 0.0)]
    assert collect_batch(queue, LIMITS, now=1.0).batch == queue


def test_expired_and_cancelled_items_are_dropped_not_batched():
    expired, cancelled, live = item(100, 0.0, deadline=0.5), item(100, 0.0), item(100, 0.0)
    cancelled.future.cancel()
    collected = collect_batch([expired, cancelled, live], LIMITS, now=1.0)
    assert collected.batch == [live]
    assert collected.expired == [expired]
    assert collected.cancelled == [cancelled]


def test_wait_never_passes_the_next_deadline():
    queue = [item(100, enqueued=1.0, deadline=1.004)]
    assert collect_batch(queue, LIMITS, now=1.0).wait == pytest.approx(0.004)
