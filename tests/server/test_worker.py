"""The inference worker with a stand-in engine: failure isolation, dropped work, draining."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pytest

from chorus_server.batching import BatchLimits, WorkItem
from chorus_server.metrics import Metrics
from chorus_server.worker import DeadlineExceeded, Worker

POISON = 666.0


class FakeEngine:
    """forward() returns each item's first sample as a (1, 1) logit and raises if any item is poisoned."""

    preprocess = SimpleNamespace(sampling_rate=16000)

    def __init__(self, gate: threading.Event | None = None):
        self.calls: list[int] = []
        self.gate = gate

    def forward(self, waveforms, lengths, adapters):
        if self.gate is not None:
            self.gate.wait(10)
        self.calls.append(len(adapters))
        if bool((waveforms == POISON).any()):
            raise RuntimeError("poisoned input")
        return [waveforms[i, :1].reshape(1, 1).clone() for i in range(len(adapters))]


def work(value: float, deadline: float = 1e12) -> WorkItem:
    return WorkItem(np.full(400, value, np.float32), adapter=None, enqueued=0.0, deadline=deadline)  # type: ignore[arg-type]


def make_worker(engine: FakeEngine, max_items: int = 8, max_wait: float = 10.0) -> Worker:
    return Worker(engine, BatchLimits(max_items, 10**9, max_wait), Metrics())  # type: ignore[arg-type]


def test_a_failing_batch_fails_only_its_culprit():
    engine = FakeEngine()
    worker = make_worker(engine, max_items=3)
    items = [work(1.0), work(POISON), work(3.0)]
    worker.submit(items)  # three items fill the batch: dispatched without waiting
    worker.start()
    assert float(items[0].future.result(10)) == 1.0
    assert float(items[2].future.result(10)) == 3.0
    with pytest.raises(RuntimeError, match="poisoned"):
        items[1].future.result(10)
    assert engine.calls == [3, 1, 1, 1]  # the batch, then each member alone once
    worker.stop(10)


def test_expired_and_cancelled_work_never_runs():
    gate = threading.Event()
    engine = FakeEngine(gate)
    worker = make_worker(engine, max_items=1, max_wait=0.0)
    worker.start()
    first = work(1.0)
    worker.submit([first])  # occupies the worker (blocked on the gate)
    expired, cancelled, kept = work(2.0, deadline=0.0), work(3.0), work(4.0)
    worker.submit([expired, cancelled, kept])
    cancelled.future.cancel()
    gate.set()
    assert float(first.future.result(10)) == 1.0
    assert float(kept.future.result(10)) == 4.0
    with pytest.raises(DeadlineExceeded):
        expired.future.result(10)
    assert cancelled.future.cancelled()
    assert engine.calls == [1, 1]
    assert worker.queued_samples == 0
    worker.stop(10)


def test_stop_drains_everything_admitted_then_refuses_new_work():
    engine = FakeEngine()
    worker = make_worker(engine, max_items=2, max_wait=3600)  # would wait an hour for company, but draining
    items = [work(float(i)) for i in range(5)]
    worker.submit(items)
    worker.start()
    worker.stop(10)
    assert not worker.is_alive()
    assert [float(i.future.result(0)) for i in items] == [0.0, 1.0, 2.0, 3.0, 4.0]
    with pytest.raises(RuntimeError, match="shutting down"):
        worker.submit([work(9.0)])


def test_worker_survives_an_error_and_keeps_serving():
    engine = FakeEngine()
    worker = make_worker(engine, max_items=1, max_wait=0.0)
    worker.start()
    bad, good = work(POISON), work(5.0)
    worker.submit([bad])
    with pytest.raises(RuntimeError):
        bad.future.result(10)
    worker.submit([good])
    assert float(good.future.result(10)) == 5.0
    assert worker.is_alive()
    worker.stop(10)
