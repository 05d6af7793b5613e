"""GPU worker start-up and pipelining, on the CPU: warm-up per shape bucket before ready (bounded, shrinking the
budget on out-of-memory), and batch N+1 staged on another thread while batch N runs."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from chorus_server.batching import BatchLimits, WorkItem
from chorus_server.engine import Engine, InputError
from chorus_server.engine.routing import Routing
from chorus_server.metrics import Metrics
from chorus_server.runtime import warm_up_plan
from chorus_server.settings import BatchSettings
from chorus_server.worker import WarmUp, Worker
from tests.server.test_worker import POISON, FakeEngine

RATE = 16000


def work(value: float, samples: int = 400) -> WorkItem:
    return WorkItem(np.full(samples, value, np.float32), adapter=None, enqueued=0.0, deadline=1e12)  # type: ignore[arg-type]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_worker_is_ready_only_after_warming_every_bucket_largest_first():
    gate, calls = threading.Event(), []

    def run(items: int, samples: int) -> None:
        gate.wait(10)
        calls.append((items, samples))

    plan = WarmUp(run, [RATE, 2 * RATE, 4 * RATE], seconds=60)
    worker = Worker(FakeEngine(), BatchLimits(8, 16 * RATE, 0.0), Metrics(), warm_up=plan)  # type: ignore[arg-type]
    worker.start()
    assert worker.is_alive() and not worker.is_ready()
    gate.set()
    item = work(1.0)
    worker.submit([item])
    assert float(item.future.result(10)) == 1.0  # queued during warm-up, served after it
    assert worker.is_ready()
    assert calls == [(4, 4 * RATE), (8, 2 * RATE), (8, RATE)]  # as many items as the budget holds
    worker.stop(10)


def test_out_of_memory_in_warm_up_shrinks_the_budget_before_traffic():
    calls = []

    def run(items: int, samples: int) -> None:
        calls.append(items)
        if items > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    metrics = Metrics()
    plan = WarmUp(run, [RATE], seconds=60)
    worker = Worker(FakeEngine(), BatchLimits(8, 8 * RATE, 0.0), metrics, warm_up=plan)  # type: ignore[arg-type]
    worker.start()
    worker.stop(10)
    assert calls == [8, 4, 2]
    assert worker.budget.limits().max_items == 2 and metrics.device_oom._value.get() == 2
    assert worker.fault is None


def test_warm_up_is_bounded_in_time():
    clock, calls = FakeClock(), []

    def run(items: int, samples: int) -> None:
        calls.append(samples)
        clock.now += 10.0  # every dummy batch takes 10 s

    plan = WarmUp(run, [RATE * s for s in range(1, 9)], seconds=25)
    worker = Worker(FakeEngine(), BatchLimits(8, 64 * RATE, 0.0), Metrics(), clock=clock, warm_up=plan)  # type: ignore[arg-type]
    worker.start()
    worker._warmed.wait(10)
    assert worker.is_ready()
    assert calls == [8 * RATE, 7 * RATE, 6 * RATE]  # the largest buckets; the rest stay cold
    worker.stop(10)


def test_the_warm_up_plan_runs_real_dummy_batches(random_model_dir):
    _, path = random_model_dir
    engine = Engine.from_pretrained(path, device="cpu").engine
    plan = warm_up_plan(engine, BatchLimits(4, 12 * RATE, 0.01), BatchSettings(chunk_seconds=3))
    assert plan is not None and plan.buckets == [RATE, 2 * RATE, 3 * RATE]
    plan.run(2, 2 * RATE)  # one forward through the real engine
    assert warm_up_plan(engine, BatchLimits(4, 12 * RATE, 0.01), BatchSettings(warmup_seconds=0)) is None


def test_warm_up_runs_every_kind_of_adapter_work(random_model_dir):
    """Before, the dummy batches used a head-only adapter: bottleneck, classifier (layer mix, CNN adapter,
    pooling) and routing kernels stayed cold until a client's batch ran them."""
    _, path = random_model_dir
    engine = Engine.from_pretrained(path, device="cpu").engine
    plan = warm_up_plan(engine, BatchLimits(4, 12 * RATE, 0.01), BatchSettings(chunk_seconds=2))
    assert plan is not None
    seen: list[list] = []
    results: list[list[torch.Tensor]] = []
    forward = engine.forward

    def spy(waveforms, lengths, adapters):
        seen.append(list(adapters))
        results.append(forward(waveforms, lengths, adapters))
        return results[-1]

    engine.forward = spy  # type: ignore[method-assign]
    plan.run(4, RATE)
    (items,) = seen
    adapters = [item for item in items if not isinstance(item, Routing)]
    routings = [item for item in items if isinstance(item, Routing)]
    assert any(a.layer_ids and not a.is_classifier for a in adapters)  # bottlenecks in the layers
    assert any(a.is_classifier and a.layer_ids and a.cnn_channels and a.pool is not None for a in adapters)
    assert any(not a.layer_ids and not a.is_classifier for a in adapters)  # the plain CTC head
    assert len(routings) == 1 and routings[0].label is not None  # decided mid-pass
    assert all(bool(torch.isfinite(r).all()) for r in results[0])
    plan.run(1, RATE)  # a batch of one (after out-of-memory errors) warms the bottleneck path first
    assert seen[1][0].layer_ids


