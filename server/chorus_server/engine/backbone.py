"""The frozen wav2vec 2.0 backbone: front end -> projection -> transformer (HF `Wav2Vec2Model` key layout)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from chorus_server.engine.adapters import Segment
from chorus_server.engine.config import BackboneConfig
from chorus_server.engine.device import to_device
from chorus_server.engine.encoder import Encoder, StatesHook
from chorus_server.engine.frontend import FeatureEncoder, FeatureProjection
from chorus_server.engine.layers import GradGate

MIN_CPU_FRAMES = 16  # the narrowest batch the transformer runs on a CPU (see `Backbone.forward`)


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
        self,
        waveforms: torch.Tensor,
        lengths: torch.Tensor,
        segments: Sequence[Segment],
        features_hook: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        states_hook: StatesHook | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """waveforms: (B, L) normalised, zero-padded; lengths: (B,) on the host -> hidden (B, T, H), frames (B,)
        on the device.

        The one forward pass of serving and training. Under autograd, gradients start at the first stage with a
        trainable parameter (`GradGate`); `features_hook(h (B, T, H), frames (B,)) -> h` edits the projected
        features (training's masking); `states_hook(k, h)` sees every hidden state and may regroup the segments
        (see `Encoder.forward`).
        """
        gate = GradGate()
        # Per item: its adapter's CNN adapters (`Adapter.cnn`: conv layer -> tensors), if it has any.
        cnn: list[Callable[[int], dict[str, torch.Tensor] | None] | None] = [None] * waveforms.shape[0]
        for seg in segments:
            if seg.adapter.cnn_channels:
                cnn[seg.start : seg.stop] = [seg.adapter.cnn] * (seg.stop - seg.start)
        with gate.stage(
            self.feature_extractor,
            self.feature_projection,
            trains=lambda: any(seg.adapter.cnn_trains() for seg in segments),  # asked only under autograd
        ):
            features, counts = self.feature_extractor(waveforms, lengths, cnn)  # (B, T, C), host ints
            if features.device.type == "cpu" and features.shape[1] < MIN_CPU_FRAMES:
                # CPU GEMMs of fewer than 12 rows take other kernels (other bits for a row); every product below
                # has at least B * T rows, so padding T keeps a short item's solo run bitwise equal to a batch's.
                features = F.pad(features, (0, 0, 0, MIN_CPU_FRAMES - features.shape[1]))  # (B, 16, C)
            h = self.feature_projection(features)  # (B, T, H)
        # The frame counts reach the device by a non-blocking copy; the encoder takes the host integers, so a
        # forward never reads a length back from the device (on a GPU that read was a second sync per batch).
        frames = to_device(torch.tensor(counts, dtype=torch.int64), features.device)
        if features_hook is not None:
            h = features_hook(h, frames)
        h = self.encoder(h, counts, segments, gate, states_hook)
        return h, frames
