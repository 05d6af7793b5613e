"""Priority classes in collect_batch (pure, explicit clock): live work first, fairness inside a class, bulk never
starves, and less urgent batches stay small while live work is about."""

from __future__ import annotations

import threading
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest

from chorus_server.batching import BatchLimits, Priority, WorkItem, collect_batch, passes_over
from chorus_server.metrics import Metrics
from chorus_server.worker import Worker
from tests.server.conftest import transcribe, wav

LIVE, FILE, FLEX = Priority.LIVE, Priority.FILE, Priority.FLEX
LIMITS = BatchLimits(max_items=4, max_samples=8000, max_wait=0.010, bulk_passes=3, interactive_bulk_samples=2000)


def item(length: int, priority: Priority, tenant: str = "a", enqueued: float = 0.0) -> WorkItem:
    samples = np.zeros(length, np.float32)
    return WorkItem(samples, None, enqueued, 100.0, tenant, priority=priority)  # type: ignore[arg-type]


# (name, queue as (length, class, tenant), passed_over, interactive_recent, indices of the expected batch)
CASES = [
    ("live before older files", [(2000, FILE, "a"), (2000, FILE, "a"), (500, LIVE, "b")], 0, False, [2]),
    ("files before flex", [(1000, FLEX, "a"), (1000, FILE, "b"), (1000, FILE, "b")], 0, False, [1, 2]),
    ("a batch holds one class", [(500, LIVE, "a"), (500, FILE, "a"), (500, LIVE, "a")], 0, False, [0, 2]),
    ("fair inside the class", [(500, LIVE, "a"), (500, LIVE, "a"), (500, LIVE, "a"), (500, LIVE, "b")], 0, False,
     [0, 3, 1, 2]),
    ("bulk passed over too often gets a batch", [(500, LIVE, "a"), (3000, FILE, "b")], 3, False, [1]),
    ("then the oldest passed-over class", [(500, LIVE, "a"), (1000, FLEX, "c"), (1000, FILE, "b")], 3, False, [1]),
    ("a file batch shrinks while live work waits", [(1000, FILE, "a"), (1000, FILE, "a"), (400, LIVE, "b")], 3,
     False, [0, 1]),
    ("…and when live work was seen lately", [(1000, FILE, "a"), (1000, FILE, "a"), (1000, FILE, "a")], 0, True,
     [0, 1]),
    ("one window longer than the cap still runs alone", [(3000, FILE, "a"), (3000, FILE, "a")], 0, True, [0]),
    ("a long live window does not pad short steps", [(400, LIVE, "a"), (1800, LIVE, "b"), (400, LIVE, "c")], 0,
     False, [0, 2]),
    ("no live work about: the full budget", [(1000, FILE, "a"), (1000, FILE, "a"), (1000, FILE, "a")], 0, False,
     [0, 1, 2]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("queue", "passed_over", "recent", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_the_batch_each_queue_gets(queue, passed_over, recent, expected):
    items = [item(length, cls, tenant, enqueued=k * 0.001) for k, (length, cls, tenant) in enumerate(queue)]
    collected = collect_batch(items, LIMITS, now=1.0, passed_over=passed_over, interactive_recent=recent)
    assert collected.batch == [items[k] for k in expected]


def test_with_priorities_off_every_class_is_one_queue():
    files = [item(2000, FILE, enqueued=0.0), item(2000, FILE, enqueued=0.001)]
    live = item(500, LIVE, "b", enqueued=0.002)
    off = replace(LIMITS, priorities=False)
    assert collect_batch([*files, live], off, now=1.0, interactive_recent=True).batch[0] is files[0]


def test_live_work_waits_for_company_only_max_wait():
    live = item(500, LIVE, enqueued=1.0)
    queue = [item(2000, FILE, enqueued=0.0), live]
    early = collect_batch(queue, LIMITS, now=1.004)
    assert early.batch == [] and early.wait == pytest.approx(0.006)
    assert collect_batch(queue, LIMITS, now=1.010).batch == [live]


def test_bulk_is_served_within_bulk_passes_batches_under_a_live_flood():
    """Simulate the worker's loop: live items keep coming, one file waits; it runs within bulk_passes + 1 batches."""
    queue = [item(4000, FILE, "f", enqueued=0.0)]
    passed, batches = 0, 0
    while any(q.priority == FILE for q in queue):
        queue += [item(500, LIVE, "l", enqueued=batches) for _ in range(4)]
        batch = collect_batch(queue, LIMITS, now=batches + 1.0, passed_over=passed).batch
        queue = [q for q in queue if q not in batch]
        passed = passed + 1 if passes_over(batch, queue) else 0
        batches += 1
        assert batches <= LIMITS.bulk_passes + 1
    assert batches == LIMITS.bulk_passes + 1


class OrderEngine:
    """Records each batch's items (by their first sample); the first batch waits on `gate`."""

    preprocess = SimpleNamespace(sampling_rate=16000)

    def __init__(self, gate: threading.Event):
        self.gate, self.batches = gate, []

    def forward(self, waveforms, lengths, adapters):
        self.gate.wait(10)
        self.batches.append([float(w[0]) for w in waveforms])
        return [waveforms[i, :1].reshape(1, 1).clone() for i in range(len(adapters))]


def test_the_worker_runs_a_live_step_next_and_keeps_file_batches_small_while_live_work_is_about():
    gate = threading.Event()
    engine = OrderEngine(gate)
    limits = BatchLimits(4, 10**9, 0.0, bulk_passes=8, interactive_bulk_samples=400, interactive_linger=5.0)
    worker = Worker(engine, limits, Metrics(), clock=lambda: 0.0)  # type: ignore[arg-type]
    worker.start()

    def value(v: float, priority: Priority) -> WorkItem:
        return WorkItem(np.full(400, v, np.float32), None, 0.0, 1e12, "t", priority=priority)  # type: ignore[arg-type]

    running = value(1.0, FILE)
    worker.submit([running])
    while not worker._running:  # the first batch is on the (gated) device
        threading.Event().wait(0.001)
    files = [value(v, FILE) for v in (2.0, 3.0, 4.0)]
    step = value(9.0, LIVE)
    worker.submit([*files, step])
    gate.set()
    for queued in [*files, step]:
        queued.future.result(10)
    worker.stop(10)
    assert engine.batches == [[1.0], [9.0], [2.0], [3.0], [4.0]]  # files one window at a time after the step


def test_while_a_realtime_session_is_open_file_batches_stay_one_slice_even_between_its_steps():
    """No live step for longer than the linger (a pause between turns): the next step must still find at most one
    slice running, so the cap holds for as long as a session is open; once it closes, files get full batches."""
    gate = threading.Event()
    gate.set()
    engine = OrderEngine(gate)
    limits = BatchLimits(4, 10**9, 0.0, bulk_passes=8, interactive_bulk_samples=400, interactive_linger=1.0)
    worker = Worker(engine, limits, Metrics(), clock=lambda: 100.0)  # type: ignore[arg-type]

    def file(v: float) -> WorkItem:
        return WorkItem(np.full(400, v, np.float32), None, 0.0, 1e12, "t")  # type: ignore[arg-type]

    worker.live_session_opened()
    opened = [file(v) for v in (1.0, 2.0, 3.0)]
    worker.submit(opened)
    assert worker.bulk_waiting
    worker.start()
    for queued in opened:
        queued.future.result(10)
    assert not worker.bulk_waiting
    worker.live_session_closed()
    closed = [file(v) for v in (4.0, 5.0, 6.0)]
    worker.submit(closed)  # one call: all three are queued before the worker looks
    for queued in closed:
        queued.future.result(10)
    worker.stop(10)
    assert engine.batches == [[1.0], [2.0], [3.0], [4.0, 5.0, 6.0]]


def submitted_classes(client) -> list[list[Priority]]:
    """Spy on the worker: the classes of each submitted group of windows."""
    worker = client.app.state.chorus.worker
    real, seen = worker.submit, []

    def spy(items):
        seen.append([item.priority for item in items])
        real(items)

    worker.submit = spy
    return seen


def test_service_tier_flex_marks_a_files_windows_bulk_and_a_streams_first_window_is_live(client):
    seen = submitted_classes(client)
    assert transcribe(client, wav(1.0), "eng-0").status_code == 200
    assert transcribe(client, wav(1.0), "eng-0", service_tier="flex").status_code == 200
    assert transcribe(client, wav(1.0), "eng-0", stream="true").status_code == 200
    assert transcribe(client, wav(1.0), "eng-0", stream="true", service_tier="flex").status_code == 200
    assert seen == [[FILE], [FLEX], [LIVE], [FLEX]]
    refused = transcribe(client, wav(1.0), "eng-0", service_tier="urgent")
    assert refused.status_code == 422 and "service_tier" in refused.text
