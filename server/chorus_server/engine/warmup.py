"""Warm-up: one dummy batch per shape bucket before a GPU server reports ready.

The first batch of a new shape pays for kernel selection, lazy CUDA initialisation (cuBLAS handles, workspace)
and the caching allocator's first `cudaMalloc`s; a client would see that as a latency spike, or an
out-of-memory error half-way through serving. Running the largest batch of every bucket first reserves the
peak memory up front, so an out-of-memory error (and the smaller budget it leads to) happens before traffic.
"""

from __future__ import annotations

import torch

from chorus_server.engine.adapters import Adapter, AdapterInfo, Vocabulary
from chorus_server.engine.engine import Engine

_VOCAB = Vocabulary(("<pad>", "|", "a"), blank_id=0, word_delimiter_id=1)


def warm_up_adapter(engine: Engine) -> Adapter:
    """A head-only adapter for dummy batches (the heads are tiny; the backbone is what warms up)."""
    adapter = Adapter(AdapterInfo(name="warm-up", kind="head"), _VOCAB, engine.config.hidden_size)
    return engine.prepare(adapter, check_fingerprint=False)


def warm_up_batch(engine: Engine, adapter: Adapter, items: int, samples: int) -> None:
    """One forward over `items` windows of `samples` samples of quiet noise (waits for the device to finish)."""
    gen = torch.Generator().manual_seed(0)
    waveforms = 0.01 * torch.randn(items, samples, generator=gen)  # (B, L)
    lengths = torch.full((items,), samples, dtype=torch.int64)
    engine.forward(waveforms, lengths, [adapter] * items)
