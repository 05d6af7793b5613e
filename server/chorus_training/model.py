"""A trainable CTC model around Chorus's own backbone modules: backbone (+ optional adapter) + CTC head.

The forward pass is the engine's own (`Backbone.forward` + the head): training adds only SpecAugment-style masking
of the projected features, through the backbone's `features_hook`. The engine's forward runs the frozen part of the
model (front end and the layers below the lowest trainable one) without autograd.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from chorus_server.engine.adapters import Adapter, Segment
from chorus_server.engine.backbone import Backbone
from chorus_server.engine.engine import normalize


@dataclass(frozen=True)
class Masking:
    """Time masks: each frame starts a span of `time_span` masked frames with probability `time_prob`;
    channel masks: `channel_masks` spans of up to `channel_span` hidden channels per item."""

    time_prob: float = 0.02
    time_span: int = 6
    channel_masks: int = 1
    channel_span: int = 16

    def __call__(self, h: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """h: (B, T, H) -> (B, T, H) with masked positions zeroed."""
        batch, length, hidden = h.shape
        starts = torch.rand(batch, length, device=h.device) < self.time_prob  # (B, T)
        masked = torch.zeros(batch, length + self.time_span, dtype=torch.bool, device=h.device)
        for offset in range(self.time_span):
            masked[:, offset : offset + length] |= starts
        keep = ~masked[:, :length]  # (B, T)
        channels = torch.arange(hidden, device=h.device)[None, None, :]  # (1, 1, H)
        width = torch.randint(0, self.channel_span + 1, (batch, self.channel_masks, 1), device=h.device)
        first = (torch.rand(batch, self.channel_masks, 1, device=h.device) * (hidden - width)).long()
        channel_keep = ~((channels >= first) & (channels < first + width)).any(dim=1)  # (B, H)
        return h * keep[:, :, None] * channel_keep[:, None, :]


class CTCModel(nn.Module):
    """Backbone + either a plain CTC head (backbone training) or an adapter with its own head.

    What trains is whatever has `requires_grad`; the engine's forward starts autograd at the first stage that has a
    trainable parameter (front end, positional conv, or transformer layer `i` including the adapter's bottlenecks
    there), which is what makes adapter training cheap.
    """

    def __init__(
        self, backbone: Backbone, head: nn.Linear, adapter: Adapter | None = None, masking: Masking | None = None
    ):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.adapter = adapter
        self.masking = masking

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """waveforms: (B, L) raw float32, zero-padded; lengths: (B,) -> logits (B, T, V), frames (B,)."""
        segments = [Segment(0, waveforms.shape[0], self.adapter)] if self.adapter is not None else []
        masking = self.masking if self.training else None
        h, frames = self.backbone(normalize(waveforms, lengths), lengths, segments, features_hook=masking)  # (B, T, H)
        return self.head(h), frames
