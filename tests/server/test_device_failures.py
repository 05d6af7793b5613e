"""The worker when the device fails, simulated on the CPU: out-of-memory batches are split, retried outside the
handler, and shrink the batch budget (which grows back slowly); a sticky device error turns `/readyz` red."""

from __future__ import annotations

import weakref

import numpy as np
import pytest
import torch

from chorus_server.batching import BatchLimits, WorkItem
from chorus_server.device_failures import AdaptiveBudget, is_device_fault, is_out_of_memory
from chorus_server.engine.errors import DeviceFault, DeviceOutOfMemory
from chorus_server.engine.staging import StagedBatch
from chorus_server.metrics import Metrics
from chorus_server.worker import Worker
from tests.server.conftest import transcribe, wav
from tests.server.test_errors import error_of
from tests.server.test_worker import FakeEngine


class Activations:
    """Stands in for the device memory a forward allocates."""


class OutOfMemoryEngine(FakeEngine):
    """Runs batches of at most `capacity` items; bigger ones allocate activations, then run out of memory.
    Records, at every call, how many activations of failed calls are still alive."""

    def __init__(self, capacity: int, error: Exception | None = None):
        super().__init__()
        self.capacity = capacity
        self.error = error or torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        self.failed: list[weakref.ref[Activations]] = []
        self.alive_at_call: list[int] = []

    def forward(self, waveforms, lengths, adapters):
        self.alive_at_call.append(sum(ref() is not None for ref in self.failed))
        activations = Activations()  # referenced by this frame, as the failed batch's tensors are
        if len(adapters) > self.capacity:
            self.failed.append(weakref.ref(activations))
            raise self.error
        return super().forward(waveforms, lengths, adapters)


def work(value: float) -> WorkItem:
    return WorkItem(np.full(400, value, np.float32), adapter=None, enqueued=0.0, deadline=1e12)  # type: ignore[arg-type]


def test_an_out_of_memory_batch_is_split_and_the_budget_shrinks():
    engine = OutOfMemoryEngine(capacity=2)
    metrics = Metrics()
    worker = Worker(engine, BatchLimits(8, 10**9, 10.0), metrics)  # type: ignore[arg-type]
    items = [work(float(i)) for i in range(8)]
    worker.submit(items)
    worker.start()
    assert [float(item.future.result(10)) for item in items] == [float(i) for i in range(8)]
    assert engine.calls == [2, 2, 2, 2]  # 8 -> 4 + 4 -> four pairs; only the pairs ran
    assert worker.budget.scale == 1 / 8  # three out-of-memory errors: 8, then each 4
    assert worker.budget.limits().max_items == 1
    assert metrics.device_oom._value.get() == 3
    assert metrics.batch_budget._value.get() == 1 / 8
    # The next full queue is cut to the shrunken budget instead of failing again.
    more = [work(float(i)) for i in range(4)]
    worker.submit(more)
    assert [float(item.future.result(10)) for item in more] == [0.0, 1.0, 2.0, 3.0]
    assert engine.calls[4:] == [1, 1, 1, 1]
    worker.stop(10)


def test_retries_run_after_the_failed_batch_is_freed():
    """Retrying inside the `except` block kept the failed batch's tensors alive (through the traceback) while the
    retries allocated their own: the retry had less memory than the batch that failed."""
    engine = OutOfMemoryEngine(capacity=1)
    worker = Worker(engine, BatchLimits(4, 10**9, 10.0), Metrics())  # type: ignore[arg-type]
    items = [work(float(i)) for i in range(4)]
    worker.submit(items)
    worker.start()
    assert [float(item.future.result(10)) for item in items] == [0.0, 1.0, 2.0, 3.0]
    worker.stop(10)
    assert len(engine.failed) == 3
    assert engine.alive_at_call == [0] * len(engine.alive_at_call)


def test_one_window_that_alone_does_not_fit_fails_with_a_retryable_error():
    engine = OutOfMemoryEngine(capacity=0)
    worker = Worker(engine, BatchLimits(1, 10**9, 0.0), Metrics())  # type: ignore[arg-type]
    item = work(1.0)
    worker.submit([item])
    worker.start()
    with pytest.raises(DeviceOutOfMemory, match="one window"):
        item.future.result(10)
    assert worker.is_ready()  # out of memory is not fatal
    worker.stop(10)


def test_the_budget_grows_back_slowly_after_clean_batches():
    budget = AdaptiveBudget(BatchLimits(64, 64 * 320000, 0.01), recover_after=3, growth=2.0)
    budget.shrink()
    budget.shrink()
    assert budget.limits().max_items == 16 and budget.limits().max_samples == 16 * 320000
    for _ in range(2):
        budget.succeeded()
    assert budget.scale == 0.25  # not yet
    budget.succeeded()
    assert budget.scale == 0.5
    for _ in range(10):
        budget.succeeded()
    assert budget.scale == 1.0 and budget.limits() == budget.base
    for _ in range(20):
        budget.shrink()
    assert budget.limits().max_items == 1  # never below one item


# torch >= 2.8 raises CUDA errors as AcceleratorError (a RuntimeError); older versions as RuntimeError.
CudaError = getattr(torch, "AcceleratorError", RuntimeError)
CUBLAS_ALLOC = "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"
PINNED_ALLOC = "CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported at some other API call"


