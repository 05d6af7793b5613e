"""The inference thread: the only code that touches the device. collect -> pad -> forward -> resolve, forever.

Requests of every tenant and adapter share one queue; `collect_batch` picks each batch (fairly across tenants,
by the audio each has been served); the engine runs one mixed-adapter forward for it. If a batch fails, its
members are retried alone once so only the culprit fails; a batch that runs out of device memory is split in
halves and the batch budget shrinks (device_failures.py); a sticky device error marks the worker not ready.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from chorus_server.batching import BatchLimits, Priority, WorkItem, collect_batch, passes_over
from chorus_server.device_failures import AdaptiveBudget, is_device_fault, is_out_of_memory, release_cached_memory
from chorus_server.engine import Engine, pad_batch, threads
from chorus_server.engine.errors import DeviceFault, DeviceOutOfMemory
from chorus_server.engine.staging import HostBuffers, StagedBatch
from chorus_server.metrics import Metrics
from chorus_server.prefetch import Prefetcher

logger = logging.getLogger(__name__)


Staged = StagedBatch | Exception | None  # a batch the stager prepared, or why it could not; None: not staged


class DeadlineExceeded(Exception):
    """The item waited in the queue past its request's deadline and was dropped unrun."""


@dataclass(frozen=True)
class WarmUp:
    """What the worker runs before it reports ready: one dummy batch per shape bucket, largest first."""

    run: Callable[[int, int], None]  # (items, samples): one dummy forward
    buckets: list[int]  # padded lengths in samples
    seconds: float  # time bound: buckets left when it is spent stay cold


