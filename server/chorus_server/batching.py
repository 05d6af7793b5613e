"""Batch formation as a pure function of the queue, the limits, the tenants' shares and the time: easy to test
without threads.

One tenant waiting: a batch starts with the oldest item (so nobody starves), then takes the items closest to it
in length (so padding stays small) while the batch stays within `max_items` and `max_samples` *padded* samples
(items x longest item).

Several tenants waiting: fair sharing. Tenants are served in order of the audio they have been served so far
(`served`, kept by the worker; a tenant that becomes active starts level with the least-served active one,
so idle time banks no credit) — deficit round robin over audio samples. The batch takes one item from each
tenant in that order, round after round, within `contended_max_samples` — a smaller budget, because a batch in
progress is never preempted: a tenant arriving behind another's backlog waits at most one short batch.

Priority classes: every item has one (`Priority`): live work (realtime steps, a streamed transcription's first
window) before file windows, and those before `service_tier=flex` files. A batch holds one class, the most urgent
waiting, and fairness works as above inside it. So that bulk work cannot starve, after `bulk_passes` batches in a
row that passed over waiting less urgent work, the oldest such item's class gets the next batch. While live work
waits, or was seen within `interactive_linger` seconds (or, as the worker tells it, a realtime session is open),
every batch is held to `interactive_bulk_samples` padded samples (one file window on CPU by default; so a long
live window is not batched with short steps either): a live step arriving behind it waits at most that one small
batch (docs/engine.md, "Scheduling live work beside files").

A batch is dispatched when it cannot grow any more, when the oldest item has waited `max_wait`, when no other
request is on its way (waiting would only delay the work already queued), or when the server is draining. Items
past their deadline (or too close to it to finish), or cancelled by their caller, are dropped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np
import torch

from chorus_server.engine.adapters import Adapter
from chorus_server.engine.routing import Routing


class Priority(IntEnum):
    """A work item's class: lower runs first."""

    LIVE = 0  # a realtime step, a streamed transcription's first window: someone is watching the text arrive
    FILE = 1  # a file's windows (service_tier auto/default)
    FLEX = 2  # a file sent with service_tier=flex: runs when nothing more urgent waits (or its turn comes)