@pytest.mark.parametrize(
    ("error", "oom", "fault"),
    [
        (torch.cuda.OutOfMemoryError("CUDA out of memory"), True, False),
        # Allocation failures worded as a generic CUDA error: recoverable, like OutOfMemoryError.
        (RuntimeError(CUBLAS_ALLOC), True, False),
        (CudaError(CUBLAS_ALLOC), True, False),
        (CudaError(PINNED_ALLOC), True, False),  # pin_memory() / cudaHostAlloc of the host tier or staging buffers
        (RuntimeError("CUDA error: out of memory"), True, False),
        (RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"), True, False),
        (RuntimeError("cuFFT error: CUFFT_ALLOC_FAILED"), True, False),
        # Sticky: the context is poisoned.
        (RuntimeError("CUDA error: an illegal memory access was encountered"), False, True),
        (CudaError("CUDA error: an illegal memory access was encountered"), False, True),
        (RuntimeError("CUDA error: device-side assert triggered"), False, True),
        (RuntimeError("CUDA error: unspecified launch failure"), False, True),
        (CudaError("CUDA error: uncorrectable ECC error encountered"), False, True),
        (RuntimeError("CUDA error: CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasSgemm`"), False, True),
        # Neither: a bug or bad input, retried item by item.
        (RuntimeError("shapes cannot be multiplied"), False, False),
        (ValueError("out of memory"), False, False),  # only RuntimeErrors come from CUDA
        (ValueError("bad"), False, False),
    ],
)
def test_device_errors_are_told_apart(error, oom, fault):
    assert is_out_of_memory(error) == oom
    assert is_device_fault(error) == fault


@pytest.mark.parametrize("message", [CUBLAS_ALLOC, PINNED_ALLOC])
def test_an_allocation_failure_worded_as_a_cuda_error_splits_the_batch_and_the_worker_stays_ready(message):
    """Before, any "CUDA error" was sticky: a cuBLAS workspace or pinned-memory allocation failing under memory
    pressure left the worker not ready until restart. Now it is handled as out of memory: split, shrink, serve."""
    engine = OutOfMemoryEngine(capacity=2, error=CudaError(message))
    metrics = Metrics()
    worker = Worker(engine, BatchLimits(4, 10**9, 10.0), metrics)  # type: ignore[arg-type]
    items = [work(float(i)) for i in range(4)]
    worker.submit(items)
    worker.start()
    assert [float(item.future.result(10)) for item in items] == [0.0, 1.0, 2.0, 3.0]
    assert engine.calls == [2, 2]  # 4 failed to allocate, its halves ran
    assert worker.is_ready() and worker.fault is None
    assert metrics.device_faults._value.get() == 0 and metrics.device_oom._value.get() == 1
    assert worker.budget.scale == 0.5
    worker.stop(10)


class BrokenDevice(FakeEngine):
    def forward(self, waveforms, lengths, adapters):
        self.calls.append(len(adapters))
        raise RuntimeError("CUDA error: an illegal memory access was encountered")


def test_a_sticky_device_error_makes_the_worker_not_ready():
    engine = BrokenDevice()
    metrics = Metrics()
    worker = Worker(engine, BatchLimits(4, 10**9, 0.0), metrics)  # type: ignore[arg-type]
    worker.start()
    first = [work(1.0), work(2.0)]
    worker.submit(first)
    for item in first:
        with pytest.raises(DeviceFault):
            item.future.result(10)
    assert not worker.is_ready() and worker.is_alive()
    later = work(3.0)
    worker.submit([later])
    with pytest.raises(DeviceFault, match="restarted"):
        later.future.result(10)
    assert engine.calls == [2]  # no retry item by item, nothing run after the fault
    assert metrics.device_faults._value.get() == 1
    worker.stop(10)


def test_readyz_turns_red_after_a_sticky_device_error(client):
    runtime = client.app.state.chorus
    assert client.get("/readyz").status_code == 200

    def broken(waveforms, lengths, adapters):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    runtime.engine.forward = broken
    error_of(transcribe(client, wav(1.0), "default"), 503, "device_unavailable")
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["status"] == "not_ready"


class StagedOutOfMemory(OutOfMemoryEngine):
    """Stages batches (as a GPU worker does) and runs out of memory for more than one item; records whether the
    failed batch's staged input was still held when each retry ran."""

    device = torch.device("cpu")

    def __init__(self) -> None:
        super().__init__(capacity=1)
        self.staged: list[StagedBatch] = []
        self.input_held_at_retry: list[bool] = []

    def stage(self, waveforms, lengths, adapters, buffers):
        staged = StagedBatch(len(adapters), [1] * len(adapters), [], [], [], waveforms.clone(), lengths)
        self.staged.append(staged)
        return staged

    def run(self, staged):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    def forward(self, waveforms, lengths, adapters):
        self.input_held_at_retry.append(any(s.waveforms.numel() for s in self.staged))
        return super().forward(waveforms, lengths, adapters)


def test_a_staged_batch_that_runs_out_of_memory_releases_its_input_before_retries():
    engine = StagedOutOfMemory()
    worker = Worker(engine, BatchLimits(2, 10**9, 10.0), Metrics(), prefetch=True)  # type: ignore[arg-type]
    items = [work(1.0), work(2.0)]
    worker.submit(items)
    worker.start()
    assert [float(item.future.result(10)) for item in items] == [1.0, 2.0]
    worker.stop(10)
    assert engine.input_held_at_retry == [False, False]
