"""Batch staging and the device half of a forward: shape buckets, pinned buffer reuse, and a bounded number of
device reads per forward whatever the batch size or number of adapters (each one is a sync on a GPU)."""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch
from torch.overrides import TorchFunctionMode

from chorus_server.engine import Engine, load_adapter, pad_batch
from chorus_server.engine.staging import HostBuffers, bucket_samples, bucket_schedule, stage_batch

RATE = 16000


@pytest.mark.parametrize(
    ("seconds", "bucket"),
    [(0.03, 1), (1.0, 1), (1.01, 2), (7.5, 8), (8.0, 8), (8.2, 10), (15.9, 16), (16.5, 20), (24.0, 24), (33, 40)],
)
def test_padded_lengths_round_up_to_buckets(seconds, bucket):
    assert bucket_samples(int(seconds * RATE), RATE) == bucket * RATE


def test_the_bucket_schedule_covers_every_length_once():
    schedule = bucket_schedule(24 * RATE, RATE)
    assert [b // RATE for b in schedule] == [1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24]
    assert all(bucket_samples(n, RATE) in schedule for n in range(1, 24 * RATE, 997))


@pytest.fixture(scope="module")
def engine_and_adapters(random_model_dir):
    _, path = random_model_dir
    loaded = Engine.from_pretrained(path, device="cpu")
    adapters = [loaded.engine.prepare(load_adapter(p)) for p in sorted((path / "adapters").glob("*.safetensors"))]
    return loaded.engine, adapters


def test_a_bucket_padded_batch_gives_the_same_logits(engine_and_adapters):
    """The CUDA staging path (pinned buffer, width rounded up to a bucket), run on the CPU: extra padding never
    changes an item's logits."""
    engine, adapters = engine_and_adapters
    gen = torch.Generator().manual_seed(5)
    audios = [torch.randn(n, generator=gen) for n in (9000, 100, 23000, 16000)]
    chosen = [adapters[0], adapters[1], adapters[0], adapters[2]]
    waveforms, lengths = pad_batch(audios)
    reference = engine.forward(waveforms, lengths, chosen)
    buffers = HostBuffers(torch.device("cpu"))
    staged = stage_batch(
        waveforms, lengths, chosen, engine.frame_lengths, torch.device("cuda", 0), RATE, buffers
    )  # a CUDA batch, but HostBuffers on the CPU "copies" with a clone
    assert staged.waveforms.shape == (3, 2 * RATE)  # 23000 samples -> the 2 s bucket; the 100-sample item has no row
    assert staged.order == [0, 2, 3]  # sorted by adapter, first appearance first; item 1 is too short
    bucketed = engine.run(staged)
    for got, want in zip(bucketed, reference, strict=True):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_host_buffers_are_reused_and_zeroed():
    buffers = HostBuffers(torch.device("cpu"))
    slot_a, first = buffers.take(2, 8)
    first.fill_(1.0)
    slot_b, _ = buffers.take(2, 8)
    assert slot_a != slot_b  # double-buffered: the other one may still be read by a copy
    slot_c, third = buffers.take(1, 8)
    assert slot_c == slot_a and third.data_ptr() == first.data_ptr()  # reused, not reallocated
    assert not bool(third.any())
    _, grown = buffers.take(4, 16)  # a larger batch grows its buffer
    assert grown.shape == (4, 16)


class DeviceReads(TorchFunctionMode):
    """Counts reads of tensor values by the host (`.item()`, `int(t)`, `bool(t)`, `.tolist()`, `.cpu()`, ...);
    on a GPU each one is a host-device sync."""

    READS: ClassVar[set[object]] = {
        torch.Tensor.item,
        torch.Tensor.tolist,
        torch.Tensor.__int__,
        torch.Tensor.__bool__,
        torch.Tensor.__index__,
        torch.Tensor.__float__,
        torch.Tensor.cpu,
        torch.Tensor.numpy,
    }

    def __init__(self, host: torch.Tensor) -> None:
        super().__init__()
        self.host = host  # the staged lengths: on the host by design, so reading them is free
        self.reads = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.READS and args[0] is not self.host:
            self.reads += 1
        return func(*args, **(kwargs or {}))


def test_the_device_half_of_a_forward_reads_no_more_for_bigger_batches(engine_and_adapters):
    """Before: one read per item (`int(frames)`), one `.cpu()` per segment and three more: B + S + 3 syncs; then
    one (the backbone turned the front end's frame counts, a device tensor, into a list). Now frame counts are conv
    arithmetic on the staged host lengths and all heads come back together: no device value is read before the
    results (on a GPU the one sync is the final copy of the logits)."""
    engine, adapters = engine_and_adapters
    gen = torch.Generator().manual_seed(6)

    def reads_for(n: int, kinds: int) -> int:
        audios = [torch.randn(4000 + 1000 * i, generator=gen) for i in range(n)]
        staged = engine.stage(*pad_batch(audios), [adapters[i % kinds] for i in range(n)])
        with DeviceReads(staged.lengths) as counter:
            engine.run(staged)
        return counter.reads

    small, large = reads_for(1, 1), reads_for(8, 4)
    assert small == large == 0