@dataclass(frozen=True)
class BatchLimits:
    max_items: int
    max_samples: int  # padded samples in one batch
    max_wait: float  # seconds
    contended_max_samples: int = 0  # padded samples while several tenants wait (0: max_samples // 2)
    priorities: bool = True  # False: one class for all (every item is scheduled as a file window)
    bulk_passes: int = 8  # batches in a row that may pass over waiting less urgent work
    interactive_bulk_samples: int = 0  # padded samples of a less urgent batch while live work is about (0: no cap)
    interactive_linger: float = 1.0  # seconds after live work was last submitted that it still counts as about

    @property
    def shared_samples(self) -> int:
        return self.contended_max_samples or max(1, self.max_samples // 2)


@dataclass(eq=False)
class WorkItem:
    """One window of one request's audio, with the adapter it runs through (or its one-pass routing: routing.py)."""

    samples: np.ndarray  # (L,) float32
    adapter: Adapter | Routing
    enqueued: float
    deadline: float
    tenant: str = ""
    label: str = ""  # the adapter as metrics may name it: its full ID if public, else ""
    priority: Priority = Priority.FILE
    future: Future[torch.Tensor] = field(default_factory=Future)  # resolves to (T, V) float32 logits

    def __len__(self) -> int:
        return len(self.samples)


@dataclass
class Collected:
    batch: list[WorkItem]
    expired: list[WorkItem]
    cancelled: list[WorkItem]
    wait: float | None  # nothing to run yet: seconds until something will be (None: until an item arrives)


def collect_batch(
    queue: Sequence[WorkItem],
    limits: BatchLimits,
    now: float,
    draining: bool = False,
    served: Mapping[str, float] | None = None,
    seconds_per_sample: float = 0.0,
    company_expected: bool = True,
    passed_over: int = 0,
    interactive_recent: bool = False,
) -> Collected:
    """Choose the next batch from `queue` (arrival order). Does not mutate anything. `seconds_per_sample`: the
        compute time of one sample; a window that could not finish before its deadline even alone counts as expired
        (running it would be work for a request that has already failed). `company_expected`: whether other requests
        are on their way and may join within `max_wait`; when none is, a batch leaves at once. `passed_over`: batches
    in a row that ran while less urgent work waited; `interactive_recent`: whether live work was submitted lately
    (within `limits.interactive_linger`) or is expected (the worker: while a realtime session is open)."""

    def hopeless(item: WorkItem) -> bool:
        return item.deadline <= now + len(item) * seconds_per_sample

    expired = [item for item in queue if hopeless(item) and not item.future.cancelled()]
    cancelled = [item for item in queue if item.future.cancelled()]
    live = [item for item in queue if not hopeless(item) and not item.future.cancelled()]
    if not live:
        return Collected([], expired, cancelled, None)

    pool = _class_to_run(live, limits, passed_over)
    max_samples, shared_samples = limits.max_samples, limits.shared_samples
    live_about = interactive_recent or any(item.priority == Priority.LIVE for item in live)
    # Live batches too: a streamed transcription's first window (as long as a file window) would otherwise pad the
    # realtime steps batched with it to its length.
    if limits.priorities and live_about and limits.interactive_bulk_samples:
        max_samples = min(max_samples, limits.interactive_bulk_samples)
        shared_samples = min(shared_samples, limits.interactive_bulk_samples)
    by_tenant: dict[str, list[WorkItem]] = {}
    for item in pool:
        by_tenant.setdefault(item.tenant, []).append(item)
    if len(by_tenant) == 1:
        batch = _closest_to_oldest(pool, limits.max_items, max_samples)
    else:
        batch = _round_robin(by_tenant, served or {}, limits.max_items, shared_samples)
    oldest = pool[0]
    cannot_grow = len(batch) < len(pool) or len(batch) >= limits.max_items
    due = oldest.enqueued + limits.max_wait
    if cannot_grow or draining or now >= due or not company_expected:
        return Collected(batch, expired, cancelled, 0.0)
    next_deadline = min(item.deadline for item in live)
    return Collected([], expired, cancelled, max(0.0, min(due, next_deadline) - now))


def _class_to_run(live: list[WorkItem], limits: BatchLimits, passed_over: int) -> list[WorkItem]:
    """The waiting items of the class the next batch is drawn from (arrival order): the most urgent class, unless
    less urgent work has been passed over `bulk_passes` times in a row; then the class of the oldest such item."""
    if not limits.priorities:
        return live
    top = min(item.priority for item in live)
    if passed_over >= limits.bulk_passes:
        behind = next((item for item in live if item.priority > top), None)
        if behind is not None:
            top = behind.priority
    return [item for item in live if item.priority == top]


def passes_over(batch: Sequence[WorkItem], left: Sequence[WorkItem]) -> bool:
    """Whether `batch` ran while less urgent work was left waiting (counted towards `bulk_passes`)."""
    return bool(batch) and any(item.priority > batch[0].priority for item in left)


def _fits(batch_len: int, longest: int, item: WorkItem, max_items: int, max_samples: int) -> bool:
    return batch_len < max_items and (batch_len + 1) * max(longest, len(item)) <= max_samples


def _closest_to_oldest(live: list[WorkItem], max_items: int, max_samples: int) -> list[WorkItem]:
    oldest = live[0]
    by_closeness = sorted(live[1:], key=lambda item: abs(len(item) - len(oldest)))  # stable: ties keep arrival order
    batch, longest = [oldest], len(oldest)
    for item in by_closeness:
        if _fits(len(batch), longest, item, max_items, max_samples):
            batch.append(item)
            longest = max(longest, len(item))
    return batch


def _round_robin(
    by_tenant: dict[str, list[WorkItem]], served: Mapping[str, float], max_items: int, max_samples: int
) -> list[WorkItem]:
    """One item per tenant per round, least-served tenant first; the lead item always runs (even if alone)."""
    order = sorted(by_tenant, key=lambda tenant: (served.get(tenant, 0.0), by_tenant[tenant][0].enqueued))
    batch: list[WorkItem] = []
    longest = 0
    taken = dict.fromkeys(order, 0)
    blocked: set[str] = set()
    while len(blocked) < len(order):
        for tenant in order:
            items = by_tenant[tenant]
            if tenant in blocked or taken[tenant] >= len(items):
                blocked.add(tenant)
                continue
            item = items[taken[tenant]]
            if batch and not _fits(len(batch), longest, item, max_items, max_samples):
                blocked.add(tenant)  # keep each tenant's arrival order: no overtaking its own items
                continue
            batch.append(item)
            longest = max(longest, len(item))
            taken[tenant] += 1
            if len(batch) >= max_items:
                return batch
    return batch
