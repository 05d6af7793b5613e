"""A trainable CTC model around Chorus's own backbone modules: backbone (+ optional adapter) + CTC head.

The forward pass is the engine's (`Backbone.forward` + the head) with two training-only additions: SpecAugment-
style masking of the projected features, and running the frozen part of the model (front end and the layers
below the lowest trainable one) without autograd, which is what makes adapter training cheap.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from chorus_server.engine.adapters import Adapter, Segment
from chorus_server.engine.backbone import Backbone
from chorus_server.engine.engine import normalize
from chorus_server.engine.frontend import time_mask


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


def _trainable(*modules: nn.Module | None) -> bool:
    return any(p.requires_grad for m in modules if m is not None for p in m.parameters())


class CTCModel(nn.Module):
    """Backbone + either a plain CTC head (backbone training) or an adapter with its own head.

    What trains is whatever has `requires_grad`; autograd starts at the first stage that has a trainable
    parameter (front end, positional conv, or transformer layer `i` including the adapter's bottlenecks there).
    """

    def __init__(
        self, backbone: Backbone, head: nn.Linear, adapter: Adapter | None = None, masking: Masking | None = None
    ):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.adapter = adapter
        self.masking = masking

    def _adapter_layer(self, index: int) -> nn.Module | None:
        if self.adapter is None or str(index) not in self.adapter.layers:
            return None
        return self.adapter.layers[str(index)]

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """waveforms: (B, L) raw float32, zero-padded; lengths: (B,) -> logits (B, T, V), frames (B,)."""
        bb, encoder = self.backbone, self.backbone.encoder
        segments = [Segment(0, waveforms.shape[0], self.adapter)] if self.adapter is not None else []
        grad = torch.is_grad_enabled()
        tracking = grad and _trainable(bb.feature_extractor, bb.feature_projection)
        with torch.set_grad_enabled(tracking):
            features, frames = bb.feature_extractor(normalize(waveforms, lengths), lengths)  # (B, C, T)
            h = bb.feature_projection(features)  # (B, T, H)
        if self.training and self.masking is not None:
            h = self.masking(h, frames)
        frame_mask = time_mask(frames, h.shape[1])  # (B, T)
        # The steps of Encoder.forward, each with autograd only once something trainable has been reached.
        tracking = tracking or (grad and _trainable(encoder.pos_conv_embed, encoder.layer_norm))
        with torch.set_grad_enabled(tracking):
            h = h * frame_mask[:, :, None].to(h.dtype)
            h = h + encoder.pos_conv_embed(h)
            if not encoder.pre_ln:
                h = encoder.layer_norm(h)
        key_mask = None if bool(frame_mask.all()) else frame_mask[:, None, None, :]  # (B, 1, 1, T)
        for i, layer in enumerate(encoder.layers):
            tracking = tracking or (grad and _trainable(layer, self._adapter_layer(i)))
            with torch.set_grad_enabled(tracking):
                h = layer(h, key_mask, segments)
        if encoder.pre_ln:
            h = encoder.layer_norm(h)
        return self.head(h), frames