class StagingEngine(FakeEngine):
    """`stage` on one thread, `run` on another; the first run waits for `gate`."""

    device = torch.device("cpu")

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.staged: list[tuple[str, float]] = []
        self.ran: list[str] = []
        self.second_staged = threading.Event()

    def stage(self, waveforms, lengths, adapters, buffers):
        if bool((waveforms == POISON).any()):
            raise InputError("audio contains NaN or Inf samples")
        self.staged.append((threading.current_thread().name, float(waveforms[0, 0])))
        if len(self.staged) == 2:
            self.second_staged.set()
        return waveforms

    def run(self, staged):
        self.ran.append(threading.current_thread().name)
        if len(self.ran) == 1:
            self.gate.wait(10)
        return [staged[i, :1].reshape(1, 1).clone() for i in range(staged.shape[0])]


def test_the_next_batch_is_staged_while_this_one_runs():
    engine = StagingEngine()
    worker = Worker(engine, BatchLimits(1, 10**9, 0.0), Metrics(), prefetch=True)  # type: ignore[arg-type]
    worker.start()
    first, second = work(1.0), work(2.0)
    worker.submit([first])
    worker.submit([second])
    assert engine.second_staged.wait(10)  # staged while the first batch is still running
    assert not first.future.done()
    engine.gate.set()
    assert float(first.future.result(10)) == 1.0 and float(second.future.result(10)) == 2.0
    assert [name for name, _ in engine.staged] == ["chorus-stager", "chorus-stager"]
    assert engine.ran == ["chorus-inference", "chorus-inference"]
    worker.stop(10)


def test_a_batch_that_fails_staging_fails_only_its_culprit():
    engine = StagingEngine()
    engine.gate.set()
    worker = Worker(engine, BatchLimits(2, 10**9, 10.0), Metrics(), prefetch=True)  # type: ignore[arg-type]
    good, bad = work(1.0), work(POISON)
    worker.submit([good, bad])
    worker.start()
    assert float(good.future.result(10)) == 1.0
    with pytest.raises(RuntimeError, match="poisoned"):  # retried alone through forward(), which names it
        bad.future.result(10)
    worker.stop(10)


def test_a_sticky_device_error_in_warm_up_leaves_the_worker_not_ready():
    def run(items: int, samples: int) -> None:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    metrics = Metrics()
    plan = WarmUp(run, [RATE, 2 * RATE], seconds=60)
    worker = Worker(FakeEngine(), BatchLimits(8, 8 * RATE, 0.0), metrics, warm_up=plan)  # type: ignore[arg-type]
    worker.start()
    worker._warmed.wait(10)
    assert worker.is_alive() and not worker.is_ready()
    assert metrics.device_faults._value.get() == 1
    worker.stop(10)
