"""The CUDA path on a real GPU (skipped without one): a mixed batch served on `cuda` equals the CPU's, in float32 and
at the serving precision (bfloat16); the staged path with pinned buffers and buckets equals the plain one; a
forward synchronises once; adapter uploads leave a pinned host copy; the worker warms up, stages and serves on the
GPU, and splits a batch that runs out of device memory. Every behaviour here is also tested on the CPU with
simulated devices; these tests check the simulation against the hardware."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import pytest
import torch

from chorus_server.batching import BatchLimits, WorkItem
from chorus_server.engine import Engine, load_adapter, pad_batch
from chorus_server.engine.random_model import random_classifier
from chorus_server.engine.staging import HostBuffers
from chorus_server.engine.upload import AdapterUploader
from chorus_server.metrics import Metrics
from chorus_server.runtime import warm_up_plan
from chorus_server.settings import BatchSettings
from chorus_server.worker import WarmUp, Worker

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def engines(random_model_dir):
    _, path = random_model_dir
    files = sorted((path / "adapters").glob("*.safetensors"))[:3]
    gpu = Engine.from_pretrained(path, device="cuda", dtype="float32").engine
    cpu = Engine.from_pretrained(path, device="cpu", dtype="float32").engine
    torch.backends.cuda.matmul.allow_tf32 = False  # exact comparison with the CPU (the engine turned TF32 on)
    torch.backends.cudnn.allow_tf32 = False
    yield (gpu, [gpu.prepare(load_adapter(f)) for f in files]), (cpu, [cpu.prepare(load_adapter(f)) for f in files])
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True


def synchronisations(call: Callable[[], object]) -> list[str]:
    """The host-device synchronisations `call` makes, as CUDA's sync debug mode reports them (after the device is
    idle). Only the warnings naming a synchronizing operation: torch also warns once that the mode is a prototype."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            call()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return [str(w.message) for w in caught if "called a synchronizing" in str(w.message)]


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return pad_batch([torch.randn(n, generator=gen) for n in (8000, 20000, 12000, 300)])


def test_the_device_has_an_index_and_a_mixed_batch_matches_the_cpu(engines):
    (gpu, gpu_adapters), (cpu, cpu_adapters) = engines
    assert gpu.device == torch.device("cuda", torch.cuda.current_device())
    chosen = [0, 1, 0, 2]
    got = gpu.forward(*batch(), [gpu_adapters[i] for i in chosen])
    want = cpu.forward(*batch(), [cpu_adapters[i] for i in chosen])
    for g, w in zip(got, want, strict=True):
        assert g.device.type == "cpu" and g.shape == w.shape
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)


def test_pinned_staging_and_buckets_change_nothing(engines):
    (gpu, adapters), _ = engines
    waveforms, lengths = batch()
    chosen = [adapters[0], adapters[1], adapters[0], adapters[2]]
    plain = gpu.forward(waveforms, lengths, chosen)
    buffers = HostBuffers(gpu.device)
    staged = gpu.stage(waveforms, lengths, chosen, buffers)
    assert staged.ready is not None and staged.waveforms.shape[1] == 2 * 16000  # 20000 samples -> the 2 s bucket
    for got, want in zip(gpu.run(staged), plain, strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_a_forward_synchronises_exactly_once(engines):
    """The results' copy back is the one sync: frame counts are host arithmetic on the staged lengths (before, the
    backbone read the front end's device tensor of frame counts back with `.tolist()`: a second sync)."""
    (gpu, adapters), _ = engines
    waveforms, lengths = batch()
    staged = gpu.stage(waveforms, lengths, [adapters[i % 3] for i in range(4)], HostBuffers(gpu.device))
    syncs = synchronisations(lambda: gpu.run(staged))
    assert len(syncs) == 1, syncs  # the results reach the host once, and nothing else waits for the device


def test_uploads_keep_a_pinned_host_copy(engines, random_model_dir):
    (gpu, _), _ = engines
    _, path = random_model_dir
    uploader = AdapterUploader(gpu)
    host = uploader.pin(load_adapter(sorted((path / "adapters").glob("*.safetensors"))[0]))
    device = uploader(host)
    # An empty tensor (a head-only adapter's layer weights) owns no memory to pin; every other one is pinned.
    assert all(t.is_pinned() for t in host.parameters() if t.numel())
    assert all(t.device == gpu.device for t in device.parameters())
    torch.testing.assert_close(device.head.weight.cpu(), host.head.weight)


def test_a_mixed_transcription_and_classification_batch_matches_the_cpu(engines):
    """Classifier items ride the staged (pinned, bucketed) GPU batch with CTC items; scores equal the CPU's."""
    (gpu, gpu_adapters), (cpu, cpu_adapters) = engines
    n = cpu.config.num_hidden_layers
    classifier = random_classifier(cpu.config, "lid", ["en", "fr", "de"], 4, list(range(n)), 5, cpu.fingerprint)
    gpu_all, cpu_all = [*gpu_adapters, gpu.prepare(classifier)], [*cpu_adapters, cpu.prepare(classifier)]
    chosen = [3, 0, 1, 3]
    waveforms, lengths = batch()
    got = gpu.run(gpu.stage(waveforms, lengths, [gpu_all[i] for i in chosen], HostBuffers(gpu.device)))
    want = cpu.forward(waveforms, lengths, [cpu_all[i] for i in chosen])
    assert got[0].shape == (3,) and got[3].shape == (0,)  # the 300-sample item is too short for a frame
    for g, w in zip(got, want, strict=True):
        assert g.device.type == "cpu" and g.shape == w.shape
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)