class Worker:
    def __init__(
        self,
        engine: Engine,
        limits: BatchLimits,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
        warm_up: WarmUp | None = None,
        prefetch: bool = False,
        company_expected: Callable[[], bool] = lambda: True,
        compute_threads: int | None = None,
    ):
        """`prefetch`: stage the next batch on another thread while this one runs (GPU; needs `engine.stage`).
        `company_expected()`: whether requests other than those already queued are on their way (being uploaded,
        decoded or planned); when not, the batch at hand runs at once instead of waiting `limits.max_wait`.
        `compute_threads`: the threads the inference thread's torch ops use, set for that thread alone (the server
        makes every other thread serial: engine/threads.py); None leaves torch's setting as it is."""
        self.engine, self.limits, self.metrics, self.clock = engine, limits, metrics, clock
        self.warm_up, self.prefetch, self.company_expected = warm_up, prefetch, company_expected
        self.compute_threads = compute_threads
        self._warmed = threading.Event()
        self._buffers = HostBuffers(engine.device) if prefetch else None
        self._queue: list[WorkItem] = []
        self._queued_samples = 0
        self._served: dict[str, float] = {}  # tenant -> audio samples run (relative: only differences matter)
        self._running: list[WorkItem] = []  # the batch on the device now
        self._passed_over = 0  # batches in a row that left less urgent work waiting (batching.py: bulk_passes)
        self._live_seen = -float("inf")  # when live work was last submitted
        self._live_sessions = 0  # realtime sessions open: while any is, bulk batches stay one slice long
        self._bulk_queued = 0  # queued items less urgent than live work (files, flex)
        self._cond = threading.Condition()
        self._stopping = False
        self.speed = 1.0  # audio seconds per compute second, smoothed; for Retry-After estimates
        self._speed_measured = False
        self.budget = AdaptiveBudget(limits)  # shrinks after out-of-memory errors, regrows slowly
        self.fault: Exception | None = None  # a sticky device error: nothing will run again in this process
        self._thread = threading.Thread(target=self._run, name="chorus-inference", daemon=True)

    # ---- called from request handlers ----------------------------------------------------------------------

    def submit(self, items: list[WorkItem]) -> None:
        with self._cond:
            if self._stopping:
                raise RuntimeError("the worker is shutting down")
            active = {item.tenant for item in self._queue}
            for tenant in {item.tenant for item in items} - active:
                # A tenant returning from idle starts just below the least-served active tenant: its next item
                # leads the next batch, but it banks no credit for the time it was idle.
                floor = min((self._served.get(t, 0.0) for t in active), default=0.0)
                self._served[tenant] = max(self._served.get(tenant, 0.0), floor - 1)
            if any(item.priority == Priority.LIVE for item in items):
                self._live_seen = self.clock()
            self._bulk_queued += sum(item.priority != Priority.LIVE for item in items)
            self._queue.extend(items)
            self._queued_samples += sum(len(item) for item in items)
            self._cond.notify()

    @property
    def queued_samples(self) -> int:
        return self._queued_samples

    @property
    def bulk_waiting(self) -> bool:
        """Whether file work (file or flex windows) is queued: realtime steps then cover more audio each."""
        return self._bulk_queued > 0

    def live_session_opened(self) -> None:
        """A realtime session opened: until it closes, every batch is held to one slice (`interactive_bulk_samples`),
        so its first step after a pause never finds a full-size file batch running."""
        with self._cond:
            self._live_sessions += 1

    def live_session_closed(self) -> None:
        with self._cond:
            self._live_sessions = max(0, self._live_sessions - 1)

    @property
    def queued_items(self) -> int:
        return len(self._queue)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def is_ready(self) -> bool:
        """Alive, warmed up and the device usable (no sticky device error): what `/readyz` reports."""
        return self.is_alive() and self._warmed.is_set() and self.fault is None

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Finish everything already queued, then end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout)

    # ---- the inference thread ------------------------------------------------------------------------------

    def _run(self) -> None:
        if self.compute_threads is not None:
            threads.use_cores(self.compute_threads)
        if self.warm_up is not None:
            self._warm_up(self.warm_up)
        self._warmed.set()
        batches: Iterable[tuple[list[WorkItem], Staged]]
        if self.prefetch:
            batches = Prefetcher(self._next_batch, self._stage)
        else:
            batches = ((batch, None) for batch in iter(self._next_batch, None))
        for batch, staged in batches:
            try:
                self._run_batch(batch, staged)
            except Exception:  # never let the thread die; _run_batch resolves its items itself
                logger.exception("inference worker error")
            # Drop the finished batch now, not when the next one comes: its items view requests' decoded audio.
            del batch, staged

    def _warm_up(self, plan: WarmUp) -> None:
        """One dummy batch per bucket, largest first, as large as the batch budget allows; out of memory shrinks
        the budget and tries the bucket again. Bounded by `plan.seconds`."""
        started = self.clock()
        deadline = started + plan.seconds
        for samples in sorted(plan.buckets, reverse=True):
            while self.clock() < deadline and self.fault is None:
                limits = self.budget.limits()
                items = max(1, min(limits.max_items, limits.max_samples // samples))
                try:
                    plan.run(items, samples)
                    break
                except Exception as exc:
                    error = exc.with_traceback(None)
                if is_out_of_memory(error) and items > 1:
                    self._shrink_budget()
                    continue
                if is_device_fault(error):
                    self._mark_fault(error)
                logger.error("warm-up failed for %d x %d samples: %r", items, samples, error)
                break
        logger.info("warm-up done in %.1f s; batch budget %.3g", self.clock() - started, self.budget.scale)

    def _next_batch(self) -> list[WorkItem] | None:
        with self._cond:
            while True:
                # Once the speed is known, a window that could not finish before its deadline is not started.
                rate = self.engine.preprocess.sampling_rate
                per_sample = 1 / (rate * self.speed) if self._speed_measured else 0.0
                limits, now = self.budget.limits(), self.clock()
                collected = collect_batch(
                    self._queue,
                    limits,
                    now,
                    draining=self._stopping,
                    served=self._served,
                    seconds_per_sample=per_sample,
                    company_expected=self.company_expected(),
                    passed_over=self._passed_over,
                    interactive_recent=self._live_sessions > 0 or now - self._live_seen < limits.interactive_linger,
                )
                dropped = collected.batch + collected.expired + collected.cancelled
                if dropped:
                    gone = {id(item) for item in dropped}
                    self._queue = [item for item in self._queue if id(item) not in gone]
                    self._queued_samples -= sum(len(item) for item in dropped)
                    self._bulk_queued -= sum(item.priority != Priority.LIVE for item in dropped)
                for item in collected.expired:
                    if item.future.set_running_or_notify_cancel():
                        item.future.set_exception(DeadlineExceeded())
                # An item whose caller already gave up (timeout, disconnect) is cancelled here and never runs.
                batch = [item for item in collected.batch if item.future.set_running_or_notify_cancel()]
                for item in batch:
                    self._served[item.tenant] = self._served.get(item.tenant, 0.0) + len(item)
                if collected.batch:
                    self._passed_over = self._passed_over + 1 if passes_over(collected.batch, self._queue) else 0
                if not self._queue:
                    self._served.clear()  # nobody waits: shares start afresh
                if batch:
                    return batch
                if self._stopping and not self._queue:
                    return None
                if not collected.batch:
                    self._cond.wait(collected.wait)

    def adapters_info(self) -> tuple[list[str], list[str]]:
        """(adapters in the batch running now, adapters waiting in the queue): public ones, by full ID."""
        with self._cond:
            waiting = sorted({item.label for item in self._queue if item.label})
        return sorted({item.label for item in self._running if item.label}), waiting

    def _run_batch(self, batch: list[WorkItem], staged: Staged = None) -> None:
        self._running = batch
        try:
            self._run_items(batch, staged)
        finally:
            self._running = []

    def _run_items(self, batch: list[WorkItem], staged: Staged = None) -> None:
        if self.fault is not None:
            self._fail(batch, DeviceFault(f"the device failed earlier ({self.fault}); this worker must be restarted"))
            return
        started = self.clock()
        error: Exception | None = None
        try:
            logits = self._forward(batch, staged)
        except Exception as exc:
            error = exc
        if error is None:
            self._succeeded(batch, logits, started)
            return
        # Handled outside the `except` block, without the traceback: its frames hold the failed batch's tensors,
        # which would otherwise stay allocated on the device through every retry below.
        error = error.with_traceback(None)
        if isinstance(staged, StagedBatch):
            staged.release()  # the staged input too (retries stage their own)
        if is_out_of_memory(error):
            self._out_of_memory(batch, error)
        elif is_device_fault(error):
            self._mark_fault(error)
            self._fail(batch, DeviceFault(f"the device failed ({error}); retry on another worker"))
        elif len(batch) == 1:
            logger.error("inference failed for one item: %r", error)
            batch[0].future.set_exception(error)
        else:
            logger.warning("a batch of %d failed (%r); retrying its items one by one", len(batch), error)
            for item in batch:
                self._run_items([item])

    def _out_of_memory(self, batch: list[WorkItem], error: Exception) -> None:
        """Shrink the batch budget and run the batch again in halves; one item that alone does not fit fails."""
        self._shrink_budget()
        logger.warning("out of device memory in a batch of %d; batch budget now %.3g", len(batch), self.budget.scale)
        if len(batch) == 1:
            batch[0].future.set_exception(DeviceOutOfMemory(f"out of device memory for one window ({error})"))
            return
        half = len(batch) // 2
        self._run_items(batch[:half])
        self._run_items(batch[half:])

    def _shrink_budget(self) -> None:
        self.metrics.device_oom.inc()
        self.budget.shrink()
        self.metrics.batch_budget.set(self.budget.scale)
        device = getattr(self.engine, "device", None)
        if device is not None:
            release_cached_memory(device)

    def _mark_fault(self, error: Exception) -> None:
        self.fault = error
        self.metrics.device_faults.inc()
        logger.error("the device failed (%s): this worker is no longer ready and must be restarted", error)

    def _succeeded(self, batch: list[WorkItem], logits: list[torch.Tensor], started: float) -> None:
        self.budget.succeeded()
        self.metrics.batch_budget.set(self.budget.scale)
        elapsed = self.clock() - started
        audio = sum(len(item) for item in batch) / self.engine.preprocess.sampling_rate
        self.metrics.observe_batch(batch, elapsed, audio, started)
        measured = audio / max(elapsed, 1e-6)
        self.speed = 0.8 * self.speed + 0.2 * measured if self._speed_measured else measured
        self._speed_measured = True
        for item, result in zip(batch, logits, strict=True):
            item.future.set_result(result)

    @staticmethod
    def _fail(batch: list[WorkItem], error: Exception) -> None:
        for item in batch:
            item.future.set_exception(error)

    def _forward(self, batch: list[WorkItem], staged: Staged = None) -> list[torch.Tensor]:
        if isinstance(staged, Exception):
            raise staged
        if staged is not None:
            return self.engine.run(staged)
        waveforms, lengths = pad_batch([item.samples for item in batch])
        return self.engine.forward(waveforms, lengths, [item.adapter for item in batch])

    def _stage(self, batch: list[WorkItem]) -> StagedBatch:
        """The stager thread (GPU): pad into pinned memory and start the copy while the device runs."""
        waveforms, lengths = pad_batch([item.samples for item in batch])
        return self.engine.stage(waveforms, lengths, [item.adapter for item in batch], self._buffers)
