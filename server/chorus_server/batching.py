"""Batch formation as a pure function of the queue, the limits and the time: easy to test without threads.

A batch always starts with the oldest waiting item (so nobody starves), then takes the items closest to it in
length (so padding stays small) while the batch stays within `max_items` and `max_samples` *padded* samples
(items x longest item). It is dispatched when it cannot grow any more, when the oldest item has waited
`max_wait`, or when the server is draining. Items past their deadline or cancelled by their caller are dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np
import torch

from chorus_server.engine.adapters import Adapter


@dataclass(frozen=True)
class BatchLimits:
    max_items: int
    max_samples: int  # padded samples in one batch
    max_wait: float  # seconds


@dataclass(eq=False)
class WorkItem:
    """One window of one request's audio, with the adapter it runs through."""

    samples: np.ndarray  # (L,) float32
    adapter: Adapter
    enqueued: float
    deadline: float
    future: Future[torch.Tensor] = field(default_factory=Future)  # resolves to (T, V) float32 logits

    def __len__(self) -> int:
        return len(self.samples)


@dataclass
class Collected:
    batch: list[WorkItem]
    expired: list[WorkItem]
    cancelled: list[WorkItem]
    wait: float | None  # nothing to run yet: seconds until something will be (None: until an item arrives)


def collect_batch(queue: Sequence[WorkItem], limits: BatchLimits, now: float, draining: bool = False) -> Collected:
    """Choose the next batch from `queue` (arrival order). Does not mutate anything."""
    expired = [item for item in queue if item.deadline <= now and not item.future.cancelled()]
    cancelled = [item for item in queue if item.future.cancelled()]
    live = [item for item in queue if item.deadline > now and not item.future.cancelled()]
    if not live:
        return Collected([], expired, cancelled, None)

    oldest = live[0]
    by_closeness = sorted(live[1:], key=lambda item: abs(len(item) - len(oldest)))  # stable: ties keep arrival order
    batch, longest = [oldest], len(oldest)
    for item in by_closeness:
        grown = max(longest, len(item))
        if len(batch) < limits.max_items and (len(batch) + 1) * grown <= limits.max_samples:
            batch.append(item)
            longest = grown
    cannot_grow = len(batch) < len(live) or len(batch) >= limits.max_items
    due = oldest.enqueued + limits.max_wait
    if cannot_grow or draining or now >= due:
        return Collected(batch, expired, cancelled, 0.0)
    next_deadline = min(item.deadline for item in live)
    return Collected([], expired, cancelled, max(0.0, min(due, next_deadline) - now))
