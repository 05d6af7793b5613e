"""Helpers shared by the engine tests."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from chorus_server.engine import Engine, pad_batch


def forward_counting_passes(engine: Engine, audios: Sequence[torch.Tensor], adapters: Sequence) -> tuple[list, int]:
    """`engine.forward` over `audios` padded into one batch, and how many times it ran the backbone."""
    calls = []
    original = engine.backbone.forward

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    engine.backbone.forward = counting  # type: ignore[method-assign]
    try:
        out = engine.forward(*pad_batch(audios), adapters)
    finally:
        del engine.backbone.forward
    return out, len(calls)