RATE = 16000


@pytest.fixture(scope="module")
def bf16(random_model_dir):
    """The serving precision on a GPU: a bfloat16 engine with three adapters and a classifier."""
    _, path = random_model_dir
    gpu = Engine.from_pretrained(path, device="cuda", dtype="bfloat16").engine
    n = gpu.config.num_hidden_layers
    classifier = random_classifier(gpu.config, "lid", ["en", "fr", "de"], 4, list(range(n)), 5, gpu.fingerprint)
    files = sorted((path / "adapters").glob("*.safetensors"))[:3]
    return gpu, [gpu.prepare(load_adapter(f)) for f in files] + [gpu.prepare(classifier)]


def assert_near(got: torch.Tensor, want: torch.Tensor, tolerance: float) -> None:
    """Relative error over the whole tensor: bfloat16 keeps 8 bits of mantissa, so elementwise checks are noise."""
    assert got.device.type == "cpu" and got.dtype == torch.float32 and got.shape == want.shape
    error = float((got - want.float()).norm() / want.float().norm().clamp_min(1e-6))
    assert error < tolerance, error


def test_a_bf16_mixed_batch_matches_float32_on_the_cpu(bf16, engines):
    """On the CPU bfloat16 against float32 differs by 0.2-2.3 % (relative norm) on these models."""
    gpu, gpu_all = bf16
    _, (cpu, cpu_adapters) = engines
    n = cpu.config.num_hidden_layers
    classifier = random_classifier(cpu.config, "lid", ["en", "fr", "de"], 4, list(range(n)), 5, cpu.fingerprint)
    cpu_all = [*cpu_adapters, cpu.prepare(classifier)]
    chosen = [3, 0, 1, 2]
    waveforms, lengths = batch()
    got = gpu.run(gpu.stage(waveforms, lengths, [gpu_all[i] for i in chosen], HostBuffers(gpu.device)))
    want = cpu.forward(waveforms, lengths, [cpu_all[i] for i in chosen])
    assert got[3].shape == (0, len(gpu_all[2].vocab))  # the 300-sample item is too short for a frame
    for g, w in zip(got[:3], want[:3], strict=True):
        assert_near(g, w, 0.06)


def test_a_bf16_forward_synchronises_exactly_once(bf16):
    gpu, adapters = bf16
    waveforms, lengths = batch()
    chosen = [adapters[i] for i in (0, 3, 1, 2)]  # CTC adapters and a classifier
    gpu.forward(waveforms, lengths, chosen)  # lazy first-use set-up is not what this counts
    staged = gpu.stage(waveforms, lengths, chosen, HostBuffers(gpu.device))
    syncs = synchronisations(lambda: gpu.run(staged))
    assert len(syncs) == 1, syncs


