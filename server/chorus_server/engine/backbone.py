"""The frozen wav2vec 2.0 backbone: front end -> projection -> transformer (HF `Wav2Vec2Model` key layout)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from chorus_server.engine.adapters import Segment
from chorus_server.engine.config import BackboneConfig
from chorus_server.engine.encoder import Encoder
from chorus_server.engine.frontend import FeatureEncoder, FeatureProjection, time_mask


class Backbone(nn.Module):
    def __init__(self, config: BackboneConfig):
        super().__init__()
        self.config = config
        self.feature_extractor = FeatureEncoder(config)
        self.feature_projection = FeatureProjection(config)
        self.encoder = Encoder(config)

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """(B,) samples -> (B,) output frames."""
        return self.feature_extractor.frame_lengths(lengths)

    def forward(
        self, waveforms: torch.Tensor, lengths: torch.Tensor, segments: Sequence[Segment]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """waveforms: (B, L) normalised, zero-padded; lengths: (B,) -> hidden (B, T, H), frame lengths (B,)."""
        features, frames = self.feature_extractor(waveforms, lengths)  # (B, T, C)
        h = self.feature_projection(features)  # (B, T, H)
        h = self.encoder(h, time_mask(frames, h.shape[1]), segments)
        return h, frames
