"""One classification request: the audio cut into windows of `batch.chunk_seconds` (no overlap), each window one
work item through the same queue, batches and backbone pass as transcription windows; each window's class
probabilities (softmax of the classifier's logits) averaged, weighted by the window's length.

Admission (the queued-audio budget), residency (a cache lease), deadlines and disconnects are the transcriber's,
so a classification is limited and counted exactly as a transcription of the same audio."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np
import torch

from chorus_server.audio import Audio
from chorus_server.auth import Principal
from chorus_server.batching import WorkItem
from chorus_server.errors import ApiError
from chorus_server.service import Transcriber
from chorus_store.base import AdapterRecord


@dataclass(frozen=True)
class Classification:
    record: AdapterRecord
    scores: list[tuple[str, float]]  # (label, probability), highest first; probabilities sum to 1


def window_bounds(samples: int, window: int) -> list[tuple[int, int]]:
    """[start, stop) of consecutive windows of `window` samples covering `samples` (the last one shorter)."""
    return [(start, min(start + window, samples)) for start in range(0, samples, window)]


def average_scores(logits: list[torch.Tensor], weights: list[int], labels: tuple[str, ...]) -> list[tuple[str, float]]:
    """Per-window (labels,) logits -> (label, probability) sorted by probability (then label), summing to 1.

    Windows too short for one frame come back as (0,) and do not count. Raises a 400 when none counts."""
    kept = [(lg, w) for lg, w in zip(logits, weights, strict=True) if lg.numel()]
    if not kept:
        raise ApiError(400, "the audio is too short to classify (at least 25 ms are needed)", "audio_too_short", "file")
    total = sum(w for _, w in kept)
    probs = sum(torch.softmax(lg.double(), dim=0) * (w / total) for lg, w in kept)  # (labels,) float64
    assert isinstance(probs, torch.Tensor)
    probs = probs / probs.sum()
    pairs = [(label, float(p)) for label, p in zip(labels, probs.tolist(), strict=True)]
    return sorted(pairs, key=lambda pair: (-pair[1], pair[0]))


class Classifier:
    """Classification requests, run through a `Transcriber`'s queue budget, cache and worker."""

    def __init__(self, transcriber: Transcriber):
        self.transcriber = transcriber

    async def classify(
        self, audio: Audio, record: AdapterRecord, who: Principal, disconnected: Callable[[], Awaitable[None]]
    ) -> Classification:
        """Raises ApiError (400, 413, 503, 504), a store error, or ClientGone when `disconnected()` completes first."""
        t = self.transcriber
        async with t.admitted(audio, who.tenant, disconnected) as (deadline, gone):
            lease = await t.lease(record, deadline, gone)
            try:
                window = int(t.settings.batch.chunk_seconds * t.rate)
                bounds = window_bounds(len(audio.samples), window)
                now, label = time.monotonic(), record.id if record.visibility == "public" else ""
                items = [
                    WorkItem(np.ascontiguousarray(audio.samples[a:b]), lease.adapter, now, deadline, who.tenant, label)
                    for a, b in bounds
                ]
                t.worker.submit(items)
                gathered = asyncio.gather(*(asyncio.wrap_future(item.future) for item in items))
                logits: list[torch.Tensor] = await t._within(gathered, deadline, gone, items)
                scores = average_scores(logits, [b - a for a, b in bounds], lease.adapter.labels)
                return Classification(record, scores)
            finally:
                lease.release()