def items_for(adapters, chosen: list[int]) -> list[WorkItem]:
    gen = np.random.default_rng(2)
    sizes = (8000, 20000, 12000, 16000)
    return [
        WorkItem(gen.standard_normal(sizes[k % 4]).astype(np.float32), adapters[i], enqueued=0.0, deadline=1e12)
        for k, i in enumerate(chosen)
    ]


def reference(gpu: Engine, items: list[WorkItem]) -> list[torch.Tensor]:
    waveforms, lengths = pad_batch([item.samples for item in items])
    return gpu.forward(waveforms, lengths, [item.adapter for item in items])


def test_the_worker_warms_up_stages_and_serves_in_bf16(bf16):
    """The serving configuration: warm-up of every bucket (every kind of adapter work), then the stager thread
    pads into pinned memory and copies while the inference thread runs."""
    gpu, adapters = bf16
    limits = BatchLimits(4, 8 * RATE, 0.01)
    plan = warm_up_plan(gpu, limits, BatchSettings(chunk_seconds=2, warmup_seconds=120))
    assert plan is not None
    warmed: list[tuple[int, int]] = []

    def run(items: int, samples: int) -> None:
        warmed.append((items, samples))
        plan.run(items, samples)

    worker = Worker(gpu, limits, Metrics(), warm_up=WarmUp(run, plan.buckets, plan.seconds), prefetch=True)
    items = items_for(adapters, [0, 3, 1, 2, 0, 3, 2, 1])
    worker.submit(items)
    worker.start()
    try:
        results = [item.future.result(120) for item in items]
        assert worker.is_ready() and worker.fault is None
        assert warmed == [(4, 2 * RATE), (4, RATE)]  # largest bucket first, as large as the budget allows
        for got, want in zip(results, reference(gpu, items), strict=True):
            assert_near(got, want, 0.02)
    finally:
        worker.stop(60)


def test_a_batch_that_runs_out_of_device_memory_is_split_and_the_worker_stays_ready(bf16, monkeypatch):
    """A real OutOfMemoryError from the CUDA caching allocator (a 1 PiB request) in batches of more than two."""
    gpu, adapters = bf16
    run = gpu.run
    sizes: list[int] = []

    def greedy(staged):
        sizes.append(len(staged.order))
        if len(staged.order) > 2:
            torch.empty(1 << 50, dtype=torch.uint8, device=gpu.device)
        return run(staged)

    items = items_for(adapters, [0, 1, 2, 3])
    want = reference(gpu, items)
    monkeypatch.setattr(gpu, "run", greedy)
    metrics = Metrics()
    worker = Worker(gpu, BatchLimits(4, 8 * RATE, 0.5), metrics, prefetch=True)
    worker.submit(items)
    worker.start()
    try:
        results = [item.future.result(120) for item in items]
        assert sizes == [4, 2, 2]  # split in halves, each half ran
        assert worker.is_ready() and worker.budget.scale == 0.5
        assert metrics.device_oom._value.get() == 1 and metrics.device_faults._value.get() == 0
        for got, expected in zip(results, want, strict=True):
            assert_near(got, expected, 0.02)
    finally:
        worker.stop(60)


def test_the_front_end_batched_by_length_is_bitwise_item_by_item_in_bf16(bf16):
    """On a GPU the front end runs items of one length together (batched GEMMs of the per-item shape); an item's
    features must not depend on how many items share its length."""
    gpu, adapters = bf16
    fe = gpu.backbone.feature_extractor
    assert fe.batch_equal_lengths is None  # the default: batched on a GPU
    gen = torch.Generator().manual_seed(4)
    waveforms, lengths = pad_batch([torch.randn(k, generator=gen) for k in (16000, 16000, 12000, 16000, 12000)])
    chosen = [adapters[i] for i in (0, 3, 1, 3, 2)]
    together = gpu.forward(waveforms, lengths, chosen)
    try:
        fe.batch_equal_lengths = False
        alone = gpu.forward(waveforms, lengths, chosen)
    finally:
        fe.batch_equal_lengths = None
    for a, b in zip(alone, together, strict=True):
        assert torch.equal(a, b)
