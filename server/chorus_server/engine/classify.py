"""How a classifier adapter reads the shared backbone pass: layer mix -> mean over valid frames -> linear.

The encoder reports every hidden state it computes (the input to the first layer, then each layer's output, the
last after the pre-LN final norm: HF's `hidden_states`, L + 1 of them) to a `LayerMix`, which adds each state a
classifier mixes (all L + 1, or the first N: a classifier may read the lower layers only)
(layer-normed first when the adapter says `normalize_states`), weighted by softmax(layer_weights), into a float32
running sum for the classifier segments' rows only: no second pass, and no L + 1 copies of the batch kept alive.
Every step is per frame (weighted adds) or per item (the mean over the item's own frames, the head over one pooled
vector), so an item's scores do not depend on its batch-mates, bit for bit, on the CPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from chorus_server.engine.adapters import Segment


class LayerMix:
    """Per classifier segment, the softmax-weighted sum of the hidden states the encoder reports (`__call__`)."""

    def __init__(self, segments: Sequence[Segment]):
        self.segments = [seg for seg in segments if seg.adapter.is_classifier]
        # (num_states,) float32 mixing weights per segment, computed once per batch from the adapter alone.
        self.weights = [F.softmax(seg.adapter.layer_weights.float(), dim=0) for seg in self.segments]
        self.sums: list[torch.Tensor | None] = [None] * len(self.segments)

    def __bool__(self) -> bool:
        return bool(self.segments)

    def __call__(self, index: int, h: torch.Tensor) -> None:
        """Add hidden state `index` (0 = encoder input) of the whole batch, h: (B, T, H), to each segment's sum."""
        for k, (seg, weights) in enumerate(zip(self.segments, self.weights, strict=True)):
            if index >= weights.numel():
                continue  # a classifier mixing the first N states only (a one-pass detector: routing.py)
            part = h[seg.start : seg.stop].float()  # (n, T, H)
            if seg.adapter.normalize_states:
                part = F.layer_norm(part, part.shape[-1:])
            part = part * weights[index]
            total = self.sums[k]
            self.sums[k] = part if total is None else total.add_(part)

    def mixed(self, segment: Segment) -> torch.Tensor:
        """The finished sum for `segment`'s rows: (n, T, H) float32."""
        for seg, total in zip(self.segments, self.sums, strict=True):
            if seg is segment:
                if total is None:
                    raise RuntimeError("the encoder reported no hidden state")
                return total
        raise KeyError(f"segment of {segment.adapter.name!r} is not a classifier segment")


def classify(
    mixed: torch.Tensor, frames: Sequence[int], head: torch.nn.Linear, pool: torch.Tensor | None = None
) -> torch.Tensor:
    """mixed: (n, T, H) float32; frames: each row's valid frames (>= 1) -> (n, labels) float32 logits.

    Pooling over each row's own frames (padding never counts): the mean, or with `pool` (H,) attentive pooling,
    the frames weighted by softmax over frames of `frame · pool`. Then the head. One row at a time: a reduction or
    a matrix product over more rows may split its work differently, and a row's bits must not depend on that.
    """
    rows = []
    for row, n in enumerate(frames):
        states = mixed[row, :n]  # (T_i, H)
        if pool is None:
            pooled = states.mean(dim=0, keepdim=True)  # (1, H)
        else:
            weights = torch.softmax(states @ pool.float(), dim=0)  # (T_i,)
            pooled = (weights @ states)[None]  # (1, H)
        rows.append(head(pooled.to(head.weight.dtype)).float())  # (1, labels)
    return torch.cat(rows)
