"""Batch staging: the host half of a forward pass, kept apart from the device half so that batch N+1 can be staged
while batch N runs (`Engine.stage` then `Engine.run`; `Engine.forward` does both).

Staging validates the batch on the host, sorts the runnable items by adapter, computes the segments and every
item's frame count as host integers (so the device half never reads a device value to learn a length), and pads
the sorted rows into one `(b, W)` tensor. On CUDA the rows are written into a reusable pinned host buffer, `W` is
rounded up to a shape bucket, and the copy to the device is issued with `non_blocking=True` on a copy stream whose
event the inference stream waits on. On the CPU staging is the gather it always was: no buffer, no copy, no stream.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from chorus_server.engine.adapters import Adapter, Segment, find_segments
from chorus_server.engine.routing import Routing


def bucket_samples(samples: int, rate: int) -> int:
    """`samples` rounded up to a shape bucket: whole seconds up to 8 s, then steps of a quarter of the power of two
    below (10, 12, 14, 16, 20, 24, 28, 32, 40 s, ...): at most 25 % padding, and few shapes for warm-up to cover."""
    if samples <= 0:
        return 0
    seconds = -(-samples // rate)
    step = 1 if seconds <= 8 else (1 << ((seconds - 1).bit_length() - 1)) // 4
    return -(-seconds // step) * step * rate


def bucket_schedule(longest: int, rate: int) -> list[int]:
    """Every bucket up to the one holding `longest` samples, shortest first."""
    buckets: list[int] = []
    samples = 1
    while samples <= longest:
        buckets.append(bucket_samples(samples, rate))
        samples = buckets[-1] + 1
    return buckets


class HostBuffers:
    """Pinned host memory for staging, reused across batches; two buffers so that one can be filled while the
    copy out of the other may still be in flight. Grows (never shrinks) to the largest batch seen."""

    def __init__(self, device: torch.device, count: int = 2):
        self.device = device
        self._buffers: list[torch.Tensor] = [torch.empty(0) for _ in range(count)]
        self._copied: list[torch.cuda.Event | None] = [None] * count
        self._next = 0
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def take(self, rows: int, width: int) -> tuple[int, torch.Tensor]:
        """(slot, a zeroed (rows, width) float32 host view) that no copy reads any more."""
        slot, self._next = self._next, (self._next + 1) % len(self._buffers)
        copied = self._copied[slot]
        if copied is not None:
            copied.synchronize()  # the copy that read this buffer has finished (normally long ago)
        if self._buffers[slot].numel() < rows * width:
            self._buffers[slot] = torch.empty(rows * width, pin_memory=self.device.type == "cuda")
        view = self._buffers[slot][: rows * width].view(rows, width)
        view.zero_()
        return slot, view

    def copy(self, slot: int, host: torch.Tensor) -> tuple[torch.Tensor, torch.cuda.Event | None]:
        """Start the copy of `host` (a view from `take`) to the device. Returns (device tensor, copy-done event)."""
        if self.stream is None:
            return host.clone(), None
        with torch.cuda.stream(self.stream):
            moved = host.to(self.device, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self.stream)
        self._copied[slot] = done
        return moved, done


@dataclass
class StagedBatch:
    """A batch ready for `Engine.run`: runnable rows sorted by adapter and padded, on (or on its way to) the device.

    waveforms: (b, W) float32; lengths: (b,) int64 on the host; frames: per row, output frames (host ints)."""

    size: int  # items in the caller's batch (runnable or not)
    vocab_sizes: list[int]  # per item of the caller's batch
    order: list[int]  # caller's item index of each row
    segments: list[Segment]
    frames: list[int]
    waveforms: torch.Tensor
    lengths: torch.Tensor
    ready: torch.cuda.Event | None = None  # set when the copy to the device is done (CUDA only)
    classifiers: list[bool] = field(default_factory=list)  # per item of the caller's batch: a classifier's item

    def release(self) -> None:
        """Drop the device copy (after the batch failed, so that retries do not run beside it)."""
        self.waveforms = self.waveforms.new_zeros(0, 0)


def stage_batch(
    waveforms: torch.Tensor,
    lengths: torch.Tensor,
    adapters: Sequence[Adapter | Routing],
    frame_lengths: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device,
    rate: int,
    buffers: HostBuffers | None = None,
) -> StagedBatch:
    """Sort, segment and pad a checked batch (waveforms (B, L) float32 and lengths (B,) on the host) for `device`.

    Items too short for one frame get no row. `buffers` (CUDA): pinned staging memory; without it a CUDA batch is
    copied with a blocking copy from pageable memory. A routed item (`Routing`) is a segment of its own, run by its
    detector until the decision; an item too short for a frame is then never decided (empty (0, 0) logits)."""
    frames = frame_lengths(lengths).tolist()
    vocab_sizes = [0 if isinstance(a, Routing) else len(a.vocab) for a in adapters]
    classifiers = [isinstance(a, Adapter) and a.is_classifier for a in adapters]
    # Stable sort by adapter in first-appearance order, so each adapter is one segment.
    first_seen: dict[int, int] = {}
    runnable = [i for i in range(len(adapters)) if frames[i] > 0]
    order = sorted(runnable, key=lambda i: first_seen.setdefault(id(adapters[i]), len(first_seen)))
    size = len(adapters)
    if not order:
        empty = waveforms.new_zeros(0, 0)
        return StagedBatch(size, vocab_sizes, [], [], [], empty, lengths.new_zeros(0), classifiers=classifiers)
    row_adapters = [adapters[i] for i in order]
    segments = find_segments(
        [a.detector if isinstance(a, Routing) else a for a in row_adapters],
        [a if isinstance(a, Routing) else None for a in row_adapters],
    )
    row_lengths = lengths[order]
    longest = int(row_lengths.max())
    if device.type == "cpu":
        rows = waveforms[order, :longest]  # (b, L): the one gather the CPU path needs
        row_frames = [frames[i] for i in order]
        return StagedBatch(size, vocab_sizes, order, segments, row_frames, rows, row_lengths, classifiers=classifiers)
    width = bucket_samples(longest, rate)
    ready = None
    if buffers is None:
        padded = F.pad(waveforms[order, :longest], (0, width - longest))  # (b, W)
        on_device = padded.to(device, torch.float32)
    else:
        slot, host = buffers.take(len(order), width)
        for row, item in enumerate(order):
            size_i = int(lengths[item])
            host[row, :size_i] = waveforms[item, :size_i]
        on_device, ready = buffers.copy(slot, host)
    row_frames = [frames[i] for i in order]
    return StagedBatch(size, vocab_sizes, order, segments, row_frames, on_device, row_lengths, ready, classifiers)
